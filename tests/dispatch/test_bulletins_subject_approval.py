"""Approving a bulletin by a reply whose DKIM signature does not cover In-Reply-To / References
(some Microsoft 365 setups): the signed Subject of the preview names the bulletin (docs/guarantees.md).

Before: such a reply was refused with "aucun dossier concerné : répondez au message du dossier ou
indiquez sa référence [SSI-XXX-AAAA-NNNN] dans l'objet", which nobody can do for a bulletin.

Only our own Subjects ("[Bulletin 12] Aperçu du bulletin : …") name a bulletin: an attacker probe
showed that any mention ("Point sur le bulletin 1 …") let "#annuler <jeton d'un dossier>" cancel
bulletin 1 and swallowed "#confirmer <jeton d'un dossier>".
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from mailgateway.bulletins.by_mail import subject_bulletin
from mailgateway.store.engine import transaction
from mailgateway.store.models import Bulletin, OutboundMessage
from tests.support import casemail
from tests.support.bulletins import fill_directory
from tests.support.casegateway import NOW, Gateway, make_gateway
from tests.support.dkim import dkimpy_sign

# What the signer covers: everything but the threading headers, or not even the Subject.
# Beside what each test leaves out, what a real signer covers: the headers that decide how the
# body reads (mail/analyse.py ``unpinned_reading``).
NO_THREADING = ("from", "to", "subject", "date", "message-id", "content-type", "content-transfer-encoding")
NO_SUBJECT = ("from", "to", "date", "message-id", "content-type", "content-transfer-encoding")


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
    assert subject_of(preview).endswith("[Bulletin 1] Aperçu du bulletin : Hameçonnage"), subject_of(preview)
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
    assert "[Bulletin 1] Confirmation demandée : Hameçonnage" in subject_of(confirmation), text
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


# --- only our own Subjects name a bulletin (attacker probe) --------------------------------------

PROBE_SUBJECT = "Point sur le bulletin 1 et le dossier en attente"


def grave_case_token(gw: Gateway, n: int = 1) -> tuple[str, str]:
    """A GRAVE case whose closing waits for a confirmation: (reference, token)."""
    ref = gw.declare(n)
    gw.command(ref, "#qualifier grave\n#clore\n")
    token = re.search(r"#confirmer ([0-9a-f]{12})", gw.receipt_text())
    assert token is not None and gw.case(ref).status == "QUALIFIE"
    return ref, token.group(1)


def bulletin_mails(gw: Gateway) -> int:
    return len(previews(gw))


@pytest.mark.parametrize("subject", [
    "RE: [Bulletin 12] Aperçu du bulletin : Hameçonnage",
    "TR: AW: [TLP:AMBER] [Bulletin 12] Confirmation demandée : x : y",
    "RE: [TLP:CLEAR]  [Bulletin 12]   Bulletin diffusé : x",
    "[bulletin 12] bulletin annulé : x",
    "Re: [Bulletin 12] Bulletin refusé : RE: [Bulletin 3] Aperçu du bulletin : x",
    "RE: [Bulletin 12] Commande refusée : Hameçonnage",
])
def test_our_own_subjects_name_their_bulletin(subject: str) -> None:
    assert subject_bulletin(subject) == 12


@pytest.mark.parametrize("subject", [
    PROBE_SUBJECT, "Aperçu du bulletin 12 : x", "Confirmation demandée — bulletin 12 : x",
    "[Bulletin 12] et le dossier en attente", "[Bulletin 12] Aperçu du bulletin",
    "Point : [Bulletin 12] Aperçu du bulletin : x", "[Bulletin 012] Aperçu du bulletin : x",
    "[Bulletin ١٢] Aperçu du bulletin : x", "[Bulletin 1234567890] Aperçu du bulletin : x",
    "[Bulletin SSI - ARS Auvergne-Rhône-Alpes] Hameçonnage", "[Bulletin 12]Aperçu du bulletin : x", "",
    "[TLP:AMBER" + " " * 10_000, "RE: " * 5_000 + "[Bulletin" * 5_000,
])
def test_a_mention_or_a_near_miss_names_no_bulletin(subject: str) -> None:
    assert subject_bulletin(subject) is None


def test_the_probe_mail_cancels_nothing_and_the_case_commands_answer_it(gw: Gateway) -> None:
    request(gw)
    before = bulletin_mails(gw)
    gw.feed(mail("#annuler 0123456789ab\n", subject=PROBE_SUBJECT))
    assert bulletin(gw).status == "draft"
    assert bulletin_mails(gw) == before  # the bulletin handler never saw it
    assert "aucune commande en attente pour ce jeton" in gw.receipt_text()


def test_a_case_token_goes_to_the_case_even_under_a_bulletin_subject_or_thread(gw: Gateway) -> None:
    preview = request(gw)
    ref, token = grave_case_token(gw)
    # "#annuler <jeton du dossier>" threaded to the preview, under its (signed) Subject.
    gw.feed(mail(f"#annuler {token}\n", subject=f"RE: {subject_of(preview)}", in_reply_to=preview.message_id,
                 headers=(*NO_THREADING, "in-reply-to", "references")))
    assert bulletin(gw).status == "draft"
    assert any(e.type == "confirmation_annulee" for e in gw.events(ref))
    # "#confirmer <jeton du dossier>" under the probe's Subject runs the case confirmation.
    other, token = grave_case_token(gw, 2)
    before = bulletin_mails(gw)
    gw.feed(mail(f"#confirmer {token}\n", subject=PROBE_SUBJECT))
    assert gw.case(other).status == "CLOS"
    assert bulletin(gw).status == "draft" and bulletin_mails(gw) == before
    assert "jeton inconnu pour le bulletin" not in gw.receipt_text()


def test_annuler_by_subject_alone_needs_the_bulletins_pending_token(gw: Gateway) -> None:
    preview = request(gw)
    gw.feed(mail("#annuler\n", subject=f"RE: {subject_of(preview)}", in_reply_to=preview.message_id))
    assert bulletin(gw).status == "draft"
    assert "jeton manquant" in casemail.text_of(previews(gw)[-1].raw)
    gw.feed(mail("#diffuser\n", subject=f"RE: {subject_of(preview)}", in_reply_to=preview.message_id))
    confirmation = previews(gw)[-1]
    token = re.search(r"#confirmer ([0-9a-f]{12})", casemail.text_of(confirmation.raw))
    assert token is not None
    gw.feed(mail(f"#annuler {token.group(1)}\n", subject=f"RE: {subject_of(confirmation)}",
                 in_reply_to=confirmation.message_id))
    assert bulletin(gw).status == "cancelled"
    assert "[Bulletin 1] Bulletin annulé" in subject_of(previews(gw)[-1])


def test_a_threaded_reply_still_cancels_with_a_bare_annuler(gw: Gateway) -> None:
    preview = request(gw)
    gw.feed(mail("#annuler\n", subject="RE: autre chose", in_reply_to=preview.message_id,
                 headers=(*NO_THREADING, "in-reply-to", "references")))
    assert bulletin(gw).status == "cancelled"


def test_a_free_text_mention_approves_nothing(gw: Gateway) -> None:
    preview = request(gw)
    before = bulletin_mails(gw)
    gw.feed(mail("#diffuser\n", subject="RE: Aperçu du bulletin 1 : Hameçonnage", in_reply_to=preview.message_id))
    assert bulletin_mails(gw) == before and bulletin(gw).status == "draft"


def test_a_mistyped_token_is_a_refused_command_not_a_refused_bulletin(gw: Gateway) -> None:
    """Found by an outside tester: « Bulletin refusé : RE: [TLP:GREEN]… » for a typo in the token,
    while the bulletin was still waiting, and no word of where the right token is."""
    preview = request(gw)
    gw.feed(mail("#diffuser\n", subject=f"RE: {subject_of(preview)}", in_reply_to=preview.message_id))
    confirmation = previews(gw)[-1]
    gw.feed(mail("#confirmer 0123456789ab\n", subject=f"RE: {subject_of(confirmation)}",
                 in_reply_to=confirmation.message_id))
    refusal = previews(gw)[-1]
    assert subject_of(refusal).endswith("[Bulletin 1] Commande refusée : Hameçonnage"), subject_of(refusal)
    text = " ".join(casemail.text_of(refusal.raw).split())
    assert "jeton inconnu pour le bulletin 1" in text and "« Confirmation demandée »" in text, text
    assert "le bulletin reste en attente" in text and bulletin(gw).status == "draft"
