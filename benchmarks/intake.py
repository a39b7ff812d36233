"""SMTP intake: declarations through the real daemon on SQLite, next to a do-nothing aiosmtpd sink.

The README's "Benchmarks" target: SMTP accepted (250) ≥ 500 msg/s and ≥ 0.4 × a bare aiosmtpd sink
measured with the same client in the same run; end to end (last acknowledgement at the relay) ≥ 200 msg/s.

* The client: ``--connections`` (8) persistent SMTP connections, one thread each (smtplib), like an
  MTA delivering a queue; every message is a distinct declaration (own Message-ID, declarant and
  FINESS, so neither content dedup nor duplicate-case detection short-circuits anything).
* The sink: aiosmtpd in its own process, answering 250 and keeping nothing.
* Accept alone: the daemon's intake stack in its own process (aiosmtpd with ``GatewaySMTP`` and
  ``IntakeHandler``, the ``AcceptWriter`` group commit on SQLite with synchronous=FULL, the JSON log
  line of each accept) without processing, sender or scheduler: what intake costs by itself.
* The gateway: ``python -m mailgateway run`` (separate process), SQLite with synchronous=FULL, the
  default intake limits (the client is on loopback, a trusted relay by default), delivering to a
  counting relay in its own process.

Rates for the gateway: *accepted* (250s received by the client: the message is durable),
*processed* (cases created and acknowledgements queued, polled from the database) and *end to
end* (the last acknowledgement counted at the relay). ``--no-process`` measures the sink and accept
alone only (fast, fit for ``--count 20000``); ``--no-wait`` stops the daemon after its last 250
instead of waiting for processing. Each stage prints the CPU its server process spent per message
(and the client's), and accept alone prints the accept writer's own figures (batches, time in the
INSERT, the commit and waiting for the write gate). ``--profile FILE`` samples the accept-alone
server (and the daemon, ``FILE.daemon``, during its accept phase) with py-spy and prints where the
time goes.

Run: ``.venv/bin/python benchmarks/intake.py [--count 5000] [--connections 8] [--no-process] [--no-wait]
[--profile /tmp/p.txt]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import re
import resource
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

from mailgateway.processes import HOST_NAME
from tests.support.chaos import ChaosConfig
from tests.support.gateway import DECLARATION, GatewayConfig, RunningGateway
from tests.support.processes import descendants, named
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


DOMAINS = 997  # declarants' domains: etab-0.test … etab-996.test
SELECTOR = "bench"


def declarations(count: int, signer_key: bytes | None = None) -> list[tuple[str, bytes]]:
    """``count`` distinct declarations (≈1 kB each: 20,000 of them are ≈20 MB, built once per run);
    with ``signer_key`` (PEM), each DKIM-signed by its declarant's domain (RFC 6376, rsa-sha256, one
    key published for every domain: ``static_keys``), as a hospital's mail server signs."""
    from mailgateway.dispatch.dkim import DkimKey, DkimSigner

    template = DECLARATION.replace("\n", "\r\n")  # as an MTA hands them over (RFC 5321 §2.3.8)
    signers: dict[int, DkimSigner] = {}
    out = []
    for n in range(count):
        declarant = f"rssi-{n}@etab-{n % DOMAINS}.test"
        raw = (template.replace("<decl-1@chu-nantes.test>", f"<bench-{n}@etab.test>")
               .replace("dsi@chu-nantes.test", declarant).replace("440000289", finess(n))).encode()
        if signer_key is not None:
            signer = signers.get(n % DOMAINS)
            if signer is None:
                signer = signers[n % DOMAINS] = DkimSigner(
                    f"etab-{n % DOMAINS}.test", [DkimKey(SELECTOR, "rsa-sha256", signer_key)])
            raw = signer.sign(raw) + raw
        out.append((declarant, raw))
    return out


SIGNED: tuple[bytes, str] | None = None  # --signed: (private key PEM, the TXT value publishing it)


def signing_key(workdir: Path) -> tuple[bytes, str]:
    from tests.support.gateway import generate_rsa_key

    path = workdir / "declarants.pem"
    record = generate_rsa_key(path)
    return path.read_bytes(), record


def cpu_seconds() -> float:
    """CPU time of this process (all its threads): the client's share of the 2 CPUs."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pid_cpu_seconds(pid: int, task: str = "") -> float:
    """CPU time (user + system) of another process (or one of its threads), from /proc."""
    fields = Path(f"/proc/{pid}{task}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(tid: int | None) -> float:
    """CPU time of one thread of this process (its native id), from /proc."""
    return pid_cpu_seconds(os.getpid(), f"/task/{tid}") if tid is not None else 0.0


def machine_cpu() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far, from /proc/stat's first line: busy is
    user + nice + system + irq + softirq + steal, all adds idle and iowait. Their ratio over a
    window says whether the figure was bound by the CPUs (near 100 %) or by waits."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    busy = user + nice + system + irq + softirq + steal
    tick = os.sysconf("SC_CLK_TCK")
    return busy / tick, (busy + idle + iowait) / tick


def tree_cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += pid_cpu_seconds(pid)
        except (OSError, ValueError, IndexError):
            continue
    return total


class Run:
    """One stage's figures: seconds until the last 250, CPU of the server and of the client."""

    def __init__(self, seconds: float, server_cpu: float | None, client_cpu: float) -> None:
        self.seconds = seconds
        self.server_cpu = server_cpu
        self.client_cpu = client_cpu
        self.writer: dict[str, Any] | None = None  # the accept writer's figures, when known
        self.children_cpu: float | None = None  # the daemon's child processes (processing host)
        self.after_accept_cpu: dict[str, float] = {}  # per process, from the last 250 to the last ack
        # Until nothing is left to send (staff notifications included) and how many messages the
        # relay received then: staff notifications of a backlog follow its acknowledgements.
        self.all_out: tuple[float, int] | None = None
        self.ahead: str | None = None  # the processing host's line on its analyses ahead
        self.all_out_cpu = 0.0  # every process's, from the last 250 until then
        # From the last 250 to the last ack: declarations processed then, and the machine's CPUs busy.
        self.after_accept_processed = 0
        self.after_accept_busy: float | None = None


def send_all(port: int, messages: list[tuple[str, bytes]], connections: int) -> tuple[float, float]:
    """Send every message over ``connections`` persistent connections.

    Returns (seconds until the last 250, client CPU seconds)."""
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=120) as s:
                for mail_from, raw in messages[k::connections]:
                    s.sendmail(mail_from, ["ssi-pdl@ars.test"], raw)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(connections)]
    cpu = cpu_seconds()
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started, cpu_seconds() - cpu


def _sink_main(port: int, ready: Any, conn: Any) -> None:
    from aiosmtpd.controller import Controller

    class Nothing:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 2.0.0 OK"

    controller = Controller(Nothing(), hostname="127.0.0.1", port=port, server_hostname="sink.localhost",
                            decode_data=False)
    controller.start()
    cpu = cpu_seconds()
    ready.set()
    try:
        conn.recv()  # "stop": the client is done
        conn.send({"cpu": cpu_seconds() - cpu})
    finally:
        controller.stop()


def measure_sink(messages: list[tuple[str, bytes]], connections: int) -> Run:
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_sink_main, args=(port, ready, child), daemon=True)
    proc.start()
    try:
        ready.wait(20)
        seconds, client = send_all(port, messages, connections)
        parent.send("stop")
        return Run(seconds, parent.recv()["cpu"], client)
    finally:
        proc.terminate()
        proc.join(10)


def _accept_main(config_path: str, log_path: str, ready: Any, conn: Any) -> None:
    """Accept alone (own process): the daemon's intake stack without processing, sender or scheduler.

    What ``Daemon.start`` wires for SMTP: the JSON log handler, the AcceptWriter on the SQLite
    database (migrated), IntakeHandler + GatewaySMTP, and an ``on_accepted`` doing what the
    daemon's does (count the accept, write one byte to the processing host's wake-up pipe)."""
    import asyncio

    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 2)  # the daemon's journal is its stderr
    from mailgateway.clock import SystemClock
    from mailgateway.intake.smtp import IntakeHandler, start_smtp
    from mailgateway.intake.writer import AcceptWriter
    from mailgateway.logs import setup_logging
    from mailgateway.metrics import Metrics
    from mailgateway.settings import load_settings
    from mailgateway.store.engine import ensure_schema, make_engine, make_sessionmaker

    settings = load_settings(config_path)
    setup_logging(settings.logging)
    ensure_schema(settings.database.url)
    factory = make_sessionmaker(make_engine(settings.database.url))
    clock = SystemClock()

    async def serve() -> None:
        metrics = Metrics(clock)
        # The processing host's wake-up pipe (processing/host.py), read by a thread as the host would.
        wake_reader, wake_writer = os.pipe()
        os.set_blocking(wake_writer, False)
        threading.Thread(target=lambda: [None for _ in iter(lambda: os.read(wake_reader, 4096), b"")],
                         daemon=True).start()

        def on_accepted(_inbound_id: int) -> None:
            metrics.accepted("smtp")
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(wake_writer, b"\x01")

        writer = AcceptWriter(factory, clock)
        writer.start()
        handler = IntakeHandler(settings, writer, on_accepted)
        server = await start_smtp(settings, handler)
        threads = {"event loop": threading.get_native_id(), "accept writer": writer._thread.native_id}
        cpu = cpu_seconds()
        by_thread = {name: thread_cpu_seconds(tid) for name, tid in threads.items()}
        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # "stop": the client is done
        used = cpu_seconds() - cpu
        by_thread = {name: thread_cpu_seconds(tid) - by_thread[name] for name, tid in threads.items()}
        server.close()
        await server.wait_closed()
        writer.stop()
        stats = getattr(writer, "stats", None)
        conn.send({"cpu": used, "writer": stats.as_dict() if stats is not None else None,
                   "accepted": handler.accepted, "threads": by_thread})

    asyncio.run(serve())


def py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    exe = str(Path(sys.executable).with_name("py-spy"))
    spy = subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", "100", "--format", "raw", "--threads",
                            "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    return spy


def stop_spy(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)


def measure_accept(messages: list[tuple[str, bytes]], connections: int, workdir: Path,
                   profile: Path | None) -> tuple[Run, dict[str, Any] | None]:
    config = ChaosConfig(workdir / "accept")
    config.path.write_text(config.path.read_text().replace("rate_limit_per_minute = 0\n", ""))
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_accept_main, args=(str(config.path), str(workdir / "accept.log"), ready, child),
                       daemon=True)
    proc.start()
    try:
        if not ready.wait(60):
            raise RuntimeError(f"accept server did not start: {(workdir / 'accept.log').read_text()[-4000:]}")
        spy = py_spy(proc.pid, profile) if profile is not None else None
        seconds, client = send_all(config.smtp_port, messages, connections)
        stop_spy(spy)
        parent.send("stop")
        report = parent.recv()
        stats = report.get("writer") or {}
        stats["threads"] = report.get("threads", {})
        return Run(seconds, report["cpu"], client), stats
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.terminate()
            proc.join(10)


def _relay_main(port: int, ready: Any, acks: Any, messages: Any) -> None:
    """The relay (own process): accepts everything, counts the messages and the acknowledgements
    to declarants."""
    from aiosmtpd.controller import Controller

    class Counting:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            with messages.get_lock():
                messages.value += 1
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
        self.messages = ctx.Value("i", 0)
        ready = ctx.Event()
        self.proc = ctx.Process(target=_relay_main, args=(self.port, ready, self.acks, self.messages), daemon=True)
        self.proc.start()
        if not ready.wait(20):
            raise RuntimeError("relay did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(10)


def mail_waiting(db: Path) -> int:
    """Mail not yet handed to the relay: outbox rows to send, staff notifications still deferred
    (processing/later.py; a table older versions do not have)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        waiting = conn.execute("SELECT count(*) FROM outbound_messages WHERE status IN ('queued', 'sending')")
        total = int(waiting.fetchone()[0])
        try:
            total += int(conn.execute("SELECT count(*) FROM deferred_staff_notices").fetchone()[0])
        except sqlite3.OperationalError:
            pass
    finally:
        conn.close()
    return total


def processed(db: Path) -> tuple[int, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        cases = conn.execute("SELECT count(*) FROM cases").fetchone()[0]
        acks = conn.execute("SELECT count(*) FROM outbound_messages WHERE kind = 'accuse_reception'").fetchone()[0]
    finally:
        conn.close()
    return int(cases), int(acks)


def summarise_profile(path: Path, top: int = 16) -> str:
    """py-spy's raw (collapsed) stacks -> share of samples per thread, per busiest function of ours
    (inclusive) and per function where the samples were taken (self, any module)."""
    frame_re = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")
    threads: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
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
        names = []
        for frame in frames:
            found = frame_re.match(frame)
            name = f"{found.group(1)} ({found.group(2)})" if found else frame
            names.append(name)
            if name not in seen and "mailgateway/" in name:
                seen.add(name)
                inclusive[name] += n
        if names:
            leaves[names[-1]] += n
    if not total:
        return "  (no samples)"
    out = ["  by thread: " + ", ".join(f"{t} {100 * n / total:.0f}%" for t, n in threads.most_common(6))]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    out += ["  self (where the samples were taken, idle waits included):"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in leaves.most_common(top // 2)]
    return "\n".join(out)


# --processing-host: "process" (the default) or "thread" (processing in the daemon's process, as
# before issue 19), to compare both in one run; None leaves the configuration's default.
PROCESSING_HOST: str | None = None
GLOBAL_AUTO_REPLIES = 5000  # settings.OutboundSettings.auto_reply_global_per_hour's default


def measure_gateway(messages: list[tuple[str, bytes]], connections: int, workdir: Path,
                    profile: Path | None, wait: bool) -> tuple[Run, float | None, float | None, tuple[int, int]]:
    relay = Relay()
    static_keys = ({f"{SELECTOR}._domainkey.etab-{d}.test": SIGNED[1] for d in range(DOMAINS)}
                   if SIGNED is not None else {})
    config = ChaosConfig(workdir / "gw", relay_port=relay.port, static_keys=static_keys)
    # The default configuration: the client is on loopback, a trusted relay by default, so no
    # per-IP rate limit applies (ChaosConfig turns the limit off; put the default back).
    config.path.write_text(config.path.read_text().replace("rate_limit_per_minute = 0\n", ""))
    if len(messages) > GLOBAL_AUTO_REPLIES:
        # Past [outbound] auto_reply_global_per_hour (5,000 by default, docs/guarantees.md) the
        # burst's acknowledgements are refused by design, and "every acknowledgement at the relay"
        # would never come: a site that expects such a wave raises the budget; so does this run.
        assert "[outbound]" not in config.path.read_text()
        config.path.write_text(config.path.read_text()
                               + f"\n[outbound]\nauto_reply_global_per_hour = {len(messages)}\n")
    processing = ([f'host = "{PROCESSING_HOST}"'] if PROCESSING_HOST is not None else []) + PROCESSING_SET
    if processing:  # --processing-host, --processing-set: [processing] of the daemon (issue 19)
        config.path.write_text(config.path.read_text() + "\n[processing]\n" + "\n".join(processing) + "\n")
    if CONTACTS:
        import_directory(config, workdir, CONTACTS)
    try:
        return _measure(config, relay, messages, connections, profile, wait)
    finally:
        relay.stop()


CONTACTS = 0  # --contacts: establishments' contacts in the directory before the burst
PROCESSING_SET: list[str] = []  # --processing-set KEY=VALUE: more [processing] keys of the daemon


def import_directory(config: GatewayConfig, workdir: Path, count: int) -> None:
    """A directory of ``count`` establishments, each with its SSI mailbox (``directory import
    --kind contacts``, as an operator loads it): among them the declarants' domains (etab-N.test),
    the rest elsewhere. What grows with the directory shows in the figures."""
    path = workdir / "contacts.csv"
    lines = ["finess;name;category;departement;email;role"]
    for n in range(count):
        domain = f"etab-{n}.test" if n < DOMAINS else f"autre-{n}.test"
        lines.append(f"{finess(1_000_000 + n)};Établissement {n};CH;44;ssi@{domain};ssi")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    subprocess.run([sys.executable, "-m", "mailgateway", "-c", str(config.path), "directory", "import", "--kind",
                    "contacts", str(path)], check=True, capture_output=True)


def daemon_writer_stats(log_path: Path) -> dict[str, Any] | None:
    """The accept writer's figures, from the line it logs when the daemon stops (intake/writer.py)."""
    for line in reversed(log_path.read_text(errors="replace").splitlines()):
        if line.startswith("{") and '"accept_writer"' in line:
            stats: dict[str, Any] = json.loads(line)["accept_writer"]
            return stats
    return None


def _measure(config: ChaosConfig, relay: Relay, messages: list[tuple[str, bytes]], connections: int,
             profile: Path | None, wait: bool) -> tuple[Run, float | None, float | None, tuple[int, int]]:
    with RunningGateway(config) as gateway:
        result = _measure_in(gateway, config, relay, messages, connections, profile, wait)
    result[0].writer = daemon_writer_stats(gateway.log_path)
    result[0].ahead = next((line for line in gateway.log_path.read_text(errors="replace").splitlines()
                            if "analysis ahead:" in line), None)
    return result


def _measure_in(gateway: RunningGateway, config: ChaosConfig, relay: Relay, messages: list[tuple[str, bytes]],
                connections: int, profile: Path | None,
                wait: bool) -> tuple[Run, float | None, float | None, tuple[int, int]]:
    count = len(messages)
    pid = gateway.proc.pid
    # The processing host (a child process) imports and builds its services after the listener is
    # up: measured from its "started" line on, or its start-up CPU would count as accept's.
    try:
        wait_for(lambda: "processing host" in gateway.log() and " started in " in gateway.log(), timeout=60)
    except TimeoutError:
        pass  # [processing] host = "thread": nothing to wait for
    spy = py_spy(pid, profile) if profile is not None else None
    tree = descendants(pid)
    cpu, children_cpu = pid_cpu_seconds(pid), tree_cpu_seconds(tree)
    started = time.perf_counter()
    accepted_in, client = send_all(config.smtp_port, messages, connections)
    accepted = Run(accepted_in, pid_cpu_seconds(pid) - cpu, client)
    accepted.children_cpu = tree_cpu_seconds(tree) - children_cpu
    stop_spy(spy)  # the accept phase only: processing alone runs on long after it
    if not wait:
        return accepted, None, None, processed(config.db_path)
    hosts = named(tree, HOST_NAME)  # a fork of the fork server, a child of the daemon (mailgateway/processes.py)
    parts = {"daemon (intake, sender)": [pid], "processing host": hosts,
             "analysis workers": [p for p in tree if p not in hosts], "relay (counting sink)": [relay.proc.pid]}
    before = {name: tree_cpu_seconds(pids) for name, pids in parts.items()}
    done_before, machine_before = processed(config.db_path)[0], machine_cpu()
    wait_for(lambda: processed(config.db_path) >= (count, count), timeout=3600, interval=0.05)
    processed_in = time.perf_counter() - started
    wait_for(lambda: relay.acks.value >= count, timeout=3600, interval=0.05)
    end_to_end = time.perf_counter() - started
    # Per declaration, after the last 250: where the CPU went until the last acknowledgement.
    accepted.after_accept_cpu = {name: tree_cpu_seconds(pids) - before[name] for name, pids in parts.items()}
    machine_after = machine_cpu()
    accepted.after_accept_processed = count - done_before
    if machine_after[1] > machine_before[1]:
        accepted.after_accept_busy = (machine_after[0] - machine_before[0]) / (machine_after[1] - machine_before[1])
    try:
        wait_for(lambda: mail_waiting(config.db_path) == 0, timeout=300, interval=0.05)
        accepted.all_out = (time.perf_counter() - started, relay.messages.value)
        accepted.all_out_cpu = sum(tree_cpu_seconds(pids) - before[name] for name, pids in parts.items())
    except TimeoutError:
        pass
    return accepted, processed_in, end_to_end, (count, count)


def _row(label: str, n: int, run: Run, sink: Run, note: str = "") -> str:
    rate = n / run.seconds
    server = f"{1e6 * run.server_cpu / n:7.0f}" if run.server_cpu is not None else "      -"
    return (f"  {label:<34}{rate:8.0f} msg/s  {rate / (n / sink.seconds):5.2f} x sink   "
            f"CPU µs/msg: server {server}, client {1e6 * run.client_cpu / n:5.0f}{note}")


def writer_lines(stats: dict[str, Any] | None, seconds: float, n: int) -> list[str]:
    threads = (stats or {}).get("threads") or {}
    out = ["  accept alone, CPU µs/msg by thread: "
           + ", ".join(f"{name} {1e6 * cpu / n:.0f}" for name, cpu in threads.items())]
    if not stats or not stats.get("batches"):
        return [*out, "  accept writer: (no figures from this version of intake/writer.py)"]
    b, items = stats["batches"], stats["items"]
    busy = stats["store_seconds"] + stats["commit_seconds"]
    return [
        *out,
        f"  accept writer: {b} batches, {stats['items'] / b:.1f} messages ({stats['rows'] / b:.1f} rows) per batch, "
        f"{stats['fallbacks']} per-item fallbacks; per batch: store {1e3 * stats['store_seconds'] / b:.2f} ms, "
        f"commit {1e3 * stats['commit_seconds'] / b:.2f} ms, waiting for the write gate "
        f"{1e3 * stats['gate_seconds'] / b:.2f} ms",
        f"                 busy {100 * busy / seconds:.0f}% of the run; per message: store "
        f"{1e6 * stats['store_seconds'] / items:.0f} µs, commit {1e6 * stats['commit_seconds'] / items:.0f} µs",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--no-process", action="store_true",
                        help="sink and accept alone only (no daemon, no processing)")
    parser.add_argument("--no-wait", action="store_true",
                        help="stop the daemon after its last 250 (do not wait for processing)")
    parser.add_argument("--profile", type=Path, help="py-spy raw output of accept alone (and FILE.daemon)")
    parser.add_argument("--processing-host", choices=("process", "thread"),
                        help="[processing] host of the daemon: its own process (default) or a thread of the daemon")
    parser.add_argument("--processing-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a [processing] key of the daemon's configuration (TOML value), e.g. "
                             "staff_notice_max_delay_seconds=300")
    parser.add_argument("--contacts", type=int, default=0,
                        help="establishments' contacts imported into the directory first (the declarants' among them)")
    parser.add_argument("--signed", action="store_true",
                        help="DKIM-sign every declaration (its domain's key published to the daemon offline)")
    args = parser.parse_args()
    global PROCESSING_HOST, SIGNED, CONTACTS
    PROCESSING_HOST = args.processing_host
    CONTACTS = args.contacts
    PROCESSING_SET[:] = [item.replace("=", " = ", 1) for item in args.processing_set]
    workdir = Path(tempfile.mkdtemp(prefix="bench-intake-"))
    if args.signed:
        SIGNED = signing_key(workdir)
    messages = declarations(args.count, SIGNED[0] if SIGNED is not None else None)
    n = args.count
    load_before = os.getloadavg()
    daemon_profile = args.profile.with_name(args.profile.name + ".daemon") if args.profile else None
    gateway = None
    try:
        sink = measure_sink(messages, args.connections)
        accept, stats = measure_accept(messages, args.connections, workdir, args.profile)
        if not args.no_process:
            gateway = measure_gateway(messages, args.connections, workdir, daemon_profile, not args.no_wait)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    load = os.getloadavg()
    signed = "DKIM-signed " if args.signed else ""
    directory = f", {args.contacts} contacts in the directory" if args.contacts else ""
    print(f"intake, {n} {signed}declarations{directory}, {args.connections} connections, {os.cpu_count()} CPUs, "
          f"load average "
          f"{load_before[0]:.1f} {load_before[1]:.1f} {load_before[2]:.1f} before, "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f} after")
    print(_row("bare aiosmtpd sink", n, sink, sink))
    print(_row("accept alone (no processing)", n, accept, sink))
    print("\n".join(writer_lines(stats, accept.seconds, n)))
    if gateway is not None:
        accepted, processed_s, e2e_s, done = gateway
        print(_row("daemon accepted (250)", n, accepted, sink, "   (target ≥ 500 msg/s, ≥ 0.40 x)"))
        if accepted.children_cpu is not None:
            print(f"  daemon's child processes (processing host, analysis workers) meanwhile: "
                  f"CPU {1e6 * accepted.children_cpu / n:.0f} µs/msg")
        print("\n".join(writer_lines(accepted.writer, accepted.seconds, n)[1:]).replace("accept writer:",
                                                                                       "daemon's writer:"))
        if accepted.ahead is not None:
            found = re.search(r"analysis ahead: \d+ message\(s\) analysed, \d+ used by their batch", accepted.ahead)
            print(f"  processing host's {found.group(0) if found else accepted.ahead}")
        if processed_s is None or e2e_s is None:
            print(f"  daemon processed: not waited for (--no-wait): {done[0]} cases, {done[1]} acknowledgements "
                  "queued by the last 250")
        else:
            sink_rate = n / sink.seconds
            print(f"  {'daemon processed (case + ack queued)':<34}{n / processed_s:8.0f} msg/s  "
                  f"{n / processed_s / sink_rate:5.2f} x sink")
            print(f"  {'end to end (last ack at the relay)':<34}{n / e2e_s:8.0f} msg/s  "
                  f"{n / e2e_s / sink_rate:5.2f} x sink   (target ≥ 200 msg/s)")
            if accepted.all_out is not None:
                out_s, relayed = accepted.all_out
                print(f"  {'all mail at the relay':<34}{n / out_s:8.0f} msg/s  {n / out_s / sink_rate:5.2f} x sink   "
                      f"({relayed} messages: acknowledgements, staff notifications after them, "
                      f"{out_s - e2e_s:.1f} s after the last acknowledgement; CPU per declaration from the last "
                      f"250: {1e6 * accepted.all_out_cpu / n:.0f} µs)")
            after = accepted.after_accept_cpu
            print("  CPU µs per declaration from the last 250 to the last acknowledgement: "
                  + ", ".join(f"{name} {1e6 * cpu / n:.0f}" for name, cpu in after.items())
                  + f"; total {1e6 * sum(after.values()) / n:.0f} (on {os.cpu_count()} CPUs)")
            if accepted.after_accept_processed and accepted.after_accept_busy is not None:
                # The line above divides by every declaration; some were processed before the last
                # 250. Per declaration processed in the window, and how busy the machine was then:
                # near 100 %, the figure is the CPU's; well below, something waits.
                print(f"  from the last 250 to the last acknowledgement: {accepted.after_accept_processed} "
                      f"declarations processed, CPU {1e6 * sum(after.values()) / accepted.after_accept_processed:.0f}"
                      f" µs each in these processes; the machine's CPUs {100 * accepted.after_accept_busy:.0f} % busy")
        if n > GLOBAL_AUTO_REPLIES:
            print(f"  [outbound] auto_reply_global_per_hour = {n} for this run (default {GLOBAL_AUTO_REPLIES}: "
                  "beyond it a burst's acknowledgements are refused by design)")
    for label, path in (("accept alone", args.profile), ("daemon, accept phase", daemon_profile)):
        if path is not None and path.exists():
            print(f"{label} profile (py-spy, share of samples, all threads): {path}")
            print(summarise_profile(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
