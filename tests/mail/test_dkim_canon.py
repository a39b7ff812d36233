"""Inbound DKIM verification canonicalises an untrusted body in linear time (mail/dkim_canon.py).

dkimpy's relaxed body canonicalisation is quadratic on a long run of blanks not followed by CRLF:
one 80 KB message signed ``c=relaxed/relaxed`` cost 20 s of CPU in the analysis worker (which
then hit its time budget and quarantined it). mail/auth.py installs the linear one, same bytes.
"""

from __future__ import annotations

import time

from dkim.canonicalization import ALGORITHMS, CanonicalizationPolicy, Relaxed

from mailgateway.dns import StaticResolver
from mailgateway.mail import auth
from mailgateway.mail.dkim_canon import LinearRelaxed
from mailgateway.mail.facts import SenderVerdict
from mailgateway.settings import AuthenticationSettings
from tests.support.casemail import staff_key
from tests.support.dkim import signer, zone

BLANKS = b" \t" * 100_000  # 200 KB: dkimpy's own pattern would take minutes


def message(body: bytes) -> bytes:
    return (b"From: agent@ars.test\r\nTo: ssi-ara@ars.test\r\nSubject: declaration\r\n"
            b"Date: Fri, 27 Nov 2026 10:00:00 +0100\r\nMessage-ID: <canon@ars.test>\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + body)


def verify(raw: bytes) -> SenderVerdict:
    return auth.Authenticator(AuthenticationSettings(), StaticResolver(zone(staff_key()))).verify(raw)


def test_the_verifier_uses_the_linear_algorithm() -> None:
    assert ALGORITHMS[b"relaxed"] is LinearRelaxed
    policy = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    assert policy.body_algorithm is LinearRelaxed and policy.header_algorithm is LinearRelaxed
    assert issubclass(LinearRelaxed, Relaxed) and LinearRelaxed.name == b"relaxed"


def test_a_signed_body_with_a_long_blank_run_verifies_in_linear_time() -> None:
    raw = message(b"Incident FINESS 690000001\r\nx" + BLANKS + b"y\r\n")
    raw = signer(staff_key()).sign(raw) + raw
    started = time.process_time()
    verdict = verify(raw)
    assert time.process_time() - started < 2.0
    assert verdict.authenticated, verdict.detail


def test_an_altered_body_with_a_long_blank_run_fails_in_linear_time() -> None:
    raw = message(b"x" + BLANKS + b"y\r\n")
    raw = signer(staff_key()).sign(raw) + raw
    altered = raw.replace(b"y\r\n", b"z\r\n")
    started = time.process_time()
    verdict = verify(altered)
    assert time.process_time() - started < 2.0
    assert not verdict.authenticated and "body hash mismatch" in verdict.detail, verdict.detail
