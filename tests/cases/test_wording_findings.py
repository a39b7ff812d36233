"""Wording defects an outside tester (an ARS agent and a hospital RSSI) found in mail (t2 probe).

End to end by mail through the real pipeline (``Gateway``): each test names a sentence people
read and fails on the wording the tester reported.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from sqlalchemy import update

from mailgateway.cases.story import describe
from mailgateway.dispatch.wording import de_elide, du_nom, has_closing, has_greeting, nombre
from mailgateway.store.engine import transaction
from mailgateway.store.models import Establishment
from tests.processing.test_relay_question_answer import QUESTION, _staff_answers
from tests.processing.test_relay_replies import acknowledged, answer, relayed
from tests.processing.test_relay_replies import gw as gw  # the fixture (3 laboratories, an ACSS key)
from tests.support import casemail
from tests.support.bulletins import fill_directory
from tests.support.casegateway import NOW, Gateway, make_gateway


def _one_line(text: str) -> str:
    return " ".join(text.split())


# 1. « Elle est comptée comme accusé de lecture, mais elle dit davantage : Son texte est ci-dessous. »

def test_the_notice_of_an_establishment_reply_is_a_whole_french_sentence(gw: Gateway) -> None:
    relayed(gw)
    gw.feed(answer(gw, 0, "Nous avons appliqué le correctif sur nos automates ce matin ; le prestataire "
                          "vérifie les journaux VPN depuis le 01/12.\n\nLe RSSI\n"))
    assert acknowledged(gw) == {"ssi@e0.test"}
    text = _one_line(casemail.text_of(gw.last("notification_reponse_diffusion", "agent@ars.test").raw))
    assert "dit davantage" not in text and ": Son texte" not in text
    assert ("Elle est comptée comme accusé de lecture, mais elle contient aussi un message de "
            "l'établissement : son texte est ci-dessous.") in text


def test_the_notice_of_a_question_says_so_in_one_sentence(gw: Gateway) -> None:
    relayed(gw)
    gw.feed(answer(gw, 1, QUESTION))
    text = _one_line(casemail.text_of(gw.last("notification_reponse_diffusion", "agent@ars.test").raw))
    assert ("Elle est comptée comme accusé de lecture, et l'établissement y pose une question : "
            "son texte est ci-dessous.") in text


# 2. « #repondre » to a question on a relayed alert spoke of « votre déclaration ».

def test_repondre_to_a_question_on_a_relayed_alert_speaks_of_the_alert(gw: Gateway) -> None:
    ref = relayed(gw)
    gw.feed(answer(gw, 1, QUESTION, message_id="<question-1@e1.test>"))
    _staff_answers(gw, ref, "#repondre Bonjour,\nOui, appliquez la version 7.2.11.\nCordialement,\nJean Agent\n")
    sent = gw.last("reponse", "ssi@e1.test")
    subject = str(casemail.parse(sent.raw)["Subject"])
    text = _one_line(casemail.text_of(sent.raw))
    assert "déclaration" not in subject and "déclaration" not in text, (subject, text)
    assert subject.endswith(f"[{ref}] Réponse de l'ARS Auvergne-Rhône-Alpes à votre question sur l'alerte relayée")
    # One plain reference line, no nested brackets (outside tester: « (Au sujet de … (dossier …).) »).
    assert f"Référence : l'alerte de sécurité relayée par l'ARS Auvergne-Rhône-Alpes, dossier {ref}" in text
    assert "(Au sujet de" not in text
    assert text.count("Bonjour") == 1 and text.count("Cordialement") == 1


@pytest.fixture
def cgw(sqlite_url: str) -> Iterator[Gateway]:
    for gateway in make_gateway(sqlite_url):
        with transaction(gateway.app.factory) as s:
            fill_directory(s, NOW, 2, category="LBM")
            s.execute(update(Establishment).where(Establishment.name == "Laboratoire numéro 0")
                      .values(name="Établissement 0"))
        yield gateway


def test_repondre_to_a_declarant_still_speaks_of_the_declaration(cgw: Gateway) -> None:
    ref = cgw.declare()
    cgw.command(ref, "#repondre Nous revenons vers vous.\n")
    sent = cgw.last("reponse", "dsi@chu.test")
    assert str(casemail.parse(sent.raw)["Subject"]).endswith("à votre déclaration")
    assert "Au sujet de votre déclaration d'incident" in _one_line(casemail.text_of(sent.raw))


# 3. Doubled greetings and closings.

def test_demander_info_that_greets_gets_no_second_greeting(cgw: Gateway) -> None:
    ref = cgw.declare()
    cgw.command(ref, "#demander-info Bonjour Monsieur Martin,\n\nQuels serveurs sont chiffrés ?\n\n"
                     "Cordialement,\nJean Agent\n")
    text = casemail.text_of(cgw.last("demande_info", "dsi@chu.test").raw)
    assert text.startswith("Bonjour Monsieur Martin,"), text
    assert text.count("Bonjour") == 1 and text.count("Cordialement") == 1, text
    assert f"dossier {ref}" in text


def _bulletin(cgw: Gateway, body: str) -> str:
    """A bulletin written by mail, approved and confirmed; the confirmation's token."""
    cgw.feed(casemail.staff_mail(body, subject="#bulletin Rappel : sauvegardes", in_reply_to=None))
    preview = cgw.last("bulletin_apercu", "agent@ars.test")
    subject = str(casemail.parse(preview.raw)["Subject"])
    cgw.feed(casemail.staff_mail("#diffuser\n", subject=f"RE: {subject}", in_reply_to=preview.message_id))
    confirmation = cgw.last("bulletin_apercu", "agent@ars.test")
    text = casemail.text_of(confirmation.raw)
    token = re.search(r"#confirmer ([0-9a-f]{12})", text)
    assert token, text
    cgw.feed(casemail.staff_mail(f"#confirmer {token.group(1)}\n", subject=f"RE: {subject}",
                                 in_reply_to=confirmation.message_id))
    return token.group(1)


BULLETIN = ("#cible categorie=LBM\n#tlp GREEN\nBonjour,\n\nVérifiez vos sauvegardes hors ligne.\n\n"
            "Cordialement,\n\n-- \nJean Agent\nARS Auvergne-Rhône-Alpes\n")


def test_a_bulletin_that_greets_and_signs_off_gets_neither_twice(cgw: Gateway) -> None:
    _bulletin(cgw, BULLETIN)
    sent = {r.recipient: casemail.text_of(r.raw) for r in cgw.outbound("bulletin")}
    assert set(sent) == {"ssi@e0.test", "ssi@e1.test"}
    for text in sent.values():
        assert text.count("Bonjour") == 1 and text.count("Cordialement") == 1, text
        assert "Vérifiez vos sauvegardes hors ligne." in text


# 4. French: elision, agreement, accents.

def test_a_name_starting_with_a_vowel_is_elided_in_the_bulletin(cgw: Gateway) -> None:
    _bulletin(cgw, BULLETIN)
    assert "correspondant SSI de l'Établissement 0 (FINESS" in casemail.text_of(cgw.last("bulletin", "ssi@e0.test").raw)
    assert "correspondant SSI du Laboratoire numéro 1" in casemail.text_of(cgw.last("bulletin", "ssi@e1.test").raw)


@pytest.mark.parametrize(("name", "said"), [
    ("Établissement 1", "d'Établissement 1"), ("Èze santé", "d'Èze santé"), ("Êtres", "d'Êtres"),
    ("À vous", "d'À vous"), ("Institut Curie", "d'Institut Curie"), ("Oyonnax", "d'Oyonnax"),
    ("Union", "d'Union"), ("Yssingeaux", "d'Yssingeaux"), ("Hôpital Nord", "d'Hôpital Nord"),
    ("hôpital privé", "d'hôpital privé"), ("Haguenau", "de Haguenau"), ("Lyon", "de Lyon"), ("", "de"),
])
def test_de_elide(name: str, said: str) -> None:
    assert de_elide(name) == said


@pytest.mark.parametrize(("name", "said"), [
    ("CHU de Nantes", "du CHU de Nantes"), ("Centre hospitalier de Cholet", "du Centre hospitalier de Cholet"),
    ("Clinique du Parc", "de la Clinique du Parc"), ("Hôpital Nord", "de l'Hôpital Nord"),
    ("Institut Curie", "de l'Institut Curie"), ("EHPAD Les Tilleuls", "de l'EHPAD Les Tilleuls"),
    ("Laboratoire Biomed", "du Laboratoire Biomed"), ("Oyonnax", "d'Oyonnax"), ("Lyon santé", "de Lyon santé"),
    ("", "de"),
])
def test_a_structures_name_takes_its_article(name: str, said: str) -> None:
    # Outside tester: « correspondant SSI de CHU de Nantes », « de Centre hospitalier de Cholet ».
    assert du_nom(name) == said


def test_greeting_and_closing_detection_skips_directive_lines() -> None:
    assert has_greeting("#cible tous\nBonjour,\ntexte") and not has_greeting("Texte.\nBonjour")
    assert has_closing("texte\nCordialement,\n-- \nJean\nARS") and not has_closing("Cordialement à tous.\n" + "x\n" * 5)


def test_severity_not_qualified_agrees_with_gravite(cgw: Gateway) -> None:
    ref = cgw.declare()
    cgw.command(ref, "#assigner referent@ars.test\n")
    text = casemail.text_of(cgw.last("assignation", "referent@ars.test").raw)
    assert "Gravité : non qualifiée" in text, text


def test_unauthenticated_alert_is_told_with_its_accents() -> None:
    assert describe("alerte_non_authentifiee", {}) == "Alerte non authentifiée"


# 5. Internal codes in the receipts.

def test_statut_to_the_same_status_says_it_is_already_so_in_french(cgw: Gateway) -> None:
    ref = cgw.declare()
    cgw.command(ref, "#statut qualifié\n")
    cgw.command(ref, "#statut qualifié\n")
    text = _one_line(cgw.receipt_text())
    assert "QUALIFIE" not in text, text
    assert "le dossier est déjà au statut « qualifié »" in text
    cgw.command(ref, "#statut reçu\n")
    text = _one_line(cgw.receipt_text())
    assert "passage du statut « qualifié » au statut « reçu » impossible" in text and "RECU" not in text


# 6. Commands that wait or list must say what they do.

def test_statut_clos_awaiting_confirmation_says_what_it_will_do(cgw: Gateway) -> None:
    ref = cgw.declare()
    cgw.command(ref, "#qualifier grave\n#statut clos\n")
    text = _one_line(cgw.receipt_text())
    assert (f"clôture du dossier {ref} (gravité « grave ») en attente de confirmation : une fois confirmée, "
            "le dossier sera clos et le déclarant (dsi@chu.test) en sera informé par courriel") in text, text


def test_aide_lists_the_status_values(cgw: Gateway) -> None:
    ref = cgw.declare()
    cgw.command(ref, "#aide\n")
    text = _one_line(cgw.receipt_text())
    assert ("Statuts d'un incident (#statut <statut>) : pris en compte, en qualification, qualifié, "
            "en accompagnement, en suivi, résolu, clos.") in text


def test_the_bulletin_confirmation_shows_the_cancel_line_with_its_token(cgw: Gateway) -> None:
    token = _bulletin(cgw, BULLETIN)
    texts = [casemail.text_of(r.raw) for r in cgw.outbound("bulletin_apercu", "agent@ars.test")]
    assert f"#annuler {token}" in texts[1], texts[1]
    assert "Pour abandonner, répondez à ce message avec la ligne :\n#annuler\n" in texts[0].replace("\r\n", "\n")


def test_a_pending_closure_says_the_motif_reaches_only_a_verified_declarant(cgw: Gateway) -> None:
    """Found by an outside tester: the receipt promised the motif to a declarant whose address was
    not verified, and the closure mail (rightly) left it out."""
    ref = cgw.declare()  # an unsigned declaration: dsi@chu.test is not verified
    cgw.command(ref, "#qualifier grave\n#clore Attaque DDoS terminée, services rétablis.\n")
    text = _one_line(cgw.receipt_text())
    assert ("le déclarant (dsi@chu.test) en sera informé par courriel, sans le motif (adresse non vérifiée) ; "
            "motif : « Attaque DDoS terminée, services rétablis. »") in text, text


@pytest.mark.parametrize(("count", "said"), [(0, "0 établissement ciblé"), (1, "1 établissement ciblé"),
                                             (3, "3 établissements ciblés")])
def test_counts_agree_with_their_noun(count: int, said: str) -> None:
    # Outside tester: « 3 établissement(s) » in previews, receipts and reports.
    assert nombre(count, "établissement ciblé") == said
    assert nombre(2, "accusé de lecture", "accusés de lecture") == "2 accusés de lecture"


def test_a_motif_excerpt_ends_at_a_word() -> None:
    """Outside tester: « … aucune fuite de donnée … » quoted « données » cut inside the word."""
    from mailgateway.commands.table import _excerpt
    motif = "Incident résolu, aucune fuite de données personnelles constatée après analyse complète du serveur"
    assert _excerpt(motif) == "Incident résolu, aucune fuite de données personnelles constatée après analyse …"
    assert _excerpt("x" * 100) == "x" * 80 + " …"  # one long word: cut where it must be
    assert _excerpt("court") == "court" and _excerpt("ligne un\nligne deux") == "ligne un …"


def test_control_characters_a_declarant_wrote_never_reach_the_terminal() -> None:
    """Outside tester: « CH \\x1b]0;PWNED\\x07\\x1b[2J » as a structure name retitled the operator's
    window and cleared the screen through « cases list » and « cases show »."""
    from datetime import UTC, datetime

    from mailgateway.cases.views import format_case, format_case_list
    at = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)
    row = {"reference": "SSI-ARA-2026-0001", "status": "RECU", "severity": "NON_QUALIFIE", "opened_at": at,
           "updated_at": at, "title": "CH \x1b]0;PWNED\x07\x1b[2J\x1b[31mROUGE\x00\x9b", "region": "ARA",
           "tlp": None, "establishment": "CH \x1b[2J", "finess": None, "declarant": None, "assignee": None}
    for shown in (format_case_list([row]), format_case({**row, "story": ["reçu \x1b[31m"]})):
        assert not any((ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0 for c in shown)
        assert "\\x1b]0;PWNED\\x07" in shown


def test_the_notice_names_the_authentication_method_as_people_write_it(cgw: Gateway) -> None:
    """« (authentifié par dkim) »: an outside tester (an ARS agent) — the acronym is DKIM."""
    gw = cgw
    gw.feed(casemail.sign(casemail.declaration(1, sender="dsi@chu.test"), casemail.establishment_key()))
    text = _one_line(casemail.text_of(gw.last("notification_equipe", "agent@ars.test").raw))
    assert "Expéditeur : dsi@chu.test (authentifié par DKIM)" in text, text
