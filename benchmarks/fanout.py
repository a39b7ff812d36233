"""Bulletin fan-out: queue N personalised, DKIM-signed messages, then deliver them to a relay.

The README's "Benchmarks" targets: the sender delivers ≥ 1,000 msg/s to a relay on loopback, at least half the rate
of plain ``smtplib`` pushing the same pre-rendered messages over one connection (the floor: no
database, no leases, no answers recorded), with a peak RSS ≤ 150 MB that does not grow with the
number of recipients.

Both runs deliver to the same kind of sink: an aiosmtpd server in a *separate process* that only
counts, so the sink neither shares the GIL with the code measured nor inflates its RSS.
Messages are built by the real composer (bulletin template) and signed by ``DkimSigner`` (RSA-2048),
then queued with ``outbox.enqueue`` on SQLite (the embedded default, synchronous=FULL).

Run: ``.venv/bin/python benchmarks/fanout.py [--recipients 10000] [--concurrency 4]``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing
import os
import resource
import shutil
import smtplib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support: keys, free ports

from sqlalchemy import select

from mailgateway.clock import SystemClock
from mailgateway.dispatch import outbox
from mailgateway.dispatch.compose import Composer, MailSpec
from mailgateway.dispatch.dkim import DkimSigner
from mailgateway.dispatch.render import Renderer
from mailgateway.dispatch.sender import Sender
from mailgateway.mail.context import loop_token_for
from mailgateway.settings import OutboundSettings, RelaySettings, Settings
from mailgateway.store.engine import make_engine, make_sessionmaker, transaction, upgrade
from mailgateway.store.models import OutboundMessage
from tests.support.dkim import rsa_key
from tests.support.servers import free_port

DOMAIN = "ars.test"
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


def queue_bulletin(factory: Any, settings: Settings, composer: Composer, n: int, chunk: int = 500,
                   on_chunk: Any = None, first: int = 0) -> float:
    """Compose, sign and enqueue one message per recipient, committing per chunk; seconds taken.
    ``on_chunk()`` after each commit (the daemon wakes its sender there: bulletins/fanout.py)."""
    t0 = time.perf_counter()
    clock = SystemClock()
    for start in range(first, first + n, chunk):
        if on_chunk is not None and start > first:
            on_chunk()
        with transaction(factory) as session:
            for i in range(start, min(first + n, start + chunk)):
                to = f"ssi{i}@etablissement{i % 977}.test"
                key = f"bulletin:1:{i}"
                composed = composer.compose(MailSpec(
                    template="bulletin", to=to, from_address=f"cert@{DOMAIN}", from_name="CERT Santé",
                    idempotency_key=key, auto_submitted="auto-generated", tlp="GREEN",
                    context={
                        "establishment": {"name": f"Centre hospitalier n°{i}", "finess": f"{750000000 + i:09d}"},
                        "bulletin": {"body": BODY, "tlp": "GREEN", "subject": "Vulnérabilité VPN critique"},
                        "service_name": "cellule sécurité", "region_name": "Île-de-France",
                        "region_address": f"securite@{DOMAIN}",
                    },
                ))
                outbox.enqueue(session, raw=composed.raw, recipient=to, message_id=composed.message_id,
                               idempotency_key=key, kind="bulletin", now=clock.now(), settings=settings,
                               priority=10)
    if on_chunk is not None:
        on_chunk()
    return time.perf_counter() - t0


def pipelined(factory: Any, settings: Settings, composer: Composer, n: int, sink: Sink) -> float:
    """What the daemon does after an approval: chunks composed, signed and committed in a thread
    while the sender, woken after each chunk, delivers the previous ones. Seconds from the start
    to the last message counted at the sink."""
    sender = Sender(settings, factory, SystemClock(), "bench-pipe", on_permanent_failure=None)
    target = sink.count.value + n

    async def run() -> float:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        t0 = time.perf_counter()
        task = asyncio.create_task(sender.run(stop))
        await asyncio.to_thread(queue_bulletin, factory, settings, composer, n,
                                on_chunk=lambda: loop.call_soon_threadsafe(sender.wake), first=n)
        while sink.count.value < target:
            await asyncio.sleep(0.01)
        took = time.perf_counter() - t0
        stop.set()
        await task
        return took

    return asyncio.run(run())


def deliver_with_sender(factory: Any, settings: Settings) -> tuple[float, float, int]:
    """Seconds, CPU seconds of this process, messages sent."""
    sender = Sender(settings, factory, SystemClock(), "bench", on_permanent_failure=None)
    t0, c0 = time.perf_counter(), time.process_time()
    result = asyncio.run(sender.flush())
    return time.perf_counter() - t0, time.process_time() - c0, result.sent


def deliver_with_smtplib(factory: Any, port: int) -> tuple[float, float, int]:
    with factory() as session:
        batch = [tuple(r) for r in session.execute(select(OutboundMessage.mail_from, OutboundMessage.recipient,
                                                          OutboundMessage.raw).order_by(OutboundMessage.id))]
    t0, c0 = time.perf_counter(), time.process_time()
    with smtplib.SMTP("127.0.0.1", port, local_hostname="bench.localhost") as smtp:
        for mail_from, rcpt, raw in batch:
            smtp.sendmail(mail_from, [rcpt], raw)
    return time.perf_counter() - t0, time.process_time() - c0, len(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    n = args.recipients

    work = Path(tempfile.mkdtemp(prefix="mailgw-fanout-"))
    sink = Sink()
    try:
        url = f"sqlite:///{work / 'bench.db'}"
        upgrade(url)
        engine = make_engine(url)
        factory = make_sessionmaker(engine)
        settings = dataclasses.replace(
            Settings(),
            relay=RelaySettings(host="127.0.0.1", port=sink.port, concurrency=args.concurrency,
                                local_hostname="gw.ars.test", timeout_seconds=30),
            outbound=OutboundSettings(bounce_domain=DOMAIN),
        )
        signer = DkimSigner(DOMAIN, [rsa_key().signing_key()])
        composer = Composer(Renderer(), signer, SystemClock(), DOMAIN, loop_token_for(DOMAIN))
        rss_start = rss_mb()

        queued = queue_bulletin(factory, settings, composer, n)
        rss_queued = rss_mb()
        sink0 = sink.cpu_seconds()
        sender_seconds, sender_cpu, sent = deliver_with_sender(factory, settings)
        sink_sender = sink.cpu_seconds() - sink0
        rss_sent = rss_mb()
        if sent != n or sink.count.value != n:
            raise SystemExit(f"sender delivered {sent}, sink counted {sink.count.value}, expected {n}")
        sink0 = sink.cpu_seconds()
        plain_seconds, plain_cpu, plain = deliver_with_smtplib(factory, sink.port)
        sink_plain = sink.cpu_seconds() - sink0
        if sink.count.value != 2 * n:
            raise SystemExit(f"smtplib run: sink counted {sink.count.value - n} of {plain}")
        piped = pipelined(factory, settings, composer, n, sink)
        rss_piped = rss_mb()
        engine.dispose()

        sender_rate, plain_rate = n / sender_seconds, plain / plain_seconds
        print(f"recipients                     {n}")
        print(f"compose + sign + enqueue       {n / queued:8.0f} msg/s  ({queued:.2f} s)")
        print(f"sender -> relay (x{args.concurrency} conns)     {sender_rate:8.0f} msg/s  ({sender_seconds:.2f} s)"
              f"   target >= 1000")
        print(f"smtplib, one connection        {plain_rate:8.0f} msg/s  ({plain_seconds:.2f} s)")
        for label, ours, theirs in (("sender run: ", sender_cpu, sink_sender), ("smtplib run:", plain_cpu, sink_plain)):
            print(f"CPU per message, {label}  ours {1e6 * ours / n:5.0f} µs, sink {1e6 * theirs / n:5.0f} µs")
        print(f"ratio sender / smtplib         {sender_rate / plain_rate:8.2f}         target >= 0.6")
        print(f"queue then send (sequential)   {n / (queued + sender_seconds):8.0f} msg/s  "
              f"({queued + sender_seconds:.2f} s)   {n / (queued + sender_seconds) / plain_rate:5.2f} x smtplib")
        print(f"queue || send (pipelined)      {n / piped:8.0f} msg/s  ({piped:.2f} s)   "
              f"{n / piped / plain_rate:5.2f} x smtplib   (approval -> last message at the relay)")
        print(f"peak RSS: start {rss_start:.0f} MB, after queueing {rss_queued:.0f} MB, "
              f"after sending {rss_sent:.0f} MB, after the pipelined run {rss_piped:.0f} MB   target <= 150 MB")
        load = os.getloadavg()
        print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    finally:
        sink.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
