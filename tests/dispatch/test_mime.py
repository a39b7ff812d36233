"""The MIME writer: what it writes parses back to what was meant, and nothing untrusted escapes."""

from __future__ import annotations

import email
import quopri
from email import policy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgateway.dispatch import mime
from mailgateway.errors import PolicyRefusal


def _parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=policy.default)  # type: ignore[return-value]


def test_headers_and_parts_round_trip_through_the_email_package() -> None:
    head = [mime.address_header("From", "ssi-ara@ars.test", "ARS Auvergne-Rhône-Alpes - Cellule SSI"),
            mime.address_header("To", "dsi@chu.test"),
            mime.header("Subject", "[SSI-ARA-2026-0001] Accusé de réception — déclaration " * 3)]
    text = "Bonjour,\n\nRéférence : SSI-ARA-2026-0001\n" + "ligne très longue " * 20 + "\n"
    body = mime.multipart("alternative", [mime.text_part(text), mime.text_part("<p>Été</p>", "html")])
    raw = mime.serialise(body, head)
    msg = _parse(raw)
    assert msg["From"].addresses[0].display_name == "ARS Auvergne-Rhône-Alpes - Cellule SSI"
    assert str(msg["Subject"]) == ("[SSI-ARA-2026-0001] Accusé de réception — déclaration " * 3).strip()
    assert msg.get_body(("plain",)).get_content().replace("\r\n", "\n") == text
    assert msg.get_body(("html",)).get_content().strip() == "<p>Été</p>"
    assert all(len(line) <= 78 for line in raw.split(b"\r\n"))
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF everywhere


@given(st.text(max_size=300))
def test_no_text_can_add_a_header(value: str) -> None:
    raw = mime.serialise(mime.text_part("x"), [mime.header("Subject", value), mime.address_header("To", "a@b.test")])
    msg = _parse(raw)
    assert msg["Bcc"] is None and len(msg.get_all("To")) == 1
    assert str(msg["Subject"]) == " ".join(value.split())


@pytest.mark.parametrize("addr", ["a@b.test\r\nBcc: x@y.test", "a b@c.test", "<a@b.test>", "a@b.test, c@d.test",
                                  "", "a@", "a@b..test", "é@b.test"])
def test_bad_addresses_are_refused(addr: str) -> None:
    with pytest.raises(PolicyRefusal):
        mime.address_header("To", addr)


def test_header_names_are_checked() -> None:
    with pytest.raises(PolicyRefusal):
        mime.header("X-Evil: 1\r\nBcc", "x")


def test_attached_original_is_verbatim_and_the_boundary_never_collides() -> None:
    original = b"From: a@b.test\r\nSubject: orig\r\n\r\n=_mg looks like a boundary prefix \xc3\xa9\r\n"
    raw = mime.serialise(mime.multipart("mixed", [mime.text_part("x"), mime.message_part(original, "o.eml")]),
                         [mime.address_header("To", "a@b.test")])
    assert original in raw
    parts = [p.get_content_type() for p in _parse(raw).walk()]
    assert parts == ["multipart/mixed", "text/plain", "message/rfc822", "text/plain"]


def test_binary_parts_carry_content_id_and_safe_filenames() -> None:
    part = mime.binary_part(b"\x89PNG...", "image/png", disposition="inline", filename='a"b\r\n.png', content_id="c1")
    raw = mime.serialise(mime.multipart("related", [mime.text_part("<img src=cid:c1>", "html"), part]),
                         [mime.address_header("To", "a@b.test")])
    img = next(p for p in _parse(raw).walk() if p.get_content_type() == "image/png")
    assert img["Content-ID"] == "<c1>" and img.get_content() == b"\x89PNG..."
    assert img.get_filename() == "a_b__.png"


_LINE_ENDS_AND_QUOTED = st.sampled_from(["\r\n", "\r", "\n", " ", "\t", "=", "é", "\x0b", "\x85", "\u2028", "…",
                                         "x" * 74, "  \t"])


@given(st.lists(st.one_of(st.text(max_size=90), _LINE_ENDS_AND_QUOTED), max_size=12))
def test_quoted_printable_is_the_email_packages_byte_for_byte(pieces: list[str]) -> None:
    """The line-cached encoder (issue 19) writes exactly what ``quoprimime.body_encode`` writes:
    same soft breaks, same quoted trailing blanks, same line ends, whatever the text."""
    from email import quoprimime

    text = "".join(pieces)
    expected = quoprimime.body_encode(text.encode("utf-8").decode("latin-1"), maxlinelen=76, eol="\r\n")
    assert mime.quoted_printable(text) == expected.encode("ascii")
    assert mime.quoted_printable(text) == expected.encode("ascii")  # from the cache, the same


def test_a_long_line_is_encoded_but_not_kept() -> None:
    line = "é" * 5000
    before = mime._qp_line.cache_info().currsize
    encoded = mime.quoted_printable(line + "\n")
    assert mime._qp_line.cache_info().currsize == before
    assert max(len(x) for x in encoded.split(b"\r\n")) <= 76
    assert quopri.decodestring(encoded) == (line + "\r\n").encode("utf-8")
