"""The establishment is told what happens to its mail (an outside tester, a hospital's RSSI, found
it was not): an acknowledgement held back by a cap is flagged to staff; a reply that reopens, is
kept on a closed case or answers « #demander-info » gets a short mail, only at an address already on
the case; a closure gives the motif staff wrote and the final qualification, also to the declarant
of a case merged into the one that closed, threaded under the hospital's (or portal's) message.

All by mail through the processing pipeline (tests/support/casegateway.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from mailgateway.store.engine import transaction
from mailgateway.store.models import Contact, Establishment, InboundMessage
from tests.support import casemail
from tests.support.casegateway import NOW, Gateway, make_gateway
from tests.support.messages import make_portal_notification


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def _signed_declaration(n: int, sender: str = "dsi@chu.test") -> bytes:
    return casemail.sign(casemail.declaration(n, sender=sender), casemail.establishment_key())


def _html_of(raw: bytes) -> str:
    body = casemail.parse(raw).get_body(("html",))
    assert body is not None
    return str(body.get_content())


def _reply(gw: Gateway, ref: str, *, sender: str = "dsi@chu.test", signed: bool = True,
           body: str = "Nous constatons de nouveau des fichiers chiffrés sur le serveur PACS.\n",
           in_reply_to: str | None = None, message_id: str | None = None) -> None:
    raw = casemail.message(sender=sender, to="ssi-ara@ars.test", subject=f"RE: [{ref}] Clôture du dossier",
                           body=body, in_reply_to=in_reply_to or "<decl-1@chu.test>", message_id=message_id)
    result = gw.feed(casemail.sign(raw, casemail.establishment_key()) if signed else raw)
    assert result.status == "processed", result


def _notices(gw: Gateway, ref: str) -> list[str]:
    case = gw.case(ref)
    return [casemail.text_of(m.raw) for m in gw.outbound("suivi_declarant") if m.case_id == case.id]


# --- 1. an acknowledgement held back by a cap ---------------------------------------------------


def test_a_capped_acknowledgement_is_flagged_in_the_staff_notification(gw: Gateway) -> None:
    refs = [gw.feed(_signed_declaration(n)).case_ref for n in range(1, 7)]
    assert all(refs)
    acks = gw.outbound("accuse_reception", "dsi@chu.test")
    assert len(acks) == 5  # [outbound] auto_replies_per_hour
    sixth = gw.notification(str(refs[5]), "agent@ars.test")
    text, html = casemail.text_of(sixth.raw), _html_of(sixth.raw)
    flag = ("Accusé de réception NON envoyé au déclarant : plafond de réponses automatiques atteint pour "
            "dsi@chu.test (par heure) — répondez-lui avec « #repondre <texte> ».")
    assert text.startswith(flag), text[:300]
    assert flag.replace("<", "&lt;").replace(">", "&gt;") in html
    assert "background: #fdecea" in html.split(flag.split(" : ")[0])[0][-300:]  # the red box, at the top
    # An acknowledged declaration's notification says nothing of the kind.
    assert "NON envoyé" not in casemail.text_of(gw.notification(str(refs[4]), "agent@ars.test").raw)
    # And staff can answer by hand: #repondre is a person's mail, not under the cap.
    gw.command(str(refs[5]), "#repondre Bien reçu, nous revenons vers vous.\n")
    assert len(gw.outbound("reponse", "dsi@chu.test")) == 1


def test_an_acknowledgement_refused_for_its_address_is_flagged_too(gw: Gateway) -> None:
    """A declarant whose address our relay path cannot carry (a quoted local part) gets no
    acknowledgement; staff are told so at the top of their notification, with the reason, and
    not sent to « #repondre » (the same address, the same refusal)."""
    ref = gw.feed(casemail.declaration(1, sender='"rssi garde"@chu.test')).case_ref
    assert ref is not None and "rssi garde" in str(gw.case(ref).declarant)
    assert not gw.outbound("accuse_reception")
    notice = gw.notification(str(ref), "agent@ars.test")
    text, html = casemail.text_of(notice.raw), _html_of(notice.raw)
    assert text.startswith("Accusé de réception NON envoyé au déclarant : adresse invalide"), text[:300]
    assert "Contactez-le par un autre moyen." in text.split("\n")[0] and "#repondre" not in text.split("\n")[0]
    assert "NON envoyé au déclarant : adresse invalide" in html
    assert "rssi garde" not in text.split("\n")[0]  # the reason, never the address the declarant wrote


def test_the_refusal_banner_never_carries_what_the_declarant_wrote(gw: Gateway) -> None:
    lure = '"URGENT ARS : revalidez votre session sur www.ars-sso.test avant 12h"@chu.test'
    ref = gw.feed(casemail.declaration(1, sender=lure)).case_ref
    assert ref is not None
    first = casemail.text_of(gw.notification(str(ref), "agent@ars.test").raw).split("\n")[0]
    assert first.startswith("Accusé de réception NON envoyé au déclarant : ") and "revalidez" not in first, first


# --- 2. replies: reopened, kept closed, answer to a request --------------------------------------


def test_an_authenticated_reply_that_reopens_a_case_is_answered(gw: Gateway) -> None:
    ref = gw.feed(_signed_declaration(1)).case_ref
    assert ref
    gw.command(ref, "#clore Comptes réinitialisés\n")
    _reply(gw, ref, message_id="<relance-1@chu.test>")
    assert gw.case(ref).status != "CLOS"
    (mail,) = [m for m in gw.outbound("suivi_declarant", "dsi@chu.test")]
    text = casemail.text_of(mail.raw)
    assert f"votre dossier {ref} a été rouvert ; l'équipe SSI en est informée" in text
    msg = casemail.parse(mail.raw)
    assert msg["In-Reply-To"] == "<relance-1@chu.test>"
    assert "<decl-1@chu.test>" in msg["References"]
    assert msg["Auto-Submitted"] == "auto-replied"  # RFC 3834: never answered by the hospital's robots
    assert "PACS" not in text  # the reply is not echoed


def test_a_reply_that_opens_a_linked_case_names_it(sqlite_url: str) -> None:
    for gw in make_gateway(sqlite_url, reply_to_closed="link"):
        ref = gw.feed(_signed_declaration(1)).case_ref
        assert ref
        gw.command(ref, "#clore\n")
        _reply(gw, ref)
        assert gw.case(ref).status == "CLOS"
        (mail,) = gw.outbound("suivi_declarant", "dsi@chu.test")
        new = gw.case(ref.replace("0001", "0002"))
        assert mail.case_id == new.id
        assert (f"Le dossier {ref} étant clos, il a ouvert le dossier {new.reference}, lié au premier"
                in casemail.text_of(mail.raw))


def test_an_unauthenticated_reply_kept_closed_tells_the_declarant_and_quotes_nothing(gw: Gateway) -> None:
    ref = gw.feed(_signed_declaration(1)).case_ref
    assert ref
    gw.command(ref, "#clore Comptes réinitialisés\n")
    _reply(gw, ref, signed=False, body="Cliquez ici : http://evil.test/x pour voir la facture.\n")
    assert gw.case(ref).status == "CLOS"  # docs/guarantees.md: an unauthenticated reply reopens nothing
    (mail,) = gw.outbound("suivi_declarant", "dsi@chu.test")
    text = casemail.text_of(mail.raw)
    subject = casemail.parse(mail.raw)["Subject"]
    assert f"Votre message a été rattaché au dossier {ref}, clos" in text
    assert "S'il s'agit d'un nouvel incident, déclarez-le" in text
    for quoted in ("evil", "facture", "Clôture du dossier"):
        assert quoted not in text and quoted not in subject, quoted
    assert casemail.parse(mail.raw)["References"] == casemail.parse(mail.raw)["In-Reply-To"]


def test_a_directory_contact_is_told_and_anyone_else_gets_nothing(gw: Gateway) -> None:
    with transaction(gw.app.factory) as s:
        s.add(Establishment(finess="690781810", name="Centre hospitalier", departement="69", updated_at=NOW))
        s.flush()  # the establishment before its contact (foreign key)
        s.add(Contact(finess="690781810", address="rssi@chu.test", role="rssi", created_at=NOW, updated_at=NOW))
    ref = gw.feed(_signed_declaration(1)).case_ref
    assert ref
    gw.command(ref, "#clore\n")
    # A forged From (no signature) at the establishment's domain, at another domain, a no-reply robot.
    for sender in ("comptabilite@chu.test", "attaquant@evil.test", "noreply@chu.test"):
        _reply(gw, ref, sender=sender, signed=False)
    assert _notices(gw, ref) == []
    assert gw.case(ref).status == "CLOS"
    _reply(gw, ref, sender="rssi@chu.test", signed=False)
    assert len(gw.outbound("suivi_declarant", "rssi@chu.test")) == 1
    assert [m.recipient for m in gw.outbound("suivi_declarant")] == ["rssi@chu.test"]


def test_the_notices_stay_under_the_automatic_reply_caps(gw: Gateway) -> None:
    ref = gw.feed(_signed_declaration(1)).case_ref  # one automatic reply: the acknowledgement
    assert ref
    gw.command(ref, "#clore\n")
    for n in range(8):
        _reply(gw, ref, signed=False, body=f"Relance numéro {n} : merci de rappeler le standard.\n",
               message_id=f"<relance-{n}@chu.test>")
    # 5 per hour. The acknowledgement went to the address that signed the declaration: it is counted
    # apart from these notices to an address unsigned replies named (dispatch/mailer.py).
    assert len(gw.outbound("suivi_declarant", "dsi@chu.test")) == 5
    refused = [e for e in gw.events(ref) if e.type == "envoi_refuse" and e.data["type"] == "suivi_declarant"]
    assert len(refused) == 3 and "plafond de réponses automatiques" in refused[0].data["motif"]


def test_an_answer_to_a_request_for_information_is_acknowledged(gw: Gateway) -> None:
    ref = gw.feed(_signed_declaration(1)).case_ref
    assert ref
    _reply(gw, ref, body="Précision : le serveur de messagerie est aussi touché.\n")
    assert _notices(gw, ref) == []  # a reply on an open case, not asked for: staff are told, that is all
    gw.command(ref, "#demander-info Quels postes sont touchés ?\n")
    request = gw.last("demande_info", "dsi@chu.test")
    _reply(gw, ref, signed=False, body="Les postes du service des urgences.\n", in_reply_to=request.message_id,
           message_id="<reponse-info@chu.test>")
    (mail,) = gw.outbound("suivi_declarant", "dsi@chu.test")
    text = casemail.text_of(mail.raw)
    assert f"Bien reçu : votre réponse à notre demande d'informations a été rattachée au dossier {ref}" in text
    assert "urgences" not in text
    assert casemail.parse(mail.raw)["In-Reply-To"] == "<reponse-info@chu.test>"


# --- 3. closure: motif, qualification, merged declarants, threading -----------------------------


def test_the_closure_gives_the_motif_and_the_qualification_to_a_verified_declarant(gw: Gateway) -> None:
    ref = gw.feed(_signed_declaration(1)).case_ref
    assert ref
    gw.command(ref, "#qualifier significatif\n#clore Comptes réinitialisés, MFA activée sur la messagerie.\n"
                    "Sauvegardes restaurées et vérifiées.\n")
    text = casemail.text_of(gw.last("cloture_declarant", "dsi@chu.test").raw).replace("\r\n", "\n")
    assert "Qualification retenue pour l'incident : significatif." in text
    assert ("Motif de clôture indiqué par l'équipe SSI :\nComptes réinitialisés, MFA activée sur la messagerie.\n"
            "Sauvegardes restaurées et vérifiées.") in text
    assert "SIGNIFICATIF" not in text


def test_an_unverified_declarant_gets_the_qualification_but_no_motif(gw: Gateway) -> None:
    ref = gw.declare()  # unsigned
    gw.command(ref, "#clore Comptes réinitialisés, MFA activée\n")
    mail = gw.last("cloture_declarant", "dsi@chu.test")
    text = casemail.text_of(mail.raw)
    assert "Comptes réinitialisés" not in text and "Motif" not in text
    assert "L'incident a été clos sans qualification de gravité." in text
    # Threaded under the hospital's message all the same: Message-IDs quote no text.
    assert casemail.parse(mail.raw)["In-Reply-To"] == "<decl-1@chu.test>"


def test_a_portal_declaration_closure_is_threaded_under_the_portal_message(gw: Gateway) -> None:
    raw = make_portal_notification(to="ssi-ara@ars.test", declarant_email="rssi@ch-exemple.test",
                                   message_id="<portail-42@signalement.social-sante.test>")
    ref = gw.feed(raw).case_ref
    assert ref
    gw.command(ref, "#clore Incident traité avec l'établissement\n")
    mail = gw.last("cloture_declarant", "rssi@ch-exemple.test")
    msg = casemail.parse(mail.raw)
    assert msg["In-Reply-To"] == "<portail-42@signalement.social-sante.test>"
    assert "Incident traité" not in casemail.text_of(mail.raw)  # from a form anyone could fill: unverified


def test_the_declarant_of_a_merged_case_is_told_when_the_surviving_case_closes(gw: Gateway) -> None:
    first = gw.feed(_signed_declaration(1)).case_ref
    second = gw.feed(_signed_declaration(2, sender="rssi@chu.test")).case_ref
    third = gw.declare(3, sender="secretariat@chu.test")  # unsigned: an unverified address
    assert first and second
    gw.command(second, f"#fusionner {first}\n")
    gw.command(third, f"#fusionner {first}\n")
    gw.clock.advance(hours=2)
    gw.command(first, "#qualifier significatif\n#clore Comptes réinitialisés, MFA activée\n")
    # The surviving case's declarant, as before.
    assert len(gw.outbound("cloture_declarant", "dsi@chu.test")) == 1
    # The merged case's verified declarant: its reference, the surviving one, the motif.
    _merge_mail, closure_mail = gw.outbound("cloture_declarant", "rssi@chu.test")
    text = casemail.text_of(closure_mail.raw)
    assert casemail.parse(closure_mail.raw)["Subject"] == f"[{second}] Clôture du dossier de votre déclaration"
    assert f"(dossier {second}, Centre hospitalier) avait été regroupée" in text
    assert f"le dossier {first}. Ce dossier a été clos le 27/11/2026 à 12:00" in text
    assert "Comptes réinitialisés, MFA activée" in text and "significatif" in text
    assert casemail.parse(closure_mail.raw)["In-Reply-To"] == "<decl-2@chu.test>"
    assert closure_mail.case_id == gw.case(second).id
    # The unverified one: told, with its own reference only, nothing quoted.
    _merge, unverified = gw.outbound("cloture_declarant", "secretariat@chu.test")
    text = casemail.text_of(unverified.raw)
    assert third in text and "a été clos le" in text
    for quoted in (first, "Comptes réinitialisés", "Centre hospitalier"):
        assert quoted not in text, quoted


def test_mail_to_the_declarant_names_no_internal_message(gw: Gateway) -> None:
    """Found by two outside testers: the References of an answer, a request for information and
    the closure mail listed the Message-IDs of staff notifications and of staff's own command mail
    (internal mail; from Exchange, internal server names). Only what the declarant's own mailbox
    holds: their messages and ours to them."""
    ref = gw.feed(_signed_declaration(1)).case_ref
    assert ref
    gw.command(ref, "#demander-info Quels postes sont touchés ?\n")
    request = gw.last("demande_info", "dsi@chu.test")
    _reply(gw, ref, body="Les postes des urgences.\n", in_reply_to=request.message_id,
           message_id="<reponse-info@chu.test>")
    gw.command(ref, "#repondre Merci, nous revenons vers vous.\n")
    gw.command(ref, "#clore Comptes réinitialisés\n")
    internal = {r.message_id for r in gw.outbound() if r.recipient != "dsi@chu.test"}
    with gw.app.factory() as s:
        rows = s.execute(select(InboundMessage.message_id, InboundMessage.auth)
                         .where(InboundMessage.case_id == gw.case(ref).id))
        staff_mail = {m for m, auth in rows if m and (auth or {}).get("address") != "dsi@chu.test"}
    assert len(staff_mail) == 3  # the three command mails
    internal |= staff_mail
    assert internal
    theirs = [r for r in gw.outbound() if r.recipient == "dsi@chu.test" and r.kind != "accuse_reception"]
    assert {r.kind for r in theirs} >= {"demande_info", "reponse", "cloture_declarant"}
    for mail in theirs:
        msg = casemail.parse(mail.raw)
        named = set(str(msg.get("References", "")).split()) | {str(msg.get("In-Reply-To", ""))}
        assert not named & internal, (mail.kind, named & internal)
        assert "<decl-1@chu.test>" in named
