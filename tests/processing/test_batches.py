"""Sweeps by batches (issue 19): several messages per write transaction, a savepoint each, one
committed attempt count per batch, analysis answers streamed from the worker — and still, for each
message, the guarantees of one message per transaction (docs/guarantees.md): a handler that raises
quarantines its own message only, a crash before the commit means processed again once, with no
second acknowledgement, and a message over its analysis budget is killed alone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, func, select

from mailgateway.app import App, build_app
from mailgateway.cases.verify import verify_references
from mailgateway.clock import FixedClock
from mailgateway.intake.accept import accept_in
from mailgateway.mail.facts import MessageFacts
from mailgateway.processing import pipeline, runner
from mailgateway.processing.context import Env, Outcome
from mailgateway.processing.worker import AnalysisFailed, AnalysisWorker
from mailgateway.settings import parse_settings
from mailgateway.store.engine import reading, transaction
from mailgateway.store.models import AuditLedger, Case, CaseEvent, InboundMessage, Indicator, OutboundMessage
from tests.support.db import at_head
from tests.support.dkim import zone
from tests.support.slow import SLOW_KEY, large_signed_declaration

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
REAL_HANDLER = pipeline.HANDLERS["declaration"]


def declaration(n: int) -> bytes:
    # One FINESS for all: each declaration after the first is linked to an open case of the
    # batch (duplicate detection), so a rolled-back message has touched another message's case.
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
        "authentication": {"nameservers": ["127.0.0.1"], "dns_timeout_seconds": 0.1, "static_keys": zone(SLOW_KEY)},
        "processing": processing,
    })


@pytest.fixture
def app(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    # Every message of a sweep in one write transaction, whatever the machine's speed.
    monkeypatch.setattr(runner, "BATCH_WRITE_SECONDS", 3600.0)
    application = build_app(settings_for(at_head(db_url)), clock=FixedClock(NOW))
    yield application
    application.close()


def accept(app: App, raw: bytes) -> int:
    with transaction(app.factory) as s:
        return accept_in(s, raw, source="cli", now=NOW).inbound_id


def count(app: App, model: Any, *where: Any) -> int:
    with app.factory() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def inbound(app: App, inbound_id: int) -> InboundMessage:
    with reading(app.factory) as s:
        found = s.get(InboundMessage, inbound_id)
        assert found is not None
        s.expunge(found)
        return found


def poisoned(message_id: str, error: type[BaseException]) -> Any:
    """The real handler, which then raises for one message: its case, events, links and outbound
    mail were written in its savepoint and must all be rolled back."""

    def handler(env: Env, session: Any, row: InboundMessage, facts: MessageFacts) -> Outcome:
        outcome = REAL_HANDLER(env, session, row, facts)
        if message_id in (facts.message_id or ""):
            raise error(f"poison in {message_id}")
        return outcome

    return handler


def test_one_poisonous_message_of_a_batch_is_quarantined_alone(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [accept(app, declaration(n)) for n in range(1, 6)]
    monkeypatch.setitem(pipeline.HANDLERS, "declaration", poisoned("d3@chu.test", RuntimeError))
    commits: list[int] = []
    event.listen(app.engine, "commit", lambda _conn: commits.append(1))

    results = app.processor.process_pending()

    assert [(r.inbound_id, r.status) for r in results] == [
        (ids[0], "processed"), (ids[1], "processed"), (ids[2], "quarantined"), (ids[3], "processed"),
        (ids[4], "processed")]
    assert "poison in d3@chu.test" in (results[2].reason or "")
    poison = inbound(app, ids[2])
    assert (poison.status, poison.attempts, poison.case_id) == ("quarantined", 1, None)
    assert "poison in d3@chu.test" in (poison.reason or "")
    # Nothing of the poisonous message remains: four cases, four acknowledgements, none to dsi3.
    assert count(app, Case) == 4
    acks = count(app, OutboundMessage, OutboundMessage.kind == "accuse_reception")
    assert acks == 4 and count(app, OutboundMessage, OutboundMessage.recipient == "dsi3@chu.test") == 0
    assert count(app, CaseEvent, CaseEvent.inbound_id == ids[2]) == 0
    # The link it made to an earlier case of the batch was rolled back with it, and the hash
    # chains and the ledger still verify (no case anchored twice).
    with reading(app.factory) as s:
        breaks, checked = verify_references(s, None)
    assert breaks == [] and checked == 4
    # One commit counted the five attempts, one wrote the five messages (PostgreSQL: plus the
    # advisory lock connection's own).
    assert len(commits) <= 4


def test_savepoints_only_once_a_message_of_the_batch_raised(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 19: a batch's messages run without a savepoint each (≈ 0.3 ms per message); when one
    raises, its transaction is rolled back and runs again with one savepoint per message."""
    savepoints: list[str] = []
    event.listen(app.engine, "savepoint", lambda _conn, name: savepoints.append(name))
    healthy = [accept(app, declaration(n)) for n in range(1, 4)]
    assert [r.status for r in app.processor.process_pending()] == ["processed"] * 3
    assert savepoints == [] and count(app, Case) == 3
    more = [accept(app, declaration(n)) for n in range(4, 8)]
    monkeypatch.setitem(pipeline.HANDLERS, "declaration", poisoned("d6@chu.test", RuntimeError))
    results = app.processor.process_pending()
    assert [(r.inbound_id, r.status) for r in results] == [
        (more[0], "processed"), (more[1], "processed"), (more[2], "quarantined"), (more[3], "processed")]
    assert len(savepoints) >= 4 and count(app, Case) == 6 and healthy


def test_a_message_whose_writes_fail_is_quarantined_at_once_with_its_error(app: App,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside tester: a handler whose changes fail when written (here two identical indicators:
    the unique index refuses the second) raised when its savepoint was released; the savepoint
    was left half-open, the quarantine UPDATE then failed, the batch fell back to one by one, and
    the message stayed « received » until its tries ran out, its error lost. It is quarantined at
    the first try with the database's error, and the others of its batch are processed once."""
    def failing_write(env: Env, session: Any, row: InboundMessage, facts: MessageFacts) -> Outcome:
        outcome = REAL_HANDLER(env, session, row, facts)
        if "d2@" in (facts.message_id or "") and outcome.case is not None:
            for _ in range(2):
                session.add(Indicator(case_id=outcome.case.id, type="url", value="https://dup.example/x"))
        return outcome

    ids = [accept(app, declaration(n)) for n in range(1, 4)]
    monkeypatch.setitem(pipeline.HANDLERS, "declaration", failing_write)
    results = app.processor.process_pending()
    assert [(r.inbound_id, r.status) for r in results] == [
        (ids[0], "processed"), (ids[1], "quarantined"), (ids[2], "processed")]
    failed = inbound(app, ids[1])
    assert (failed.status, failed.attempts) == ("quarantined", 1)
    assert "IntegrityError" in (failed.reason or "")
    assert count(app, Case) == 2 and count(app, Indicator) == 0


def test_two_long_links_alike_in_their_first_2000_characters_are_one_indicator(app: App) -> None:
    """Outside tester: indicators were made unique before being cut to 2,000 characters, so two
    such links gave two equal rows, refused by the unique index: the declaration was never opened."""
    import base64
    body = ("Numéro FINESS : 690781810\r\nType d'incident : hameçonnage\r\n"
            f"Lien 1 : https://evil.example/{'a' * 1979}11111111\r\n"
            f"Lien 2 : https://evil.example/{'a' * 1979}22222222\r\n").encode()
    raw = (b"From: dsi9@chu.test\r\nTo: ssi-ara@ars.test\r\nSubject: Liens\r\nMessage-ID: <long@chu.test>\r\n"
           b"Date: Fri, 27 Nov 2026 09:00:00 +0100\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(body).replace(b"\n", b"\r\n"))
    inbound_id = accept(app, raw)
    assert [r.status for r in app.processor.process_pending()] == ["processed"]
    assert inbound(app, inbound_id).case_id is not None
    with reading(app.factory) as s:
        urls = list(s.scalars(select(Indicator.value).where(Indicator.type == "url")))
    assert len(urls) == 1 and len(urls[0]) == 2000


def test_a_rolled_back_message_adds_nothing_to_the_audit_ledger(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """The poisonous declaration links itself to a case of an earlier sweep, then raises: that case
    is touched only inside the rolled-back savepoint, and must not be anchored again."""
    earlier = accept(app, declaration(1))
    assert app.processor.process(earlier).status == "processed"
    poison = accept(app, declaration(2))
    monkeypatch.setitem(pipeline.HANDLERS, "declaration", poisoned("d2@chu.test", RuntimeError))
    assert [r.status for r in app.processor.process_pending()] == ["quarantined"]
    with reading(app.factory) as s:
        anchored = list(s.scalars(select(AuditLedger.case_reference).order_by(AuditLedger.id)))
        breaks, _ = verify_references(s, None)
    assert anchored == ["SSI-ARA-2026-0001"]  # once, by the sweep that wrote it
    assert breaks == [] and inbound(app, poison).status == "quarantined"


class Crash(BaseException):
    """Stands for the process dying mid-transaction (SIGKILL): nothing after it runs."""


def test_a_crash_mid_batch_processes_every_message_again_once(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [accept(app, declaration(n)) for n in range(1, 6)]
    monkeypatch.setitem(pipeline.HANDLERS, "declaration", poisoned("d4@chu.test", Crash))
    with pytest.raises(Crash):
        app.processor.process_pending()
    # Messages 1-3 were applied, acknowledgements composed, in the transaction the crash lost.
    assert count(app, Case) == 0 and count(app, OutboundMessage) == 0
    assert [(inbound(app, i).status, inbound(app, i).attempts) for i in ids] == [("received", 1)] * 5

    monkeypatch.setitem(pipeline.HANDLERS, "declaration", REAL_HANDLER)  # restarted
    results = app.processor.process_pending()
    assert [r.status for r in results] == ["processed"] * 5
    assert [(inbound(app, i).status, inbound(app, i).attempts) for i in ids] == [("processed", 2)] * 5
    assert app.processor.process_pending() == []
    with app.factory() as s:
        recipients = list(s.scalars(select(OutboundMessage.recipient)
                                    .where(OutboundMessage.kind == "accuse_reception")))
        references = list(s.scalars(select(Case.reference).order_by(Case.id)))
    assert sorted(recipients) == [f"dsi{n}@chu.test" for n in range(1, 6)]
    assert references == [f"SSI-ARA-2026-{n:04d}" for n in range(1, 6)]  # numbered as without the crash


def test_a_sweep_writes_many_messages_per_transaction_and_counts_attempts_once(
        app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [accept(app, declaration(n)) for n in range(1, 11)]
    writes: list[int] = []
    counts: list[int] = []
    commit_batch, count_attempts = runner.BatchRun._commit_batch, runner.Processor._count_attempts
    monkeypatch.setattr(runner.BatchRun, "_commit_batch",
                        lambda self, todo, *rest: (writes.append(len(todo)), commit_batch(self, todo, *rest))[1])
    monkeypatch.setattr(runner.Processor, "_count_attempts",
                        lambda self, i, d: (counts.append(len(i)), count_attempts(self, i, d))[1])
    assert [r.status for r in app.processor.process_pending()] == ["processed"] * 10
    assert counts == [10] and writes == [10]
    assert {inbound(app, i).attempts for i in ids} == {1}


class Answers:
    """``AnalysisStream``'s interface over answers already there: facts, or what reading raises."""

    def __init__(self, answers: list[tuple[int, Any]]) -> None:
        self._left = list(answers)
        self.abandoned: list[int] = []

    def __bool__(self) -> bool:
        return bool(self._left)

    @property
    def upcoming(self) -> int:
        return int(self._left[0][0])

    def ready(self) -> bool:
        return bool(self._left)

    def next(self) -> tuple[int, MessageFacts | None]:
        inbound_id, answer = self._left.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return inbound_id, answer

    def close(self) -> None:
        self._left = []


def test_a_write_transaction_takes_the_answers_already_there(app: App) -> None:
    """Issue 19: a transaction took only the answers there when it began (one, then the few
    analysed meanwhile: about four messages a transaction, each paying a commit). It now goes on
    with those that arrive while it runs, until one whose reading raised: that one is handled
    after it, and the transaction takes no more (a lost worker's replacement is never waited for
    with the write lock held; found by an outside tester)."""
    ids = [accept(app, declaration(n)) for n in range(1, 6)]
    facts = {i: app.processor._analyse(i) for i in ids}
    run = runner.BatchRun(app.processor, ids, may_defer=True)
    stream = Answers([(ids[1], facts[ids[1]]), (ids[2], AnalysisFailed("ValueError: illisible")),
                      (ids[3], facts[ids[3]]), (ids[4], facts[ids[4]])])
    commits: list[int] = []
    event.listen(app.engine, "commit", lambda _conn: commits.append(1))
    first = facts[ids[0]]
    assert first is not None
    attempts = {i: 1 for i in ids}
    assert run._commit_batch([(ids[0], first)], stream, attempts) == []
    assert {i: r.status for i, r in run.results.items()} == {
        ids[0]: "processed", ids[1]: "processed", ids[2]: "quarantined"}
    assert inbound(app, ids[2]).reason == "erreur de traitement : ValueError: illisible"
    assert len(commits) == 2 and stream.upcoming == ids[3]  # two in one transaction; the quarantine
    assert run._commit_batch([], stream, attempts) == []
    assert {run.results[i].status for i in ids[3:]} == {"processed"} and len(commits) == 3
    assert count(app, OutboundMessage) >= 4


@pytest.mark.parametrize(("quiet", "applied"), [(True, 3), (False, 1)])
def test_while_intake_stays_busy_a_transaction_takes_no_answer_after_its_turn(
        app: App, monkeypatch: pytest.MonkeyPatch, quiet: bool, applied: int) -> None:
    """Intake still busy after the processor's longest wait: the transaction applies what it
    holds and takes answers during its first turn only (here none: a turn of 0 s), so the accept
    writer waits no longer than before answers were taken into transactions."""
    monkeypatch.setattr(runner, "INTAKE_TURN_SECONDS", 0.0)
    monkeypatch.setattr(app.processor, "_yield_to_intake", lambda: quiet)
    ids = [accept(app, declaration(n)) for n in range(1, 4)]
    facts = {i: app.processor._analyse(i) for i in ids}
    run = runner.BatchRun(app.processor, ids, may_defer=True)
    run.transactions = 1  # not the sweep's first: it yields to intake first
    stream = Answers([(ids[1], facts[ids[1]]), (ids[2], facts[ids[2]])])
    assert run._commit_batch([(ids[0], facts[ids[0]])], stream, {i: 1 for i in ids}) == []
    assert len(run.results) == applied and bool(stream) is not quiet


def test_an_answer_put_off_ends_the_transaction_and_is_applied_before_the_next(app: App) -> None:
    """A declaration whose signing key could not be fetched, on its last try, is applied
    unauthenticated — before the complement that follows it, never after (an outside tester)."""
    ids = [accept(app, declaration(n)) for n in range(1, 4)]
    facts = {i: app.processor._analyse(i) for i in ids}
    late = facts[ids[1]]
    assert late is not None and facts[ids[0]] is not None
    late = replace(late, sender=replace(late.sender, authenticated=False, temporary=True))
    run = runner.BatchRun(app.processor, ids, may_defer=True)
    stream = Answers([(ids[1], late), (ids[2], facts[ids[2]])])
    last_try = app.settings.processing.max_attempts
    left = run._commit_batch([(ids[0], facts[ids[0]])], stream, {i: last_try for i in ids})
    assert [i for i, _ in left] == [ids[1]] and stream.upcoming == ids[2]
    assert list(run.results) == [ids[0]]


def test_an_analysis_in_this_process_is_never_taken_into_a_write_transaction(app: App) -> None:
    """Inline analysis (no worker) would read inside the write transaction: never taken there."""
    ids = [accept(app, declaration(n)) for n in range(1, 4)]
    first = app.processor._analyse(ids[0])
    assert first is not None
    run = runner.BatchRun(app.processor, ids, may_defer=True)
    inline = runner.InlineAnalyses(app.processor, ids[1:])
    assert run._commit_batch([(ids[0], first)], inline, {i: 1 for i in ids}) == []
    assert list(run.results) == [ids[0]] and inline.upcoming == ids[1]


def test_two_instances_sweeping_together_process_each_message_once(db_url: str) -> None:
    """PostgreSQL: each instance claims the messages of its batch (advisory locks, one connection);
    SQLite: the write transaction re-checks the status. Either way, one case and one
    acknowledgement per declaration."""
    apps = [build_app(settings_for(at_head(db_url)), clock=FixedClock(NOW)) for _ in range(2)]
    try:
        for n in range(30):
            accept(apps[0], declaration(n))
        errors: list[BaseException] = []

        def sweep(application: App) -> None:
            try:
                while application.processor.process_pending():
                    pass
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=sweep, args=(a,)) for a in apps]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        assert not errors
        assert count(apps[0], InboundMessage, InboundMessage.status == "processed") == 30
        with apps[0].factory() as s:
            references = list(s.scalars(select(Case.reference)))
        assert len(references) == 30 and len(set(references)) == 30
        assert count(apps[0], OutboundMessage, OutboundMessage.kind == "accuse_reception") == 30
        with reading(apps[0].factory) as s:
            assert verify_references(s, None)[0] == []
            attempts = set(s.scalars(select(InboundMessage.attempts)))
        if apps[0].engine.dialect.name == "postgresql":
            assert attempts == {1}  # claimed: each try counted by the one instance that made it
    finally:
        for a in apps:
            a.close()


@pytest.mark.parametrize(("turn", "commits_expected"), [
    # Its turn up at once: one transaction per message, intake had the lock in between.
    (0.0, 5),
    # Under a steady stream a transaction keeps its turn instead of applying one message and
    # yielding again (an outside tester: ≈ 15 msg/s processed while 42 msg/s arrived, the backlog
    # growing with the stream): one transaction for the four.
    (3600.0, 2),
])
def test_a_write_transaction_ends_when_intake_waits_after_its_turn(sqlite_url: str, monkeypatch: pytest.MonkeyPatch,
                                                                    turn: float, commits_expected: int) -> None:
    monkeypatch.setattr(runner, "INTAKE_TURN_SECONDS", turn)
    monkeypatch.setattr(runner, "BATCH_WRITE_SECONDS", 3600.0)  # a loaded machine: the turn alone decides
    application = build_app(settings_for(at_head(sqlite_url)), clock=FixedClock(NOW))
    try:
        for n in range(1, 5):
            accept(application, declaration(n))
        asked: list[int] = []

        def busy() -> bool:  # quiet before each transaction, then a message arrives
            asked.append(1)
            return len(asked) % 2 == 0

        application.processor.intake_busy = busy
        commits: list[int] = []
        event.listen(application.engine, "commit", lambda _conn: commits.append(1))
        assert [r.status for r in application.processor.process_pending()] == ["processed"] * 4
        assert len(commits) == commits_expected  # the attempt count, then the transactions
    finally:
        application.close()


def test_a_message_over_budget_in_a_batch_is_killed_alone(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "BATCH_WRITE_SECONDS", 3600.0)
    # 1 s: an ordinary declaration's milliseconds stay far below it on a loaded machine, the slow
    # one's seconds of DKIM body hashing far above.
    application = build_app(settings_for(at_head(sqlite_url), analysis_timeout_seconds=1.0), clock=FixedClock(NOW))
    worker = AnalysisWorker(application.settings)
    application.processor.worker = worker
    try:
        first = accept(application, declaration(1))
        big = accept(application, large_signed_declaration())  # seconds of DKIM verification
        last = accept(application, declaration(2))
        worker.prepare(application.settings)
        results = {r.inbound_id: r for r in application.processor.process_pending()}
        assert results[first].status == "processed" and results[last].status == "processed"
        assert (results[big].status, results[big].reason) == ("quarantined", "analyse trop longue : plus de 1 s")
        assert [inbound(application, i).attempts for i in (first, big, last)] == [1, 1, 1]
        assert worker.started == 2  # killed for the slow message only; the last went to a new one
        # The stream left nothing behind: the next request gets its own answers.
        again = accept(application, declaration(3))
        assert application.processor.process(again).status == "processed"
    finally:
        worker.close()
        application.close()
