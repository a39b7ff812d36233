"""HTML mail read with the line breaks its reader sees (issue 17): one Outlook ``<p class=MsoNormal>``
or one Gmail/OWA ``<div>`` per typed line, empty paragraphs as empty lines, ``<br>`` as a line end.

Before: every block added a blank line, and Outlook's empty paragraphs (``&nbsp;``) vanished, so the
lines of a ``#demander-info`` written in Outlook came out double-spaced and its paragraphs merged.
"""

from __future__ import annotations

import pytest

from mailgateway.mail.htmltext import html_to_text
from mailgateway.mail.parse import parse_message
from mailgateway.mail.text import new_text


def text(markup: str) -> str:
    return html_to_text(markup)[0]


def test_outlook_paragraphs_are_lines_and_empty_ones_are_blank_lines() -> None:
    markup = ("<div class=WordSection1><p class=MsoNormal>Bonjour,<o:p></o:p></p>"
              "<p class=MsoNormal><o:p>&nbsp;</o:p></p><p class=MsoNormal>1. Question ?<o:p></o:p></p>"
              "<p class=MsoNormal>2. Question ?<o:p></o:p></p></div>")
    assert text(markup) == "Bonjour,\n\n1. Question ?\n2. Question ?"


def test_gmail_divs_and_br() -> None:
    assert text("<div dir=ltr><div>a</div><div><br></div><div>b<br></div><div>c</div></div>") == "a\n\nb\nc"
    assert text("<p>x<br>y<br><br>z</p>") == "x\ny\n\nz"


def test_web_paragraphs_keep_their_blank_line_and_quotes_their_marks() -> None:
    assert text("<p>Un.</p><p>Deux.</p>") == "Un.\n\nDeux."
    assert text("<p>Réponse</p><blockquote><p>cité</p></blockquote>") == "Réponse\n\n> cité"


def test_unclosed_paragraphs_close_each_other() -> None:
    assert text("<p class=MsoNormal>a<p class=MsoNormal>b<p>c") == "a\nb\nc"


def test_text_in_hidden_elements_is_read_like_visible_text() -> None:
    # Outside testers: skipping « hidden » elements made the gateway miss text a mail client shows
    # (« <p style=display:none>x<div>visible</div> »: the <div> closes the hidden <p>), and a
    # courtesy over it swallowed a request. A superset of what staff see is read instead.
    markup = ("<p>Merci, bonne journée.</p><p style='display:none'>x<div>Le serveur de la pharmacie est de "
              "nouveau chiffré, rappelez-moi.</div><div hidden style='display:block'>Visible aussi</div>")
    text, _links = html_to_text(markup)
    assert "de nouveau chiffré, rappelez-moi." in text and "Visible aussi" in text


@pytest.mark.parametrize("signature", [
    '<div id="Signature"><div>Pierre Martin</div><div>ARS ARA - 06 12 34 56 78</div></div>',  # OWA, new Outlook
    '<p class=MsoNormal><a name="_MailAutoSig">Pierre Martin<br>06 12 34 56 78</a></p>',  # Outlook for Windows
    '<div class="gmail_signature" data-smartmail="gmail_signature">Pierre Martin<br>06 12 34 56 78</div>',
    '<div class="moz-signature">Pierre Martin<br>06 12 34 56 78</div>',  # Thunderbird
])
def test_a_clients_signature_block_ends_the_new_text(signature: str) -> None:
    # An outside tester: an OWA signature went into a closure reason mailed to the hospital.
    text, _links = html_to_text(f"<div>#clore incident résolu</div><div><br></div>{signature}")
    assert new_text(text) == "#clore incident résolu"


def test_a_quoted_signature_is_no_signature_of_the_writer() -> None:
    quoted = html_to_text('<div>Bonjour</div><blockquote><div id="Signature">X</div></blockquote><div>#note a</div>')
    assert "--" not in quoted[0]


def _alternative(plain: str, html: str) -> bytes:
    return ("From: agent@ars.test\r\nTo: ssi-pdl@ars.test\r\nSubject: RE: [SSI-PDL-2026-0001] x\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"_000_OWA_\"\r\n\r\n"
            "--_000_OWA_\r\nContent-Type: text/plain; charset=\"utf-8\"\r\n\r\n" + plain.replace("\n", "\r\n")
            + "\r\n--_000_OWA_\r\nContent-Type: text/html; charset=\"utf-8\"\r\n\r\n" + html
            + "\r\n--_000_OWA_--\r\n").encode()


OWA_SIGNATURE = ["Pierre Martin", "Chargé de mission SSI – ARS Pays de la Loire", "Port. : 06 98 76 54 32"]


def test_the_plain_part_of_an_owa_mail_ends_where_its_html_marks_the_signature() -> None:
    # An outside tester: OWA sends text/plain beside the HTML; the plain part, the one read, has
    # the signature unmarked, and the agent's mobile number reached the hospital in a closure reason.
    plain = ("#clore Fausse alerte confirmée.\n\n" + "\n".join(OWA_SIGNATURE)
             + "\n________________________________\nDe : ARS\n")
    html = ('<div class="elementToProof">#clore Fausse alerte confirmée.</div><div><br></div><div id="Signature">'
            '<div>' + "<br>".join(OWA_SIGNATURE) + '</div></div><div id="appendonsend"></div>')
    assert new_text(parse_message(_alternative(plain, html)).text()) == "#clore Fausse alerte confirmée."


@pytest.mark.parametrize("signature", [["Pierre Martin – 06 11 22 33 44"],
                                       ["Pierre Martin", "Mobile : 06 11 22 33 44"]])
def test_a_short_owa_signature_ends_the_plain_part_too(signature: list[str]) -> None:
    # An outside tester: a 1- or 2-line signature took the quoted message's « De : … » as its next
    # lines in the HTML, which the plain part has after a rule: never found, and « Pierre Martin /
    # Mobile : … » reached the hospital in the closure reason, the ACSS in a comment.
    plain = ("#clore Incident clos.\n\n" + "\n".join(signature)
             + "\n________________________________\nDe : ARS <ssi-pdl@ars.test>\nEnvoyé : lundi\nObjet : x\n\nTexte\n")
    html = ('<div>#clore Incident clos.</div><div><br></div><div id="Signature"><div>' + "<br>".join(signature)
            + '</div></div><div id="appendonsend"></div><hr><div>De : ARS &lt;ssi-pdl@ars.test&gt;<br>Envoyé : lundi'
            '<br>Objet : x</div><div>Texte</div>')
    assert new_text(parse_message(_alternative(plain, html)).text()) == "#clore Incident clos."


def test_without_a_marked_signature_the_plain_part_is_read_as_written() -> None:
    plain = "#clore Fausse alerte confirmée.\n\nPierre Martin\n"
    html = "<div>#clore Fausse alerte confirmée.</div><div>Pierre Martin</div>"
    assert parse_message(_alternative(plain, html)).text() == plain


def test_a_line_that_only_equals_the_signatures_first_is_no_signature() -> None:
    # An outside attacker: the signature began with « Cordialement, », as did the agent's own
    # closing above a PS; the PS vanished from the #repondre. A command equal to it was refused.
    signature = ["Cordialement,", "Pierre Martin", "Port. : 06 98 76 54 32"]
    plain = "#repondre Merci.\n\nCordialement,\n\nPS : gardez les journaux.\n\n" + "\n".join(signature) + "\n"
    html = ('<div>#repondre Merci.</div><div><br></div><div>Cordialement,</div><div><br></div>'
            '<div>PS : gardez les journaux.</div><div id="Signature"><div>' + "<br>".join(signature) + '</div></div>')
    assert new_text(parse_message(_alternative(plain, html)).text()) == (
        "#repondre Merci.\n\nCordialement,\n\nPS : gardez les journaux.")
