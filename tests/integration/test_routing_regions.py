"""The region is where the mail arrived (docs/guarantees.md), through the real daemon over SMTP,
with three regions (PDL, ARA, BRE):

- To/Cc decide nothing: a Brest declaration delivered to ssi-bre with PDL in Cc is Bretagne's;
- one SMTP transaction to several regional mailboxes is processed once per region; the same bytes
  sent later to another region are that region's message; a true duplicate for one region is
  answered 250 and not processed twice;
- a national alert becomes one case per region, linked by its reference, each region told;
- the same alert reference twice in one region is linked and flagged « nouvelle version »;
- a declaration from another region's establishment is flagged « hors région », and
  ``#transferer <REGION>`` by signed staff mail moves it (new reference, both timelines, the
  target region's staff and the declarant told).
"""

from __future__ import annotations

import smtplib
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.support import casemail
from tests.support.dkim import rsa_key, zone
from tests.support.gateway import GatewayConfig, RunningGateway, wait_until
from tests.support.messages import make_alert
from tests.support.servers import SmtpSink

YEAR = datetime.now().year
ACSS_KEY = rsa_key("acss", "esante.test")
REGIONS = (("PDL", "Pays de la Loire", "ssi-pdl@ars.test"),
           ("ARA", "Auvergne-Rhône-Alpes", "ssi-ara@ars.test"),
           ("BRE", "Bretagne", "ssi-bre@ars.test"))
STAFF = (("agent@ars.test", "PDL", "agent"),
         ("referent-ara@ars.test", "ARA", "referent"),
         ("agent-bre@ars.test", "BRE", "agent"))
PDL_STAFF, ARA_STAFF, BRE_STAFF = "agent@ars.test", "referent-ara@ars.test", "agent-bre@ars.test"


def ref(region: str, n: int = 1) -> str:
    return f"SSI-{region}-{YEAR}-{n:04d}"


@pytest.fixture
def gateway(tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[RunningGateway]:
    config = GatewayConfig(tmp_path / "gw", relay_port=smtp_sink.port, regions=REGIONS, staff=STAFF,
                           static_keys={**casemail.staff_keys(), **zone(ACSS_KEY)})
    with RunningGateway(config) as gw:
        yield gw


def mail_to(sink: SmtpSink, address: str, count: int, timeout: float = 20.0) -> list[EmailMessage]:
    got = wait_until(lambda: (lambda found: found if len(found) >= count else None)(sink.messages_to(address)),
                     timeout=timeout)
    return [casemail.parse(m.raw) for m in got[:count]]


def text(msg: EmailMessage) -> str:
    body = msg.get_body(("plain",))
    assert body is not None
    return " ".join(str(body.get_content()).split())


def show(gw: RunningGateway, reference: str) -> Any:
    return gw.config.cli_json("cases", "show", reference)


def references(gw: RunningGateway) -> list[str]:
    return sorted(c["reference"] for c in gw.config.cli_json("cases", "list"))


def events(gw: RunningGateway, reference: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in show(gw, reference)["timeline"] if e["type"] == kind]


def send(gw: RunningGateway, raw: bytes, to: tuple[str, ...], mail_from: str) -> tuple[int, bytes]:
    """One SMTP transaction; the final answer to DATA."""
    with smtplib.SMTP("127.0.0.1", gw.config.smtp_port, local_hostname="client.test", timeout=30) as s:
        s.ehlo()
        s.mail(mail_from)
        for rcpt in to:
            assert s.rcpt(rcpt)[0] == 250
        return s.data(raw)


def alert(message_id: str, **kw: Any) -> bytes:
    return casemail.sign(make_alert(sender="CERT Santé <alerte@esante.test>", message_id=message_id,
                                    to="Diffusion ARS <diffusion@esante.test>", **kw), ACSS_KEY)


BREST = """\
From: RSSI CHU de Brest <rssi@chu-brest.test>
To: SSI Bretagne <ssi-bre@ars.test>
Cc: SSI Pays de la Loire <ssi-pdl@ars.test>
Subject: Déclaration d'incident : hameçonnage au CHU de Brest
Message-ID: <brest-1@chu-brest.test>
Date: Fri, 27 Nov 2026 09:12:00 +0100
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Bonjour,

Numéro FINESS : 290000017
Nom de la structure : CHU de Brest
Type d'incident : Hameçonnage
Date de détection : 27/11/2026 à 08h30

Des identifiants ont été saisis sur une fausse page de connexion.
"""


def test_to_and_cc_decide_nothing_the_envelope_does(gateway: RunningGateway, smtp_sink: SmtpSink) -> None:
    # The Bretagne MX delivers its copy to ssi-bre only: PDL in Cc is just a header.
    send(gateway, BREST.encode(), ("ssi-bre@ars.test",), "rssi@chu-brest.test")
    ack = mail_to(smtp_sink, "rssi@chu-brest.test", 1)[0]
    assert f"[{ref('BRE')}]" in ack["Subject"]
    assert "Bretagne" in text(ack) and "Pays de la Loire" not in text(ack)
    assert "ssi-bre@ars.test" in str(ack["From"])
    mail_to(smtp_sink, BRE_STAFF, 1)
    assert references(gateway) == [ref("BRE")]
    assert smtp_sink.messages_to(PDL_STAFF) == []


def test_one_transaction_to_two_regions_is_two_messages_and_a_resend_is_per_region(
        gateway: RunningGateway, smtp_sink: SmtpSink) -> None:
    raw = alert("<ale-multi@esante.test>", reference="CERTFR-2026-ALE-021")
    code, _ = send(gateway, raw, ("ssi-pdl@ars.test", "ssi-ara@ars.test"), "alerte@esante.test")
    assert code == 250
    pdl = mail_to(smtp_sink, PDL_STAFF, 1)[0]
    ara = mail_to(smtp_sink, ARA_STAFF, 1)[0]
    assert ref("PDL") in pdl["Subject"] and ref("ARA") in ara["Subject"]
    # Each region's staff see where else the alert arrived; both timelines carry the link.
    # (Whichever region is processed first names the other without its reference yet.)
    assert "Alerte également reçue par : ARA" in text(pdl)
    assert "Alerte également reçue par : PDL" in text(ara)
    for here, there in (("PDL", "ARA"), ("ARA", "PDL")):
        [told] = events(gateway, ref(here), "alerte_autres_regions")
        assert told["data"]["regions"] == [there] and told["data"]["reference_alerte"] == "CERTFR-2026-ALE-021"
    # The later case names the earlier one on both timelines.
    linked = events(gateway, ref("PDL"), "alerte_recue_aussi") + events(gateway, ref("ARA"), "alerte_recue_aussi")
    assert [e["data"]["dossier"] for e in linked] in ([ref("ARA")], [ref("PDL")])
    for reference in (ref("PDL"), ref("ARA")):
        assert show(gateway, reference)["status"] == "A_DIFFUSER"  # each region approves its own broadcast

    # The very same bytes again to ARA alone: a true duplicate for ARA, answered 250, nothing new.
    code, _ = send(gateway, raw, ("ssi-ara@ars.test",), "alerte@esante.test")
    assert code == 250
    # ... and to BRE (with PDL again in the same transaction): BRE's message, processed for BRE.
    code, _ = send(gateway, raw, ("ssi-pdl@ars.test", "ssi-bre@ars.test"), "alerte@esante.test")
    assert code == 250
    bre = mail_to(smtp_sink, BRE_STAFF, 1)[0]
    assert ref("BRE") in bre["Subject"]
    told = text(bre)
    assert f"également reçue par : ARA ({ref('ARA')}), PDL ({ref('PDL')})" in told
    assert references(gateway) == sorted([ref("ARA"), ref("BRE"), ref("PDL")])
    assert len(smtp_sink.messages_to(PDL_STAFF)) == 1 and len(smtp_sink.messages_to(ARA_STAFF)) == 1
    assert {e["data"]["dossier"] for e in events(gateway, ref("PDL"), "alerte_recue_aussi")} >= {ref("BRE")}
    status = gateway.config.cli_json("status")
    assert status["inbound"]["processed"] == {"alert": 3}


def test_resend_to_another_region_after_a_single_region_delivery_is_processed_there(
        gateway: RunningGateway, smtp_sink: SmtpSink) -> None:
    raw = alert("<ale-later@esante.test>", reference="CERTFR-2026-ALE-022")
    send(gateway, raw, ("ssi-pdl@ars.test",), "alerte@esante.test")
    mail_to(smtp_sink, PDL_STAFF, 1)
    send(gateway, raw, ("ssi-ara@ars.test",), "alerte@esante.test")
    ara = mail_to(smtp_sink, ARA_STAFF, 1)[0]
    assert ref("ARA") in ara["Subject"]
    assert f"également reçue par : PDL ({ref('PDL')})" in text(ara)
    assert [e["data"]["dossier"] for e in events(gateway, ref("PDL"), "alerte_recue_aussi")] == [ref("ARA")]


def test_same_alert_reference_twice_in_one_region_is_linked_and_flagged(
        gateway: RunningGateway, smtp_sink: SmtpSink) -> None:
    send(gateway, alert("<ale-v1@esante.test>", reference="CERTFR-2026-ALE-023"), ("ssi-pdl@ars.test",),
         "alerte@esante.test")
    mail_to(smtp_sink, PDL_STAFF, 1)
    corrected = alert("<ale-v2@esante.test>", reference="CERTFR-2026-ALE-023",
                      title="Vulnérabilité critique dans un VPN (mise à jour)")
    send(gateway, corrected, ("ssi-pdl@ars.test",), "alerte@esante.test")
    second = mail_to(smtp_sink, PDL_STAFF, 2)[1]
    assert ref("PDL", 2) in second["Subject"] and "nouvelle version" in second["Subject"]
    told = text(second)
    assert "NOUVELLE VERSION de l'alerte CERTFR-2026-ALE-023, déjà reçue le" in told
    assert f"dans le dossier {ref('PDL', 1)}" in told and f"#fusionner {ref('PDL', 1)}" in told
    [flag] = events(gateway, ref("PDL", 2), "alerte_nouvelle_version")
    assert flag["data"]["dossier_precedent"] == ref("PDL", 1)
    [back] = events(gateway, ref("PDL", 1), "alerte_nouvelle_version_recue")
    assert back["data"]["nouveau_dossier"] == ref("PDL", 2)
    assert gateway.config.cli("cases", "verify").returncode == 0


OUT_OF_REGION = """\
From: RSSI Hospices civils <rssi@hcl.test>
To: SSI Pays de la Loire <ssi-pdl@ars.test>
Subject: Déclaration d'incident : rançongiciel
Message-ID: <hcl-1@hcl.test>
Date: Fri, 27 Nov 2026 09:12:00 +0100
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Bonjour,

Numéro FINESS : 690781810
Nom de la structure : Hospices civils de Lyon
Type d'incident : Rançongiciel
Date de détection : 27/11/2026 à 08h30

Des serveurs sont chiffrés.
"""


def _staff(gw: RunningGateway, body: str, parent: EmailMessage, sender: str, mailbox: str) -> None:
    raw = casemail.staff_mail(body, sender=sender, to=mailbox, subject=f"RE: {parent['Subject']}",
                              in_reply_to=parent["Message-ID"], date=datetime.now(UTC))
    send(gw, raw, (mailbox,), sender)


def test_out_of_region_declaration_is_flagged_and_transferred_by_staff_mail(
        gateway: RunningGateway, smtp_sink: SmtpSink) -> None:
    declarant = "rssi@hcl.test"
    send(gateway, OUT_OF_REGION.encode(), ("ssi-pdl@ars.test",), declarant)
    mail_to(smtp_sink, declarant, 1)  # acknowledged by the region it arrived in
    notice = mail_to(smtp_sink, PDL_STAFF, 1)[0]
    old = ref("PDL")
    assert "hors région" in notice["Subject"]
    told = text(notice)
    assert "HORS RÉGION" in told and "Auvergne-Rhône-Alpes (ARA)" in told and "#transferer ARA" in told
    [flag] = events(gateway, old, "hors_region")
    assert flag["data"]["region_etablissement"] == "ARA" and flag["data"]["departement"] == "69"

    # ARA's staff cannot take it: only the source region's staff give a case away.
    _staff(gateway, "#transferer ARA", notice, ARA_STAFF, "ssi-pdl@ars.test")
    refused = mail_to(smtp_sink, ARA_STAFF, 1)[0]
    assert "ne fait pas partie des agents SSI de la région PDL" in text(refused)
    # A region the gateway does not serve: a clear refusal, nothing moved.
    _staff(gateway, "#transferer OCC", notice, PDL_STAFF, "ssi-pdl@ars.test")
    receipt = mail_to(smtp_sink, PDL_STAFF, 2)[1]
    assert "région non configurée sur cette passerelle : OCC" in text(receipt)
    assert references(gateway) == [old]

    _staff(gateway, "#transferer ARA", notice, PDL_STAFF, "ssi-pdl@ars.test")
    receipt = mail_to(smtp_sink, PDL_STAFF, 3)[2]
    new = ref("ARA")
    assert f"nouvelle référence {new}" in text(receipt)
    assert references(gateway) == sorted([old, new])
    before, after = show(gateway, old), show(gateway, new)
    assert before["status"] == "CLOS" and after["region"] == "ARA"
    [closing] = [e for e in before["timeline"] if e["type"] == "statut" and e["data"]["vers"] == "CLOS"]
    assert closing["data"]["motif"] == f"transféré à la région ARA (dossier {new})"
    assert after["status"] == closing["data"]["de"] == "PRIS_EN_COMPTE"  # the work carries over
    assert [e["data"]["nouveau_dossier"] for e in events(gateway, old, "transfert")] == [new]
    assert [e["data"]["dossier_origine"] for e in events(gateway, new, "transfert_recu")] == [old]
    assert after["finess"] == "690781810" and after["declarant"] == declarant
    # The target region's staff are told, and so is the declarant, from ARA under the new reference.
    handed = mail_to(smtp_sink, ARA_STAFF, 2)[1]
    assert new in handed["Subject"] and "transférée par l'ARS Pays de la Loire" in handed["Subject"]
    assert old in text(handed)
    told = mail_to(smtp_sink, declarant, 2)[1]
    assert f"[{new}]" in told["Subject"] and "ssi-ara@ars.test" in str(told["From"])
    assert f"sous la référence {old}" in text(told) and f"nouvelle référence {new}" in text(told)
    # The original declaration went with the case.
    with sqlite3.connect(gateway.config.db_path) as db:
        moved = db.execute("SELECT m.kind FROM inbound_messages m JOIN cases c ON c.id = m.case_id "
                           "WHERE c.reference = ?", (new,)).fetchall()
    assert moved == [("declaration",)]
    assert gateway.config.cli("cases", "verify").returncode == 0


def test_a_staff_command_copied_to_two_regional_mailboxes_runs_once(
        gateway: RunningGateway, smtp_sink: SmtpSink) -> None:
    send(gateway, BREST.encode(), ("ssi-bre@ars.test",), "rssi@chu-brest.test")
    notice = mail_to(smtp_sink, BRE_STAFF, 1)[0]
    raw = casemail.staff_mail("#note vu avec l'établissement", sender=BRE_STAFF, to="ssi-bre@ars.test",
                              subject=f"RE: {notice['Subject']}", in_reply_to=notice["Message-ID"],
                              date=datetime.now(UTC))
    send(gateway, raw, ("ssi-pdl@ars.test", "ssi-bre@ars.test"), BRE_STAFF)
    mail_to(smtp_sink, BRE_STAFF, 2)  # the receipt
    wait_until(lambda: gateway.config.cli_json("status")["inbound"]["processed"].get("command") == 2, timeout=20)
    assert len(events(gateway, ref("BRE"), "note")) == 1
    with sqlite3.connect(gateway.config.db_path) as db:  # queued, delivered or not: one receipt only
        receipts = db.execute("SELECT count(*) FROM outbound_messages WHERE recipient = ? AND kind = ?",
                              (BRE_STAFF, "recu_commandes")).fetchone()[0]
    assert receipts == 1


NANTES = OUT_OF_REGION.replace("690781810", "440000289").replace("Hospices civils de Lyon", "CHU de Nantes").replace(
    "<hcl-1@hcl.test>", "<nantes-1@chu-nantes.test>").replace("rssi@hcl.test", "rssi@chu-nantes.test")


def test_a_declaration_to_two_regions_is_one_case_each_and_the_wrong_one_says_so(
        gateway: RunningGateway, smtp_sink: SmtpSink) -> None:
    declarant = "rssi@chu-nantes.test"
    send(gateway, NANTES.encode(), ("ssi-pdl@ars.test", "ssi-ara@ars.test"), declarant)
    acks = mail_to(smtp_sink, declarant, 2)  # each region acknowledges what it received
    assert sorted(str(a["From"]).rpartition("<")[2] for a in acks) == ["ssi-ara@ars.test>", "ssi-pdl@ars.test>"]
    pdl = mail_to(smtp_sink, PDL_STAFF, 1)[0]
    ara = mail_to(smtp_sink, ARA_STAFF, 1)[0]
    assert "HORS RÉGION" not in text(pdl)
    told = text(ara)
    assert "HORS RÉGION" in told and "Elle a reçu ce même message directement" in told and "#clore" in told
    # ARA transfers anyway: PDL is told the new case may duplicate the one it already follows.
    _staff(gateway, "#transferer PDL", ara, ARA_STAFF, "ssi-ara@ars.test")
    handed = mail_to(smtp_sink, PDL_STAFF, 2)[1]
    assert ref("PDL", 2) in handed["Subject"]
    assert f"DOUBLON POSSIBLE du dossier ouvert {ref('PDL', 1)}" in text(handed)
