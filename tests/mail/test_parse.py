"""The safe parsing layer survives every crash class of shared/corpus/README.md."""

from __future__ import annotations

import json

import pytest

from mailgateway.mail.analyse import analyse
from mailgateway.mail.context import AnalysisContext
from mailgateway.mail.headers import clean_charset, decode_header_value, parse_addresses
from mailgateway.mail.htmltext import html_to_text
from mailgateway.mail.parse import MAX_PARTS, parse_message
from tests.support.schema import assert_valid_facts

CRASH_CASES = {
    "1 Group.local_part": b"To: unlisted-recipients:; (no To-header on input)\n\nx\n",
    "2 CR/LF in address": b"From: =?UTF-8?Q?x=0Ay?= <c@d.example>\n\nx\n",
    "3 unknown charset": b"Content-Type: text/plain; charset=fakescii\n\nx\n",
    "3 charset=charset=": b'Content-Type: text/plain; charset="charset=us-ascii"\n\nx\n',
    "4 unknown maintype": b"Content-Type: signature/plain\n\nx\n",
    "5a split UTF-8 char": b"Subject: =?utf-8?q?" + b"=D0=B0" * 10 + b"=D0?= =?utf-8?q?=B0?=\n\nx\n",
    "5b 2047 + raw 8-bit": (
        "From: =?ISO-8859-1?Q?Maril=F9?= Gioffré ♥ <Marilù.Gioffré@esempio-università.it>\n\nx\n".encode()
    ),
    "6 empty related": (
        b'Content-Type: multipart/alternative; boundary="A"\n\n'
        b"--A\nContent-Type: text/html\n\n<p>x</p>\n"
        b'--A\nContent-Type: multipart/related; boundary="R"\n\nno parts\n'
        b"--A--\n"
    ),
}


@pytest.mark.parametrize("name", sorted(CRASH_CASES))
def test_known_stdlib_crash_classes_give_a_valid_object(name: str, ctx: AnalysisContext) -> None:
    facts = analyse(CRASH_CASES[name], ctx)
    assert_valid_facts(facts.to_json())


def test_split_utf8_character_across_encoded_words_is_joined() -> None:
    assert decode_header_value("=?utf-8?q?=D0=B0=D0?= =?utf-8?q?=B0?=") == "аа"


def test_encoded_word_with_newline_does_not_break_addresses() -> None:
    value = decode_header_value("=?UTF-8?Q?x=0Ay?= <c@d.example>")
    assert parse_addresses(value) == [("x y", "c@d.example")]


def test_group_with_comment_yields_no_address() -> None:
    assert parse_addresses("unlisted-recipients:; (no To-header on input)") == []


@pytest.mark.parametrize(
    ("declared", "expected"),
    [("UTF-8", "utf-8"), ("uft-8", "utf-8"), ('"charset=us-ascii"', "ascii"), ("fakescii", None), ("x-unknown", None)],
)
def test_charset_names_are_cleaned(declared: str, expected: str | None) -> None:
    assert clean_charset(declared) == expected


_DECLARATION = ("From: rssi@chu.test\r\nTo: ssi-ara@ars.test\r\nSubject: {subject}\r\n"
                "Message-ID: <cs@chu.test>\r\nDate: Fri, 27 Nov 2026 09:00:00 +0100\r\n"
                "Content-Type: text/plain; charset={charset}\r\n\r\n"
                "Bonjour,\r\nNuméro FINESS : 690781810\r\nType d'incident : rançongiciel\r\n{extra}\r\n")


@pytest.mark.parametrize("label", ["zlib_codec", "rot13", "hex", "base64", "uu", "bz2", "undefined",
                                   "unicode_escape", "raw_unicode_escape", "punycode", "idna"])
def test_a_codec_that_is_no_charset_is_read_as_an_unknown_label(label: str, ctx: AnalysisContext) -> None:
    """An outside tester: « charset=zlib_codec » quarantined a declaration (« LookupError: 'zlib' is
    not a text encoding »); Python's registry is not a list of charsets."""
    assert clean_charset(label) is None
    raw = _DECLARATION.format(subject="Incident", charset=label, extra="").encode("utf-8")
    facts = analyse(raw, ctx)
    assert facts.kind == "declaration" and facts.declaration is not None
    assert facts.declaration.incident_type == "RANCONGICIEL"


@pytest.mark.parametrize(("charset", "subject", "extra"), [
    ("utf-7", "Incident", "+2AA- serveurs chiffr+AOk-s"),  # UTF-7 decodes « +2AA- » to a lone surrogate
    ("unicode_escape", "Incident", "\\ud800 serveurs"),
    ("utf-8", "=?utf-7?q?+2AA-_Incident?=", ""),
    ("utf-8", "=?unicode_escape?q?Incident_=5Cud800?=", ""),
])
def test_no_decoded_text_holds_a_lone_surrogate(charset: str, subject: str, extra: str, ctx: AnalysisContext) -> None:
    """An outside tester: a body or an encoded word decoded to « \\ud800 », which neither the
    database nor ``parse --json`` can encode; a reply so made was quarantined. U+FFFD instead."""
    raw = _DECLARATION.format(subject=subject, charset=charset, extra=extra).encode("utf-8")
    facts = analyse(raw, ctx)
    assert facts.kind != "unknown" or "erreur" not in (facts.quarantine_reason or "")
    for text in (facts.subject, facts.body_text, facts.new_text,
                 json.dumps(facts.to_json(), ensure_ascii=False)):
        text.encode("utf-8")  # raises on a surrogate


def test_latin1_and_cp1252_bodies_are_decoded() -> None:
    raw = "Content-Type: text/plain; charset=windows-1252\n\nd\xe9claration \x80\n".encode("latin-1")
    assert parse_message(raw).text().startswith("déclaration €")


@pytest.mark.parametrize("label", ["iso-8859-1", "ISO-8859-1", "latin1", "iso_8859-1"])
def test_windows_1252_text_labelled_iso_8859_1_keeps_its_euro_quotes_and_dashes(label: str) -> None:
    """WHATWG Encoding: « iso-8859-1 » means windows-1252, as Outlook writes it. Found by an
    outside tester: « 2 000 000 € », « l’intention », « – » lost their characters (C1 controls)."""
    body = "L’attaquant réclame 2 000 000 € – nous n’avons pas l’intention de payer".encode("cp1252")
    raw = (f"Subject: =?{label}?Q?Accus=E9_de_r=E9ception_=96_ran=E7on_=80?=\n"
           f"Content-Type: text/plain; charset={label}\n\n").encode() + body + b"\n"
    pm = parse_message(raw)
    assert pm.text().startswith("L’attaquant réclame 2 000 000 € – nous n’avons pas l’intention de payer")
    assert pm.header("Subject") == "Accusé de réception – rançon €"
    # The five bytes windows-1252 leaves undefined stay what Latin-1 makes of them: nothing is lost.
    assert parse_message(b"Content-Type: text/plain; charset=iso-8859-1\n\na\x81b\n").text().startswith("a\x81b")


@pytest.mark.parametrize(
    ("label", "encoding"),
    [("utf-8", "latin-1"), ("utf-8", "cp1252"), ("iso-8859-1", "utf-8"), ("windows-1252", "utf-8"),
     ("iso-8859-15", "utf-8")],
)
def test_a_body_whose_charset_label_lies_is_decoded_as_written(label: str, encoding: str) -> None:
    """Outside attacker: Latin-1 bytes labelled utf-8 gave « Sainte-Th\ufffdr\ufffdse » and lost
    the incident type; UTF-8 bytes labelled Latin-1 gave « ThÃ©rÃ¨se »."""
    text = "Clinique Sainte-Thérèse : rançongiciel, les serveurs de la clinique sont chiffrés depuis ce matin."
    raw = f"Content-Type: text/plain; charset={label}\n\n".encode() + text.encode(encoding) + b"\n"
    assert parse_message(raw).text().startswith(text)


def test_one_latin1_line_in_a_utf8_body_spoils_nothing_else() -> None:
    """Outside tester: a Latin-1 disclaimer under UTF-8 text made the whole body Latin-1
    (« HÃ´pital Sainte-ThÃ©rÃ¨se ») and the incident type was lost."""
    raw = (b"Content-Type: text/plain; charset=utf-8\n\n" + "Hôpital Sainte-Thérèse : rançongiciel.\n".encode()
           + "Ce message et ses pièces jointes sont confidentiels.\n".encode("latin-1"))
    assert parse_message(raw).text().startswith(
        "Hôpital Sainte-Thérèse : rançongiciel.\nCe message et ses pièces jointes sont confidentiels.")


def test_undeclared_8bit_body_falls_back_without_error() -> None:
    raw = b"Content-Type: text/plain\n\nincident de s\xe9curit\xe9 sur le serveur de fichiers du site\n"
    assert "incident de s" in parse_message(raw).text()


def test_html_only_message_is_converted_without_script_or_style() -> None:
    text, links = html_to_text(
        "<html><head><style>p{}</style><script>alert(1)</script></head>"
        "<body><p>Bonjour</p><p>FINESS&nbsp;: <b>690781810</b></p><a href='http://x.example/a'>lien</a></body></html>"
    )
    assert "alert(1)" not in text and "p{}" not in text
    assert "Bonjour\nFINESS : 690781810" in text.replace("\n\n", "\n")
    assert links == ["http://x.example/a"]


def test_a_10000_part_tree_is_walked_within_bounds(ctx: AnalysisContext) -> None:
    parts = b"".join(b"--B\nContent-Type: text/plain\n\np%d\n" % i for i in range(MAX_PARTS + 50))
    raw = b'Content-Type: multipart/mixed; boundary="B"\n\n' + parts + b"--B--\n"
    facts = analyse(raw, ctx)
    assert_valid_facts(facts.to_json())


def test_deeply_nested_multiparts_do_not_exhaust_the_stack(ctx: AnalysisContext) -> None:
    depth = 2000
    head = b"".join(b'--b%d\nContent-Type: multipart/mixed; boundary="b%d"\n\n' % (i, i + 1) for i in range(depth))
    raw = b'Content-Type: multipart/mixed; boundary="b0"\n\n' + head + b"--b%d\n\nx\n" % depth
    facts = analyse(raw, ctx)
    assert_valid_facts(facts.to_json())


def test_oversized_message_is_quarantined_not_parsed(ctx: AnalysisContext) -> None:
    raw = b"From: a@b.example\nSubject: gros\n\n" + b"x" * (25 * 1024 * 1024 + 10)
    facts = analyse(raw, ctx)
    assert facts.kind == "unknown" and "volumineux" in (facts.quarantine_reason or "")
    assert facts.subject == "gros"


@pytest.mark.parametrize("raw", [b"", b"\x00\x01\x02garbage", b"\xd0\xcf\x11\xe0" + bytes(range(256)) * 4, b"\n\n\n"])
def test_garbage_input_gives_unknown_with_reason(raw: bytes, ctx: AnalysisContext) -> None:
    facts = analyse(raw, ctx)
    assert facts.kind == "unknown" and facts.quarantine_reason
    assert_valid_facts(facts.to_json())


def test_internal_exception_becomes_unknown_naming_it(ctx: AnalysisContext, monkeypatch: pytest.MonkeyPatch) -> None:
    import mailgateway.mail.analyse as module

    def boom(_raw: bytes) -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(module, "parse_message", boom)
    facts = analyse(b"Subject: x\n\ny\n", ctx)
    assert facts.kind == "unknown"
    assert "RuntimeError" in (facts.quarantine_reason or "") and "kaboom" in (facts.quarantine_reason or "")
