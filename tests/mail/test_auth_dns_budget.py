"""Bounded DNS work per message (docs/guarantees.md): an anonymous mail with several aligned DKIM signatures
for domains whose DNS never answers cost one timeout per signature, and six such mails held an
honest declaration for 33 s. Now: no lookup after the first temporary failure of a message, at
most ``MAX_KEY_LOOKUPS`` distinct key names per message, and the resolver remembers a failing
name for a minute. Counted in lookups made, never in wall time (no real DNS: injected resolvers).
"""

from __future__ import annotations

import time

import dns.exception
import dns.resolver
import pytest

from mailgateway.dns import ChainResolver, DnsPythonResolver, DnsTemporaryError, StaticResolver
from mailgateway.mail.auth import MAX_KEY_LOOKUPS, Authenticator
from mailgateway.settings import AuthenticationSettings
from tests.mail.test_auth import CHU, chu_ed, chu_rsa, message, signed
from tests.support.dkim import zone


class DeadDns:
    """A resolver whose every lookup is a timeout (after a short pause, like a real one)."""

    def __init__(self, pause: float = 0.0) -> None:
        self.asked: list[str] = []
        self.pause = pause

    def txt(self, name: str) -> str | None:
        self.asked.append(name)
        time.sleep(self.pause)
        raise DnsTemporaryError(f"DNS lookup failed for {name}: timeout")


class Counting:
    """Answers from a static zone, counting the lookups."""

    def __init__(self, records: dict[str, str]) -> None:
        self.static = StaticResolver(records)
        self.asked: list[str] = []

    def txt(self, name: str) -> str | None:
        self.asked.append(name)
        return self.static.txt(name)


def fake_signatures(domain: str, count: int, selector: str = "s") -> bytes:
    """Merely aligned signatures (``d=`` the From domain): each one would cost a key lookup."""
    return b"".join(
        f"DKIM-Signature: v=1; a=rsa-sha256; d={domain}; s={selector}{i}; h=from; bh=AAAA; b=AAAA\r\n".encode()
        for i in range(count))


def bomb(count: int = 5) -> bytes:
    return fake_signatures("attacker.test", count) + message(sender="x@attacker.test")


def test_after_a_dns_timeout_no_other_signature_of_the_message_is_looked_up() -> None:
    dead = DeadDns(pause=0.05)
    verdict = Authenticator(AuthenticationSettings(), dead).verify(bomb(5))
    assert not verdict.authenticated
    assert len(dead.asked) == 1  # was 5: five DNS timeouts for one anonymous message
    assert verdict.detail.count("dkim=temperror") == 5
    assert verdict.detail.count("skipped: DNS budget spent") == 4


def test_at_most_three_distinct_key_names_are_looked_up_per_message() -> None:
    resolver = Counting({})  # no key anywhere: each name a (cheap) NXDOMAIN
    verdict = Authenticator(AuthenticationSettings(), resolver).verify(bomb(5))
    assert not verdict.authenticated
    assert MAX_KEY_LOOKUPS == 3 and len(resolver.asked) == 3
    assert verdict.detail.count("skipped: DNS budget spent") == 2


def test_a_name_named_twice_in_one_message_is_looked_up_once() -> None:
    same = b"DKIM-Signature: v=1; a=rsa-sha256; d=attacker.test; s=s; h=from; bh=AAAA; b=AAAA\r\n"
    resolver = Counting({})
    Authenticator(AuthenticationSettings(), resolver).verify(same * 4 + message(sender="x@attacker.test"))
    assert resolver.asked == ["s._domainkey.attacker.test"]


def test_a_dual_rsa_and_ed25519_signature_still_authenticates() -> None:
    """The ed25519 key is not published (an old verifier's view): the RSA one, second, is checked."""
    resolver = Counting(zone(chu_rsa()))
    verdict = Authenticator(AuthenticationSettings(), resolver).verify(signed(message(), chu_rsa(), chu_ed()))
    assert verdict.authenticated and verdict.auth_domain == CHU
    assert len(resolver.asked) == 2


def test_a_genuine_signature_behind_two_fakes_still_authenticates_behind_three_not() -> None:
    raw = signed(message(), chu_rsa())
    resolver = Counting(zone(chu_rsa()))
    assert Authenticator(AuthenticationSettings(), resolver).verify(fake_signatures(CHU, 2, "x") + raw).authenticated
    verdict = Authenticator(AuthenticationSettings(), Counting(zone(chu_rsa()))).verify(
        fake_signatures(CHU, 3, "x") + raw)
    assert not verdict.authenticated
    assert "skipped: DNS budget spent" in verdict.detail


# --- the resolver remembers a failing name -------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def dead_dnspython(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> tuple[DnsPythonResolver, list[str]]:
    """A DnsPythonResolver whose queries all time out, without a packet sent."""
    resolver = DnsPythonResolver(["127.0.0.1"], timeout=0.1, monotonic=clock)
    queries: list[str] = []

    def timeout(qname: object, *_a: object, **_k: object) -> object:
        queries.append(str(qname))
        raise dns.exception.Timeout

    monkeypatch.setattr(resolver._resolver, "resolve", timeout)
    return resolver, queries


def test_a_temporary_failure_is_remembered_for_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    resolver, queries = dead_dnspython(monkeypatch, clock)
    for _ in range(3):
        with pytest.raises(DnsTemporaryError):
            resolver.txt("s0._domainkey.attacker.test")
    assert len(queries) == 1
    clock.now += 59
    with pytest.raises(DnsTemporaryError):
        resolver.txt("S0._domainkey.attacker.test.")
    assert len(queries) == 1
    clock.now += 2
    with pytest.raises(DnsTemporaryError):
        resolver.txt("s0._domainkey.attacker.test")
    assert len(queries) == 2


def test_six_bomb_messages_cost_one_timeout_not_thirty(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reported attack: six anonymous mails, five dead aligned signatures each."""
    clock = Clock()
    dns_resolver, queries = dead_dnspython(monkeypatch, clock)
    auth = Authenticator(AuthenticationSettings(), ChainResolver(StaticResolver({}), dns_resolver))
    for _ in range(6):
        verdict = auth.verify(bomb(5))
        assert not verdict.authenticated and "dkim=temperror" in verdict.detail
    assert len(queries) == 1


def test_a_name_that_answers_again_is_no_longer_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    resolver, queries = dead_dnspython(monkeypatch, clock)
    with pytest.raises(DnsTemporaryError):
        resolver.txt("sel._domainkey.chu.test")
    clock.now += 61

    def nxdomain(qname: object, *_a: object, **_k: object) -> object:
        queries.append(str(qname))
        raise dns.resolver.NXDOMAIN

    monkeypatch.setattr(resolver._resolver, "resolve", nxdomain)
    assert resolver.txt("sel._domainkey.chu.test") is None
    assert len(queries) == 2


def test_a_dead_selector_above_a_valid_one_does_not_skip_a_static_key() -> None:
    """Attacker probe, round 2: a fake aligned signature whose selector never answers, put above
    the genuine one, spent the budget and the genuine static key was skipped."""
    genuine = signed(message(), chu_rsa())
    forged = fake_signatures(CHU, 1, selector="slow") + genuine
    static = zone(chu_rsa())
    dead = DeadDns()
    settings = AuthenticationSettings(static_keys=static)
    verdict = Authenticator(settings, ChainResolver(StaticResolver(static), dead)).verify(forged)
    assert verdict.authenticated, verdict.detail
    assert dead.asked == [f"slow0._domainkey.{CHU}"]
