"""The declarant is told, in French, when staff close or merge its case ([cases]
notify_declarant_on_close, on by default); an unverified address is told nothing it did not know."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.support import casemail
from tests.support.casegateway import Gateway, make_gateway


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def _signed_declaration(n: int) -> bytes:
    return casemail.sign(casemail.declaration(n), casemail.establishment_key())


def _token(text: str) -> str:
    match = re.search(r"#confirmer ([0-9a-f]+)", text)
    assert match, text
    return match.group(1)


def test_a_verified_declarant_is_told_its_case_is_closed(gw: Gateway) -> None:
    ref = gw.feed(_signed_declaration(1)).case_ref
    assert ref
    gw.clock.advance(hours=3)
    gw.command(ref, "#clore incident résolu, pas de fuite de données\n")
    assert gw.case(ref).status == "CLOS"
    mail = gw.last("cloture_declarant", "dsi@chu.test")
    msg = casemail.parse(mail.raw)
    text = casemail.text_of(mail.raw)
    assert msg["Subject"] == f"[{ref}] Clôture du dossier de votre déclaration"
    assert f"Le dossier {ref} (Centre hospitalier) ouvert à la suite de votre déclaration" in text
    assert "a été clos le 27/11/2026 à 13:00" in text
    # Threaded under the case, and a reply comes back to the case.
    assert msg["In-Reply-To"] == "<decl-1@chu.test>"
    assert "répondez à ce message" in text
    assert any(e.type == "mail_sortant" and e.data["type"] == "cloture_declarant" for e in gw.events(ref))


def test_an_unverified_declarant_address_gets_a_message_that_quotes_nothing(gw: Gateway) -> None:
    ref = gw.declare()  # unsigned: the address comes from headers anyone could write
    gw.command(ref, "#clore doublon interne\n")
    mail = gw.last("cloture_declarant", "dsi@chu.test")
    text = casemail.text_of(mail.raw)
    assert ref in text and "a été clos le" in text
    for quoted in ("Centre hospitalier", "Déclaration d'incident", "doublon interne", "rançongiciel"):
        assert quoted not in text and quoted not in casemail.parse(mail.raw)["Subject"], quoted
    # Threaded under the declaration all the same (Message-IDs quote no text), but no References
    # chain of the case's other messages.
    assert casemail.parse(mail.raw)["In-Reply-To"] == "<decl-1@chu.test>"
    assert casemail.parse(mail.raw)["References"] == "<decl-1@chu.test>"


def test_a_merged_declaration_is_told_which_case_continues(gw: Gateway) -> None:
    first = gw.feed(_signed_declaration(1)).case_ref
    second = gw.feed(_signed_declaration(2)).case_ref
    assert first and second and first != second
    gw.command(second, f"#fusionner {first}\n")
    assert gw.case(second).status == "CLOS"
    mails = [m for m in gw.outbound("cloture_declarant") if m.case_id == gw.case(second).id]
    assert len(mails) == 1  # one mail for the merge, not a second one for the closure it implies
    text = casemail.text_of(mails[0].raw)
    assert f"avec un autre dossier qui concerne le même incident, le dossier {first}." in text
    assert casemail.parse(mails[0].raw)["Subject"] == (
        f"[{second}] Votre déclaration est regroupée avec un autre dossier")
    # The case that continues is not closed: its declarant gets nothing.
    assert not [m for m in gw.outbound("cloture_declarant") if m.case_id == gw.case(first).id]


def test_a_closure_waiting_for_confirmation_tells_the_declarant_only_once_confirmed(gw: Gateway) -> None:
    ref = gw.feed(_signed_declaration(1)).case_ref
    assert ref
    gw.command(ref, "#qualifier grave\n")
    gw.command(ref, "#clore\n")
    assert gw.outbound("cloture_declarant") == []
    gw.command(ref, f"#confirmer {_token(gw.receipt_text())}\n")
    assert gw.case(ref).status == "CLOS"
    assert len(gw.outbound("cloture_declarant", "dsi@chu.test")) == 1


def test_the_notice_can_be_turned_off(sqlite_url: str) -> None:
    for gw in make_gateway(sqlite_url, notify_declarant_on_close=False):
        ref = gw.declare()
        gw.command(ref, "#clore\n")
        assert gw.case(ref).status == "CLOS"
        assert gw.outbound("cloture_declarant") == []


def test_a_transfer_closes_the_case_without_a_closure_notice(gw: Gateway) -> None:
    ref = gw.declare(1, finess="440000289")  # Loire-Atlantique, declared to ARA
    gw.command(ref, "#transferer PDL")
    assert gw.case(ref).status == "CLOS"
    assert gw.outbound("cloture_declarant") == []  # the transfer's own mail tells the declarant


def test_the_agents_own_sign_off_is_not_quoted_in_the_closure_mail(gw: Gateway) -> None:
    """Found by an outside tester (Outlook writes no « -- »): « #clore » followed by the agent's
    « Cordialement, / Collègue SSI » put that sign-off in the motif, then the template's own
    « Cordialement, » under it. The motif is quoted without the sign-off; the timeline keeps it all."""
    ref = gw.feed(_signed_declaration(1)).case_ref
    assert ref
    gw.command(ref, "#clore Comptes réinitialisés, sauvegardes vérifiées.\n\nCordialement,\nCollègue SSI\n")
    text = casemail.text_of(gw.last("cloture_declarant", "dsi@chu.test").raw)
    assert "Comptes réinitialisés, sauvegardes vérifiées." in text
    assert "Collègue SSI" not in text and text.count("Cordialement,") == 1


def test_without_closing_keeps_a_text_that_does_not_sign_off() -> None:
    from mailgateway.dispatch.wording import without_closing

    assert without_closing("Incident clos.\nCordialement,\nJ. Martin\nARS") == "Incident clos."
    assert without_closing("Cordialement") == ""
    text = "Cordialement remercié pour votre aide.\nSuite : sauvegardes.\nA\nB\nC\nD"
    assert without_closing(text) == text  # a closing word early in the text is no sign-off
    assert without_closing("Fin.") == "Fin."
