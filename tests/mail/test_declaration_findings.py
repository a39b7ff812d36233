"""Declarations as the outside tester sent them (issue 16, "Understanding"), end to end by mail.

1. A sentence ending with a colon (« Voici les éléments : », « Nous vous signalons un incident : »)
   read as a label with an empty value took the form below it as its "long text": the severity
   was lost (NON_QUALIFIE instead of GRAVE) or the mail was quarantined as unknown.
"""

from __future__ import annotations

import email
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP

import pytest
from sqlalchemy import select

from mailgateway.intake.accept import accept_in
from mailgateway.mail.declaration import labelled_fields
from mailgateway.mail.facts import MessageFacts
from mailgateway.mail.indicators import signature_phones
from mailgateway.mail.labels import load_labels
from mailgateway.mail.text import labelled_lines
from mailgateway.processing.runner import Result
from mailgateway.processing.worker import analyse_inbound
from mailgateway.store.engine import transaction
from mailgateway.store.models import Indicator
from tests.mail.test_regex_budget import BUDGET, SIZE, within
from tests.support import casemail
from tests.support.casegateway import NOW, Gateway, make_gateway


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def declare(gw: Gateway, body: str, sender: str = "dsi@ch-exemple.test") -> str:
    result = gw.feed(casemail.message(sender=sender, to="ssi-ara@ars.test", subject="Incident", body=body))
    assert result.kind == "declaration" and result.case_ref, result
    return result.case_ref


def test_an_opening_sentence_ending_with_a_colon_keeps_the_severity(gw: Gateway) -> None:
    ref = declare(gw, "Bonjour,\n\nVoici les éléments :\n\nN° FINESS : 380780080\n"
                      "Type d'incident : rançongiciel\nGravité : grave\n")
    case = gw.case(ref)
    assert case.fields["declaration"]["severity"] == "GRAVE"
    assert (case.finess, case.incident_type) == ("380780080", "RANCONGICIEL")
    assert "Gravité déclarée : grave" in casemail.text_of(gw.last("notification_equipe", "agent@ars.test").raw)


def test_a_two_line_form_under_a_sentence_with_a_colon_is_a_declaration(gw: Gateway) -> None:
    ref = declare(gw, "Bonjour,\n\nNous vous signalons un incident :\n\nN° FINESS : 380780080\nGravité : grave\n")
    case = gw.case(ref)
    assert case.finess == "380780080"
    assert case.fields["declaration"]["severity"] == "GRAVE"


OUTLOOK = """From: =?iso-8859-1?Q?Sophie_Mercier?= <s.mercier@ch-exemple.test>
To: "ssi-ara@ars.test" <ssi-ara@ars.test>
Subject: =?iso-8859-1?Q?Incident_de_s=E9curit=E9?=
Date: Fri, 27 Nov 2026 10:00:00 +0100
Message-ID: <DB9PR01MB5678@EURPRD01.PROD.OUTLOOK.COM>
MIME-Version: 1.0
Content-Type: text/html; charset="Windows-1252"
Content-Transfer-Encoding: quoted-printable

<html><body>
<p class=3D"MsoNormal">Bonjour,<o:p></o:p></p>
<p class=3D"MsoNormal"><o:p>&nbsp;</o:p></p>
<p class=3D"MsoNormal">Nous vous signalons un incident de s=E9curit=E9&nbsp;:<o:p></o:p></p>
<p class=3D"MsoNormal"><o:p>&nbsp;</o:p></p>
<p class=3D"MsoNormal"><b>N=B0 FINESS&nbsp;:</b> 380780080<o:p></o:p></p>
<p class=3D"MsoNormal"><b>Type d=92incident&nbsp;:</b> ran=E7ongiciel<o:p></o:p></p>
<p class=3D"MsoNormal"><b>Gravit=E9 ressentie&nbsp;:</b> grave<o:p></o:p></p>
<p class=3D"MsoNormal"><o:p>&nbsp;</o:p></p>
<p class=3D"MsoNormal">Cordialement,<o:p></o:p></p>
<p class=3D"MsoNormal">Sophie Mercier<o:p></o:p></p>
</body></html>
"""


def test_an_outlook_html_declaration_with_empty_paragraphs_keeps_the_severity(gw: Gateway) -> None:
    result = gw.feed(OUTLOOK.replace("\n", "\r\n").encode("ascii"))
    assert result.kind == "declaration" and result.case_ref, result
    case = gw.case(result.case_ref)
    assert case.fields["declaration"]["severity"] == "GRAVE"
    assert case.incident_type == "RANCONGICIEL"
    notification = casemail.text_of(gw.last("notification_equipe", "agent@ars.test").raw)
    assert "Gravité déclarée : grave" in notification
    assert "non qualifié" not in notification


def test_an_unknown_label_never_swallows_the_known_ones_below_it() -> None:
    labels = load_labels()
    text = "Voici les éléments :\n\nN° FINESS : 380780080\nGravité : grave\n"
    assert labelled_fields(text, labels).values == {"finess": "380780080", "severity": "grave"}
    # A known label's paragraph still reads on across a sentence with a colon in it...
    text = "Description :\n\nLe serveur s'est arrêté à 3h : tout est chiffré.\nGravité : grave\n"
    fields = labelled_fields(text, labels).values
    assert fields["summary"] == "Le serveur s'est arrêté à 3h : tout est chiffré."
    assert fields["severity"] == "grave"
    # ...and without a field table (alerts), a labelled line after the blank ends it.
    assert [(label, value) for label, value, _i in labelled_lines("Objet :\n\nA : b\n")] == [("objet", ""), ("a", "b")]


COLLEAGUE_FORWARD = """Bonjour,

Je vous transfère la déclaration reçue ce matin du CH Exemple.

Cordialement,
Agent SSI
Tél : 04 72 11 22 33

De : RSSI CH Exemple <rssi@ch-exemple.test>
Envoyé : vendredi 27 novembre 2026 08:41
À : agent@ars.test
Cc : direction@ch-exemple.test; ssi-ara@ars.test
Objet : Déclaration d'incident

Bonjour,

N° FINESS : 380780080
Type d'incident : rançongiciel
Gravité : grave
Les postes affichent une note de rançon ; l'attaquant demande de le contacter au 01 23 45 67 89.

Cordialement,
Jean Dupont, RSSI
+33 4 72 00 00 00
"""


def colleague_forward(**kw: object) -> bytes:
    return casemail.staff_mail(COLLEAGUE_FORWARD, subject="TR: Déclaration d'incident", **kw)  # type: ignore[arg-type]


def test_a_colleague_forward_is_the_establishments_declaration(gw: Gateway) -> None:
    result = gw.feed(colleague_forward())
    assert result.kind == "declaration" and result.case_ref, result
    case = gw.case(result.case_ref)
    assert case.declarant == "rssi@ch-exemple.test"
    assert case.fields["declaration"]["transmis_par"] == "agent@ars.test"
    assert [r.recipient for r in gw.outbound("accuse_reception")] == ["rssi@ch-exemple.test"]
    # The establishment's address is not the verified sender: only the reference is quoted.
    ack = casemail.text_of(gw.last("accuse_reception").raw)
    assert case.reference in ack and "Objet de votre message" not in ack
    events = [dict(e.data or {}) for e in gw.events(result.case_ref) if e.type == "declaration_transferee"]
    assert events == [{"declarant": "rssi@ch-exemple.test", "auteur_du_message_transfere": "rssi@ch-exemple.test",
                       "transmis_par": "agent@ars.test"}]
    # Staff's answers and the transmission to the national cell name the establishment.
    gw.command(result.case_ref, "#repondre Merci, nous revenons vers vous.\n#transmettre-acss urgent\n")
    assert [r.recipient for r in gw.outbound("reponse")] == ["rssi@ch-exemple.test"]
    assert "Déclarant : rssi@ch-exemple.test" in casemail.text_of(gw.last("transmission_acss").raw)
    assert "agent@ars.test" not in {r.recipient for r in gw.outbound() if r.kind != "notification_equipe"
                                    and r.kind != "recu_commandes"}


def test_commands_above_a_forwarded_declaration_apply_to_the_case_it_opens(gw: Gateway) -> None:
    # An outside tester (Outlook « TR: » + « #qualifier grave »): no case, no acknowledgement, and
    # a receipt « aucun dossier concerné »; the same forward without the command opened one.
    body = "#qualifier grave\n#assigner moi\n\n" + COLLEAGUE_FORWARD
    result = gw.feed(casemail.staff_mail(body, subject="TR: Déclaration d'incident"))
    assert result.kind == "declaration" and result.case_ref, result
    case = gw.case(result.case_ref)
    assert case.declarant == "rssi@ch-exemple.test"
    assert case.severity == "GRAVE" and case.assignee == "agent@ars.test"
    assert [r.recipient for r in gw.outbound("accuse_reception")] == ["rssi@ch-exemple.test"]
    receipt = gw.receipt_text()
    assert "aucun dossier" not in receipt and receipt.count("[appliquée]") == 2, receipt
    assert case.reference in casemail.parse(gw.last("recu_commandes").raw)["Subject"]


def test_commands_above_a_forward_that_declares_nothing_are_refused_as_before(gw: Gateway) -> None:
    body = "#qualifier grave\n\nDe : x@chu.test\nEnvoyé : lundi\nObjet : déjeuner\n\nOn déjeune jeudi ?\n"
    result = gw.feed(casemail.staff_mail(body, subject="TR: déjeuner"))
    assert result.kind == "command" and result.case_ref is None
    assert "aucun dossier" in gw.receipt_text()


def test_parse_json_names_the_colleague_who_passed_the_declaration_on(gw: Gateway) -> None:
    # ``parse --json`` (DESIGN §6, extended): the declaration's ``transmis_par``, as on the case.
    def parsed(raw: bytes) -> dict[str, object]:
        with transaction(gw.app.factory) as s:
            inbound_id = accept_in(s, raw, source="cli", now=NOW).inbound_id
        with gw.app.factory() as s:
            facts = analyse_inbound(gw.app.settings, gw.app.authenticator, s, inbound_id)
        assert facts is not None
        declaration = facts.to_json()["declaration"]
        assert isinstance(declaration, dict)
        return declaration

    forwarded = parsed(colleague_forward())
    assert (forwarded["declarant"], forwarded["transmis_par"]) == ("rssi@ch-exemple.test", "agent@ars.test")
    direct = parsed(casemail.declaration(7))
    assert "transmis_par" in direct and direct["transmis_par"] is None  # keys always present


def test_a_forward_from_an_unauthenticated_agency_address_keeps_the_outer_sender_rule(gw: Gateway) -> None:
    result = gw.feed(colleague_forward(signed=False))
    assert result.kind == "declaration" and result.case_ref, result
    assert gw.case(result.case_ref).declarant == "agent@ars.test"
    assert "rssi@ch-exemple.test" not in {r.recipient for r in gw.outbound()}


def test_an_establishments_forward_still_acknowledges_its_sender(gw: Gateway) -> None:
    body = COLLEAGUE_FORWARD.replace("agent@ars.test", "dsi@chu.test")
    raw = casemail.sign(casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject="TR: incident",
                                         body=body), casemail.establishment_key())
    result = gw.feed(raw)
    assert result.kind == "declaration" and result.case_ref, result
    assert [r.recipient for r in gw.outbound("accuse_reception")] == ["dsi@chu.test"]
    assert "transmis_par" not in gw.case(result.case_ref).fields["declaration"]


def test_a_colleague_forward_of_an_agency_or_robot_author_acknowledges_nobody(gw: Gateway) -> None:
    for n, author in enumerate(("collegue@ars.test", "no-reply@ch-exemple.test")):
        body = COLLEAGUE_FORWARD.replace("rssi@ch-exemple.test", author)
        result = gw.feed(casemail.staff_mail(body, subject=f"TR: Déclaration {n}"))
        assert result.kind == "declaration" and result.case_ref, result
        assert gw.case(result.case_ref).declarant is None
    assert gw.outbound("accuse_reception") == []


def test_participants_and_signature_numbers_are_not_indicators(gw: Gateway) -> None:
    result = gw.feed(colleague_forward())
    assert result.case_ref
    case = gw.case(result.case_ref)
    facts_indicators = _indicators(gw, case.id)
    assert ("phone", "+33123456789") in facts_indicators  # the attacker's number stays
    for value in ("+33472000000", "+33472112233", "rssi@ch-exemple.test", "direction@ch-exemple.test",
                  "agent@ars.test", "ssi-ara@ars.test", "ars.test", "ch-exemple.test"):
        assert all(v != value for _t, v in facts_indicators), (value, facts_indicators)


def test_a_direct_declarations_signature_phone_is_not_an_indicator(gw: Gateway) -> None:
    ref = declare(gw, "Bonjour,\n\nNuméro FINESS : 380780080\nType d'incident : hameçonnage\nGravité : grave\n"
                      "Appels frauduleux du +44 20 7946 0958.\n\nBien cordialement,\n\nMarie Martin\n"
                      "Responsable SI\nphone : +33472000000\n")
    found = _indicators(gw, gw.case(ref).id)
    assert ("phone", "+442079460958") in found
    assert ("phone", "+33472000000") not in found


def _indicators(gw: Gateway, case_id: int) -> set[tuple[str, str]]:
    with gw.app.factory() as s:
        return {(i.type, i.value) for i in s.scalars(select(Indicator).where(Indicator.case_id == case_id))}


@pytest.mark.parametrize("unit", ["Voici :\n\n", "Description :\n\n", "Description :\n\nx\n", "Cordialement\n",
                                  "-- \n", "Bien cordialement,\n01 23 45 67 89\n", " :\n", "\u00a0:\n\n"])
def test_the_new_readers_stay_linear(unit: str) -> None:
    labels = load_labels()
    text = unit * (SIZE // len(unit))
    with within(BUDGET, f"labelled_fields/signature_phones on {unit!r}"):
        labelled_fields(text, labels)
        signature_phones(text)


def test_a_colleague_forward_as_an_attachment_is_the_establishments_declaration(gw: Gateway) -> None:
    inner = casemail.message(sender="rssi@ch-exemple.test", to="agent@ars.test", subject="Déclaration d'incident",
                             body="Bonjour,\n\nN° FINESS : 380780080\nType d'incident : rançongiciel\n"
                                  "Gravité : grave\n\nCordialement,\nJean Dupont\n04 72 00 00 00\n")
    outer = _mail("agent@ars.test", "TR: Déclaration d'incident", "<fwd-att@ars.test>")
    outer.set_content("Pour suite à donner.\n")
    outer.add_attachment(inner, maintype="message", subtype="rfc822")
    result = gw.feed(casemail.sign(outer.as_bytes()))
    assert result.kind == "declaration" and result.case_ref, result
    case = gw.case(result.case_ref)
    assert (case.declarant, case.fields["declaration"]["transmis_par"]) == ("rssi@ch-exemple.test", "agent@ars.test")
    assert [r.recipient for r in gw.outbound("accuse_reception")] == ["rssi@ch-exemple.test"]
    assert not {v for _t, v in _indicators(gw, case.id)} & {"+33472000000", "rssi@ch-exemple.test", "agent@ars.test"}


def test_a_person_cannot_name_another_declarant_to_be_acknowledged(sqlite_url: str) -> None:
    """Outside attack: a signed mail from evil.test with « Courriel du déclarant : victim2@… »
    had the acknowledgement sent to the victim, made the declarant of the case. Only a robot's
    notification (a no-reply From, as the portal's) names its declarant by label."""
    from tests.support.casegateway import make_gateway

    for gw in make_gateway(sqlite_url):
        body = ("Bonjour,\n\nNuméro FINESS : 690781810\nCourriel du déclarant : victim2@victim.test\n"
                "Type d'incident : rançongiciel\nGravité : grave\n")
        raw = casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject="Déclaration", body=body)
        result = gw.feed(raw)
        assert result.status == "processed" and result.case_ref
        assert gw.case(result.case_ref).declarant == "dsi@chu.test"
        assert gw.outbound("accuse_reception", "victim2@victim.test") == []
        portal = casemail.message(sender="no-reply@portail.test", to="ssi-ara@ars.test", subject="Signalement",
                                  body=body.replace("690781810", "690781811"))
        ref = gw.feed(portal).case_ref
        assert ref and gw.case(ref).declarant == "victim2@victim.test"  # the robot's label is the declarant


def test_a_generic_subject_gives_way_to_the_precise_type_in_the_body(sqlite_url: str) -> None:
    """Outside test (RSSI): subject « Attaque informatique cette nuit », body about encrypted
    servers and a ransom, was acknowledged as « compromission du système d'information »."""
    from mailgateway.mail.labels import load_labels

    labels = load_labels()
    assert labels.incident_types.first("Une attaque a chiffré nos serveurs cette nuit.") == "RANCONGICIEL"
    from tests.support.casegateway import make_gateway

    for gw in make_gateway(sqlite_url):
        raw = casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject="Attaque informatique cette nuit",
                               body="Bonjour,\n\nNos serveurs sont chiffrés et une rançon est demandée. "
                                    "FINESS 690781810.\n")
        ref = gw.feed(raw).case_ref
        assert ref and gw.case(ref).incident_type == "RANCONGICIEL"


def test_the_signature_above_a_phones_sign_off_is_the_writers_own() -> None:
    """Found by an outside tester: « Jean Dupont RSSI / 06 12 34 56 78 / Envoyé de mon iPhone »,
    with no closing formula, put the RSSI's own mobile among the indicators."""
    text = ("Bonjour,\nNos serveurs sont chiffrés. Le faux support appelle depuis le 01 23 45 67 89.\n\n"
            "Jean Dupont RSSI\n06 12 34 56 78\nEnvoyé de mon iPhone\n")
    assert signature_phones(text) == ["+33612345678"]


@pytest.mark.parametrize(("signature", "written", "impacts"), [
    ("Paul Durand, RSSI du GHT\ncorrespondant SSI", "", []),
    ("Paul Durand, RSSI du GHT", "L'incident touche aussi les autres établissements du GHT.\n", ["ORGANISATION"]),
])
def test_a_signature_is_no_impact(signature: str, written: str, impacts: list[str]) -> None:
    """Outside tester: « RSSI du GHT » in a signature reached staff as « Impacts : au-delà de la
    structure ». What the writer wrote still counts."""
    from mailgateway.mail.analyse import analyse
    from mailgateway.mail.context import AnalysisContext
    raw = (b"From: rssi@chu.test\r\nTo: ssi-ara@ars.test\r\nSubject: Incident\r\nMessage-ID: <g@chu.test>\r\n"
           b"Date: Fri, 27 Nov 2026 09:00:00 +0100\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
           + (f"Bonjour,\nNous déclarons un rançongiciel sur les serveurs de fichiers.\n{written}"
              f"Numéro FINESS : 690781810\n\nCordialement,\n{signature}\n").replace("\n", "\r\n").encode())
    facts = analyse(raw, AnalysisContext(region_addresses={"ssi-ara@ars.test": "ARA"}))
    assert facts.declaration is not None and list(facts.declaration.impacts) == impacts


# --- outside tester of 2026-12-07 (parse --json as a contract checker) ---------------------------


def _analysed(body: str, subject: str = "Déclaration d'incident", attachment: tuple[str, bytes] | None = None,
              ctype: str = "application/octet-stream", **params: str) -> MessageFacts:
    from mailgateway.mail.analyse import analyse
    from mailgateway.mail.context import AnalysisContext
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "dsi@chu.test"
    msg["To"] = "ssi-ara@ars.test"
    msg["Subject"] = subject
    msg["Message-ID"] = "<f@chu.test>"
    msg["Date"] = "Fri, 27 Nov 2026 09:00:00 +0100"
    msg.set_content(body)
    if attachment is not None:
        name, data = attachment
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name, params=params)
    return analyse(msg.as_bytes(), AnalysisContext(region_addresses={"ssi-ara@ars.test": "ARA"}))


@pytest.mark.parametrize(("lines", "impacts"), [
    ("Impact sur les soins : Non\nImpact sur les données : Non\nImpact sur le fonctionnement : Non\n", []),
    ("Impact sur les soins : Aucun impact\n", []),
    ("Impact sur les soins : Aucun\nImpact sur les données : Oui\n", ["DONNEES"]),
    ("Impacts : pas d'impact sur les soins\n", []),
    ("Impacts : soins (pas de données)\n", ["SOINS"]),
    ("Impact sur les soins : Oui\n", ["SOINS"]),
    # The .docx form's tick boxes, read as text (outside tester: « ☐ Oui ☒ Non » was an impact).
    ("Impact sur les soins : ☐ Oui ☒ Non\nImpact sur les données : ☒ Oui ☐ Non\n", ["DONNEES"]),
    ("Impact sur les soins : [ ] Oui [X] Non\n", []),
    ("Impact sur les soins : ☐ Oui ☐ Non\n", []),
    ("Impact sur les soins : nul\n", []),
    ("Impacts : soins, données\n", ["SOINS", "DONNEES"]),
    ("Impact sur les soins : Non\nDes interventions sont déprogrammées.\n", ["SOINS"]),
])
def test_an_impact_the_form_says_no_to_is_no_impact(lines: str, impacts: list[str]) -> None:
    """The portal's « Impact sur les soins : Oui/Non » layout: « Non » gave ``impacts:["SOINS"]``,
    the free-text pass reading the label itself; « Impacts : pas d'impact sur les soins » too.
    What the writer says in a sentence still counts."""
    facts = _analysed(f"Bonjour,\n\nNuméro FINESS : 440000289\nType d'incident : Rançongiciel\n{lines}")
    assert facts.kind == "declaration" and facts.declaration is not None
    assert list(facts.declaration.impacts) == impacts


@pytest.mark.parametrize(("subject", "body", "name"), [
    ("Fiche de déclaration", "", "Declaration_incident_SSI.pdf"),
    ("Fiche de déclaration", "Veuillez trouver ci-joint la fiche de déclaration.\nCordialement",
     "Formulaire de déclaration incident sécurité.docx"),
    ("Déclaration incident", "", "fiche.pdf"),
    ("Signalement incident SSI", "cf. PJ", "fiche.pdf"),
    # An outside tester (an RSSI): the three read together, none on its own before.
    ("Vol PC portable - site St Brieuc", "Vous trouverez en PJ la déclaration pour notre site de Saint-Brieuc.",
     "Declaration_SSI_BioArmor_StBrieuc.pdf"),
    ("Site de Lannion", "Bonjour, ci-joint notre signalement.", "scan0001.pdf"),
    ("Site de Lannion", "Bonjour,\nVeuillez trouver en pièce jointe notre déclaration.", "doc.pdf"),
    ("Envoi", "", "Declaration_SSI_BioArmor.pdf"),
])
def test_a_declaration_sent_as_its_form_attached_is_a_declaration(subject: str, body: str, name: str) -> None:
    """A short note (or none) and the form attached: quarantined as « message non reconnu », the
    declarant never acknowledged. The subject without its article, or the file's name, says it."""
    facts = _analysed(body, subject=subject, attachment=(name, b"%PDF-1.4\n%%EOF\n"))
    assert facts.kind == "declaration", (subject, name)


FORM_TXT = ("Numéro FINESS : 690781810\r\nType d'incident : rançongiciel\r\nGravité : grave\r\n"
            "Date de détection : 06/12/2026 à 22h15\r\n"
            "Description : postes chiffrés au bloc opératoire, demande de rançon.\r\n")


def docx_form() -> bytes:
    """The form as Word saves it: a title, then a two-column table of labels and values."""
    from tests.mail.test_office import docx, p, row
    return docx(p("Fiche de signalement") + "<w:tbl>" + row("Numéro FINESS", "690781810")
                + row("Type d'incident", "Rançongiciel") + row("Gravité", "Grave")
                + row("Date de détection", "06/12/2026 à 22h15")
                + row("Description", "postes chiffrés au bloc opératoire, demande de rançon.") + "</w:tbl>")


def _with_text_file(body: str, data: bytes, maintype: str, subtype: str, name: str = "fiche_incident",
                    **params: str) -> MessageFacts:
    return _analysed(body, attachment=(name, data), ctype=f"{maintype}/{subtype}", **params)


@pytest.mark.parametrize(("data", "maintype", "subtype", "params"), [
    (FORM_TXT.encode(), "text", "plain", {"charset": "utf-8"}),
    (FORM_TXT.encode("cp1252"), "text", "plain", {}),  # Outlook: no charset, Notepad's ANSI
    (FORM_TXT.encode(), "application", "octet-stream", {}),
    (docx_form(), "application", "vnd.openxmlformats-officedocument.wordprocessingml.document", {}),
])
def test_a_form_attached_as_a_text_file_is_read(data: bytes, maintype: str, subtype: str,
                                                 params: dict[str, str]) -> None:
    """« Veuillez trouver ci-joint notre fiche » with the form as « fiche_incident.txt » or a Word
    file: the case said « non précisé » for every field (an outside tester, note of 2026-12-07)."""
    name = "fiche_incident.docx" if subtype.endswith("document") else "fiche_incident.txt"
    facts = _with_text_file("Bonjour,\nVeuillez trouver ci-joint notre fiche de déclaration.\nCordialement\n",
                            data, maintype, subtype, name, **params)
    decl = facts.declaration
    assert facts.kind == "declaration" and decl is not None
    assert (decl.finess, decl.incident_type, decl.severity) == ("690781810", "RANCONGICIEL", "GRAVE")
    assert decl.detected_at == "2026-12-06T22:15:00+01:00"
    assert decl.summary == "postes chiffrés au bloc opératoire, demande de rançon."


def test_the_form_in_the_body_wins_over_a_text_file_attached() -> None:
    body = "Numéro FINESS : 440000289\nType d'incident : hameçonnage\nGravité : non grave\n"
    facts = _with_text_file(body, FORM_TXT.encode(), "text", "plain", "fiche.txt", charset="utf-8")
    decl = facts.declaration
    assert decl is not None and (decl.finess, decl.incident_type) == ("440000289", "HAMECONNAGE")


def test_a_log_file_attached_is_no_form() -> None:
    """A log attached beside a free-text declaration is evidence, not the form: the body is read."""
    log = b"2026-12-06 22:15:01 GET /login.php 200\n" * 20
    facts = _with_text_file("Bonjour,\nNous avons une attaque par rançongiciel cette nuit, FINESS 440000289.\n",
                            log, "text", "plain", name="access.log", charset="utf-8")
    decl = facts.declaration
    assert decl is not None and decl.incident_type == "RANCONGICIEL" and decl.finess == "440000289"


@pytest.mark.parametrize("words", ["Vol PC portable", "Type d'incident : vol PC portable", "laptop volé au bloc",
                                   "PC portable volé dans la voiture d'un médecin"])
def test_a_stolen_laptop_written_shortly_is_a_theft(words: str) -> None:
    facts = _analysed(f"Bonjour,\n{words}.\nNuméro FINESS : 440000289\n", subject="Incident")
    assert facts.declaration is not None and facts.declaration.incident_type == "VOL_EQUIPEMENT", words


def test_an_attachments_name_alone_does_not_make_a_declaration_of_anything() -> None:
    facts = _analysed("Bonjour, voici le compte rendu de la réunion.", subject="Compte rendu",
                      attachment=("compte-rendu.pdf", b"%PDF-1.4\n%%EOF\n"))
    assert facts.kind != "declaration"
    facts = _analysed("Bonjour, ci-joint le compte rendu de la réunion.", subject="Réunion",
                      attachment=("compte-rendu.pdf", b"%PDF-1.4\n%%EOF\n"))
    assert facts.kind != "declaration"


@pytest.mark.parametrize(("written", "read"), [
    ("01/01/0001 00:00", None),
    ("0001-01-01T00:00", None),
    ("27/11/26 08:30", "2026-11-27T08:30:00+01:00"),
    ("27/11/2026 08:30", "2026-11-27T08:30:00+01:00"),
    ("01/01/0001 puis le 27/11/2026 08:30", "2026-11-27T08:30:00+01:00"),
])
def test_a_placeholder_year_is_no_detection_date(written: str, read: str | None) -> None:
    """« Date de détection : 01/01/0001 » was read as 2001-01-01: an invented, plausible date."""
    from mailgateway.mail.dates import parse_french_datetime
    assert parse_french_datetime(written) == read


def test_a_theft_written_with_its_article_is_a_theft() -> None:
    facts = _analysed("Bonjour,\n\nVol d'un ordinateur portable dans le service de radiologie.\n"
                      "Numéro FINESS : 440000289\n")
    assert facts.declaration is not None and facts.declaration.incident_type == "VOL_EQUIPEMENT"


def test_a_from_staff_cannot_answer_is_shown_to_them_with_the_banner(gw: Gateway) -> None:
    # An outside tester: « From: Lemaire, Sylvie <…> » (an unquoted comma: two addresses for RFC
    # 5322) got no acknowledgement, and staff read only « Déclarant : inconnu ».
    body = casemail.declaration(41).split(b"\r\n\r\n", 1)[1].decode()
    raw = casemail.message(sender="Lemaire, Sylvie <secretariat@chu.test>", to="ssi-ara@ars.test",
                           subject="Déclaration d'incident", body=body)
    result = gw.feed(casemail.sign(raw, casemail.establishment_key()))
    assert result.kind == "declaration" and result.case_ref, result
    assert gw.outbound("accuse_reception") == []
    text = casemail.text_of(gw.last("notification_equipe").raw)
    assert text.startswith("Accusé de réception NON envoyé au déclarant : aucune adresse de déclarant utilisable")
    assert "En-tête From tel que reçu : « Lemaire, Sylvie <secretariat@chu.test> »" in text, text


def _without_finess(body: str, *, signed: bool = True) -> bytes:
    raw = casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject="Déclaration d'incident", body=body)
    return casemail.sign(raw, casemail.establishment_key()) if signed else raw


def test_an_update_without_reference_nor_finess_from_the_same_declarant_is_flagged(gw: Gateway) -> None:
    # An outside tester (an RSSI): « mise à jour : les sauvegardes sont restaurées », days later,
    # without reference nor FINESS, opened a case nobody linked to the first.
    first = gw.feed(_without_finess("Déclaration d'incident : rançongiciel, serveurs chiffrés.\nGravité : grave\n"))
    gw.clock.advance(hours=30)
    update = gw.feed(_without_finess("Déclaration d'incident, mise à jour : les sauvegardes sont restaurées.\n"))
    assert first.case_ref and update.case_ref and update.case_ref != first.case_ref
    notification = casemail.text_of(gw.notification(update.case_ref, "agent@ars.test").raw)
    assert f"DOUBLON POSSIBLE du dossier ouvert {first.case_ref} (même déclarant authentifié, sans FINESS)" \
        in notification, notification
    assert first.case_ref in casemail.text_of(gw.last("accuse_reception", to="dsi@chu.test").raw)


def test_a_forged_declarant_never_links_to_a_case(gw: Gateway) -> None:
    first = gw.feed(_without_finess("Déclaration d'incident : rançongiciel, serveurs chiffrés.\n"))
    forged = gw.feed(_without_finess("Déclaration d'incident : hameçonnage.\n", signed=False))
    assert forged.case_ref and first.case_ref
    assert gw.case(forged.case_ref).linked_case_id is None


def test_a_forged_declaration_sent_first_is_never_offered_to_the_genuine_declarant(gw: Gateway) -> None:
    # An outside attacker: an unsigned declaration in the RSSI's name, then the genuine signed one:
    # « DOUBLON POSSIBLE … (même déclarant authentifié) », and the forged case's reference in the
    # genuine declarant's acknowledgement.
    forged = gw.feed(_without_finess("Déclaration d'incident : faux, cliquez ici.\n", signed=False))
    genuine = gw.feed(_without_finess("Déclaration d'incident : rançongiciel, serveurs chiffrés.\n"))
    assert forged.case_ref and genuine.case_ref
    assert gw.case(genuine.case_ref).linked_case_id is None
    assert forged.case_ref not in casemail.text_of(gw.last("accuse_reception", to="dsi@chu.test").raw)


def test_an_agents_own_forwards_are_no_structure_for_duplicates(gw: Gateway) -> None:
    # An outside attacker: an agent forwarding two unrelated phishing mails, each case's declarant
    # the agent: the second was « DOUBLON POSSIBLE » of the first.
    def forward(n: int) -> Result:
        body = (f"Déclaration d'incident : hameçonnage reçu ce matin (numéro {n}), le message ci-dessous.\n\n"
                f"De : x{n}@phish.test\nEnvoyé : lundi\nObjet : Facture {n}\n\n"
                "Veuillez régler la facture jointe avant ce soir.\n")
        return gw.feed(casemail.staff_mail(body, subject=f"TR: Facture {n}"))
    first, second = forward(1), forward(2)
    assert first.case_ref and second.case_ref
    assert gw.case(first.case_ref).declarant == gw.case(second.case_ref).declarant == "agent@ars.test"
    assert gw.case(second.case_ref).linked_case_id is None


def _mail(sender: str, subject: str, message_id: str, to: str = "ssi-ara@ars.test") -> EmailMessage:
    """A message's headers, its content to set by the caller."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = casemail.DATE
    msg["Message-ID"] = message_id
    return msg


def _forward_as_attachment(original: bytes, cover: str) -> bytes:
    """An agent's forward of ``original`` as an attachment (message/rfc822), DKIM-signed by the agency."""
    outer = _mail("agent@ars.test", "TR: Déclaration d'incident", f"<fwd-{abs(hash(cover)) % 10**8}@ars.test>")
    outer.set_content(cover)
    outer.add_attachment(email.message_from_bytes(original, policy=SMTP))
    return casemail.sign(outer.as_bytes(policy=SMTP))


@pytest.mark.parametrize("cover", ["#qualifier grave\n\nReçu dans ma boîte, pour suite.\n",
                                   "Reçu dans ma boîte, pour suite.\n"])
def test_a_forward_of_a_declaration_received_before_joins_its_case(gw: Gateway, cover: str) -> None:
    # An outside attacker: the establishment wrote to the SSI address and to an agent, who
    # forwarded it: a second case, a second acknowledgement with a new reference to the
    # establishment, and the agent's commands on the copy.
    original = casemail.sign(casemail.declaration(51), casemail.establishment_key())
    first = gw.feed(original)
    assert first.case_ref
    forwarded = gw.feed(_forward_as_attachment(original, cover))
    assert forwarded.status == "processed" and forwarded.case_ref == first.case_ref, forwarded
    assert len(gw.outbound("accuse_reception")) == 1
    receipt = gw.receipt_text()
    assert f"avait déjà été reçue directement de l'établissement : dossier {first.case_ref}" in receipt, receipt
    assert (gw.case(first.case_ref).severity == "GRAVE") == cover.startswith("#qualifier")


def test_an_update_naming_no_incident_type_lists_every_open_case_of_its_structure(gw: Gateway) -> None:
    # An outside tester: « Point de situation » (no reference, no type) was offered for a merge
    # with the structure's oldest case, a phishing about to be cancelled, not its ransomware; the
    # declarant's acknowledgement named that wrong case.
    ransomware = gw.declare(61)
    phishing = gw.feed(casemail.message(
        sender="dsi@chu.test", to="ssi-ara@ars.test", subject="Déclaration d'incident", message_id="<r61@chu.test>",
        body="Numéro FINESS : 690781810\nType d'incident : hameçonnage\nGravité : grave\nCourriel piégé.\n"))
    assert phishing.case_ref
    update = gw.feed(casemail.message(
        sender="dsi@chu.test", to="ssi-ara@ars.test", subject="Déclaration d'incident : point de situation",
        message_id="<u61@chu.test>", body="Numéro FINESS : 690781810\nRestauration du DPI à 60 %.\n"))
    assert update.case_ref
    text = casemail.text_of(gw.notification(update.case_ref, "agent@ars.test").raw)
    assert "DOUBLON POSSIBLE : 2 dossiers ouverts pour ce FINESS" in text, text
    assert ransomware in text and phishing.case_ref in text


@pytest.mark.parametrize("first_sender", ["unsigned", "stranger"])
def test_a_message_id_alone_never_makes_a_genuine_declaration_join_another_case(gw: Gateway, first_sender: str) -> None:
    # An outside attacker: a mail sent first under the genuine declaration's Message-ID (unsigned
    # in the declarant's name, or signed by the attacker's own domain) swallowed the genuine
    # declaration an agent then forwarded, and the agent's #repondre went to the attacker.
    genuine = casemail.sign(casemail.declaration(52), casemail.establishment_key())
    if first_sender == "unsigned":
        early = casemail.declaration(52).replace(b"incident num\xc3\xa9ro 52", b"exercice, merci de clore")
    else:
        early = casemail.message(sender="x@evil.test", to="ssi-ara@ars.test", subject="Déclaration d'incident",
                                 body="Type d'incident : rançongiciel\n", message_id="<decl-52@chu.test>")
    squatter = gw.feed(early)
    assert squatter.case_ref
    forwarded = gw.feed(_forward_as_attachment(genuine, "#repondre Bonjour, rappelez-nous.\n"))
    assert forwarded.case_ref and forwarded.case_ref != squatter.case_ref, forwarded
    assert gw.case(forwarded.case_ref).declarant == "dsi@chu.test"
    assert "x@evil.test" not in {r.recipient for r in gw.outbound("reponse")}


def test_a_forged_copy_forwarded_by_an_agent_never_joins_the_genuine_case(gw: Gateway) -> None:
    # An outside attacker: an unsigned copy of the genuine declaration, its Message-ID and From
    # kept and its words changed, forwarded by an agent as an attachment with « #clore … »: it
    # joined the genuine case, the receipt said « déjà reçue directement », the case was closed
    # and the hospital told.
    genuine = casemail.sign(casemail.declaration(53), casemail.establishment_key())
    first = gw.feed(genuine)
    assert first.case_ref
    forged = casemail.declaration(53).replace(b"incident num\xc3\xa9ro 53", b"fausse alerte, \xc3\xa9crivez \xc3\xa0 "
                                              b"support@evil.test")
    forwarded = gw.feed(_forward_as_attachment(forged, "#clore fausse alerte selon le CHU\n"))
    assert forwarded.case_ref != first.case_ref, forwarded
    assert gw.case(first.case_ref).status != "CLOS"
    assert "avait déjà été reçue directement" not in gw.receipt_text()
    # The genuine one, forwarded, still joins its case (the same words, re-wrapped by the client).
    rewrapped = genuine.replace(b"Serveurs chiffr\xc3\xa9s depuis ce matin,",
                                b"Serveurs chiffr\xc3\xa9s depuis\r\nce  matin,")
    again = gw.feed(_forward_as_attachment(rewrapped, "Reçu dans ma boîte.\n"))
    assert again.case_ref == first.case_ref, again


def test_a_reply_to_added_to_a_signed_declaration_is_pointed_out_to_staff(gw: Gateway) -> None:
    # An outside attacker: a genuinely signed declaration with a Reply-To added in transit (not
    # covered by its signature) was notified « authentifié par DKIM », the original attached: an
    # agent answering that attachment wrote to the attacker. The declarant stays the signer.
    from tests.support.dkim import dkimpy_sign

    raw = casemail.declaration(54).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    signed = dkimpy_sign(raw, casemail.establishment_key(), headers=("from", "to", "subject", "date")) + raw
    result = gw.feed(b"Reply-To: support@evil.test\r\n" + signed)
    assert result.case_ref, result
    assert gw.case(result.case_ref).declarant == "dsi@chu.test"
    text = casemail.text_of(gw.notification(result.case_ref, "agent@ars.test").raw)
    assert "Expéditeur : dsi@chu.test (authentifié par DKIM)" in text, text
    assert "ATTENTION : l'adresse de réponse (Reply-To) « support@evil" in text, text
    # Signed with the mail, it is the declarant's own choice: nothing to point out.
    covered = dkimpy_sign(b"Reply-To: secretariat@chu.test\r\n" + raw.replace(b"decl-54@", b"decl-55@"),
                          casemail.establishment_key(), headers=("from", "to", "subject", "date", "reply-to"))
    again = gw.feed(covered + b"Reply-To: secretariat@chu.test\r\n" + raw.replace(b"decl-54@", b"decl-55@"))
    assert again.case_ref, again
    assert "ATTENTION : l'adresse de réponse" not in casemail.text_of(
        gw.notification(again.case_ref, "agent@ars.test").raw)


def test_the_notification_names_the_files_of_the_original(gw: Gateway) -> None:
    # An outside tester (an RSSI): a declaration made of a PDF alone was notified with every field
    # « non précisé » and « Le message d'origine est joint », no word of the file that holds it.
    outer = _mail("dsi@chu.test", "Déclaration d'incident de sécurité", "<pdf-56@chu.test>")
    outer.set_content("Bonjour,\n\nVeuillez trouver ci-joint notre déclaration d'incident.\n\nCordialement,\n")
    outer.add_attachment(b"%PDF-1.4\n%\xe2\xe3\n1 0 obj\n", maintype="application", subtype="pdf",
                         filename="Declaration_incident_SSI.pdf")
    result = gw.feed(outer.as_bytes(policy=SMTP))
    assert result.case_ref, result
    text = casemail.text_of(gw.notification(result.case_ref, "agent@ars.test").raw)
    assert ("Le message d'origine est joint. Il contient 1 pièce jointe : « Declaration_incident_SSI.pdf »."
            in text), text


def test_mail_to_a_declarant_an_agent_transmitted_answers_the_declarants_own_mail(gw: Gateway) -> None:
    # An outside tester (an agent): after a forward as an attachment, the acknowledgement and the
    # #repondre reached the hospital unthreaded, though its own Message-ID was in the attachment.
    original = casemail.sign(casemail.declaration(57), casemail.establishment_key())
    result = gw.feed(_forward_as_attachment(original, "Reçu dans ma boîte, pour suite.\n"))
    assert result.case_ref, result
    ack = casemail.parse(gw.last("accuse_reception", "dsi@chu.test").raw)
    assert ack["In-Reply-To"] == "<decl-57@chu.test>" and ack["References"] == "<decl-57@chu.test>"
    gw.command(result.case_ref, "#repondre Merci, nous revenons vers vous.\n")
    answer = casemail.parse(gw.last("reponse", "dsi@chu.test").raw)
    assert answer["In-Reply-To"] == "<decl-57@chu.test>"
    assert "fwd-" not in str(answer["References"])  # never the colleague's forward


def test_an_inline_forward_of_a_declaration_received_before_joins_its_case(gw: Gateway) -> None:
    # An outside tester (an agent): an Outlook inline « TR: » of a declaration the box already had
    # opened a second case and sent the hospital a second acknowledgement with a new reference.
    original = casemail.sign(casemail.declaration(58), casemail.establishment_key())
    first = gw.feed(original)
    assert first.case_ref
    text = casemail.text_of(original)
    forward = ("#qualifier grave\n\nReçu dans ma boîte, pour suite.\n\n________________________________\n"
               "De : dsi@chu.test <dsi@chu.test>\nEnvoyé : lundi 7 décembre 2026 09:00\nÀ : agent@ars.test\n"
               "Objet : Déclaration d'incident 58\n\n" + text)
    forwarded = gw.feed(casemail.staff_mail(forward, subject="TR: Déclaration d'incident 58"))
    assert forwarded.case_ref == first.case_ref, forwarded
    assert len(gw.outbound("accuse_reception")) == 1
    assert gw.case(first.case_ref).severity == "GRAVE"
    # Other words from the same declarant: a declaration of its own, as before.
    changed = forward.replace("incident numéro 58", "incident numéro 59, un autre serveur")
    other = gw.feed(casemail.staff_mail(changed, subject="TR: Déclaration d'incident 59"))
    assert other.case_ref and other.case_ref != first.case_ref


@pytest.mark.parametrize("change", ["html", "reply_to", "file"])
def test_a_copy_that_reads_otherwise_never_joins_the_genuine_case(gw: Gateway, change: str) -> None:
    # An outside attacker: the genuine plain text kept, under an HTML alternative saying « fausse
    # alerte, écrivez à … » (what Outlook shows), or with a Reply-To and a PDF added: forwarded by
    # an agent, each joined the genuine case as « déjà reçue directement ».
    genuine = casemail.declaration(60)
    first = gw.feed(casemail.sign(genuine, casemail.establishment_key()))
    assert first.case_ref
    original = email.message_from_bytes(genuine, policy=SMTP)
    forged = EmailMessage()
    for name in ("From", "To", "Subject", "Date", "Message-ID"):
        forged[name] = original[name]
    forged.set_content(casemail.text_of(genuine))
    if change == "html":
        forged.add_alternative("<p>Fausse alerte, écrivez à support@evil.test</p>", subtype="html")
    elif change == "reply_to":
        forged["Reply-To"] = "support@evil.test"
    else:
        forged.add_attachment(b"%PDF-1.4\n", maintype="application", subtype="pdf", filename="procedure.pdf")
    forwarded = gw.feed(_forward_as_attachment(forged.as_bytes(policy=SMTP), "Pour suite.\n"))
    assert forwarded.case_ref and forwarded.case_ref != first.case_ref, forwarded


def test_an_unsigned_reply_to_of_several_addresses_is_pointed_out_too(gw: Gateway) -> None:
    # An outside attacker: « Reply-To: rssi@chu…, rssi-chu@evil… » added in transit gave no warning.
    from tests.support.dkim import dkimpy_sign

    raw = casemail.declaration(61).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    signed = dkimpy_sign(raw, casemail.establishment_key(), headers=("from", "to", "subject", "date")) + raw
    result = gw.feed(b"Reply-To: dsi@chu.test, support@evil.test\r\n" + signed)
    assert result.case_ref, result
    text = casemail.text_of(gw.notification(result.case_ref, "agent@ars.test").raw)
    assert "ATTENTION : l'adresse de réponse (Reply-To) « support@evil" in text, text


def test_a_file_name_written_as_an_encoded_word_is_decoded() -> None:
    # An outside tester: Outlook and Gmail put an RFC 2047 word inside the quoted name; staff read
    # « =?utf-8?q?…?= ».
    raw = (b"From: a@b.test\r\nTo: ssi-ara@ars.test\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nVoir.\r\n"
           b"--b\r\nContent-Type: application/pdf\r\n"
           b"Content-Disposition: attachment; filename=\"=?utf-8?q?D=C3=A9claration_SSI.pdf?=\"\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b--\r\n")
    from mailgateway.mail.parse import parse_message

    assert parse_message(raw).attachment_names == ["Déclaration SSI.pdf"]


@pytest.mark.parametrize("change", ["link", "nested", "nameless_file", "calendar", "subject", "display_name"])
def test_a_copy_that_differs_anywhere_a_reader_sees_never_joins(gw: Gateway, change: str) -> None:
    # An outside attacker, against the text-and-names comparison: a link's target changed, a nested
    # message, a nameless .exe, a calendar part, the Subject or the From's display name changed:
    # each forged copy joined the genuine case « déjà reçue directement ».
    html = '<p>Restauration : <a href="https://chu.test/restore">procédure</a></p>'
    genuine = _mail("DSI CHU <dsi@chu.test>", "Déclaration d'incident", f"<shape-{change}@chu.test>")
    genuine.set_content("Numéro FINESS : 690781810\nType d'incident : rançongiciel\nGravité : grave\n")
    genuine.add_alternative(html, subtype="html")
    first = gw.feed(casemail.sign(genuine.as_bytes(policy=SMTP), casemail.establishment_key()))
    assert first.case_ref
    forged = email.message_from_bytes(genuine.as_bytes(policy=SMTP), policy=SMTP)
    assert isinstance(forged, EmailMessage)
    if change == "link":
        forged = EmailMessage()
        for name in ("From", "To", "Subject", "Date", "Message-ID"):
            forged[name] = genuine[name]
        forged.set_content(genuine.get_body(("plain",)).get_content())  # type: ignore[union-attr]
        forged.add_alternative(html.replace("chu.test/restore", "evil.test/restore.exe"), subtype="html")
    elif change == "nested":
        forged.make_mixed()
        nested = b"Subject: Consignes\r\n\r\nEcrivez a support@evil.test\r\n"
        forged.attach(email.message_from_bytes(nested, policy=SMTP))
    elif change == "nameless_file":
        forged.add_attachment(b"MZ\x90\x00", maintype="application", subtype="octet-stream")
    elif change == "calendar":
        forged.make_mixed()
        part = EmailMessage()
        part.set_content("BEGIN:VCALENDAR\nSUMMARY:Rappel support\nEND:VCALENDAR\n", subtype="calendar")
        forged.attach(part)
    elif change == "subject":
        forged.replace_header("Subject", "FAUSSE ALERTE - ne pas traiter")
    else:
        forged.replace_header("From", "ARS - Cellule SSI <dsi@chu.test>")
    forwarded = gw.feed(_forward_as_attachment(forged.as_bytes(policy=SMTP), "Pour suite.\n"))
    assert forwarded.case_ref and forwarded.case_ref != first.case_ref, forwarded


def test_what_the_writer_says_beside_the_labelled_fields_is_the_summary() -> None:
    """An outside tester (an agent): « Les urgences fonctionnent en mode dégradé papier » beside a
    labelled form was in no résumé — the staff notification and the ACSS transmission showed the
    fields alone (``summary: null``). Neither the labels, their values, nor the card are in it."""
    facts = _analysed("Bonjour,\n\nNous vous déclarons un incident survenu cette nuit.\n"
                      "Numéro FINESS : 380780015\nType d'incident : rançongiciel\nGravité : grave\n\n"
                      "Une quarantaine de serveurs sont chiffrés. Les urgences fonctionnent en mode dégradé papier.\n\n"
                      "Cordialement,\nSébastien Rochas\nRSSI\n")
    decl = facts.declaration
    assert decl is not None and decl.summary == (
        "Nous vous déclarons un incident survenu cette nuit. Une quarantaine de serveurs sont chiffrés. "
        "Les urgences fonctionnent en mode dégradé papier.")
    described = _analysed("Numéro FINESS : 380780015\nType d'incident : rançongiciel\n"
                          "Description : postes chiffrés au bloc.\n\nAutre chose encore.\n")
    assert described.declaration is not None and described.declaration.summary == "postes chiffrés au bloc."


@pytest.mark.parametrize("sentence", ["Joignable au 06 98 76 54 32.",
                                      "Vous pouvez me rappeler au 06 98 76 54 32 si besoin.",
                                      "Mon portable : 06.98.76.54.32"])
def test_the_declarants_call_back_number_is_no_indicator(sentence: str) -> None:
    """An outside tester (an RSSI): « Joignable au 06… » was listed as an indicator of compromise,
    exportable and sent to the ACSS; the fraudster's number in the same mail still is one."""
    facts = _analysed("Bonjour,\nUn faux technicien nous a appelés depuis le 01 44 55 66 77 pour obtenir des accès.\n"
                      f"{sentence}\nNuméro FINESS : 440000289\n")
    phones = [i.value for i in facts.indicators if i.type == "phone"]
    assert phones == ["+33144556677"], phones


@pytest.mark.parametrize(("written", "name"), [
    ("Établissement : Clinique du Val de Saône – FINESS 690001235", "Clinique du Val de Saône"),
    ("Nom de la structure : Hôpital Saint-Jean (n° FINESS 690001235)", "Hôpital Saint-Jean"),
    ("Nom de la structure : Centre Nino", "Centre Nino"),
])
def test_the_finess_written_after_the_structures_name_is_not_part_of_it(written: str, name: str) -> None:
    """An outside tester (an agent): « Clinique du Val de Saône – FINESS 690001235 » titled the
    case, the notification's subject and `cases list`."""
    facts = _analysed(f"Bonjour,\n{written}\nType d'incident : rançongiciel\nGravité : grave\n")
    assert facts.declaration is not None and facts.declaration.structure == name


def test_the_acknowledgement_restates_what_was_understood_and_names_what_was_not(gw: Gateway) -> None:
    """An outside tester (an RSSI): the acknowledgement never said whether « grave », the detection
    date and the impacts had been understood, nor that nothing had been read of a form attached."""
    declare(gw, "Numéro FINESS : 690781810\nType d'incident : rançongiciel\nGravité : grave\n"
                "Date de détection : 26/11/2026 à 23h15\nImpact sur les soins : oui\n")
    text = casemail.text_of(gw.last("accuse_reception", "dsi@ch-exemple.test").raw)
    assert "Gravité déclarée : grave\r\nDétection : 26/11/2026 à 23:15\r\nImpacts : sécurité des soins" in text, text
    assert "pas pu identifier" not in text
    declare(gw, "Bonjour, nous vous signalons un incident de sécurité depuis ce matin, cf. le document joint.\n",
            sender="rssi@clinique.test")
    text = casemail.text_of(gw.last("accuse_reception", "rssi@clinique.test").raw)
    assert ("Éléments que nous n'avons pas pu identifier automatiquement dans votre message : type "
            "d'incident, gravité, numéro FINESS de l'établissement.") in text.replace("\r\n", " "), text


def test_a_new_incident_written_in_reply_to_a_case_opens_its_own(gw: Gateway) -> None:
    """An outside tester (an RSSI): a ransomware at another site, written in reply to the closed
    phishing case of the first (« c'est un NOUVEL incident, sans lien avec le précédent »), reopened
    that case under its old title — no case of its own, no acknowledgement."""
    ref = declare(gw, "Numéro FINESS : 690781810\nType d'incident : hameçonnage\nGravité : non grave\n",
                  sender="dsi@chu.test")
    ack = gw.last("accuse_reception", "dsi@chu.test")
    # On the open case, news is of that incident whatever its words (an outside tester: seven
    # follow-ups opened seven cases).
    for n, body in enumerate((
            "Nouvel élément : le rançongiciel s'est étendu à deux postes.",
            "Point de situation : aucun autre incident n'a été constaté, le rançongiciel n'a pas progressé.",
            "Il ne s'agit pas d'un nouvel incident : 5 postes supplémentaires chiffrés (même souche).",
            "Précision : la panne du standard est sans lien avec le rançongiciel.",
            "Afin d'éviter tout nouvel incident, nous avons coupé les accès VPN.",
            "En cas de nouvel incident, nous vous recontacterons.",
            "C'est un nouvel incident : un rançongiciel sur le serveur de la pharmacie.")):
        more = gw.feed(casemail.message(
            sender="dsi@chu.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}] Accusé de réception",
            in_reply_to=ack.message_id, message_id=f"<more-{n}@chu.test>", body=f"Bonjour,\n{body}\n"))
        assert more.case_ref == ref, (body, more)
    gw.command(ref, "#clore phishing traité\n")
    assert gw.case(ref).status == "CLOS"
    result = gw.feed(casemail.message(
        sender="dsi@chu.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}] Accusé de réception",
        in_reply_to=ack.message_id, message_id="<new-1@chu.test>",
        body="Bonjour,\nAttention, c'est un NOUVEL incident, sans lien avec le précédent : un rançongiciel a "
             "chiffré le serveur du laboratoire cette nuit.\nNuméro FINESS : 690781810\nGravité : grave\n"))
    assert result.case_ref and result.case_ref != ref, result
    new = gw.case(result.case_ref)
    assert (new.incident_type, new.severity) == ("RANCONGICIEL", "NON_QUALIFIE") and new.declarant == "dsi@chu.test"
    assert gw.last("accuse_reception", "dsi@chu.test").case_id == new.id
    assert gw.case(ref).status == "CLOS"  # the old case was not reopened by it
    assert any(e.type == "dossier_lie" for e in gw.events(result.case_ref))


@pytest.mark.parametrize(("sentence", "et", "ej"), [
    ("FINESS géographique : 350030029 (juridique : 350005179)", "350030029", "350005179"),
    ("Notre FINESS juridique est le 350005179, le site touché a le FINESS 350030029.", "350030029", "350005179"),
    ("FINESS EJ 350005179, FINESS ET 350030029", "350030029", "350005179"),
])
def test_the_words_before_a_finess_in_prose_say_which_it_is(sentence: str, et: str, ej: str) -> None:
    """An outside tester (an RSSI): the legal entity's number (« juridique », « EJ ») written in a
    sentence was not kept as such."""
    facts = _analysed(f"Bonjour,\nNous vous signalons un rançongiciel. {sentence}\n")
    decl = facts.declaration
    assert decl is not None and (decl.finess, decl.finess_ej) == (et, ej)


@pytest.mark.parametrize(("text", "kind"), [
    # An outside tester (an RSSI): a phishing whose account sent 300 mails, « on ne peut pas exclure
    # une fuite de données », was told « fuite de données ».
    ("Une secrétaire a cliqué sur un lien de phishing, le compte a envoyé 300 mails. Nous n'avons pas "
     "d'indication d'une exfiltration, mais on ne peut pas exclure une fuite de données.", "HAMECONNAGE"),
    ("Un rançongiciel a chiffré les serveurs ; une éventuelle fuite de données est en cours d'analyse.",
     "RANCONGICIEL"),
    ("Nous craignons une fuite de données.", "FUITE_DONNEES"),  # a fear alone still names the type
    ("Pas de trace d'une exfiltration ; un rançongiciel a chiffré deux postes.", "RANCONGICIEL"),
])
def test_a_feared_incident_type_gives_way_to_a_stated_one(text: str, kind: str) -> None:
    facts = _analysed(f"Bonjour,\n{text}\nNuméro FINESS : 440000289\n", subject="Incident")
    assert facts.declaration is not None and facts.declaration.incident_type == kind


@pytest.mark.parametrize(("text", "impacts"), [
    # An outside tester (an RSSI): each read as no impact.
    ("Les 2 accélérateurs sont à l'arrêt, 45 patients à reprogrammer.", ["SOINS", "FONCTIONNEMENT"]),
    ("Traitements retardés de 2 h.", ["SOINS"]),
    ("3 Go de dossiers médicaux exfiltrés vers un stockage externe.", ["DONNEES"]),
    ("Le LIS n'est pas à l'arrêt.", []),
])
def test_impacts_said_plainly_are_impacts(text: str, impacts: list[str]) -> None:
    facts = _analysed(f"Bonjour,\nUn rançongiciel a chiffré un serveur. {text}\nNuméro FINESS : 440000289\n",
                      subject="Incident")
    assert facts.declaration is not None and list(facts.declaration.impacts) == impacts


def test_a_forwarded_declarations_summary_is_the_declarants_words_not_the_cover_note() -> None:
    """An outside tester (an agent): for a declaration a colleague forwarded with commands above
    it, the résumé sent to the ACSS was the colleague's note (« #assigner moi … Marc Lefèvre »)."""
    from mailgateway.mail.analyse import analyse
    from mailgateway.mail.context import AnalysisContext
    body = ("#assigner moi\n#qualifier significatif\nBonjour à tous, déclaration reçue sur ma boîte, je la "
            "transmets.\n\nMarc Lefèvre\nChargé de mission SSI\n\nDe : Odile Garnier <direction@ehpad.test>\n"
            "Envoyé : lundi 7 décembre 2026 16:02\nÀ : Lefèvre, Marc <marc.lefevre@ars.test>\n"
            "Objet : Signalement hameçonnage\n\nBonjour Monsieur Lefèvre,\nLa comptable a saisi ses identifiants "
            "sur un faux site. Un virement de 18 500 € a été émis.\nFINESS : 010007896\nType : hameçonnage\n"
            "Date de détection : 08/12/2026 09h00\nBien à vous,\nOdile Garnier\n")
    msg = EmailMessage(policy=SMTP)
    msg["From"], msg["To"] = "marc.lefevre@ars.test", "ssi-ara@ars.test"
    msg["Subject"], msg["Message-ID"] = "TR: Signalement hameçonnage", "<fwd@ars.test>"
    msg["Date"] = "Mon, 07 Dec 2026 17:00:00 +0100"
    msg.set_content(body)
    facts = analyse(msg.as_bytes(), AnalysisContext(region_addresses={"ssi-ara@ars.test": "ARA"}))
    assert facts.declaration is not None
    assert facts.declaration.summary == ("La comptable a saisi ses identifiants sur un faux site. "
                                         "Un virement de 18 500 € a été émis."), facts.declaration.summary


def test_a_severity_written_in_a_sentence_and_the_forms_own_address_are_read_as_such() -> None:
    """An outside tester (an RSSI): « …, gravité : grave, … » in a sentence was never read (the
    acknowledgement then said it had not been found); the form's « Courriel du déclarant » was
    listed as an indicator of compromise."""
    facts = _analysed("Bonjour,\nRançongiciel au laboratoire, gravité : grave, 40 postes chiffrés.\n"
                      "Numéro FINESS : 440000289\nType d'incident : rançongiciel\n"
                      "Courriel du déclarant : rssi.astreinte@chu-nantes.test\n")
    assert facts.declaration is not None and facts.declaration.severity == "GRAVE"
    assert [i.value for i in facts.indicators if i.type == "email"] == []


def test_the_writers_card_ends_no_summary_and_a_ransom_screen_is_a_ransomware() -> None:
    """An outside tester (an RSSI): « … Nathalie Perrin / DSI – CH Annecy » ended most résumés; a
    ransom screen described in words was typed « compromission du SI »."""
    from mailgateway.mail.analyse import analyse
    from mailgateway.mail.context import AnalysisContext
    msg = EmailMessage(policy=SMTP)
    msg["From"], msg["To"] = "Nathalie Perrin <nathalie.perrin@ch-annecy.test>", "ssi-ara@ars.test"
    msg["Subject"], msg["Message-ID"] = "Incident", "<card@ch-annecy.test>"
    msg["Date"] = "Mon, 07 Dec 2026 09:00:00 +0100"
    msg.set_content("Bonjour,\nLes postes de l'accueil affichent un message nous demandant de payer pour récupérer "
                    "nos fichiers.\n\nNathalie Perrin\nDSI – CH Annecy Genevois\n")
    facts = analyse(msg.as_bytes(), AnalysisContext(region_addresses={"ssi-ara@ars.test": "ARA"}))
    decl = facts.declaration
    assert decl is not None and decl.incident_type == "RANCONGICIEL"
    assert decl.summary == ("Les postes de l'accueil affichent un message nous demandant de payer pour récupérer "
                            "nos fichiers."), decl.summary


def test_the_writers_name_alone_ends_no_summary() -> None:
    """An outside tester (an RSSI): « … Nathalie Perrin » ended most résumés."""
    from mailgateway.mail.analyse import analyse
    from mailgateway.mail.context import AnalysisContext
    msg = EmailMessage(policy=SMTP)
    msg["From"], msg["To"] = "Nathalie Perrin <nathalie.perrin@ch-annecy.test>", "ssi-ara@ars.test"
    msg["Subject"], msg["Message-ID"] = "Incident", "<name@ch-annecy.test>"
    msg["Date"] = "Mon, 07 Dec 2026 09:00:00 +0100"
    msg.set_content("Bonjour,\nUn rançongiciel a chiffré le serveur de la pharmacie.\n\nNathalie Perrin\n")
    decl = analyse(msg.as_bytes(), AnalysisContext(region_addresses={"ssi-ara@ars.test": "ARA"})).declaration
    assert decl is not None and decl.summary == "Un rançongiciel a chiffré le serveur de la pharmacie."
