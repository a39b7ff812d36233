"""What an outside tester saw in the mail staff receive (issue 17), each point driven by mail
through the pipeline (``Gateway``) and read in the mail staff actually get.

1. A forged alert looked like a real one and listed a clickable URL: indicators stay defanged in
   every mail people read, and an unauthenticated alert says so in its subject and at the top.
2. « Réponse reçue » showed only the subject: the hospital's new text is inline, and the story
   (« #statut REF ») shows an excerpt of it.
3. Receipts and notifications leaked enumeration codes and ISO dates.
4. « #quarantaine » in the Subject and the body ran twice, the second « refusée ».
5. « #assigner <agent> »: the new assignee is told.
6. « #repondre Bonjour Monsieur Dupont, … Cordialement, » got a second greeting and closing.
7. A typo's receipt ended with the whole 35-line help.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from mailgateway.app import build_app
from mailgateway.clock import FixedClock
from mailgateway.dispatch.render import Renderer, defang
from mailgateway.dispatch.samples import sample_context
from mailgateway.settings import parse_settings
from tests.support import casemail
from tests.support.casegateway import NOW, Gateway, make_gateway, settings_data
from tests.support.db import at_head
from tests.support.dkim import rsa_key, zone
from tests.support.messages import make_alert

HOSPITAL = "dsi@chu.test"
EVIL = "https://evil-patch.example/fix.exe"
EVIL_DEFANGED = "hxxps://evil-patch[.]example/fix.exe"
CODES = re.compile(r"\b(?:GRAVE|SIGNIFICATIF|NON_QUALIFIE|QUALIFIE|EN_QUALIFICATION|PRIS_EN_COMPTE|"
                   r"ETABLISSEMENT_SANTE|LBM|ESMS|RANCONGICIEL|MALVEILLANT)\b")
ISO_INSTANT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d")


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def _parts(raw: bytes) -> tuple[str, str, str]:
    """Subject, text and HTML bodies of a mail we sent (not the attached original)."""
    msg = casemail.parse(raw)
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None
    return str(msg["Subject"]), str(text.get_content()), str(html.get_content()) if html is not None else ""


def _forged_alert() -> bytes:
    # Looks like the ACSS (its domain, its layout), but no signature: anyone can send this.
    return make_alert(sender="CERT Santé <alerte@esante.test>", to="ssi-ara@ars.test", tlp="TLP:CLEAR",
                      title="Mise à jour urgente",
                      body_extra=f"Installez le correctif sans attendre.\nurl : {EVIL}\n")


# --- 1. indicators defanged, unauthenticated alert flagged ----------------------------------------


def test_forged_alert_is_flagged_in_subject_and_body_and_its_url_is_not_clickable(gw: Gateway) -> None:
    result = gw.feed(_forged_alert())
    assert result.status == "processed", result
    subject, text, html = _parts(gw.last("notification_equipe", "agent@ars.test").raw)
    assert "[NON AUTHENTIFIÉE]" in subject
    assert text.startswith("ATTENTION : ALERTE NON AUTHENTIFIÉE"), text[:200]
    assert "ALERTE NON AUTHENTIFIÉE" in html.split("<pre", 1)[0]  # the warning above everything
    for part in (subject, text, html):
        assert "https://evil-patch" not in part and "evil-patch.example" not in part, part
    assert f"URL : {EVIL_DEFANGED}" in text
    assert EVIL_DEFANGED in html


ACSS_KEY = rsa_key("acss", "esante.test")


def test_authentic_alert_has_no_warning(sqlite_url: str) -> None:
    data = settings_data(at_head(sqlite_url))
    data["authentication"]["static_keys"] = {**data["authentication"]["static_keys"], **zone(ACSS_KEY)}
    clock = FixedClock(NOW)
    app = build_app(parse_settings(data), clock=clock)
    try:
        gw = Gateway(app, clock)
        gw.feed(casemail.sign(_forged_alert(), ACSS_KEY))
        subject, text, _ = _parts(gw.last("notification_equipe", "agent@ars.test").raw)
    finally:
        app.close()
    assert "NON AUTHENTIFIÉE" not in subject and "NON AUTHENTIFIÉE" not in text
    assert EVIL_DEFANGED in text and EVIL not in text


def test_defang_covers_every_indicator_kind_and_is_idempotent() -> None:
    cases = {EVIL: EVIL_DEFANGED, "http://192.0.2.7:8080/a.php": "hxxp://192[.]0[.]2[.]7:8080/a.php",
             "evil.example": "evil[.]example", "a.b@evil.example": "a.b[@]evil[.]example",
             "192.0.2.7": "192[.]0[.]2[.]7", "+33123456789": "+33123456789",
             "CVE-2026-12345": "CVE-2026-12345"}
    for value, shown in cases.items():
        assert defang(value) == shown
        assert defang(shown) == shown


# --- 2. the hospital's answer inline, and in the story ---------------------------------------------


def _hospital_reply(gw: Gateway, ref: str, text: str) -> None:
    ack = gw.last("accuse_reception", HOSPITAL)
    body = (f"{text}\n\nLe 27/11/2026 à 10:00, ARS Auvergne-Rhône-Alpes a écrit :\n"
            "> TEXTE CITÉ QUI NE DOIT PAS APPARAÎTRE\n")
    result = gw.feed(casemail.message(sender=HOSPITAL, to="ssi-ara@ars.test", subject=f"RE: [{ref}] Accusé",
                                      body=body, in_reply_to=ack.message_id))
    assert result.status == "processed", result


def test_reply_received_shows_the_new_text_inline_and_the_story_an_excerpt(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#assigner moi\n")
    _hospital_reply(gw, ref, "Bonjour,\n40 postes sont touchés, voir https://portail.chu.test/rapport.\n"
                             "Les sauvegardes sont intactes.")
    _, text, html = _parts(gw.last("notification_reponse", "agent@ars.test").raw)
    assert "40 postes sont touchés, voir hxxps://portail[.]chu[.]test/rapport." in text
    assert "Les sauvegardes sont intactes." in text
    assert "TEXTE CITÉ" not in text
    assert "Les sauvegardes sont intactes." in html and "<a " not in html
    gw.feed(casemail.staff_mail(f"#statut {ref}\n", subject=f"#statut {ref}"))
    digest = casemail.text_of(gw.last("synthese", "agent@ars.test").raw)
    assert "Message reçu (réponse)" in digest
    assert "40 postes sont touchés" in digest


def test_reply_inline_text_is_bounded(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#assigner moi\n")
    _hospital_reply(gw, ref, "mot " * 3000)
    _, text, _ = _parts(gw.last("notification_reponse", "agent@ars.test").raw)
    assert "texte tronqué" in text
    assert text.count("mot ") <= 1001


# --- 3. French labels and dates, never codes ------------------------------------------------------


def test_receipts_and_reply_notification_use_french_labels(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#assigner moi\n#qualifier grave\n")
    receipt = gw.receipt_text()
    assert "gravité : grave, statut : qualifié" in receipt
    assert CODES.findall(receipt) == [], receipt
    gw.command(ref, "#transmettre-acss Pour qualification.\n")
    receipt = gw.receipt_text()
    assert "statut en qualification" in receipt and "EN_QUALIFICATION" not in receipt
    _hospital_reply(gw, ref, "Merci.")
    _, text, _ = _parts(gw.last("notification_reponse", "agent@ars.test").raw)
    assert "Statut : en qualification   Gravité : grave" in text
    assert CODES.findall(text.split("Objet :")[0]) == []


def test_alert_notification_names_target_categories_in_french(gw: Gateway) -> None:
    gw.feed(_forged_alert())
    _, text, _ = _parts(gw.last("notification_equipe", "agent@ars.test").raw)
    line = next(x for x in text.splitlines() if x.startswith("Catégories visées"))
    assert "établissement de santé" in line and CODES.findall(line) == [], line


STAFF_TEMPLATES = ("staff_notification", "reponse_recue", "receipt", "digest_requete", "quarantaine",
                   "assignation")


@pytest.mark.parametrize("template", STAFF_TEMPLATES)
def test_staff_templates_show_no_code_no_iso_instant_no_live_url(template: str) -> None:
    from mailgateway.dispatch.template_samples import EXTRA
    from mailgateway.jobs.samples import SAMPLES

    settings = parse_settings(settings_data("sqlite:///:memory:"))
    context = {**sample_context(settings), **EXTRA.get(template, {}), **SAMPLES.get(template, {}),
               "indicators": [{"type": "url", "value": EVIL}, {"type": "phone", "value": "+33123456789"},
                              {"type": "ip", "value": "192.0.2.7"}]}
    context["case"] = {**context["case"], "title": "Centre hospitalier — rançongiciel"}
    mail = Renderer().render(template, context)
    for part in (mail.subject, mail.text, mail.html or ""):
        assert CODES.findall(part) == [], (template, CODES.findall(part))
        assert ISO_INSTANT.findall(part) == [], (template, part)
        assert EVIL not in part and "evil-patch.example" not in part
    if template in ("staff_notification", "reponse_recue"):
        assert "Détection : 27/11/2026 à 08:30" in mail.text or template != "staff_notification"
        assert "  - téléphone : +33123456789" in mail.text
        assert "  - adresse IP : 192[.]0[.]2[.]7" in mail.text


# --- 4. one command in the Subject and the body ----------------------------------------------------


def test_quarantaine_in_subject_and_body_runs_once(gw: Gateway) -> None:
    gw.feed(casemail.staff_mail("#quarantaine\n", subject="#quarantaine"))
    assert len(gw.outbound("liste_quarantaine", "agent@ars.test")) == 1
    text = gw.receipt_text()
    assert "[refusée]" not in text, text
    assert text.count("[appliquée] #quarantaine") == 1, text


def test_same_command_twice_in_one_mail_is_a_duplicate_not_a_refusal(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#assigner moi\n#assigner moi\n")
    receipt = gw.receipt_text()
    assert receipt.count("[appliquée] #assigner moi") == 1
    assert "[en double] #assigner moi" in receipt and "[refusée]" not in receipt


# --- 5. the new assignee is told -----------------------------------------------------------------


def test_assigning_a_colleague_tells_the_colleague(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#assigner referent@ars.test\n")
    subject, text, _ = _parts(gw.last("assignation", "referent@ars.test").raw)
    assert ref in subject and "assigné" in subject
    assert "agent@ars.test vous a assigné le dossier" in text
    assert "Statut : pris en compte" in text and "#qualifier" in text
    assert "(prévenu par courriel)" in gw.receipt_text()


def test_assigning_oneself_sends_no_notice(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#assigner moi\n")
    assert gw.outbound("assignation") == []


# --- 6. no doubled greeting or closing ------------------------------------------------------------


def test_repondre_with_own_greeting_and_closing_is_not_doubled(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#repondre Bonjour Monsieur Dupont,\n\nNous vous rappelons dans l'heure.\n\n"
                    "Cordialement,\nPaul Durand\n")
    text = casemail.text_of(gw.last("reponse", HOSPITAL).raw).replace("\r\n", "\n")
    assert text.count("Bonjour") == 1 and text.startswith("Bonjour Monsieur Dupont,"), text
    assert text.count("Cordialement") == 1, text
    # The service's signature block stays below.
    assert "ARS Auvergne-Rhône-Alpes\nssi-ara@ars.test" in text


def test_repondre_without_greeting_gets_the_template_one(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#repondre Nous vous rappelons dans l'heure.\n")
    text = casemail.text_of(gw.last("reponse", HOSPITAL).raw)
    assert text.startswith("Bonjour,") and "Cordialement," in text


# --- 7. a mistake gets a hint and a pointer, not the whole help ----------------------------------


def test_typo_receipt_gives_the_hint_and_a_pointer_not_the_list(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#assinger moi\n")
    receipt = gw.receipt_text()
    assert "#assigner" in receipt
    assert "#aide" in receipt and "pour la liste des commandes" in receipt
    assert "Commandes disponibles" not in receipt
    assert len(receipt.splitlines()) < 15, receipt


def test_aide_still_gives_the_whole_list(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#aide\n")
    assert "Commandes disponibles" in gw.receipt_text()


def test_story_describes_a_relay_target_in_french() -> None:
    from mailgateway.cases.story import describe

    line = describe("diffusion", {"destinataires": 3, "cible": "category=ESMS|LBM,departement=69 ; finess=690781810",
                                  "tlp": "CLEAR"})
    assert "category=" not in line and CODES.findall(line) == [], line
    assert ("cible : catégorie établissement social ou médico-social ou laboratoire de biologie médicale "
            "et département 69 ; ou FINESS 690781810") in line


def test_bulletin_preview_explains_its_target_in_french_without_the_raw_expression() -> None:
    from mailgateway.dispatch.template_samples import EXTRA

    settings = parse_settings(settings_data("sqlite:///:memory:"))
    context = {**sample_context(settings), **EXTRA["bulletin_apercu"]}
    context["bulletin"] = {**context["bulletin"], "target": "category=ESMS|LBM,departement=69",
                           "target_fr": "catégorie ESMS ou LBM et département 69"}
    text = Renderer().render("bulletin_apercu", context).text
    assert "expression" not in text and "category=" not in text, text
    assert ("Catégories : ESMS : établissement social ou médico-social ; "
            "LBM : laboratoire de biologie médicale") in text


def test_statut_ref_in_subject_and_body_sends_one_digest_and_no_receipt(gw: Gateway) -> None:
    ref = gw.declare()
    gw.feed(casemail.staff_mail(f"#statut {ref}\n", subject=f"#statut {ref}"))
    assert len(gw.outbound("synthese", "agent@ars.test")) == 1
    assert gw.outbound("recu_commandes", "agent@ars.test") == []


# --- detection time estimated from the declarant's words (outside tester) -------------------------


def test_staff_see_the_declarants_words_when_the_detection_time_was_estimated(gw: Gateway) -> None:
    body = ("Bonjour,\n\nNuméro FINESS : 690781810\nNom de la structure : Centre hospitalier\n"
            "Type d'incident : rançongiciel\nDate de détection : cette nuit\nServeurs chiffrés.\n")
    gw.feed(casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject="Incident", body=body))
    _, text, _ = _parts(gw.last("notification_equipe", "agent@ars.test").raw)
    line = next(x for x in text.splitlines() if x.startswith("Détection :"))
    assert "« cette nuit » (compris comme le" in line and "vers 02:00" in line, line
