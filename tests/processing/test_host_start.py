"""Starting a processing host never hangs the daemon (processing/host.py, ``HostSupervisor._start``):
the fork server answers with the host's pid once it has forked it; one that never answers is
killed after STARTUP_SECONDS (the next start gets a new one), and a stop does not wait for it.
The real fork server stopped mid-run is tests/integration/test_processing_host.py's case; here the
start itself hangs, which a real server only does when stopped between two hosts."""

from __future__ import annotations

import asyncio
import multiprocessing
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mailgateway.processing import host
from mailgateway.processing.host import HostSupervisor, IntakeSignal
from mailgateway.settings import parse_settings

MINIMAL = {"regions": [{"code": "ARA", "name": "Auvergne-Rhône-Alpes", "address": "ssi-ara@ars.test"}]}


def _hanging_supervisor(monkeypatch: pytest.MonkeyPatch, release: threading.Event) -> HostSupervisor:
    supervisor = HostSupervisor(parse_settings(MINIMAL), lambda _settings: lambda: None,  # type: ignore[arg-type,return-value]
                                IntakeSignal(multiprocessing.get_context("spawn").RawArray("d", 2)),
                                on_result=lambda _r: None, on_outbound=lambda: None)

    def spawn(_settings: Any) -> Any:
        release.wait(30)
        raise OSError("the fork server went away")

    monkeypatch.setattr(supervisor, "_spawn", spawn)
    return supervisor


def test_a_fork_server_that_does_not_answer_is_killed_after_the_start_bound(monkeypatch: pytest.MonkeyPatch,
                                                                            tmp_path: Path) -> None:
    monkeypatch.setattr(host, "STARTUP_SECONDS", 0.5)
    server = subprocess.Popen(["sleep", "60"])  # stands for the fork server
    monkeypatch.setattr(host, "fork_server_pid", lambda: server.pid)
    release = threading.Event()
    supervisor = _hanging_supervisor(monkeypatch, release)
    try:
        started = time.monotonic()
        assert asyncio.run(supervisor._start(asyncio.Event())) is None
        assert time.monotonic() - started < 5
        assert server.wait(timeout=5) == -9
    finally:
        release.set()
        server.kill()
        supervisor.close()


def test_a_stop_does_not_wait_for_a_start_the_fork_server_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    server = subprocess.Popen(["sleep", "60"])
    monkeypatch.setattr(host, "fork_server_pid", lambda: server.pid)
    release = threading.Event()
    supervisor = _hanging_supervisor(monkeypatch, release)

    async def stop_soon() -> Any:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, stop.set)
        return await supervisor._start(stop)

    try:
        started = time.monotonic()
        assert asyncio.run(stop_soon()) is None
        assert time.monotonic() - started < 5  # not STARTUP_SECONDS (120 s)
        assert server.poll() is None  # stopping: nothing killed
    finally:
        release.set()
        server.kill()
        server.wait()
        supervisor.close()


def test_settings_reloaded_while_a_host_starts_reach_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """An outside tester: SIGHUP right after "mailgateway ready", while the fork server was still
    forking the first host, was lost (no host to tell yet; the one starting had the old file)."""
    supervisor = HostSupervisor(parse_settings(MINIMAL), lambda _settings: lambda: None,  # type: ignore[arg-type,return-value]
                                IntakeSignal(multiprocessing.get_context("spawn").RawArray("d", 2)),
                                on_result=lambda _r: None, on_outbound=lambda: None)
    ours, hosts = multiprocessing.Pipe()
    release = threading.Event()
    started_with: list[Any] = []

    def spawn(settings: Any) -> Any:
        started_with.append(settings)
        release.wait(30)
        return object(), ours

    monkeypatch.setattr(supervisor, "_spawn", spawn)
    reloaded = parse_settings({**MINIMAL, "processing": {"max_attempts": 5}})

    async def sighup_while_starting() -> Any:
        starting = asyncio.ensure_future(supervisor._start(asyncio.Event()))
        await asyncio.sleep(0.2)
        supervisor.reconfigure(reloaded)
        release.set()
        return await starting

    try:
        _proc, control = asyncio.run(sighup_while_starting())
        assert control is ours and started_with[0].processing.max_attempts == 3
        assert hosts.poll(5)
        kind, settings = hosts.recv()
        assert kind == "settings" and settings.processing.max_attempts == 5
    finally:
        release.set()
        ours.close()
        hosts.close()
        supervisor.close()


class _LateHost:
    """What ``_spawn`` returns: a host the test can ask whether it was killed."""

    def __init__(self) -> None:
        self.killed = threading.Event()

    def kill(self) -> None:
        self.killed.set()


def _late_supervisor(monkeypatch: pytest.MonkeyPatch,
                     release: threading.Event) -> tuple[HostSupervisor, _LateHost, Any]:
    supervisor = HostSupervisor(parse_settings(MINIMAL), lambda _settings: lambda: None,  # type: ignore[arg-type,return-value]
                                IntakeSignal(multiprocessing.get_context("spawn").RawArray("d", 2)),
                                on_result=lambda _r: None, on_outbound=lambda: None)
    late = _LateHost()
    ours, hosts = multiprocessing.Pipe()

    def spawn(_settings: Any) -> Any:
        release.wait(30)
        return late, ours

    monkeypatch.setattr(supervisor, "_spawn", spawn)
    return supervisor, late, hosts


def test_a_host_started_after_its_start_was_cancelled_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed daemon start (the SMTP port in use) cancels the processing task while the fork
    server, still importing, has not forked the first host. That host came later, unsupervised,
    its control pipe held open by a future nobody read: it never exited, and the daemon's exit
    (multiprocessing joins its children) hung for minutes after « startup failed »."""
    release = threading.Event()
    supervisor, late, hosts = _late_supervisor(monkeypatch, release)

    async def cancel_while_starting() -> None:
        await _cancelled_start(supervisor)
        release.set()  # the fork server answers now
        await asyncio.sleep(0.5)

    try:
        asyncio.run(cancel_while_starting())
        assert late.killed.wait(5)
        assert hosts.poll(5) and _closed(hosts)  # its control pipe closed: the host sees EOF
    finally:
        release.set()
        hosts.close()
        supervisor.close()


def test_a_host_started_after_the_daemons_loop_closed_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same, the event loop gone before the fork server answers (the daemon exiting)."""
    release = threading.Event()
    supervisor, late, hosts = _late_supervisor(monkeypatch, release)

    try:
        asyncio.run(_cancelled_start(supervisor))
        supervisor.close()
        release.set()
        assert late.killed.wait(5)
    finally:
        release.set()
        hosts.close()


async def _cancelled_start(supervisor: HostSupervisor) -> None:
    """A host start cancelled while the fork server has not answered (a failed daemon start undone)."""
    starting = asyncio.ensure_future(supervisor._start(asyncio.Event()))
    await asyncio.sleep(0.2)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting


def _closed(conn: Any) -> bool:
    try:
        conn.recv()
    except EOFError:
        return True
    return False
