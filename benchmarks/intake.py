"""SMTP intake: declarations through the real daemon on SQLite, next to a do-nothing aiosmtpd sink.

The README's "Benchmarks" target: SMTP → case + acknowledgement queued ≥ 500 msg/s and ≥ 0.4 × a bare aiosmtpd
sink measured with the same client in the same run.

* The client: ``--connections`` (8) persistent SMTP connections, one thread each (smtplib), like an
  MTA delivering a queue; every message is a distinct declaration (own Message-ID, declarant and
  FINESS, so neither content dedup nor duplicate-case detection short-circuits anything).
* The sink: aiosmtpd in its own process, answering 250 and keeping nothing.
* The gateway: ``python -m mailgateway run`` (separate process), SQLite with synchronous=FULL, the
  default intake limits (the client is on loopback, a trusted relay by default), delivering to a
  counting relay in its own process.

Two rates for the gateway: *accepted* (250s received by the client: the message is durable) and
*processed* (cases created and acknowledgements queued, polled from the database; processing
runs behind intake, one message at a time), and *end to end*: the last acknowledgement counted at
the relay. ``--profile FILE`` samples the daemon with py-spy and
prints where its time goes.

Run: ``.venv/bin/python benchmarks/intake.py [--count 5000] [--connections 8] [--profile /tmp/p.txt]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import signal
import smtplib
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support: config, daemon

from tests.support.chaos import ChaosConfig
from tests.support.gateway import DECLARATION, RunningGateway
from tests.support.servers import free_port, wait_for


def finess(n: int) -> str:
    """A valid FINESS number (Luhn key over 9 digits) for establishment ``n``."""
    base = f"44{n % 1_000_000:06d}"
    for key in range(10):
        digits = [int(c) for c in base + str(key)]
        total = sum(d if i % 2 == 0 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(reversed(digits)))
        if total % 10 == 0:
            return base + str(key)
    raise AssertionError("unreachable")


def declarations(count: int) -> list[tuple[str, bytes]]:
    out = []
    for n in range(count):
        declarant = f"rssi-{n}@etab-{n % 997}.test"
        raw = (DECLARATION.replace("<decl-1@chu-nantes.test>", f"<bench-{n}@etab.test>")
               .replace("dsi@chu-nantes.test", declarant).replace("440000289", finess(n)))
        out.append((declarant, raw.encode()))
    return out


def send_all(port: int, messages: list[tuple[str, bytes]], connections: int) -> float:
    """Send every message over ``connections`` persistent connections; seconds until the last 250."""
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=120) as s:
                for mail_from, raw in messages[k::connections]:
                    s.sendmail(mail_from, ["ssi-pdl@ars.test"], raw)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(connections)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started


def _sink_main(port: int, ready: Any) -> None:
    from aiosmtpd.controller import Controller

    class Nothing:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 2.0.0 OK"

    controller = Controller(Nothing(), hostname="127.0.0.1", port=port, server_hostname="sink.localhost",
                            decode_data=False)
    controller.start()
    ready.set()
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


def measure_sink(messages: list[tuple[str, bytes]], connections: int) -> float:
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_sink_main, args=(port, ready), daemon=True)
    proc.start()
    try:
        ready.wait(20)
        return send_all(port, messages, connections)
    finally:
        proc.terminate()
        proc.join(10)


def _relay_main(port: int, ready: Any, acks: Any) -> None:
    """The relay (own process): accepts everything, counts the acknowledgements to declarants."""
    from aiosmtpd.controller import Controller

    class Counting:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            if any(r.startswith("rssi-") for r in envelope.rcpt_tos):
                with acks.get_lock():
                    acks.value += 1
            return "250 2.0.0 OK"

    controller = Controller(Counting(), hostname="127.0.0.1", port=port, server_hostname="relay.localhost",
                            decode_data=False, data_size_limit=0)
    controller.start()
    ready.set()
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


class Relay:
    """The relay the gateway delivers to: end to end is the last acknowledgement counted here."""

    def __init__(self) -> None:
        self.port = free_port()
        ctx = multiprocessing.get_context("spawn")
        self.acks = ctx.Value("i", 0)
        ready = ctx.Event()
        self.proc = ctx.Process(target=_relay_main, args=(self.port, ready, self.acks), daemon=True)
        self.proc.start()
        if not ready.wait(20):
            raise RuntimeError("relay did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(10)


def processed(db: Path) -> tuple[int, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        cases = conn.execute("SELECT count(*) FROM cases").fetchone()[0]
        acks = conn.execute("SELECT count(*) FROM outbound_messages WHERE kind = 'accuse_reception'").fetchone()[0]
    finally:
        conn.close()
    return int(cases), int(acks)


def summarise_profile(path: Path, top: int = 16) -> str:
    """py-spy's raw (collapsed) stacks -> share of samples per thread and per busiest function."""
    frame_re = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")
    threads: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        thread, *frames = stack.split(";")
        threads[thread.split(": ", 1)[-1].rstrip("_0123456789") or thread] += n
        seen = set()
        for frame in frames:
            found = frame_re.match(frame)
            name = f"{found.group(1)} ({found.group(2)})" if found else frame
            if name not in seen and "mailgateway/" in name:
                seen.add(name)
                inclusive[name] += n
    out = ["  by thread: " + ", ".join(f"{t} {100 * n / total:.0f}%" for t, n in threads.most_common(6))]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(out)


def measure_gateway(messages: list[tuple[str, bytes]], connections: int, workdir: Path,
                    profile: Path | None) -> tuple[float, float, float]:
    relay = Relay()
    config = ChaosConfig(workdir / "gw", relay_port=relay.port)
    # The default configuration: the client is on loopback, a trusted relay by default, so no
    # per-IP rate limit applies (ChaosConfig turns the limit off; put the default back).
    config.path.write_text(config.path.read_text().replace("rate_limit_per_minute = 0\n", ""))
    try:
        return _measure(config, relay, messages, connections, profile)
    finally:
        relay.stop()


def _measure(config: ChaosConfig, relay: Relay, messages: list[tuple[str, bytes]], connections: int,
             profile: Path | None) -> tuple[float, float, float]:
    count = len(messages)
    with RunningGateway(config) as gateway:
        spy = None
        if profile is not None:
            py_spy = str(Path(sys.executable).with_name("py-spy"))
            spy = subprocess.Popen([py_spy, "record", "--pid", str(gateway.proc.pid), "--rate", "100",
                                    "--format", "raw", "--threads", "-o", str(profile)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        started = time.perf_counter()
        accepted_in = send_all(config.smtp_port, messages, connections)
        wait_for(lambda: processed(config.db_path) >= (count, count), timeout=3600, interval=0.05)
        processed_in = time.perf_counter() - started
        wait_for(lambda: relay.acks.value >= count, timeout=3600, interval=0.05)
        end_to_end = time.perf_counter() - started
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
    return accepted_in, processed_in, end_to_end


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--profile", type=Path, help="py-spy raw output of the daemon")
    args = parser.parse_args()
    messages = declarations(args.count)
    workdir = Path(tempfile.mkdtemp(prefix="bench-intake-"))
    try:
        sink_s = measure_sink(messages, args.connections)
        accepted_s, processed_s, e2e_s = measure_gateway(messages, args.connections, workdir, args.profile)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    n = args.count
    sink_rate, acc_rate, proc_rate, e2e_rate = n / sink_s, n / accepted_s, n / processed_s, n / e2e_s
    load = os.getloadavg()
    print(f"intake, {n} declarations, {args.connections} connections, {os.cpu_count()} CPUs, "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"  bare aiosmtpd sink          {sink_rate:8.0f} msg/s")
    print(f"  gateway accepted (250)      {acc_rate:8.0f} msg/s   {acc_rate / sink_rate:5.2f} x sink   "
          f"(target ≥ 500 msg/s, ≥ 0.40 x)")
    print(f"  gateway processed (case +   {proc_rate:8.0f} msg/s   {proc_rate / sink_rate:5.2f} x sink")
    print("           acknowledgement queued)")
    print(f"  end to end (last ack at     {e2e_rate:8.0f} msg/s   {e2e_rate / sink_rate:5.2f} x sink   "
          f"(target ≥ 200 msg/s)")
    print("           the relay)")
    if args.profile is not None and args.profile.exists():
        print(f"daemon profile (py-spy, inclusive share of samples, all threads): {args.profile}")
        print(summarise_profile(args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
