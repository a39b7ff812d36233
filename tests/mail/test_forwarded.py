"""Forwarded declarations, end to end by mail (issue 16, "Understanding").

The acknowledgement goes to whoever wrote to the agency (From; Reply-To when From is a robot;
the portal's « Courriel du déclarant »), never to the author of the forwarded message, and both
addresses are on the case. Observed attack, before: a phishing mail forwarded as message/rfc822
got the signed acknowledgement sent to the phisher's address.

Client formats as they come: Thunderbird (format=flowed, « -------- Message transféré -------- »,
tab-separated header table), Outlook (HTML only, windows-1252, quoted-printable, « De : / Envoyé :
/ À : / Objet : » block), Apple Mail (« Début du message réexpédié : »), Gmail, message/rfc822
attachments, and a cover note forwarding a forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP

import pytest

from mailgateway.mail.analyse import analyse
from mailgateway.mail.context import AnalysisContext
from tests.support import casemail
from tests.support.casegateway import Gateway, make_gateway


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def acknowledged(gw: Gateway) -> list[str]:
    return [r.recipient for r in gw.outbound("accuse_reception")]


def everyone_written_to(gw: Gateway) -> set[str]:
    return {r.recipient for r in gw.outbound()}


def forwarded_events(gw: Gateway, ref: str) -> list[dict[str, object]]:
    return [dict(e.data or {}) for e in gw.events(ref) if e.type == "declaration_transferee"]


PHISHING = b"""From: "Support Microsoft 365" <support@micros0ft-secure.test>
Reply-To: collecte@phish.test
To: secretariat@chu.test
Subject: =?utf-8?q?Votre_bo=C3=AEte_mail_va_=C3=AAtre_d=C3=A9sactiv=C3=A9e?=
Date: Fri, 27 Nov 2026 07:12:00 +0100
Message-ID: <phish-1@micros0ft-secure.test>
MIME-Version: 1.0
Content-Type: text/html; charset=utf-8

<p>Votre compte sera suspendu sous 24 heures. Confirmez votre mot de passe :
<a href="https://login-micros0ft.test/verify">V&eacute;rifier mon compte</a></p>
"""


def forward_as_attachment(outer_from: str, cover: str, inner: bytes, subject: str = "TR: hameçonnage reçu",
                          signed: bool = True) -> bytes:
    outer = EmailMessage(policy=SMTP)
    outer["From"] = outer_from
    outer["To"] = "ssi-ara@ars.test"
    outer["Subject"] = subject
    outer["Date"] = casemail.DATE
    outer["Message-ID"] = "<fwd-1@chu.test>"
    outer.set_content(cover)
    outer.add_attachment(inner.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), maintype="message", subtype="rfc822",
                         disposition="attachment", filename="message.eml")
    raw = outer.as_bytes()
    return casemail.sign(raw, casemail.establishment_key()) if signed else raw


def test_a_phishing_mail_forwarded_as_an_attachment_is_never_answered_to_the_phisher(gw: Gateway) -> None:
    raw = forward_as_attachment(
        "Secrétariat de direction <secretariat@chu.test>",
        "Bonjour,\n\nNous avons reçu ce courriel d'hameçonnage ce matin, une collègue a cliqué sur le lien.\n"
        "Je vous le transfère.\n\nCordialement",
        PHISHING)
    result = gw.feed(raw)
    assert result.kind == "declaration" and result.case_ref, result
    assert acknowledged(gw) == ["secretariat@chu.test"]
    assert not everyone_written_to(gw) & {"support@micros0ft-secure.test", "collecte@phish.test"}
    case = gw.case(result.case_ref)
    assert case.declarant == "secretariat@chu.test"
    assert case.fields["declaration"]["forwarded_author"] == "support@micros0ft-secure.test"
    assert case.incident_type == "HAMECONNAGE"
    assert forwarded_events(gw, result.case_ref) == [
        {"declarant": "secretariat@chu.test", "auteur_du_message_transfere": "support@micros0ft-secure.test"}]


THUNDERBIRD = """From: RSSI CHU <rssi@chu.test>
To: ssi-ara@ars.test
Subject: =?UTF-8?Q?Fwd=3a_Incident_ran=c3=a7ongiciel?=
Date: Fri, 27 Nov 2026 10:00:00 +0100
Message-ID: <tb-1@chu.test>
User-Agent: Mozilla Thunderbird
MIME-Version: 1.0
Content-Type: text/plain; charset=UTF-8; format=flowed
Content-Transfer-Encoding: 8bit

Bonjour,

Je vous transf\u00e8re le signalement re\u00e7u de notre laboratoire ce matin, pour~
d\u00e9claration.

Cordialement,
Le RSSI

-------- Message transf\u00e9r\u00e9 --------
Sujet : \tIncident ran\u00e7ongiciel
Date : \tFri, 27 Nov 2026 08:45:12 +0100
De : \tDr Martin <biologiste@labo-exemple.test>
Pour : \trssi@chu.test

Bonjour,

Nos serveurs sont chiffr\u00e9s depuis ce matin 8h, une note de ran\u00e7on est~
affich\u00e9e sur tous les postes du laboratoire. Num\u00e9ro FINESS : 690781810

Dr Martin
"""


def test_thunderbird_flowed_inline_forward_acknowledges_the_forwarder(gw: Gateway) -> None:
    # "~": the trailing space of a format=flowed soft line break (RFC 3676 §4.2).
    raw = casemail.sign(THUNDERBIRD.replace("~", " ").replace("\n", "\r\n").encode("utf-8"),
                        casemail.establishment_key())
    result = gw.feed(raw)
    assert result.kind == "declaration" and result.case_ref, result
    assert acknowledged(gw) == ["rssi@chu.test"]
    case = gw.case(result.case_ref)
    assert (case.finess, case.incident_type) == ("690781810", "RANCONGICIEL")
    assert case.fields["declaration"]["forwarded_author"] == "biologiste@labo-exemple.test"
    assert "biologiste@labo-exemple.test" not in everyone_written_to(gw)
    # Signed by its author: the acknowledgement quotes the subject, decoded.
    assert "Objet de votre message : Fwd: Incident rançongiciel" in casemail.text_of(gw.last("accuse_reception").raw)


OUTLOOK_HTML = """From: =?iso-8859-1?Q?H=E9l=E8ne_Durand?= <h.durand@chu.test>
To: "ssi-ara@ars.test" <ssi-ara@ars.test>
Subject: TR: Comptes de messagerie compromis
Date: Fri, 27 Nov 2026 10:00:00 +0100
Message-ID: <DB9PR01MB1234@EURPRD01.PROD.OUTLOOK.COM>
Thread-Topic: Comptes de messagerie compromis
Accept-Language: fr-FR
Content-Language: fr-FR
X-MS-Has-Attach:
MIME-Version: 1.0
Content-Type: text/html; charset="Windows-1252"
Content-Transfer-Encoding: quoted-printable

<html><head><meta http-equiv=3D"Content-Type" content=3D"text/html; charset=
=3DWindows-1252"></head><body>
<div><p class=3D"MsoNormal">Pour d=E9claration, cordialement.<o:p></o:p></p></div>
<div><p class=3D"MsoNormal">H=E9l=E8ne Durand<o:p></o:p></p></div>
<div style=3D"border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm">
<p class=3D"MsoNormal"><b>De&nbsp;:</b> Jean Petit &lt;jean.petit@ehpad-exemple.test&gt;<br>
<b>Envoy=E9&nbsp;:</b> vendredi 27 novembre 2026 09:41<br>
<b>=C0&nbsp;:</b> H=E9l=E8ne Durand &lt;h.durand@chu.test&gt;<br>
<b>Objet&nbsp;:</b> Attaque en cours<o:p></o:p></p></div>
<p class=3D"MsoNormal">Bonjour,<o:p></o:p></p>
<p class=3D"MsoNormal">Nous sommes victimes d=92une cyberattaque : les comptes de messagerie sont =
compromis et des courriels d=92hame=E7onnage partent de nos bo=EEtes.<o:p></o:p></p>
<p class=3D"MsoNormal">Jean Petit<o:p></o:p></p>
</body></html>
"""


def test_outlook_html_cp1252_forward_acknowledges_the_forwarder(gw: Gateway) -> None:
    result = gw.feed(OUTLOOK_HTML.replace("\n", "\r\n").encode("ascii"))
    assert result.kind == "declaration" and result.case_ref, result
    assert acknowledged(gw) == ["h.durand@chu.test"]
    case = gw.case(result.case_ref)
    assert case.fields["declaration"]["forwarded_author"] == "jean.petit@ehpad-exemple.test"
    assert case.incident_type in ("COMPROMISSION_COMPTE", "HAMECONNAGE")


APPLE_MAIL = """From: Claire Morel <dsi@chu.test>
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable
Mime-Version: 1.0 (Mac OS X Mail 16.0)
Subject: =?utf-8?Q?Fwd=3A_Fuite_de_donn=C3=A9es?=
Date: Fri, 27 Nov 2026 10:00:00 +0100
Message-Id: <A1B2C3D4-0000-4000-8000-000000000001@chu.test>
To: ssi-ara@ars.test
X-Mailer: Apple Mail (2.3774)

Pour information.

D=C3=A9but du message r=C3=A9exp=C3=A9di=C3=A9 :

De: Marc Leroy <marc.leroy@clinique-exemple.test>
Objet: Fuite de donn=C3=A9es
Date: 27 novembre 2026 =C3=A0 08:55:02 UTC+1
=C3=80: Claire Morel <dsi@chu.test>

Bonjour,

Nous avons constat=C3=A9 une exfiltration de donn=C3=A9es de sant=C3=A9 =
depuis notre serveur de fichiers.

Marc
"""


def test_apple_mail_forward_acknowledges_the_forwarder(gw: Gateway) -> None:
    result = gw.feed(APPLE_MAIL.replace("\n", "\r\n").encode("ascii"))
    assert result.kind == "declaration" and result.case_ref, result
    assert acknowledged(gw) == ["dsi@chu.test"]
    case = gw.case(result.case_ref)
    assert case.fields["declaration"]["forwarded_author"] == "marc.leroy@clinique-exemple.test"
    assert case.incident_type == "FUITE_DONNEES"


PORTAL = """From: Portail de signalement <ne-pas-repondre@signalement.social-sante.test>
To: ssi-ara@ars.test
Subject: =?utf-8?q?Nouvelle_d=C3=A9claration_d=27incident?=
Date: Fri, 27 Nov 2026 08:50:00 +0100
Message-ID: <portail-77@signalement.social-sante.test>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Une déclaration d'incident de sécurité des systèmes d'information a été déposée.

N° FINESS : 690781810
Raison sociale : Centre hospitalier Exemple
Déclarant : Marie Exemple, RSSI
Courriel du déclarant : rssi@clinique-portail.test
Date de détection : 27/11/2026 à 08h30
Type d'incident : Rançongiciel
Gravité ressentie : grave
"""


def test_a_cover_note_forwarding_a_forward_of_a_portal_notification(gw: Gateway) -> None:
    middle = EmailMessage(policy=SMTP)
    middle["From"] = "Directeur <directeur@chu.test>"
    middle["To"] = "dsi@chu.test"
    middle["Subject"] = "TR: Nouvelle déclaration d'incident"
    middle["Date"] = "Fri, 27 Nov 2026 09:10:00 +0100"
    middle.set_content("Pour suite à donner.")
    middle.add_attachment(PORTAL.replace("\n", "\r\n").encode("utf-8"), maintype="message", subtype="rfc822")
    raw = forward_as_attachment("DSI <dsi@chu.test>", "Voir le message ci-joint.", middle.as_bytes(),
                                subject="TR: TR: Nouvelle déclaration d'incident")
    result = gw.feed(raw)
    assert result.kind == "declaration" and result.case_ref, result
    case = gw.case(result.case_ref)
    assert (case.finess, case.incident_type) == ("690781810", "RANCONGICIEL")
    assert case.fields["declaration"]["severity"] == "GRAVE"  # « Gravité ressentie »
    # Who wrote to the agency, not the address named inside the forwarded notification.
    assert acknowledged(gw) == ["dsi@chu.test"]


def test_inline_forward_of_an_outlook_forward_is_found(gw: Gateway) -> None:
    body = ("Bonjour, ci-dessous pour déclaration.\n\n"
            "-------- Message transféré --------\nSujet : TR: incident\nDate : Fri, 27 Nov 2026 09:00\n"
            "De : Cadre de santé <cadre@chu.test>\nPour : dsi@chu.test\n\nA traiter svp.\n\n"
            "________________________________\nDe : Infirmier <ide@chu.test>\n"
            "Envoyé : vendredi 27 novembre 2026 08:30\n"
            "À : Cadre de santé\nObjet : incident\n\n"
            "Numéro FINESS : 690781810\nType d'incident : logiciel malveillant\nGravité : significatif\n"
            "Date de détection : 27/11/2026 à 08h00\n")
    result = gw.feed(casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject="TR: TR: incident",
                                      body=body))
    assert result.kind == "declaration" and result.case_ref, result
    case = gw.case(result.case_ref)
    assert (case.finess, case.incident_type) == ("690781810", "LOGICIEL_MALVEILLANT")
    assert case.fields["declaration"]["forwarded_author"] == "ide@chu.test"
    assert acknowledged(gw) == ["dsi@chu.test"]


def test_a_robot_sender_is_answered_at_its_reply_to(gw: Gateway) -> None:
    raw = forward_as_attachment("GLPI <noreply@glpi.chu.test>", "Ticket 4242 : hameçonnage signalé.", PHISHING,
                                signed=False)
    raw = raw.replace(b"From: GLPI", b"Reply-To: rssi@chu.test\r\nFrom: GLPI", 1)
    result = gw.feed(raw)
    assert result.kind == "declaration", result
    assert acknowledged(gw) == ["rssi@chu.test"]


def test_the_portal_notification_is_answered_at_its_declarant_without_sending_them_back_to_the_portal(
        gw: Gateway) -> None:
    result = gw.feed(PORTAL.replace("\n", "\r\n").encode("utf-8"))
    assert result.kind == "declaration", result
    assert acknowledged(gw) == ["rssi@clinique-portail.test"]
    text = casemail.text_of(gw.last("accuse_reception").raw)
    assert "par l'intermédiaire du portail de signalement" in text
    assert "doit aussi être faite sur le portail" not in text
    # A declaration sent straight to the agency still gets the reminder.
    gw.feed(casemail.declaration(2, finess="440000289"))
    assert "doit aussi être faite sur le portail" in casemail.text_of(gw.last("accuse_reception", "dsi@chu.test").raw)


def test_parse_json_shows_both_addresses(ctx: AnalysisContext) -> None:
    raw = forward_as_attachment("secretariat@chu.test", "Courriel d'hameçonnage reçu, je vous le transfère.",
                                PHISHING, signed=False).replace(b"ssi-ara@ars.test", b"ssi-ara@ars-sante.test")
    decl = analyse(raw, ctx).to_json()["declaration"]
    assert decl["declarant"] == "secretariat@chu.test"
    assert decl["forwarded_author"] == "support@micros0ft-secure.test"


DECLARED = ("Bonjour,\nNuméro FINESS : 690781810\nType d'incident : rançongiciel\nGravité : grave\n"
            "Date de détection : 27/11/2026 à 08h30\n")


@pytest.mark.parametrize("block", [
    "-------- Forwarded Message --------\nSubject: \tincident\nDate: \tFri, 27 Nov 2026 08:45:12 +0100\n"
    "From: \tAuteur <auteur@labo.test>\nTo: \tdsi@chu.test\n\n",  # Thunderbird, English
    "---------- Forwarded message ---------\nFrom: Auteur <auteur@labo.test>\nDate: Fri, Nov 27, 2026 at 8:45 AM\n"
    "Subject: incident\nTo: <dsi@chu.test>\n\n",  # Gmail
    "-----Original Message-----\nFrom: Auteur <auteur@labo.test>\nSent: Friday, November 27, 2026 8:45 AM\n"
    "To: DSI <dsi@chu.test>\nSubject: incident\n\n",  # Outlook, English
    "________________________________\nFrom: Auteur <auteur@labo.test>\nSent: Friday, November 27, 2026 8:45\n"
    "To: DSI\nSubject: incident\n\n",  # Outlook without a marker line
    "De : \"Auteur\" [mailto:auteur@labo.test]\nEnvoyé : vendredi 27 novembre 2026 08:45\nÀ : DSI\n"
    "Objet : incident\n\n",  # older Outlook
    "Begin forwarded message:\n\nFrom: Auteur <auteur@labo.test>\nSubject: incident\nDate: 27 November 2026\n"
    "To: dsi@chu.test\n\n",  # Apple Mail, English
], ids=["thunderbird-en", "gmail", "outlook-original", "outlook-bare", "outlook-mailto", "apple-en"])
def test_inline_forward_formats(ctx: AnalysisContext, block: str) -> None:
    raw = casemail.message(sender="dsi@chu.test", to="ssi-ara@ars-sante.test", subject="TR: incident",
                           body="Pour déclaration.\n\n" + block + DECLARED)
    facts = analyse(raw, ctx)
    assert facts.kind == "declaration" and facts.declaration is not None
    d = facts.declaration
    assert (d.declarant, d.forwarded_author) == ("dsi@chu.test", "auteur@labo.test")
    assert (d.finess, d.incident_type, d.severity) == ("690781810", "RANCONGICIEL", "GRAVE")


def test_a_portal_notification_from_an_ordinary_address_is_recognised_by_its_wording(gw: Gateway) -> None:
    """Its wording spares the declarant the reminder to declare on the portal; it does not choose
    who is acknowledged: from a person's address, « Courriel du déclarant : victime@… » with the
    words « portail de signalement » (in the text or a document attached) had the agency write to
    an address of the sender's choosing (an outside attacker). Nor does the portal's domain in a
    From nobody authenticated (the portal signs its mail)."""
    raw = PORTAL.replace("Portail de signalement <ne-pas-repondre@signalement.social-sante.test>",
                         "signalement@sante.test").replace(
        "a été déposée.", "a été déposée sur le portail de signalement des événements sanitaires.")
    gw.feed(raw.replace("\n", "\r\n").encode("utf-8"))
    assert gw.outbound("accuse_reception", "rssi@clinique-portail.test") == []
    text = casemail.text_of(gw.last("accuse_reception", "signalement@sante.test").raw)
    assert "doit aussi être faite sur le portail" not in text
    portal = raw.replace("From: signalement@sante.test", "From: signalement@signalement.social-sante.gouv.fr")
    gw.feed(portal.replace("Message-ID: <", "Message-ID: <p2-").replace("\n", "\r\n").encode("utf-8"))
    assert gw.outbound("accuse_reception", "rssi@clinique-portail.test") == []


FLOWED_FORM = """From: RSSI <rssi@chu.test>
To: ssi-ara@ars-sante.test
Subject: =?UTF-8?Q?D=c3=a9claration_d=27incident?=
Date: Fri, 27 Nov 2026 10:00:00 +0100
Message-ID: <tb-flowed@chu.test>
MIME-Version: 1.0
Content-Type: text/plain; charset=UTF-8; format=flowed
Content-Transfer-Encoding: 8bit

Num\u00e9ro FINESS : 690781810
Type d'incident : ran\u00e7ongiciel
Description : Nos serveurs de fichiers sont chiffr\u00e9s depuis ce matin, une~
note de ran\u00e7on est affich\u00e9e sur tous les postes du service des~
urgences.
Mesures prises : isolement du r\u00e9seau et coupure du VPN des~
prestataires.

--~
Le RSSI
"""


def test_thunderbird_format_flowed_values_are_read_whole(ctx: AnalysisContext) -> None:
    """RFC 3676: Thunderbird wraps long lines with a trailing space; a labelled value continues on
    unindented lines that, read as fixed text, were cut off (« … une » instead of the sentence)."""
    raw = FLOWED_FORM.replace("~", " ").replace("\n", "\r\n").encode("utf-8")
    d = analyse(raw, ctx).declaration
    assert d is not None
    assert d.summary == ("Nos serveurs de fichiers sont chiffrés depuis ce matin, une note de rançon est affichée "
                         "sur tous les postes du service des urgences.")
    assert d.measures == "isolement du réseau et coupure du VPN des prestataires."
