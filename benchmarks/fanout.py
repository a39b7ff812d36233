"""Bulletin fan-out, as the daemon runs it: approval -> last message handed to the relay.

The README's "Benchmarks" targets (issue 19): ≥ 1,000 msg/s or ≥ 0.6 × plain ``smtplib`` pushing the
same messages over one connection to the same sink, 40,000 recipients in under 60 s end to end,
peak RSS ≤ 150 MB and flat in the number of recipients.

What runs is the real thing: a directory of N establishments on SQLite (the embedded default,
synchronous=FULL), a bulletin created and approved (too large to be queued in the approving
transaction), then, in one process as in the daemon, ``fan_out_approved`` in a thread (compose,
DKIM-sign in the signing processes with an RSA-2048 key, insert per batch, wake the sender)
and ``Sender.run`` on the event loop, until a counting sink has every message. The sink is an
aiosmtpd server in a *separate process*, so it neither shares the GIL with the code measured nor
inflates its RSS. Then, in the same run, plain ``smtplib`` sends the same final bytes (read back
from the outbox) to the same sink over one connection: the reference.

Run: ``.venv/bin/python benchmarks/fanout.py [--recipients 10000] [--concurrency 4] [--in-thread]``
(``--in-thread``: sign in the fan-out's thread instead of the signing processes, for comparison).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import shutil
import smtplib
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support: keys, directory, ports

if __name__ == "__main__":
    # Only here: the processes this run spawns (the signing processes, the sink) import this
    # script again (multiprocessing "spawn"). Under ``mailgateway run`` they import the light
    # ``mailgateway`` entry point (≈0.1 s, 23 MB); with these imports they paid ≈1 s and 80 MB
    # each, counted against the fan-out's CPU per message and its signing processes' RSS.
    from sqlalchemy import select

    from mailgateway.app import build_app
    from mailgateway.bulletins.fanout import FanOutStats, approve_bulletin, create_bulletin, fan_out_approved
    from mailgateway.clock import SystemClock
    from mailgateway.directory import parse_target
    from mailgateway.dispatch.sender import Sender
    from mailgateway.store.engine import reading, transaction
    from mailgateway.store.models import OutboundMessage
    from tests.support.bulletins import bulletin_settings, fill_directory
    from tests.support.dkim import rsa_key
    from tests.support.servers import free_port

BODY = (
    "Le CERT Santé signale une vulnérabilité critique (CVE-2026-12345) affectant les passerelles VPN "
    "de plusieurs éditeurs. Merci d'appliquer les correctifs sous 72 heures et de vérifier les "
    "journaux d'authentification des trente derniers jours.\n\n"
) * 6


def _sink_main(port: int, ready: Any, count: Any) -> None:
    """A counting SMTP sink (own process): accepts everything, keeps nothing."""
    from aiosmtpd.controller import Controller

    class Counting:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            with count.get_lock():
                count.value += 1
            return "250 2.0.0 OK"

    controller = Controller(Counting(), hostname="127.0.0.1", port=port, server_hostname="sink.localhost",
                            decode_data=False, data_size_limit=0)
    controller.start()
    ready.set()
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


class Sink:
    def __init__(self) -> None:
        self.port = free_port()
        ctx = multiprocessing.get_context("spawn")
        self.count = ctx.Value("i", 0)
        ready = ctx.Event()
        self.proc = ctx.Process(target=_sink_main, args=(self.port, ready, self.count), daemon=True)
        self.proc.start()
        if not ready.wait(20):
            raise RuntimeError("sink did not start")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the sink process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(10)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class _InThread:
    """The signer seen as a plain ``Signer``: the fan-out then signs in its own thread (--in-thread)."""

    def __init__(self, signer: Any) -> None:
        self.signer = signer

    def sign(self, message: bytes) -> bytes:
        return bytes(self.signer.sign(message))


def approve(app: Any, n: int) -> int:
    now = app.clock.now()
    with transaction(app.factory) as session:
        bulletin = create_bulletin(session, app.settings, region="ARA", target=parse_target("category=LBM"),
                                   subject="Vulnérabilité VPN critique", body=BODY, tlp="GREEN",
                                   author="agent@ars.test", now=now)
        session.flush()
        planned = approve_bulletin(app.env, session, bulletin.id, "agent@ars.test")
        status = bulletin.status
    if planned != n or status != "approved":
        raise SystemExit(f"approval planned {planned} ({status}), expected {n} left to the daemon")
    return int(bulletin.id)


def signing_rss_mb(sink_pid: int | None) -> float:
    """The largest RSS among this process's children but the sink and multiprocessing's
    resource tracker: the signing processes, while they live."""
    largest = 0.0
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            if int(pid) == sink_pid:
                continue
            try:
                if b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    continue
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        largest = max(largest, int(line.split()[1]) / 1024)
            except OSError:
                continue  # gone meanwhile
    return largest


def end_to_end(app: Any, n: int, sink: Sink, stats: FanOutStats, samples: list[float],
               signing: list[float]) -> tuple[float, float]:
    """Approval -> last message counted at the sink, as the daemon runs it; (seconds, seconds to
    the last message queued). ``samples``: this process's RSS; ``signing``: the signing processes'."""
    sender = Sender(app.settings, app.factory, SystemClock(), "bench", on_permanent_failure=None)
    stop_sampling = threading.Event()

    def sample_rss() -> None:
        while not stop_sampling.wait(0.25):
            samples.append(current_rss_mb())
            signing.append(signing_rss_mb(sink.proc.pid))

    async def run() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        task = asyncio.create_task(sender.run(stop))
        def wake() -> None:
            loop.call_soon_threadsafe(sender.wake)

        fanned = await asyncio.to_thread(fan_out_approved, app.env, app.factory, wake, stats)
        queued_at = time.perf_counter() - t0
        if fanned != n:
            raise SystemExit(f"fan-out planned {fanned}, expected {n}")
        sender.wake()
        while sink.count.value < n:
            await asyncio.sleep(0.005)
        took = time.perf_counter() - t0
        stop.set()
        await task
        stop_sampling.set()
        sampler.join()
        return took, queued_at

    return asyncio.run(run())


def deliver_with_smtplib(app: Any, port: int, limit: int) -> tuple[float, float, int]:
    """The same final bytes (the first ``limit``), streamed from the outbox, over one plain smtplib connection."""
    t0, c0, sent = time.perf_counter(), time.process_time(), 0
    with reading(app.factory) as session, smtplib.SMTP("127.0.0.1", port, local_hostname="bench.localhost") as smtp:
        rows = session.execute(select(OutboundMessage.mail_from, OutboundMessage.recipient, OutboundMessage.raw)
                               .order_by(OutboundMessage.id).limit(limit).execution_options(yield_per=500))
        for mail_from, rcpt, raw in rows:
            smtp.sendmail(mail_from, [rcpt], raw)
            sent += 1
    return time.perf_counter() - t0, time.process_time() - c0, sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=4, help="relay connections of the sender")
    parser.add_argument("--signing-processes", type=int, default=0, help="0: one per CPU")
    parser.add_argument("--in-thread", action="store_true", help="sign in the fan-out's thread (comparison)")
    parser.add_argument("--reference", type=int, default=10_000,
                        help="messages smtplib sends for the reference rate (at most --recipients)")
    args = parser.parse_args()
    n = args.recipients

    work = Path(tempfile.mkdtemp(prefix="mailgw-fanout-"))
    sink = Sink()
    try:
        key = rsa_key()
        key_file = work / "rsa.pem"
        key_file.write_bytes(key.pem)
        settings = bulletin_settings(
            f"sqlite:///{work / 'bench.db'}",
            relay={"host": "127.0.0.1", "port": sink.port, "concurrency": args.concurrency,
                   "local_hostname": "gw.ars.test", "timeout_seconds": 30},
            outbound={"bounce_domain": "ars.test"},
            dkim={"domain": "ars.test", "keys": [{"selector": "rsa", "algorithm": "rsa-sha256",
                                                  "private_key_file": str(key_file)}]},
            bulletins={"signing_processes": args.signing_processes},
        )
        app = build_app(settings, clock=SystemClock())
        if args.in_thread:
            app.composer.signer = _InThread(app.composer.signer)
        for start in range(0, n, 5_000):  # in slices: the directory's import is not what is measured
            with transaction(app.factory) as session:
                fill_directory(session, datetime.now(UTC), min(5_000, n - start), start=start)
        rss_start = rss_mb()
        approve(app, n)

        stats, samples = FanOutStats(), [current_rss_mb()]
        cpu0, children0 = time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN)
        sink0 = sink.cpu_seconds()
        signing_rss: list[float] = [0.0]
        took, queued_at = end_to_end(app, n, sink, stats, samples, signing_rss)
        ours_cpu = time.process_time() - cpu0
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        signing_cpu = (children.ru_utime + children.ru_stime) - (children0.ru_utime + children0.ru_stime)
        sink_fanout = sink.cpu_seconds() - sink0
        rss_fanout = rss_mb()
        load_during = os.getloadavg()

        sink0 = sink.cpu_seconds()
        reference = min(n, args.reference)
        plain_seconds, plain_cpu, plain = deliver_with_smtplib(app, sink.port, reference)
        sink_plain = sink.cpu_seconds() - sink0
        if plain != reference or sink.count.value != n + reference:
            raise SystemExit(f"smtplib run: sent {plain}, sink counted {sink.count.value - n}, expected {reference}")
        app.close()

        rate, plain_rate = n / took, plain / plain_seconds
        signing = "in the fan-out's thread" if stats.in_process else \
            f"{len(stats.signing_processes)} signing processes" + (f", {stats.fallbacks} fallbacks" if stats.fallbacks
                                                                    else "")
        print(f"recipients                      {n}   ({signing}, {args.concurrency} relay connections)")
        print(f"approval -> last at the relay   {rate:8.0f} msg/s  ({took:.2f} s)   target >= 1000, "
              f"40,000 in < 60 s")
        print(f"smtplib, one connection         {plain_rate:8.0f} msg/s  ({plain_seconds:.2f} s for {plain})")
        print(f"ratio end to end / smtplib      {rate / plain_rate:8.2f}         target >= 0.6")
        print(f"approval -> last queued         {queued_at:8.2f} s   ({stats.batches} batches committed)")
        print(f"fan-out thread: composing {stats.composed:.2f} s, waiting for signatures {stats.signing_wait:.2f} s, "
              f"write gate + insert + commit {stats.inserting:.2f} s")
        print(f"CPU per message, end to end:  this process {1e6 * ours_cpu / n:5.0f} µs (fan-out + sender), "
              f"signing processes {1e6 * signing_cpu / n:5.0f} µs, sink {1e6 * sink_fanout / n:5.0f} µs")
        print(f"CPU per message, smtplib run: smtplib {1e6 * plain_cpu / plain:5.0f} µs, "
              f"sink {1e6 * sink_plain / plain:5.0f} µs")
        print(f"RSS: start {rss_start:.0f} MB; during the fan-out {min(samples):.0f}-{max(samples):.0f} MB; "
              f"peak {rss_fanout:.0f} MB (this process)   target <= 150 MB, flat; "
              f"signing processes peak {max(signing_rss):.0f} MB (sampled)")
        load = os.getloadavg()
        print(f"machine: {os.cpu_count()} CPUs, load average {load_during[0]:.1f} at the end of the fan-out, "
              f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f} now")
    finally:
        sink.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
