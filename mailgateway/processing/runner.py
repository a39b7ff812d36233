"""Process accepted messages: classify, authenticate, extract, apply — once (README, "How it works").

For one message:
1. count the attempt, in its own short committed transaction, before anything else is tried; a
   message that already used ``[processing] max_attempts`` is quarantined instead (docs/guarantees.md: a
   message that crashes or wedges the daemon, or kills the worker, must not be picked forever);
2. authenticate and analyse — pure, no lock held (a large message must not block intake): in the
   daemon, in a worker process with a time budget (processing/worker.py), else in this process;
3. in one write transaction: re-check the message is still ``received`` (another worker or an
   earlier run may have finished it), apply the handler, queue outbound mail, mark it processed.

A sweep (``process_pending``) does this by batches (``BatchRun``, issue 19): step 1 is one commit
for the whole batch, step 2 streams the batch through the worker (each message within its own
budget) while step 3 applies the messages already analysed, several per write transaction, so
the commit + fsync is paid once per transaction; a handler that raises rolls its transaction
back, which runs again with a ``SAVEPOINT`` per message, and still quarantines its own message
only. ``process(id)`` is one message, one transaction.

A crash anywhere before the commit leaves the message ``received``: it is processed again on
restart, with the same result once (handlers are deterministic and outbound mail has idempotency
keys), until its attempts run out. A handler that raises quarantines the message with the
exception recorded; a database that is briefly unavailable leaves it ``received`` for the next
sweep.

A sender that could not be authenticated only because a DKIM key lookup failed temporarily
(``SenderVerdict.temporary``: a DNS timeout, SERVFAIL) is not judged on that: in a sweep
(``process_pending``, the daemon) the message stays ``received`` with ``retry_at`` set
``[processing] dns_retry_seconds`` ahead (past the resolver's 60 s failure cache, dns.py), and
sweeps skip it until then. The try that uses up ``max_attempts`` processes it as unauthenticated,
saying on the timeline and in the receipt that the key could not be fetched: a DNS outage delays
a message, never quarantines it. ``process(id)`` alone (``mailgateway ingest``: no later sweep is
coming) processes at once, as unauthenticated, with the same explanation.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import cache
from typing import Any, cast

from sqlalchemy import Connection, Engine, Select, Table, bindparam, func, or_, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.cases.timeline import savepoint
from mailgateway.clock import Clock, aware
from mailgateway.intake.priority import NORMAL
from mailgateway.logs import bind, log_context
from mailgateway.mail.auth import Authenticator
from mailgateway.mail.context import AnalysisContext
from mailgateway.mail.facts import MessageFacts, SenderVerdict
from mailgateway.processes import AHEAD_NAME
from mailgateway.processing import later
from mailgateway.processing.ahead import NICE, AnalysisAhead
from mailgateway.processing.context import Env, Outcome
from mailgateway.processing.pipeline import HANDLERS, PREHANDLERS
from mailgateway.processing.worker import (
    AnalysisFailed,
    AnalysisRetry,
    AnalysisStream,
    AnalysisTimeout,
    AnalysisWorker,
    WorkerLost,
    WorkerUnavailable,
    analyse_inbound,
    context_for,
    establishment_lookup_for,
    thread_lookup_for,
    thread_subjects_for,
)
from mailgateway.settings import Settings
from mailgateway.store import fast
from mailgateway.store.engine import reading, transaction, write_gate
from mailgateway.store.models import InboundMessage

__all__ = ["Processor", "Result", "describe", "establishment_lookup_for", "thread_lookup_for", "thread_subjects_for"]

log = logging.getLogger("mailgateway.processing")

# The longest a sweep waits for intake to go quiet before processing its next message anyway.
INTAKE_YIELD_SECONDS = 0.25
# A sweep takes messages by batches (issue 19): one committed attempt count for the batch, then
# write transactions of several messages each (``BatchRun``), so the commit + fsync,
# the audit ledger anchor and the transaction set-up are paid once per transaction, not per
# message. A write transaction is closed after BATCH_WRITE_SECONDS, or when intake is waiting
# (``intake_busy``) after INTAKE_TURN_SECONDS, so SQLite's write lock is never held long while
# mail arrives.
BATCH_SIZE = 25
BATCH_WRITE_SECONDS = 0.25
# Intake waiting ends a write transaction only after this turn: under a steady stream (mail every
# few tens of milliseconds) each transaction otherwise applied one message and yielded again, and
# processing fell to ≈ 15 msg/s while 42 msg/s arrived — a backlog growing as long as the stream
# lasted (an outside tester; issue 19). The accept writer waits this long at most for its turn.
INTAKE_TURN_SECONDS = 0.05
# Each batch of a sweep starts with the priority messages (staff, ACSS: intake/priority.py) that
# are due, those that arrived during the sweep included, then takes first-come mail; at least
# FIFO_SHARE places of a batch are kept for first-come mail while some waits, so a flood of
# priority mail (an unverified envelope or From can claim it) slows declarations, never stops them.
FIFO_SHARE = 5


@dataclass(frozen=True)
class Result:
    inbound_id: int
    status: str  # processed | quarantined | skipped | retry | deferred (DNS: tried again later)
    kind: str | None = None
    case_ref: str | None = None
    reason: str | None = None
    # Wall time of process() (the metrics' processing latency histogram).
    seconds: float = field(default=0.0, compare=False)


def _french_seconds(seconds: float) -> str:
    """30.0 -> "30", 0.25 -> "0,25" (French decimal comma)."""
    return f"{seconds:g}".replace(".", ",")


def abandoned_reason(attempts: int) -> str:
    return f"abandonné après {attempts} tentative{'s' if attempts > 1 else ''} de traitement"


def timeout_reason(seconds: float) -> str:
    return f"analyse trop longue : plus de {_french_seconds(seconds)} s"


KEY_UNAVAILABLE = "clé DKIM non récupérée (échec DNS temporaire)"


def deferred_reason(retry_at: datetime) -> str:
    return f"{KEY_UNAVAILABLE} : nouvel essai après {retry_at.strftime('%Y-%m-%d %H:%M:%S %Z').strip()}"


def unavailable_key_detail(sender: SenderVerdict, attempts: int) -> str:
    """The sender detail of a message processed although its key could not be fetched."""
    tries = f", {attempts} tentatives" if attempts > 1 else ""
    return "; ".join(x for x in (f"{KEY_UNAVAILABLE}{tries} : authentification impossible", sender.detail) if x)


@contextmanager
def _crash_safe_commit(engine: Engine) -> Iterator[Connection]:
    """A connection whose commits survive a crash of this process, not of the machine.

    Enough for the attempt counter, which must outlive a SIGKILL (the watchdog), not a power cut
    (one more try then), and it saves the fsync that doubled the commit cost per message (SQLite
    ≈7 ms -> 0.3 ms here). SQLite in WAL mode with ``synchronous=NORMAL`` (restored to FULL before
    the connection goes back to the pool); PostgreSQL ``synchronous_commit = off`` for the
    transaction only.
    """
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            raw = conn.connection.dbapi_connection
            assert raw is not None
            raw.execute("PRAGMA synchronous=NORMAL")  # never inside a transaction (SQLite refuses)
            try:
                yield conn
            finally:
                try:
                    raw.execute("PRAGMA synchronous=FULL")
                except Exception:
                    conn.invalidate()  # never pool a connection with weakened durability
                    raise
        else:
            yield conn  # the caller sets synchronous_commit in its transaction


def _claim_key(inbound_id: int) -> int:
    """Signed 64-bit PostgreSQL advisory lock key of one inbound message."""
    digest = hashlib.sha256(f"mailgateway:inbound:{inbound_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Processor:
    def __init__(
        self,
        settings: Settings,
        factory: sessionmaker[Session],
        clock: Clock,
        authenticator: Authenticator,
        env: Env,
        on_outbound: Callable[[], None] = lambda: None,
        on_result: Callable[[Result], None] = lambda _r: None,
        worker: AnalysisWorker | None = None,
    ) -> None:
        self.settings = settings
        self.factory = factory
        self.clock = clock
        self.authenticator = authenticator
        self.env = env
        self.on_outbound = on_outbound
        self.on_result = on_result
        # None: analysis in this process (ingest, parse, tests); the daemon sets a worker
        # ([processing] isolation = "process"), which also enforces the time budget.
        self.worker = worker
        # The daemon's host: the worker analyses the next messages while a sweep yields to
        # intake (processing/ahead.py). None: every message is analysed by its batch.
        self.ahead: AnalysisAhead | None = None
        self.halt = threading.Event()
        # The daemon: True while messages are arriving. A sweep then waits (up to
        # INTAKE_YIELD_SECONDS per message) before taking the write lock: accepting is what the
        # sender's MTA waits on, processing can follow a moment later (README, "Benchmarks").
        self.intake_busy: Callable[[], bool] | None = None
        # Staff notifications may wait in deferred_staff_notices (processing/later.py): maybe at
        # start (a crash may have left some), until a sweep finds none.
        env.staff_notices_deferred = True
        self._deferred_looked = time.monotonic()
        self._carried_over = True
        # Tries already counted of the due messages, as a sweep read its queue (``_suspects_alone``).
        self._tried: dict[int, int] = {}
        # Set by a batch whose messages were left untried because no analysis worker could start.
        self.analysis_unavailable = False

    def context(self, session: Session) -> AnalysisContext:
        return context_for(self.settings, session)

    def pending(self, limit: int = 100) -> list[int]:
        """Messages due now: ``received``, and not deferred to later (``retry_at``); the highest
        ``priority`` first (intake/priority.py), then first come first served (``id``)."""
        urgent = self._due(limit, urgent=True)
        return urgent + self._due(limit - len(urgent), urgent=False) if len(urgent) < limit else urgent

    def _due(self, limit: int, *, urgent: bool, after: int = 0) -> list[int]:
        """The due messages above NORMAL priority (``urgent``) or at NORMAL, in processing order.
        Two queries rather than one ``ORDER BY priority DESC, id``: each walks the index
        ``ix_inbound_pending`` (status, priority, id) in order and stops at ``limit``, where the
        mixed-direction sort would read every received row of a backlog first."""
        stmt = due_query(self.clock.now(), urgent=urgent).add_columns(InboundMessage.attempts)
        if after:  # above that id (analysis ahead: ``due_after``)
            stmt = stmt.where(InboundMessage.id > after)
        with reading(self.factory) as session:
            rows = session.execute(stmt.limit(limit)).all()
        # Read with the queue, for ``_suspects_alone``: no query of its own per batch.
        self._tried.update((row[0], row[1] or 0) for row in rows)
        return [row[0] for row in rows]

    def due_after(self, after: int, limit: int) -> list[int]:
        """The next ``limit`` due messages of normal priority above id ``after`` (analysis ahead)."""
        return self._due(limit, urgent=False, after=after)

    def analyse_ahead(self) -> AnalysisAhead | None:
        """Analysis ahead, with a worker of its own at the lowest priority (the daemon's host);
        None when analysis runs in this process (no worker)."""
        if self.worker is None:
            return None
        if self.ahead is None:
            worker = AnalysisWorker(self.settings, nice=NICE, name=AHEAD_NAME)
            self.ahead = AnalysisAhead(worker, self.due_after)
        return self.ahead

    def process(self, inbound_id: int, *, may_defer: bool = False) -> Result:
        """Process one message now. ``may_defer`` (sweeps): a message whose DKIM key could not be
        fetched (temporary DNS failure) waits for a later sweep instead, while it has attempts left;
        without it (``ingest``: no sweep follows) it is processed at once as unauthenticated."""
        started = time.monotonic()
        # Every log line of this message (handlers, mailer, ...) carries its ids (mailgateway.logs).
        with log_context(inbound_id=inbound_id):
            try:
                result = self._process(inbound_id, may_defer)
            except OperationalError as exc:
                log.warning("database unavailable while processing inbound %s: %s", inbound_id, exc)
                result = Result(inbound_id, "retry", reason=str(exc))
            except Exception as exc:
                result = self._quarantine(inbound_id, _exception_text(exc))
        result = replace(result, seconds=time.monotonic() - started)
        self.on_result(result)
        return result

    def _process(self, inbound_id: int, may_defer: bool) -> Result:
        worker = self.worker
        if worker is not None:
            try:
                # Before the attempt is counted: a worker that cannot start uses up no attempt.
                worker.prepare(self.settings)
            except WorkerUnavailable as exc:
                log.error("inbound %s waits: %s", inbound_id, exc)
                return Result(inbound_id, "retry", reason=str(exc))
        with self._exclusive(inbound_id) as mine:
            if not mine:  # another instance is trying it right now
                return Result(inbound_id, "skipped")
            attempt = self._count_attempt(inbound_id, may_defer)
            if isinstance(attempt, Result):
                return attempt
            facts = self._try(inbound_id, attempt, may_defer, lambda: self._analyse(inbound_id))
            if isinstance(facts, Result):
                return facts
            return self._apply(inbound_id, facts)

    def _try(self, inbound_id: int, attempt: int, may_defer: bool,
             analysed: Callable[[], MessageFacts | None]) -> Result | MessageFacts:
        """Step 2 of a counted try: the facts to apply (from ``analysed``), or the try's final
        result (quarantined over budget or on a failed analysis, retry, skipped, deferred)."""
        try:
            facts = analysed()
        except AnalysisTimeout as exc:
            return self._quarantine(inbound_id, None, reason=timeout_reason(exc.seconds))
        except AnalysisFailed as exc:
            return self._quarantine(inbound_id, exc.detail)
        except (WorkerLost, WorkerUnavailable, AnalysisRetry) as exc:
            # Counted already: a message that kills its worker every time ends in quarantine.
            log.warning("inbound %s will be tried again: %s", inbound_id, exc)
            return Result(inbound_id, "retry", reason=str(exc))
        if facts is None:
            return Result(inbound_id, "skipped")
        if facts.sender.temporary and not facts.sender.authenticated:
            if may_defer and attempt < self.settings.processing.max_attempts:
                return self._defer(inbound_id, facts)
            # Out of tries, or nobody to try again: unauthenticated, and saying why.
            sender = replace(facts.sender, detail=unavailable_key_detail(facts.sender, attempt)[:1000])
            facts = replace(facts, sender=sender)
        return facts

    def _analyse(self, inbound_id: int) -> MessageFacts | None:
        if self.worker is not None:
            return self.worker.analyse(self.settings, inbound_id, self.settings.processing.analysis_timeout_seconds)
        with reading(self.factory) as session:
            return analyse_inbound(self.settings, self.authenticator, session, inbound_id)

    @contextmanager
    def _exclusive(self, inbound_id: int) -> Iterator[bool]:
        """PostgreSQL: one instance tries a message at a time (a session advisory lock, released
        when the connection closes, so a crashed instance never keeps it), so that each try is
        counted once. SQLite is single-instance; the write transaction re-checks the status anyway.
        """
        engine = self.factory.kw["bind"]
        if engine.dialect.name != "postgresql":
            yield True
            return
        key = _claim_key(inbound_id)
        with engine.connect() as conn:
            mine = bool(conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}))
            conn.commit()
            try:
                yield mine
            finally:
                if mine:
                    try:
                        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                        conn.commit()
                    except Exception:
                        # Never hand a connection holding the lock back to the pool.
                        log.warning("could not release the lock of inbound %s", inbound_id, exc_info=True)
                        conn.invalidate()

    def _count_attempt(self, inbound_id: int, may_defer: bool = False) -> Result | int:
        """Count this try, committed before it starts; quarantine a message out of attempts.

        Returns this try's number (1 for the first), or the final result when nothing is to be
        tried (gone, done, deferred to later in a sweep, or out of attempts). Only status, attempts
        and retry_at are read: the raw bytes (up to 25 MB) stay in the database.
        """
        limit = self.settings.processing.max_attempts
        engine = self.factory.kw["bind"]
        now = self.clock.now()
        with write_gate(engine), _crash_safe_commit(engine) as conn, conn.begin():
            stmt = (select(InboundMessage.status, InboundMessage.attempts, InboundMessage.retry_at)
                    .where(InboundMessage.id == inbound_id))
            if conn.dialect.name == "postgresql":
                conn.execute(text("SET LOCAL synchronous_commit TO OFF"))
                stmt = stmt.with_for_update()
            found = conn.execute(stmt).one_or_none()
            if found is None or found.status != "received":
                return Result(inbound_id, "skipped")
            if may_defer and found.retry_at is not None and aware(found.retry_at) > now:
                # Deferred by another instance since this sweep listed it.
                return Result(inbound_id, "skipped")
            attempts = found.attempts or 0
            if attempts >= limit:
                reason = abandoned_reason(attempts)
                conn.execute(update(InboundMessage).where(InboundMessage.id == inbound_id)
                             .values(status="quarantined", reason=reason, processed_at=self.clock.now()))
                log.error("inbound %s quarantined: %s", inbound_id, reason)
                return Result(inbound_id, "quarantined", reason=reason)
            conn.execute(update(InboundMessage).where(InboundMessage.id == inbound_id).values(attempts=attempts + 1))
        return attempts + 1

    @contextmanager
    def _exclusive_many(self, inbound_ids: list[int]) -> Iterator[set[int]]:
        """``_exclusive`` for a batch, on one connection: the ids this instance may try now."""
        engine = self.factory.kw["bind"]
        if engine.dialect.name != "postgresql":
            yield set(inbound_ids)
            return
        with engine.connect() as conn:
            mine = {i for i in inbound_ids
                    if conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": _claim_key(i)})}
            conn.commit()
            try:
                yield mine
            finally:
                try:
                    for i in mine:
                        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _claim_key(i)})
                    conn.commit()
                except Exception:
                    log.warning("could not release the locks of inbound %s", sorted(mine), exc_info=True)
                    conn.invalidate()  # never hand a connection holding locks back to the pool

    def _count_attempts(self, inbound_ids: list[int], may_defer: bool) -> dict[int, Result | int]:
        """``_count_attempt`` for a batch: one crash-safe commit counts the try of every message
        (durable before any is analysed, docs/guarantees.md) and quarantines those out of attempts."""
        limit = self.settings.processing.max_attempts
        engine = self.factory.kw["bind"]
        now = self.clock.now()
        out: dict[int, Result | int] = {}
        with write_gate(engine), _crash_safe_commit(engine) as conn, conn.begin():
            stmt = (select(InboundMessage.id, InboundMessage.status, InboundMessage.attempts, InboundMessage.retry_at)
                    .where(InboundMessage.id.in_(inbound_ids)))
            if conn.dialect.name == "postgresql":
                conn.execute(text("SET LOCAL synchronous_commit TO OFF"))
                stmt = stmt.with_for_update()
            found = {row.id: row for row in conn.execute(stmt)}
            counted: list[int] = []
            for inbound_id in inbound_ids:
                row = found.get(inbound_id)
                if row is None or row.status != "received" or (
                        may_defer and row.retry_at is not None and aware(row.retry_at) > now):
                    out[inbound_id] = Result(inbound_id, "skipped")
                    continue
                attempts = row.attempts or 0
                if attempts >= limit:
                    reason = abandoned_reason(attempts)
                    conn.execute(update(InboundMessage).where(InboundMessage.id == inbound_id)
                                 .values(status="quarantined", reason=reason, processed_at=now))
                    log.error("inbound %s quarantined: %s", inbound_id, reason)
                    out[inbound_id] = Result(inbound_id, "quarantined", reason=reason)
                    continue
                counted.append(inbound_id)
                out[inbound_id] = attempts + 1
            if counted:
                conn.execute(update(InboundMessage).where(InboundMessage.id.in_(counted))
                             .values(attempts=func.coalesce(InboundMessage.attempts, 0) + 1))
        return out

    def _defer(self, inbound_id: int, facts: MessageFacts) -> Result:
        """Leave the message ``received`` until ``[processing] dns_retry_seconds`` from now (its
        attempt stays counted: the last one processes it, see ``_process``)."""
        retry_at = self.clock.now() + timedelta(seconds=self.settings.processing.dns_retry_seconds)
        reason = deferred_reason(retry_at)
        with write_gate(self.factory.kw["bind"]), transaction(self.factory) as session:
            session.execute(update(InboundMessage)
                            .where(InboundMessage.id == inbound_id, InboundMessage.status == "received")
                            .values(retry_at=retry_at, reason=reason))
        log.warning("inbound %s deferred until %s: DKIM key lookup failed temporarily (%s)",
                    inbound_id, retry_at.isoformat(), facts.sender.detail)
        return Result(inbound_id, "deferred", facts.kind, reason=reason)

    def _apply(self, inbound_id: int, facts: MessageFacts) -> Result:
        with write_gate(self.factory.kw["bind"]), transaction(self.factory) as session:
            result = self._apply_in(session, inbound_id, facts)
        self._applied(result, facts)
        return result

    def _apply_in(self, session: Session, inbound_id: int, facts: MessageFacts) -> Result:
        """Step 3 in the caller's write transaction: re-check, handler, outbound, status."""
        bind(message_id=facts.message_id, case_ref=facts.case_ref, region=facts.region)
        row = fast.load(session, InboundMessage, _inbound_statement(session.get_bind().dialect.name),
                        {"inbound_id": inbound_id})
        if row is None or row.status != "received":
            return Result(inbound_id, "skipped")
        row.kind = facts.kind
        row.message_id = (facts.message_id or "")[:998] or None
        row.region = row.region or facts.region
        row.auth = {
            "address": facts.sender.address, "authenticated": facts.sender.authenticated,
            "method": facts.sender.method, "domain": facts.sender.domain, "detail": facts.sender.detail,
        }
        outcome = None
        attachments = int(facts.extra.get("attachments", 0) or 0)
        if attachments > self.settings.intake.max_attachments:
            # Attachment limits; the message is kept, in quarantine, with the reason.
            outcome = Outcome("quarantined", f"trop de pièces jointes : {attachments} "
                                             f"(maximum {self.settings.intake.max_attachments})")
        # Features may claim a message first (e.g. an establishment acknowledging a bulletin).
        for prehandler in PREHANDLERS if outcome is None else ():
            outcome = prehandler(self.env, session, row, facts)
            if outcome is not None:
                break
        if outcome is None:
            handler = HANDLERS.get(facts.kind)
            outcome = handler(self.env, session, row, facts) if handler else Outcome(
                "quarantined", f"type de message sans traitement : {facts.kind}")
        row.status = outcome.status
        row.retry_at = None
        row.reason = outcome.reason
        row.processed_at = self.clock.now()
        case_ref = outcome.case.reference if outcome.case is not None else None
        return Result(inbound_id, outcome.status, facts.kind, case_ref, outcome.reason)

    def _applied(self, result: Result, facts: MessageFacts) -> None:
        """After the commit: the log line, and the sender woken (outbound mail may be queued)."""
        if result.status == "skipped":
            return
        if self.ahead is not None:  # facts analysed ahead before this commit may name this message
            self.ahead.applied += 1
        bind(case_ref=result.case_ref)
        log.info("inbound %s %s kind=%s case=%s", result.inbound_id, result.status, facts.kind, result.case_ref,
                 extra={"case_ref": result.case_ref, "message_id": facts.message_id})
        self.on_outbound()

    def _quarantine(self, inbound_id: int, detail: str | None, *, reason: str | None = None) -> Result:
        """Quarantine with ``reason``, or with the exception ``detail`` of a failed try (the
        attempt was counted when the try began)."""
        reason = reason or f"erreur de traitement : {detail}"
        log.error("inbound %s quarantined: %s", inbound_id, detail or reason)
        with write_gate(self.factory.kw["bind"]), transaction(self.factory) as session:
            session.execute(update(InboundMessage)
                            .where(InboundMessage.id == inbound_id, InboundMessage.status == "received")
                            .values(status="quarantined", reason=reason, processed_at=self.clock.now()))
        return Result(inbound_id, "quarantined", reason=detail or reason)

    def process_pending(self, limit: int = 1000) -> list[Result]:
        """Process up to ``limit`` due messages by batches of BATCH_SIZE. First-come mail is the
        backlog found at the start of the sweep, in order; priority mail is looked for again
        before each batch, so a staff command that arrives during a burst of declarations is
        in the next batch, not after the burst (issue 19). Each message is tried once a sweep."""
        results: list[Result] = []
        if self._carried_over:  # this processor's first sweep, before it defers any of its own
            self._carried_over = False
            self._say_carried_over()
        self._tried.clear()  # attempts as the queue was read by this sweep (``_due``)
        backlog = deque(self._due(limit, urgent=False))
        tried: set[int] = set()
        tried_urgent = 0
        # A backlog: its staff notifications wait until it is done (processing/later.py).
        self.env.defer_staff_notices = len(backlog) > BATCH_SIZE
        try:
            while len(tried) < limit:
                self._yield_to_intake()
                if self.halt.is_set():  # the daemon's drain ran out: the rest waits for the next start
                    break
                size = min(BATCH_SIZE, limit - len(tried))
                # Tried urgent messages still received (retry, skipped) are skipped, not taken again.
                urgent = [i for i in self._due(size + tried_urgent, urgent=True) if i not in tried]
                batch = urgent[:max(0, size - min(FIFO_SHARE, len(backlog)))]
                while len(batch) < size and backlog:
                    batch.append(backlog.popleft())
                if not batch:
                    break
                batch, rest = self._suspects_alone(batch)
                urgent_ids = set(urgent)
                for inbound_id in reversed(rest):  # first-come mail keeps its place; urgent is looked for again
                    if inbound_id not in urgent_ids:
                        backlog.appendleft(inbound_id)
                tried_urgent += sum(1 for inbound_id in batch if inbound_id in urgent_ids)
                tried.update(batch)
                self.analysis_unavailable = False
                results += self.process_batch(batch, may_defer=True)
                if self.analysis_unavailable:
                    # Later mail must not overtake the messages left untried (a complement
                    # applied before its declaration became a case of its own; an outside tester
                    # killing workers as they started): the sweep ends, the next one begins with
                    # them, in order.
                    log.warning("no analysis worker: the sweep stops; the rest waits for the next, in order")
                    break
                self._send_deferred()
        finally:
            self.env.defer_staff_notices = False
        if not self.halt.is_set():
            self._send_deferred(sweep_end=True)
        return results

    def _suspects_alone(self, batch: list[int]) -> tuple[list[int], list[int]]:
        """``batch`` cut before its first message already tried (``attempts`` > 0 and still
        ``received``: it was in flight when a try ended without a result — a crash, a kill, a lost
        database — or it waits after a DNS failure), that message alone if it comes first; and
        the rest, for later batches. A batch's tries are counted in one commit (``_count_attempts``):
        a daemon SIGKILLed three times during a burst charged the same 25 messages three times and
        quarantined them all (``tests/chaos/test_sigkill.py`` under load). Alone, a message's next
        try charges it only: a poison message still meets ``max_attempts``, its neighbours don't."""
        first = next((n for n, inbound_id in enumerate(batch) if self._tried.get(inbound_id, 0) > 0), None)
        if first is None or len(batch) < 2:
            return batch, []
        cut = first or 1
        return batch[:cut], batch[cut:]

    def _say_carried_over(self) -> None:
        try:
            if left := later.count_deferred(self.factory):
                log.info("%s staff notification(s) deferred before this start (a stop or a crash during a "
                         "backlog): queuing them", left)
        except OperationalError as exc:
            log.warning("database unavailable while counting deferred staff notifications: %s", exc)

    def _send_deferred(self, *, sweep_end: bool = False) -> None:
        """Staff notifications put off by backlogs (processing/later.py): those that waited
        ``[processing] staff_notice_max_delay_seconds`` between batches and at a sweep's end, a
        continuous stream of small sweeps included; every one at a sweep's end with nothing due.
        Looked for by a read first, so a sweep finding none takes no write lock; each chunk is a
        write transaction, after intake had its turn."""
        env = self.env
        if not env.staff_notices_deferred:
            # None of ours; another instance's, left by its crash (PostgreSQL): looked for at times.
            now = time.monotonic()
            if not sweep_end or now - self._deferred_looked < later.LOOK_SECONDS:
                return
            self._deferred_looked = now
        every = sweep_end and not self._due(1, urgent=False) and not self._due(1, urgent=True)
        waited = None if every else self.settings.processing.staff_notice_max_delay_seconds
        try:
            if not later.any_deferred(self.factory, self.clock, waited=waited):
                if every:
                    env.staff_notices_deferred = False
                return
        except OperationalError as exc:
            log.warning("database unavailable while looking for deferred staff notifications: %s", exc)
            return
        sent = 0
        try:
            while not self.halt.is_set():
                self._yield_to_intake()
                taken = later.send_deferred(self.env.mailer, self.factory, self.clock, waited=waited,
                                            digest_from=self.settings.processing.staff_notice_digest_from)
                sent += taken
                if taken < later.LATER_CHUNK:
                    if every:
                        env.staff_notices_deferred = False
                    break
        except OperationalError as exc:  # they stay deferred: the next sweep tries again
            log.warning("database unavailable while queuing deferred staff notifications: %s", exc)
        except Exception:
            log.exception("deferred staff notifications not queued; tried again at the next sweep")
        if sent:
            log.info("%s deferred staff notification(s) queued", sent)
            self.on_outbound()

    def process_backlog(self, limit: int = 200) -> list[Result]:
        """Sweeps of ``limit`` until one comes back short: the whole backlog, not the first
        ``limit`` of it. After a burst nothing else wakes processing up (the accepts' wake-ups
        were read before the first sweep): stopping at ``limit`` left the rest waiting for the
        idle sweep, 5 s per ``limit`` messages (issue 19). ``limit`` bounds one sweep's memory.
        A full sweep that settled nothing (all skipped, retried or deferred: another instance's,
        the database or DNS failing) ends it too: the idle sweep tries again, no busy loop."""
        results: list[Result] = []
        while not self.halt.is_set():
            done = self.process_pending(limit)
            results += done
            if len(done) < limit or not any(r.status in ("processed", "quarantined") for r in done):
                break
        return results

    def process_batch(self, inbound_ids: list[int], *, may_defer: bool = False) -> list[Result]:
        """Process several messages with the guarantees of ``process`` for each (``BatchRun``):
        attempts counted in one committed transaction before any is tried; analysis per message
        (the worker's time budget per message); handlers in shared write transactions, so that
        a handler that raises quarantines its own message only (``BatchRun``)."""
        started = time.monotonic()
        done = BatchRun(self, inbound_ids, may_defer).run()
        results = []
        for inbound_id in inbound_ids:
            result = done.get(inbound_id)
            if result is None:  # not reached (halted): still received, tried again later
                continue
            result = replace(result, seconds=time.monotonic() - started)
            self.on_result(result)
            results.append(result)
        return results

    def _yield_to_intake(self) -> bool:
        """Let a burst of arrivals have SQLite's write lock and the GIL first, within a bound: a
        message is never held back more than INTAKE_YIELD_SECONDS by intake. False when intake
        was still busy at the end of the wait."""
        busy = self.intake_busy
        if busy is None:
            return True
        until = time.monotonic() + INTAKE_YIELD_SECONDS
        ahead = self.ahead
        while busy() and not self.halt.is_set():
            if time.monotonic() >= until:
                return False
            if ahead is not None:  # the worker ahead uses the wait (processing/ahead.py)
                ahead.step(self.settings, self.settings.processing.analysis_timeout_seconds)
            time.sleep(0.005)
        return True


class _InOrder:
    """Part of ``AnalysisStream``'s interface: ``_left``, the ids still to answer, in order."""

    _left: list[int]

    def __bool__(self) -> bool:
        return bool(self._left)

    @property
    def upcoming(self) -> int:
        return self._left[0]


class InlineAnalyses(_InOrder):
    """``AnalysisStream``'s interface for analysis in this process (no worker): nothing overlaps."""

    def __init__(self, processor: Processor, inbound_ids: list[int]) -> None:
        self._p = processor
        self._left = inbound_ids
        self.abandoned: list[int] = []

    def ready(self) -> bool:
        return bool(self._left)

    def next(self) -> tuple[int, MessageFacts | None]:
        inbound_id = self._left.pop(0)
        return inbound_id, self._p._analyse(inbound_id)

    def close(self) -> None:
        self._left = []


class AnalysedAhead(_InOrder):
    """A round's analyses when some were made ahead (processing/ahead.py): those first-hand, the
    others from the worker's request, in the round's order."""

    def __init__(self, inbound_ids: list[int], known: dict[int, MessageFacts], rest: AnalysisStream) -> None:
        self._left = list(inbound_ids)
        self._known = known
        self._rest = rest

    @property
    def abandoned(self) -> list[int]:
        return self._rest.abandoned

    def ready(self) -> bool:
        return bool(self._left) and (self._left[0] in self._known or self._rest.ready())

    def next(self) -> tuple[int, MessageFacts | None]:
        inbound_id = self._left.pop(0)
        if inbound_id in self._known:
            return inbound_id, self._known.pop(inbound_id)
        if not self._rest:  # the worker could not start: the rest waits (``abandoned``)
            raise WorkerUnavailable("analysis worker unavailable")
        return self._rest.next()

    def close(self) -> None:
        self._left = []
        self._rest.close()


class BatchRun:
    """One batch of a sweep (``Processor.process_batch``), with the guarantees of ``process`` for
    each message (docs/guarantees.md):

    1. every try is counted in one crash-safe commit before any message is analysed;
    2. each message is analysed alone (in the worker: its own time budget; over it, the worker is
       killed, that message quarantined, the next one goes to a new worker);
    3. the handlers run in write transactions of several messages: a handler that raises has its
       message quarantined with the exception, and the others commit. A transaction first runs
       its messages one after the other, each flushed at its end; when one raises, the whole
       transaction is rolled back and its messages run again, a savepoint each, so the one that
       raises rolls back alone (issue 19: a savepoint per message cost ≈ 0.3 ms of a 4 ms
       declaration, for the rare message that fails). A transaction is closed after
       ``BATCH_WRITE_SECONDS``, or when intake waits after ``INTAKE_TURN_SECONDS``.

    A crash before a commit leaves that transaction's messages ``received``: they are processed
    again on restart (the outbox idempotency keys make their mail queued once).
    """

    def __init__(self, processor: Processor, inbound_ids: list[int], may_defer: bool) -> None:
        self.p = processor
        self.ids = inbound_ids
        self.may_defer = may_defer
        self.results: dict[int, Result] = {}
        self.raised: set[int] = set()  # handlers that raised (quarantined, logged already)
        self.transactions = 0
        # After a handler raised in a transaction without savepoints: the rest of this batch
        # runs with one savepoint per message.
        self.careful = False
        # This round's Message-IDs applied or put off, and the messages put off (``_stale``).
        self.named_here: set[str] = set()
        self.again: list[int] = []

    def run(self) -> dict[int, Result]:
        p = self.p
        if p.worker is not None:
            try:
                # Before the attempts are counted: a worker that cannot start uses up no attempt.
                p.worker.prepare(p.settings)
            except WorkerUnavailable as exc:
                log.error("inbound %s wait: %s", self.ids, exc)
                p.analysis_unavailable = True
                return {i: Result(i, "retry", reason=str(exc)) for i in self.ids}
        try:
            with p._exclusive_many(self.ids) as mine:
                self.results.update((i, Result(i, "skipped")) for i in self.ids if i not in mine)
                self._run([i for i in self.ids if i in mine])
        except OperationalError as exc:
            # What was committed stays done; the rest is tried again by a later sweep.
            log.warning("database unavailable while processing inbound %s: %s", self.ids, exc)
            for i in self.ids:
                self.results.setdefault(i, Result(i, "retry", reason=str(exc)))
        return self.results

    def _run(self, inbound_ids: list[int]) -> None:
        p = self.p
        if not inbound_ids:
            return
        attempts: dict[int, int] = {}
        for inbound_id, attempt in p._count_attempts(inbound_ids, self.may_defer).items():
            if isinstance(attempt, Result):
                self.results[inbound_id] = attempt
            else:
                attempts[inbound_id] = attempt
        ids = list(attempts)
        while ids and not p.halt.is_set():
            # Messages naming one applied after their analysis began are analysed again, by a
            # new round that begins after those commits (``_stale``).
            ids = self._round(ids, attempts)

    def _round(self, ids: list[int], attempts: dict[int, int]) -> list[int]:
        """Analyse ``ids`` (one worker request: one read snapshot) and apply them; return those
        to analyse again."""
        p = self.p
        self.named_here = set()
        self.again = []
        analyses: AnalysisStream | InlineAnalyses | AnalysedAhead
        if p.worker is None:
            analyses = InlineAnalyses(p, ids)
        else:
            known = {i: f for i in ids if p.ahead is not None and (f := p.ahead.take(i, p.settings)) is not None}
            rest = p.worker.stream(p.settings, [i for i in ids if i not in known],
                                   p.settings.processing.analysis_timeout_seconds)
            analyses = AnalysedAhead(ids, known, rest) if known else rest
        todo: list[tuple[int, MessageFacts]] = []
        try:
            while analyses or todo:
                # Answers already analysed join this write transaction; wait only with nothing to
                # apply. Meanwhile the worker analyses the next messages (the second core).
                while analyses and (not todo or analyses.ready()) and not p.halt.is_set():
                    self._analysed(analyses, attempts, todo)
                if todo:
                    todo = self._commit_batch(todo, analyses, attempts)
                elif p.halt.is_set():  # stopping: counted, left received for the next start
                    break
        finally:
            analyses.close()
        for inbound_id in analyses.abandoned:
            self.results[inbound_id] = Result(inbound_id, "retry", reason="analysis worker unavailable")
            p.analysis_unavailable = True
        return list(dict.fromkeys(self.again))

    def _stale(self, inbound_id: int, facts: MessageFacts) -> bool:
        """True when the message names (In-Reply-To, References) a message applied in this round,
        or one put off by it: its analysis read the database before that message had a case, so a
        complement sent right after its declaration would be unthreaded — « message non
        reconnu » — when both wait in one batch (a backlog after a restart, an IMAP mailbox read
        at start). It is put off to the next round; so is its own Message-ID, for its replies."""
        stale = any(i in self.named_here for i in facts.named_ids)  # before its own id: it may name itself
        if facts.message_id:
            self.named_here.add(facts.message_id)
        if stale:
            log.info("inbound %s names a message processed after its analysis began: analysed again", inbound_id)
            self.again.append(inbound_id)
        return stale

    def _analysed(self, analyses: AnalysisStream | InlineAnalyses | AnalysedAhead, attempts: dict[int, int],
                  todo: list[tuple[int, MessageFacts]], read: tuple[int, _Outcome] | None = None) -> None:
        """The next answer of ``analyses`` (or ``read``: one taken in a write transaction and left
        for after it, ``_take_ready``) into ``todo``, or its final result."""
        p = self.p
        inbound_id = analyses.upcoming if read is None else read[0]

        def answer() -> MessageFacts | None:
            if read is None:
                return analyses.next()[1]
            if isinstance(read[1], BaseException):
                raise read[1]
            return read[1]

        with log_context(inbound_id=inbound_id):
            try:
                facts = p._try(inbound_id, attempts[inbound_id], self.may_defer, answer)
            except OperationalError as exc:
                log.warning("database unavailable while processing inbound %s: %s", inbound_id, exc)
                facts = Result(inbound_id, "retry", reason=str(exc))
            except Exception as exc:  # an in-process analysis that raised
                facts = p._quarantine(inbound_id, _exception_text(exc))
        if isinstance(facts, Result):
            self.results[inbound_id] = facts
        else:
            todo.append((inbound_id, facts))

    def _commit_batch(self, todo: list[tuple[int, MessageFacts]],
                      analyses: AnalysisStream | InlineAnalyses | AnalysedAhead,
                      attempts: dict[int, int]) -> list[tuple[int, MessageFacts]]:
        """Apply messages from ``todo`` in one write transaction, then the worker's answers that
        are already there (``_take_ready``); return those left for the next."""
        p = self.p
        # The first transaction follows process_pending's own yield; the next ones yield again.
        quiet = p._yield_to_intake() if self.transactions else True
        self.transactions += 1
        # Intake still busy after the longest wait: this transaction takes its full time, so a
        # continuous burst of arrivals slows processing down but never stops it.
        busy = p.intake_busy if quiet else None
        applied: list[tuple[Result, MessageFacts]] = []
        left = list(todo)
        taken = list(todo)  # this transaction's messages, those taken from ``analyses`` included
        after: list[tuple[int, _Outcome]] = []  # answers taken, for ``_try`` after the transaction
        apply = self._apply_one if self.careful else self._apply_bare
        try:
            with write_gate(p.factory.kw["bind"]), transaction(p.factory) as session:
                opened = time.monotonic()
                # Intake still busy after the longest wait: answers are taken during the first
                # turn only, then the transaction ends with what it holds (the accept writer waits).
                while left or ((quiet or time.monotonic() - opened < INTAKE_TURN_SECONDS)
                               and self._take_ready(analyses, attempts, left, taken, after)):
                    inbound_id, facts = left.pop(0)
                    if self._stale(inbound_id, facts):
                        continue
                    applied.append((apply(session, inbound_id, facts), facts))
                    held = time.monotonic() - opened
                    if held >= BATCH_WRITE_SECONDS or (busy is not None and held >= INTAKE_TURN_SECONDS and busy()):
                        break
        except _Redo as redo:
            # Rolled back as a whole: the same messages again, a savepoint each.
            log.info("inbound %s raised in a batch; its batch runs again, one savepoint per message",
                     redo.inbound_id)
            self.careful = True
            return self._after(analyses, attempts, after, list(taken))
        except OperationalError:
            raise
        except Exception:
            # The transaction failed as a whole (at its commit): each of its messages alone now,
            # so only the one that fails again is quarantined.
            log.warning("batch of inbound %s failed at commit; one by one", [r.inbound_id for r, _ in applied],
                        exc_info=True)
            for result, facts in applied:
                with log_context(inbound_id=result.inbound_id):
                    try:
                        self.results[result.inbound_id] = p._apply(result.inbound_id, facts)
                    except OperationalError:
                        raise
                    except Exception as exc:
                        self.results[result.inbound_id] = p._quarantine(result.inbound_id, _exception_text(exc))
            return self._after(analyses, attempts, after, left)
        for result, facts in applied:
            self.results[result.inbound_id] = result
            with log_context(inbound_id=result.inbound_id):
                if result.inbound_id in self.raised:
                    continue  # the handler raised: logged by _apply_one
                p._applied(result, facts)
        return self._after(analyses, attempts, after, left)

    def _take_ready(self, analyses: AnalysisStream | InlineAnalyses | AnalysedAhead, attempts: dict[int, int],
                    left: list[tuple[int, MessageFacts]], taken: list[tuple[int, MessageFacts]],
                    after: list[tuple[int, _Outcome]]) -> bool:
        """Within a write transaction: the worker's next answer into ``left`` when it is already
        there and asks nothing but applying. True when one was added.

        Without this, a transaction took only the answers there when it began: one, then the
        few analysed meanwhile — about four messages a transaction, each paying a commit and the
        transaction's set-up (issue 19: 1.0 of 7.5 ms a signed declaration; 0.5 with twelve a
        transaction). Never an analysis in this process (``InlineAnalyses``: it would read inside
        the write transaction), never a wait. An answer that raised (over budget, failed, the
        worker lost) is kept in ``after`` for ``_after``, out of the transaction, as is one whose
        handling writes in a transaction of its own (``Processor._try``: unauthenticated while a
        key was unavailable, put off) or that is skipped — and the transaction takes no more.
        Answers are applied in their order (a complement after the declaration it answers, put
        off or not), and after a lost worker the next ``next`` would start a new one and wait for
        it, holding the write lock (both found by an outside tester)."""
        p = self.p
        if isinstance(analyses, InlineAnalyses) or not analyses or not analyses.ready() or p.halt.is_set():
            return False
        inbound_id = analyses.upcoming
        try:
            facts = analyses.next()[1]
        except Exception as exc:  # handled by _after, as _try handles what next() raises
            after.append((inbound_id, exc))
            return False
        if facts is None or (facts.sender.temporary and not facts.sender.authenticated):
            after.append((inbound_id, facts))
            return False
        left.append((inbound_id, facts))
        taken.append((inbound_id, facts))
        return True

    def _after(self, analyses: AnalysisStream | InlineAnalyses | AnalysedAhead, attempts: dict[int, int],
               after: list[tuple[int, _Outcome]],
               left: list[tuple[int, MessageFacts]]) -> list[tuple[int, MessageFacts]]:
        """``left``, then the answers a transaction took but left for after it, through ``_try``
        (their results, or their facts to apply next)."""
        for read in after:
            self._analysed(analyses, attempts, left, read)
        return left

    def _apply_bare(self, session: Session, inbound_id: int, facts: MessageFacts) -> Result:
        """Apply one message without a savepoint; flushed here, so that a failing write is its
        own. Anything it raises but a database outage rolls the whole transaction back (_Redo)."""
        with log_context(inbound_id=inbound_id):
            try:
                result = self.p._apply_in(session, inbound_id, facts)
                session.flush()
            except OperationalError:
                raise
            except Exception as exc:
                raise _Redo(inbound_id) from exc
            return result

    def _apply_one(self, session: Session, inbound_id: int, facts: MessageFacts) -> Result:
        with log_context(inbound_id=inbound_id):
            try:
                with savepoint(session):
                    return self.p._apply_in(session, inbound_id, facts)
            except OperationalError:
                raise
            except Exception as exc:
                detail = _exception_text(exc)
                reason = f"erreur de traitement : {detail}"
                log.error("inbound %s quarantined: %s", inbound_id, detail)
                self.raised.add(inbound_id)
                session.execute(update(InboundMessage)
                                .where(InboundMessage.id == inbound_id, InboundMessage.status == "received")
                                .values(status="quarantined", reason=reason, processed_at=self.p.clock.now()))
                return Result(inbound_id, "quarantined", reason=detail)


@cache
def _inbound_statement(dialect: str) -> Select[Any]:
    """The message to apply, every column (built once per dialect; issue 19). PostgreSQL: row
    locked, or skipped when another instance holds it."""
    c = cast(Table, InboundMessage.__table__).c
    stmt = select(*c).where(c.id == bindparam("inbound_id"))
    return stmt.with_for_update(skip_locked=True) if dialect == "postgresql" else stmt


# An analysis answer read ahead of ``Processor._try``: its facts (None: nothing to apply), or what
# reading it raised.
_Outcome = MessageFacts | None | BaseException


class _Redo(Exception):
    """A message raised in a transaction without savepoints (``BatchRun._apply_bare``)."""

    def __init__(self, inbound_id: int) -> None:
        super().__init__(inbound_id)
        self.inbound_id = inbound_id


def due_query(now: datetime, *, urgent: bool) -> Select[int]:
    """``Processor._due``'s query, without its limit (tests/processing/test_priority_order.py checks its plan)."""
    m = InboundMessage
    stmt = select(m.id).where(m.status == "received", or_(m.retry_at.is_(None), m.retry_at <= now))
    if urgent:
        return stmt.where(m.priority > NORMAL).order_by(m.priority.desc(), m.id)
    return stmt.where(m.priority == NORMAL).order_by(m.id)


def _exception_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()[:2000]


def describe(result: Result) -> dict[str, Any]:
    return {"inbound_id": result.inbound_id, "status": result.status, "kind": result.kind,
            "case_ref": result.case_ref, "reason": result.reason}
