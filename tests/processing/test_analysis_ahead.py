"""Analysis ahead (processing/ahead.py, issue 19): while a sweep yields to intake, the worker
analyses the next messages, and their batch takes those facts instead of asking again — with
the guarantees of a batch's own analysis: nothing is counted or written ahead, a message over
its budget ahead is still quarantined by its batch alone, and facts that may be stale (settings
reloaded, a message they name applied meanwhile) are not used.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from mailgateway.app import App, build_app
from mailgateway.clock import FixedClock
from mailgateway.processing import ahead as ahead_module
from mailgateway.processing import runner
from mailgateway.processing.ahead import AnalysisAhead
from mailgateway.processing.worker import AnalysisWorker
from mailgateway.store.engine import reading
from mailgateway.store.models import InboundMessage
from tests.processing.test_batch_threading import complement
from tests.processing.test_batches import NOW, accept, declaration, settings_for
from tests.support.db import at_head
from tests.support.slow import large_signed_declaration

# The worker ahead runs at nice 19 (ahead.NICE): on a loaded machine (CI, two test processes on
# two cores) it gets a sliver of a CPU, an ordinary declaration's milliseconds of analysis took a
# quarter of a second of wall clock there, and its start a minute under two busy loops. The
# tests run it at the caller's priority — but the one about that priority — and with a budget
# no loaded machine reaches — but the one about a message over its budget, which has 1 s
# against its seconds of DKIM body hashing (2.4 s here, as in test_slow_message.py).
GENEROUS = 30.0
BUDGET = 1.0


@pytest.fixture
def application(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    monkeypatch.setattr(runner, "BATCH_WRITE_SECONDS", 3600.0)
    monkeypatch.setattr(runner, "NICE", 0)
    app = build_app(settings_for(at_head(sqlite_url), analysis_timeout_seconds=GENEROUS), clock=FixedClock(NOW))
    worker = AnalysisWorker(app.settings)
    app.processor.worker = worker
    worker.prepare(app.settings)
    yield app
    worker.close()
    if app.processor.ahead is not None:
        app.processor.ahead.close()
    app.close()


def long_declaration(n: int, lines: int = 3000) -> bytes:
    head, _, body = declaration(n).partition(b"\r\n\r\n")
    return head + b"\r\n\r\n" + body + "".join(
        f"Serveur {i} chiffré, sauvegarde {i} à vérifier.\r\n" for i in range(lines)).encode()


def started_ahead(app: App) -> AnalysisAhead:
    """The processor's analysis ahead with its worker up (the host starts it without waiting)."""
    ahead = app.processor.analyse_ahead()
    assert ahead is not None
    ahead.revive(app.processor.settings)
    deadline = time.monotonic() + 60
    while not ahead.worker.ready_now():
        assert time.monotonic() < deadline, "the worker ahead did not start"
        time.sleep(0.01)
    return ahead


def analysed_ahead(app: App, count: int) -> AnalysisAhead:
    """Step the analysis ahead as a yielding sweep does, until ``count`` facts wait or nothing is due."""
    ahead = started_ahead(app)
    deadline = time.monotonic() + 60
    settings = app.processor.settings
    while len(ahead) < count and time.monotonic() < deadline:
        ahead.step(settings, settings.processing.analysis_timeout_seconds)
        if not ahead.asking:  # nothing (more) to ask for
            break
        time.sleep(0.005)
    while ahead.asking and time.monotonic() < deadline:  # the last answers
        ahead.step(settings, settings.processing.analysis_timeout_seconds)
        time.sleep(0.005)
    return ahead


def attempts(app: App, inbound_id: int) -> tuple[str, int]:
    with reading(app.factory) as s:
        row = s.get(InboundMessage, inbound_id)
        assert row is not None
        return row.status, row.attempts or 0


def test_facts_analysed_ahead_are_taken_by_the_batch_and_nothing_is_counted_ahead(application: App) -> None:
    ids = [accept(application, declaration(n)) for n in range(1, 31)]
    ahead = analysed_ahead(application, 30)
    assert len(ahead) == 30
    assert [attempts(application, i) for i in ids] == [("received", 0)] * 30  # an analysis ahead is no try
    results = application.processor.process_pending()
    assert [r.status for r in results] == ["processed"] * 30
    assert [r.kind for r in results] == ["declaration"] * 30
    assert ahead.taken == 30 and len(ahead) == 0
    assert ahead.analysed == 30  # none analysed twice
    assert [attempts(application, i) for i in ids] == [("processed", 1)] * 30


def test_a_message_over_its_budget_ahead_is_quarantined_by_its_batch_alone(application: App) -> None:
    settings = application.processor.settings
    application.processor.settings = replace(settings, processing=replace(settings.processing,
                                                                          analysis_timeout_seconds=BUDGET))
    first = accept(application, declaration(1))
    big = accept(application, large_signed_declaration())  # seconds of DKIM verification
    last = accept(application, declaration(2))
    worker = application.processor.worker
    assert worker is not None
    ahead = analysed_ahead(application, 3)
    # The slow one had the worker ahead killed; the request's rest was dropped with it; nothing
    # was counted or written.
    assert ahead.worker.pid is None and len(ahead) == 1
    assert worker.started == 1
    assert [attempts(application, i) for i in (first, big, last)] == [("received", 0)] * 3
    results = {r.inbound_id: r for r in application.processor.process_pending()}
    assert (results[big].status, results[big].reason) == ("quarantined", "analyse trop longue : plus de 1 s")
    assert results[first].status == results[last].status == "processed"
    assert [attempts(application, i)[1] for i in (first, big, last)] == [1, 1, 1]
    assert ahead.taken == 1  # the first; the last was analysed by its batch
    assert ahead.analysed == 1  # the slow one failed ahead: not counted
    assert worker.started == 2  # killed by the batch too (its budget spent twice); a new one for the last
    started_ahead(application)  # processing idle: the worker ahead is started again
    assert ahead.worker.pid is not None and ahead.worker.started == 2


def test_a_reply_analysed_ahead_of_its_declarations_processing_is_analysed_again(application: App) -> None:
    first = accept(application, declaration(1))
    reply = accept(application, complement(1, "<d1@chu.test>"))
    ahead = analysed_ahead(application, 2)
    assert len(ahead) == 2
    # The declaration alone first (another sweep, a priority message): its case is committed
    # after the reply's analysis ahead read the database.
    assert application.processor.process(first).status == "processed"
    results = {r.inbound_id: r for r in application.processor.process_pending()}
    assert (results[reply].status, results[reply].kind) == ("processed", "reply")
    with reading(application.factory) as s:
        rows = [s.get(InboundMessage, i) for i in (first, reply)]
        assert rows[0] is not None and rows[1] is not None
        assert rows[1].case_id == rows[0].case_id is not None
    assert ahead.taken == 0


def test_facts_analysed_under_other_settings_are_not_taken(application: App) -> None:
    accept(application, declaration(1))
    ahead = analysed_ahead(application, 1)
    reloaded = replace(application.settings)  # SIGHUP: a new settings object
    application.processor.settings = reloaded
    assert [r.status for r in application.processor.process_pending()] == ["processed"]
    assert ahead.taken == 0


def test_analysis_ahead_is_bounded(application: App, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ahead_module, "LOOKAHEAD", 4)
    monkeypatch.setattr(ahead_module, "REQUEST", 3)
    for n in range(1, 11):
        accept(application, declaration(n))
    ahead = analysed_ahead(application, 10)
    assert len(ahead) == 6  # two requests of 3: the second began below the bound
    ahead.step(application.settings, GENEROUS)
    assert not ahead.asking and len(ahead) == 6


def test_a_sweep_yielding_to_intake_has_the_next_messages_analysed(application: App,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [accept(application, declaration(n)) for n in range(1, 21)]
    ahead = started_ahead(application)
    monkeypatch.setattr(runner, "INTAKE_YIELD_SECONDS", 60.0)
    # Intake is busy until the worker has analysed every waiting message ahead.
    application.processor.intake_busy = lambda: ahead.taken == 0 and len(ahead) < len(ids)
    results = application.processor.process_pending()
    assert [r.status for r in results] == ["processed"] * 20
    assert ahead.taken == 20


def test_analysis_ahead_never_reads_the_answers_of_a_batchs_own_request(application: App,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # The batch's worker request owes answers while its transactions yield to intake (one
    # message a transaction: intake is always busy); the yields step the analysis ahead, which
    # must not send a request of its own on the same pipe nor read the batch's answers as its own.
    # Long enough to analyse that the batch's answers are still owed when it first commits.
    ids = [accept(application, long_declaration(n)) for n in range(1, 13)]
    started_ahead(application)
    monkeypatch.setattr(runner, "INTAKE_YIELD_SECONDS", 0.05)
    monkeypatch.setattr(runner, "BATCH_SIZE", 5)  # the analysis ahead asks for more than the batch
    calls: list[int] = []

    def busy() -> bool:  # quiet when the sweep starts (nothing analysed ahead), then busy
        calls.append(1)
        return len(calls) > 1

    application.processor.intake_busy = busy
    results = application.processor.process_pending()
    assert [r.status for r in results] == ["processed"] * 12
    with reading(application.factory) as s:
        assert [s.get(InboundMessage, i).message_id for i in ids] == [  # type: ignore[union-attr]
            f"d{n}@chu.test" for n in range(1, 13)]


def test_the_worker_ahead_is_its_own_process_at_the_lowest_priority(application: App,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "NICE", ahead_module.NICE)  # the daemon's, not the fixture's
    accept(application, declaration(1))
    ahead = analysed_ahead(application, 1)
    worker = application.processor.worker
    assert worker is not None and ahead.worker is not worker
    pid = ahead.worker.pid
    assert pid is not None and pid != worker.pid
    assert os.getpriority(os.PRIO_PROCESS, pid) == 19  # idle CPU only: intake is never slowed by it
    assert os.getpriority(os.PRIO_PROCESS, worker.pid) == os.getpriority(os.PRIO_PROCESS, 0)  # type: ignore[arg-type]


def test_answers_ahead_for_messages_already_processed_are_dropped(application: App) -> None:
    ids = [accept(application, long_declaration(n)) for n in range(1, 5)]
    settings = application.processor.settings
    ahead = started_ahead(application)
    ahead.step(settings, GENEROUS)  # asked, not yet answered
    assert ahead.asking
    assert [r.status for r in application.processor.process_pending()] == ["processed"] * 4
    deadline = time.monotonic() + 60
    while ahead.asking and time.monotonic() < deadline:
        ahead.step(settings, GENEROUS)
        time.sleep(0.005)
    assert len(ahead) == 0 and len(ids) == 4


def test_a_batch_starting_with_facts_analysed_ahead_gets_its_other_answers(application: App,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by an outside tester: a batch took its first messages' facts from the analysis ahead
    # and had not yet sent its request for the rest when its first transaction yielded to intake;
    # the analysis ahead asked the worker first, and the batch's messages were quarantined
    # (« analysis worker still owes the answers of another request ») or, before that check, given
    # the answers meant for the analysis ahead.
    monkeypatch.setattr(ahead_module, "LOOKAHEAD", 4)
    monkeypatch.setattr(ahead_module, "REQUEST", 4)
    # The rest long to analyse: a request ahead for them would still be answered when the batch
    # needs the worker.
    ids = [accept(application, declaration(n) if n <= 4 else long_declaration(n)) for n in range(1, 9)]
    ahead = analysed_ahead(application, 4)
    assert len(ahead) == 4
    monkeypatch.setattr(runner, "INTAKE_YIELD_SECONDS", 0.05)
    application.processor.intake_busy = lambda: True  # one message a transaction, a yield between
    results = application.processor.process_pending()
    assert [r.status for r in results] == ["processed"] * 8
    assert ahead.taken == 4
    with reading(application.factory) as s:
        assert [s.get(InboundMessage, i).message_id for i in ids] == [  # type: ignore[union-attr]
            f"d{n}@chu.test" for n in range(1, 9)]
