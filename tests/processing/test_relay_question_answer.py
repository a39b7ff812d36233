"""Staff answer an establishment's question on a relayed alert by « #repondre » (RSSI finding 2).

End to end by mail: an ACSS alert is relayed to the laboratories, one of them asks a question in
answer, staff get the ``reponse_diffusion`` notification and answer it with « #repondre … ». Before:
the agent's mail quoted the relayed message in its References, so the acknowledgement prehandler
took it for the laboratory's reply (« Réponse de agent@ars.test (Laboratoire …) ») and counted it as
the laboratory's read receipt; and « #repondre » would have written to the alert's declarant.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from mailgateway.store.engine import transaction
from mailgateway.store.models import Contact
from tests.processing.test_relay_replies import ACSS_KEY, ALERT_BODY, acknowledged, answer, relayed
from tests.processing.test_relay_replies import gw as gw  # the fixture
from tests.support import casemail
from tests.support.casegateway import Gateway

QUESTION = ("Bonjour,\n\nNos automates sont-ils concernés si le correctif n'est pas encore publié ?\n\n"
            "Cordialement,\nLe RSSI\n")


def _staff_answers(gw: Gateway, ref: str, body: str) -> object:
    """The agent answers the notification of the question, as a mail client would thread it."""
    notice = [n for n in gw.outbound("notification_reponse_diffusion") if n.recipient == "agent@ars.test"][-1]
    parsed = casemail.parse(notice.raw)
    references = str(parsed.get("References", "")).split()
    return gw.feed(casemail.staff_mail(body, subject=f"RE: {parsed['Subject']}", in_reply_to=notice.message_id,
                                       references=references))


@pytest.fixture
def asked(gw: Gateway) -> Iterator[str]:
    ref = relayed(gw)
    result = gw.feed(answer(gw, 1, QUESTION, message_id="<question-1@e1.test>"))
    assert result.status == "processed", result
    assert acknowledged(gw) == {"ssi@e1.test"}
    yield ref


def test_repondre_on_the_notification_answers_the_establishment_that_asked(gw: Gateway, asked: str) -> None:
    result = _staff_answers(gw, asked, "#repondre Oui : isolez-les du réseau en attendant le correctif.\n")
    assert result.kind == "command" and result.status == "processed", result  # type: ignore[attr-defined]
    sent = gw.outbound("reponse")
    assert [r.recipient for r in sent] == ["ssi@e1.test"]  # the laboratory, not acss@esante.test
    mail = casemail.parse(sent[0].raw)
    assert mail["In-Reply-To"] == "<question-1@e1.test>"
    assert f"[{asked}]" in str(mail["Subject"])
    assert "isolez-les du réseau" in casemail.text_of(sent[0].raw)
    assert "réponse envoyée à ssi@e1.test" in gw.receipt_text()


def test_staff_mail_is_never_an_establishment_reply_nor_a_read_receipt(gw: Gateway, asked: str) -> None:
    before = len(gw.outbound("notification_reponse_diffusion"))
    _staff_answers(gw, asked, "#repondre Oui.\n")
    _staff_answers(gw, asked, "#note appel du laboratoire prévu\n")
    assert len(gw.outbound("notification_reponse_diffusion")) == before  # no « Réponse de agent@ars.test »
    assert acknowledged(gw) == {"ssi@e1.test"}  # the agent's mail counted for nobody
    events = gw.events(asked)
    assert not [e for e in events if e.type == "message_recu" and e.actor == "agent@ars.test"
                and (e.data or {}).get("type") == "reply"]



def test_a_relay_reaching_nobody_because_contacts_are_off_says_so(gw: Gateway) -> None:  # RSSI finding 1
    raw = casemail.message(sender="acss@esante.test", to="ssi-ara@ars.test",
                           subject="[CERT Santé] Alerte 2026-ALE-031 : vulnérabilité critique", body=ALERT_BODY,
                           message_id="<ale-031@esante.test>")
    ref = gw.feed(casemail.sign(raw, ACSS_KEY)).case_ref
    assert ref
    with transaction(gw.app.factory) as s:
        for contact in s.scalars(select(Contact).where(Contact.address.like("ssi@e_.test"))):
            contact.status = "bouncing"
    gw.command(ref, "#diffuser\n")
    receipt = " ".join(gw.receipt_text().split())
    assert ("3 établissements ciblés sans adresse active : contacts désactivés après des refus — "
            "#reactiver <adresse> (par exemple : ssi@e0.test, ssi@e1.test, ssi@e2.test") in receipt
