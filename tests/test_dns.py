"""TXT resolvers: static keys, dnspython against a loopback server (never real DNS), the chain."""

from __future__ import annotations

import time

import pytest

from mailgateway.dns import (
    ChainResolver,
    DnsPythonResolver,
    DnsTemporaryError,
    StaticResolver,
    build_resolver,
)
from mailgateway.settings import AuthenticationSettings
from tests.support.dkim import TxtServer, free_udp_port, rsa_key, zone


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_static_resolver_ignores_case_and_trailing_dot() -> None:
    resolver = StaticResolver({"Sel._domainkey.Example.TEST.": "v=DKIM1; p=abc"})
    assert resolver.txt("sel._domainkey.example.test") == "v=DKIM1; p=abc"
    assert resolver.txt("SEL._domainkey.example.test.") == "v=DKIM1; p=abc"
    assert resolver.txt("other._domainkey.example.test") is None


def test_chain_prefers_static_keys_and_falls_back() -> None:
    static = StaticResolver({"a._domainkey.x.test": "static"})
    dns_like = StaticResolver({"a._domainkey.x.test": "dns", "b._domainkey.x.test": "dns-b"})
    chain = ChainResolver(static, dns_like)
    assert chain.txt("a._domainkey.x.test.") == "static"
    assert chain.txt("b._domainkey.x.test") == "dns-b"
    assert chain.txt("c._domainkey.x.test") is None
    assert ChainResolver(static, None).txt("b._domainkey.x.test") is None


def test_dnspython_resolver_joins_long_txt_strings() -> None:
    key = rsa_key()
    assert len(key.txt) > 255  # a 2048-bit key needs several character-strings
    with TxtServer(zone(key)) as server:
        resolver = DnsPythonResolver(["127.0.0.1"], timeout=2.0, port=server.port)
        assert resolver.txt(key.name + ".") == key.txt


def test_dnspython_resolver_returns_none_for_unknown_names() -> None:
    with TxtServer({}) as server:
        resolver = DnsPythonResolver(["127.0.0.1"], timeout=2.0, port=server.port)
        assert resolver.txt("nothing._domainkey.example.test") is None


def test_dnspython_resolver_caches_until_the_ttl_expires() -> None:
    clock = FakeMonotonic()
    with TxtServer({"s._domainkey.x.test": "v=DKIM1; p=x"}, ttl=300) as server:
        resolver = DnsPythonResolver(["127.0.0.1"], timeout=2.0, port=server.port, monotonic=clock)
        assert resolver.txt("s._domainkey.x.test") == "v=DKIM1; p=x"
        assert resolver.txt("S._domainkey.x.test.") == "v=DKIM1; p=x"
        assert server.queries == 1
        clock.now += 301
        server.records["s._domainkey.x.test"] = "v=DKIM1; p=rotated"
        assert resolver.txt("s._domainkey.x.test") == "v=DKIM1; p=rotated"
        assert server.queries == 2


def test_dnspython_resolver_caches_negative_answers_briefly() -> None:
    clock = FakeMonotonic()
    with TxtServer({}) as server:
        resolver = DnsPythonResolver(["127.0.0.1"], timeout=2.0, port=server.port, monotonic=clock, negative_ttl=60)
        assert resolver.txt("n._domainkey.x.test") is None
        assert resolver.txt("n._domainkey.x.test") is None
        assert server.queries == 1
        clock.now += 61
        server.records["n._domainkey.x.test"] = "v=DKIM1; p=new"
        assert resolver.txt("n._domainkey.x.test") == "v=DKIM1; p=new"


def test_servfail_is_a_temporary_error_remembered_for_a_minute_only() -> None:
    """A failing name is not queried again for ``failure_ttl`` (it used to be queried
    — and to cost a timeout — for every message naming it), then it is."""
    clock = FakeMonotonic()
    with TxtServer({"s._domainkey.x.test": "v=DKIM1; p=x"}) as server:
        resolver = DnsPythonResolver(["127.0.0.1"], timeout=2.0, port=server.port, monotonic=clock, failure_ttl=60)
        server.fail = True
        with pytest.raises(DnsTemporaryError):
            resolver.txt("s._domainkey.x.test")
        asked = server.queries
        server.fail = False
        with pytest.raises(DnsTemporaryError):
            resolver.txt("s._domainkey.x.test")
        assert server.queries == asked
        clock.now += 61
        assert resolver.txt("s._domainkey.x.test") == "v=DKIM1; p=x"


def test_unreachable_server_is_a_temporary_error_within_the_timeout() -> None:
    resolver = DnsPythonResolver(["127.0.0.1"], timeout=0.5, port=free_udp_port())
    started = time.monotonic()
    with pytest.raises(DnsTemporaryError):
        resolver.txt("s._domainkey.x.test")
    assert time.monotonic() - started < 3.0


def test_cache_is_bounded() -> None:
    with TxtServer({}) as server:
        resolver = DnsPythonResolver(["127.0.0.1"], timeout=2.0, port=server.port, max_entries=2)
        for name in ("a.x.test", "b.x.test", "c.x.test"):
            resolver.txt(name)
        resolver.txt("a.x.test")  # evicted (least recently used): asked again
        assert server.queries == 4


def test_build_resolver_without_dns_uses_static_keys_only() -> None:
    settings = AuthenticationSettings(static_keys={"s._domainkey.x.test.": "v=DKIM1; p=static"})
    resolver = build_resolver(settings, use_dns=False)
    assert isinstance(resolver, StaticResolver)
    assert resolver.txt("s._domainkey.x.test") == "v=DKIM1; p=static"


def test_build_resolver_chains_static_keys_before_configured_nameservers() -> None:
    with TxtServer({"d._domainkey.x.test": "v=DKIM1; p=dns", "s._domainkey.x.test": "v=DKIM1; p=dns"}) as server:
        settings = AuthenticationSettings(
            static_keys={"s._domainkey.x.test": "v=DKIM1; p=static"},
            nameservers=("127.0.0.1",),
            dns_timeout_seconds=2.0,
        )
        resolver = build_resolver(settings, port=server.port)
        assert resolver.txt("s._domainkey.x.test") == "v=DKIM1; p=static"
        assert resolver.txt("d._domainkey.x.test") == "v=DKIM1; p=dns"
        assert server.queries == 1
