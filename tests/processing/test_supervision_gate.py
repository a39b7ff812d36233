"""A processing host holding the write gate without saying so is killed by the gate's bound.

The host reports when it holds SQLite's write gate (store/engine.py ``WriteGate.holding``) and the
daemon kills it past ``host_stall_seconds``, intake getting 451s meanwhile. A host paused in the
instant between its ``flock`` and that report held the gate unseen, and was killed only by the
heartbeat's longer bound (a flaky supervision test caught it: "no heartbeat for 13 s"). The daemon
now asks the kernel (``/proc/locks``) who holds the lock once the host has been silent past the
gate's bound."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailgateway.processing.host import HostSupervisor, IntakeSignal
from mailgateway.settings import parse_settings
from mailgateway.store.engine import flock_holders

pytestmark = pytest.mark.skipif(not Path("/proc/locks").exists(), reason="Linux /proc/locks")

MINIMAL = {"regions": [{"code": "ARA", "name": "Auvergne-Rhône-Alpes", "address": "ssi-ara@ars.test"}],
           "processing": {"host_stall_seconds": 2.0, "analysis_timeout_seconds": 10.0}}

HOLD = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
        "print('held', flush=True); time.sleep(60)")


def _holder(lock: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def _end(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def test_flock_holders_names_the_holder_not_the_waiters(tmp_path: Path) -> None:
    lock = tmp_path / "db.sqlite.write-lock"
    lock.touch()
    other = tmp_path / "other.write-lock"
    other.touch()
    assert flock_holders(str(lock)) == set()
    holder = _holder(lock)
    waiter = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)  # the waiter is blocked in flock: a "->" line of /proc/locks
        assert flock_holders(str(lock)) == {holder.pid}
        assert flock_holders(str(other)) == set()  # another file's lock is not this one's
        fd = os.open(other, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert flock_holders(str(other)) == {os.getpid()}
        os.close(fd)
    finally:
        _end(holder)
    try:
        assert waiter.stdout is not None and waiter.stdout.readline().strip() == "held"
        assert flock_holders(str(lock)) == {waiter.pid}  # the holder's death handed it over
    finally:
        _end(waiter)
    assert flock_holders(str(lock)) == set()
    assert flock_holders(str(tmp_path / "missing")) == set()


def _supervisor(lock: Path | None) -> HostSupervisor:
    ctx = multiprocessing.get_context("spawn")
    return HostSupervisor(parse_settings(MINIMAL), lambda _settings: lambda: None,  # type: ignore[arg-type,return-value]
                          IntakeSignal(ctx.RawArray("d", 2)), lambda _r: None, lambda: None,
                          gate_path=None if lock is None else str(lock))


def test_a_silent_host_holding_the_gate_unreported_is_stuck_by_the_gate_bound(tmp_path: Path) -> None:
    lock = tmp_path / "db.sqlite.write-lock"
    lock.touch()
    holder = _holder(lock)
    try:
        supervisor = _supervisor(lock)
        assert supervisor.progress.gate_since() == 0.0  # it never said it holds the gate
        now = time.monotonic()
        supervisor.progress.shared[supervisor.progress.HEARTBEAT] = now - 1.0
        assert supervisor._stuck(holder.pid, spawned=now - 100) is None  # silent within the bound
        supervisor.progress.shared[supervisor.progress.HEARTBEAT] = now - 3.0
        why = supervisor._stuck(holder.pid, spawned=now - 100)
        assert why is not None and why.startswith("held the write gate for over 2 s unreported")
        # Silent as long, holding nothing: the heartbeat's bound (2 + 10 s) still applies.
        assert supervisor._stuck(os.getpid(), spawned=now - 100) is None
        # Without a lock file (PostgreSQL), only the heartbeat's bound.
        assert _supervisor(None)._stuck(holder.pid, spawned=now - 100) is None
    finally:
        _end(holder)
