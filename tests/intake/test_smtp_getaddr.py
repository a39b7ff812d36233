"""``GatewaySMTP._getaddr`` answers exactly as aiosmtpd's (which it replaces to stop defining a
``typing.Protocol`` class at every MAIL FROM and RCPT TO: ≈60 µs each, issue 19), except for paths
the stdlib header parser decodes: an RFC 2047 encoded word is refused — an SMTP path has none
(RFC 5321 §4.1.2)."""

from __future__ import annotations

import time

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgateway.intake.smtp import _PLAIN_PATH, GatewaySMTP

ARGS = [  # none with an encoded word (below)
    "", " ", "<>", "<a@b.fr>", "a@b.fr", "<a@b.fr> SIZE=1234", "a@b.fr SIZE=1 BODY=8BITMIME",
    '<"quoted local"@chu.fr>', "<@relay.fr:rssi@chu.fr>", "<a@b.fr", "a b@c", "<a@[127.0.0.1]>",
    "<é@chu.fr>", "<rssi@chü.fr>", "<" + "x" * 80 + "@chu.fr>", "<a@b.fr>>", "<<a@b.fr>", "<a@>", "<@b.fr>",
    "<a@b.fr> \t", "<(note)a@b.fr>", "<a.@b.fr>", "<a..b@c.fr>", "\x00<a@b.fr>", "<a@b.fr>\r\n",
]


def _bare(cls: type[SMTP], limit: int) -> SMTP:
    server = cls.__new__(cls)  # _getaddr reads nothing but local_part_limit
    server.local_part_limit = limit
    return server


@pytest.mark.parametrize("limit", [0, 64])
def test_same_answers_as_aiosmtpd(limit: int) -> None:
    ours, theirs = _bare(GatewaySMTP, limit), _bare(SMTP, limit)
    for arg in ARGS:
        assert ours._getaddr(arg) == theirs._getaddr(arg), arg


@pytest.mark.parametrize("arg", ["<=?utf-8?q?ssi-ara?=@ars.sante.fr>", "=?utf-8?q?x?=@chu.fr",
                                 "<=?utf-8?b?c3NpLWFyYQ==?=@ars.sante.fr> SIZE=10"])
def test_encoded_words_are_refused_not_decoded(arg: str) -> None:
    assert _bare(SMTP, 0)._getaddr(arg)[0] not in (None, "")  # what aiosmtpd would have taken
    assert _bare(GatewaySMTP, 0)._getaddr(arg) == (None, None)


_PIECES = st.sampled_from(["<", ">", "a", "B", "1", ".", "..", "@", "-", "+", "'", "!", "~", " ", "  ", "\t", "(c)",
                           '"', "[", "]", "é", "\r\n", "SIZE=10", "BODY=8BITMIME", ",", ":", ";", "\\", "x.y"])


@given(st.lists(_PIECES, max_size=14))
@settings(max_examples=400)
def test_the_plain_path_shortcut_answers_as_aiosmtpd(pieces: list[str]) -> None:
    """The shortcut for ``<local@domain>`` paths (issue 19) answers what the stdlib parser does,
    wherever it applies; everything else still goes to that parser."""
    for arg in ("".join(pieces), "<" + "".join(pieces), "<a@b.fr>" + "".join(pieces), "<" + "".join(pieces) + ">"):
        if "=?" in arg.partition(">")[0]:
            continue  # refused on purpose (below)
        try:
            expected = _bare(SMTP, 64)._getaddr(arg)
        except Exception:  # the stdlib parser crashes (aiosmtpd: 500): ours refuses
            expected = (None, None)
        assert _bare(GatewaySMTP, 64)._getaddr(arg) == expected, repr(arg)


@pytest.mark.parametrize("arg", ["<" + "a." * 50_000 + "@b", "<" + "a" * 100_000 + "@" + "b." * 50_000 + "!",
                                 "<a@b>" + " " * 100_000 + "\t"])
def test_the_plain_path_pattern_is_linear(arg: str) -> None:
    """An SMTP command line is untrusted: the shortcut's pattern must not backtrack (the stdlib
    parser behind it then refuses or parses the line)."""
    started = time.process_time()
    _PLAIN_PATH.match(arg)
    assert time.process_time() - started < 0.5


@pytest.mark.parametrize("arg", ["<", '"', "a@[", "<a@[\t", "<a@[ "])
def test_a_path_that_crashes_the_stdlib_parser_is_refused(arg: str) -> None:
    assert _bare(GatewaySMTP, 64)._getaddr(arg) == (None, None)
