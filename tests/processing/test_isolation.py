"""Bounded work per message (docs/guarantees.md): attempts counted before each try, analysis in a worker
process with a time budget, killed and restarted alone (the slow message: tests/support/slow.py).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import update

from mailgateway.app import App, build_app
from mailgateway.clock import FixedClock
from mailgateway.intake.accept import accept_in
from mailgateway.processing import worker as worker_module
from mailgateway.processing.runner import Result
from mailgateway.processing.worker import AnalysisWorker, analyse_inbound
from mailgateway.settings import parse_settings
from mailgateway.store.engine import reading, transaction
from mailgateway.store.models import InboundMessage
from tests.support.db import at_head
from tests.support.dkim import zone
from tests.support.servers import wait_for
from tests.support.slow import SLOW_KEY as KEY
from tests.support.slow import large_signed_declaration

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def declaration(n: int) -> bytes:
    return (
        f"From: dsi{n}@chu.test\r\nTo: ssi-ara@ars.test\r\nSubject: Incident {n}\r\n"
        f"Message-ID: <d{n}@chu.test>\r\nDate: Fri, 27 Nov 2026 09:00:00 +0100\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        "Numéro FINESS : 690781810\r\nType d'incident : rançongiciel\r\n"
        f"Serveurs chiffrés, incident numéro {n}.\r\n"
    ).encode()


def settings_for(url: str, **processing: Any) -> Any:
    return parse_settings({
        "database": {"url": url},
        "regions": [{"code": "ARA", "name": "Auvergne-Rhône-Alpes", "address": "ssi-ara@ars.test"}],
        "staff": [{"address": "agent@ars.test", "region": "ARA"}],
        "authentication": {"nameservers": ["127.0.0.1"], "dns_timeout_seconds": 0.1, "static_keys": zone(KEY)},
        "processing": processing,
    })


@pytest.fixture
def app(db_url: str) -> Iterator[App]:
    application = build_app(settings_for(at_head(db_url)), clock=FixedClock(NOW))
    yield application
    application.close()


@pytest.fixture
def isolated(sqlite_url: str) -> Iterator[tuple[App, AnalysisWorker]]:
    """The daemon's arrangement: a Processor whose analysis runs in a worker process."""
    application = build_app(settings_for(at_head(sqlite_url), analysis_timeout_seconds=60.0), clock=FixedClock(NOW))
    worker = AnalysisWorker(application.settings)
    application.processor.worker = worker
    yield application, worker
    worker.close()
    application.close()


def accept(app: App, raw: bytes) -> int:
    with transaction(app.factory) as s:
        return accept_in(s, raw, source="cli", now=NOW).inbound_id


def row(app: App, inbound_id: int) -> InboundMessage:
    with reading(app.factory) as s:
        found = s.get(InboundMessage, inbound_id)
        assert found is not None
        s.expunge(found)
        return found


class Crash(BaseException):
    """Stands for the process dying mid-try (watchdog SIGKILL): nothing after it runs."""


# -- the attempt counter ----------------------------------------------------------------------

def test_a_normal_run_counts_one_attempt(app: App) -> None:
    inbound = accept(app, declaration(1))
    assert app.processor.process(inbound).status == "processed"
    assert app.processor.process(inbound).status == "skipped"
    assert row(app, inbound).attempts == 1


def test_the_attempt_is_committed_before_the_try_and_a_poison_row_ends_in_quarantine(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Old code: the row stayed ``received`` with attempts 0 after each crash, picked forever."""
    tries: list[int] = []

    def crash(*_args: Any) -> Any:
        tries.append(1)
        raise Crash

    monkeypatch.setattr(worker_module, "analyse", crash)
    inbound = accept(app, declaration(2))
    for n in (1, 2, 3):
        with pytest.raises(Crash):
            app.processor.process(inbound)
        stored = row(app, inbound)
        assert (stored.status, stored.attempts) == ("received", n)
    result = app.processor.process(inbound)
    assert len(tries) == 3  # the fourth pick quarantines without analysing
    assert (result.status, result.reason) == ("quarantined", "abandonné après 3 tentatives de traitement")
    stored = row(app, inbound)
    assert (stored.status, stored.reason, stored.attempts) == (
        "quarantined", "abandonné après 3 tentatives de traitement", 3)
    assert stored.raw == declaration(2)


def test_a_message_out_of_attempts_is_quarantined_without_analysis(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    application = build_app(settings_for(at_head(sqlite_url), max_attempts=5), clock=FixedClock(NOW))
    try:
        inbound = accept(application, declaration(3))
        with transaction(application.factory) as s:
            s.execute(update(InboundMessage).where(InboundMessage.id == inbound).values(attempts=5))

        def must_not_run(*_args: Any) -> Any:
            raise AssertionError("analysed although out of attempts")

        monkeypatch.setattr(worker_module, "analyse", must_not_run)
        result = application.processor.process(inbound)
        assert (result.status, result.reason) == ("quarantined", "abandonné après 5 tentatives de traitement")
        assert row(application, inbound).attempts == 5
    finally:
        application.close()


def test_a_handler_crash_counts_its_attempt_once(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailgateway.processing import pipeline

    def explode(*_args: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setitem(pipeline.HANDLERS, "declaration", explode)
    inbound = accept(app, declaration(4))
    assert app.processor.process(inbound).status == "quarantined"
    stored = row(app, inbound)
    assert stored.attempts == 1 and "boom" in (stored.reason or "")


# -- the worker process -----------------------------------------------------------------------

def test_the_worker_gives_the_same_facts_as_in_process(isolated: tuple[App, AnalysisWorker]) -> None:
    application, worker = isolated
    inbound = accept(application, large_signed_declaration(2_000))
    with reading(application.factory) as session:
        here = analyse_inbound(application.settings, application.processor.authenticator, session, inbound)
    there = worker.analyse(application.settings, inbound, 60.0)
    assert here is not None and here == there
    assert there.sender.authenticated and there.kind == "declaration"
    result = application.processor.process(inbound)
    assert result.status == "processed" and result.case_ref == "SSI-ARA-2026-0001"
    assert worker.pid is not None and worker.pid != os.getpid()


def test_over_budget_quarantines_kills_the_worker_and_the_next_message_goes_through(
    isolated: tuple[App, AnalysisWorker]
) -> None:
    application, worker = isolated
    application.processor.settings = settings_for(str(application.engine.url), analysis_timeout_seconds=0.25)
    big = accept(application, large_signed_declaration())
    worker.prepare(application.processor.settings)
    first_pid = worker.pid
    result = application.processor.process(big)
    assert (result.status, result.reason) == ("quarantined", "analyse trop longue : plus de 0,25 s")
    stored = row(application, big)
    assert (stored.status, stored.reason, stored.attempts) == ("quarantined", result.reason, 1)
    assert first_pid is not None and not _alive(first_pid)
    ordinary = accept(application, declaration(5))
    assert application.processor.process(ordinary).status == "processed"
    assert worker.started == 2 and worker.pid not in (None, first_pid)


def test_sigkill_of_the_worker_mid_analysis_retries_and_counts(isolated: tuple[App, AnalysisWorker]) -> None:
    application, worker = isolated
    big = accept(application, large_signed_declaration())
    worker.prepare(application.settings)  # started here: it outlives the thread below
    results: list[Result] = []
    thread = threading.Thread(target=lambda: results.append(application.processor.process(big)))
    thread.start()
    wait_for(lambda: worker.busy_with == big, timeout=30)
    victim = worker.pid
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=60)
    (lost,) = results
    assert lost.status == "retry" and "died" in (lost.reason or "")
    assert (row(application, big).status, row(application, big).attempts) == ("received", 1)
    # Tried again in a new worker, counted again, and processed.
    again = application.processor.process(big)
    assert again.status == "processed", again
    assert row(application, big).attempts == 2
    assert worker.started == 2 and worker.pid != victim


def test_a_worker_that_cannot_start_uses_no_attempt(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    application = build_app(settings_for(at_head(sqlite_url)), clock=FixedClock(NOW))
    worker = AnalysisWorker(application.settings)
    application.processor.worker = worker
    try:
        def refuse(*_args: Any, **_kwargs: Any) -> Any:
            raise OSError("no more processes")

        monkeypatch.setattr(worker._ctx, "Process", refuse)
        inbound = accept(application, declaration(6))
        assert application.processor.process(inbound).status == "retry"
        assert (row(application, inbound).status, row(application, inbound).attempts) == ("received", 0)
    finally:
        worker.close()
        application.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_batch_read_that_fails_does_not_fail_the_next_message(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker analyses a batch in one read transaction (issue 19). A message whose read fails
    rolls it back, so the next one is analysed: on PostgreSQL a transaction refuses every
    statement after an error, and the whole rest of the batch would have failed with it."""
    import pickle

    from sqlalchemy import text
    from sqlalchemy.orm import Session

    first, second = accept(app, declaration(1)), accept(app, declaration(2))
    real = worker_module.analyse_inbound

    def failing_read(settings: Any, authenticator: Any, session: Session, inbound_id: int) -> Any:
        if inbound_id == first:
            session.execute(text("SELECT * FROM no_such_table"))
        return real(settings, authenticator, session, inbound_id)

    monkeypatch.setattr(worker_module, "analyse_inbound", failing_read)
    with reading(app.factory) as session:
        answers = [pickle.loads(worker_module._answer(app.settings, app.processor.authenticator, app.factory, i,
                                                      timed=True, session=session))
                   for i in (first, second)]
    assert answers[0][0] in ("error", "retry")
    assert answers[1][0] == "ok" and answers[1][1].kind == "declaration"


def test_facts_that_cannot_be_pickled_are_an_error_answer_not_a_dead_worker(
        app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer is pickled once, in ``_answer``: what cannot be is answered as an error for its
    message, timed like any other answer of a batch."""
    import pickle

    inbound_id = accept(app, declaration(1))
    monkeypatch.setattr(worker_module, "analyse_inbound", lambda *args: (lambda: None))
    plain = pickle.loads(worker_module._answer(app.settings, app.processor.authenticator, app.factory, inbound_id))
    timed = pickle.loads(worker_module._answer(app.settings, app.processor.authenticator, app.factory, inbound_id,
                                               timed=True))
    assert plain[0] == "error" and len(plain) == 2
    assert timed[0] == "error" and len(timed) == 4 and isinstance(timed[2], float) and timed[3] == inbound_id
