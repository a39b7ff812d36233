"""Staff commands carry the whole text written after them, as mail clients really send it (issue 17).

Before: the declarant received "Bonjour, merci pour votre déclaration. Le CERT Santé va vous"
(Thunderbird wraps at 72 columns with format=flowed, and only the first physical line was read),
and "Merci de préciser :" with the three questions of ``#demander-info`` dropped, while staff were
told ``[appliquée]``. Every test sends a signed staff mail through the pipeline (``Gateway``) in a
real client format, and reads the mail the declarant receives and the staff receipt.
"""

from __future__ import annotations

import quopri
import re
import textwrap
from collections.abc import Iterator
from email.header import Header

import pytest

from mailgateway.mail.flowed import unflow
from tests.support import casemail
from tests.support.casegateway import Gateway, make_gateway

DECLARANT = "dsi@chu.test"
LONG = ("Bonjour, merci pour votre déclaration. Le CERT Santé va vous contacter dans la journée pour "
        "organiser l'analyse des serveurs chiffrés ; conservez les journaux et ne redémarrez rien.")
QUESTIONS = ["1. Combien de postes sont touchés ?", "2. Les sauvegardes sont-elles intactes ?",
             "3. Avez-vous déposé plainte ?"]
QUOTED_FR = ("Le 27/11/2026 à 09:00, ARS Auvergne-Rhône-Alpes - Cellule SSI a écrit :\n"
             "> Nouvelle déclaration SSI-ARA-2026-0001\n> #repondre TEXTE CITÉ À NE PAS ENVOYER\n")


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


# --- how the clients write ---------------------------------------------------------------------


def thunderbird(text: str, width: int = 72) -> str:
    """format=flowed as Thunderbird writes it (RFC 3676 §4.2): long lines cut at a space, each soft
    break marked by the trailing space; blank lines and the "-- " separator are hard lines."""
    out: list[str] = []
    for line in text.split("\n"):
        if len(line) <= width or line.startswith(">"):
            out.append(line)
            continue
        pieces = textwrap.wrap(line, width, break_long_words=False, drop_whitespace=True)
        out.extend(piece + " " for piece in pieces[:-1])
        out.append(pieces[-1])
    return "\n".join(out)


def delsp(text: str, width: int = 72) -> str:
    """format=flowed; DelSp=yes: cut anywhere, even inside a word, a space added at each cut (§4.1)."""
    out: list[str] = []
    for line in text.split("\n"):
        while len(line) > width:
            out.append(line[:width] + " ")
            line = line[width:]
        out.append(line)
    return "\n".join(out)


def reply(gw: Gateway, ref: str, content_type: str, body: bytes, cte: str = "8bit") -> bytes:
    """A signed staff reply to the staff notification of ``ref``, with the given body part."""
    notification = gw.notification(ref, "agent@ars.test")
    subject = Header(f"RE: [{ref}] Nouvelle déclaration", "utf-8").encode()
    head = (f"From: Agent SSI <agent@ars.test>\r\nTo: ssi-ara@ars.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <r-{abs(hash(body))}@ars.test>\r\nDate: {casemail.DATE}\r\n"
            f"In-Reply-To: {notification.message_id}\r\nReferences: {notification.message_id}\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n")
    return casemail.sign(head.encode() + body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))


def outlook_html(paragraphs: list[str], quoted: str) -> bytes:
    """Outlook desktop, HTML only, windows-1252, quoted-printable: one <p class=MsoNormal> per typed
    line, an empty line is <p class=MsoNormal>&nbsp;</p>, the quoted mail under a "De : / Envoyé :" block."""
    lines = "\n".join(f"<p class=MsoNormal>{p or '<o:p>&nbsp;</o:p>'}<o:p></o:p></p>" for p in paragraphs)
    markup = (
        "<html xmlns:o=\"urn:schemas-microsoft-com:office:office\"><head>"
        "<meta http-equiv=Content-Type content=\"text/html; charset=windows-1252\">"
        "<style><!-- p.MsoNormal {margin:0cm; font-size:11.0pt;} --></style></head>"
        "<body lang=FR link=\"#0563C1\"><div class=WordSection1>\n" + lines + "\n"
        "<div style='border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm'>"
        "<p class=MsoNormal><b>De&nbsp;:</b> ARS Auvergne-Rh&ocirc;ne-Alpes - Cellule SSI &lt;ssi-ara@ars.test&gt;"
        "<br><b>Envoy&eacute;&nbsp;:</b> vendredi 27 novembre 2026 09:00<br><b>&Agrave;&nbsp;:</b> Agent SSI"
        "<br><b>Objet&nbsp;:</b> [SSI-ARA-2026-0001] Nouvelle d&eacute;claration<o:p></o:p></p></div>"
        f"<p class=MsoNormal>{quoted}<o:p></o:p></p></div></body></html>"
    )
    return quopri.encodestring(markup.encode("cp1252"))


def declarant_mail(gw: Gateway, kind: str) -> str:
    return casemail.text_of(gw.last(kind, DECLARANT).raw).replace("\r\n", "\n")


def receipt(gw: Gateway) -> str:
    return gw.receipt_text().replace("\r\n", "\n")


# --- tests -------------------------------------------------------------------------------------


def test_flowed_unwrapping_follows_rfc_3676() -> None:
    assert unflow(thunderbird(LONG)) == LONG
    assert unflow(delsp(LONG), delsp=True) == LONG
    wide = "a" * 70
    assert unflow(f"{wide} \nb\n-- \nsig") == f"{wide} b\n-- \nsig"  # the signature separator is never flowed
    assert unflow(f"> {wide} \n> q2\nnew") == f"> {wide} q2\nnew"  # quote depth kept
    assert unflow(" >stuffed") == ">stuffed"  # space-stuffing undone (§4.4)


def test_thunderbird_flowed_reply_reaches_the_declarant_whole(gw: Gateway) -> None:
    ref = gw.declare()
    body = (f"#repondre {LONG}\n\nNous restons à votre disposition au 04 00 00 00 00.\nCordialement,\n"
            f"-- \nAgent SSI\nARS ARA\n\n{QUOTED_FR}")
    assert max(len(line) for line in thunderbird(body).split("\n")) <= 73
    result = gw.feed(reply(gw, ref, "text/plain; charset=UTF-8; format=flowed", thunderbird(body).encode()))
    assert result.status == "processed"
    sent = declarant_mail(gw, "reponse")
    assert LONG in sent  # one line again, as typed
    assert "Nous restons à votre disposition au 04 00 00 00 00.\nCordialement," in sent
    assert "Agent SSI\nARS ARA" not in sent and "TEXTE CITÉ" not in sent and "a écrit" not in sent
    text = receipt(gw)
    assert "[appliquée] #repondre Bonjour, merci pour votre déclaration." in text
    assert f"    | {LONG}" in text and "    | Cordialement," in text  # the full text, quoted
    assert "TEXTE CITÉ" not in text


def test_delsp_yes_flowed_text_is_joined_without_the_added_spaces(gw: Gateway) -> None:
    ref = gw.declare()
    body = f"#note {LONG}\n"
    gw.feed(reply(gw, ref, 'text/plain; charset="utf-8"; format="flowed"; delsp="yes"', delsp(body).encode()))
    notes = [e for e in gw.events(ref) if e.type == "note"]
    assert notes and LONG in str(notes[-1].data), notes


def test_three_questions_of_demander_info_all_reach_the_declarant(gw: Gateway) -> None:
    ref = gw.declare()
    body = ("#demander-info Merci de préciser :\n" + "\n".join(QUESTIONS) + "\n\nBien cordialement,\nL'équipe SSI\n"
            "#note questions envoyées au déclarant\nrelance prévue lundi\n"
            "On Fri, 27 Nov 2026 at 09:00, ARS <ssi-ara@ars.test> wrote:\n> #clore cité\n")
    gw.command(ref, body)
    sent = declarant_mail(gw, "demande_info")
    assert "Merci de préciser :\n" + "\n".join(QUESTIONS) + "\n\nBien cordialement,\nL'équipe SSI" in sent
    assert "relance prévue" not in sent and "#note" not in sent  # the next command ends the text
    text = receipt(gw)
    assert "[appliquée] #demander-info Merci de préciser :" in text
    for question in QUESTIONS:
        assert f"    | {question}" in text
    assert "[appliquée] #note questions envoyées au déclarant" in text and "    | relance prévue lundi" in text
    assert "#clore cité" not in text and gw.case(ref).status != "CLOS"  # the English attribution ends it


def test_outlook_html_only_paragraphs_are_lines_and_the_quoted_block_is_left_out(gw: Gateway) -> None:
    ref = gw.declare()
    paragraphs = ["#demander-info Bonjour,", "", "Pour compléter votre déclaration, merci de préciser :",
                  *QUESTIONS, "", "Cordialement,", "Agent SSI – ARS Auvergne-Rhône-Alpes"]
    gw.feed(reply(gw, ref, 'text/html; charset="windows-1252"', outlook_html(paragraphs, "#clore cité"),
                  cte="quoted-printable"))
    sent = declarant_mail(gw, "demande_info")
    expected = "\n".join(paragraphs[2:])
    assert "Bonjour,\n\n" + expected in sent, sent
    assert "Envoyé" not in sent and "#clore" not in sent
    text = receipt(gw)
    assert "[appliquée] #demander-info Bonjour," in text and "    | " + QUESTIONS[2] in text
    assert "    | Agent SSI – ARS Auvergne-Rhône-Alpes" in text and gw.case(ref).status != "CLOS"


def test_outlook_plain_text_with_message_d_origine_and_a_multi_line_closing_reason(gw: Gateway) -> None:
    ref = gw.declare()
    body = ("#clore Incident résolu par l'établissement.\nSauvegardes restaurées le 26/11, aucun vol de données.\n\n"
            "-----Message d'origine-----\nDe : ARS ARA <ssi-ara@ars.test>\nEnvoyé : vendredi 27 novembre 2026 09:00\n"
            "#rouvrir cité\n")
    gw.command(ref, body)
    text = receipt(gw)
    assert "[appliquée] #clore Incident résolu" in text
    assert "    | Sauvegardes restaurées le 26/11, aucun vol de données." in text
    assert "#rouvrir" not in text and gw.case(ref).status == "CLOS"
    closed = [e for e in gw.events(ref) if e.data and "aucun vol de données" in str(e.data)]
    assert closed, "the whole closing reason is on the timeline"


def test_from_sent_block_ends_the_text(gw: Gateway) -> None:
    ref = gw.declare()
    body = ("#repondre Bien reçu, nous revenons vers vous.\nÀ bientôt.\n\n"
            "From: ARS ARA <ssi-ara@ars.test>\nSent: Friday, November 27, 2026 9:00 AM\nTo: Agent\n"
            "Subject: dossier\nLigne citée\n")
    gw.command(ref, body)
    sent = declarant_mail(gw, "reponse")
    assert "Bien reçu, nous revenons vers vous.\nÀ bientôt." in sent and "Ligne citée" not in sent


def test_a_pending_closing_quotes_its_reason_and_says_it_is_not_applied(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#qualifier grave\n#clore Rançongiciel maîtrisé,\nréseau isolé et restauré.\n")
    text = receipt(gw)
    assert "[appliquée] #qualifier grave" in text
    assert "[en attente de confirmation] #clore Rançongiciel maîtrisé," in text and "[appliquée] #clore" not in text
    assert "    | réseau isolé et restauré." in text and "pas encore appliquée" in text
    token = re.search(r"#confirmer ([0-9a-f]{12})", text)
    assert token and text.index("réseau isolé") < text.index(token.group(0))
    assert gw.case(ref).status != "CLOS"
    gw.command(ref, f"#confirmer {token.group(1)}\n")
    text = receipt(gw)
    assert f"[appliquée] #confirmer {token.group(1)}" in text and "en attente" not in text
    assert gw.case(ref).status == "CLOS"


def test_text_ends_at_the_signature_even_without_a_quote(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#repondre Merci.\nLe dossier est suivi.\n-- \nAgent SSI\n#clore sous la signature\n")
    sent = declarant_mail(gw, "reponse")
    assert "Merci.\nLe dossier est suivi." in sent and "Agent SSI" not in sent
    assert gw.case(ref).status != "CLOS"


def test_two_pending_commands_of_one_mail_each_get_their_token(gw: Gateway) -> None:
    ref = gw.declare(1)
    other = gw.declare(2, finess="690000017")
    gw.command(ref, f"#qualifier grave\n#fusionner {other}\n#clore doublon\n")
    text = receipt(gw)
    assert f"[en attente de confirmation] #fusionner {other}" in text
    assert "[en attente de confirmation] #clore doublon" in text and "[appliquée] #clore" not in text
    tokens = re.findall(r"^#confirmer ([0-9a-f]{12}) +\(#(\w+)\)$", text, re.M)
    assert [name for _token, name in tokens] == ["fusionner", "clore"], text
    assert "Ces commandes ne sont pas encore appliquées" in text
    assert gw.case(ref).status != "CLOS" and gw.case(ref).merged_into_id is None


def test_hostile_flowed_and_command_text_is_read_in_linear_time() -> None:
    import time

    from mailgateway.mail.commands import parse_commands
    from mailgateway.mail.labels import load_labels

    start = time.perf_counter()
    joined = unflow(("x" * 70 + " \n") * 20_000 + "> \n>> \n" * 50_000, delsp=True)
    assert joined.startswith("x" * 1000)
    commands = parse_commands("#note a\n" + "b\n" * 200_000 + "#" * 10_000 + "\n", load_labels())
    assert len(commands[0].args[0]) <= 20_000
    assert time.perf_counter() - start < 5.0


def test_a_command_line_after_a_wide_line_ending_in_a_space_stays_a_command(gw: Gateway) -> None:
    # An outside tester (an agent's client leaving a space at the end of a hard line): the 68-column
    # « #repondre » line was joined with the « #note » below it, and the internal note was mailed to
    # the establishment. Neither a command line nor the signature separator is ever a continuation.
    ref = gw.declare()
    answer = "Bonjour, merci pour votre déclaration ; le CERT Santé vous rappelle."
    body = (f"#repondre {answer} \n#note INTERNE : le directeur a refusé l'isolement du serveur.\n"
            f"-- \nAgent SSI, 06 00 00 00 00\n")
    assert len(body.split("\n")[0]) >= 60
    result = gw.feed(reply(gw, ref, "text/plain; charset=UTF-8; format=flowed", body.encode()))
    assert result.status == "processed"
    sent = declarant_mail(gw, "reponse")
    assert answer in sent
    assert "INTERNE" not in sent and "06 00 00 00 00" not in sent and "-- " not in sent
    notes = [e for e in gw.events(ref) if e.type == "note"]
    assert len(notes) == 1 and "le directeur a refusé" in str(notes[0].data)


def test_an_attribution_after_a_wide_line_ending_in_a_space_is_not_sent(gw: Gateway) -> None:
    ref = gw.declare()
    answer = "Bonjour, merci pour votre déclaration ; le CERT Santé vous rappelle."
    body = f"#repondre {answer} \nLe 05/12/2026 à 20:03, Marie Exemple a écrit :\n> Bonjour,\n"
    gw.feed(reply(gw, ref, "text/plain; charset=UTF-8; format=flowed", body.encode()))
    sent = declarant_mail(gw, "reponse")
    assert answer in sent and "a écrit" not in sent
