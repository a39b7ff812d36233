"""Several DKIM signatures on one message, the fail-safe of ``Authenticator.verify`` and the
well-formedness of domains before alignment (issue 21: survivors of mutation testing).

Each signature must be verified as itself (dkimpy's ``idx``): a valid signature of a domain the
sender owns, put next to a forged one for the victim's domain, must not authenticate as the
victim (RFC 6376 §6.1: a verifier reports a result *per signature*).
"""

from __future__ import annotations

import base64
import hashlib
import re

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dkim.canonicalization import CanonicalizationPolicy
from dkim.util import parse_tag_value

import mailgateway.mail.auth as auth
from mailgateway.dispatch.dkim import DkimSigner
from mailgateway.dns import ChainResolver, DnsTemporaryError, StaticResolver
from mailgateway.mail.auth import Authenticator, aligned, normalise_domain
from mailgateway.mail.facts import SenderVerdict
from mailgateway.settings import (
    AuthenticationSettings,
    IntakeSettings,
    Settings,
    SmtpIntakeSettings,
    parse_settings,
)
from tests.support.casemail import forger_key, staff_key
from tests.support.dkim import GeneratedKey, rsa_key, signer, zone

VICTIM = "agent@ars.test"  # staff: their domain's key is staff_key(), published


def attacker_key() -> GeneratedKey:
    """A key the attacker really owns and publishes (their own domain)."""
    return rsa_key("rsa", "attaquant.test")


def published() -> dict[str, str]:
    return zone(staff_key(), attacker_key())


def authenticator(records: dict[str, str] | None = None) -> Authenticator:
    return Authenticator(AuthenticationSettings(), StaticResolver(published() if records is None else records))


def message(sender: str = VICTIM, subject: str = "Re: dossier") -> bytes:
    return (
        f"From: {sender}\r\nTo: ssi-ara@ars.test\r\nSubject: {subject}\r\n"
        "Date: Fri, 27 Nov 2026 10:00:00 +0100\r\nMessage-ID: <m1@ars.test>\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n#clore\r\n"
    ).encode()


def signed(raw: bytes, *keys: GeneratedKey) -> bytes:
    """Signed by each key in turn: the last key's signature ends up on top (index 0)."""
    for key in keys:
        raw = signer(key).sign(raw) + raw
    return raw


# --- one verdict per signature -------------------------------------------------------------------


def test_attackers_valid_signature_does_not_vouch_for_a_forged_one_below_it() -> None:
    # Index 0: a valid signature of attaquant.test (not aligned: skipped, never looked up).
    # Index 1: a signature claiming d=ars.test, made with a key ars.test never published.
    raw = signed(message(), forger_key(), attacker_key())
    verdict = authenticator().verify(raw)
    assert not verdict.authenticated
    assert "d=attaquant.test" in verdict.detail and "not aligned" in verdict.detail
    assert "dkim=fail d=ars.test" in verdict.detail
    assert verdict.auth_domain is None


def test_forged_aligned_signature_above_a_valid_aligned_one_does_not_hide_it() -> None:
    raw = signed(message(), staff_key(), forger_key())  # forged on top, genuine below
    verdict = authenticator().verify(raw)
    assert verdict.authenticated
    assert verdict.auth_domain == "ars.test"
    assert verdict.detail.startswith("dkim=fail d=ars.test s=rsa")
    assert verdict.detail.endswith("dkim=pass d=ars.test s=rsa aligned")


def test_the_replay_key_is_the_one_of_the_signature_that_verified() -> None:
    # The replay guard keys on what the *accepted* signature signs: the genuine signature alone,
    # or under a forged one, must give the same key (else a replay with a junk signature on top
    # would act again).
    genuine = signed(message(), staff_key())
    alone = authenticator().verify(genuine)
    under_forgery = authenticator().verify(signed(genuine, forger_key()))
    assert alone.authenticated and under_forgery.authenticated
    assert alone.signature_key is not None and alone.signature_key.startswith("dkim:ars.test:")
    assert under_forgery.signature_key == alone.signature_key
    other = authenticator().verify(signed(message(subject="Re: autre"), staff_key()))
    assert other.signature_key != alone.signature_key


def _with_modulus_added(raw: bytes, key: GeneratedKey) -> bytes:
    """``raw`` with the topmost signature's b= replaced by b + n: RSA verifiers compute
    (b + n)^e mod n = b^e mod n, so it still verifies — a replay with a doctored b=."""
    match = re.search(rb"([;\s]b=)([A-Za-z0-9+/=\s]+?)(\r\n(?![ \t]))", raw)
    assert match is not None
    s = int.from_bytes(base64.b64decode(b"".join(match.group(2).split())), "big")
    private = serialization.load_pem_private_key(key.pem, password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    n = private.private_numbers().public_numbers.n
    doctored = s + n
    value = base64.b64encode(doctored.to_bytes((doctored.bit_length() + 7) // 8, "big"))
    return raw[: match.start(2)] + value + raw[match.end(2) :]


def test_the_replay_key_is_the_signed_content_not_the_malleable_b_value() -> None:
    genuine = signed(message(), staff_key())
    doctored = _with_modulus_added(genuine, staff_key())
    assert doctored != genuine
    first, replayed = authenticator().verify(genuine), authenticator().verify(doctored)
    assert first.authenticated and replayed.authenticated
    assert replayed.signature_key == first.signature_key


def test_the_replay_key_is_the_sha256_of_the_signed_data() -> None:
    """RFC 6376 §3.7: the h= fields and the DKIM-Signature field with b= empty, canonicalised."""
    genuine = signed(message(), staff_key())
    headers, _body = dkim.rfc822_parse(genuine)
    field = next(v for n, v in headers if n.lower() == b"dkim-signature")
    tags = parse_tag_value(field)
    policy = CanonicalizationPolicy.from_c_value(tags[b"c"])
    hasher = hashlib.sha256()
    names = [n.strip().lower() for n in tags[b"h"].split(b":")]
    dkim.hash_headers(hasher, policy, policy.canonicalize_headers(headers), names,
                      (b"DKIM-Signature", field), tags)
    assert authenticator().verify(genuine).signature_key == f"dkim:ars.test:{hasher.hexdigest()}"
    assert auth.signature_key("ars.test", tags) != f"dkim:ars.test:{hasher.hexdigest()}"


def test_signed_headers_are_those_of_the_signature_that_verified() -> None:
    verdict = authenticator().verify(signed(message(), staff_key(), forger_key()))
    assert {"from", "subject", "date", "message-id"} <= verdict.signed_headers


def test_unparsable_signature_above_a_valid_one_is_skipped() -> None:
    raw = b"DKIM-Signature: v=1; a=rsa-sha256; d=ars.test; s\r\n" + signed(message(), staff_key())
    verdict = authenticator().verify(raw)
    assert verdict.authenticated
    assert verdict.auth_domain == "ars.test"
    assert verdict.detail == "dkim=permerror (unparsable signature); dkim=pass d=ars.test s=rsa aligned"


def test_only_an_unparsable_signature_authenticates_nobody() -> None:
    raw = b"DKIM-Signature: garbage\r\n" + message()
    verdict = authenticator().verify(raw)
    assert not verdict.authenticated
    assert verdict.detail == "dkim=permerror (unparsable signature)"
    assert verdict.address == VICTIM


# --- fail-safe: whatever goes wrong is "not authenticated" ---------------------------------------


class ExplodingResolver:
    """A resolver failing in a way nobody planned for (not DnsTemporaryError)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def txt(self, name: str) -> str | None:
        self.asked.append(name)
        raise RuntimeError("resolver bug")


def test_a_resolver_raising_an_unexpected_error_authenticates_nobody() -> None:
    resolver = ExplodingResolver()
    verdict = Authenticator(AuthenticationSettings(), resolver).verify(signed(message(), staff_key()))
    assert resolver.asked == ["rsa._domainkey.ars.test"]
    assert not verdict.authenticated
    assert verdict.method is None and verdict.auth_domain is None and verdict.signature_key is None
    assert "d=ars.test" in verdict.detail


@pytest.mark.parametrize("error", [RuntimeError("bug"), KeyError("x"), MemoryError()])
def test_an_unexpected_exception_during_verification_is_not_authenticated(
    monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    def explode(raw: bytes, trusted_path: bool) -> object:
        raise error

    authenticator_ = authenticator()
    monkeypatch.setattr(authenticator_, "_verify", explode)
    verdict = authenticator_.verify(signed(message(), staff_key()))
    assert verdict.authenticated is False
    assert verdict.method is None and verdict.auth_domain is None
    assert verdict.detail == f"check failed: {type(error).__name__}"
    # The sender is still reported (the staff receipt and the logs name them).
    assert (verdict.address, verdict.domain) == (VICTIM, "ars.test")


def test_an_unexpected_exception_while_reading_the_header_block_is_not_authenticated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def explode(raw: bytes) -> str | None:
        raise ValueError("wire bug")

    monkeypatch.setattr(auth, "header_block_refusal", explode)
    verdict = authenticator().verify(signed(message(), staff_key()))
    assert not verdict.authenticated
    assert verdict.detail == "check failed: ValueError"


# --- domains are well-formed before they are compared --------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("chu.test", "chu.test"),
        ("CHU.Test", "chu.test"),  # DNS names are case-insensitive (RFC 4343)
        ("chu.test.", "chu.test"),  # the root's dot
        ("  chu.test ", "chu.test"),
        (b"chu.test", "chu.test"),
        ("café.test", "xn--caf-dma.test"),  # A-label form (RFC 5890)
        ("chu.test>", None),
        ("<chu.test", None),
        ("a b", None),
        ("a\tb.test", None),
        (".chu.test", None),  # empty label
        ("chu..test", None),
        ("", None),
        (".", None),
        (None, None),
        ("[192.0.2.1]", None),  # an address literal is no signing domain
        ("chu@test", None),
        ("chu.test;x", None),
        ("chu,test", None),
        ("chu(test)", None),
        ('chu"test', None),
        ("chu\\test", None),
        ("chu:test", None),
        ("a" * 63 + ".test", "a" * 63 + ".test"),
        ("a" * 64 + ".test", None),  # RFC 1035 §2.3.4: labels of 63 octets at most
    ],
)
def test_normalise_domain(text: str | bytes | None, expected: str | None) -> None:
    assert normalise_domain(text) == expected


@pytest.mark.parametrize("bad", ["chu.test>", "a b", ".chu.test", "chu..test", "[chu.test]", "chu.test;"])
def test_malformed_domains_never_align(bad: str) -> None:
    assert not aligned(bad, "chu.test")
    assert not aligned("chu.test", bad)
    assert not aligned(bad, bad)


def test_well_formed_variants_align() -> None:
    assert aligned("chu.test.", "dsi.chu.test")
    assert aligned("CHU.TEST", "chu.test")
    assert aligned("chu.test", "DSI.CHU.TEST.")
    assert not aligned("localhost", "localhost")  # one label: no organisation


def test_a_signature_whose_domain_is_malformed_is_ignored_before_any_lookup() -> None:
    key = staff_key()
    raw = signed(message(), key)
    forged = raw.replace(b"d=ars.test;", b"d=ars.test>;", 1)
    assert forged != raw
    resolver = RecordingResolver(published())
    verdict = Authenticator(AuthenticationSettings(), resolver).verify(forged)
    assert not verdict.authenticated
    assert "not aligned with ars.test" in verdict.detail
    assert resolver.asked == []


def test_upper_case_from_and_signing_domain_authenticate_in_lower_case() -> None:
    key = staff_key()
    verdict = authenticator().verify(signed(message(sender="Agent@ARS.TEST"), key))
    assert verdict.authenticated
    assert (verdict.domain, verdict.auth_domain) == ("ars.test", "ars.test")
    assert verdict.address == "Agent@ars.test"


class RecordingResolver:
    def __init__(self, records: dict[str, str]) -> None:
        self.static = StaticResolver(records)
        self.asked: list[str] = []

    def txt(self, name: str) -> str | None:
        self.asked.append(name)
        return self.static.txt(name)


# --- why a signature is not even checked (detail texts reach the logs and `quarantine show`) ------


def hand_signature(tags: str) -> bytes:
    return f"DKIM-Signature: {tags}\r\n".encode() + message()


@pytest.mark.parametrize(("tags", "detail"), [
    ("v=1; a=rsa-sha256; d=ars.test; h=from; bh=x; b=y", "dkim=ignored d=ars.test s= (missing d= or s=)"),
    ("v=1; a=rsa-sha256; s=rsa; h=from; bh=x; b=y", "dkim=ignored d= s=rsa (missing d= or s=)"),
    ("v=1; a=rsa-sha256; d=autre.test; s=rsa; h=from; bh=x; b=y",
     "dkim=ignored d=autre.test s=rsa (not aligned with ars.test)"),
    ("v=1; a=rsa-sha1; d=ars.test; s=rsa; h=from; bh=x; b=y", "dkim=ignored d=ars.test s=rsa (rsa-sha1 refused)"),
    ("v=1; a=RSA-SHA1; d=ars.test; s=rsa; h=from; bh=x; b=y", "dkim=ignored d=ars.test s=rsa (rsa-sha1 refused)"),
    ("v=1; a=rsa-sha256; d=ars.test; s=rsa; l=10; h=from; bh=x; b=y",
     "dkim=ignored d=ars.test s=rsa (l= body length limit refused)"),
    ("v=1; a=rsa-sha256; d=ars.test; s=rsa; h=to:subject; bh=x; b=y",
     "dkim=ignored d=ars.test s=rsa (From not signed)"),
    ("v=1; a=rsa-sha256; d=ars.test; s=rsa; h=" + ":".join(["from"] * 65) + "; bh=x; b=y",
     "dkim=ignored d=ars.test s=rsa (h= lists 65 header names, more than 64)"),
])
def test_signatures_refused_before_any_lookup(tags: str, detail: str) -> None:
    resolver = RecordingResolver(published())
    verdict = Authenticator(AuthenticationSettings(), resolver).verify(hand_signature(tags))
    assert not verdict.authenticated
    assert verdict.detail == detail
    assert resolver.asked == []


_BH = base64.b64encode(b"1" * 32).decode()
_B = base64.b64encode(b"2" * 256).decode()


@pytest.mark.parametrize(("tags", "looked_up"), [
    ("v=1; a=rsa-sha256; d=ars.test; s=rsa; h=" + ":".join(["from"] * 64) + f"; bh={_BH}; b={_B}", True),  # 64
    ("v=1; a=rsa-sha256; d=ARS.TEST; s=rsa; h=From; bh=" + _BH + "; b=" + _B, True),
    ("v=1; d=ars.test; s=rsa; h=from; bh=" + _BH + "; b=" + _B, False),  # no a=: dkimpy refuses it, no crash
])
def test_signatures_that_pass_the_prechecks_go_to_dkimpy(tags: str, looked_up: bool) -> None:
    resolver = RecordingResolver(published())
    verdict = Authenticator(AuthenticationSettings(), resolver).verify(hand_signature(tags))
    assert not verdict.authenticated
    assert resolver.asked == (["rsa._domainkey.ars.test"] if looked_up else [])
    assert verdict.detail.startswith("dkim=fail d=ars.test s=rsa (") or verdict.detail.startswith(
        "dkim=fail d=ARS.TEST s=rsa ("), verdict.detail


def test_a_non_ascii_signing_domain_is_not_aligned_and_not_a_crash() -> None:
    raw = "DKIM-Signature: v=1; a=rsa-sha256; d=ärs.test; s=rsa; h=from; bh=x; b=y\r\n".encode() + message()
    verdict = authenticator().verify(raw)
    assert not verdict.authenticated
    assert "not aligned with ars.test" in verdict.detail
    assert "check failed" not in verdict.detail


def test_an_ambiguous_header_block_still_names_the_sender() -> None:
    raw = signed(message(), staff_key()).replace(b"Subject: Re: dossier\r\n", b"Subject: a\r\nSubject: b\r\n")
    verdict = authenticator().verify(raw)
    assert verdict.authenticated is False
    assert (verdict.address, verdict.domain) == (VICTIM, "ars.test")
    assert verdict.detail.startswith("ambiguous header block: ")


# --- the keys and names read from a signature --------------------------------------------------------


def _sha(data: bytes) -> str:
    return "dkim:ars.test:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(("b", "hashed"), [
    (b"eHl6", b"xyz"),
    (b" eH\r\n\tl6 ", b"xyz"),  # folding whitespace is not part of the value
    (base64.b64encode(b"\0\0xyz"), b"xyz"),  # leading zero bytes: the same RSA integer
    (base64.b64encode(b"\0xy\0"), b"xy\0"),  # trailing ones are not
    (base64.b64encode(b"Xyz"), b"Xyz"),
    (b"eHl6!", b"eHl6!"),  # not strict base64: hashed as written
    (b"", b""),
])
def test_signature_key(b: bytes, hashed: bytes) -> None:
    assert auth.signature_key("ars.test", {b"b": b}) == _sha(hashed)


def test_signature_key_without_b() -> None:
    assert auth.signature_key("ars.test", {}) == _sha(b"")


@pytest.mark.parametrize(("h", "names"), [
    (b"From : To:SUBJECT", ["from", "to", "subject"]),
    (b"from::to: ", ["from", "to"]),
    (b"from:from", ["from", "from"]),  # over-signing keeps duplicates
    (b"fr\xc3\xb6m:to", ["fr\ufffd\ufffdm", "to"]),
    (b"", []),
])
def test_signed_names(h: bytes, names: list[str]) -> None:
    assert auth.signed_names({b"h": h}) == names
    assert auth.signed_names({}) == []


# --- bounded work, said exactly (docs/guarantees.md "Bounded verification") -------------------------


def aligned_signatures(count: int, selector: str = "s{i}") -> bytes:
    return b"".join(
        f"DKIM-Signature: v=1; a=rsa-sha256; d=ars.test; s={selector.format(i=i)}; h=from; bh={_BH}; b={_B}\r\n"
        .encode() for i in range(count))


class DeadDns:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def txt(self, name: str) -> str | None:
        self.asked.append(name)
        raise DnsTemporaryError("timeout")


def test_at_most_three_key_lookups_then_the_budget_is_spent() -> None:
    resolver = RecordingResolver(published())
    verdict = Authenticator(AuthenticationSettings(), resolver).verify(aligned_signatures(5) + message())
    assert resolver.asked == ["s0._domainkey.ars.test", "s1._domainkey.ars.test", "s2._domainkey.ars.test"]
    assert verdict.detail.split("; ") == [
        "dkim=permerror d=ars.test s=s0 (no key published)",
        "dkim=permerror d=ars.test s=s1 (no key published)",
        "dkim=permerror d=ars.test s=s2 (no key published)",
        "dkim=ignored d=ars.test s=s3 (skipped: DNS budget spent, at most 3 key lookups)",
        "dkim=ignored d=ars.test s=s4 (skipped: DNS budget spent, at most 3 key lookups)",
    ]
    assert not verdict.temporary


def test_after_a_temporary_failure_nothing_more_is_looked_up() -> None:
    dead = DeadDns()
    verdict = Authenticator(AuthenticationSettings(), dead).verify(aligned_signatures(3) + message())
    assert dead.asked == ["s0._domainkey.ars.test"]
    assert verdict.detail.split("; ") == [
        "dkim=temperror d=ars.test s=s0 (key lookup failed)",
        "dkim=temperror d=ars.test s=s1 (skipped: DNS budget spent, after a DNS failure)",
        "dkim=temperror d=ars.test s=s2 (skipped: DNS budget spent, after a DNS failure)",
    ]
    assert verdict.temporary  # tried again later, not refused
    assert not verdict.authenticated


def test_a_key_name_asked_twice_is_answered_from_the_message_memo() -> None:
    resolver = RecordingResolver(published())
    verdict = Authenticator(AuthenticationSettings(), resolver).verify(aligned_signatures(4, "same") + message())
    assert resolver.asked == ["same._domainkey.ars.test"]
    assert verdict.detail.split("; ") == ["dkim=permerror d=ars.test s=same (no key published)"] * 4


def test_at_most_five_signatures_are_verified() -> None:
    verdict = authenticator().verify(aligned_signatures(6, "same") + message())
    assert verdict.detail.split("; ")[-1] == "dkim=ignored d=ars.test s=same (more than 5 signatures)"
    assert verdict.detail.count("no key published") == 5


def test_at_most_twenty_signature_fields_are_examined() -> None:
    raw = signed(message(), staff_key())
    verdict = authenticator().verify(aligned_signatures(21, "same") + raw)
    assert not verdict.authenticated  # the genuine one is the 22nd: never reached
    assert verdict.detail.startswith("dkim=ignored (22 signatures, only the first 20 examined); ")
    exactly = authenticator().verify(aligned_signatures(19, "same") + raw)
    assert "only the first" not in exactly.detail


# --- the authenticator the daemon builds from its configuration ---------------------------------------


def gateway_settings() -> Settings:
    return parse_settings({
        "database": {"url": "sqlite://"},
        "regions": [{"code": "ARA", "name": "Auvergne-Rhône-Alpes", "address": "ssi-ara@ars.test"}],
        "authentication": {"static_keys": zone(staff_key()), "trusted_authserv_ids": ["MX.ars.test"],
                           "nameservers": ["127.0.0.1"], "dns_timeout_seconds": 0.1},
    })


def test_the_configured_authenticator_uses_the_static_keys_without_dns() -> None:
    settings = gateway_settings()
    assert isinstance(auth.default_resolver(settings, use_dns=False), StaticResolver)
    assert isinstance(auth.default_resolver(settings), ChainResolver)
    verdict = auth.build_authenticator(settings, use_dns=False).verify(signed(message(), staff_key()))
    assert verdict.authenticated and verdict.auth_domain == "ars.test"
    # Static keys first, in the chain too: no DNS query for a pinned key.
    assert auth.build_authenticator(settings).verify(signed(message(), staff_key())).authenticated


def test_the_configured_authenticator_takes_the_given_resolver_and_trusted_ids() -> None:
    settings = gateway_settings()
    resolver = RecordingResolver({})
    verdict = auth.build_authenticator(settings, resolver).verify(signed(message(), staff_key()))
    assert resolver.asked == ["rsa._domainkey.ars.test"] and not verdict.authenticated
    relayed = b"Authentication-Results: mx.ars.test; dmarc=pass header.from=ars.test\r\n" + message()
    verdict = auth.build_authenticator(settings, RecordingResolver({})).verify(relayed, trusted_path=True)
    assert verdict.authenticated and verdict.method == "authentication-results"


# --- what a trusted Authentication-Results vouches for (RFC 8601, RFC 6008 header.b) ------------------

TRUSTED_IDS = ("mx.ars.test",)


def relayed(*signatures: str, ar: str = "mx.ars.test; dkim=pass header.d=ars.test") -> bytes:
    """Our MTA's A-R on top (it is prepended last), then the sender's unverified DKIM-Signatures."""
    fields = "".join(f"DKIM-Signature: {s}\r\n" for s in signatures)
    return f"Authentication-Results: {ar}\r\nReceived: by mx.ars.test\r\n{fields}".encode() + message()


def ar_verify(raw: bytes) -> SenderVerdict:
    settings = AuthenticationSettings(trusted_authserv_ids=TRUSTED_IDS)
    return Authenticator(settings, StaticResolver({})).verify(raw, trusted_path=True)


def sig(h: str, b: str = "abcd", d: str = "ars.test") -> str:
    return f"v=1; a=rsa-sha256; d={d}; s=rsa; h={h}; bh=x; b={b}"


def test_an_ar_pass_covers_what_the_named_signature_signs() -> None:
    verdict = ar_verify(relayed(sig("to", d="autre.test"), "garbage", sig("from:subject:date")))
    assert verdict.authenticated and verdict.method == "authentication-results"
    assert verdict.signed_headers == {"from", "subject", "date"}
    assert verdict.signature_key == auth.signature_key("ars.test", {b"b": b"abcd"})
    # Our own DKIM check ran first (and failed: these signatures are only names); then the A-R.
    assert verdict.detail.endswith("; Authentication-Results mx.ars.test: dkim=pass header.d=ars.test aligned")


def test_header_b_picks_the_signature_among_several_of_the_domain() -> None:
    raw = relayed(sig("from", b="zzzz"), sig("from:subject", b="ab cd\r\n ef"),
                  ar="mx.ars.test; dkim=pass header.d=ars.test header.b=abcd")
    verdict = ar_verify(raw)
    assert verdict.signed_headers == {"from", "subject"}
    assert verdict.signature_key == auth.signature_key("ars.test", {b"b": b"abcdef"})


def test_without_header_b_only_what_every_candidate_covers_counts() -> None:
    verdict = ar_verify(relayed(sig("from:subject:date", b="aaaa"), sig("from:date", b="bbbb")))
    assert verdict.signed_headers == {"from", "date"}
    assert verdict.signature_key is None  # which signature was meant is unknown


def test_at_most_twenty_candidate_signatures_are_read() -> None:
    signatures = [sig("from:subject", b=f"b{i}") for i in range(20)] + [sig("from", b="late")]
    verdict = ar_verify(relayed(*signatures))
    assert verdict.authenticated
    assert verdict.signed_headers == {"from", "subject"}  # the 21st is not read


def test_a_signature_far_down_the_header_block_is_not_read() -> None:
    filler = "".join(f"X-Filler-{i}: x\r\n" for i in range(80)).encode()
    raw = relayed(ar="mx.ars.test; dkim=pass header.d=ars.test")
    head, _, rest = raw.partition(b"Received: by mx.ars.test\r\n")
    verdict = ar_verify(head + b"Received: by mx.ars.test\r\n" + filler
                        + f"DKIM-Signature: {sig('from:subject')}\r\n".encode() + rest)
    assert verdict.authenticated
    assert verdict.signed_headers == frozenset()  # beyond the first 80 fields: nothing known


def test_signatures_without_d_or_with_a_non_ascii_d_cover_nothing_and_crash_nothing() -> None:
    raw = relayed("v=1; a=rsa-sha256; s=rsa; h=from:to; bh=x; b=abcd", sig("from:to", d="ärs.test"),
                  sig("from:subject"))
    verdict = ar_verify(raw)
    assert verdict.authenticated
    assert verdict.signed_headers == {"from", "subject"}


def test_candidates_without_b_or_with_a_non_ascii_b_crash_nothing() -> None:
    raw = relayed("v=1; a=rsa-sha256; d=ars.test; s=rsa; h=from:subject; bh=x", sig("from:subject", b="é"),
                  ar="mx.ars.test; dkim=pass header.d=ars.test header.b=abcdefgh")
    verdict = ar_verify(raw)
    assert verdict.authenticated
    assert verdict.signed_headers == frozenset()  # neither is the one header.b names


def test_a_long_dkimpy_reason_is_cut_at_120_characters() -> None:
    raw = f"DKIM-Signature: v=1; a=rsa-sha256; d=ars.test; s=rsa; h=from; bh={_BH}; b={_B}\r\n".encode() + message()
    verdict = authenticator().verify(raw)
    prefix = "dkim=fail d=ars.test s=rsa ("
    assert verdict.detail.startswith(prefix + "body hash mismatch") and verdict.detail.endswith(")")
    assert len(verdict.detail) == len(prefix) + 120 + 1


@pytest.mark.parametrize(("ar", "domain"), [
    ("mx.ars.test; dkim=pass header.d=ARS.TEST.", "ars.test"),
    ("mx.ars.test; dkim=pass header.i=agent@ars.test", "ars.test"),
    ("mx.ars.test; dkim=pass header.i=a@evil.test@ars.test", "ars.test"),  # the domain is after the last @
    ("(notre relais) mx.ars.test; dkim=pass header.d=ars.test", "ars.test"),
    ("(c)mx.ars.test; dkim=pass header.d=ars.test", "ars.test"),
    ("  MX.ars.test ; dkim=pass header.d=ars.test", "ars.test"),
])
def test_trusted_ar_variants(ar: str, domain: str) -> None:
    verdict = ar_verify(relayed(ar=ar))
    assert verdict.authenticated and verdict.auth_domain == domain
    assert verdict.detail.startswith("dkim=none (no signature); Authentication-Results mx.ars.test: dkim=pass ")


@pytest.mark.parametrize(("ar", "detail"), [
    ("mx.ars.test; dkim=pass", "Authentication-Results from mx.ars.test: no aligned pass"),
    ("mx.ars.test; dkim=pass header.d=evil.test", "Authentication-Results from mx.ars.test: no aligned pass"),
    ("other.test; dkim=pass header.d=ars.test", "no trusted Authentication-Results"),
    ("; dkim=pass header.d=ars.test", "no trusted Authentication-Results"),
    ("(unterminated mx.ars.test; dkim=pass header.d=ars.test", "no trusted Authentication-Results"),
    ("(a) mx.ars.test; dkim=pass header.d=ars.test (c)", None),
])
def test_untrusted_or_empty_ar(ar: str, detail: str | None) -> None:
    verdict = ar_verify(relayed(ar=ar))
    if detail is None:
        assert verdict.authenticated
        return
    assert not verdict.authenticated
    assert verdict.detail == f"dkim=none (no signature); {detail}"


@pytest.mark.parametrize(("value", "expected"), [
    ("mx.ars.test; x", "mx.ars.test"),
    ("(c)mx.ars.test; x", "mx.ars.test"),
    ("(a) (b) mx.ars.test; x (c)", "mx.ars.test"),
    ("  MX.Ars.Test", "mx.ars.test"),
    ("; x", None),
    ("(open", None),
    ("", None),
])
def test_authserv_id(value: str, expected: str | None) -> None:
    assert auth._authserv_id(value) == expected


# --- odd but legitimate inputs do not crash the check ---------------------------------------------------


def test_a_signature_failing_in_dkimpy_above_a_valid_one_does_not_hide_it() -> None:
    bad = b"DKIM-Signature: v=1; a=rsa-sha256; d=ars.test; s=rsa; h=from; bh=x; b=y\r\n"
    raw = bad + signed(message(), staff_key())
    verdict = authenticator().verify(raw)
    assert verdict.authenticated
    assert verdict.detail == ("dkim=fail d=ars.test s=rsa (b= value is not valid base64 (b'y')); "
                              "dkim=pass d=ars.test s=rsa aligned")


def test_a_non_ascii_selector_is_looked_up_as_written_and_fails_cleanly() -> None:
    raw = f"DKIM-Signature: v=1; a=rsa-sha256; d=ars.test; s=sél; h=from; bh={_BH}; b={_B}\r\n".encode()
    verdict = authenticator().verify(raw + signed(message(), staff_key()))
    assert verdict.authenticated
    assert verdict.detail.startswith("dkim=permerror d=ars.test s=s\ufffd\ufffdl (no key published); ")


def test_a_key_record_with_non_ascii_notes_still_verifies() -> None:
    key = staff_key()
    records = {key.name: key.txt.replace("v=DKIM1;", "v=DKIM1; n=clé de la DSI;")}
    verdict = authenticator(records).verify(signed(message(), key))
    assert verdict.authenticated


def test_every_signature_over_the_limit_is_reported() -> None:
    verdict = authenticator().verify(aligned_signatures(7, "same") + message())
    assert verdict.detail.split("; ")[-2:] == ["dkim=ignored d=ars.test s=same (more than 5 signatures)"] * 2


def test_the_daemons_authenticator_asks_dns_for_keys_it_does_not_hold() -> None:
    from tests.support.casemail import establishment_key

    raw = signed(message(sender="dsi@chu.test"), establishment_key())
    # [authentication] nameservers = 127.0.0.1, where nothing answers: a temporary failure.
    assert "dkim=temperror d=chu.test s=rsa" in auth.build_authenticator(gateway_settings()).verify(raw).detail
    offline = auth.build_authenticator(gateway_settings(), use_dns=False).verify(raw)
    assert offline.detail == "dkim=permerror d=chu.test s=rsa (no key published)"


def _relay_settings(*relays: str, smtp: bool = True) -> Settings:
    return Settings(intake=IntakeSettings(smtp=SmtpIntakeSettings(trusted_relays=relays) if smtp else None))


@pytest.mark.parametrize(("peer", "relays", "expected"), [
    ("[192.0.2.10]", ("192.0.2.10",), True),  # an address literal as SMTP writes it
    (" 192.0.2.10 ", (" 192.0.2.0/24 ",), True),
    ("192.0.2.10", ("192.0.2.1/24",), True),  # host bits set: still the network
    ("192.0.2.10", ("pas une adresse", "192.0.2.10"), True),  # a bad entry trusts nobody, the next still counts
    ("192.0.2.10", ("pas une adresse",), False),
])
def test_trusted_relays(peer: str, relays: tuple[str, ...], expected: bool) -> None:
    assert auth.arrived_via_trusted_path(_relay_settings(*relays), "smtp", peer) is expected


def test_no_smtp_intake_means_no_trusted_relay() -> None:
    assert auth.arrived_via_trusted_path(_relay_settings(smtp=False), "smtp", "192.0.2.10") is False


# --- no single author, or a block dkimpy cannot split: never authenticated ----------------------------


@pytest.mark.parametrize(("raw", "detail"), [
    (b"To: ssi-ara@ars.test\r\nSubject: x\r\n\r\nbody\r\n", "no From header"),
    (b"From: agent@ars.test, autre@ars.test\r\nTo: ssi-ara@ars.test\r\n\r\nbody\r\n",
     "From must hold exactly one address"),
])
def test_no_single_author(raw: bytes, detail: str) -> None:
    # A genuine signature of ars.test on top: it must not matter without an author to align with.
    signature = DkimSigner("ars.test", [staff_key().signing_key()]).sign(message())
    verdict = authenticator().verify(signature + raw)
    assert verdict.authenticated is False
    assert (verdict.address, verdict.domain, verdict.detail) == (None, None, detail)


def test_a_block_dkimpy_cannot_split_is_never_authenticated_even_past_the_wire_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defence in depth: ``wire.header_block_refusal`` refuses such a block first; were it to let
    one through, the strict split still fails and nothing is authenticated."""
    raw = signed(message(), staff_key()).replace(b"To: ssi-ara@ars.test\r\n", b"To: ssi-ara@ars.test\r\nJunk line\r\n")
    monkeypatch.setattr(auth, "header_block_refusal", lambda raw: None)
    verdict = authenticator().verify(raw)
    assert verdict.authenticated is False
    assert (verdict.address, verdict.domain, verdict.detail) == (VICTIM, "ars.test", "malformed header block")
