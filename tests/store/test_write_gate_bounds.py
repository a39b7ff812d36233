"""The write gate's bounded wait and its lock file's safety (store/engine.py ``WriteGate``).

* ``acquire(timeout)`` gives up while another process holds the gate (a paused processing host),
  and what its waiting thread obtains after that is released at once, never kept.
* The lock file is opened without following a symlink planted at its path.
* A lock file deleted or replaced while running is reopened: both processes lock the same file again.
Real processes, real lock files.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from mailgateway.store.engine import GateTimeout, WriteGate, make_engine, write_gate
from tests.store.test_write_gate import _holder


def test_a_bounded_wait_gives_up_and_what_it_obtains_later_is_released(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    holder = _holder(url, 1.5)
    gate = write_gate(make_engine(url))
    started = time.monotonic()
    with pytest.raises(GateTimeout):
        gate.acquire(0.3)
    assert 0.25 < time.monotonic() - started < 1.0
    out, _ = holder.communicate(timeout=30)
    assert out.split()[0] == "out"
    # The abandoned wait got the lock when the holder let go, and let it go at once: another
    # process takes it without waiting.
    time.sleep(0.2)
    other = _holder(url, 0.0)
    other.communicate(timeout=30)
    # And this process can still take it, bounded or not.
    gate.acquire(1.0)
    gate.release()
    with gate:
        pass


def test_a_bounded_wait_gets_the_gate_as_soon_as_the_holder_lets_go(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    holder = _holder(url, 0.5)
    gate = write_gate(make_engine(url))
    gate.acquire(5.0)
    got = time.time()
    gate.release()
    out, _ = holder.communicate(timeout=30)
    released = float(out.split()[1])
    assert released <= got < released + 0.5


def test_a_symlink_at_the_lock_path_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious")
    (tmp_path / "gw.db.write-lock").symlink_to(target)
    gate = WriteGate(str(tmp_path / "gw.db.write-lock"))
    with gate:
        # Not locked through the link: another descriptor of the target locks it at once.
        fd = os.open(target, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    assert target.read_bytes() == b"precious"


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_lock_file_deleted_or_replaced_is_reopened(tmp_path: Path, how: str) -> None:
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    gate = write_gate(make_engine(url))
    with gate:  # opens the lock file
        pass
    lock = tmp_path / "gw.db.write-lock"
    if how == "deleted":
        lock.unlink()
    else:
        fresh = tmp_path / "fresh"
        fresh.write_bytes(b"")
        os.replace(fresh, lock)
    # Another process locks what is at the path now: we must wait for it, not lock the old inode.
    holder = _holder(url, 1.0)
    with gate:
        got = time.time()
    out, _ = holder.communicate(timeout=30)
    released = float(out.split()[1])
    assert got >= released, "both processes held the gate at once"
    if how == "deleted":  # created anew by one of us: owner only
        assert lock.stat().st_mode & 0o077 == 0
