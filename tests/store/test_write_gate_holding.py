"""``WriteGate.holding`` never says "free" while the lock file is locked (store/engine.py).

The daemon kills a processing host that holds the gate too long, by what the host reports. A host
paused after the kernel gave it the lock but before it said so (the lock obtained by the waiter
thread, the caller's thread not yet awake) or after it said "free" but before unlocking held the
lock while reporting it free: it was killed as silent instead, after a longer bound (a flaky
supervision test found it). The report is now made by the thread that obtains the lock, and
cleared after the unlock."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from mailgateway.store.engine import WriteGate


def _locked_by_someone(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def test_holding_is_said_by_the_thread_that_gets_the_lock_and_cleared_after_the_unlock(tmp_path: Path) -> None:
    lock = tmp_path / "db.sqlite.write-lock"
    gate = WriteGate(str(lock))
    said: list[tuple[float, str, bool]] = []
    gate.holding = lambda since: said.append((since, threading.current_thread().name, _locked_by_someone(lock)))
    gate.acquire()  # creates the lock file; nobody else: the fast path
    gate.release()
    assert [(bool(s), locked) for s, _, locked in said] == [(True, True), (False, False)]
    said.clear()
    # Someone else holds the lock: the caller waits through the waiter thread.
    other = os.open(lock, os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)
    caller = threading.Thread(target=gate.acquire, name="caller")
    caller.start()
    threading.Event().wait(0.2)
    assert said == []  # waiting is not holding
    fcntl.flock(other, fcntl.LOCK_UN)
    os.close(other)
    caller.join(5)
    assert said and said[0][0] > 0 and said[0][2]
    assert said[0][1] == "write-gate-wait"  # said as soon as the kernel gave it, not when "caller" woke
    gate.release()
    assert said[-1][0] == 0.0 and not said[-1][2]  # "free" only once it is
