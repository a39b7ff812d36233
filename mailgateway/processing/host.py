"""The processing host: the processor in its own process, beside the daemon (issue 19, docs/operations.md).

Accepting a message (SMTP, IMAP) must never wait for processing. In one process they share the
GIL: a processing thread composing and signing mail took the interpreter from the event loop
that answers ``250``. So the daemon starts this host, which builds the processor and runs its
sweeps, while the daemon's process keeps the listeners, the accept writer and the sender.

* The analysis worker (processing/worker.py, ``[processing] isolation = "process"``) is the
  host's own child: a message over its budget is still killed alone and quarantined, and the host
  itself keeps going.
* daemon -> host: a wake byte on a pipe after each durable accept (``os.write``, from any thread,
  never blocking: a full pipe already means "wake up"); ``IntakeSignal``, shared memory the
  processor reads to give intake SQLite's write lock first; ``settings`` (SIGHUP) and ``stop``
  on the control pipe.
* host -> daemon: each ``Result`` (metrics) and ``outbound`` (wake the sender) on the control
  pipe, read by the daemon's event loop.
* The two processes share SQLite's writer through ``store.engine.write_gate`` (a lock file), so
  they hand it over at once instead of meeting in SQLite's busy handler.

The host is a fork of multiprocessing's fork server, which imported the host's modules beside
the daemon at start (mailgateway/processes.py): a host starts, and restarts after a crash, in
milliseconds rather than after ≈2 s of imports; its analysis worker is in turn a fork of the host,
taken before the host runs a thread or opens the database. The daemon restarts a host that dies
(daemon.py). The host dies with the daemon: when the daemon's end of the control pipe closes
without a ``stop``, it kills itself, as PR_SET_PDEATHSIG did when the daemon was its parent (the
fork server, its parent now, outlives the daemon as long as the host lives); its workers, its own
children, die with it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from mailgateway.logs import setup_logging
from mailgateway.processes import HOST_NAME, die_with_parent, fork_server_pid, host_context, name_process
from mailgateway.processing.runner import Processor, Result
from mailgateway.processing.worker import AnalysisWorker, WorkerUnavailable
from mailgateway.settings import Settings
from mailgateway.store.engine import flock_holders, write_gate

log = logging.getLogger("mailgateway.processing.host")

# Intake counts as busy this long after an accept: an MTA sends its next message within a round trip.
INTAKE_QUIET_SECONDS = 0.02
# Messages per sweep, and the longest sleep between sweeps when nothing wakes the host.
SWEEP_LIMIT = 200
IDLE_SWEEP_SECONDS = 5.0
# A host builds its services (≈0.3 s; a fork server still importing at the daemon's start, ≈2 s
# more; more on a loaded machine).
STARTUP_SECONDS = 120.0
# Restart back-off after a host died ([processing] host_restart_first_seconds, 1 s, doubled per
# death up to host_restart_max_seconds, 30 s): back to the first after a life this long.
STABLE_SECONDS = 60.0
# Processing dead longer than this: the daemon stops its systemd watchdog pings (daemon.py), so
# systemd restarts the whole service rather than leave intake accepting mail nobody processes.
DOWN_GRACE_SECONDS = 60.0
# The host's exit status when the code on disk is not the code the daemon started with (EX_CONFIG,
# sysexits.h): restarting it again cannot help, the daemon stops trying (HostSupervisor.run).
CODE_CHANGED_EXIT = 78


class IntakeSignal:
    """Shared memory written by the daemon, read by the processor wherever it runs: the monotonic
    time of the last durable accept (CLOCK_MONOTONIC is one clock for every process of the
    machine) and the number of messages waiting for their commit."""

    def __init__(self, shared: Any) -> None:
        self._shared = shared  # a multiprocessing RawArray("d", 2): [last accept, storing]
        self._lock = threading.Lock()

    @property
    def shared(self) -> Any:
        """What to hand to the host process (picklable while it is started)."""
        return self._shared

    def accepted(self) -> None:
        self._shared[0] = time.monotonic()

    def storing(self, delta: int) -> None:
        with self._lock:  # submits (event loop) and commits (writer thread) count from two threads
            self._shared[1] += delta

    def busy(self) -> bool:
        """Messages wait for their durable commit, or one was just answered and its MTA is sending
        the next: processing yields the write lock to them (processing/runner.py)."""
        return bool(self._shared[1] > 0 or time.monotonic() - self._shared[0] < INTAKE_QUIET_SECONDS)


class HostProgress:
    """Shared memory written by the host, read by the daemon's supervision (CLOCK_MONOTONIC, one
    clock for every process; 0.0: no): [heartbeat, write gate held since, last progress].

    One block for every host the daemon starts: "last progress" (a message done, a sweep finished
    without error) is not reset by a restart, so a host that dies or fails at each sweep shows as
    processing stalled, not as a fresh start (daemon.py)."""

    HEARTBEAT, GATE, PROGRESS = range(3)

    def __init__(self, shared: Any) -> None:
        self.shared = shared  # a multiprocessing RawArray("d", 3)

    def beat(self) -> None:
        self.shared[self.HEARTBEAT] = time.monotonic()

    def holding(self, since: float) -> None:
        """``WriteGate.holding``: the gate taken at ``since``, or released (0.0)."""
        self.shared[self.GATE] = since
        self.shared[self.HEARTBEAT] = time.monotonic()

    def progressed(self) -> None:
        self.shared[self.PROGRESS] = self.shared[self.HEARTBEAT] = time.monotonic()

    def heartbeat(self) -> float:
        return float(self.shared[self.HEARTBEAT])

    def gate_since(self) -> float:
        return float(self.shared[self.GATE])

    def last_progress(self) -> float:
        return float(self.shared[self.PROGRESS])


class HostedApp(Protocol):
    """What the host needs of the composition root (``app.App``, built in the host by the daemon's
    builder: the processing layer does not import the faces)."""

    processor: Processor

    def reconfigure(self, settings: Settings) -> None: ...

    def close(self) -> None: ...


def host_main(build: Callable[[], HostedApp], settings: Settings, control: Connection, wake: Connection,
              intake: Any, progress: Any = None, expected_head: str | None = None) -> None:
    """Entry point of the host process: sweep until the daemon says stop or goes away."""
    # Our parent is the fork server (which dies after the daemon); the daemon's death itself
    # reaches us through the control pipe (_Host._listen).
    die_with_parent()
    name_process(HOST_NAME)
    # Ctrl-C reaches the whole foreground process group; the daemon stops its host itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup_logging(settings.logging)
    # The analysis worker first, while this process runs no other thread and holds no database
    # connection: a fork of us, ready at once (processing/worker.py, AnalysisWorker.start), where
    # a spawned one took ≈1.3 s of imports that the first acknowledgement after a restart waited
    # for (issue 19). From this, the main thread: PR_SET_PDEATHSIG follows the thread.
    worker = AnalysisWorker(settings) if settings.processing.isolation == "process" else None
    if worker is not None:
        try:
            worker.start(settings, fork=True, close_in_child=(control, wake))
        except WorkerUnavailable as exc:  # tried again by run() and by each message
            log.error("%s", exc)
    if expected_head is not None:
        # A restarted host may import code from disk now (any module the fork server had not
        # imported at the daemon's start): after an upgrade in place without a restart, it may
        # expect another schema than the one the daemon migrated to ("no such column" at every
        # pass, for ever). Refuse, and let the daemon say so.
        from mailgateway.store.engine import head_revision

        head = head_revision()
        if head != expected_head:
            log.critical("code on disk changed since the daemon started: restart the service "
                         "(migration head on disk %s, database migrated to %s)", head, expected_head)
            sys.exit(CODE_CHANGED_EXIT)
    os.set_blocking(wake.fileno(), False)
    app = build()
    host = _Host(app, settings, control, wake, IntakeSignal(intake),
                 HostProgress(progress) if progress is not None else None, worker=worker)
    # SIGTERM (an operator's ``kill``): finish the message in hand and exit; the daemon starts a
    # new host. (systemd's KillMode=mixed sends SIGTERM to the daemon only, which stops us.)
    # (From a thread: stop() takes locks the interrupted main thread might hold.)
    signal.signal(signal.SIGTERM, lambda _sig, _frame: threading.Thread(target=host.stop, daemon=True).start())
    try:
        host.run()
    finally:
        host.close()


class _Host:
    def __init__(self, app: HostedApp, settings: Settings, control: Connection, wake: Connection,
                 intake: IntakeSignal, progress: HostProgress | None = None, *,
                 worker: AnalysisWorker | None = None) -> None:
        self.app = app
        self.progress = progress
        self.control = control
        self.wake = wake
        self.stopping = threading.Event()
        # Written by stop(): ends the wait between sweeps at once, from a thread or a signal handler.
        self._stop_r, self._stop_w = os.pipe()
        self._send_lock = threading.Lock()
        processor = self.processor = app.processor
        processor.on_result = self._on_result
        processor.on_outbound = self._on_outbound
        self._intake_busy = intake.busy
        processor.intake_busy = self._busy
        if progress is not None:
            # The daemon watches how long we hold the write gate (a paused host blocks intake).
            write_gate(processor.factory.kw["bind"]).holding = progress.holding
        # Started (and stopped) from this, the main thread: PR_SET_PDEATHSIG follows the thread.
        processor.worker = worker  # host_main's, forked before the services were built
        processor.settings = settings
        self.ahead = processor.analyse_ahead()  # while a sweep yields to intake (processing/ahead.py)

    def _send(self, message: tuple[str, Any]) -> None:
        with self._send_lock:
            try:
                self.control.send(message)
            except (OSError, ValueError):  # the daemon is gone: PR_SET_PDEATHSIG ends us too
                self.stop()

    def _busy(self) -> bool:
        if self.progress is not None:  # yielding to intake is alive, not stuck
            self.progress.beat()
        return self._intake_busy()

    def _on_result(self, result: Result) -> None:
        if self.progress is not None:
            self.progress.progressed()
        self._send(("result", result))

    def _on_outbound(self) -> None:
        self._send(("outbound", None))

    def stop(self) -> None:
        # The sweep ends after the message in hand (runner.process_pending checks ``halt``).
        self.stopping.set()
        self.processor.halt.set()
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"\x01")

    def _listen(self) -> None:
        """The control pipe, in a thread: ``stop`` must reach a host busy with a sweep."""
        while True:
            try:
                kind, payload = self.control.recv()
            except (EOFError, OSError):
                if not self.stopping.is_set():
                    # The daemon is gone (SIGKILL, a crash): its restart must not find us
                    # processing beside its new host. Die now, as PR_SET_PDEATHSIG made us die
                    # when the daemon was our parent; our workers follow (their PR_SET_PDEATHSIG).
                    # The message in hand stays received, its attempt counted.
                    os.kill(os.getpid(), signal.SIGKILL)
                self.stop()
                return
            if kind == "stop":
                self.stop()
                return
            if kind == "settings":  # SIGHUP in the daemon; in force from the next message on
                self.app.reconfigure(payload)
                setup_logging(payload.logging)

    def run(self) -> None:
        threading.Thread(target=self._listen, name="host-control", daemon=True).start()
        worker = self.processor.worker
        if worker is not None:
            # Started now rather than by the first message (≈1 s of imports), from this thread.
            try:
                worker.prepare(self.processor.settings)
            except WorkerUnavailable as exc:  # each message tries again (runner.Processor._process)
                log.error("%s", exc)
        if self.ahead is not None:
            self.ahead.revive(self.processor.settings)
        # Ready once the worker is up: the daemon's heartbeat watch starts here (startup has its
        # own bound, STARTUP_SECONDS).
        if self.progress is not None:
            self.progress.beat()
        self._send(("ready", os.getpid()))
        while not self.stopping.is_set():
            self._drain_wakes()
            if self.progress is not None:
                self.progress.beat()
            try:
                self.processor.process_backlog(SWEEP_LIMIT)
            except Exception:  # no progress: the daemon's "processing stalled" counts on
                log.exception("processing sweep failed")
            else:
                if self.progress is not None:
                    self.progress.progressed()
            if self.stopping.is_set():
                break
            if self.ahead is not None:  # idle: a lost worker ahead is started again now
                self.ahead.revive(self.processor.settings)
            # A wake byte (an accept, or the daemon's stop), or a sweep every few seconds anyway
            # (deferred messages coming due, anything accepted by another instance).
            wait([self.wake, self._stop_r], timeout=IDLE_SWEEP_SECONDS)

    def _drain_wakes(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while True:
                if not os.read(self.wake.fileno(), 65536):  # the daemon closed its end: it is gone
                    self.stop()
                    return

    def close(self) -> None:
        worker = self.processor.worker
        if worker is not None:
            worker.close()
        if self.ahead is not None:
            self.ahead.close()
        self.app.close()
        with contextlib.suppress(OSError):
            self.control.close()


class HostSupervisor:
    """The daemon's side: start the host, read what it reports, restart it when it dies (with
    back-off, logged), stop it with a drain. Used from the daemon's event loop; ``wake`` from any
    thread."""

    def __init__(self, settings: Settings, build_for: Callable[[Settings], Callable[[], HostedApp]],
                 intake: IntakeSignal, on_result: Callable[[Result], None],
                 on_outbound: Callable[[], None], on_exit: Callable[[], None] = lambda: None,
                 expected_head: str | None = None, gate_path: str | None = None) -> None:
        self._ctx = host_context()
        # The migration head the daemon checked at start: a host whose code differs refuses to run.
        self.expected_head = expected_head
        self.code_changed = False  # a host refused to run: no more restarts until the service is
        self.progress = HostProgress(self._ctx.RawArray("d", 3))
        self.progress.progressed()  # the daemon's start counts as progress
        self.settings = settings
        self._gate_path = gate_path  # SQLite's write gate (store/engine.py), asked of the kernel
        self._build_for = build_for
        self._intake = intake
        self._on_result = on_result
        self._on_outbound = on_outbound
        self._on_exit = on_exit
        self._wake_reader, self._wake_writer = self._ctx.Pipe(duplex=False)
        os.set_blocking(self._wake_writer.fileno(), False)
        self._proc: BaseProcess | None = None
        self._control: Connection | None = None
        self.ready = False
        self.started = 0  # hosts started so far (restarts = started - 1)
        self.down_since: float | None = None  # monotonic time the last host died, while none runs

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.is_alive() else None

    def healthy(self) -> bool:
        """False once processing has been dead for DOWN_GRACE_SECONDS (the watchdog stops)."""
        return self.down_seconds() < DOWN_GRACE_SECONDS

    def down_seconds(self) -> float:
        """How long no host has been running (0 while one runs or starts)."""
        down = self.down_since
        return 0.0 if down is None else time.monotonic() - down

    def wake(self) -> None:
        """A message was accepted: one byte, never blocking (a full pipe is a pending wake)."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_writer.fileno(), b"\x01")

    def reconfigure(self, settings: Settings) -> None:
        """SIGHUP: the running host takes the new settings; a restarted one is built with them."""
        self.settings = settings
        if self._control is not None:
            with contextlib.suppress(OSError, ValueError):
                self._control.send(("settings", settings))

    async def run(self, stop: asyncio.Event) -> None:
        """Keep a host running until ``stop``; then ask it to finish the message in hand and exit.
        Cancelled (the daemon's drain ran out): the host, and with it its analysis worker, is killed."""
        backoff = self.settings.processing.host_restart_first_seconds
        while not stop.is_set():
            spawned = time.monotonic()
            try:
                code = await self._run_one(stop)
            except Exception:
                log.exception("processing host could not be started")
                code = None
            if stop.is_set():
                return
            if self.down_since is None:
                self.down_since = time.monotonic()
            self._on_exit()
            if code == CODE_CHANGED_EXIT:
                await self._code_changed(stop)
                return
            if time.monotonic() - spawned > STABLE_SECONDS:
                backoff = self.settings.processing.host_restart_first_seconds
            # 255: the fork server could not tell (it died, and the host with it: PR_SET_PDEATHSIG).
            hint = " (its exit status lost: the fork server died or was killed)" if code == 255 else ""
            log.error("processing host exited (exit code %s)%s; restarting it in %g s", code, hint, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=backoff)
            backoff = min(backoff * 2, self.settings.processing.host_restart_max_seconds)

    async def _code_changed(self, stop: asyncio.Event) -> None:
        """The code on disk is not the code we run: restarting the host would fail the same way.
        Processing stays down (its health signals fire, daemon.py) and we say so once a minute."""
        self.code_changed = True
        while not stop.is_set():
            log.error("processing down: the code on disk changed since the daemon started "
                      "(migration head %s expected); restart the service", self.expected_head)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=60.0)

    def _stuck(self, pid: int | None, spawned: float) -> str | None:
        """Why a ready host must be killed: it holds the write gate too long (intake gets 451s
        meanwhile), or its heartbeat stopped beyond the analysis budget (paused, wedged)."""
        now = time.monotonic()
        bound = self.settings.processing.host_stall_seconds
        since = self.progress.gate_since()
        if since and now - since > bound:
            return f"held the write gate for {now - since:.0f} s (bound {bound:g} s)"
        silent = now - max(self.progress.heartbeat(), spawned)
        # A host paused between its flock and saying so holds the gate unseen: silent beyond the
        # gate's bound while the kernel says it holds the lock is held too long, whatever it said
        # (intake gets 451s meanwhile). Asked of the kernel only then: a busy host takes and
        # releases the gate many times a second, so a holder seen twice proves nothing.
        if silent > bound and self._gate_path and pid is not None and pid in flock_holders(self._gate_path):
            return f"held the write gate for over {bound:g} s unreported, silent for {silent:.0f} s"
        if self.settings.processing.isolation != "process":
            return None  # analysis in the host itself has no time budget: its silence proves nothing
        limit = bound + self.settings.processing.analysis_timeout_seconds
        if silent > limit:
            return f"no heartbeat for {silent:.0f} s (bound {limit:g} s)"
        return None

    def _spawn(self, settings: Settings) -> tuple[BaseProcess, Connection]:
        parent, child = self._ctx.Pipe()
        try:
            proc = self._ctx.Process(
                # Not a multiprocessing "daemon": those may not have children (the analysis
                # worker); it dies with us anyway (_Host._listen), and stop() ends it.
                target=host_main, name=HOST_NAME, daemon=False,
                args=(self._build_for(settings), settings, child, self._wake_reader,
                      self._intake.shared, self.progress.shared, self.expected_head))
            proc.start()
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self.started += 1
        return proc, parent

    async def _start(self, stop: asyncio.Event) -> tuple[BaseProcess, Connection] | None:
        """A new host, or None when stopping. Started in a thread of its own: the fork server
        answers with the host's pid once it has forked it (at the daemon's start it may still be
        importing, mailgateway/processes.py), and one that never answers (stopped, wedged) must
        neither hold the daemon's stop (a thread of asyncio's executor is waited for at exit) nor
        keep processing down: past STARTUP_SECONDS it is killed, and the next start gets a new one."""
        loop = asyncio.get_running_loop()
        started: asyncio.Future[tuple[BaseProcess, Connection]] = loop.create_future()
        settings = self.settings

        def start() -> None:
            try:
                result = self._spawn(settings)
            except BaseException as exc:  # handed to the event loop, raised there
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                    loop.call_soon_threadsafe(_fail, started, exc)
                return
            try:
                loop.call_soon_threadsafe(_succeed, started, result)
            except RuntimeError:  # the daemon's loop closed meanwhile: a host nobody supervises
                _end(*result)

        threading.Thread(target=start, name="host-start", daemon=True).start()
        stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([started, stopping], timeout=STARTUP_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not started.done():
                # Whatever it starts later is ended at once (a host without its supervisor) — also
                # when this start is cancelled: a failed daemon start (the SMTP port in use) undone
                # while the fork server was still importing left the first host running, its
                # control pipe held by a future nobody read, and the daemon's exit waited for it
                # (multiprocessing joins its children).
                started.add_done_callback(_discard_late_host)
        if started.done():
            proc, control = started.result()
            if self.settings is not settings:  # SIGHUP while it was started: reconfigure() missed it
                with contextlib.suppress(OSError, ValueError):
                    control.send(("settings", self.settings))
            return proc, control
        if not stop.is_set():
            _kill_fork_server(f"did not start a processing host in {STARTUP_SECONDS:.0f} s")
        return None

    async def _run_one(self, stop: asyncio.Event) -> int | None:
        loop = asyncio.get_running_loop()
        started = await self._start(stop)
        if started is None:
            return None
        proc, control = started
        self._proc, self._control, self.ready = proc, control, False
        self.down_since = None
        spawned = time.monotonic()
        exited: asyncio.Future[None] = loop.create_future()
        # Its exit, from the kernel (a pidfd: readable once the process is gone): the host is the
        # fork server's child, which reports its exit status on ``proc.sentinel``, and a fork
        # server stopped or wedged would report nothing (the host's death unseen for ever).
        watch = _pidfd(proc.pid)
        loop.add_reader(proc.sentinel, _succeed, exited, None)
        if watch is not None:
            loop.add_reader(watch, _succeed, exited, None)
        loop.add_reader(control.fileno(), self._read, control, spawned)
        stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        try:
            while not exited.done():
                await asyncio.wait([exited, stopping], timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                if stopping.done() and not exited.done():
                    # Drain: the host finishes the message in hand, then exits.
                    with contextlib.suppress(OSError, ValueError):
                        control.send(("stop", None))
                    self.wake()
                    await exited
                elif not self.ready and time.monotonic() - spawned > STARTUP_SECONDS and not exited.done():
                    log.error("processing host %s not ready after %.0f s: killing it", proc.pid, STARTUP_SECONDS)
                    proc.kill()
                elif self.ready and not exited.done() and (why := self._stuck(proc.pid, spawned)):
                    # SIGKILL: a paused host gets no other signal; the kernel releases its flock.
                    log.error("processing host %s %s: killed (SIGKILL), restarting it", proc.pid, why)
                    proc.kill()
                    self.progress.holding(0.0)
            proc.join(5)  # its exit status, from the fork server
            if proc.exitcode is None and watch is not None:
                # Gone, the kernel says, and not reported: the fork server is stopped or wedged. It
                # would start no other host, and the daemon's exit would wait for its report (the
                # multiprocessing module joins the processes it started).
                _kill_fork_server(f"did not report the exit of processing host {proc.pid}")
                proc.join(5)
            return proc.exitcode
        finally:
            stopping.cancel()
            loop.remove_reader(proc.sentinel)
            if watch is not None:
                loop.remove_reader(watch)
                os.close(watch)
            self._read(control, spawned)  # results sent just before it exited
            loop.remove_reader(control.fileno())
            if not exited.done() and proc.is_alive():  # cancelled: the drain ran out (the message stays received)
                log.warning("processing host %s still busy at the end of the drain: killed", proc.pid)
                proc.kill()
                proc.join(5)
            control.close()
            self._proc = self._control = None
            self.ready = False

    def _read(self, control: Connection, spawned: float) -> None:
        if control.closed:
            return
        try:
            while control.poll():
                # Our own child's messages, never bytes from mail.
                kind, payload = control.recv()
                if kind == "result":
                    self._on_result(payload)
                elif kind == "outbound":
                    self._on_outbound()
                elif kind == "ready":
                    self.ready = True
                    log.info("processing host %s started in %.2f s", payload, time.monotonic() - spawned)
        except (EOFError, OSError):  # it exited: the sentinel ends the watch
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(control.fileno())

    def kill(self) -> None:
        """Kill the host now (a failed start being undone)."""
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(Exception):
                proc.kill()

    def close(self) -> None:
        self.kill()
        self._wake_reader.close()
        self._wake_writer.close()


def _kill_fork_server(why: str) -> None:
    """The next host start gets a new one (multiprocessing starts it again on demand)."""
    server = fork_server_pid()
    log.error("the fork server (%s) %s: killed (SIGKILL)", server, why)
    if server is not None:
        with contextlib.suppress(OSError):
            os.kill(server, signal.SIGKILL)


def _pidfd(pid: int | None) -> int | None:
    """A pidfd of ``pid`` (Linux >= 5.3), or None (then only the fork server reports its exit)."""
    if pid is None or not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:  # already gone (then the sentinel says so), or no pidfd here
        return None


def _succeed(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _discard_late_host(future: asyncio.Future[tuple[BaseProcess, Connection]]) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    _end(*future.result())


def _end(proc: BaseProcess, control: Connection) -> None:
    with contextlib.suppress(Exception):
        proc.kill()
    control.close()
