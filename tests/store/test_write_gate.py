"""The SQLite write gate across processes (store/engine.py ``write_gate``; issue 19).

The accept writer (daemon) and the processor (processing host) are two processes: the gate must
serialise them, hand over as soon as the holder lets go, and never outlive a holder that dies.
Real processes, a real lock file beside a real database.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from mailgateway.store.engine import make_engine, write_gate

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Takes the gate, says when (wall clock), holds it ``hold`` seconds (forever if negative), says when it let go.
HOLDER = """
import sys, time
from mailgateway.store.engine import make_engine, write_gate
engine = make_engine(sys.argv[1])
hold = float(sys.argv[2])
with write_gate(engine):
    print("in", time.time(), flush=True)
    while hold < 0:
        time.sleep(1)
    time.sleep(hold)
    released = time.time()
print("out", released, flush=True)
"""


def _holder(url: str, hold: float) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, url, str(hold)], stdout=subprocess.PIPE, text=True,
                            env=env, cwd=PROJECT_ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert line and line[0] == "in", line
    return proc


def test_a_second_process_waits_until_the_first_lets_go_then_gets_it_at_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    holder = _holder(url, 1.0)
    with write_gate(make_engine(url)):
        got = time.time()
    out, _ = holder.communicate(timeout=30)
    released = float(out.split()[1])
    assert got >= released, "both processes held the gate at once"
    # Woken by the kernel, not polling like SQLite's busy handler (up to 100 ms a sleep).
    assert got - released < 0.5
    assert (tmp_path / "gw.db.write-lock").exists()
    assert (tmp_path / "gw.db.write-lock").stat().st_mode & 0o077 == 0


def test_a_holder_killed_with_the_gate_releases_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    holder = _holder(url, -1)
    taken = threading.Event()

    def take() -> None:
        with write_gate(make_engine(url)):
            taken.set()

    waiter = threading.Thread(target=take, daemon=True)
    waiter.start()
    assert not taken.wait(0.5), "the gate was taken while another process held it"
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=10)
    assert taken.wait(10), "the gate of a killed process stayed locked"
    waiter.join(timeout=10)


def test_threads_of_one_process_take_turns(tmp_path: Path) -> None:
    """flock(2) locks belong to the open file, shared by the threads: the thread lock serialises them."""
    engine = make_engine(f"sqlite:///{tmp_path / 'gw.db'}")
    inside = 0
    most = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal inside, most
        for _ in range(50):
            with write_gate(engine):
                with lock:
                    inside += 1
                    most = max(most, inside)
                time.sleep(0.0005)
                with lock:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert most == 1
