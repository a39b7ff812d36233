"""The signer's message split is dkimpy's ``rfc822_parse``, byte for byte (dispatch/dkim.py
``_split``: the body is no longer split into lines when that changes nothing). What is signed
must be what dkimpy — and so every verifier built like it — reads, or signatures break."""

from __future__ import annotations

import itertools

import dkim
import pytest
from dkim.canonicalization import Relaxed
from hypothesis import given
from hypothesis import strategies as st

from mailgateway.dispatch.dkim import OVERSIGNED_HEADERS, _plain_split, _relaxed_plain_value, _select_headers, _split

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


# Header blocks as we compose them and as we never do: folded, tabs, blanks around the colon,
# repeated fields, names of every case, long values, a bare CR, a "From " line, non-ASCII.
_NAMES = st.sampled_from([b"From", b"from", b"To", b"Subject", b"SUBJECT", b"Date", b"Message-ID", b"Cc",
                          b"Received", b"X-Mailgateway-Loop", b"Content-Type", b"References", b"Reply-To"])
_VALUES = st.lists(st.sampled_from([b" a@b.test", b"\t x", b"  two  blanks ", b"", b" =?utf-8?b?w6k=?=",
                                    b"\r\n folded", b"\r\n\tfolded by a tab", b" trailing \t", b":", b" \xc3\xa9",
                                    b"\r bare cr", b" " + b"y" * 90]), max_size=4).map(b"".join)
_FIELDS = st.lists(st.one_of(st.tuples(_NAMES, _VALUES).map(lambda f: f[0] + b":" + f[1]),
                             st.sampled_from([b"From a@b Sat", b" continuation", b"No colon", b"Bad name: x",
                                              b"\tx"])), min_size=1, max_size=8)


@given(_FIELDS, st.sampled_from([b"", b"body\r\n", b"a  b \r\n\r\n", b"lf\nonly\r\n"]))
def test_the_plain_split_is_rfc822_parse_and_canonicalises_as_dkimpy(fields: list[bytes], body: bytes) -> None:
    """Where ``_plain_split`` answers, dkimpy's ``rfc822_parse`` gives the same fields and body,
    and the relaxed canonical values and the bottom-up selection are dkimpy's (issue 19's faster
    signer must sign exactly what every verifier built like dkimpy reads)."""
    message = b"\r\n".join(fields) + b"\r\n\r\n" + body
    plain = _plain_split(message)
    if plain is None:
        return
    assert plain == dkim.rfc822_parse(message)
    headers = plain[0]
    expected = Relaxed.canonicalize_headers(headers)
    assert [(n.lower(), _relaxed_plain_value(v)) for n, v in headers] == expected
    include = [n for n, _ in expected] + list(OVERSIGNED_HEADERS)
    assert _select_headers(expected, include) == dkim.select_headers(expected, include)


@pytest.mark.parametrize("message", [
    b"From: a@b.test\r\nTo: c@d.test\r\n\r\nx\r\n",
    b"From: a@b.test\r\nSubject:  folded\r\n\tover  two lines \r\nTo: c@d.test\r\n\r\n",
])
def test_our_plain_mail_takes_the_plain_split(message: bytes) -> None:
    assert _plain_split(message) == dkim.rfc822_parse(message)


@pytest.mark.parametrize("message", [
    b"From a@b Sat\r\nFrom: a@b.test\r\n\r\nx",  # mbox line: dkimpy skips it
    b"From: a@b.test\r\nNo colon here\r\n\r\nx",  # dkimpy refuses it
    b" leading continuation\r\nFrom: a@b.test\r\n\r\nx",
    b"From: \xc3\xa9@b.test\r\n\r\nx",  # not ASCII
    b"From: a@b.test\nTo: c@d.test\n\nx",  # LF line ends
    b"From: a@b.test\r\rTo: c@d.test\r\n\r\nx",  # bare CR
    b"\r\nFrom: a@b.test\r\n\r\nx",  # no header block
])
def test_anything_else_goes_to_dkimpy(message: bytes) -> None:
    assert _plain_split(message) is None
