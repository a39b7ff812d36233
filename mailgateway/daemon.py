"""The daemon: composition root and lifecycle (uvicorn-style: startup, main loop, timed drain).

Startup: settings are already validated; migrate the embedded SQLite database; build the
services; start the accept writer, the processing host, the sender, the SMTP listener and the IMAP
watchers; then tell systemd READY. A startup failure exits 1 with the reason.

Processes (docs/operations.md, "Process model"): this process accepts (SMTP, IMAP, the accept
writer), sends, fans out and runs the scheduler and metrics; processing runs in a separate
process, the processing host (processing/host.py), restarted here if it dies, with its analysis
worker as its own child. Accepting therefore never waits for processing (issue 19).

Shutdown (SIGTERM/SIGINT): stop accepting (close the SMTP listener, stop IMAP watchers), let the
processor and the sender finish what they hold within ``drain_seconds`` (anything unfinished stays
in the database and is picked up at the next start), exit 0.

SIGHUP: reload the configuration file; staff lists, templates and directory-related settings take
effect without dropping the listener. Listener addresses and the database need a restart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.app import App, build_app
from mailgateway.bulletins.fanout import fan_out_approved, resume_interrupted_fan_outs
from mailgateway.bulletins.tracking import permanent_failure_hook
from mailgateway.clock import Clock, SystemClock
from mailgateway.dispatch.dkim import DkimSigner
from mailgateway.dispatch.sender import Sender
from mailgateway.errors import ConfigError
from mailgateway.intake.accept import Accepted
from mailgateway.intake.imap import ImapIntake, MailboxHealth
from mailgateway.intake.priority import Prioritiser
from mailgateway.intake.smtp import IntakeHandler, start_smtp
from mailgateway.intake.writer import AcceptWriter
from mailgateway.interfaces import Extension
from mailgateway.logs import setup_logging
from mailgateway.metrics import Metrics
from mailgateway.processes import defer_reloads, owner_only_files, reload_deferred
from mailgateway.processing.host import SWEEP_LIMIT, HostedApp, HostSupervisor, IntakeSignal
from mailgateway.processing.runner import Result
from mailgateway.processing.worker import AnalysisWorker
from mailgateway.scheduler import SchedulerExtension
from mailgateway.sdnotify import SdNotifier, watchdog_interval
from mailgateway.settings import Settings, file_problems, load_settings
from mailgateway.status import oldest_due_received, snapshot
from mailgateway.store.engine import InstanceRunning, head_revision, hold_instance, reading, write_gate

log = logging.getLogger("mailgateway.daemon")


# How often the daemon looks for the oldest message due for processing (one indexed read).
STALL_CHECK_SECONDS = 2.0
# How often the fan-out loop looks for bulletins left "sending" by a process that died since.
RESUME_LOOK_SECONDS = 30.0


class _SignallingWriter(AcceptWriter):
    """The accept writer, counting the messages that wait for their durable commit into the shared
    ``IntakeSignal``, which the processor reads in its own process to give intake the write lock."""

    def __init__(self, *args: Any, intake: IntakeSignal, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._intake = intake

    def submit(self, *args: Any, **kwargs: Any) -> Future[Accepted]:
        self._intake.storing(1)
        try:
            future = super().submit(*args, **kwargs)
        except BaseException:
            self._intake.storing(-1)
            raise
        future.add_done_callback(lambda _f: self._intake.storing(-1))
        return future


def _host_builder(settings: Settings, clock: Clock) -> Callable[[], HostedApp]:
    """What the processing host calls to build its services (pickled by reference). The
    daemon migrated the database already."""
    return functools.partial(build_app, settings, clock=clock, migrate=False)


# Sections a SIGHUP keeps as the start read them (listeners, the database, the relay).
RESTART_SECTIONS = ("database", "intake", "metrics", "relay")


class Daemon:
    def __init__(self, settings: Settings, clock: Clock | None = None, drain_seconds: float = 20.0) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.drain_seconds = drain_seconds
        self.stop_event = asyncio.Event()
        self._wake_processor = asyncio.Event()
        # Shared memory: the last accept and the messages waiting for their commit, read by the
        # processor (in the processing host, or in this process with [processing] host = "thread").
        self.intake = IntakeSignal(multiprocessing.get_context("spawn").RawArray("d", 2))
        self.host: HostSupervisor | None = None
        self._host_down_logged = False
        # Processing stalled (_stall_loop): seconds without progress while a message is due.
        self.stalled_seconds = 0.0
        self._stall_reported: str | None = None
        self._thread_progress = time.monotonic()  # [processing] host = "thread": the last good sweep
        self.instance_id = f"{socket.gethostname()}:{os.getpid()}"
        self.app: App | None = None
        # Built by start(); None until then (and after a failed start, for _abort_start).
        self.sender: Sender | None = None
        self.writer: AcceptWriter | None = None
        self.handler: IntakeHandler | None = None
        self.smtp_server: asyncio.AbstractServer | None = None
        self.imap: ImapIntake | None = None
        self.tasks: list[asyncio.Task[None]] = []
        # systemd Type=notify (READY/STOPPING/WATCHDOG); a no-op outside systemd.
        self.notifier = SdNotifier()
        grace = settings.metrics.mailbox_unhealthy_after_seconds if settings.metrics else 300.0
        self.metrics = Metrics(self.clock, mailbox_grace_seconds=grace)
        # Started after intake, stopped before it, each given this daemon as its DaemonContext:
        # the metrics, and APScheduler (deadlines, digests, reports, retention, housekeeping).
        self.extensions: list[Extension] = [self.metrics, SchedulerExtension(self._app)]

    # -- DaemonContext (interfaces.py): what the extensions see ------------------------------
    def _app(self) -> App:
        assert self.app is not None, "the daemon has not started"
        return self.app

    @property
    def factory(self) -> sessionmaker[Session]:
        return self._app().factory

    @property
    def engine(self) -> Engine:
        return self._app().engine

    def mailbox_health(self) -> list[MailboxHealth] | None:
        return self.imap.health() if self.imap is not None else None

    def delivery_counts(self) -> dict[str, int] | None:
        return self.sender.stats if self.sender is not None else None

    def wake_sender(self) -> None:
        self._on_outbound()

    def job_ran(self, name: str, outcome: str) -> None:
        self.metrics.scheduler_run(name, outcome)

    # -- wiring ------------------------------------------------------------------------------
    def on_accepted(self, _inbound_id: int, source: str = "smtp") -> None:
        """Called from any thread after a durable accept: wake the processor."""
        self.intake.accepted()
        self.metrics.accepted(source)
        if self.host is not None:
            self.host.wake()  # one byte on a pipe: no event-loop round trip
        else:
            self.loop.call_soon_threadsafe(self._wake_processor.set)

    def intake_busy(self) -> bool:
        """Messages wait for their durable commit, or one was just answered and its MTA is sending
        the next: processing yields the write lock to them (processing/runner.py). Without this,
        the accept writer waited one whole processing transaction per group commit."""
        return self.intake.busy()

    def _on_outbound(self) -> None:
        if self.sender is not None:
            self.loop.call_soon_threadsafe(self.sender.wake)

    def _on_result(self, result: Result) -> None:
        self._thread_progress = time.monotonic()
        self.metrics.on_processed(result)

    async def _processing_loop(self) -> None:
        # [processing] host = "thread" (the default runs processing in its own process: start()).
        # One processing thread: SQLite has one writer; PostgreSQL instances share work by row locks.
        # The thread only waits while a message is analysed: the analysis runs in a worker process
        # ([processing] isolation = "process", docs/guarantees.md) that is killed and restarted alone when a
        # message exceeds its budget, so intake keeps its GIL whatever the message costs.
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="processor")
        assert self.app is not None
        processor = self.app.processor
        worker = AnalysisWorker(self.settings) if self.settings.processing.isolation == "process" else None
        processor.worker = worker
        try:
            while not self.stop_event.is_set():
                self._wake_processor.clear()
                try:
                    await self.loop.run_in_executor(executor, processor.process_backlog, SWEEP_LIMIT)
                except Exception:
                    log.exception("processing sweep failed")
                else:
                    self._thread_progress = time.monotonic()
                try:
                    await asyncio.wait_for(self._wake_processor.wait(), timeout=5.0)
                except TimeoutError:
                    pass
        except asyncio.CancelledError:
            # The drain ran out while a message was analysed: kill the worker so the processing
            # thread returns now (the message stays received; its attempt is counted).
            processor.halt.set()
            if worker is not None:
                worker.kill()
            raise
        finally:
            if worker is not None:
                # Started from the processing thread (PR_SET_PDEATHSIG follows the thread that
                # started it), so stopped from there too.
                executor.submit(worker.close)
            executor.shutdown(wait=True)

    async def _fanout_loop(self) -> None:
        """Queue large approved bulletins chunk by chunk (committed), beside processing."""
        assert self.app is not None
        app = self.app
        # A fan-out interrupted by a stop or a crash resumes where it stopped (it skips the
        # establishments already queued; outbox idempotency keys make any overlap a no-op).
        await asyncio.to_thread(resume_interrupted_fan_outs, app.factory, self.instance_id)
        looked = time.monotonic()
        while not self.stop_event.is_set():
            try:
                if time.monotonic() - looked >= RESUME_LOOK_SECONDS:
                    # A ``bulletin send --yes`` killed while it fanned out: resumed here, not at
                    # the daemon's next start (its owner is dead; ours are left alone).
                    looked = time.monotonic()
                    await asyncio.to_thread(resume_interrupted_fan_outs, app.factory, self.instance_id,
                                            at_start=False)
                if await asyncio.to_thread(fan_out_approved, app.env, app.factory, self._on_outbound,
                                             stop=self.stop_event.is_set):
                    self._on_outbound()
            except Exception:
                log.exception("bulletin fan-out failed; retrying")
            try:
                await asyncio.wait_for(self.stop_event.wait(), timeout=2.0)
            except TimeoutError:
                pass

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.app = build_app(self.settings, clock=self.clock)
        self.app.processor.on_outbound = self._on_outbound
        self.app.processor.on_result = self._on_result
        self.app.processor.intake_busy = self.intake_busy
        if self.settings.processing.host == "process":
            self.host = HostSupervisor(self.settings, functools.partial(_host_builder, clock=self.clock),
                                       self.intake, self._on_result, self._on_outbound,
                                       on_exit=self.metrics.processing_host_exited,
                                       expected_head=await asyncio.to_thread(head_revision),
                                       gate_path=write_gate(self.app.factory.kw["bind"]).path)
        self.metrics.add_health_check("processing", self._processing_health)
        # Bulletins replace the default 5xx hook: fallback contact + staff task (bulletins/tracking.py).
        sender = self.sender = Sender(self.settings, self.app.factory, self.clock, self.instance_id,
                                      on_permanent_failure=permanent_failure_hook(self.app.env),
                                      signer=self.app.composer.signer)
        sender.intake_busy = self.intake_busy
        # One processing-priority rule for SMTP and IMAP intake (intake/priority.py), reloaded on SIGHUP.
        priority = Prioritiser(self.settings, self.app.factory.kw["bind"])
        writer = self.writer = _SignallingWriter(self.app.factory, self.clock, intake=self.intake, priority=priority)
        self.metrics.add_health_check("intake", writer.health)
        writer.start()
        processing = self.host.run(self.stop_event) if self.host is not None else self._processing_loop()
        self.tasks = [
            asyncio.create_task(processing, name="processing"),
            asyncio.create_task(sender.run(self.stop_event), name="sender"),
            asyncio.create_task(self._fanout_loop(), name="fanout"),
            asyncio.create_task(self._stall_loop(), name="processing-stall"),
        ]
        if self.settings.intake.smtp is not None:
            self.handler = IntakeHandler(self.settings, writer, self.on_accepted)
            self.smtp_server = await start_smtp(self.settings, self.handler)
            log.info("SMTP intake listening on %s:%s", self.settings.intake.smtp.host, self.settings.intake.smtp.port)
        if any(r.imap is not None for r in self.settings.regions):
            self.imap = ImapIntake(self.settings, self.app.factory, self.clock,
                                   functools.partial(self.on_accepted, source="imap"), instance_id=self.instance_id,
                                   priority=priority)
            self.imap.start()
        for ext in self.extensions:
            await ext.start(self)

    async def stop(self) -> None:
        log.info("stopping: no new mail accepted, draining for up to %.0f s", self.drain_seconds)
        self.notifier.stopping("draining")
        if self.smtp_server is not None:
            self.smtp_server.close()
        if self.imap is not None:
            await asyncio.to_thread(self.imap.stop, 10.0)
        self.stop_event.set()
        self._wake_processor.set()
        if self.sender is not None:
            self.sender.wake()
        _done, pending = await asyncio.wait(self.tasks, timeout=self.drain_seconds)
        for task in pending:
            task.cancel()
        for ext in reversed(self.extensions):
            await ext.stop(self)
        if self.smtp_server is not None:
            await self.smtp_server.wait_closed()
        if self.writer is not None:
            await asyncio.to_thread(self.writer.stop)
        if self.host is not None:
            self.host.close()
        assert self.app is not None
        try:
            left = await asyncio.to_thread(self._left_behind)
        except Exception as exc:  # the database gone: nothing to add to what was logged
            left = None
            log.warning("stopped; work left behind unknown (database unreadable: %s)", exc)
        if left:
            log.warning("stopped with %s: carried over to the next start", left)
        self.app.close()

    def _left_behind(self) -> str:
        """What the drain did not finish, for the stop's log line: an operator stopping the
        service after a burst learns what the next start will do first (an outside tester)."""
        assert self.app is not None
        with reading(self.app.factory) as session:
            snap = snapshot(session, self.clock.now(), full=False)
        return ", ".join(part for part, n in (
            (f"{snap.inbound_backlog} message(s) to process", snap.inbound_backlog),
            (f"{snap.outbox_depth} mail(s) to send", snap.outbox_depth),
            (f"{snap.staff_notices_deferred} staff notification(s) deferred", snap.staff_notices_deferred)) if n)

    def reload(self) -> None:
        """SIGHUP: re-read the configuration; keep listeners and the database."""
        self.notifier.reloading()
        try:
            fresh = load_settings(self.settings.source)
            # What check-config and run also refuse: a key file missing or that does not load.
            # A reload that accepted it said « configuration reloaded », and the next restart
            # failed (outside tester).
            problems = file_problems(fresh)
            if not problems:
                DkimSigner.from_settings(fresh.dkim)
            if problems:
                raise ConfigError(problems)
        except ConfigError as exc:
            log.error("reload refused, configuration kept: %s", exc)
            self.notifier.ready("running; last reload refused (configuration error)")
            return
        # Listeners, the database and the relay are the start's: a change there waits for a
        # restart, said here (a new SMTP port was ignored without a word: outside tester).
        later = [name for name in RESTART_SECTIONS if getattr(fresh, name) != getattr(self.settings, name)]
        if later:
            log.warning("reload: [%s] changed; these take effect at the next restart", "], [".join(later))
        keep = replace(fresh, **{name: getattr(self.settings, name) for name in RESTART_SECTIONS})
        assert self.app is not None
        self.settings = keep
        self.app.reconfigure(keep)
        if self.host is not None:
            self.host.reconfigure(keep)
        if self.handler is not None:
            self.handler.settings = keep
        if self.writer is not None and self.writer.priority is not None:
            self.writer.priority.settings = keep  # staff and domains (IMAP intake shares it)
        setup_logging(keep.logging)
        log.info("configuration reloaded from %s", keep.source)
        for ext in self.extensions:
            ext.reload(self)
        self.notifier.ready("running; configuration reloaded")

    async def _watchdog(self, interval: float) -> None:
        """WATCHDOG=1 from the event loop itself: a wedged loop stops the pings and systemd
        restarts us (WatchdogSec=). Kept up during the drain, which may take a while. Also stopped
        while the processing host has been dead for a minute (restarts failing): intake would
        accept mail that nobody processes; a restart of the whole service is the better bet."""
        while True:
            if self.processing_alive():
                self.notifier.watchdog()
            await asyncio.sleep(interval)

    # -- processing stalled (docs/operations.md): time since processing last made progress while
    # a message is due, whichever host runs (a host restarted every second, or failing every sweep,
    # is no progress), not time since the current host started.
    def _last_progress(self) -> float:
        return self.host.progress.last_progress() if self.host is not None else self._thread_progress

    async def _stall_loop(self) -> None:
        assert self.app is not None
        factory = self.app.factory
        while not self.stop_event.is_set():
            try:
                oldest = await asyncio.to_thread(self._oldest_due, factory, self.clock.now())
            except Exception:  # the database itself: its own health check reports it
                log.debug("processing stall check failed", exc_info=True)
                oldest = None
            if oldest is None:
                self.stalled_seconds = 0.0
            else:
                waiting = max(0.0, (self.clock.now() - oldest).total_seconds())
                self.stalled_seconds = min(waiting, time.monotonic() - self._last_progress())
            self.metrics.processing_stalled_seconds.set(self.stalled_seconds)
            self._report_stall()
            # Every 2 s, or a quarter of the bound when it is shorter (tests), so the 503 comes
            # within a quarter of the bound of it being passed.
            every = min(STALL_CHECK_SECONDS, self.settings.processing.stalled_unhealthy_seconds / 4)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), timeout=every)

    @staticmethod
    def _oldest_due(factory: sessionmaker[Session], now: datetime) -> datetime | None:
        with reading(factory) as session:
            return oldest_due_received(session, now)

    def _stall_problem(self) -> str | None:
        if self.host is not None and self.host.code_changed:
            return "processing down: the code on disk changed since the daemon started; restart the service"
        bound = self.settings.processing.stalled_unhealthy_seconds
        if self.stalled_seconds > bound:
            return (f"processing stalled for {self.stalled_seconds:.0f} s: a message waits and none was "
                    "processed (see the log)")
        return None

    def _report_stall(self) -> None:
        """systemd STATUS= follows the stall (and says when it is over)."""
        problem = self._stall_problem()
        if (problem is None) != (self._stall_reported is None):  # on each change, not each count
            self._stall_reported = problem
            if problem is not None:
                log.error("%s", problem)
            else:
                log.info("processing progressing again")
            self.notifier.status(problem or self._ready_status())

    def _processing_health(self) -> str | None:
        """/healthz: processing stalled (or refused to run), or a host being restarted for more than
        a few seconds, is worth a 503."""
        problem = self._stall_problem()
        if problem is not None:
            return problem
        down = self.host.down_seconds() if self.host is not None else 0.0
        # [processing] host_down_unhealthy_seconds (10 s; a restart takes ≈2 s).
        bound = self.settings.processing.host_down_unhealthy_seconds
        return f"processing host down for {down:.0f} s (restarting)" if down > bound else None

    def processing_alive(self) -> bool:
        host = self.host
        stalled = self.stalled_seconds > self.settings.processing.stalled_watchdog_seconds
        if not stalled and (host is None or (host.healthy() and not host.code_changed)):
            if self._host_down_logged:
                self._host_down_logged = False
                self.notifier.status(self._ready_status())
            return True
        if not self._host_down_logged:
            self._host_down_logged = True
            log.error("processing down or stalled (%.0f s without progress while mail waits): systemd "
                      "watchdog pings stopped", self.stalled_seconds)
            self.notifier.status("processing down: restarting the processing host" if not stalled else
                                 f"processing stalled for {self.stalled_seconds:.0f} s: watchdog stopped")
        return False

    async def _abort_start(self) -> None:
        """Undo a partial start so the process can exit (threads joined, listeners closed)."""
        self.stop_event.set()
        for task in self.tasks:
            task.cancel()
        if self.host is not None:
            self.host.kill()
        if self.smtp_server is not None:
            self.smtp_server.close()
        if self.imap is not None:
            await asyncio.to_thread(self.imap.stop, 5.0)
        for ext in self.extensions:
            try:
                await ext.stop(self)
            except Exception:
                log.debug("extension stop after failed start", exc_info=True)
        if self.writer is not None:
            await asyncio.to_thread(self.writer.stop)
        if self.host is not None:
            self.host.close()
        if self.app is not None:
            self.app.close()

    def _ready_status(self) -> str:
        parts = []
        if self.settings.intake.smtp is not None:
            parts.append(f"SMTP {self.settings.intake.smtp.host}:{self.settings.intake.smtp.port}")
        if self.imap is not None:
            parts.append(f"{len(self.imap.watchers)} IMAP mailbox(es)")
        if self.host is not None:
            parts.append("processing in its own process")
        server = self.metrics.server
        if server is not None:
            parts.append(f"metrics {server.host}:{server.port}")
        return "running: " + (", ".join(parts) or "no intake configured")

    async def serve(self) -> int:
        defer_reloads()  # a SIGHUP during the start: remembered, done once ready (below)
        try:
            await self.start()
        except Exception as exc:
            log.error("startup failed: %s", exc)
            await self._abort_start()
            raise
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        interval = watchdog_interval()
        watchdog = asyncio.create_task(self._watchdog(interval), name="watchdog") if interval else None
        log.info("mailgateway ready (instance %s, %d configured)", self.instance_id, self.settings.database.instances)
        self.notifier.ready(self._ready_status())
        if reload_deferred():  # the file may have changed after it was read at the start
            log.info("a SIGHUP came during the start: reloading now")
            self.reload()
        await self.stop_event.wait()
        try:
            await self.stop()
        finally:
            if watchdog is not None:
                watchdog.cancel()
            self.notifier.close()
        return 0


def run(settings: Settings) -> int:
    """The daemon's exit status: 0 after a graceful stop, 1 when startup failed (reason on stderr),
    2 when the configuration is at fault (a key that does not load: what check-config reports),
    so that systemd's ``RestartPreventExitStatus=2`` stops instead of restarting every 5 s (an
    empty PEM file exited 1: outside tester)."""
    owner_only_files()  # the database, the outbox, reports: owner only (mailgateway/processes.py)
    try:
        hold_instance(settings.database.url)  # SQLite: one daemon per database, for this process's life
    except InstanceRunning as exc:
        print(f"mailgateway: démarrage impossible : {exc}", file=sys.stderr)
        return 1
    daemon = Daemon(settings)
    try:
        return asyncio.run(daemon.serve())
    except ConfigError as exc:
        for path, message in exc.problems:
            print(f"{path}: {message}", file=sys.stderr)
        return 2
    except Exception as exc:
        # One line an operator can act on ("address already in use", "unable to open database").
        print(f"mailgateway: démarrage impossible : {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
