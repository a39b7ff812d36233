"""Text an outsider chose (a structure name, a quarantined subject) reaches staff as text, its
links defanged (outside attack: « Cliquez https://evil.test/login pour valider » as the
structure name became a clickable link in the subject of a DKIM-signed agency mail)."""

from __future__ import annotations

import html
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailgateway.dispatch.render import defang_text
from tests.support import casemail
from tests.support.casegateway import Gateway, make_gateway


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def test_a_link_in_a_structure_name_is_defanged_in_the_notification_subject(gw: Gateway) -> None:
    body = ("Bonjour,\n\nNuméro FINESS : 690781810\n"
            "Nom de la structure : Cliquez https://evil.test/login pour valider\n"
            "Type d'incident : rançongiciel\nGravité : grave\n")
    raw = casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject="Déclaration", body=body)
    assert gw.feed(raw).status == "processed"
    subject = str(casemail.parse(gw.last("notification_equipe", "agent@ars.test").raw)["Subject"])
    assert "https://evil.test" not in subject and "hxxps://evil[.]test/login" in subject


def test_a_link_in_a_structure_name_is_defanged_everywhere_staff_read_it(gw: Gateway) -> None:
    """Found by an outside tester: the subject was defanged but the notification's « Structure : »
    line (text and HTML parts) carried the raw URL, which mail clients turn into a link."""
    body = ("Bonjour,\n\nNuméro FINESS : 690781810\n"
            "Nom de la structure : CHU PIRATÉ http://evil.example/pay\n"
            "Type d'incident : rançongiciel\nGravité : grave\n")
    raw = casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject="Déclaration", body=body)
    assert gw.feed(raw).status == "processed"
    msg = casemail.parse(gw.last("notification_equipe", "agent@ars.test").raw)
    for kind in ("plain", "html"):  # the notification's own parts, not the original attached
        part = msg.get_body((kind,))
        assert part is not None
        content = part.get_content()
        assert "http://evil.example" not in content and "hxxp://evil[.]example/pay" in content


def test_the_notification_html_says_its_opening_line_once(gw: Gateway) -> None:
    """An outside tester: the HTML part said « Nouvelle déclaration d'incident reçue le … » in a
    paragraph, then again as the first line of the text version shown below it."""
    body = "Bonjour,\n\nNuméro FINESS : 690781810\nType d'incident : rançongiciel\nGravité : grave\n"
    raw = casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject="Déclaration", body=body)
    assert gw.feed(raw).status == "processed"
    msg = casemail.parse(gw.last("notification_equipe", "agent@ars.test").raw)
    for kind in ("plain", "html"):
        part = msg.get_body((kind,))
        assert part is not None
        assert html.unescape(part.get_content()).count("Nouvelle déclaration d'incident reçue") == 1, kind


@pytest.mark.parametrize(("text", "shown"), [
    ("revalidez sur www.ars-sso.test/agent?id=pdl avant 12h",
     "revalidez sur www[.]ars-sso[.]test/agent?id=pdl avant 12h"),
    ("le partage smb://srv.chu.test/compta", "le partage smb[:]//srv[.]chu[.]test/compta"),
    ("ouvrez file:///C:/facture.exe", "ouvrez file[:]///C:/facture.exe"),
    ("écrivez à mailto:rssi@evil.test", "écrivez à mailto[:]rssi[@]evil[.]test"),
    ("https://evil.test/x et ftp://evil.test/y", "hxxps://evil[.]test/x et fxp://evil[.]test/y"),
    ("ouvrez \\\\srv.evil.test\\partage\\facture.exe vite",
     "ouvrez [\\\\]srv[.]evil[.]test\\partage\\facture[.]exe vite"),
    ("le partage \\\\10.0.0.5\\c$", "le partage [\\\\]10[.]0[.]0[.]5\\c$"),
    ("un chemin C:\\dossier\\x.txt reste tel quel", "un chemin C:\\dossier\\x.txt reste tel quel"),
    # Any scheme, a bare host with a path, three backslashes, a bracketed host (late outside tester).
    ("telnet://evil.test ldap://evil.test/cn", "telnet[:]//evil[.]test ldap[:]//evil[.]test/cn"),
    ("webcal://evil.test/c.ics et news:comp.lang", "webcal[:]//evil[.]test/c.ics et news[:]comp[.]lang"),
    ("connectez-vous sur evil.example/login", "connectez-vous sur evil[.]example/login"),
    ("\\\\\\evil.test\\s et \\\\[::1]\\s", "[\\\\]evil[.]test\\s et [\\\\][::1]\\s"),
    ("écrivez à rssi@chu.test le 27/11/2026", "écrivez à rssi@chu.test le 27/11/2026"),
    # Whatever precedes the scheme, any host form, the long UNC form (late outside tester).
    ("_https://evil.example:8443/login éhttps://evil.example?sso=1",
     "_hxxps://evil[.]example:8443/login éhxxps://evil[.]example?sso=1"),
    ("_https://192.0.2.66/x.exe", "_hxxps://192[.]0[.]2[.]66/x.exe"),
    ("aaaaaaaaaaaaaaaaaaaahttps://evil.example:443/", "aaaaaaaaaaaaaaaaaaaahttps[:]//evil[.]example:443/"),
    ("evil.example:8080/login evil.example?x evil.example#x",
     "evil[.]example:8080/login evil[.]example?x evil[.]example#x"),
    ("\\\\?\\UNC\\evil.example\\share\\x.lnk", "[\\\\]?\\UNC\\evil[.]example\\share\\x[.]lnk"),
    ("un fichier.txt : voir à 10h30: rdv", "un fichier.txt : voir à 10h30: rdv"),
    # Schemes without « // » and a host outside ASCII (an outside attacker's forged receipt).
    ("data:text/html,x javascript:alert(1) callto:+33600000000 ms-settings:privacy",
     "data[:]text/html,x javascript[:]alert(1) callto[:]+33600000000 ms-settings[:]privacy"),
    ("connectez-vous sur ars-pdl-sécurité.fr/login", "connectez-vous sur ars-pdl-sécurité[.]fr/login"),
    # Round 3: « ftp. » as « www. », a scheme's colon without slashes, Outlook's autoformat schemes,
    # ideographic full stops.
    ("ftp.evil.example https:evil.example telnet:evil ldap:x", "ftp[.]evil[.]example https[:]evil[.]example "
     "telnet[:]evil ldap[:]x"),
    ("www。evil。example/login", "www[.]evil[.]example/login"),
])
def test_every_link_a_mail_client_makes_is_defanged(text: str, shown: str) -> None:
    """Found by an outside tester: only http(s) and ftp links were defanged; a bare « www. » host,
    a share or a file path stayed a link a click away in staff mail. A Windows share path (UNC)
    too: Outlook links it, and opening it sends the agent's Windows credentials to its host."""

    assert defang_text(text) == shown
    assert defang_text(shown) == shown  # defanging twice changes nothing


def test_every_value_an_inward_template_prints_is_defanged(tmp_path: Path) -> None:
    """Mail to staff and to the national cell defangs whatever it prints (Jinja ``finalize``), so
    a template that forgets « | defang_text » on an outsider's field cannot carry a live link.
    Found by an outside tester, field after field: the From of the quarantine notice, a reply's
    subject, a structure name in reminders, an attachment name. Mail to establishments prints
    staff's words as written."""
    from mailgateway.dispatch.render import INWARD_TEMPLATES, Renderer

    for name in ("rappel", "bulletin"):
        (tmp_path / f"{name}.subject.j2").write_text("{{ x }}")
        (tmp_path / f"{name}.txt.j2").write_text("Structure : {{ x }} {{ n }} {{ x | upper }}\n")
        (tmp_path / f"{name}.html.j2").write_text("<p>{{ x }}</p>")
    renderer = Renderer(str(tmp_path))
    context = {"x": "https://evil.test/pay", "n": 3}
    inward = renderer.render("rappel", context)
    assert inward.subject == "hxxps://evil[.]test/pay"
    assert inward.text == "Structure : hxxps://evil[.]test/pay 3 hxxps://EVIL[.]TEST/PAY\n"
    assert inward.html == "<p>hxxps://evil[.]test/pay</p>"
    outward = renderer.render("bulletin", context)
    assert outward.text == "Structure : https://evil.test/pay 3 HTTPS://EVIL.TEST/PAY\n"
    assert {"staff_notification", "quarantaine", "reponse_recue", "rappel", "transmission_acss"} <= INWARD_TEMPLATES
    assert not {"acknowledgement", "bulletin", "alerte_relais", "reponse", "cloture_declarant"} & INWARD_TEMPLATES


def test_a_link_in_a_replys_subject_is_defanged_for_staff(gw: Gateway) -> None:
    """Found by an outside tester: « Réponse reçue » printed « Objet : » as the sender wrote it."""
    ref = gw.declare()
    subject = f"RE: [{ref}] Reconnectez-vous sur https://evil.test/ars www.evil.fr \\\\evil3.test\\s"
    gw.feed(casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject=subject, body="Voir objet."))
    notice = gw.last("notification_reponse", "agent@ars.test")
    msg = casemail.parse(notice.raw)
    for kind in ("plain", "html"):
        part = msg.get_body((kind,))
        assert part is not None
        content = part.get_content()
        assert "https://evil.test" not in content and "www.evil.fr" not in content and "\\\\evil3" not in content
        assert "hxxps://evil[.]test/ars" in content


def test_the_acknowledgement_defangs_what_even_a_verified_declarant_wrote(gw: Gateway) -> None:
    """A structure name or subject with a link comes back to its own (authenticated) declarant as
    text, not as a link in a mail the agency signs (outside tester, second pass)."""
    body = ("Numéro FINESS : 690781810\nNom de la structure : CHU https://evil.test/portail\n"
            "Type d'incident : rançongiciel\nGravité : grave\n")
    raw = casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject="Déclaration www.evil.test/x",
                           body=body)
    assert gw.feed(casemail.sign(raw, casemail.establishment_key())).status == "processed"
    msg = casemail.parse(gw.last("accuse_reception", "dsi@chu.test").raw)
    for kind in ("plain", "html"):
        part = msg.get_body((kind,))
        assert part is not None
        content = part.get_content()
        assert "https://evil.test" not in content and "www.evil.test" not in content
        assert "hxxps://evil[.]test/portail" in content and "www[.]evil[.]test/x" in content


@pytest.mark.parametrize(
    ("text", "kept_out"),
    [("voir http\uff1a//evil.test/x", "http"), ("voir https\ufe55//evil.test/x", "https"),
     ("https:/evil.test/d", "https:"), ("http:\\evil.test\\share", "http:"),
     ("https\u05c3//evil5.example/a", "https"), ("https\u02f8//evil6.example/a", "https"),
     ("https\uff1a\uff0f\uff0fevil24.example", "https")],
)
def test_lookalike_colons_and_single_slash_schemes_are_defanged(text: str, kept_out: str) -> None:
    # Outside attacker: « http：//evil.test/x » (fullwidth colon) and « https:/evil.test/d »
    # reached staff mail unchanged.
    shown = defang_text(text)
    assert kept_out not in shown.replace("hxxp", ""), shown
    assert defang_text(shown) == shown


# Pieces of what the passes look for (schemes, hosts, « www. », IPv4, ports, shares, lookalike
# colons and slashes), joined at random: each pass is reached often, not by luck.
_PIECES = ["www", "WwW", ".", "evil", "example", "fr", "/", ":", "//", "http", "https", "HTTP", "ftp", "mailto", "tel",
           "\\", "\\\\", "1", "10", "192", "x", " ", "\n", "\uff1a", "\u05c3", "\uff0f", "é", "?", "#", "8080", "@",
           "-", "\u212a", "\u017f", "\u0131", "\u0130", "\u0662", "sip", "news", "webcal", "s\u0131p", "\u017fip"]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=14).map("".join))
@example("evil.example:8080 x")
@example("voir WWW.evil.fr")
@example("ſip:x")
@example("a\\\\b.c")
@example("voir https:\\evil.fr")
@example("httpſ:\\")
def test_the_shortcut_for_values_without_colon_dot_or_backslash_changes_nothing(text: str) -> None:
    """Issue 19: a value with no colon, dot or backslash (after colon lookalikes are read as
    colons) skips the passes, and each pass is skipped when the text lacks what its pattern
    needs (ASCII text has no lookalike to translate); every pass run unconditionally gives the
    same text."""
    from mailgateway.dispatch import render

    every_pass = render._SINGLE_SLASH_SCHEME.sub(render._defang_single_slash, text.translate(render._COLON_LOOKALIKES))
    every_pass = render._URL_IN_TEXT.sub(render._defang_link, render._defang_schemes(every_pass))
    every_pass = render._UNC_IN_TEXT.sub(render._defang_share, every_pass)
    assert defang_text(text) == every_pass


def test_every_colon_lookalike_is_outside_ascii() -> None:
    """``defang_text`` translates only text that is not ASCII."""
    from mailgateway.dispatch.render import _COLON_LOOKALIKES
    assert all(code > 127 for code in _COLON_LOOKALIKES)


@pytest.mark.parametrize(("text", "shown"), [
    ("voir www.chu-nantes.test.", "voir www[.]chu-nantes[.]test."),
    ("sur decrypt-chu.evil.test/pay.", "sur decrypt-chu[.]evil[.]test/pay."),
    ("le domaine evil-cdn.test:8080.", "le domaine evil-cdn[.]test:8080."),
    ("écrire à mailto:a@b.fr !", "écrire à mailto[:]a[@]b[.]fr !"),
    ("le partage \\\\srv.chu.test\\commun.", "le partage [\\\\]srv[.]chu[.]test\\commun."),
])
def test_a_sentences_punctuation_after_a_link_stays_text(text: str, shown: str) -> None:
    """Outside tester: « www[.]chu-nantes[.]test[.] », the final full stop bracketed too."""
    assert defang_text(text) == shown


def test_a_scheme_with_a_letter_outside_ascii_is_text_not_a_failure() -> None:
    """« httpſ:/… » (long s) matched the single-slash pass under Unicode case folding and made
    rendering raise; a URI scheme is ASCII (RFC 3986 §3.1), so it is text. A real one still loses
    its scheme."""
    assert defang_text("httpſ:/evil") == "httpſ[:]/evil"  # text (its colon bracketed since « https: » is read)
    assert defang_text("HTTPS:/evil.fr") == "hxxps:/evil.fr"
