"""Crash and restart: the daemon SIGKILLed in the middle of a burst of declarations, started again.

Issue 19's row: "daemon SIGKILLed mid-burst, restarted: every acknowledgement within 2 s of the
restart" (before it, one declarant of 300 waited minutes: its acknowledgement stayed ``sending``
until the 300 s lease ran out and the 10-minute housekeeping ran).

* The default configuration (the client is on loopback, a trusted relay), SQLite, a relay that
  counts in this process. ``--connections`` (4) clients send ``--count`` (300) declarations, each
  from its own declarant, like MTAs: on a refused connection or a 4xx they send the same bytes
  again, until a ``250``.
* Once ``--kill-at`` (a third) of the declarants have their acknowledgement at the relay, the
  daemon's process alone gets SIGKILL (a crash: no drain; its children must die on their own),
  and ``mailgateway run`` is started again at once; the clients keep sending throughout.
* Figures, from that restart (the new process spawned): SMTP answering again, the first
  acknowledgement at the relay, and every declarant acknowledged. Beside them, measured in the
  same run, what any restart pays before it can do anything: the interpreter's start
  (``python -c pass``) and the import of the daemon's modules (``import mailgateway.daemon``).
* As installed: with its bytecode compiled (a package installed by pip or Debian is; a checkout
  whose environment sets PYTHONDONTWRITEBYTECODE compiles every module at every start, ≈0.6 s
  more here). The bytecode goes to a temporary PYTHONPYCACHEPREFIX, compiled before the first
  trial; ``--no-bytecode`` measures without it.

Run: ``.venv/bin/python benchmarks/restart.py [--count 300] [--connections 4] [--trials 3]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.chaos import mta_send, numbered_declaration
from tests.support.gateway import PROJECT_ROOT, GatewayConfig, RunningGateway
from tests.support.processes import descendants, gone
from tests.support.servers import SmtpSink, wait_for


def _seconds_to_run(code: str) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PROJECT_ROOT)
    return time.monotonic() - started


def _acknowledged(sink: SmtpSink, declarants: set[str]) -> dict[str, float]:
    """Declarant -> when (time.time()) its first mail reached the relay."""
    first: dict[str, float] = {}
    for message in sink.messages:
        for rcpt in message.rcpt_tos:
            if rcpt in declarants and rcpt not in first:
                first[rcpt] = message.received_at
    return first


def trial(directory: Path, count: int, connections: int, kill_at: float) -> dict[str, float]:
    with SmtpSink() as sink:
        config = GatewayConfig(directory, relay_port=sink.port)
        config.write()
        declarations = [numbered_declaration(n, tag=f"restart-{directory.name}") for n in range(count)]
        declarants = {declarant for _raw, _mid, declarant in declarations}
        gateway = RunningGateway(config)
        give_up_at = time.monotonic() + 600
        todo = list(range(count))
        lock = threading.Lock()

        def client() -> None:
            while True:
                with lock:
                    if not todo:
                        return
                    n = todo.pop(0)
                raw, _mid, declarant = declarations[n]
                mta_send(config.smtp_port, raw, declarant, give_up_at=give_up_at, pause=0.05)

        clients = [threading.Thread(target=client) for _ in range(connections)]
        for thread in clients:
            thread.start()
        try:
            wait_for(lambda: len(_acknowledged(sink, declarants)) >= count * kill_at, timeout=300, interval=0.01)
            children = descendants(gateway.proc.pid)
            gateway.proc.send_signal(signal.SIGKILL)
            gateway.proc.wait(timeout=30)
            wait_for(lambda: all(gone(pid) for pid in children), timeout=30, interval=0.01)
            at_kill = len(_acknowledged(sink, declarants))
            restart = time.time()
            gateway = RunningGateway(config)
            smtp = time.time() - restart
            wait_for(lambda: len(_acknowledged(sink, declarants)) == count, timeout=300, interval=0.01)
            after = sorted(t - restart for t in _acknowledged(sink, declarants).values() if t >= restart)
        finally:
            for thread in clients:
                thread.join(timeout=600)
            gateway.stop()
    return {"pending": count - at_kill, "smtp": smtp, "first": after[0] if after else float("nan"),
            "last": after[-1] if after else float("nan"), "python": _seconds_to_run("pass"),
            "imports": _seconds_to_run("import mailgateway.daemon")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--kill-at", type=float, default=1 / 3,
                        help="the share of declarants acknowledged when the daemon is killed")
    parser.add_argument("--no-bytecode", action="store_true", help="compile every module at every start")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mg-restart-"))
    results = []
    if args.no_bytecode:
        os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    else:  # inherited by the daemons started below, and their children
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ["PYTHONPYCACHEPREFIX"] = str(root / "bytecode")
        _seconds_to_run("import mailgateway.daemon")
    try:
        for n in range(args.trials):
            result = trial(root / f"t{n}", args.count, args.connections, args.kill_at)
            results.append(result)
            print(f"trial {n}: {result['pending']:.0f} declarants without acknowledgement at the kill; "
                  f"after the restart: SMTP answering {result['smtp']:.2f} s, first acknowledgement "
                  f"{result['first']:.2f} s, every one {result['last']:.2f} s | same run: python -c pass "
                  f"{result['python']:.2f} s, import mailgateway.daemon {result['imports']:.2f} s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for key, label in (("smtp", "SMTP answering"), ("first", "first acknowledgement"), ("last", "every one")):
        print(f"{label}: median {statistics.median(r[key] for r in results):.2f} s "
              f"(import floor median {statistics.median(r['imports'] for r in results):.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
