"""An establishment's Outlook « TR: » of the alert we relayed to it is its answer to the relay
(outside test, ARS agent + hospital RSSI).

Before: the forward (no In-Reply-To, Outlook « De : / Envoyé : / À : / Objet : » block, the alert's
text below the establishment's own) was read as an alert, opened « [NON AUTHENTIFIÉE] Alerte
(nouvelle version) … » suggesting #fusionner, and the establishment's text appeared nowhere.
Now our subject tag, or our address as the forwarded author, makes it an answer to the relayed
message sent to that establishment (``reponse_diffusion``; a declaration opens a linked case).
"""

from __future__ import annotations

import base64
import html
import re
import time
from collections.abc import Iterator
from email.header import Header

import pytest
from sqlalchemy import select

from mailgateway.app import build_app
from mailgateway.clock import FixedClock
from mailgateway.mail.alert import quotes_our_mail
from mailgateway.settings import parse_settings
from mailgateway.store.engine import transaction
from mailgateway.store.models import BulletinRecipient, Case
from tests.support import casemail
from tests.support.bulletins import fill_directory, finess
from tests.support.casegateway import NOW, Gateway, settings_data
from tests.support.db import at_head

ALERT_BODY = """Bonjour,

TLP:CLEAR

Référence : 2026-ALE-077
Titre : Campagne de rançongiciel ciblant les PACS
Structures concernées : laboratoires de biologie médicale

Une campagne de rançongiciel exploite la vulnérabilité CVE-2026-12345 des passerelles VPN.
Domaine de commande observé : pacs-update.example ; adresse IP 203.0.113.45.

Le CERT Santé
"""
SIGHTING = ("Pour information : nous avons observé hier soir une connexion VPN depuis 203.0.113.45, "
            "compte prestataire. Nous investiguons.\n\nDSI Laboratoire 0")


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    app = build_app(parse_settings(settings_data(at_head(sqlite_url))), clock=FixedClock(NOW))
    with transaction(app.factory) as s:
        fill_directory(s, NOW, 2, category="LBM")  # ssi@e0.test, ssi@e1.test
    try:
        yield Gateway(app, FixedClock(NOW))
    finally:
        app.close()


def relayed(gw: Gateway) -> str:
    raw = casemail.message(sender="acss@esante.test", to="ssi-ara@ars.test",
                           subject="[CERT Santé] Alerte 2026-ALE-077 : campagne de rançongiciel", body=ALERT_BODY,
                           message_id="<ale-077@esante.test>")
    result = gw.feed(casemail.sign(raw, casemail.acss_key()))
    assert result.kind == "alert" and result.case_ref, result
    ref = result.case_ref
    gw.command(ref, "#diffuser\n")
    token = re.search(r"#confirmer ([0-9a-f]{12})", gw.receipt_text())
    assert token, gw.receipt_text()
    gw.command(ref, f"#confirmer {token.group(1)}\n")
    assert gw.outbound("alerte_relais", "ssi@e0.test")
    return ref


def outlook_forward(gw: Gateway, n: int, own_text: str, *, subject_tag: bool = True) -> bytes:
    """What Outlook 16 sends on « Transférer »: « TR: » subject, no In-Reply-To/References, the
    relayed mail below its « De : / Envoyé : / À : / Objet : » block, text/plain and HTML."""
    relay = gw.last("alerte_relais", f"ssi@e{n}.test")
    msg = casemail.parse(relay.raw)
    subject = str(msg["Subject"])
    sender = str(msg["From"])
    quoted = casemail.text_of(relay.raw).replace("\r\n", "\n")
    outer = f"TR: {subject}" if subject_tag else "TR: pour info"
    block = (f"De : {sender}\nEnvoyé : vendredi 27 novembre 2026 10:01\nÀ : ssi@e{n}.test\n"
             f"Objet : {subject}\n\n")
    plain = f"{own_text}\n\n{block}{quoted}"
    paragraphs = "".join(f'<p class="MsoNormal">{html.escape(p)}<o:p></o:p></p>\n' for p in own_text.split("\n"))
    head_html = "<br>\n".join(f"<b>{html.escape(line.split(' : ', 1)[0])}&nbsp;:</b> "
                              f"{html.escape(line.split(' : ', 1)[1])}" for line in block.strip().split("\n"))
    body_html = (f'<html><body><div class="WordSection1">{paragraphs}<div><div style="border:none;border-top:solid '
                 f'#E1E1E1 1.0pt"><p class="MsoNormal">{head_html}</p></div></div>'
                 f'<p class="MsoNormal">{html.escape(quoted).replace(chr(10), "<br>")}</p></div></body></html>')

    def part(ctype: str, text: str) -> str:
        data = base64.encodebytes(text.replace("\n", "\r\n").encode()).decode().replace("\n", "\r\n")
        return (f"--=_NextPart_0\r\nContent-Type: {ctype}; charset=\"utf-8\"\r\n"
                f"Content-Transfer-Encoding: base64\r\n\r\n{data}")

    head = (f"From: RSSI Labo <ssi@e{n}.test>\r\nTo: ssi-ara@ars.test\r\n"
            f"Subject: {Header(outer, 'utf-8').encode()}\r\nDate: {casemail.DATE}\r\n"
            f"Message-ID: <fwd-{n}-{len(own_text)}@e{n}.test>\r\nMIME-Version: 1.0\r\n"
            "X-Mailer: Microsoft Outlook 16.0\r\n"
            "Content-Type: multipart/alternative; boundary=\"=_NextPart_0\"\r\n\r\n")
    return (head + part("text/plain", plain) + part("text/html", body_html) + "--=_NextPart_0--\r\n").encode()


def alert_cases(gw: Gateway) -> list[Case]:
    with gw.app.factory() as s:
        return list(s.scalars(select(Case).where(Case.kind == "alert")))


def acknowledged(gw: Gateway) -> set[str]:
    with gw.app.factory() as s:
        rows = s.scalars(select(BulletinRecipient).where(BulletinRecipient.acknowledged_at.is_not(None)))
        return {r.address for r in rows}


@pytest.mark.parametrize("subject_tag", [True, False], ids=["tr-subject", "forwarded-from-us"])
def test_an_outlook_forward_reporting_a_sighting_opens_a_case_linked_to_the_alert(gw: Gateway,
                                                                                  subject_tag: bool) -> None:
    """reply_C.eml: the establishment saw the alert's IP on its VPN and says so above the forward."""
    ref = relayed(gw)
    before = len(gw.outbound("notification_equipe"))
    result = gw.feed(outlook_forward(gw, 0, SIGHTING, subject_tag=subject_tag))
    assert result.status == "processed" and result.case_ref and result.case_ref != ref, result
    assert [c.reference for c in alert_cases(gw)] == [ref]  # no « nouvelle version », no #fusionner
    incident = gw.case(result.case_ref)
    assert incident.kind == "incident" and incident.linked_case_id == gw.case(ref).id
    assert incident.finess == finess(0), incident.finess  # the establishment the relay went to
    notices = gw.outbound("notification_equipe")[before:]
    assert notices, [o.kind for o in gw.outbound()]
    text = casemail.text_of(notices[0].raw)
    assert "nous avons observé hier soir une connexion VPN" in text
    assert "NON AUTHENTIFI" not in str(casemail.parse(notices[0].raw)["Subject"])
    # Nor in the body (outside tester: « ATTENTION : ALERTE NON AUTHENTIFIÉE », « Authentifiée :
    # NON », our relay's subject as an alert title): an answer to our relay is no alert.
    assert "NON AUTHENTIFI" not in text and "Authentifiée" not in text, text
    assert result.kind != "alert"
    assert acknowledged(gw) == {"ssi@e0.test"}
    assert "dossier_lie" in [e.type for e in gw.events(ref)]


def test_an_outlook_forward_with_a_remark_reaches_staff_inline(gw: Gateway) -> None:
    ref = relayed(gw)
    own = "Nous n'avons pas de passerelle VPN de ce modèle, qui contacter pour les PACS ?\n\nDSI Laboratoire 0"
    result = gw.feed(outlook_forward(gw, 0, own))
    assert result.status == "processed" and result.case_ref in (None, ref), result
    notices = gw.outbound("notification_reponse_diffusion")
    assert notices, [o.kind for o in gw.outbound()]
    text = casemail.text_of(notices[0].raw)
    assert "qui contacter pour les PACS ?" in text and "pose une question" in text
    assert [c.reference for c in alert_cases(gw)] == [ref]
    assert acknowledged(gw) == {"ssi@e0.test"}


def test_a_forward_that_declares_an_incident_opens_a_case_linked_to_the_alert(gw: Gateway) -> None:
    ref = relayed(gw)
    own = ("Bonjour,\n\nSuite à votre alerte : nous subissons depuis ce matin une attaque par rançongiciel, "
           "nos serveurs PACS sont chiffrés.\n\nCordialement,\nLe RSSI")
    result = gw.feed(outlook_forward(gw, 1, own))
    assert result.status == "processed" and result.case_ref and result.case_ref != ref, result
    incident = gw.case(result.case_ref)
    assert incident.kind == "incident" and incident.linked_case_id == gw.case(ref).id
    assert len(alert_cases(gw)) == 1


def test_a_thank_you_forward_is_only_counted(gw: Gateway) -> None:
    relayed(gw)
    before = len(gw.outbound("notification_equipe"))
    gw.feed(outlook_forward(gw, 0, "Bien reçu, merci.\n\nCordialement,\nJean Dupont"))
    assert acknowledged(gw) == {"ssi@e0.test"}
    assert not gw.outbound("notification_reponse_diffusion") and len(gw.outbound("notification_equipe")) == before
    assert len(alert_cases(gw)) == 1


def test_our_relay_forwarded_by_someone_it_was_not_sent_to_is_never_an_alert(gw: Gateway) -> None:
    ref = relayed(gw)
    raw = outlook_forward(gw, 0, SIGHTING).replace(b"ssi@e0.test>\r\nTo:", b"autre@ailleurs.test>\r\nTo:", 1)
    result = gw.feed(raw)
    # An answer to our mail (parse --json: « reply », never « alert »), from no one we sent it to:
    # kept in quarantine with the reason, no alert, no « nouvelle version » of the one relayed.
    assert result.kind == "reply", result
    assert result.status == "quarantined" and "pas une nouvelle alerte" in (result.reason or ""), result
    assert [c.reference for c in alert_cases(gw)] == [ref]


def test_our_relay_forwarded_back_with_nothing_to_say_is_kept_in_quarantine(gw: Gateway) -> None:
    ref = relayed(gw)
    raw = outlook_forward(gw, 0, "Pour info.").replace(b"ssi@e0.test>\r\nTo:", b"autre@ailleurs.test>\r\nTo:", 1)
    result = gw.feed(raw)
    assert result.kind == "reply", result  # parse --json: an answer to our mail, not « unknown » nor « alert »
    assert result.status == "quarantined" and "pas une nouvelle alerte" in (result.reason or ""), result
    assert [c.reference for c in alert_cases(gw)] == [ref]


def test_recognising_a_forward_of_our_mail_is_linear_on_hostile_text() -> None:
    """Bounded work on untrusted text (docs/guarantees.md, "poison message")."""
    own = frozenset({"ssi-ara@ars.test"})
    for hostile in ("De : " + " " * 100_000 + ":", "De : x\n" * 20_000, "[alerte ssi - ars" * 6000):
        start = time.perf_counter()
        quotes_our_mail(hostile[:1000], hostile, own)
        assert time.perf_counter() - start < 1.0


def test_an_outlook_reply_to_a_case_mail_goes_to_its_case_even_after_a_relay(gw: Gateway) -> None:
    """Found by an outside tester (ARS agent): a laboratory that had received a relayed alert
    answered its own case's mail from Outlook (In-Reply-To our mail, [SSI-…] in the subject, our
    « De : ARS … Envoyé : … » block quoted below). The answer was filed as the relay's read receipt
    (« Réponse d'un établissement au bulletin ») and never reached the case."""
    relayed(gw)
    declaration = casemail.message(
        sender="ssi@e0.test", to="ssi-ara@ars.test", subject="Déclaration d'incident",
        body=f"Numéro FINESS : {finess(0)}\nType d'incident : rançongiciel\nGravité : grave\n\nPostes chiffrés.\n")
    ref = gw.feed(declaration).case_ref
    assert ref
    ack = gw.last("accuse_reception", "ssi@e0.test")
    msg = casemail.parse(ack.raw)
    quoted = casemail.text_of(ack.raw).replace("\r\n", "\n")
    body = ("Bonjour,\n\nVoici les éléments demandés : 12 patients concernés.\n\nCordialement\n\n"
            f"De : {msg['From']}\nEnvoyé : vendredi 27 novembre 2026 10:01\nÀ : ssi@e0.test\n"
            f"Objet : {msg['Subject']}\n\n{quoted}")
    before = acknowledged(gw)
    result = gw.feed(casemail.message(sender="ssi@e0.test", to="ssi-ara@ars.test", subject=f"RE: {msg['Subject']}",
                                      body=body, in_reply_to=ack.message_id))
    assert result.case_ref == ref and result.kind == "reply", result
    received = [e for e in gw.events(ref) if e.type == "message_recu"]
    assert any("12 patients" in str(e.data.get("extrait", "")) for e in received), [e.data for e in received]
    assert acknowledged(gw) == before  # not the relay's read receipt
    assert "bulletin" not in str(casemail.parse(gw.last("notification_equipe").raw)["Subject"]).lower()


def test_a_reply_under_another_establishments_copy_acknowledges_nothing_for_it(gw: Gateway) -> None:
    # Outside tester: « Bien reçu, merci. » from one hospital, threaded under the relay sent to a
    # laboratory (an In-Reply-To is easy to get), marked the laboratory as having read it.
    relayed(gw)
    relay = gw.last("alerte_relais", "ssi@e0.test")
    other = casemail.message(sender="rssi@ailleurs.test", to="ssi-ara@ars.test", subject="RE: alerte",
                             body="Bien reçu, merci.", in_reply_to=relay.message_id)
    gw.feed(other)
    assert acknowledged(gw) == set()
    gw.feed(casemail.message(sender="ssi@e0.test", to="ssi-ara@ars.test", subject="RE: alerte",
                             body="Bien reçu, merci.", in_reply_to=relay.message_id))
    assert acknowledged(gw) == {"ssi@e0.test"}
