"""Staff mail in which no command was recognised gets an answer that says so and suggests the
nearest command (issue 17): ``assigner moi`` without "#", a command under the "-- " signature, a
typo. Only authenticated staff are answered; an establishment or a forged staff From never is.

Before: such a mail was attached to the case in silence (or, for a typo, answered with the bare
list of commands), and staff believed the case was assigned.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from mailgateway.mail.commands import distance, nearest_command
from mailgateway.mail.labels import load_labels
from tests.support import casemail
from tests.support.casegateway import Gateway, make_gateway


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def receipts(gw: Gateway, to: str = "agent@ars.test") -> int:
    return len(gw.outbound("recu_commandes", to))


def test_assigner_moi_without_hash_is_answered_with_the_command_to_write(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "Bonjour,\nassigner moi\nMerci\n")
    text = gw.receipt_text()
    assert "Aucune commande n'a été reconnue" in text and "rien n'a été modifié" in text
    assert "« assigner moi » : sans « # » en début de ligne" in text and "→ #assigner moi" in text
    assert "#aide" in text  # the command list follows
    assert gw.case(ref).assignee is None


def test_a_command_under_the_signature_is_pointed_out(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "Je prends le dossier.\n-- \nAgent SSI\nARS ARA\n#assigner moi\n")
    text = gw.receipt_text()
    assert "« #assigner moi » : sous la ligne de signature « -- »" in text
    assert gw.case(ref).assignee is None


def test_a_typo_gets_the_nearest_command(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#repondee Bonjour, votre dossier est suivi.\n")
    text = gw.receipt_text()
    assert "[refusée]  #repondee Bonjour" in text
    assert "vouliez-vous écrire « #repondre Bonjour, votre dossier est suivi. »" in text
    assert not gw.outbound("reponse")
    gw.command(ref, "#qualifer grave\n")
    assert "« #qualifier grave »" in gw.receipt_text()


def test_nothing_is_suggested_when_nothing_is_near(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "Bonjour, je regarde ce dossier demain.\n")
    text = gw.receipt_text()
    assert "Aucune commande n'a été reconnue" in text and "Vouliez-vous écrire" not in text


def test_an_establishment_writing_command_words_gets_no_receipt(gw: Gateway) -> None:
    ref = gw.declare()
    notification = gw.notification(ref, "agent@ars.test")
    raw = casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}] Déclaration",
                           body="assigner moi\n#repondee test\n", in_reply_to=notification.message_id)
    gw.feed(casemail.sign(raw, casemail.establishment_key()))
    assert not gw.outbound("recu_commandes", "dsi@chu.test") and receipts(gw) == 0


def test_an_unsigned_mail_with_a_staff_from_gets_no_suggestion(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "assigner moi\n", signed=False)
    assert receipts(gw) == 0  # the From proves nothing: the real agent is not mailed
    gw.command(ref, "assigner moi\n", key=casemail.forger_key())
    assert receipts(gw) == 0


def test_edit_distance_is_bounded_on_hostile_words() -> None:
    labels = load_labels()
    assert distance("repondee", "repondre", 2) == 1 and distance("asigner", "assigner", 2) == 1
    assert distance("a" * 30, "b" * 30, 3) == 4
    assert nearest_command("x" * 5000, labels) is None  # too long to be a command: never compared
    start = time.perf_counter()
    for _ in range(200):
        nearest_command("abcdefghijklmnopqrstuvwxyz", labels)
    assert time.perf_counter() - start < 2.0


def test_staff_answering_an_establishment_with_the_mailbox_in_copy_get_no_receipt(gw: Gateway) -> None:
    """A reply-all to an establishment that copies the SSI mailbox is filed, not answered: staff
    would get a « no command » receipt for every message of their conversation. With a line that
    looks like a command, the receipt still comes (staff meant something)."""
    ref = gw.declare()
    gw.command(ref, "Bonjour, nous revenons vers vous demain.\n", to="dsi@chu.test, ssi-ara@ars.test")
    assert receipts(gw) == 0
    gw.command(ref, "Bonjour,\nassigner moi\n", to="dsi@chu.test, ssi-ara@ars.test")
    assert receipts(gw) == 1 and "→ #assigner moi" in gw.receipt_text()


def test_agents_answering_each_other_with_the_mailbox_in_copy_get_no_receipt(gw: Gateway) -> None:
    """A notification names every agent in To: « Répondre à tous » between agents copies the SSI
    mailbox. Filed on the case, no « no command » receipt with the whole help to each (found by an
    outside tester); written to the gateway alone, or with a command-like line, it is answered."""
    ref = gw.declare()
    gw.command(ref, "Je m'en occupe, je connais bien leur DSI.\n", to="ssi-ara@ars.test, referent@ars.test")
    assert receipts(gw) == 0
    assert any(e.type == "message_recu" for e in gw.events(ref)[-2:])  # filed on the case
    gw.command(ref, "Je regarde.\n", to="ssi-ara@ars.test, agent@ars.test")  # the sender itself in copy
    assert receipts(gw) == 1
    gw.command(ref, "Bonjour,\nassigner moi\n", to="ssi-ara@ars.test, referent@ars.test")
    assert receipts(gw) == 2 and "→ #assigner moi" in gw.receipt_text()


def test_a_new_staff_mail_with_no_reference_and_no_command_is_answered_not_quarantined(gw: Gateway) -> None:
    """« assigner moi » in a new mail (no case reference, no "#"): the agent is told what was not
    understood and what to write; an unsigned copy of the same mail is quarantined as before."""
    result = gw.feed(casemail.staff_mail("Bonjour,\nassigner moi\n", subject="Dossier de ce matin"))
    assert result.status == "processed"
    text = gw.receipt_text()
    assert "Aucune commande n'a été reconnue" in text and "→ #assigner moi" in text
    unsigned = gw.feed(casemail.staff_mail("Bonjour,\nassigner moi\n", subject="Dossier", signed=False))
    assert unsigned.status == "quarantined" and receipts(gw) == 1


def test_commands_written_under_a_marked_quote_run_and_the_quoted_ones_never(gw: Gateway) -> None:
    """Thunderbird answers under the quote by default: an outside tester (an ARS agent) wrote
    « #assigner moi » below the quoted notification and nothing ran. Under a quote marked with
    ">", what is not quoted is new text; the quoted notification's own commands stay quoted."""
    ref = gw.declare()
    quoted = "\n".join("> " + line for line in casemail.text_of(gw.notification(ref, "agent@ars.test").raw)
                       .splitlines())
    assert "#" in quoted  # the notification lists commands: quoted, they must not run
    body = f"Le 27/11/2026 à 09:12, SSI ARA a écrit :\n{quoted}\n\n#assigner moi\n#qualifier grave\n\n-- \nAgent\n"
    gw.command(ref, body)
    case = gw.case(ref)
    assert case.assignee == "agent@ars.test" and case.severity == "GRAVE"
    text = gw.receipt_text()
    assert "[appliquée]" in text and "[refusée]" not in text, text
    # Under an unmarked quote (Outlook's header block), nothing below is read.
    gw.command(ref, "Merci.\n\nDe : SSI ARA\nEnvoyé : vendredi 27 novembre 2026 09:12\nÀ : agent@ars.test\n"
                    "Objet : Nouvelle déclaration\n\n#clore\n")
    assert gw.case(ref).status != "CLOS"
