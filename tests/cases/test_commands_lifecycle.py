"""Closing, confirmation tokens, reopening, replies to closed cases, duplicates, queries, broadcasts."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from mailgateway.store.engine import transaction
from mailgateway.store.models import Case
from tests.support import casemail
from tests.support.bulletins import fill_directory
from tests.support.casegateway import NOW, Gateway, make_gateway


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def token_of(text: str) -> str:
    match = re.search(r"#confirmer ([0-9a-f]{12})", text)
    assert match, text
    return match.group(1)


def test_closing_a_non_grave_case_is_immediate_and_rouvrir_reopens(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#qualifier significatif\n#clore traité localement\n")
    case = gw.case(ref)
    assert case.status == "CLOS" and case.closed_at is not None
    gw.command(ref, "#rouvrir nouvel élément\n")
    case = gw.case(ref)
    assert case.status == "SUIVI" and case.closed_at is None


def test_closing_a_grave_case_needs_a_one_time_token_from_staff_of_the_region(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#qualifier grave\n#clore\n")
    assert gw.case(ref).status == "QUALIFIE"
    token = token_of(gw.receipt_text())
    # Staff of another region cannot use it, even with the token in the subject's thread.
    gw.feed(casemail.staff_mail(f"#confirmer {token}\n", sender="pdl@ars.test", subject="confirmation"))
    assert gw.case(ref).status == "QUALIFIE"
    assert "commande ignorée" in gw.receipt_text("pdl@ars.test")
    # A new mail (not threaded) with the token: the token names the case.
    result = gw.feed(casemail.staff_mail(f"#confirmer {token}\n", sender="referent@ars.test", subject="ok"))
    assert result.case_ref == ref
    assert gw.case(ref).status == "CLOS"
    confirmation = next(e for e in gw.events(ref) if e.type == "confirmation")
    assert confirmation.actor == "referent@ars.test"
    assert confirmation.data["demandee_par"] == "agent@ars.test"
    # Single use.
    gw.command(ref, "#rouvrir\n")
    gw.feed(casemail.staff_mail(f"#confirmer {token}\n", subject="encore"))
    assert gw.case(ref).status == "SUIVI"
    assert "jeton déjà utilisé" in gw.receipt_text()


def test_an_expired_token_is_refused(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#qualifier grave\n#clore\n")
    token = token_of(gw.receipt_text())
    gw.clock.advance(hours=49)
    gw.feed(casemail.staff_mail(f"#confirmer {token}\n", subject="ok"))
    assert gw.case(ref).status == "QUALIFIE"
    assert "jeton expiré" in gw.receipt_text()


def test_reply_to_a_closed_case_reopens_it_by_default(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#assigner moi\n#clore\n")
    ack = gw.last("accuse_reception", "dsi@chu.test")
    # Only an authenticated reply from the establishment reopens (test_budgets.py: others don't).
    gw.feed(casemail.sign(casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}]",
                                           body="Le problème est revenu.\n", in_reply_to=ack.message_id),
                          casemail.establishment_key()))
    assert gw.case(ref).status == "PRIS_EN_COMPTE"
    notified = gw.last("notification_reponse")
    assert notified.recipient == "agent@ars.test"  # the assignee, not the whole region
    assert "dossier rouvert" in casemail.parse(notified.raw)["Subject"]


def test_reply_to_a_closed_case_opens_a_linked_case_when_configured(sqlite_url: str) -> None:
    for gw in make_gateway(sqlite_url, reply_to_closed="link"):
        ref = gw.declare()
        gw.command(ref, "#clore\n")
        ack = gw.last("accuse_reception", "dsi@chu.test")
        result = gw.feed(casemail.sign(casemail.message(
            sender="dsi@chu.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}]",
            body="Le problème est revenu.\n", in_reply_to=ack.message_id), casemail.establishment_key()))
        assert result.case_ref != ref and result.case_ref
        old, new = gw.case(ref), gw.case(result.case_ref)
        assert old.status == "CLOS"
        assert new.linked_case_id == old.id and new.finess == old.finess and new.declarant == "dsi@chu.test"
        assert "dossier_lie" in [e.type for e in gw.events(ref)]
        assert "dossier_lie" in [e.type for e in gw.events(new.reference)]


def test_a_duplicate_declaration_is_linked_and_fusionner_merges_it(gw: Gateway) -> None:
    first = gw.declare(1)
    gw.clock.advance(hours=5)
    second = gw.declare(2)
    a, b = gw.case(first), gw.case(second)
    assert b.linked_case_id == a.id and a.linked_case_id == b.id
    assert "doublon_possible" in [e.type for e in gw.events(first)]
    assert "doublon_possible" in [e.type for e in gw.events(second)]
    notification = gw.notification(second, "agent@ars.test")
    assert f"DOUBLON POSSIBLE du dossier ouvert {first}" in casemail.text_of(notification.raw)
    gw.command(second, f"#fusionner {first}\n")
    b = gw.case(second)
    assert b.merged_into_id == a.id and b.status == "CLOS"
    assert [e.data for e in gw.events(first) if e.type == "fusion"] == [{"doublon_absorbe": second}]
    assert [e.data for e in gw.events(second) if e.type == "fusion"] == [{"fusionne_dans": first}]
    # Later mail in the duplicate's thread goes to the surviving case.
    result = gw.command(second, "#note suite\n")
    assert result.case_ref == first


def test_commands_answering_a_merged_case_say_where_they_ran_and_never_write_to_another_declarant(
        gw: Gateway) -> None:
    # An outside tester: two people of one hospital, their cases merged; « #repondre » from the
    # merged case's notification went to the other person, the receipt saying nothing of why.
    first = gw.declare(1, sender="rssi4@chu.test")
    gw.clock.advance(hours=1)
    second = gw.declare(2, sender="rssi3@chu.test")
    gw.command(second, f"#fusionner {first}\n")

    gw.command(second, "#note rappel du RSSI\n#repondre Bonjour, nous vous rappelons.\n")

    receipt = gw.receipt_text()
    assert receipt.startswith(f"Bonjour,\r\n\r\nLe dossier {second} a été fusionné dans {first} : "
                              f"les commandes ci-dessous s'appliquent à {first}."), receipt
    assert "[appliquée] #note rappel du RSSI" in receipt
    assert f"[refusée]  #repondre Bonjour, nous vous rappelons. — non envoyée : {second} est fusionné dans {first}" \
        in receipt, receipt
    assert [r.recipient for r in gw.outbound("reponse")] == []
    # An outside attacker: a closure reason is mailed to the declarant too.
    gw.command(second, "#clore Faux positif ; entre nous, le prestataire est en cause.\n")
    assert gw.case(first).status != "CLOS"
    assert ("[refusée]  #clore Faux positif ; entre nous, le prestataire est en cause. — non appliquée (son motif "
            f"est adressé au déclarant) : {second}") \
        in gw.receipt_text()
    to_alice = [casemail.text_of(r.raw) for r in gw.outbound() if r.recipient == "rssi4@chu.test"]
    assert "prestataire" not in " ".join(to_alice)
    # The same declarant on both: the answer goes, as before.
    third = gw.declare(3, sender="rssi4@chu.test")
    gw.command(third, f"#fusionner {first}\n")
    gw.command(third, "#repondre Bonjour.\n")
    assert [r.recipient for r in gw.outbound("reponse")] == ["rssi4@chu.test"]


def test_no_duplicate_outside_the_window_or_for_another_structure(gw: Gateway) -> None:
    first = gw.declare(1)
    gw.clock.advance(hours=73)
    second = gw.declare(2)
    third = gw.declare(3, finess="440000289")
    assert gw.case(second).linked_case_id is None and gw.case(third).linked_case_id is None
    assert gw.case(first).linked_case_id is None


def test_queries_by_subject_send_digests_of_the_senders_region(gw: Gateway) -> None:
    ref = gw.declare(1)
    gw.declare(2, finess="440000289", to="ssi-pdl@ars.test")
    gw.feed(casemail.staff_mail("", subject="#ouverts"))
    digest = gw.last("synthese", "agent@ars.test")
    text = casemail.text_of(digest.raw)
    assert ref in text and "SSI-PDL" not in text
    assert "Dossiers ouverts" in casemail.parse(digest.raw)["Subject"]
    assert not gw.outbound("recu_commandes")  # the digest is the answer
    gw.feed(casemail.staff_mail("", subject=f"#statut {ref}"))
    digest = gw.last("synthese", "agent@ars.test")
    assert casemail.parse(digest.raw)["Subject"].startswith(f"[{ref}] Synthèse")
    assert "Message reçu (déclaration)" in casemail.text_of(digest.raw)  # the story (cases/story.py)
    gw.feed(casemail.staff_mail("", subject="#retards"))
    assert "Aucun dossier." in casemail.text_of(gw.last("synthese", "agent@ars.test").raw)
    gw.clock.advance(days=8)
    # Written now: a command mail dated eight days before its reception is refused (docs/guarantees.md).
    gw.feed(casemail.staff_mail("", subject="#retards", date=gw.clock.now()))
    assert ref in casemail.text_of(gw.last("synthese", "agent@ars.test").raw)


def test_a_query_from_outside_the_agency_is_ignored_silently(gw: Gateway) -> None:
    gw.declare(1)
    result = gw.feed(casemail.message(sender="curieux@example.test", to="ssi-ara@ars.test", subject="#ouverts",
                                      body=""))
    assert result.status == "processed"
    assert not gw.outbound("synthese") and not gw.outbound("recu_commandes")


def _authentic_alert(gw: Gateway) -> str:
    ref = gw.declare(9)
    with transaction(gw.app.factory) as s:
        case = s.scalars(select(Case).where(Case.reference == ref)).one()
        case.kind, case.status = "alert", "A_DIFFUSER"
        case.fields = {"alert": {"authentic": True, "title": "Vulnérabilité critique", "targets": ["LBM"],
                                 "tlp": "CLEAR", "reference": "CERTFR-2026-ALE-001", "cves": []}}
        # Someone to relay to: a relay reaching no establishment is refused (docs/guarantees.md).
        fill_directory(s, NOW, 2, category="LBM")
    return ref


def test_diffuser_always_waits_for_confirmation_then_relays(gw: Gateway) -> None:
    ref = _authentic_alert(gw)
    gw.command(ref, "#diffuser\n", notified="agent@ars.test")
    assert gw.case(ref).status == "A_DIFFUSER"
    token = token_of(gw.receipt_text())
    gw.command(ref, f"#confirmer {token}\n")
    assert gw.case(ref).status == "DIFFUSEE"
    assert "diffusion" in [e.type for e in gw.events(ref)]


def test_broadcast_second_approver_must_be_someone_else(sqlite_url: str) -> None:
    for gw in make_gateway(sqlite_url, broadcast_second_approver=True):
        ref = _authentic_alert(gw)
        gw.command(ref, "#diffuser\n")
        token = token_of(gw.receipt_text())
        gw.command(ref, f"#confirmer {token}\n")
        assert gw.case(ref).status == "A_DIFFUSER"
        assert "confirmée par un autre agent" in gw.receipt_text()
        gw.command(ref, f"#confirmer {token}\n", sender="referent@ars.test")
        assert gw.case(ref).status == "DIFFUSEE"


def test_an_unauthenticated_alert_cannot_be_broadcast(gw: Gateway) -> None:
    ref = _authentic_alert(gw)
    with transaction(gw.app.factory) as s:
        s.scalars(select(Case).where(Case.reference == ref)).one().fields = {"alert": {"authentic": False}}
    gw.command(ref, "#diffuser\n")
    assert "alerte non authentifiée" in gw.receipt_text()
    assert "#confirmer" not in gw.receipt_text()


def test_a_command_mail_that_also_reached_the_hospital_is_said_in_the_receipt(gw: Gateway) -> None:
    # An outside tester: a reply-all to the attached original put the hospital in To; the commands
    # ran and the receipt said nothing of who else read them.
    ref = gw.declare()
    gw.command(ref, "#qualifier grave\n", to="ssi-ara@ars.test, dsi@chu.test")
    receipt = gw.receipt_text()
    assert ("Attention : votre message était aussi adressé à dsi@chu.test, hors de l'agence : ce destinataire a "
            "reçu vos commandes et ce que votre message cite.") in receipt, receipt
    gw.command(ref, "#note interne\n", to="ssi-ara@ars.test, referent@ars.test")
    assert "Attention" not in gw.receipt_text()
