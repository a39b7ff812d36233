"""The expensive, pure part of processing, in a process that can be killed alone (docs/guarantees.md).

Sender authentication (DKIM canonicalisation, ``h=`` lists), analysis (MIME walk, label parsing)
and region resolution only read the message and a few rows; their cost is chosen by whoever wrote
the message. Run in the daemon's process, a costly one holds the GIL (``re`` and parts of dkimpy
run in C without releasing it) and freezes SMTP intake and IMAP with it; a thread cannot be
stopped. So the daemon hands them to one persistent worker process, gives each message a time
budget, and past it kills the worker, starts a new one and quarantines the message.

* ``analyse_inbound`` is the one implementation, used in-process (``ingest``, tests) and in the
  worker; the worker reads the row and answers the context lookups (threading, FINESS) from its
  own read-only session on the same database, so both modes give the same facts.
* The worker is started with the ``spawn`` method: ``fork`` of a threaded daemon would copy locks
  held by other threads (the writer, the sender) in the locked state (POSIX ``fork(2)``). The
  processing host's first worker is the exception: a fork of the host taken before it runs a
  thread or opens the database (``AnalysisWorker.start``), ready without imports.
* It is persistent (spawning costs about a second of imports; a message costs a pipe round trip)
  and started before an attempt is counted, so a worker that fails to start never uses up a
  message's attempts.

The write transaction (handlers, outbox) stays in the parent (processing/runner.py), and so does
the decision to defer a message whose DKIM key lookup failed temporarily: the facts sent back
carry ``SenderVerdict.temporary`` (the worker's resolver, with its failure cache, lives here).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from functools import cache
from multiprocessing.connection import Connection
from multiprocessing.context import ForkContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any

from sqlalchemy import Select, bindparam, or_, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from mailgateway.logs import log_context, setup_logging
from mailgateway.mail.analyse import analyse
from mailgateway.mail.auth import Authenticator, arrived_via_trusted_path, build_authenticator
from mailgateway.mail.context import AnalysisContext, EstablishmentInfo, build_context
from mailgateway.mail.facts import MessageFacts, SenderVerdict
from mailgateway.mail.headers import id_forms
from mailgateway.mail.parse import parse_message
from mailgateway.processes import ANALYSIS_NAME, die_with_parent, name_process
from mailgateway.processing.routing import resolve_region
from mailgateway.settings import Settings
from mailgateway.store import fast
from mailgateway.store.engine import make_engine, make_sessionmaker, reading
from mailgateway.store.models import Case, Establishment, InboundMessage, OutboundMessage
from mailgateway.wire import header_block

log = logging.getLogger("mailgateway.processing.worker")

# Spawning imports the package (≈1 s here, more on a loaded host): not part of any message's budget.
STARTUP_SECONDS = 120.0
# A worker asked to stop gets this long to finish before it is killed.
STOP_SECONDS = 5.0


class WorkerUnavailable(Exception):
    """The worker could not be started: nothing was tried, the message waits (no attempt used)."""


class WorkerLost(Exception):
    """The worker died during the analysis (killed, out of memory): the message is tried again."""


class AnalysisRetry(Exception):
    """The worker's database was briefly unavailable: the message is tried again."""


class AnalysisFailed(Exception):
    """The analysis raised; ``detail`` is the exception as the in-process mode records it."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class AnalysisTimeout(Exception):
    """The message exceeded its budget; the worker was killed (a new one starts on demand)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"analysis over {seconds} s")
        self.seconds = seconds


# -- the analysis itself (both modes) ---------------------------------------------------------

def _strip(mid: str) -> str:
    return mid.strip().strip("<>").strip()


def thread_lookup_for(session: Session) -> Callable[[Sequence[str]], str | None]:
    """Message-IDs of a reply -> case reference, our own mail first (threading)."""

    def lookup(message_ids: Sequence[str]) -> str | None:
        ids = [m for m in (_strip(x) for x in message_ids) if m][:50]
        if not ids:
            return None
        bracketed = [f"<{m}>" for m in ids]
        ref = session.scalar(
            select(Case.reference).join(OutboundMessage, OutboundMessage.case_id == Case.id)
            .where(OutboundMessage.message_id.in_(bracketed)).limit(1)
        )
        if ref:
            return ref
        # A Message-ID of ours names our mail, never one received under the same ID: an outsider's
        # declaration sent with a digest's Message-ID (ours have no case) took every staff reply
        # to that digest, and an agent's « #repondre » went to him (an outside tester).
        ours = set(session.scalars(select(OutboundMessage.message_id).where(OutboundMessage.message_id.in_(bracketed))))
        if ours:
            ids = [m for m in ids if f"<{m}>" not in ours]
            bracketed = [f"<{m}>" for m in ids]
            if not ids:
                return None
        ref = session.scalar(
            select(Case.reference).join(InboundMessage, InboundMessage.case_id == Case.id)
            .where(or_(InboundMessage.message_id.in_(bracketed), InboundMessage.message_id.in_(ids))).limit(1)
        )
        if ref:
            return ref
        return session.scalar(
            select(Case.reference).where(or_(Case.origin_message_id.in_(bracketed), Case.origin_message_id.in_(ids)))
            .limit(1)
        )

    return lookup


def thread_subjects_for(session: Session) -> Callable[[Sequence[str]], dict[str, tuple[str, bool]]]:
    """Message-IDs -> (Subject, sent by the gateway) of the message received or sent under each
    (bare Message-ID; ours first: an outsider may reuse one of ours, never make one of theirs
    ours). Asked only for a reply whose Subject begins with a command (mail/analyse.py
    ``_inherited_from``)."""

    def lookup(message_ids: Sequence[str]) -> dict[str, tuple[str, bool]]:
        keys = id_forms(message_ids)
        if not keys:
            return {}
        found: dict[str, tuple[str, bool]] = {}
        for table, ours in ((OutboundMessage, True), (InboundMessage, False)):
            rows = session.execute(select(table.message_id, table.raw).where(table.message_id.in_(keys)).limit(20))
            for mid, raw in rows:
                # The header block alone, read by the one parser: a notification carries the
                # original attached, and only its Subject is wanted.
                subject = parse_message(header_block(raw)).header("Subject")[:1000] if raw else ""
                found.setdefault(_strip(mid or ""), (subject, ours))
        return found

    return lookup


def establishment_lookup_for(session: Session) -> Callable[[str], EstablishmentInfo | None]:
    memo: dict[str, EstablishmentInfo | None] = {}  # an unknown number is asked twice per analysis

    def lookup(finess: str) -> EstablishmentInfo | None:
        if finess not in memo:
            rows = fast.execute(session, _establishment_statement(), {"finess": finess}).rows
            memo[finess] = None if not rows else EstablishmentInfo(
                finess=rows[0][0], name=rows[0][1], category=rows[0][2], departement=rows[0][3], region=rows[0][4])
        return memo[finess]

    return lookup


# Built once on the tables' columns, values bound at execution (issue 19): an ORM ``Session.get``
# was a fifth of the analysis worker's time per declaration (the stored message, then up to four
# directory look-ups of its FINESS numbers), for a handful of columns.
@cache
def _establishment_statement() -> Select[str, str, str | None, str | None, str | None]:
    c = Establishment.__table__.c
    return select(c.finess, c.name, c.category, c.departement, c.region).where(c.finess == bindparam("finess"))


@cache
def _stored_statement() -> Select[bytes, str, str | None, str | None, list[Any]]:
    c = InboundMessage.__table__.c
    return select(c.raw, c.source, c.peer, c.region, c.rcpt_tos).where(c.id == bindparam("id"))


def context_for(settings: Settings, session: Session) -> AnalysisContext:
    return build_context(settings, thread_lookup=thread_lookup_for(session),
                         establishment_lookup=establishment_lookup_for(session),
                         thread_subjects=thread_subjects_for(session))


def verify_sender(settings: Settings, authenticator: Authenticator, raw: bytes, source: str,
                  peer: str | None) -> SenderVerdict:
    # Authentication-Results count only for mail that came through the site's MTA (docs/guarantees.md).
    trusted_path = arrived_via_trusted_path(settings, source, peer)
    try:
        return authenticator.verify(raw, trusted_path=trusted_path)
    except Exception as exc:  # authentication must never lose a message
        log.exception("authentication failed")
        return SenderVerdict(detail=f"vérification impossible : {type(exc).__name__}")


def analyse_inbound(settings: Settings, authenticator: Authenticator, session: Session,
                    inbound_id: int) -> MessageFacts | None:
    """Authenticate, analyse and route one stored message; None when the row is gone."""
    rows = fast.execute(session, _stored_statement(), {"id": inbound_id}).rows
    if not rows:
        return None
    raw, source, peer, region, rcpt_tos = rows[0]
    facts = analyse(raw, context_for(settings, session), verify_sender(settings, authenticator, raw, source, peer))
    return resolve_region(settings, facts, region, rcpt_tos or ())


# -- the worker process -----------------------------------------------------------------------

def worker_main(conn: Connection, settings: Settings, parent_pid: int, name: str = ANALYSIS_NAME,
                inherited: Sequence[Connection] = ()) -> None:
    """Entry point of the worker process: answer ``("analyse", id)`` until the pipe closes.
    ``inherited``: a forked worker's copies of its parent's pipes, closed at once (our end of
    the parent's must close with the parent for ``recv`` to see EOF)."""
    die_with_parent(parent_pid)
    name_process(name)
    for held in inherited:
        held.close()
    # Ctrl-C reaches the whole foreground process group; the daemon stops its worker itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup_logging(settings.logging)
    engine = make_engine(settings.database.url, pool_size=1)
    factory = make_sessionmaker(engine)
    authenticator = build_authenticator(settings)
    _warm_up(settings, authenticator, factory)
    conn.send(("ready", os.getpid()))
    try:
        while True:
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):
                return
            if kind == "stop":
                return
            if kind == "settings":  # SIGHUP in the daemon: staff, labels, keys may have changed
                settings = payload
                authenticator = build_authenticator(settings)
                continue
            if kind == "analyse_many":  # a batch: one answer per message, in order, each timed
                # One read transaction for the batch (issue 19: a session begun and rolled back
                # per message was a tenth of the worker's time). Every message of the batch was
                # committed before the request; a message whose read fails rolls it back, and the
                # next one begins anew (PostgreSQL refuses any statement after an error).
                with reading(factory) as session:
                    for inbound_id in payload:
                        conn.send_bytes(_answer(settings, authenticator, factory, inbound_id, timed=True,
                                                session=session))
                continue
            conn.send_bytes(_answer(settings, authenticator, factory, payload))
    finally:
        engine.dispose()


# Analysed once at start, so that lazy initialisations (label tables, charset data, the first
# database connection: ≈0.2 s) are not charged to the first real message's budget.
_SAMPLE = (
    "From: rssi@exemple.test\r\nTo: ssi@exemple.test\r\nSubject: Déclaration d'incident\r\n"
    "Message-ID: <warm-up@exemple.test>\r\nDate: Fri, 27 Nov 2026 09:00:00 +0100\r\n"
    "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    "Numéro FINESS : 690781810\r\nType d'incident : rançongiciel\r\nGravité : grave\r\n"
    "Voir http://exemple.test/x\r\n"
).encode()


def _warm_up(settings: Settings, authenticator: Authenticator, factory: Any) -> None:
    try:
        with reading(factory) as session:
            analyse(_SAMPLE, context_for(settings, session), authenticator.verify(_SAMPLE))
    except Exception:  # a warm-up problem is not a reason to refuse work
        log.warning("analysis worker warm-up failed", exc_info=True)


def _answer(settings: Settings, authenticator: Authenticator, factory: Any, inbound_id: int, *,
            timed: bool = False, session: Session | None = None) -> bytes:
    """The pickled answer to one request: ("ok", facts) | ("retry", why) | ("error", exception);
    ``timed`` (a batch) appends when it was finished, ``time.monotonic()``: the next message's
    budget starts then (CLOCK_MONOTONIC is one clock for all the processes of the machine), and
    the message's id, which the reader checks against the one it expects.
    ``session``: the batch's read session (rolled back when this message fails), else its own.
    Pickled once, here, not by conn.send: an unpicklable fact is an error answer, not a dead worker."""
    kind, payload = _outcome(settings, authenticator, factory, inbound_id, session)
    finished = (time.monotonic(), inbound_id) if timed else ()
    try:
        return pickle.dumps((kind, payload, *finished))
    except Exception as exc:
        log.exception("analysis result cannot be sent to the daemon", extra={"inbound_id": inbound_id})
        return pickle.dumps(("error", _exception_text(exc), *finished))


def _outcome(settings: Settings, authenticator: Authenticator, factory: Any, inbound_id: int,
             session: Session | None) -> tuple[str, Any]:
    with log_context(inbound_id=inbound_id):
        try:
            if session is None:
                with reading(factory) as own:
                    return "ok", analyse_inbound(settings, authenticator, own, inbound_id)
            try:
                return "ok", analyse_inbound(settings, authenticator, session, inbound_id)
            except Exception:
                session.rollback()
                raise
        except OperationalError as exc:
            return "retry", str(exc)
        except Exception as exc:
            return "error", _exception_text(exc)


def _exception_text(exc: BaseException) -> str:
    """The exception as processing records it in a quarantine reason (same as in-process)."""
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()[:2000]


class AnalysisWorker:
    """The parent's handle on one persistent worker process; used by one processing thread."""

    def __init__(self, settings: Settings, *, nice: int = 0, name: str = ANALYSIS_NAME) -> None:
        self._nice = nice
        self._name = name
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._settings = settings
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None
        # The message being analysed right now (status, metrics, tests): None when idle.
        self.busy_with: int | None = None
        self._starting: float | None = None  # spawned at (monotonic), its "ready" not yet read
        self.started = 0  # workers started so far (restarts = started - 1)

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.is_alive() else None

    def prepare(self, settings: Settings) -> None:
        """Have a live worker with these settings; raise WorkerUnavailable if none can start."""
        with self._lock:
            self._ready(settings)

    def _ready(self, settings: Settings) -> Connection:
        if self._proc is None or self._conn is None or not self._proc.is_alive():
            self._spawn(settings)
        assert self._proc is not None and self._conn is not None
        if self._starting is not None:
            self._await_start(self._starting + STARTUP_SECONDS - time.monotonic())
        if settings is not self._settings:
            self._send(("settings", settings))
            self._settings = settings
        return self._conn

    def _spawn(self, settings: Settings, *, fork: bool = False, close_in_child: Sequence[Connection] = ()) -> None:
        self._discard()
        parent, child = self._ctx.Pipe()
        try:
            ctx: ForkContext | SpawnContext
            if fork:  # see start()
                ctx = multiprocessing.get_context("fork")
                args: tuple[Any, ...] = (child, settings, os.getpid(), self._name, (parent, *close_in_child))
            else:
                ctx, args = self._ctx, (child, settings, os.getpid(), self._name)
            proc = ctx.Process(target=worker_main, args=args, name=self._name, daemon=True)
            proc.start()
        except Exception as exc:
            parent.close()
            raise WorkerUnavailable(f"cannot start the analysis worker: {exc}") from exc
        finally:
            child.close()
        if self._nice and proc.pid is not None:
            # From the parent, at once: its imports run at that priority too (nice(2) may only
            # raise a process's niceness: allowed on our own child).
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, proc.pid, self._nice)
        self._proc, self._conn, self._settings = proc, parent, settings
        self.started += 1
        self._starting = time.monotonic()

    def _await_start(self, seconds: float) -> None:
        """Wait up to ``seconds`` for the spawned worker's "ready"; raise WorkerUnavailable if it
        exits or does not answer in time (``STARTUP_SECONDS`` from its spawn)."""
        proc, parent, started = self._proc, self._conn, self._starting
        assert proc is not None and parent is not None and started is not None
        try:
            if not parent.poll(max(0.0, seconds)):
                raise WorkerUnavailable(f"analysis worker not ready after {STARTUP_SECONDS:.0f} s")
            parent.recv()
        except (EOFError, OSError) as exc:
            proc.join(STOP_SECONDS)
            code = proc.exitcode
            self._discard()
            raise WorkerUnavailable(f"analysis worker exited at start (exit code {code})") from exc
        except WorkerUnavailable:
            self._discard()
            raise
        self._starting = None
        log.info("analysis worker %s started in %.2f s", proc.pid, time.monotonic() - started)

    def start(self, settings: Settings, *, fork: bool = False, close_in_child: Sequence[Connection] = ()) -> None:
        """Start a worker if none is alive, without waiting for it (``ready_now`` tells).

        ``fork``: the worker is a ``fork(2)`` of this process, ready at once (it has every module
        already) instead of a new interpreter that imports them (≈1.3 s). Only for a caller that
        runs no other thread and holds no database connection (the host, first thing): a fork
        copies the locks other threads hold, still held, and SQLite connections must not cross a fork
        (sqlite.org, "How To Corrupt An SQLite Database File", 2.6). ``close_in_child``: the
        caller's own pipes, which the worker must not keep open. Restarts (after a message over its
        budget) spawn, whatever the caller's threads are doing."""
        with self._lock:
            if self._proc is None or self._conn is None or not self._proc.is_alive():
                self._spawn(settings, fork=fork, close_in_child=close_in_child)

    def ready_now(self) -> bool:
        """A worker is alive and ready (never waits; a start that failed or took longer than
        ``STARTUP_SECONDS`` is discarded and logged)."""
        with self._lock:
            if self._proc is None or self._conn is None or not self._proc.is_alive():
                return False
            if self._starting is None:
                return True
            overdue = time.monotonic() >= self._starting + STARTUP_SECONDS
            try:
                if not overdue and not self._conn.poll(0):
                    return False  # still importing
                self._await_start(0.0)  # its "ready", its exit, or too late (then discarded)
            except (WorkerUnavailable, OSError) as exc:
                self._discard()
                log.warning("%s", exc)
                return False
            return True

    def _send(self, message: tuple[str, Any]) -> None:
        assert self._conn is not None
        try:
            self._conn.send(message)
        except (OSError, ValueError) as exc:
            self._discard()
            raise WorkerLost(f"analysis worker unreachable: {exc}") from exc

    def analyse(self, settings: Settings, inbound_id: int, timeout: float) -> MessageFacts | None:
        with self._lock:
            conn = self._ready(settings)
            self.busy_with = inbound_id
            try:
                self._send(("analyse", inbound_id))
                try:
                    # poll() is also true when the worker died (EOF): recv() then raises.
                    if not conn.poll(timeout):
                        log.warning("inbound %s: analysis over its %s s budget; restarting the worker",
                                    inbound_id, timeout)
                        self._discard()
                        raise AnalysisTimeout(timeout)
                    # Our own child's answer, never bytes from mail: safe to unpickle.
                    kind, payload = pickle.loads(conn.recv_bytes())  # noqa: S301
                except (EOFError, OSError) as exc:
                    code = self._proc.exitcode if self._proc is not None else None
                    self._discard()
                    raise WorkerLost(f"analysis worker died (exit code {code})") from exc
            finally:
                self.busy_with = None
        if kind == "ok":
            return payload  # type: ignore[no-any-return]
        if kind == "retry":
            raise AnalysisRetry(payload)
        raise AnalysisFailed(payload)

    def stream(self, settings: Settings, inbound_ids: Sequence[int], timeout: float) -> AnalysisStream:
        """Analyse ``inbound_ids`` in order with one request (a batch of a sweep); read the answers
        with ``AnalysisStream.next``, each message within its own budget of ``timeout`` seconds."""
        return AnalysisStream(self, settings, list(inbound_ids), timeout)

    def _discard(self) -> None:
        """Kill the worker (if any) and forget it; the next message starts a new one."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        self._starting = None
        if conn is not None:
            conn.close()
        if proc is not None:
            if proc.is_alive():
                proc.kill()
            proc.join(STOP_SECONDS)
            with contextlib.suppress(ValueError):  # still running after SIGKILL + 5 s: let it be
                proc.close()

    def kill(self) -> None:
        """Kill the worker now, from any thread (a daemon stopping while a message is analysed):
        the processing thread's wait ends at once, with WorkerLost."""
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(Exception):
                proc.kill()

    def close(self) -> None:
        """Ask the worker to stop, then make sure it has."""
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.send(("stop", None))
            if self._proc is not None:
                self._proc.join(STOP_SECONDS)
            self._discard()


class AnalysisStream:
    """The answers of one batch request, read one message at a time (processing/runner.py).

    The worker analyses the batch while the caller applies earlier answers (the two cores work
    at once). Each message keeps its own budget: it starts when the worker finished the message
    before it (or when the request was sent), so a message over budget is still killed alone —
    the worker is killed, ``next`` raises ``AnalysisTimeout`` for that message, and the messages
    after it go to a new worker with a new request. After ``WorkerLost`` likewise: only the
    message being analysed when the worker died is affected."""

    def __init__(self, worker: AnalysisWorker, settings: Settings, inbound_ids: list[int], timeout: float) -> None:
        self._worker = worker
        self._settings = settings
        self._left = inbound_ids
        self._timeout = timeout
        self._conn: Connection | None = None
        self._started = 0.0  # when the next message's analysis began (monotonic)
        # Left unanalysed because no worker could start (WorkerUnavailable): tried again later.
        self.abandoned: list[int] = []

    def __bool__(self) -> bool:
        return bool(self._left)

    @property
    def upcoming(self) -> int:
        """The id ``next`` answers for."""
        return self._left[0]

    def close(self) -> None:
        """Stop early (the daemon stops): a worker still owing answers is discarded, so that no
        later request reads them."""
        worker = self._worker
        with worker._lock:
            if self._left and self._conn is not None and worker._conn is self._conn:
                worker._discard()
            self._left = []

    def ready(self) -> bool:
        """The next answer is already here (never waits): reading it costs no idle time."""
        conn = self._conn
        if conn is None or not self._left:
            return False
        try:
            return conn.poll(0)
        except (OSError, ValueError):
            return True  # next() reports the dead worker

    def begin(self) -> None:
        """Send the request now rather than at the first ``next`` (analysis ahead)."""
        with self._worker._lock:
            if self._left:
                self._request(self._left)

    def _request(self, ids: list[int]) -> Connection:
        """The worker's connection, ``ids`` requested on it unless they already are; the caller
        holds the worker's lock."""
        worker = self._worker
        if self._conn is None or worker._conn is not self._conn:
            # First read, or the worker was replaced: this message and the rest, anew.
            try:
                self._conn = worker._ready(self._settings)
            except WorkerUnavailable:
                self.abandoned, self._left = self._left, []
                raise
            worker._send(("analyse_many", ids))
            self._started = time.monotonic()
        return self._conn

    def overdue(self) -> bool:
        """The next message is past its budget (``next`` then kills the worker at once)."""
        return self._conn is not None and bool(self._left) and time.monotonic() > self._started + self._timeout

    def next(self) -> tuple[int, MessageFacts | None]:
        """The next message's facts; raises for that message as ``AnalysisWorker.analyse`` does."""
        inbound_id = self._left.pop(0)
        worker = self._worker
        with worker._lock:
            conn = self._request([inbound_id, *self._left])
            worker.busy_with = inbound_id
            try:
                try:
                    # poll() is also true when the worker died (EOF): recv() then raises.
                    if not conn.poll(max(0.0, self._started + self._timeout - time.monotonic())):
                        log.warning("inbound %s: analysis over its %s s budget; restarting the worker",
                                    inbound_id, self._timeout)
                        worker._discard()
                        raise AnalysisTimeout(self._timeout)
                    # Our own child's answer, never bytes from mail: safe to unpickle.
                    kind, payload, finished, answered = pickle.loads(conn.recv_bytes())  # noqa: S301
                except (EOFError, OSError) as exc:
                    code = worker._proc.exitcode if worker._proc is not None else None
                    worker._discard()
                    raise WorkerLost(f"analysis worker died (exit code {code})") from exc
                if answered != inbound_id:  # never file one message's facts under another's id
                    log.error("analysis worker answered for inbound %s instead of %s; restarting it",
                              answered, inbound_id)
                    worker._discard()
                    raise WorkerLost(f"analysis worker answered for inbound {answered}")
            finally:
                worker.busy_with = None
            self._started = finished
        if kind == "ok":
            return inbound_id, payload
        if kind == "retry":
            raise AnalysisRetry(payload)
        raise AnalysisFailed(payload)
