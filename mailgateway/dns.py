"""TXT lookups for DKIM public keys, behind an injected resolver (docs/guarantees.md: offline tests).

Analysis code never resolves names itself: it is given a ``TxtResolver``. The daemon composes
``ChainResolver(StaticResolver(settings.authentication.static_keys), DnsPythonResolver(...))`` so that
keys configured offline win over DNS; tests give a ``StaticResolver`` or point ``DnsPythonResolver``
at a loopback server they start.

A lookup that finds nothing returns ``None``; a lookup that could not be made (timeout, SERVFAIL)
raises ``DnsTemporaryError`` so that the caller can tell "no key" (a permanent failure, RFC 6376
§6.1.2 PERMFAIL) from "try later" (TEMPFAIL).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeVar

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from mailgateway.errors import AuthenticationError
from mailgateway.settings import AuthenticationSettings

__all__ = [
    "ChainResolver",
    "DnsPythonResolver",
    "DnsTemporaryError",
    "StaticResolver",
    "TxtResolver",
    "build_resolver",
    "normalise_name",
]


_T = TypeVar("_T")


class DnsTemporaryError(AuthenticationError):
    """The lookup could not be completed (timeout, SERVFAIL, no server reachable)."""


class TxtResolver(Protocol):
    def txt(self, name: str) -> str | None:
        """The TXT value at ``name`` (strings of one record joined), or None when there is none."""
        ...


def normalise_name(name: str | bytes) -> str:
    """Lower-case, without the trailing dot: ``b"Sel._domainkey.Example.TEST."`` -> ``sel._domainkey...``."""
    text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
    return text.strip().rstrip(".").lower()


class StaticResolver:
    """Keys from configuration ([authentication.static_keys]); names are case- and dot-insensitive."""

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self._records = {normalise_name(name): value for name, value in mapping.items()}

    def txt(self, name: str) -> str | None:
        return self._records.get(normalise_name(name))


class ChainResolver:
    """Static keys first, then the fallback (DNS): an operator can pin or replace a published key."""

    def __init__(self, static: TxtResolver, fallback: TxtResolver | None) -> None:
        self._static = static
        self._fallback = fallback

    def txt(self, name: str) -> str | None:
        value = self._static.txt(name)
        if value is not None or self._fallback is None:
            return value
        return self._fallback.txt(name)


class DnsPythonResolver:
    """TXT lookups with dnspython and a small TTL cache (thread-safe).

    ``nameservers`` empty means the system configuration (``/etc/resolv.conf``); tests always give
    ``["127.0.0.1"]`` and the port of a server they run. Positive answers are cached for their TTL
    (capped at ``max_ttl``), negative ones (NXDOMAIN, no TXT) for ``negative_ttl`` — RFC 2308 would
    use the SOA minimum, but a short fixed value is enough for key lookups and keeps this simple.
    Temporary failures (timeout, SERVFAIL) are remembered for ``failure_ttl`` and raised again
    without a query: RFC 2308 §7.1 allows caching server failures for up to five minutes, and a
    dead domain named by message after message must cost one timeout a minute, not one per
    message (docs/guarantees.md, bounded work).
    """

    def __init__(
        self,
        nameservers: Sequence[str] | None = (),
        timeout: float = 5.0,
        *,
        port: int = 53,
        max_ttl: float = 3600.0,
        negative_ttl: float = 60.0,
        failure_ttl: float = 60.0,
        max_entries: int = 1024,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if nameservers:
            self._resolver = dns.resolver.Resolver(configure=False)
            self._resolver.nameservers = list(nameservers)
        else:
            try:
                self._resolver = dns.resolver.Resolver(configure=True)
            except dns.resolver.NoResolverConfiguration:
                # No usable /etc/resolv.conf: every lookup becomes a temporary error, not a crash.
                self._resolver = dns.resolver.Resolver(configure=False)
        self._resolver.port = port
        # lifetime bounds the whole query (all servers, retries); timeout each attempt.
        self._resolver.lifetime = timeout
        self._resolver.timeout = timeout
        self._max_ttl = max_ttl
        self._negative_ttl = negative_ttl
        self._failure_ttl = failure_ttl
        self._max_entries = max_entries
        self._monotonic = monotonic
        self._cache: OrderedDict[str, tuple[float, str | None]] = OrderedDict()
        self._failures: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    def txt(self, name: str) -> str | None:
        key = normalise_name(name)
        now = self._monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > now:
                self._cache.move_to_end(key)
                return hit[1]
            failed = self._failures.get(key)
            if failed is not None and failed[0] > now:
                raise DnsTemporaryError(f"{failed[1]} (cached failure)")
        try:
            value, ttl = self._query(key)
        except DnsTemporaryError as exc:
            self._remember(self._failures, key, (self._monotonic() + self._failure_ttl, str(exc)))
            raise
        with self._lock:
            self._failures.pop(key, None)
        self._remember(self._cache, key, (now + ttl, value))
        return value

    def _remember(self, cache: OrderedDict[str, _T], key: str, entry: _T) -> None:
        with self._lock:
            cache[key] = entry
            cache.move_to_end(key)
            while len(cache) > self._max_entries:
                cache.popitem(last=False)

    def _query(self, key: str) -> tuple[str | None, float]:
        try:
            qname = dns.name.from_text(key)
            answer = self._resolver.resolve(qname, dns.rdatatype.TXT, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None, self._negative_ttl
        except dns.name.NameTooLong:
            return None, self._negative_ttl
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            raise DnsTemporaryError(f"DNS lookup failed for {key}: {exc}") from exc
        except dns.exception.DNSException as exc:
            raise DnsTemporaryError(f"DNS lookup failed for {key}: {exc}") from exc
        values = [b"".join(rdata.strings).decode("ascii", "replace") for rdata in answer]
        # RFC 6376 §3.6.2.2: with several records the verifier may choose one; prefer a DKIM key.
        values.sort(key=lambda v: not v.lstrip().startswith("v=DKIM1"))
        ttl = min(float(answer.rrset.ttl if answer.rrset is not None else 0), self._max_ttl)
        return (values[0] if values else None), ttl


def build_resolver(settings: AuthenticationSettings, *, use_dns: bool = True, port: int = 53) -> TxtResolver:
    """The daemon's resolver: ``[authentication.static_keys]`` first, then DNS.

    ``use_dns=False`` gives the static keys alone: for side-effect-free commands and tests, which
    must never query real DNS (docs/guarantees.md); ``nameservers`` empty means the system resolver.
    """
    static = StaticResolver(settings.static_keys)
    if not use_dns:
        return static
    dns_resolver = DnsPythonResolver(settings.nameservers, settings.dns_timeout_seconds, port=port)
    return ChainResolver(static, dns_resolver)
