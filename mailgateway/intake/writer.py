"""Group commit for intake: many accepts, one durable commit (README, "How it works" and "Benchmarks").

SMTP sessions hand their message to one writer thread; it takes whatever arrived while the last
commit ran (up to ``batch``), stores it in one transaction, commits (fsync), and only then resolves
each caller's future, so every ``250`` is still sent after the message is on disk. Under load this
turns one fsync per message into one per batch; with one message waiting it costs nothing extra.
A batch is three statements whatever its size (``accept.accept_batch``: one SELECT of the hashes
already stored, one multi-row ``INSERT … ON CONFLICT DO NOTHING RETURNING``, a SELECT of the keys
a concurrent writer stored meanwhile, if any), not a SELECT and an ORM insert per message and region.

One bad item never fails its neighbours (docs/guarantees.md: one non-UTF-8 ``MAIL FROM`` made 59 of 60
honest messages get 451): the envelope is checked before the item is queued; when the batch's
transaction fails, it is rolled back and every item is stored again in a new transaction, each
under its own savepoint, so an item that fails is rolled back alone and only its caller gets the
error. Only a failure of that second commit fails every item.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.clock import Clock
from mailgateway.intake.accept import Accepted, Arrival, accept_batch
from mailgateway.intake.priority import Prioritiser, PriorityRule
from mailgateway.store.engine import DatabaseFileWatch, GateTimeout, write_gate

log = logging.getLogger("mailgateway.intake")

# The longest a batch waits for the write gate (store/engine.py) before its sessions get ``451 4.3.0``
# and nothing is stored. A normal wait is milliseconds (one processing transaction); only a holder
# paused or wedged (SIGSTOP, a stuck disk) goes past it, and the daemon kills a host that holds the
# gate too long (processing/host.py). Well below the clients' patience: RFC 5321 §4.5.3.2.6 gives
# them 10 min after DATA, but proxies and submission clients give up after 15-30 s, and a message
# stored after its client gave up is delivered twice (the client retries it).
GATE_TIMEOUT_SECONDS = 5.0


def _line(exc: BaseException) -> str:
    """An exception's first line, bounded: a reason for /healthz (SQLAlchemy adds the SQL below)."""
    return (str(exc).splitlines() or [""])[0][:300]


class DatabaseLost(RuntimeError):
    """The database file is no longer the one opened (``DatabaseFileWatch``): answered 451."""


class EnvelopeError(ValueError):
    """An envelope address that cannot be stored or routed (permanent: the client gets a 5xx)."""


def address_problem(address: str) -> str | None:
    """Why an envelope address is unusable, or None.

    aiosmtpd decodes command arguments as UTF-8 with ``surrogateescape``: bytes that are not
    UTF-8 (RFC 6531 allows UTF-8 only) come through as lone surrogates, which no database can
    store. Control characters (RFC 5321 §4.1.2 allows none in a path) would reach the logs.
    """
    if address.isascii() and address.isprintable():  # the usual address, checked in C
        return None
    if any("\udc80" <= ch <= "\udcff" for ch in address):
        return "address is not valid UTF-8"
    if any(ch < " " or ch == "\x7f" for ch in address):
        return "address contains control characters"
    return None


def check_envelope(mail_from: str | None, rcpt_tos: Sequence[str], peer: str | None = None) -> None:
    for address in (mail_from or "", *rcpt_tos, peer or ""):
        if problem := address_problem(address):
            raise EnvelopeError(problem)


@dataclass
class WriterStats:
    """What the writer did since it started (benchmarks/intake.py prints them): batches, messages,
    rows; seconds waiting for the write gate, storing (BEGIN to the last statement) and committing."""

    batches: int = 0
    items: int = 0
    rows: int = 0
    failed: int = 0
    fallbacks: int = 0
    gate_seconds: float = 0.0
    store_seconds: float = 0.0
    commit_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Item:
    raw: bytes
    source: str
    mail_from: str | None
    rcpt_tos: Sequence[str]
    regions: Sequence[str | None]
    peer: str | None = None
    future: Future[Accepted] = field(default_factory=Future)
    waiter: asyncio.Future[Accepted] | None = None


def _settle(pairs: list[tuple[asyncio.Future[Accepted], Accepted | BaseException]]) -> None:
    """On an event loop: the answers of one batch (the waiter of a session that went away is skipped)."""
    for waiter, outcome in pairs:
        if waiter.done():
            continue
        if isinstance(outcome, Accepted):
            waiter.set_result(outcome)
        else:
            waiter.set_exception(outcome)


class AcceptWriter:
    def __init__(self, factory: sessionmaker[Session], clock: Clock, batch: int = 64,
                 priority: Prioritiser | None = None, gate_timeout: float = GATE_TIMEOUT_SECONDS) -> None:
        self.factory = factory
        self.clock = clock
        self.batch = batch
        # Decides each message's processing priority here, in the writer thread, not in the SMTP
        # event loop (intake/priority.py: it only orders processing). None: every message NORMAL.
        self.priority = priority
        self.engine: Engine = factory.kw["bind"]
        self.gate = write_gate(self.engine)
        self.watch = DatabaseFileWatch(self.engine)
        self._lost_logged = False
        # The last batch failed (a read-only file, a full disk, the write gate over its bound):
        # its reason until a batch is stored again. /healthz says it (``health``): reads kept
        # succeeding while every accept got 451, and the daemon looked healthy (outside tester).
        self.failing: str | None = None
        self.gate_timeout = gate_timeout
        self._stored_at = 0.0
        self.stats = WriterStats()
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="accept-writer", daemon=True)
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def stop(self) -> None:
        if self._started:
            self._queue.put(None)
            self._thread.join(timeout=30)
            # Where intake's time went (benchmarks/intake.py reads it from the daemon's log).
            log.info("accept writer stopped: %d messages in %d batches", self.stats.items, self.stats.batches,
                     extra={"accept_writer": self.stats.as_dict()})

    def submit(self, raw: bytes, *, source: str, mail_from: str | None, rcpt_tos: Sequence[str],
               region: str | None = None, peer: str | None = None, regions: Sequence[str] = (),
               waiter: asyncio.Future[Accepted] | None = None) -> Future[Accepted]:
        """Queue one message; ``regions`` (every receiving region, intake/accept.py) or ``region``.

        ``waiter``: an asyncio future of the caller's event loop (the SMTP sessions), given the same
        answer as the returned future once the batch is committed; the waiters of one batch are
        settled with one wake-up of their loop, not one ``call_soon_threadsafe`` (a write to the
        loop's self-pipe) per message as ``asyncio.wrap_future`` does. Not settled when the message
        is refused here (the returned future is then already done)."""
        item = _Item(raw, source, mail_from, rcpt_tos, list(regions) or [region], peer, waiter=waiter)
        try:
            check_envelope(mail_from, rcpt_tos, peer)
        except EnvelopeError as exc:  # never queued: it cannot reach (and fail) a batch
            item.future.set_exception(exc)
            return item.future
        self._queue.put(item)
        return item.future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            items = [first]
            stop = False
            while len(items) < self.batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                items.append(nxt)
            self._write(items)
            if stop:
                return

    def _write(self, items: list[_Item]) -> None:
        outcomes: list[Accepted | BaseException | None] = [None] * len(items)
        arrivals: list[tuple[int, Arrival]] = []
        rule = self._rule()
        for n, it in enumerate(items):  # line endings, hash, priority before the gate: it is not held for them
            try:
                arrivals.append((n, Arrival.of(it.raw, source=it.source, mail_from=it.mail_from,
                                               rcpt_tos=it.rcpt_tos, regions=it.regions, peer=it.peer,
                                               rule=rule)))
            except ValueError as exc:
                outcomes[n] = exc
        stats = self.stats
        if self._database_lost(items):
            return
        try:
            asked = time.perf_counter()
            # Bounded (GATE_TIMEOUT_SECONDS): past it, GateTimeout below, 451 and nothing stored.
            self.gate.acquire(self.gate_timeout)
            try:
                entered = time.perf_counter()
                for n, outcome in zip((n for n, _ in arrivals), self._store([a for _, a in arrivals]), strict=True):
                    outcomes[n] = outcome
                committed = time.perf_counter()
            finally:
                self.gate.release()
        except GateTimeout as exc:  # nothing of this batch was stored; the clients retry later
            log.error("accept writer: %s; %d message(s) refused with 451", exc, len(items))
            self.failing = f"messages refusés (451) : {exc}"
            self._resolve(items, [exc] * len(items))
            return
        except Exception as exc:  # the sources answer 4xx and retry: nothing is lost
            log.exception("accept failed for a batch of %d", len(items))
            self.failing = f"messages refusés (451) : enregistrement impossible : {type(exc).__name__}: {_line(exc)}"
            self._resolve(items, [exc] * len(items))
            return
        stats.batches += 1
        stats.gate_seconds += entered - asked
        stats.store_seconds += self._stored_at - entered
        stats.commit_seconds += committed - self._stored_at
        if self._database_lost(items):  # committed into a file deleted meanwhile: the clients retry
            return
        refused = [o for o in outcomes if isinstance(o, OperationalError)]
        if refused and not any(isinstance(o, Accepted) for o in outcomes):
            # Every message of the batch refused by the database itself (a read-only file, a full
            # disk): the store's problem, not a message's (a bad value is a ValueError, its own).
            self.failing = f"messages refusés (451) : enregistrement impossible : {_line(refused[0])}"
        else:
            self.failing = None
        self._resolve(items, outcomes)

    def health(self) -> str | None:
        """For /healthz: why the last batch was refused, until one is stored again."""
        return self.failing

    def _database_lost(self, items: list[_Item]) -> bool:
        """The database file deleted or replaced under the daemon (store/engine.py): the whole
        batch is answered 451 — what it committed went to a file nobody will read — and so is
        every later one, until an operator restores the file and restarts."""
        problem = self.watch.problem()
        if problem is None:
            return False
        if not self._lost_logged:
            self._lost_logged = True
            log.error("accept writer: %s", problem)
        self.failing = problem
        self._resolve(items, [DatabaseLost(problem)] * len(items))
        return True

    def _rule(self) -> PriorityRule | None:
        if self.priority is None:
            return None
        try:
            return self.priority.rule()
        except Exception:  # the order of processing never costs an accept
            log.warning("accept writer: no processing priority for this batch", exc_info=True)
            return None

    def _resolve(self, items: list[_Item], outcomes: Sequence[Accepted | BaseException | None]) -> None:
        """Answer every caller of the batch (after the commit, or with the batch's error)."""
        stats = self.stats
        stats.items += len(items)
        waiting: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Accepted], Accepted | BaseException]]] = {}
        for it, found in zip(items, outcomes, strict=True):
            outcome = found if found is not None else RuntimeError("not stored")
            if isinstance(outcome, Accepted):
                stats.rows += 1 + len(outcome.others)
                it.future.set_result(outcome)
            else:
                stats.failed += 1
                it.future.set_exception(outcome)
            if it.waiter is not None:
                waiting.setdefault(it.waiter.get_loop(), []).append((it.waiter, outcome))
        for loop, pairs in waiting.items():
            try:
                loop.call_soon_threadsafe(_settle, pairs)
            except RuntimeError:  # that loop is closed (shutdown): nobody waits any more
                log.debug("accept writer: %d answers for a closed event loop", len(pairs))

    def _store(self, arrivals: list[Arrival]) -> list[Accepted | BaseException]:
        """The whole batch in one transaction (Core: no ORM unit of work on this path); if a
        statement fails, that transaction is rolled back and each arrival is stored again in a new
        one, under its own savepoint. Raises only when a commit fails (every item gets the error)."""
        self._stored_at = time.perf_counter()
        if not arrivals:
            return []
        try:
            with self.engine.begin() as conn:
                accepted: list[Accepted | BaseException] = list(accept_batch(conn, arrivals, self.clock.now()))
                self._stored_at = time.perf_counter()
            return accepted
        except (SQLAlchemyError, ValueError) as exc:  # ValueError: UnicodeError, a bad value
            if len(arrivals) == 1:
                log.warning("accept failed for one message: %s", type(exc).__name__, exc_info=exc)
                return [exc]
            log.warning("accept failed for a batch of %d (%s): storing each message on its own",
                        len(arrivals), type(exc).__name__)
            self.stats.fallbacks += 1
        with self.engine.begin() as conn:
            now = self.clock.now()
            accepted = [self._store_one(conn, a, now) for a in arrivals]
            self._stored_at = time.perf_counter()
        return accepted

    @staticmethod
    def _store_one(conn: Connection, arrival: Arrival, now: datetime) -> Accepted | BaseException:
        """One arrival under its own savepoint: its failure rolls back only its own rows."""
        try:
            with conn.begin_nested():
                return accept_batch(conn, [arrival], now)[0]
        except (SQLAlchemyError, ValueError) as exc:
            log.warning("accept failed for one message of a batch: %s", type(exc).__name__, exc_info=exc)
            return exc
