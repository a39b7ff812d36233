"""IMAP: the region of a message is its mailbox's, never its To/Cc (docs/guarantees.md), through the
real daemon watching two regional mailboxes in Dovecot (Bretagne and Pays de la Loire)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support import casemail
from tests.support.dkim import rsa_key, zone
from tests.support.gateway import GatewayConfig, RunningGateway
from tests.support.messages import make_alert
from tests.support.servers import Dovecot, SmtpSink, wait_for

YEAR = datetime.now().year
ACSS_KEY = rsa_key("acss", "esante.test")
REGIONS = (("PDL", "Pays de la Loire", "ssi-pdl@ars.test"), ("BRE", "Bretagne", "ssi-bre@ars.test"))
STAFF = (("agent@ars.test", "PDL", "agent"), ("agent-bre@ars.test", "BRE", "agent"))


@pytest.fixture
def gateway(tmp_path: Path, dovecot: Dovecot, smtp_sink: SmtpSink) -> Iterator[RunningGateway]:
    imap: dict[str, dict[str, Any]] = {}
    for code, _name, address in REGIONS:
        user = dovecot.add_user(address, "s3cret")
        imap[code] = {"host": "127.0.0.1", "port": dovecot.imap_port, "tls": False, "username": user,
                      "password_file": str(dovecot.password_file(user, tmp_path))}
    config = GatewayConfig(tmp_path / "gw", relay_port=smtp_sink.port, regions=REGIONS, staff=STAFF, imap=imap,
                           static_keys=zone(ACSS_KEY))
    with RunningGateway(config) as gw:
        wait_for(lambda: gw.config.cli("status", "--json", check=False).stdout.count("idle") >= 2, timeout=20)
        yield gw


BREST = b"""\
From: RSSI CHU de Brest <rssi@chu-brest.test>\r
To: SSI Bretagne <ssi-bre@ars.test>\r
Cc: SSI Pays de la Loire <ssi-pdl@ars.test>\r
Subject: =?utf-8?q?D=C3=A9claration_d=27incident_=3A_hame=C3=A7onnage?=\r
Message-ID: <brest-imap-1@chu-brest.test>\r
Date: Fri, 27 Nov 2026 09:12:00 +0100\r
MIME-Version: 1.0\r
Content-Type: text/plain; charset=utf-8\r
Content-Transfer-Encoding: 8bit\r
\r
Bonjour,\r
\r
Num\xc3\xa9ro FINESS : 290000017\r
Nom de la structure : CHU de Brest\r
Type d'incident : Hame\xc3\xa7onnage\r
\r
Des identifiants ont \xc3\xa9t\xc3\xa9 saisis sur une fausse page.\r
"""


def _cases(gw: RunningGateway) -> list[str]:
    return sorted(c["reference"] for c in gw.config.cli_json("cases", "list"))


def test_the_bretagne_mailbox_copy_is_bretagnes_even_with_pdl_in_cc(
        gateway: RunningGateway, dovecot: Dovecot, smtp_sink: SmtpSink) -> None:
    dovecot.deliver("ssi-bre@ars.test", BREST, mail_from="rssi@chu-brest.test")
    ack = casemail.parse(wait_for(lambda: smtp_sink.messages_to("rssi@chu-brest.test"), timeout=20)[0].raw)
    assert f"[SSI-BRE-{YEAR}-0001]" in ack["Subject"]
    body = ack.get_body(("plain",))
    assert body is not None and "Bretagne" in body.get_content() and "Pays de la Loire" not in body.get_content()
    wait_for(lambda: smtp_sink.messages_to("agent-bre@ars.test"), timeout=10)
    assert _cases(gateway) == [f"SSI-BRE-{YEAR}-0001"]
    assert smtp_sink.messages_to("agent@ars.test") == []


def test_an_alert_in_two_mailboxes_is_one_linked_case_per_region(
        gateway: RunningGateway, dovecot: Dovecot, smtp_sink: SmtpSink) -> None:
    # Each regional mailbox holds its own copy: the ACSS list reached both.
    alert = casemail.sign(make_alert(sender="CERT Santé <alerte@esante.test>",
                                     to="ssi-pdl@ars.test, ssi-bre@ars.test", reference="CERTFR-2026-ALE-031",
                                     message_id="<ale-imap@esante.test>"), ACSS_KEY)
    dovecot.deliver("ssi-pdl@ars.test", alert, mail_from="alerte@esante.test")
    dovecot.deliver("ssi-bre@ars.test", alert, mail_from="alerte@esante.test")
    wait_for(lambda: len(_cases(gateway)) == 2, timeout=30)
    assert _cases(gateway) == [f"SSI-BRE-{YEAR}-0001", f"SSI-PDL-{YEAR}-0001"]
    pdl = wait_for(lambda: smtp_sink.messages_to("agent@ars.test"), timeout=10)[0]
    bre = wait_for(lambda: smtp_sink.messages_to("agent-bre@ars.test"), timeout=10)[0]
    texts = [" ".join(casemail.text_of(m.raw).split()) for m in (pdl, bre)]
    # The copy processed second names the first region's case in its notification; the first
    # case (notified before the second copy existed) gets the link on its timeline.
    assert (f"également reçue par : PDL (SSI-PDL-{YEAR}-0001)" in texts[1]
            or f"également reçue par : BRE (SSI-BRE-{YEAR}-0001)" in texts[0])
    linked: dict[str, list[Any]] = {}
    link_types = ("alerte_autres_regions", "alerte_recue_aussi")
    for reference in (f"SSI-PDL-{YEAR}-0001", f"SSI-BRE-{YEAR}-0001"):
        timeline = gateway.config.cli_json("cases", "show", reference)["timeline"]
        linked[reference] = [e["data"] for e in timeline if e["type"] in link_types]
    assert all(len(found) == 1 for found in linked.values()), linked
    # Both copies processed: moved to the processed folder of their own mailbox.
    for address in ("ssi-pdl@ars.test", "ssi-bre@ars.test"):
        client = dovecot.imap(address)
        try:
            wait_for(lambda c=client: c.folder_exists("Traité") and c.select_folder("Traité")[b"EXISTS"] == 1,
                     timeout=10)
        finally:
            client.logout()
