"""A sweep processes the whole backlog (issue 19): after a burst nothing wakes processing again
(the accepts' wake-ups were all read before the first sweep), so stopping after ``limit`` left
the rest for the idle sweep — 5 s per 200 messages, a 2,000-declaration burst acknowledged at
24 msg/s instead of 48. The daemon's loops (processing host and thread) call ``process_backlog``."""

from __future__ import annotations

import inspect

import pytest
from sqlalchemy import select

from mailgateway import daemon
from mailgateway.app import App
from mailgateway.processing import host, runner
from mailgateway.store.models import InboundMessage
from tests.processing.test_batches import accept, app, declaration  # noqa: F401 - the fixture


def statuses(app: App) -> list[str]:  # noqa: F811
    with app.factory() as s:
        return list(s.scalars(select(InboundMessage.status).order_by(InboundMessage.id)))


def test_the_whole_backlog_in_sweeps_of_limit(app: App) -> None:  # noqa: F811
    for n in range(1, 8):
        accept(app, declaration(n))
    results = app.processor.process_backlog(3)
    assert [r.status for r in results] == ["processed"] * 7  # 3 + 3 + 1: nothing left for later
    assert statuses(app) == ["processed"] * 7


def test_a_full_sweep_that_settles_nothing_does_not_spin(app: App, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    calls: list[int] = []

    def nothing_settled(self: runner.Processor, limit: int = 1000) -> list[runner.Result]:
        calls.append(limit)
        return [runner.Result(i, "skipped") for i in range(limit)]  # another instance holds them

    monkeypatch.setattr(runner.Processor, "process_pending", nothing_settled)
    assert len(app.processor.process_backlog(3)) == 3
    assert calls == [3]  # the idle sweep tries again later


def test_the_daemon_loops_sweep_the_backlog() -> None:
    # Both loops (host = "process" and host = "thread") must use it, not a single sweep.
    assert "process_backlog(SWEEP_LIMIT)" in inspect.getsource(host._Host.run)
    assert "process_backlog, SWEEP_LIMIT" in inspect.getsource(daemon.Daemon._processing_loop)
