"""A DKIM key lookup that fails temporarily (DNS timeout, SERVFAIL) defers the message; it does
not judge it unauthenticated (processing/runner.py, ``SenderVerdict.temporary``).

The attacker probe: one dropped DNS answer for the genuine staff selector made a genuine command
"non authentifié", processed once and never retried.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from mailgateway.app import build_app
from mailgateway.clock import FixedClock, aware
from mailgateway.dns import DnsTemporaryError, StaticResolver, normalise_name
from mailgateway.intake.accept import accept_in
from mailgateway.processing.runner import KEY_UNAVAILABLE
from mailgateway.processing.worker import AnalysisWorker
from mailgateway.settings import parse_settings
from mailgateway.store.engine import transaction
from mailgateway.store.models import CaseEvent, InboundMessage
from tests.support import casemail
from tests.support.casegateway import NOW, Gateway, settings_data
from tests.support.db import at_head
from tests.support.dkim import rsa_key, zone

STAFF_KEY_NAME = normalise_name(casemail.staff_key().name)


class FlakyResolver:
    """The static test keys, but the first ``failures`` lookups of ``name`` time out."""

    def __init__(self, records: dict[str, str], failures: int, name: str = STAFF_KEY_NAME) -> None:
        self._static = StaticResolver(records)
        self.failures = failures
        self.name = name
        self.asked: list[str] = []

    def txt(self, name: str) -> str | None:
        self.asked.append(normalise_name(name))
        if normalise_name(name) == self.name and self.failures > 0:
            self.failures -= 1
            raise DnsTemporaryError(f"DNS lookup failed for {name}: timeout")
        return self._static.txt(name)


def _gateway(url: str, resolver: FlakyResolver, *, static_keys: dict[str, str] | None = None,
             **processing: Any) -> Iterator[Gateway]:
    data = settings_data(at_head(url))
    # The keys are published in "DNS" (the resolver), not pinned as static keys: static keys are
    # answered locally and never fail.
    data["authentication"]["static_keys"] = static_keys or {}
    data["processing"] = {"isolation": "thread", **processing}
    clock = FixedClock(NOW)
    app = build_app(parse_settings(data), clock=clock, resolver=resolver)
    try:
        yield Gateway(app, clock)
    finally:
        app.close()


def _records() -> dict[str, str]:
    return {**casemail.staff_keys(), **zone(casemail.establishment_key())}


@pytest.fixture
def flaky() -> FlakyResolver:
    return FlakyResolver(_records(), failures=1)


@pytest.fixture
def gw(sqlite_url: str, flaky: FlakyResolver) -> Iterator[Gateway]:
    yield from _gateway(sqlite_url, flaky)


def _accept(gw: Gateway, raw: bytes) -> int:
    with transaction(gw.app.factory) as s:
        return accept_in(s, raw, source="cli", now=gw.clock.now()).inbound_id


def _row(gw: Gateway, inbound_id: int) -> InboundMessage:
    with gw.app.factory() as s:
        found = s.get(InboundMessage, inbound_id)
        assert found is not None
        s.expunge(found)
        return found


def _command_mail(gw: Gateway, ref: str, body: str, **kw: Any) -> bytes:
    notification = gw.notification(ref, "agent@ars.test")
    return casemail.staff_mail(body, in_reply_to=notification.message_id, subject=f"RE: [{ref}] Nouvelle déclaration",
                               **kw)


def test_a_genuine_command_whose_key_lookup_timed_out_is_deferred_then_applied(
    gw: Gateway, flaky: FlakyResolver
) -> None:
    ref = gw.declare()
    inbound = _accept(gw, _command_mail(gw, ref, "#qualifier grave\n"))

    [result] = gw.app.processor.process_pending()
    assert (result.status, result.kind) == ("deferred", "command")
    stored = _row(gw, inbound)
    assert (stored.status, stored.attempts) == ("received", 1)
    assert stored.retry_at is not None and aware(stored.retry_at) == NOW + timedelta(seconds=120)
    assert stored.reason is not None and stored.reason.startswith(KEY_UNAVAILABLE)
    assert gw.case(ref).severity == "NON_QUALIFIE"
    assert gw.outbound("recu_commandes") == []  # no "non authentifié" receipt

    # Sweeps before retry_at leave it alone (no DNS query, no attempt used).
    asked = len(flaky.asked)
    gw.clock.advance(seconds=119)
    assert gw.app.processor.pending() == []
    assert gw.app.processor.process_pending() == []
    assert len(flaky.asked) == asked and _row(gw, inbound).attempts == 1

    gw.clock.advance(seconds=1)
    [result] = gw.app.processor.process_pending()
    assert result.status == "processed"
    stored = _row(gw, inbound)
    assert (stored.status, stored.attempts, stored.retry_at) == ("processed", 2, None)
    assert stored.auth is not None and stored.auth["authenticated"] is True
    case = gw.case(ref)
    assert case.severity == "GRAVE"
    assert "[appliquée] #qualifier grave" in gw.receipt_text()


def test_a_key_that_is_not_published_is_a_permanent_failure_processed_at_once(sqlite_url: str) -> None:
    resolver = FlakyResolver(_records(), failures=0)
    for gw in _gateway(sqlite_url, resolver):
        ref = gw.declare()
        inbound = _accept(gw, _command_mail(gw, ref, "#qualifier grave\n", key=rsa_key("absent", "ars.test")))
        [result] = gw.app.processor.process_pending()
        assert result.status == "processed"
        stored = _row(gw, inbound)
        assert (stored.status, stored.attempts, stored.retry_at) == ("processed", 1, None)
        assert gw.case(ref).severity == "NON_QUALIFIE"
        text = gw.receipt_text()
        assert "Aucune n'a été appliquée : ce message n'est pas authentifié" in text and KEY_UNAVAILABLE not in text


def test_the_last_attempt_processes_it_as_unauthenticated_saying_the_key_could_not_be_fetched(
    sqlite_url: str,
) -> None:
    resolver = FlakyResolver(_records(), failures=100)
    for gw in _gateway(sqlite_url, resolver, max_attempts=3, dns_retry_seconds=300):
        ref = gw.declare()
        inbound = _accept(gw, _command_mail(gw, ref, "#qualifier grave\n"))
        for attempt in (1, 2):
            [result] = gw.app.processor.process_pending()
            assert result.status == "deferred"
            stored = _row(gw, inbound)
            assert (stored.status, stored.attempts) == ("received", attempt)
            assert stored.retry_at is not None and aware(stored.retry_at) == gw.clock.now() + timedelta(seconds=300)
            gw.clock.advance(seconds=300)
        [result] = gw.app.processor.process_pending()
        assert result.status == "processed"  # not quarantined as a poison message
        stored = _row(gw, inbound)
        assert (stored.status, stored.attempts) == ("processed", 3)
        assert stored.auth is not None and stored.auth["authenticated"] is False
        assert stored.auth["detail"].startswith(f"{KEY_UNAVAILABLE}, 3 tentatives")
        assert gw.case(ref).severity == "NON_QUALIFIE"
        text = gw.receipt_text()
        assert "Aucune n'a été appliquée : ce message n'est pas authentifié" in text and KEY_UNAVAILABLE in text
        with gw.app.factory() as s:
            refused = list(s.scalars(select(CaseEvent).where(CaseEvent.type == "commande_refusee")))
        assert refused and any(KEY_UNAVAILABLE in str(e.data) for e in refused)
        assert gw.app.processor.process_pending() == []


def test_ingest_processes_at_once_as_unauthenticated_saying_why(gw: Gateway) -> None:
    """``process(id)`` alone (``mailgateway ingest``): no sweep will come back to it."""
    ref = gw.declare()
    result = gw.command(ref, "#qualifier grave\n")
    assert result.status == "processed"
    assert gw.case(ref).severity == "NON_QUALIFIE"
    assert KEY_UNAVAILABLE in gw.receipt_text()


def test_an_authenticated_message_is_never_deferred_by_another_signature_s_dns_failure(
    sqlite_url: str,
) -> None:
    """Two aligned signatures: the first key's lookup times out, the second (a pinned static key,
    answered locally whatever the DNS budget) verifies: authenticated, processed at once."""
    other = rsa_key("other", "ars.test")
    resolver = FlakyResolver({**_records(), **zone(other)}, failures=1, name=normalise_name(other.name))
    for gw in _gateway(sqlite_url, resolver, static_keys=casemail.staff_keys()):
        ref = gw.declare()
        raw = _command_mail(gw, ref, "#qualifier grave\n")
        inbound = _accept(gw, casemail.sign(raw, other))  # "other" on top: checked first
        [result] = gw.app.processor.process_pending()
        assert result.status == "processed", result
        assert _row(gw, inbound).auth["authenticated"] is True  # type: ignore[index]
        assert gw.case(ref).severity == "GRAVE"


def test_the_worker_path_defers_too(sqlite_url: str) -> None:
    """The daemon's arrangement: analysis in a worker process whose DNS server never answers."""
    data = settings_data(at_head(sqlite_url))
    # A DNS server on loopback that never answers (only 127.0.0.1 is ever a target): a UDP socket
    # bound to port 53 that reads nothing. The key of selector "dns" is not a static key.
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        silent.bind(("127.0.0.1", 53))
    except OSError:
        silent.close()
        pytest.skip("cannot bind 127.0.0.1:53 for a silent DNS server (not root, or in use)")
    data["authentication"]["nameservers"] = ["127.0.0.1"]
    data["authentication"]["dns_timeout_seconds"] = 0.5
    data["processing"] = {"max_attempts": 2, "analysis_timeout_seconds": 60.0}
    clock = FixedClock(NOW)
    app = build_app(parse_settings(data), clock=clock)
    worker = AnalysisWorker(app.settings)
    app.processor.worker = worker
    try:
        gw = Gateway(app, clock)
        ref = gw.declare()
        inbound = _accept(gw, _command_mail(gw, ref, "#qualifier grave\n", key=rsa_key("dns", "ars.test")))
        [result] = app.processor.process_pending()
        assert result.status == "deferred"
        assert _row(gw, inbound).status == "received"
        clock.advance(seconds=120)
        [result] = app.processor.process_pending()
        assert result.status == "processed"
        assert _row(gw, inbound).attempts == 2
        assert KEY_UNAVAILABLE in gw.receipt_text()
    finally:
        worker.close()
        app.close()
        silent.close()
