"""An authentic alert is flagged to staff when it is old or was not addressed to this mailbox
(outside attack: a genuine ACSS alert signed « To: ssi-ara » was re-sent months later to every
regional mailbox, each opening an authenticated « à diffuser » case with nothing to tell)."""

from __future__ import annotations

from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP

import pytest

from mailgateway.app import build_app
from mailgateway.clock import FixedClock
from mailgateway.intake.accept import accept_in
from mailgateway.settings import parse_settings
from mailgateway.store.engine import transaction
from tests.support import casemail
from tests.support.casegateway import NOW, Gateway, settings_data
from tests.support.db import at_head
from tests.support.dkim import GeneratedKey, dkimpy_sign, rsa_key, zone

KEY = rsa_key("rsa", "esante.test")


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    data = settings_data(at_head(sqlite_url))
    data["authentication"]["static_keys"] = {**data["authentication"]["static_keys"], **zone(KEY)}
    clock = FixedClock(NOW)
    app = build_app(parse_settings(data), clock=clock)
    try:
        yield Gateway(app, clock)
    finally:
        app.close()


def alert(key: GeneratedKey, date: str, n: int) -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "CERT Santé <alerte@esante.test>"
    msg["To"] = "ssi-ara@ars.test"
    msg["Subject"] = f"Alerte - Campagne de fax frauduleux CERTFR-2026-ALE-{n:03d}"
    msg["Message-ID"] = f"<alerte-{n}@esante.test>"
    msg["Date"] = date
    msg.set_content("TLP:CLEAR\n\nAlerte de sécurité : campagne de fax frauduleux visant les "
                    "établissements de santé. Numéro utilisé : 01 23 45 67 89.\n")
    return casemail.sign(msg.as_bytes(), key)


def notice_text(gw: Gateway, to: str) -> str:
    return casemail.text_of(gw.last("notification_equipe", to).raw)


def test_a_current_alert_addressed_to_the_mailbox_carries_no_caution(gw: Gateway) -> None:
    assert gw.feed(alert(KEY, casemail.DATE, 1)).status == "processed"
    assert "À VÉRIFIER" not in notice_text(gw, "agent@ars.test")


def test_an_old_alert_is_flagged_before_any_relay(gw: Gateway) -> None:
    assert gw.feed(alert(KEY, "Mon, 01 Jun 2026 10:00:00 +0200", 2)).status == "processed"
    text = notice_text(gw, "agent@ars.test")
    assert "À VÉRIFIER AVANT TOUTE DIFFUSION" in text and "alerte ancienne : datée du 01/06/2026" in text


def test_an_alert_signed_for_another_mailbox_is_flagged_in_the_region_it_was_pushed_to(gw: Gateway) -> None:
    with transaction(gw.app.factory) as s:
        inbound = accept_in(s, alert(KEY, casemail.DATE, 3), source="smtp", now=NOW,
                            rcpt_tos=["ssi-pdl@ars.test"], region="PDL").inbound_id
    result = gw.app.processor.process(inbound)
    assert result.status == "processed" and result.case_ref and result.case_ref.startswith("SSI-PDL-")
    text = notice_text(gw, "pdl@ars.test")
    assert "cette boîte (ssi-pdl@ars.test) n'est ni dans le « À » ni dans le « Cc » signés" in text


def test_an_unsigned_cc_naming_the_mailbox_does_not_hide_a_reinjection(gw: Gateway) -> None:
    """An outside attacker added one line, « Cc: ssi-pdl@ars.test », to a genuine alert whose
    signature does not cover Cc, and re-sent it there: no caution was shown."""
    raw = alert(KEY, casemail.DATE, 4)
    raw = raw[raw.index(b"\r\nFrom: ") + 2:]  # our signer's signature off: the cell's covers no Cc
    signed = dkimpy_sign(raw, KEY, headers=("from", "to", "subject", "date", "message-id", "mime-version",
                                            "content-type", "content-transfer-encoding")) + raw
    cut = signed.index(b"\r\nSubject: ") + 2
    forged = signed[:cut] + b"Cc: ssi-pdl@ars.test\r\n" + signed[cut:]
    with transaction(gw.app.factory) as s:
        inbound = accept_in(s, forged, source="smtp", now=NOW, rcpt_tos=["ssi-pdl@ars.test"],
                            region="PDL").inbound_id
    result = gw.app.processor.process(inbound)
    assert result.status == "processed" and result.case_ref and result.case_ref.startswith("SSI-PDL-")
    text = notice_text(gw, "pdl@ars.test")
    assert "cette boîte (ssi-pdl@ars.test) n'est ni dans le « À » ni dans le « Cc » signés" in text


def test_an_alert_whose_reading_is_not_signed_says_why_it_is_not_authentic(gw: Gateway) -> None:
    """An outside tester (an agent): « Authentifiée : NON » two lines below « authentifié par
    DKIM », and nothing said why."""
    raw = alert(KEY, casemail.DATE, 5)
    raw = raw[raw.index(b"\r\nFrom: ") + 2:]
    signed = dkimpy_sign(raw, KEY, headers=("from", "to", "subject", "date", "message-id")) + raw
    assert gw.feed(signed).status == "processed"
    text = notice_text(gw, "agent@ars.test").replace("\r\n", " ")
    assert ("Authentifiée : NON — aucune diffusion possible (signature DKIM valide, mais en-têtes Content-Type, "
            "Content-Transfer-Encoding non couverts par la signature DKIM") in text, text


def test_an_unsigned_alert_says_why_it_is_not_authentic(gw: Gateway) -> None:
    """An outside tester (an agent): an unsigned alert, or one whose signature no longer matches
    (a footer added in transit), said « non authentifié » and nothing more."""
    raw = alert(KEY, casemail.DATE, 6)
    unsigned = raw[raw.index(b"\r\nFrom: ") + 2:]
    assert gw.feed(unsigned).status == "processed"
    text = notice_text(gw, "agent@ars.test").replace("\r\n", " ")
    assert "Authentifiée : NON — aucune diffusion possible (aucune signature DKIM valide de l'ACSS" in text, text
