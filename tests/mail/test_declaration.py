"""Declarations: labelled portal mail, free text, forwarded; FINESS; dates; declarant."""

from __future__ import annotations

import pytest

from mailgateway.mail.analyse import analyse
from mailgateway.mail.context import AnalysisContext
from mailgateway.mail.dates import parse_french_datetime
from mailgateway.mail.declaration import find_finess, valid_finess
from tests.support.messages import make_declaration, make_message
from tests.support.schema import assert_valid_facts


def test_portal_declaration_is_fully_extracted(ctx: AnalysisContext) -> None:
    facts = analyse(make_declaration(), ctx)
    assert facts.kind == "declaration" and facts.region == "ARA"
    d = facts.declaration
    assert d is not None
    assert d.finess == "690781810"
    assert d.structure == "Centre Hospitalier Exemple"
    assert d.category == "ETABLISSEMENT_SANTE"
    assert d.incident_type == "RANCONGICIEL" and d.nature == "MALVEILLANT"
    assert d.severity == "NON_QUALIFIE"
    assert d.detected_at == "2026-11-27T08:30:00+01:00"
    assert "SOINS" in d.impacts and "DONNEES" not in d.impacts
    assert d.measures == "Isolement du réseau, coupure VPN."
    assert d.summary and "Chiffrement" in d.summary
    assert_valid_facts(facts.to_json())


def test_declarant_of_a_noreply_notification_is_the_labelled_address(ctx: AnalysisContext) -> None:
    d = analyse(make_declaration(declarant_email="rssi@ch-exemple.test"), ctx).declaration
    assert d is not None and d.declarant == "rssi@ch-exemple.test"


def test_declarant_falls_back_to_reply_to_never_noreply(ctx: AnalysisContext) -> None:
    raw = make_declaration(declarant_email="voir ci-dessous", reply_to="rssi@ch-reply.test")
    d = analyse(raw, ctx).declaration
    assert d is not None and d.declarant == "rssi@ch-reply.test"


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("Ransomware", "RANCONGICIEL"),
        ("Hameçonnage", "HAMECONNAGE"),
        ("PHISHING", "HAMECONNAGE"),
        ("Compromission de comptes", "COMPROMISSION_COMPTE"),
        ("Panne électrique", "PANNE_ELECTRIQUE_CLIM"),
        ("Déni de service", "DENI_DE_SERVICE"),
        ("Rencongiciel", "RANCONGICIEL"),
    ],
)
def test_incident_type_labels_tolerate_accents_case_and_misspellings(
    label: str, expected: str, ctx: AnalysisContext
) -> None:
    d = analyse(make_declaration(incident_type=label, nature=None), ctx).declaration
    assert d is not None and d.incident_type == expected


def test_nature_is_derived_from_a_non_malicious_type(ctx: AnalysisContext) -> None:
    d = analyse(make_declaration(incident_type="Panne électrique", nature=None), ctx).declaration
    assert d is not None and d.nature == "NON_MALVEILLANT"


def test_labelled_severity_and_non_malicious_nature(ctx: AnalysisContext) -> None:
    d = analyse(make_declaration(severity="Grave", nature="Non malveillant"), ctx).declaration
    assert d is not None and (d.severity, d.nature) == ("GRAVE", "NON_MALVEILLANT")


def test_invalid_finess_key_is_rejected(ctx: AnalysisContext) -> None:
    d = analyse(make_declaration(finess="690781811"), ctx).declaration
    assert d is not None and d.finess is None


@pytest.mark.parametrize(("written", "expected"), [
    ("notre n° finess est le 690781810.", "690781810"),
    ("FINESS 690 781 810 (site principal)", "690781810"),
    ("FINESS : 69.078.181.0", "690781810"),
    ("FINESS : 69-0781810", "690781810"),
    ("N°\u00a0FINESS\u00a0: 690\u00a0781\u00a0810", "690781810"),  # pasted from Word
    ("FINESS 690\u202f781\u202f810", "690781810"),
    # Never a piece of a longer run of digit groups, nor a number written with mixed separators.
    ("Tél. 06 90 78 18 10", None),
    ("+33 6 90 78 18 10", None),
    ("SIRET 690 781 810 00012", None),
    ("ref 1 690 781 810", None),
    ("12 69-078.1810", None),
    ("IP 10.69.078.181.0", None),
    # Grouped, only where the text says it is a FINESS (an outside attacker).
    ("Ticket GLPI n° 69.078.181.0", None),
    ("fichier 69-0781810.log joint", None),
    ("rappelez le 690 781 810 poste 12", None),
    ("690781811", None),  # the key does not match
])
def test_a_finess_is_read_however_its_groups_are_separated(written: str, expected: str | None) -> None:
    """An outside tester (an RSSI): « 44.001.234.2 », « 44-0012342 », « 440 012 342 » with
    no-break spaces gave no FINESS, no category, « Structure : non identifiée »."""
    assert find_finess(written) == expected


def test_a_finess_in_the_subject_alone_is_the_structures(ctx: AnalysisContext) -> None:
    raw = make_message(subject="Incident SSI - FINESS 690 000 880",
                       body="Bonjour,\n\nNous subissons une attaque par rançongiciel depuis ce matin, "
                            "les serveurs sont chiffrés.\n\nCordialement,\nLe RSSI\n",
                       sender="rssi@labo.test")
    facts = analyse(raw, ctx)
    assert facts.declaration is not None and facts.declaration.finess == "690000880", facts.kind
    assert facts.declaration.category == "LBM"


def test_establishment_lookup_fills_category_from_finess_code(ctx: AnalysisContext) -> None:
    d = analyse(make_declaration(finess="690000880", category=""), ctx).declaration
    assert d is not None and d.category == "LBM"


def test_site_labels_extend_the_tables(ctx: AnalysisContext) -> None:
    from dataclasses import replace

    site = replace(ctx, extra_incident_types={"RANCONGICIEL": ("blocage crypto",)})
    d = analyse(make_declaration(incident_type="Blocage crypto", nature=None), site).declaration
    assert d is not None and d.incident_type == "RANCONGICIEL"


def test_free_text_html_declaration(ctx: AnalysisContext) -> None:
    html = (
        "<p>Bonjour,</p><p>Nous vous signalons une cyberattaque par rançongiciel sur la <b>Clinique du Parc</b> "
        "(FINESS 490000031) le 27 novembre 2026 vers 8h30. Des déprogrammations sont en cours.</p>"
        "<p>Cordialement</p>"
    )
    facts = analyse(make_message(subject="Signalement incident", body="", html=html), ctx)
    assert facts.kind == "declaration"
    d = facts.declaration
    assert d is not None
    assert (d.finess, d.incident_type, d.nature) == ("490000031", "RANCONGICIEL", "MALVEILLANT")
    assert d.detected_at == "2026-11-27T08:30:00+01:00"
    assert d.structure == "Clinique du Parc" and "SOINS" in d.impacts
    assert d.declarant == "dsi@clinique-exemple.test"


def test_forwarded_inline_declaration_is_read_in_the_forwarded_part(ctx: AnalysisContext) -> None:
    body = (
        "Pour information, déclaration reçue ce matin.\n\n"
        "---------- Forwarded message ---------\n"
        "De : RSSI CH <rssi@ch-fwd.test>\nDate: lun. 23 nov. 2026\nSubject: incident\n\n"
        "Bonjour, nous subissons une attaque par hameçonnage depuis ce matin sur le CH de Vienne.\n"
    )
    facts = analyse(make_message(sender="collegue@ars-sante.test", subject="TR: incident", body=body), ctx)
    assert facts.kind == "declaration"
    assert facts.declaration is not None and facts.declaration.incident_type == "HAMECONNAGE"
    # Issue 16: the acknowledgement goes to who wrote to the agency, never to the forwarded author.
    assert facts.declaration.declarant == "collegue@ars-sante.test"
    assert facts.declaration.forwarded_author == "rssi@ch-fwd.test"


def test_declaration_attached_as_message_rfc822_is_understood(ctx: AnalysisContext) -> None:
    from email.message import EmailMessage
    from email.policy import SMTP

    inner = make_declaration(sender="RSSI <rssi@ch-inner.test>")
    outer = EmailMessage(policy=SMTP)
    outer["From"] = "collegue@ars-sante.test"
    outer["To"] = "ssi-ara@ars-sante.test"
    outer["Subject"] = "Fwd: déclaration"
    outer.set_content("Voir la pièce jointe.")
    outer.add_attachment(inner, maintype="message", subtype="rfc822")
    facts = analyse(outer.as_bytes(), ctx)
    assert facts.kind == "declaration"
    assert facts.declaration is not None and facts.declaration.finess == "690781810"


def test_english_spam_mentioning_phishing_is_not_a_declaration(ctx: AnalysisContext) -> None:
    raw = make_message(
        to="someone@else.test",
        subject="Protect yourself from phishing",
        body="Buy our anti-phishing product now, best price, click here.",
    )
    assert analyse(raw, ctx).kind == "unknown"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("27/11/2026 à 08h30", "2026-11-27T08:30:00+01:00"),
        ("le 27 novembre 2026 vers 8h30", "2026-11-27T08:30:00+01:00"),
        ("2026-07-01T10:00", "2026-07-01T10:00:00+02:00"),
        ("2026-07-01T10:00:00+00:00", "2026-07-01T10:00:00+00:00"),
        ("détecté le 1er août 2026", "2026-08-01T00:00:00+02:00"),
        ("22/11/2026 23:40", "2026-11-22T23:40:00+01:00"),
    ],
)
def test_french_dates(text: str, expected: str) -> None:
    assert parse_french_datetime(text) == expected


@pytest.mark.parametrize(
    ("value", "ok"),
    [("690781810", True), ("490000031", True), ("690781811", False), ("2A0000012", True), ("12345678", False)],
)
def test_finess_check_key(value: str, ok: bool) -> None:
    assert valid_finess(value) is ok


@pytest.mark.parametrize(("body", "incident_type", "impacts"), [
    ("Aucune exfiltration de données constatée à ce stade.", None, ()),
    ("No data exfiltration found so far.", None, ()),
    ("Ce n'était finalement pas un rançongiciel mais une panne de stockage.", "DYSFONCTIONNEMENT_INFRA", ()),
    # « sans » denies what follows it in its clause (« san » in match form), not the attack before it.
    ("Nos serveurs ont subi une attaque sans rançongiciel ni chiffrement, aucune fuite de données.",
     "COMPROMISSION_SI", ()),
    # A negation after the word denies nothing; another clause of the text still names its type.
    ("Rançongiciel non revendiqué à ce stade.", "RANCONGICIEL", ()),
    ("Aucune trace de rançongiciel sur les serveurs.", None, ()),
    # A negation of something else in the sentence denies nothing (an outside attacker: each of
    # these real ransomware declarations lost its type under a clause-wide reading).
    ("Il s'agit sans aucun doute d'un rançongiciel.", "RANCONGICIEL", ()),
    ("Les sauvegardes n'ont pas été chiffrées par le rançongiciel, heureusement.", "RANCONGICIEL", ()),
    ("Nous n'avons pas pu stopper le rançongiciel.", "RANCONGICIEL", ()),
    ("Aucun poste n'a été épargné par le rançongiciel.", "RANCONGICIEL", ()),
    ("We could not stop the ransomware.", "RANCONGICIEL", ()),
    # A negation governs nothing past the end of its sentence or field (an outside attacker).
    ("Impact sur les soins : aucun. Un rançongiciel a chiffré 40 postes.", "RANCONGICIEL", ()),
    ("Pièce jointe ouverte : aucune. Un hameçonnage ciblé a visé la direction.", "HAMECONNAGE", ()),
    ("Pas de fuite de données, mais les serveurs sont chiffrés par un rançongiciel.", "RANCONGICIEL", ()),
])
def test_what_a_clause_denies_is_not_read_as_the_incident(ctx: AnalysisContext, body: str,
                                                          incident_type: str | None, impacts: tuple[str, ...]) -> None:
    """An outside tester (an RSSI): « Aucune exfiltration de données constatée » gave « fuite de
    données », told to the declarant in the acknowledgement; « ce n'était finalement pas un
    rançongiciel » gave « rançongiciel »."""
    raw = make_message(subject="Déclaration d'incident", sender="rssi@labo.test",
                       body=f"Bonjour,\n\nFINESS 690000880.\n{body}\n\nCordialement,\nLe RSSI\n")
    d = analyse(raw, ctx).declaration
    assert d is not None
    assert d.incident_type == incident_type
    assert tuple(i for i in d.impacts if i != "FONCTIONNEMENT") == impacts
