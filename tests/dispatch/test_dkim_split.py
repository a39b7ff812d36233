"""The signer's message split is dkimpy's ``rfc822_parse``, byte for byte (dispatch/dkim.py
``_split``: the body is no longer split into lines when that changes nothing). What is signed
must be what dkimpy — and so every verifier built like it — reads, or signatures break."""

from __future__ import annotations

import itertools

import dkim
import pytest

from mailgateway.dispatch.dkim import _split

HEADS = [b"From: a@b.test\r\nTo: c@d.test\r\n", b"From: a@b.test\r\nSubject: x\r\n y\r\n", b"",
         b"From a@b Sat\r\nFrom: a@b.test\r\n", b"From: a@b.test\r\r\nX: 1\r\n", b"From: a@b.test\nTo: c@d.test\n"]
SEPARATORS = [b"\r\n", b"\n", b"", b"\r\n\r\n"]
BODIES = [b"", b"hello\r\n", b"a\r\n\r\nb\r\n", b"bare\nlf\r\n", b"cr\r\r\nx", b"\r\n\r\n\r\n", b"x" * 3000 + b"\r\n",
          b"tail without newline", b"\r\n"]


@pytest.mark.parametrize(("head", "sep", "body"), list(itertools.product(HEADS, SEPARATORS, BODIES)))
def test_split_is_rfc822_parse(head: bytes, sep: bytes, body: bytes) -> None:
    message = head + sep + body
    try:
        expected = dkim.rfc822_parse(message)
    except dkim.MessageFormatError:
        with pytest.raises(dkim.MessageFormatError):
            _split(message)
        return
    assert _split(message) == expected


def test_a_composed_bulletin_takes_the_fast_path_and_verifies() -> None:
    # The fast path is taken for CRLF mail (the body returned is the message's own tail).
    message = b"From: a@b.test\r\nTo: c@d.test\r\n\r\n" + b"QUJD" * 19 + b"\r\n"
    headers, body = _split(message)
    assert body == message[message.index(b"\r\n\r\n") + 4:]
    assert [h[0] for h in headers] == [b"From", b"To"]
