"""A reply waiting in the same batch as the message it answers (a backlog after a restart, an
IMAP mailbox read at start): its analysis read the database before that message had a case, so
it was « message non reconnu » and quarantined (found in issue 19's tenth pass, inline and in the
worker alike). It is now analysed again once the message it names is applied (``BatchRun._stale``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from mailgateway.app import App, build_app
from mailgateway.clock import FixedClock
from mailgateway.processing import runner
from mailgateway.processing.worker import AnalysisWorker, WorkerUnavailable
from mailgateway.store.engine import reading
from mailgateway.store.models import InboundMessage
from tests.processing.test_batches import NOW, accept, declaration, settings_for
from tests.support.db import at_head


def complement(n: int, parent: str, *, references: bool = True) -> bytes:
    refs = f"References: {parent}\r\n" if references else ""
    return (
        f"From: dsi1@chu.test\r\nTo: ssi-ara@ars.test\r\nSubject: Re: Incident 1\r\n"
        f"Message-ID: <c{n}@chu.test>\r\nIn-Reply-To: {parent}\r\n{refs}"
        "Date: Fri, 27 Nov 2026 09:01:00 +0100\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Complément {n} : les sauvegardes sont intactes.\r\n"
    ).encode()


@pytest.fixture(params=["worker", "inline"])
def application(request: pytest.FixtureRequest, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    monkeypatch.setattr(runner, "BATCH_WRITE_SECONDS", 3600.0)  # one write transaction for the batch
    app = build_app(settings_for(at_head(sqlite_url)), clock=FixedClock(NOW))
    worker = AnalysisWorker(app.settings) if request.param == "worker" else None
    app.processor.worker = worker
    yield app
    if worker is not None:
        worker.close()
    app.close()


def case_of(app: App, inbound_id: int) -> int | None:
    with reading(app.factory) as s:
        row = s.get(InboundMessage, inbound_id)
        assert row is not None
        return row.case_id


def test_a_complement_in_the_batch_of_its_declaration_joins_its_case(application: App) -> None:
    first = accept(application, declaration(1))
    reply = accept(application, complement(1, "<d1@chu.test>"))
    results = {r.inbound_id: r for r in application.processor.process_pending()}
    assert (results[first].status, results[first].kind) == ("processed", "declaration")
    assert (results[reply].status, results[reply].kind) == ("processed", "reply")
    assert results[reply].case_ref == results[first].case_ref
    assert case_of(application, reply) == case_of(application, first) is not None


def test_a_chain_of_replies_in_one_batch_joins_the_case_and_the_rest_is_untouched(application: App) -> None:
    first = accept(application, declaration(1))
    # The second reply names only the first reply (In-Reply-To, no References), which is itself
    # put off: it must wait with it.
    one = accept(application, complement(1, "<d1@chu.test>"))
    two = accept(application, complement(2, "<c1@chu.test>", references=False))
    other = accept(application, declaration(2))
    results = {r.inbound_id: r for r in application.processor.process_pending()}
    assert [results[i].status for i in (first, one, two, other)] == ["processed"] * 4
    assert [results[i].kind for i in (first, one, two, other)] == ["declaration", "reply", "reply", "declaration"]
    assert case_of(application, one) == case_of(application, two) == case_of(application, first)
    assert case_of(application, other) != case_of(application, first)
    with reading(application.factory) as s:
        assert [s.get(InboundMessage, i).attempts for i in (first, one, two, other)] == [1, 1, 1, 1]  # type: ignore[union-attr]


def test_messages_naming_nothing_of_the_batch_are_analysed_once(application: App,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [accept(application, declaration(n)) for n in range(1, 6)]
    ids.append(accept(application, complement(1, "<unknown@elsewhere.test>")))
    rounds: list[list[int]] = []
    real = runner.BatchRun._round

    def counted(self: runner.BatchRun, todo: list[int], attempts: dict[int, int]) -> list[int]:
        rounds.append(list(todo))
        return real(self, todo, attempts)

    monkeypatch.setattr(runner.BatchRun, "_round", counted)
    application.processor.process_pending()
    assert rounds == [ids]


def test_a_batch_without_a_worker_stops_the_sweep_so_nothing_overtakes_it(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker cannot start for a batch (killed as it started, an outside tester): its
    messages are left untried, and the next batch — the complement of one of them — is not
    processed before them: it became a case of its own and a second acknowledgement."""
    monkeypatch.setattr(runner, "BATCH_SIZE", 2)
    app = build_app(settings_for(at_head(sqlite_url)), clock=FixedClock(NOW))
    worker = AnalysisWorker(app.settings)
    app.processor.worker = worker
    real_prepare = worker.prepare
    failures = [WorkerUnavailable("analysis worker exited at start (exit code -9)")]

    def prepare(settings: Any) -> None:
        if failures:
            raise failures.pop()
        real_prepare(settings)

    monkeypatch.setattr(worker, "prepare", prepare)
    try:
        first = accept(app, declaration(1))
        other = accept(app, declaration(2))
        reply = accept(app, complement(1, "<d1@chu.test>"))
        swept = app.processor.process_pending()
        assert [(r.inbound_id, r.status) for r in swept] == [(first, "retry"), (other, "retry")]
        assert case_of(app, reply) is None
        results = {r.inbound_id: r for r in app.processor.process_pending()}
        assert (results[first].kind, results[reply].kind) == ("declaration", "reply")
        assert case_of(app, reply) == case_of(app, first) is not None
    finally:
        worker.close()
        app.close()
