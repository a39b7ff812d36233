"""Accepting comes first, processing is never starved: while messages arrive, a sweep lets intake
have the write lock, but each message still waits a bounded time and every one is processed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailgateway.intake.accept import accept_in
from mailgateway.processing import runner
from mailgateway.store.engine import transaction
from tests.support import casemail
from tests.support.casegateway import Gateway, make_gateway


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def _accept(gw: Gateway, n: int) -> int:
    with transaction(gw.app.factory) as s:
        return accept_in(s, casemail.declaration(n), source="smtp", now=gw.clock.now()).inbound_id


def test_a_sweep_asks_intake_first_and_still_processes_everything_under_endless_arrivals(gw: Gateway) -> None:
    asked: list[int] = []

    def busy() -> bool:  # an MTA that never stops sending
        asked.append(1)
        return True

    ids = [_accept(gw, n) for n in (1, 2, 3)]
    gw.app.processor.intake_busy = busy
    results = gw.app.processor.process_pending()
    assert [r.inbound_id for r in results] == ids
    assert {r.status for r in results} == {"processed"}
    assert len({r.case_ref for r in results}) == 3
    assert len(asked) >= 3  # intake was given the lock before each message


def test_a_quiet_intake_costs_a_sweep_nothing(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    # With the bound raised far above any test timeout, finishing proves the sweep did not wait.
    monkeypatch.setattr(runner, "INTAKE_YIELD_SECONDS", 3600.0)
    ids = [_accept(gw, n) for n in (1, 2)]
    gw.app.processor.intake_busy = lambda: False
    assert [r.inbound_id for r in gw.app.processor.process_pending()] == ids


def test_a_halted_sweep_stops_waiting_for_intake(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "INTAKE_YIELD_SECONDS", 3600.0)
    _accept(gw, 1)
    gw.app.processor.intake_busy = lambda: True
    gw.app.processor.halt.set()  # the daemon's drain ran out
    assert gw.app.processor.process_pending() == []
