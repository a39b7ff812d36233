"""Once only, from the outside (docs/guarantees.md): a DKIM-signed staff command and a signed ACSS alert,
each captured and sent again over SMTP to the real daemon with one more ``Received:`` line (a new
content hash, the same signature), act once; a command mail dated long ago acts not at all."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.support import casemail
from tests.support.dkim import rsa_key, zone
from tests.support.gateway import DECLARATION, GatewayConfig, RunningGateway, wait_until
from tests.support.messages import make_alert
from tests.support.servers import SmtpSink

YEAR = datetime.now().year
REF = f"SSI-PDL-{YEAR}-0001"
STAFF = "agent@ars.test"
DECLARANT = "dsi@chu-nantes.test"
ACSS_KEY = rsa_key("acss", "esante.test")
RECEIVED = (b"Received: from mx.attacker.test (mx.attacker.test [192.0.2.66])\r\n"
            b"\tby gateway.test with ESMTP; Fri, 27 Nov 2026 10:05:00 +0100\r\n")


@pytest.fixture
def gateway(tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[RunningGateway]:
    config = GatewayConfig(tmp_path / "gw", relay_port=smtp_sink.port,
                           static_keys={**casemail.staff_keys(), **zone(ACSS_KEY)})
    with RunningGateway(config) as gw:
        yield gw


def mail_to(sink: SmtpSink, address: str, count: int, timeout: float = 20.0) -> list[EmailMessage]:
    """The first ``count`` messages the relay received for ``address`` (waiting for them)."""
    got = wait_until(lambda: (lambda found: found if len(found) >= count else None)(sink.messages_to(address)),
                     timeout=timeout)
    return [casemail.parse(m.raw) for m in got[:count]]


def text(msg: EmailMessage) -> str:
    body = msg.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def show(gw: RunningGateway, ref: str) -> Any:
    return gw.config.cli_json("cases", "show", ref)


def test_replayed_command_and_alert_act_once_and_old_commands_not_at_all(gateway: RunningGateway,
                                                                         smtp_sink: SmtpSink) -> None:
    gateway.send(DECLARATION.encode(), mail_from=DECLARANT)
    mail_to(smtp_sink, DECLARANT, 1)  # acknowledgement
    notification = mail_to(smtp_sink, STAFF, 1)[0]

    # A signed command: one answer to the declarant, one receipt.
    raw = casemail.staff_mail("#repondre Merci, nous revenons vers vous.\n", to="ssi-pdl@ars.test",
                              subject=f"RE: {notification['Subject']}", in_reply_to=notification["Message-ID"],
                              date=datetime.now(UTC))
    gateway.send(raw, mail_from=STAFF)
    assert "Merci, nous revenons vers vous." in text(mail_to(smtp_sink, DECLARANT, 2)[1])
    assert "[appliquée] #repondre" in text(mail_to(smtp_sink, STAFF, 2)[1])

    # The same mail, replayed through another relay: refused, its author told, nothing sent.
    gateway.send(RECEIVED + raw, mail_from=STAFF)
    receipt = mail_to(smtp_sink, STAFF, 3)[2]
    assert "Ce message avait déjà été reçu et ses commandes appliquées le " in text(receipt)
    assert "vous n'avez rien à faire" in text(receipt) and "rejoué" not in text(receipt)
    case = show(gateway, REF)
    answers = [e for e in case["timeline"] if e["type"] == "mail_sortant" and e["data"].get("type") == "reponse"]
    assert len(answers) == 1
    assert any(e["type"] == "commande_refusee" and "rejoué" in e["data"]["motif"] for e in case["timeline"])

    # A genuine, signed command written nine days ago (say, to a colleague): refused.
    old = casemail.staff_mail("#clore\n", to="ssi-pdl@ars.test", subject=f"RE: {notification['Subject']}",
                              in_reply_to=notification["Message-ID"],
                              date=datetime.now(UTC) - timedelta(days=9))
    gateway.send(old, mail_from=STAFF)
    assert "commande trop ancienne" in text(mail_to(smtp_sink, STAFF, 4)[3])
    assert show(gateway, REF)["status"] != "CLOS"

    # A signed ACSS alert, then the same alert replayed: one case, staff told once.
    alert = casemail.sign(make_alert(sender="CERT Santé <alerte@esante.test>", to="ssi-pdl@ars.test",
                                     message_id="<ale-12@esante.test>"), ACSS_KEY)
    gateway.send(alert, mail_from="alerte@esante.test")
    told = mail_to(smtp_sink, STAFF, 5)[4]
    alert_ref = f"SSI-PDL-{YEAR}-0002"
    assert alert_ref in told["Subject"]
    assert show(gateway, alert_ref)["status"] == "A_DIFFUSER"
    gateway.send(RECEIVED + alert, mail_from="alerte@esante.test")
    wait_until(lambda: any(e["type"] == "alerte_rejouee" for e in show(gateway, alert_ref)["timeline"]),
               timeout=20)
    listed = gateway.config.cli_json("cases", "list")
    assert sorted(c["reference"] for c in listed) == [REF, alert_ref]
    assert len(smtp_sink.messages_to(STAFF)) == 5


def test_one_alert_to_two_regional_mailboxes_opens_a_case_in_each_even_after_a_bcc_copy(
        gateway: RunningGateway, smtp_sink: SmtpSink) -> None:
    """docs/guarantees.md: once per region. An attacker Bcc'd on a genuine ACSS alert sends it to
    ssi-ara first; the real deliveries to ssi-pdl and ssi-ara follow (each relay adds its own
    Received: line). Each region gets its one case; the repeat in ARA is a replay."""
    alert = casemail.sign(make_alert(sender="CERT Santé <alerte@esante.test>",
                                     to="Diffusion ARS <diffusion-ars@esante.test>",
                                     message_id="<ale-30@esante.test>"), ACSS_KEY)
    ara_ref, pdl_ref = f"SSI-ARA-{YEAR}-0001", f"SSI-PDL-{YEAR}-0001"
    gateway.send(RECEIVED + alert, to=("ssi-ara@ars.test",), mail_from="alerte@esante.test")
    wait_until(lambda: [c for c in gateway.config.cli_json("cases", "list") if c["reference"] == ara_ref],
               timeout=20)
    hop = b"Received: from mx.esante.test by mx.ars.test; Fri, 27 Nov 2026 10:06:00 +0100\r\n"
    gateway.send(hop + alert, to=("ssi-pdl@ars.test",), mail_from="alerte@esante.test")
    told = mail_to(smtp_sink, STAFF, 1)[0]
    assert pdl_ref in told["Subject"]
    gateway.send(hop + b"X-Copy: ara\r\n" + alert, to=("ssi-ara@ars.test",), mail_from="alerte@esante.test")
    wait_until(lambda: any(e["type"] == "alerte_rejouee" for e in show(gateway, ara_ref)["timeline"]), timeout=20)
    listed = gateway.config.cli_json("cases", "list")
    assert sorted(c["reference"] for c in listed) == [ara_ref, pdl_ref]
    assert show(gateway, pdl_ref)["status"] == "A_DIFFUSER"
