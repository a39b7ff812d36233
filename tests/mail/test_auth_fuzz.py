"""Garbage never crashes sender authentication: fuzzed headers, mutated signed mail, the real corpus."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailgateway.dispatch.dkim import DkimSigner
from mailgateway.dns import StaticResolver
from mailgateway.mail.auth import Authenticator, from_address
from mailgateway.mail.facts import SenderVerdict
from mailgateway.settings import AuthenticationSettings
from tests.support.dkim import ed25519_key, rsa_key, zone

KEYS = (rsa_key("sel", "chu.test"), ed25519_key("ed", "chu.test"))
AUTH = Authenticator(AuthenticationSettings(trusted_authserv_ids=("mx.ars.test",)), StaticResolver(zone(*KEYS)))
SIGNER = DkimSigner("chu.test", [k.signing_key() for k in KEYS])
BASE = (
    b"From: DSI <dsi@chu.test>\r\nTo: ssi-ara@ars.test\r\nSubject: Incident\r\n"
    b"Date: Fri, 27 Nov 2026 08:30:00 +0100\r\nMessage-ID: <f@chu.test>\r\n\r\nCorps du message\r\n"
)
SIGNED = SIGNER.sign(BASE) + BASE

NAMES = st.sampled_from(
    ["From", "from", "FROM", "DKIM-Signature", "Authentication-Results", "To", "Subject", "X-Junk", ""]
)
JUNK = st.text(alphabet=st.characters(codec="utf-8"), max_size=120)
VALUES = st.one_of(
    JUNK,
    st.sampled_from(
        [
            "dsi@chu.test",
            "v=1; a=rsa-sha256; d=chu.test; s=sel; h=from; bh=AAAA; b=AAAA",
            "v=1; a=ed25519-sha256; d=chu.test; s=ed; h=from; bh=; b=",
            "a=rsa-sha256; d=chu.test; s=sel; h=from; bh=AAA; b=!!!; l=abc; t=x",
            "mx.ars.test; dmarc=pass header.from=chu.test",
            "mx.ars.test; dkim=pass header.d=",
            "unlisted-recipients:; (no To-header on input)",
            "=?UTF-8?Q?x=0Ay?= <c@d.example>",
            "d=;;;===;;",
        ]
    ),
)
SEPARATORS = st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\n\t", b""])


@st.composite
def header_blocks(draw: st.DrawFn) -> bytes:
    fields = draw(st.lists(st.tuples(NAMES, VALUES, SEPARATORS), max_size=12))
    head = b"".join(n.encode() + b": " + v.encode("utf-8", "surrogateescape") + sep for n, v, sep in fields)
    body = draw(st.binary(max_size=200))
    return head + draw(SEPARATORS) + body


def check(raw: bytes) -> SenderVerdict:
    verdict = AUTH.verify(raw)
    assert isinstance(verdict, SenderVerdict)
    assert verdict.authenticated == (verdict.method is not None)
    # Our own guards explain every refusal; the last-resort handler is for bugs only.
    assert not verdict.detail.startswith("check failed"), verdict.detail
    from_address(raw)
    return verdict


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header_blocks())
def test_fuzzed_header_blocks_never_raise(raw: bytes) -> None:
    check(raw)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_raise(raw: bytes) -> None:
    assert not check(raw).authenticated


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(SIGNED) - 1), st.binary(min_size=0, max_size=8), st.integers(0, 8))
def test_mutated_signed_message_never_raises(at: int, insert: bytes, cut: int) -> None:
    check(SIGNED[:at] + insert + SIGNED[at + cut :])


def test_unmutated_signed_message_authenticates() -> None:
    assert check(SIGNED).authenticated  # the fuzz target above starts from a valid message


@pytest.mark.fuzz
@settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header_blocks())
def test_fuzzed_header_blocks_never_raise_long(raw: bytes) -> None:
    check(raw)


def _corpus_messages(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name not in ("COPYING",) and p.suffix != ".tsv")


def test_corpus_never_crashes_authentication(corpus_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every real message (DSNs, spam, broken MIME, binary blobs) gets a verdict, never an exception."""
    caplog.set_level(logging.WARNING, logger="mailgateway.mail.auth")
    files = _corpus_messages(corpus_dir)
    assert len(files) > 2000
    authenticated = 0
    for path in files:
        raw = path.read_bytes()
        verdict = AUTH.verify(raw)
        assert not verdict.detail.startswith("check failed"), f"{path}: {verdict.detail}"
        authenticated += verdict.authenticated
        from_address(raw)
    assert authenticated == 0  # nothing in the corpus is signed with our test keys
    assert not [r for r in caplog.records if r.name == "mailgateway.mail.auth"]
