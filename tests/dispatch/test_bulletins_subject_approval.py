"""Approving a bulletin by a reply whose DKIM signature does not cover In-Reply-To / References
(some Microsoft 365 setups): the signed Subject of the preview names the bulletin (docs/guarantees.md).

Before: such a reply was refused with "aucun dossier concerné : répondez au message du dossier ou
indiquez sa référence [SSI-XXX-AAAA-NNNN] dans l'objet", which nobody can do for a bulletin.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from mailgateway.store.engine import transaction
from mailgateway.store.models import Bulletin, OutboundMessage
from tests.support import casemail
from tests.support.bulletins import fill_directory
from tests.support.casegateway import NOW, Gateway, make_gateway
from tests.support.dkim import dkimpy_sign

# What the signer covers: everything but the threading headers, or not even the Subject.
NO_THREADING = ("from", "to", "subject", "date", "message-id")
NO_SUBJECT = ("from", "to", "date", "message-id")


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    for gateway in make_gateway(sqlite_url):
        with transaction(gateway.app.factory) as s:
            fill_directory(s, NOW, 3, category="LBM")
        yield gateway


def mail(body: str, *, subject: str, in_reply_to: str | None = None, sender: str = "agent@ars.test",
         headers: tuple[str, ...] = NO_THREADING) -> bytes:
    raw = casemail.message(sender=sender, to="ssi-ara@ars.test", subject=subject, body=body,
                           in_reply_to=in_reply_to)
    return dkimpy_sign(raw, casemail.staff_key(), headers=headers) + raw


def previews(gw: Gateway, to: str = "agent@ars.test") -> list[OutboundMessage]:
    return gw.outbound("bulletin_apercu", to)


def subject_of(row: OutboundMessage) -> str:
    return str(casemail.parse(row.raw)["Subject"])


def request(gw: Gateway) -> OutboundMessage:
    gw.feed(mail("#cible categorie=LBM\nUne campagne vise les laboratoires.\n", subject="#bulletin Hameçonnage",
                 headers=(*NO_THREADING, "in-reply-to", "references")))
    preview = previews(gw)[-1]
    assert "Aperçu du bulletin" in subject_of(preview)
    return preview


def bulletin(gw: Gateway) -> Bulletin:
    with gw.app.factory() as s:
        row = s.scalars(select(Bulletin)).one()
        s.expunge(row)
        return row


def test_a_reply_whose_threading_is_unsigned_approves_by_its_signed_subject(gw: Gateway) -> None:
    preview = request(gw)
    gw.feed(mail("#diffuser\n", subject=f"RE: {subject_of(preview)}", in_reply_to=preview.message_id))
    confirmation = previews(gw)[-1]
    text = casemail.text_of(confirmation.raw)
    assert "Confirmation demandée" in subject_of(confirmation), text
    token = re.search(r"#confirmer ([0-9a-f]{12})", text)
    assert token is not None and bulletin(gw).status == "draft"  # the token still holds
    gw.feed(mail(f"#confirmer {token.group(1)}\n", subject=f"RE: {subject_of(confirmation)}",
                 in_reply_to=confirmation.message_id))
    assert bulletin(gw).status == "sent"
    assert {r.recipient for r in gw.outbound("bulletin")} == {"ssi@e0.test", "ssi@e1.test", "ssi@e2.test"}
    assert not gw.outbound("recu_commandes")  # never the case-command refusal


def test_the_subject_route_still_requires_staff_of_the_bulletins_region(gw: Gateway) -> None:
    preview = request(gw)
    gw.feed(mail("#diffuser\n", subject=f"RE: {subject_of(preview)}", in_reply_to=preview.message_id,
                 sender="pdl@ars.test"))
    refusal = previews(gw, "pdl@ars.test")
    assert refusal and "#confirmer" not in casemail.text_of(refusal[-1].raw)
    assert "ne fait pas partie des agents SSI de la région ARA" in casemail.text_of(refusal[-1].raw)
    assert bulletin(gw).status == "draft"


def test_without_a_signed_subject_the_refusal_says_why_and_what_works(gw: Gateway) -> None:
    preview = request(gw)
    gw.feed(mail("#diffuser\n", subject=f"RE: {subject_of(preview)}", in_reply_to=preview.message_id,
                 headers=NO_SUBJECT))
    text = " ".join(casemail.text_of(gw.last("recu_commandes", "agent@ars.test").raw).split())
    assert "ne signe pas (DKIM) les en-têtes In-Reply-To, References" in text
    assert "« #confirmer <jeton> » dans un nouveau message" in text
    assert "répondez au message du dossier" not in text
    assert bulletin(gw).status == "draft"
