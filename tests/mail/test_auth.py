"""Sender authentication by DKIM: aligned signatures only, spoofing refused, garbage survived."""

from __future__ import annotations

import base64
from collections.abc import Callable

import dkim
import pytest

from mailgateway.dns import ChainResolver, DnsPythonResolver, DnsTemporaryError, StaticResolver
from mailgateway.mail.auth import Authenticator, aligned, from_address
from mailgateway.settings import AuthenticationSettings
from tests.support.dkim import (
    GeneratedKey,
    TxtServer,
    dkimpy_sign,
    ed25519_key,
    opendkim_sign,
    rsa_key,
    signer,
    zone,
)

CHU = "chu-exemple.test"


def chu_rsa() -> GeneratedKey:
    return rsa_key("sel", CHU)


def chu_ed() -> GeneratedKey:
    return ed25519_key("ed", CHU)


def evil_rsa() -> GeneratedKey:
    return rsa_key("sel", "evil.test")


class RecordingResolver:
    """A StaticResolver that remembers what was asked (and can fail like a broken DNS)."""

    def __init__(self, records: dict[str, str], temporary: bool = False) -> None:
        self.static = StaticResolver(records)
        self.asked: list[str] = []
        self.temporary = temporary

    def txt(self, name: str) -> str | None:
        self.asked.append(name)
        if self.temporary:
            raise DnsTemporaryError("SERVFAIL")
        return self.static.txt(name)


def authenticator(*keys: GeneratedKey, trusted: tuple[str, ...] = ()) -> Authenticator:
    settings = AuthenticationSettings(trusted_authserv_ids=trusted)
    return Authenticator(settings, StaticResolver(zone(*keys)))


def message(sender: str = f"Dr Martin <dsi@{CHU}>", body: str = "Déclaration d'incident\r\n") -> bytes:
    return (
        f"From: {sender}\r\nTo: ssi-ara@ars.test\r\nSubject: Incident\r\n"
        "Date: Fri, 27 Nov 2026 08:30:00 +0100\r\nMessage-ID: <m1@chu-exemple.test>\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}"
    ).encode()


def signed(raw: bytes, *keys: GeneratedKey) -> bytes:
    for key in keys:
        raw = signer(key).sign(raw) + raw
    return raw


def test_valid_aligned_rsa_signature_authenticates() -> None:
    verdict = authenticator(chu_rsa()).verify(signed(message(), chu_rsa()))
    assert verdict.authenticated
    assert verdict.method == "dkim"
    assert (verdict.address, verdict.domain, verdict.auth_domain) == (f"dsi@{CHU}", CHU, CHU)
    assert verdict.detail == f"dkim=pass d={CHU} s=sel aligned"


def test_valid_aligned_ed25519_signature_authenticates() -> None:
    verdict = authenticator(chu_ed()).verify(signed(message(), chu_ed()))
    assert verdict.authenticated
    assert verdict.detail == f"dkim=pass d={CHU} s=ed aligned"


def test_signature_by_a_parent_domain_aligns() -> None:
    parent = rsa_key("sel", "chu.test")
    verdict = authenticator(parent).verify(signed(message(sender="x@dsi.chu.test"), parent))
    assert verdict.authenticated
    assert (verdict.domain, verdict.auth_domain) == ("dsi.chu.test", "chu.test")


def test_signature_by_a_subdomain_does_not_align() -> None:
    child = rsa_key("sel", "dsi.chu.test")
    verdict = authenticator(child).verify(signed(message(sender="x@chu.test"), child))
    assert not verdict.authenticated
    assert "not aligned" in verdict.detail


@pytest.mark.parametrize("suffix", ["test", "fr", "gouv.fr"])
def test_public_suffix_signing_domain_never_aligns(suffix: str) -> None:
    key = rsa_key("sel", suffix)
    verdict = authenticator(key).verify(signed(message(sender=f"x@dsi.chu.{suffix}"), key))
    assert not verdict.authenticated


def test_alignment_rules() -> None:
    assert aligned("chu.fr", "dsi.chu.fr")
    assert aligned("CHU.fr.", "chu.FR")
    assert not aligned("fr", "dsi.chu.fr")
    assert not aligned("hu.fr", "chu.fr")  # suffix of the text, not a parent domain
    assert not aligned("chu.fr", "chu.fr.evil.test")
    assert not aligned(None, "chu.fr")
    assert not aligned("chu.fr", None)


def test_unsigned_message_is_not_authenticated() -> None:
    verdict = authenticator(chu_rsa()).verify(message())
    assert not verdict.authenticated
    assert verdict.method is None
    assert verdict.address == f"dsi@{CHU}"
    assert "dkim=none" in verdict.detail


def test_valid_signature_of_another_domain_is_spoofing_and_is_not_looked_up() -> None:
    resolver = RecordingResolver(zone(evil_rsa(), chu_rsa()))
    verdict = Authenticator(AuthenticationSettings(), resolver).verify(signed(message(), evil_rsa()))
    assert not verdict.authenticated
    assert "d=evil.test" in verdict.detail and "not aligned" in verdict.detail
    assert resolver.asked == []  # no DNS query towards a domain the sender chose


def test_broken_signature_is_not_authenticated() -> None:
    raw = signed(message(), chu_rsa())
    head, _, rest = raw.partition(b"b=")
    broken = head + b"b=" + base64.b64encode(b"x" * 256) + rest[rest.index(b"\r\nFrom:") :]
    verdict = authenticator(chu_rsa()).verify(broken)
    assert not verdict.authenticated
    assert verdict.detail.startswith(f"dkim=fail d={CHU} s=sel")


@pytest.mark.parametrize("key", [chu_rsa, chu_ed])
def test_tampered_body_fails(key: Callable[[], GeneratedKey]) -> None:
    raw = signed(message(), key())
    verdict = authenticator(key()).verify(raw.replace(b"incident", b"exercice"))
    assert not verdict.authenticated
    assert "body hash mismatch" in verdict.detail


def test_tampered_from_fails() -> None:
    raw = signed(message(), chu_rsa()).replace(b"Dr Martin", b"Dr Durand")
    verdict = authenticator(chu_rsa()).verify(raw)
    assert not verdict.authenticated
    assert "signature does not verify" in verdict.detail


def test_unpublished_key_is_a_permanent_error() -> None:
    verdict = authenticator().verify(signed(message(), chu_rsa()))
    assert not verdict.authenticated
    assert "dkim=permerror" in verdict.detail and "no key published" in verdict.detail


def test_dns_failure_is_a_temporary_error() -> None:
    resolver = RecordingResolver({}, temporary=True)
    verdict = Authenticator(AuthenticationSettings(), resolver).verify(signed(message(), chu_rsa()))
    assert not verdict.authenticated
    assert "dkim=temperror" in verdict.detail


def test_second_signature_can_authenticate_when_the_first_is_foreign() -> None:
    raw = signed(message(), chu_rsa(), evil_rsa())  # evil's signature is on top
    verdict = authenticator(chu_rsa(), evil_rsa()).verify(raw)
    assert verdict.authenticated
    assert verdict.auth_domain == CHU


def test_rsa_sha1_signatures_are_refused() -> None:
    key = chu_rsa()
    raw = message()
    sig = dkim.sign(raw, b"sel", CHU.encode(), key.pem, signature_algorithm=b"rsa-sha1")
    verdict = authenticator(key).verify(sig + raw)
    assert not verdict.authenticated
    assert "rsa-sha1 refused" in verdict.detail


def test_body_length_limited_signatures_are_refused() -> None:
    key = chu_rsa()
    raw = message()
    sig = dkim.sign(raw, b"sel", CHU.encode(), key.pem, canonicalize=(b"relaxed", b"relaxed"), length=True)
    appended = sig + raw + b"\r\nVirement urgent : IBAN FR76...\r\n"
    verdict = authenticator(key).verify(appended)
    assert not verdict.authenticated
    assert "l= body length limit refused" in verdict.detail


def test_signature_not_covering_from_is_ignored() -> None:
    raw = signed(message(), chu_rsa())
    # Drop every "from" from h= (our signer over-signs it), whatever the folding.
    start = raw.index(b"h=")
    end = raw.index(b";", start)
    names = [n.strip() for n in raw[start + 2 : end].replace(b"\r\n", b"").split(b":")]
    mangled = raw[:start] + b"h=" + b" : ".join(n for n in names if n != b"from") + raw[end:]
    assert mangled != raw and b"from" in names
    verdict = authenticator(chu_rsa()).verify(mangled)
    assert not verdict.authenticated
    assert "From not signed" in verdict.detail


def test_dkimpy_reference_signature_authenticates() -> None:
    raw = message()
    verdict = authenticator(chu_ed()).verify(dkimpy_sign(raw, chu_ed()) + raw)
    assert verdict.authenticated


@pytest.mark.parametrize("key", [chu_rsa, chu_ed])
def test_opendkim_signature_authenticates(key: Callable[[], GeneratedKey]) -> None:
    raw = message()
    verdict = authenticator(key()).verify(opendkim_sign(raw, key()) + raw)
    assert verdict.authenticated, verdict.detail


@pytest.mark.parametrize(
    ("sender", "why"),
    [
        (f"dsi@{CHU}, autre@{CHU}", "exactly one address"),
        (f"dsi@{CHU} <x@evil.test>", "exactly one address"),
        ("undisclosed-recipients:;", "exactly one address"),
    ],
)
def test_ambiguous_from_is_never_authenticated(sender: str, why: str) -> None:
    raw = signed(message(sender=sender), chu_rsa())
    verdict = authenticator(chu_rsa()).verify(raw)
    assert not verdict.authenticated
    assert why in verdict.detail


def test_second_from_header_is_never_authenticated() -> None:
    raw = signed(message(), chu_rsa())
    raw = raw.replace(b"To: ", f"From: dsi@{CHU}\r\nTo: ".encode(), 1)
    verdict = authenticator(chu_rsa()).verify(raw)
    assert not verdict.authenticated
    # Refused earlier since the one-view check: a second From is an ambiguous header block (mailgateway.wire).
    assert "Duplicate From header field" in verdict.detail


def test_missing_from_is_reported() -> None:
    verdict = authenticator().verify(b"To: a@b.test\r\nSubject: x\r\n\r\nbody\r\n")
    assert not verdict.authenticated
    assert (verdict.address, verdict.domain) == (None, None)
    assert verdict.detail == "no From header"


def test_number_of_signatures_checked_is_bounded() -> None:
    raw = signed(message(), chu_rsa())
    junk = b"".join(
        f"DKIM-Signature: v=1; a=rsa-sha256; d={CHU}; s=s{i}; h=from; bh=AAAA; b=AAAA\r\n".encode() for i in range(7)
    )
    resolver = RecordingResolver(zone(chu_rsa()))
    # The DNS budget per message (test_auth_dns_budget.py) is lifted to isolate this bound.
    verdict = Authenticator(AuthenticationSettings(), resolver, max_signatures=5,
                            max_key_lookups=10).verify(junk + raw)
    assert not verdict.authenticated
    assert len(resolver.asked) == 5
    assert "more than 5 signatures" in verdict.detail


def test_keys_found_through_dns_on_loopback() -> None:
    raw = signed(message(), chu_rsa(), chu_ed())
    with TxtServer(zone(chu_rsa())) as server:
        resolver = ChainResolver(
            StaticResolver(zone(chu_ed())), DnsPythonResolver(["127.0.0.1"], timeout=2.0, port=server.port)
        )
        verdict = Authenticator(AuthenticationSettings(), resolver).verify(raw)
        assert verdict.authenticated
        assert server.queries == 0  # the ed25519 signature on top was checked with the static key
        top_removed = raw[raw.index(b"DKIM-Signature", 10) :]
        assert Authenticator(AuthenticationSettings(), resolver).verify(top_removed).authenticated
        assert server.queries == 1


# --- from_address ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"From: Jean <DSI@CHU-Exemple.FR>\r\n\r\nx", ("DSI@chu-exemple.fr", "chu-exemple.fr")),
        (b"From: dsi@chu.fr (DSI)\n\nx", ("dsi@chu.fr", "chu.fr")),
        ("From: dsi@exämple.fr\n\nx".encode(), ("dsi@exämple.fr", "xn--exmple-cua.fr")),
        (b"From: =?UTF-8?Q?x=0Ay?= <c@d.example>\n\nx", ("c@d.example", "d.example")),  # crash class 2
        (b"From: unlisted-recipients:; (no To-header on input)\n\nx", (None, None)),  # crash class 1
        (b"From: alice@example.org)<bob@example.org>\n\nx", (None, None)),
        (b"From: a@b.test <d@e.test>\n\nx", (None, None)),
        (b"From: nobody\n\nx", (None, None)),
        (b"From: a@[192.0.2.1]\n\nx", (None, None)),
        (b"Subject: no from\n\nx", (None, None)),
        (b"", (None, None)),
        (b"\x00\xff\xfe garbage \r\n\r\n", (None, None)),
        (b"Junk line\nFrom: dsi@chu.fr\n\nx", (None, None)),  # stdlib stops the header block there
    ],
)
def test_from_address(raw: bytes, expected: tuple[str | None, str | None]) -> None:
    assert from_address(raw) == expected


def test_a_from_of_thousands_of_nested_comments_has_no_author_and_raises_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    """Found by an outside tester: the stdlib's address parser recursed to RecursionError, caught
    only by the worker's last resort with a traceback of thousands of lines in the log."""
    raw = b"From: " + b"(" * 5000 + b"x" + b")" * 5000 + b" <a@b.test>\r\nTo: x@y.test\r\nSubject: s\r\n\r\nbody\r\n"
    assert from_address(raw) == (None, None)
    verdict = Authenticator(AuthenticationSettings(), resolver=StaticResolver({})).verify(raw)
    assert not verdict.authenticated and verdict.address is None
    assert "Traceback" not in caplog.text


def test_a_huge_from_is_no_author_and_costs_no_time() -> None:
    # Outside attacker: a 100 KB From of repeated quoted-pairs held the analysis worker 22 s
    # (policy.default's header parser is quadratic). Over MAX_FROM_CHARS: no author, at once.
    import time

    folded = "\r\n ".join(['"a\\"b' * 140] * 140)
    raw = (f"From: {folded}\r\n <slow@chu.test>\r\nTo: ssi-ara@ars.test\r\nSubject: x\r\n\r\nbody\r\n").encode()
    started = time.perf_counter()
    assert from_address(raw) == (None, None)
    assert time.perf_counter() - started < 1.0
    # A long but real From (a display name of encoded words) is still read.
    name = "=?utf-8?q?" + "Centre_hospitalier_" * 20 + "?="
    assert from_address(f"From: {name} <rssi@chu.test>\r\nTo: a@b.test\r\n\r\nx\r\n".encode()) == (
        "rssi@chu.test", "chu.test")
