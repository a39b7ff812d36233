"""Fuzz target (docs/guarantees.md): on every header block, either ``wire.header_block_problem`` reports a
problem, or dkimpy (what DKIM verifies) and the ``email`` package (what analysis reads) see exactly
the same header fields: same names, order, count and unfolded values.

The default run is short; ``pytest -m fuzz`` runs the long variant.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailgateway.mail.parse import dkim_view, email_view, parse_bytes, views_problem
from mailgateway.wire import canonical, header_block_problem

NAMES = st.sampled_from(
    ["From", "Subject", "subject", "In-Reply-To", "References", "To", "Received", "X-Mailer", "DKIM-Signature",
     "Content-Type", "X-A", "Subject ", " Subject", "Sübject", "X\x7fY", "", "A:B"]
)
VALUES = st.one_of(
    st.sampled_from(["x", "", " ", "#clore", "<a@b.test>", "=?utf-8?q?=C3=A9?=", "a:b", "From x", "\t"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=20),
)
# Line endings as they reach us: CRLF (SMTP), bare LF (mbox, some IMAP), bare CR, CR CR LF (the trick).
ENDINGS = st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r", b"\r\r\n", b"\n\r"])


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["field", "field", "field", "fold", "fold", "junk", "from", "blank-ish"]))
    if kind == "field":
        return draw(NAMES).encode() + b":" + draw(VALUES).encode("utf-8", "surrogateescape")
    if kind == "fold":
        return draw(st.sampled_from([b" ", b"\t", b"  "])) + draw(VALUES).encode()
    if kind == "junk":
        return draw(st.sampled_from([b"junk line", b"#clore", b"--boundary", b"\xc3\xa9t\xc3\xa9", b"\x00x"]))
    if kind == "from":
        return b"From sender@example.test Fri Nov 27 08:00:00 2026"
    return draw(st.sampled_from([b" ", b"\t", b"\x0b", b"\x0c"]))


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(st.tuples(lines(), ENDINGS), min_size=0, max_size=14))
    head = b"".join(line + end for line, end in parts)
    end_of_header = draw(st.sampled_from([b"\r\n", b"\n", b"", b"\r\n\r\n"]))
    body = draw(st.sampled_from([b"body\r\n", b"#clore\r\n", b"a\rb\r\n", b""]))
    return draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + head + end_of_header + body


def check(raw: bytes) -> None:
    for candidate in (raw, canonical(raw)):
        if header_block_problem(candidate) is not None:
            continue
        msg, degraded = parse_bytes(candidate)
        assert degraded is None
        seen = dkim_view(canonical(candidate))
        assert seen is not None, candidate
        assert seen == email_view(msg), candidate
        assert views_problem(canonical(candidate), msg) is None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_parsers_agree_or_a_problem_is_reported(raw: bytes) -> None:
    check(raw)


@pytest.mark.fuzz
@settings(max_examples=50_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_parsers_agree_or_a_problem_is_reported_long(raw: bytes) -> None:
    check(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"X-Mailer: x\r\r\n #clore\r\n\r\nbody",
        b"Subject: a\r\nSubject: b\r\n\r\n",
        b"A: b\r\njunk\r\n #x\r\n\r\n",
        b"A: b\r\nFrom x\r\n\r\nbody",
        b"\t#clore\r\nA: b\r\n\r\n",
    ],
)
def test_known_disagreements_are_reported(raw: bytes) -> None:
    assert header_block_problem(raw) is not None
