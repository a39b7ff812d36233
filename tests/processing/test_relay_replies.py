"""Replies to a relayed ACSS alert are read, not just counted (issue 16, "Understanding").

End to end by mail: a DKIM-signed ACSS alert naming its targets in prose is received, staff relay
it with ``#diffuser`` / ``#confirmer``, and the establishments' answers come back threaded to the
relayed message. Before: every answer, « que devons-nous faire ? » included, was only counted as
« accusé de lecture »; read receipts became « Réponse reçue ».
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from mailgateway.app import build_app
from mailgateway.clock import FixedClock
from mailgateway.settings import parse_settings
from mailgateway.store.engine import transaction
from mailgateway.store.models import BulletinRecipient, Case, CaseEvent
from tests.support import casemail
from tests.support.bulletins import fill_directory
from tests.support.casegateway import NOW, Gateway, settings_data
from tests.support.db import at_head
from tests.support.dkim import rsa_key, zone

ACSS_KEY = rsa_key("rsa", "esante.test")

ALERT_BODY = """Bonjour,

TLP:CLEAR

Référence : 2026-ALE-031
Une vulnérabilité critique (CVE-2026-1234) affecte les automates d'analyse.
Cette alerte concerne les laboratoires de biologie médicale, qui doivent appliquer le correctif
sans délai.

La cellule ACSS (CERT Santé)
"""


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    data = settings_data(at_head(sqlite_url))
    data["authentication"]["static_keys"].update(zone(ACSS_KEY))
    app = build_app(parse_settings(data), clock=FixedClock(NOW))
    with transaction(app.factory) as s:
        fill_directory(s, NOW, 3, category="LBM")  # ssi@e0.test .. ssi@e2.test
        fill_directory(s, NOW, 2, category="ESMS", start=10)  # not targeted
    try:
        yield Gateway(app, FixedClock(NOW))
    finally:
        app.close()


def relayed(gw: Gateway) -> str:
    """The alert received, relayed by staff by mail; its case reference."""
    raw = casemail.message(sender="acss@esante.test", to="ssi-ara@ars.test",
                           subject="[CERT Santé] Alerte 2026-ALE-031 : vulnérabilité critique", body=ALERT_BODY,
                           message_id="<ale-031@esante.test>")
    result = gw.feed(casemail.sign(raw, ACSS_KEY))
    assert result.kind == "alert" and result.case_ref, result
    ref = result.case_ref
    assert gw.case(ref).fields["alert"]["targets"] == ["LBM"]  # named in prose only
    gw.command(ref, "#diffuser\n")
    token = re.search(r"#confirmer ([0-9a-f]{12})", gw.receipt_text())
    assert token, gw.receipt_text()
    gw.command(ref, f"#confirmer {token.group(1)}\n")
    assert {r.recipient for r in gw.outbound("alerte_relais")} == {"ssi@e0.test", "ssi@e1.test", "ssi@e2.test"}
    return ref


def answer(gw: Gateway, n: int, body: str, **kw: object) -> bytes:
    relay = gw.last("alerte_relais", f"ssi@e{n}.test")
    subject = str(casemail.parse(relay.raw)["Subject"])
    return casemail.message(sender=f"ssi@e{n}.test", to="ssi-ara@ars.test", subject=f"RE: {subject}", body=body,
                            in_reply_to=relay.message_id, **kw)  # type: ignore[arg-type]


def acknowledged(gw: Gateway) -> set[str]:
    with gw.app.factory() as s:
        rows = s.scalars(select(BulletinRecipient).where(BulletinRecipient.acknowledged_at.is_not(None)))
        return {r.address for r in rows}


def test_a_question_reaches_staff_with_its_text_inline_and_still_counts_as_read(gw: Gateway) -> None:
    ref = relayed(gw)
    body = ("Bonjour,\n\nUne secrétaire a envoyé le formulaire aux fraudeurs avant de lire votre message.\n"
            "Que devons-nous faire ?\n\nCordialement,\nLe secrétariat\n\n> Bonjour,\n> TLP:CLEAR\n")
    result = gw.feed(answer(gw, 0, body))
    assert result.status == "processed"
    notices = gw.outbound("notification_reponse_diffusion")
    assert {n.recipient for n in notices} == {"agent@ars.test", "referent@ars.test"}
    text = casemail.text_of(notices[0].raw)
    assert "Une secrétaire a envoyé le formulaire aux fraudeurs" in text and "Que devons-nous faire ?" in text
    assert "pose une question" in text and "Laboratoire numéro 0" in text
    assert f"[{ref}] Réponse d'un établissement à l'alerte relayée" in str(casemail.parse(notices[0].raw)["Subject"])
    assert acknowledged(gw) == {"ssi@e0.test"}  # counted as read as before
    assert not gw.outbound("notification_reponse")
    assert "message_recu" in [e.type for e in gw.events(ref)]  # on the alert's timeline


def test_a_courtesy_or_lu_is_only_counted(gw: Gateway) -> None:
    relayed(gw)
    gw.feed(answer(gw, 0, "Bien reçu, merci.\n\nCordialement,\nJean Dupont\nRSSI\n"))
    gw.feed(answer(gw, 1, "#lu\n"))
    assert acknowledged(gw) == {"ssi@e0.test", "ssi@e1.test"}
    assert not gw.outbound("notification_reponse_diffusion") and not gw.outbound("notification_reponse")


def test_an_attachment_makes_a_reply_substantive(gw: Gateway) -> None:
    relayed(gw)
    relay = gw.last("alerte_relais", "ssi@e2.test")
    raw = (f"From: ssi@e2.test\r\nTo: ssi-ara@ars.test\r\nSubject: RE: alerte\r\nMessage-ID: <att-1@e2.test>\r\n"
           f"Date: {casemail.DATE}\r\nIn-Reply-To: {relay.message_id}\r\nReferences: {relay.message_id}\r\n"
           "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
           "--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nMerci.\r\n"
           "--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"journal.pdf\"\r\n"
           "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n").encode()
    gw.feed(raw)
    notices = gw.outbound("notification_reponse_diffusion")
    assert notices and "Pièces jointes : 1" in casemail.text_of(notices[0].raw)
    assert acknowledged(gw) == {"ssi@e2.test"}


def test_a_reply_that_declares_an_incident_opens_a_case_linked_to_the_alert(gw: Gateway) -> None:
    ref = relayed(gw)
    body = ("Bonjour,\n\nSuite à votre alerte : nous subissons depuis ce matin une attaque par rançongiciel, "
            "nos serveurs de fichiers sont chiffrés et l'automate est à l'arrêt.\n\nCordialement,\nLe RSSI\n")
    result = gw.feed(answer(gw, 1, body))
    assert result.status == "processed" and result.case_ref and result.case_ref != ref, result
    incident = gw.case(result.case_ref)
    alert = gw.case(ref)
    assert incident.kind == "incident" and incident.incident_type == "RANCONGICIEL"
    assert incident.linked_case_id == alert.id
    assert "dossier_lie" in [e.type for e in gw.events(ref)]
    assert gw.outbound("accuse_reception", "ssi@e1.test")  # the declarant is acknowledged
    assert gw.outbound("notification_equipe")  # staff are told of the new case
    assert acknowledged(gw) == {"ssi@e1.test"}


def test_a_reply_declaring_an_incident_is_answered_at_its_authors_address_not_its_display_name(
        gw: Gateway) -> None:
    """An encoded word is a display name, never an address (RFC 2047 §5): « =?utf-8?q?ssi=40e0…?=
    <ssi@e1.test> » is ssi@e1.test writing (outside tester: the case was opened in e0's name and
    e0 was acknowledged)."""
    relayed(gw)
    body = ("Bonjour,\n\nSuite à votre alerte : nous subissons depuis ce matin une attaque par rançongiciel, "
            "nos serveurs de fichiers sont chiffrés.\n\nCordialement,\nLe RSSI\n")
    raw = answer(gw, 1, body).replace(b"From: ssi@e1.test", b"From: =?utf-8?q?ssi=40e0.test?= <ssi@e1.test>", 1)
    result = gw.feed(raw)
    assert result.status == "processed" and result.case_ref, result
    assert gw.case(result.case_ref).declarant == "ssi@e1.test"
    assert gw.outbound("accuse_reception", "ssi@e1.test") and not gw.outbound("accuse_reception", "ssi@e0.test")


def test_a_reply_declaring_an_incident_from_two_addresses_is_answered_at_neither(gw: Gateway) -> None:
    """« ssi@e0.test <ssi@e1.test> »: two addresses to the stdlib, ssi@e1.test to a mail client.
    Authentication names nobody; the reply's declaration neither (outside tester: it opened a
    case in e0's name and acknowledged e0)."""
    relayed(gw)
    body = ("Bonjour,\n\nSuite à votre alerte : nous subissons depuis ce matin une attaque par rançongiciel, "
            "nos serveurs de fichiers sont chiffrés.\n\nCordialement,\nLe RSSI\n")
    raw = answer(gw, 1, body).replace(b"From: ssi@e1.test", b"From: ssi@e0.test <ssi@e1.test>", 1)
    gw.feed(raw)
    assert not gw.outbound("accuse_reception", "ssi@e0.test") and not gw.outbound("accuse_reception", "ssi@e1.test")


THUNDERBIRD_MDN = """From: ssi@e{n}.test
To: ssi-ara@ars.test
Subject: Accusé de lecture (affiché) - alerte
Message-ID: <mdn-{n}@e{n}.test>
Date: {date}
In-Reply-To: {mid}
References: {mid}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=disposition-notification;
 boundary="------------MDN"

--------------MDN
Content-Type: text/plain; charset=UTF-8
Content-Transfer-Encoding: 8bit

Ceci est un accusé de lecture pour le courriel envoyé à ssi@e{n}.test.

Note : cet accusé de lecture indique seulement que le message a été affiché sur l'ordinateur du destinataire.

--------------MDN
Content-Type: message/disposition-notification; name="MDNPart2.txt"
Content-Disposition: inline
Content-Transfer-Encoding: 7bit

Reporting-UA: e{n}.test; Thunderbird 115.4.1
Final-Recipient: rfc822;ssi@e{n}.test
Original-Message-ID: {mid}
Disposition: manual-action/MDN-sent-manually; displayed

--------------MDN
Content-Type: text/rfc822-headers; name="MDNPart3.txt"
Content-Disposition: inline

Subject: alerte
Message-ID: {mid}

--------------MDN--
"""

OUTLOOK_LU = """From: "Secrétariat" <ssi@e{n}.test>
To: <ssi-ara@ars.test>
Subject: Lu : [TLP:CLEAR] Alerte relayée
Message-ID: <lu-{n}@e{n}.test>
Date: {date}
In-Reply-To: {mid}
References: {mid}
MIME-Version: 1.0
Content-Type: text/plain; charset="windows-1252"
Content-Transfer-Encoding: quoted-printable

Votre message

  =C0 : ssi@e{n}.test
  Objet : [TLP:CLEAR] Alerte relay=E9e
  Envoy=E9 : vendredi 27 novembre 2026 10:00:00 (UTC+01:00) Bruxelles, Copenhague, Madrid, Paris

a =E9t=E9 lu le vendredi 27 novembre 2026 10:05:12 (UTC+01:00) Bruxelles, Copenhague, Madrid, Paris.
"""


@pytest.mark.parametrize("template", [THUNDERBIRD_MDN, OUTLOOK_LU], ids=["rfc8098-thunderbird", "outlook-lu"])
def test_read_receipts_count_as_read_and_notify_nobody(gw: Gateway, template: str) -> None:
    ref = relayed(gw)
    relay = gw.last("alerte_relais", "ssi@e2.test")
    raw = template.format(n=2, mid=relay.message_id, date=casemail.DATE).replace("\n", "\r\n").encode("utf-8")
    result = gw.feed(raw)
    assert result.status == "processed" and result.kind == "auto_reply", result
    assert acknowledged(gw) == {"ssi@e2.test"}
    assert not gw.outbound("notification_reponse_diffusion") and not gw.outbound("notification_reponse")
    with gw.app.factory() as s:
        case = s.scalars(select(Case).where(Case.reference == ref)).one()
        assert case.status == "DIFFUSEE"
        assert s.scalars(select(CaseEvent).where(CaseEvent.case_id == case.id,
                                                 CaseEvent.type == "message_recu")).first() is not None


def test_a_question_on_an_awareness_bulletin_reaches_staff_too(gw: Gateway) -> None:
    """A bulletin (no case behind it): the notification stands alone, text inline."""
    from mailgateway.bulletins.fanout import approve_bulletin, create_bulletin

    with transaction(gw.app.factory) as s:
        bulletin = create_bulletin(s, gw.app.settings, region="ARA", target="category=LBM",
                                   subject="Campagne d'hameçonnage", body="Soyez vigilants.", tlp="CLEAR",
                                   author="agent@ars.test", now=NOW)
        approve_bulletin(gw.app.env, s, bulletin.id, "referent@ars.test")
    sent = gw.last("bulletin", "ssi@e1.test")
    raw = casemail.message(sender="ssi@e1.test", to="ssi-ara@ars.test", subject="RE: Campagne d'hameçonnage",
                           body="Bonjour, faut-il aussi prévenir nos prestataires ?\n", in_reply_to=sent.message_id)
    assert gw.feed(raw).status == "processed"
    notices = gw.outbound("notification_reponse_diffusion")
    assert {n.recipient for n in notices} == {"agent@ars.test", "referent@ars.test"}
    text = casemail.text_of(notices[0].raw)
    assert "faut-il aussi prévenir nos prestataires ?" in text and "Campagne d'hameçonnage" in text
    assert "Réponse d'un établissement au bulletin n°" in str(casemail.parse(notices[0].raw)["Subject"])
    assert acknowledged(gw) == {"ssi@e1.test"}
