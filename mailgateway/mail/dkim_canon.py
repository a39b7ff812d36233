"""RFC 6376 §3.4.4 relaxed body canonicalisation in linear time, for signing *and* verifying.

dkimpy strips trailing blanks with ``[\\t ]+\\r\\n``, which is quadratic on a long run of blanks
not followed by CRLF: 10 KB of spaces cost 0.38 s, 40 KB 5.7 s, 80 KB 20 s. The body is
untrusted everywhere we canonicalise it — an inbound message's DKIM body hash (mail/auth.py,
any signature with ``c=…/relaxed``), a declaration's replay key, an inbound original attached to
a staff notification and signed with it — so a 4 KB-per-second attacker could keep a CPU busy.

``relaxed_body`` gives byte for byte what dkimpy's gives (tests/dispatch/test_relaxed_body_linear.py
compares them over every short body of letters, blanks, tabs, CR, LF, CRLF and UTF-8).
``install()`` makes dkimpy's verifier use it: dkimpy picks the body algorithm of a ``c=`` value
from its module-level registry ``dkim.canonicalization.ALGORITHMS`` and offers no other hook
(``DomainSigner.verify_sig_process`` builds the policy itself). The replacement is a subclass of
dkimpy's ``Relaxed`` that changes nothing but the cost, so every user of dkimpy in the process —
ours only — gets the same bytes. mail/auth.py installs it at import.
"""

from __future__ import annotations

import re

from dkim.canonicalization import ALGORITHMS, Relaxed, correct_empty_body, strip_trailing_lines

__all__ = ["LinearRelaxed", "install", "relaxed_body"]

_BLANKS = re.compile(rb"\t[\t ]*| [\t ]+")  # a tab or 2+ blanks (a lone space stays): linear, greedy, nothing after


def relaxed_body(body: bytes) -> bytes:
    """dkimpy's ``Relaxed.canonicalize_body(body)``, in linear time.

    Runs of blanks are compressed first, by a pattern that needs nothing after it; each run is
    then one space, so the blanks before a CRLF are at most one space, removed by a plain replace
    (dkimpy removes them first, then compresses: the same bytes). Two passes in C over the body,
    whatever its shape. A body without a tab, a double space or a space before CRLF — our
    quoted-printable bodies, usually — needs neither: only the empty lines at the end count."""
    if b"\t" in body or b"  " in body or b" \r\n" in body:
        body = _BLANKS.sub(b" ", body).replace(b" \r\n", b"\r\n")
    return bytes(correct_empty_body(strip_trailing_lines(body)))


class LinearRelaxed(Relaxed):  # type: ignore[misc]  # dkimpy ships no type information
    """dkimpy's relaxed algorithm (same name, same header canonicalisation — linear already:
    unfold, compress, strip) with the linear body canonicalisation."""

    canonicalize_body = staticmethod(relaxed_body)


def install() -> None:
    """Make ``c=…/relaxed`` (and ``c=relaxed/…``) mean ``LinearRelaxed`` in dkimpy. Idempotent."""
    ALGORITHMS[b"relaxed"] = LinearRelaxed
