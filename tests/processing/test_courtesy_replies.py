"""Courtesy replies on a closed case (issue 16): « Merci, bonne journée » is attached to the
timeline and does not reopen it; a substantive reply does (``[cases] reply_to_closed``).

Before: the declarant's « Merci, bonne journée » after the closing mail reopened the case and
sent staff a « Réponse reçue (dossier rouvert) ». The replies come as real clients send them:
Outlook (HTML only, windows-1252, quoted original), Thunderbird (format=flowed, « > » quotes),
Apple Mail (signature after « -- »).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailgateway.mail.courtesy import is_courtesy
from mailgateway.mail.labels import load_labels
from tests.support import casemail
from tests.support.casegateway import Gateway, make_gateway


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def closed_case(gw: Gateway) -> tuple[str, str]:
    ref = gw.declare()
    gw.command(ref, "#assigner moi\n#clore\n")
    assert gw.case(ref).status == "CLOS"
    return ref, gw.last("accuse_reception", "dsi@chu.test").message_id


def thunderbird(ref: str, in_reply_to: str, text: str) -> bytes:
    head = (f"From: RSSI <dsi@chu.test>\r\nTo: ssi-ara@ars.test\r\nSubject: Re: [{ref}] Accusé de réception\r\n"
            f"Message-ID: <tb-re@chu.test>\r\nDate: {casemail.DATE}\r\nIn-Reply-To: {in_reply_to}\r\n"
            f"References: {in_reply_to}\r\nUser-Agent: Mozilla Thunderbird\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=UTF-8; format=flowed\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
    body = (f"{text}\n\nLe 27/11/2026 à 09:00, ARS Auvergne-Rhône-Alpes - Cellule SSI a écrit :\n"
            f"> Bonjour,\n> Nous accusons réception de votre déclaration [{ref}].\n")
    return casemail.sign((head + body.replace("\n", "\r\n")).encode("utf-8"), casemail.establishment_key())


def outlook(ref: str, in_reply_to: str) -> bytes:
    head = (f"From: RSSI <dsi@chu.test>\r\nTo: ssi-ara@ars.test\r\nSubject: RE: [{ref}] Accusé de réception\r\n"
            f"Message-ID: <ol-re@chu.test>\r\nDate: {casemail.DATE}\r\nIn-Reply-To: {in_reply_to}\r\n"
            f"References: {in_reply_to}\r\nMIME-Version: 1.0\r\n"
            'Content-Type: text/html; charset="Windows-1252"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n')
    body = ("<html><body><div><p class=3D\"MsoNormal\">Merci, bonne journ=E9e.<o:p></o:p></p></div>\r\n"
            "<div><p class=3D\"MsoNormal\">Cordialement,<o:p></o:p></p></div>\r\n"
            "<div style=3D\"border:none;border-top:solid #E1E1E1 1.0pt\"><p class=3D\"MsoNormal\"><b>De&nbsp;:"
            "</b> ARS <br>\r\n<b>Envoy=E9&nbsp;:</b> vendredi 27 novembre 2026 09:00<br>\r\n"
            "<b>=C0&nbsp;:</b> RSSI<br>\r\n<b>Objet&nbsp;:</b> Accus=E9 de r=E9ception</p></div>\r\n"
            "<p>Nous accusons r=E9ception de votre d=E9claration.</p></body></html>\r\n")
    return casemail.sign(head.encode("utf-8") + body.encode("ascii"), casemail.establishment_key())


@pytest.mark.parametrize("client", ["thunderbird", "outlook"])
def test_a_courtesy_on_a_closed_case_is_attached_and_does_not_reopen_it(gw: Gateway, client: str) -> None:
    ref, ack = closed_case(gw)
    raw = thunderbird(ref, ack, "Merci, bonne journée !\n\nBien cordialement,\nMarie Exemple\nRSSI") \
        if client == "thunderbird" else outlook(ref, ack)
    result = gw.feed(raw)
    assert result.status == "processed" and result.case_ref == ref, result
    assert gw.case(ref).status == "CLOS"
    assert not gw.outbound("notification_reponse")
    types = [e.type for e in gw.events(ref)]
    assert types[-2:] == ["message_recu", "remerciement_recu"]


def test_a_substantive_reply_still_reopens(gw: Gateway) -> None:
    ref, ack = closed_case(gw)
    gw.feed(thunderbird(ref, ack, "Merci. Le chiffrement a repris ce matin sur deux serveurs, que faire ?"))
    assert gw.case(ref).status == "PRIS_EN_COMPTE"
    assert "dossier rouvert" in str(casemail.parse(gw.last("notification_reponse").raw)["Subject"])


def test_a_courtesy_on_an_open_case_is_still_notified(gw: Gateway) -> None:
    ref = gw.declare()
    ack = gw.last("accuse_reception", "dsi@chu.test").message_id
    gw.feed(thunderbird(ref, ack, "Merci, bien reçu."))
    assert gw.outbound("notification_reponse")


@pytest.mark.parametrize(("text", "courtesy"), [
    ("Merci, bonne journée", True),
    ("Bien reçu, cordialement.", True),
    ("#lu", True),
    ("Thanks, kind regards\nJohn Smith", True),
    ("Bien reçu.\n\nCordialement,\nJean Dupont\nRSSI CH Vienne", True),
    ("Merci. Faut-il couper le VPN ?", False),  # a question
    ("Merci.\nNous avons trouvé deux autres postes infectés.", False),  # lowercase words: not a signature
    # A hospital RSSI's real signature: name, title and service with particles, phone line (outside test).
    ("Merci, bonne journée.\nClaire Martin\nRSSI - CHU de Test\nTél. 04 72 00 00 00", True),
    # The words of job titles and services are a signature's (« cellule », « sécurité », « systèmes »:
    # a thank-you signed « Responsable de la sécurité des systèmes d'information » reopened a closed
    # case, outside tester); other lower-case words read like a sentence: staff are told (the safe side).
    ("Bien reçu, merci.\nLa cellule SSI du CHU de Test", True),
    ("Bien reçu, merci.\nLa cellule a coupé le VPN du CHU", False),
    ("Merci, bonne journée\nTél. 04 72 00 00 00\nclaire.martin@chu.test", True),
    ("Merci.\nServeur 12 Toujours Chiffré", False),  # digits outside a phone line: not a signature
    ("Merci.\nVoir Https://Fuite.Example/Chu", False),  # a link is never a signature
    ("Merci.\nTél. 04 72 00 00 00 Rappelez Vite", False),  # words after the number
    ("Merci.\nA\nB\nC\nD\nE\nF", False),  # more than five signature lines
    ("Merci " * 60, False),  # too long
    ("Bonjour, le problème est revenu.", False),
])
def test_the_courtesy_detector_is_conservative(text: str, courtesy: bool) -> None:
    assert is_courtesy(text, 0, load_labels()) is courtesy


def test_an_attachment_is_never_a_courtesy() -> None:
    assert not is_courtesy("Merci", 1, load_labels())



@pytest.mark.parametrize("text", ["#lu", "#lu\n\nCordialement,\nMarie Exemple\nRSSI", "Merci, bonne journée."])
@pytest.mark.parametrize("threaded", [True, False], ids=["threaded", "subject-tag-only"])
def test_a_lu_or_a_thank_you_never_reopens_a_closed_case(gw: Gateway, text: str, threaded: bool) -> None:
    # Outside tester: « #lu » (read as a command) and a thank-you whose client dropped In-Reply-To
    # (the case tag in the subject only) reopened the case and notified staff.
    ref, ack = closed_case(gw)
    raw = thunderbird(ref, ack, text)
    if not threaded:
        raw = raw.replace(f"In-Reply-To: {ack}\r\nReferences: {ack}\r\n".encode(), b"")
        raw = casemail.sign(raw[raw.index(b"From: "):], casemail.establishment_key())
    result = gw.feed(raw)
    assert result.status == "processed" and result.case_ref == ref, result
    assert gw.case(ref).status == "CLOS"
    assert not gw.outbound("notification_reponse")
