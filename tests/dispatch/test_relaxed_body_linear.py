"""``relaxed_body`` (mail/dkim_canon.py) is dkimpy's relaxed body canonicalisation, byte for byte,
in linear time: dkimpy's ``[\\t ]+\\r\\n`` is quadratic on a long run of blanks not followed by CRLF,
and the body is untrusted (an inbound original attached to a staff notification and signed with
it; a declaration's replay key, computed in the processing host, which has no time budget)."""

from __future__ import annotations

import itertools
import time

from dkim.canonicalization import Relaxed

from mailgateway.mail.dkim_canon import relaxed_body

# dkimpy's own class, never replaced (mail/dkim_canon.py installs a subclass in its registry).
DKIMPY = Relaxed
PIECES = [b"a", b" ", b"\t", b"\r\n", b"\r", b"\n", b"  ", b"\xc3\xa9"]


def test_every_short_body_is_dkimpys() -> None:
    for n in range(1, 6):
        for parts in itertools.product(PIECES, repeat=n):
            body = b"".join(parts)
            assert relaxed_body(body) == DKIMPY.canonicalize_body(body), body


def test_quoted_printable_and_edge_bodies_are_dkimpys() -> None:
    for body in (b"", b"\r\n", b"\r\n\r\n", b"a ", b" a\r\n", b"a \t \r\n\r\n", b"=C3=A9t=C3=A9\r\n=20\r\n",
                 b"a\r\n \r\n", b"x" * 1000 + b" \t" * 50 + b"\r\n" * 3):
        assert relaxed_body(body) == DKIMPY.canonicalize_body(body), body


def test_a_long_run_of_blanks_costs_linear_time() -> None:
    body = b"x\r\n" + b" \t" * 1_000_000 + b"y\r\n"  # 2 MB of blanks before a letter
    started = time.process_time()
    out = relaxed_body(body)
    assert time.process_time() - started < 2.0  # dkimpy's pattern: hours at this size (40 KB: 4.6 s)
    assert out == b"x\r\n y\r\n"
