"""IMAP IDLE latency (README, "Benchmarks"): delivery into Dovecot -> accepted -> acknowledgement at the relay.

Starts a private Dovecot, an SMTP sink as the relay and the real daemon (``mailgateway run``) watching
one regional mailbox. Each declaration is delivered by LMTP to the regional mailbox and, right after
on the same connection, to a probe mailbox watched by a bare imapclient IDLE loop: the probe's wake-up is
Dovecot's own IDLE latency, the floor any IMAP client can reach, measured in the same run.

    .venv/bin/python benchmarks/imap_latency.py [--messages 50]

Prints p50/p95 for: Dovecot's IDLE wake-up, delivery -> accepted (stored in the database), and
delivery -> acknowledgement received by the relay. Targets: p50 <= 1.0 s, p95 <= 2.0 s (ack).
Runs as root (Dovecot); loopback only.
"""

from __future__ import annotations

import argparse
import email
import shutil
import smtplib
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.gateway import GatewayConfig, RunningGateway  # noqa: E402
from tests.support.servers import Dovecot, SmtpSink, wait_for  # noqa: E402

REGION_BOX = "ssi-pdl@ars.test"
PROBE_BOX = "probe@ars.test"

DECLARATION = """\
From: Déclarant {i} <dsi{i}@chu-nantes.test>
To: SSI Pays de la Loire <ssi-pdl@ars.test>
Subject: Déclaration d'incident {i} : rançongiciel
Message-ID: <bench-{i}-{stamp}@chu-nantes.test>
Date: Fri, 27 Nov 2026 09:12:00 +0100
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Numéro FINESS : 440000289
Nom de la structure : CHU de Nantes
Type d'incident : Rançongiciel
Date de détection : 27/11/2026 à 08h30
Gravité : grave

Message de mesure {i}.
"""


class Probe(threading.Thread):
    """A bare IDLE client: records when Dovecot announces each new message (RFC 2177)."""

    def __init__(self, dovecot: Dovecot) -> None:
        super().__init__(daemon=True)
        self.client = dovecot.imap(PROBE_BOX)
        self.client.select_folder("INBOX")
        self.wakeups: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        self.client.idle()
        while not self.stop.is_set():
            for response in self.client.idle_check(timeout=0.5):
                if len(response) > 1 and response[1] == b"EXISTS":
                    self.wakeups.append(time.time())
        self.client.idle_done()
        self.client.logout()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def accepted_times(db_path: Path, stamp: str) -> dict[int, float]:
    """Message number -> time it was stored (InboundMessage.received_at, UTC)."""
    found: dict[int, float] = {}
    with sqlite3.connect(db_path) as conn:
        for raw, received_at in conn.execute("SELECT raw, received_at FROM inbound_messages"):
            mid = email.message_from_bytes(raw)["Message-ID"] or ""
            if stamp in mid:
                i = int(mid.split("-")[1])
                at = datetime.fromisoformat(str(received_at))
                found[i] = (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50)
    args = parser.parse_args()
    stamp = str(int(time.time()))
    work = Path(tempfile.mkdtemp(prefix="mailgw-bench-imap-"))
    with Dovecot() as dovecot, SmtpSink() as sink:
        dovecot.add_user(REGION_BOX, "s3cret")
        dovecot.add_user(PROBE_BOX, "probe")
        imap = {"host": "127.0.0.1", "port": dovecot.imap_port, "tls": False, "username": REGION_BOX,
                "password_file": str(dovecot.password_file(REGION_BOX, work))}  # fmt: skip
        config = GatewayConfig(work / "gw", relay_port=sink.port, imap={"PDL": imap})
        with RunningGateway(config) as gateway:
            wait_for(lambda: '"idle"' in gateway.config.cli("status", "--json", check=False).stdout, timeout=20)
            probe = Probe(dovecot)
            probe.start()
            sent: dict[int, float] = {}
            acked: dict[int, float] = {}
            probe_sent: dict[int, float] = {}
            for i in range(args.messages):
                raw = DECLARATION.format(i=i, stamp=stamp).encode()
                # One LMTP transaction per mailbox (smtplib.LMTP reads one reply per DATA only),
                # back to back: the probe's clock starts a few ms after the gateway's.
                with smtplib.LMTP("127.0.0.1", dovecot.lmtp_port, local_hostname="bench.localhost") as lmtp:
                    sent[i] = time.time()
                    lmtp.sendmail(f"dsi{i}@chu-nantes.test", [REGION_BOX], raw)
                    probe_sent[i] = time.time()
                    lmtp.sendmail(f"dsi{i}@chu-nantes.test", [PROBE_BOX], raw)
                ack = wait_for(lambda i=i: sink.messages_to(f"dsi{i}@chu-nantes.test"), timeout=30)
                acked[i] = ack[0].received_at
                wait_for(lambda i=i: len(probe.wakeups) > i, timeout=10)
            probe.stop.set()
            probe.join(5)
            stored = accepted_times(config.db_path, stamp)
    shutil.rmtree(work, ignore_errors=True)
    idle = [w - probe_sent[i] for i, w in enumerate(probe.wakeups[: args.messages])]
    accept = [stored[i] - sent[i] for i in sent if i in stored]
    ack_lat = [acked[i] - sent[i] for i in sent]
    print(f"IMAP IDLE latency over {args.messages} messages (seconds)")
    print(f"{'measure':<40} {'p50':>7} {'p95':>7} {'max':>7}")
    for name, values in (
        ("Dovecot IDLE wake-up (bare client)", idle),
        ("delivery -> accepted (stored)", accept),
        ("delivery -> acknowledgement at relay", ack_lat),
    ):
        print(f"{name:<40} {statistics.median(values):7.3f} {pct(values, 95):7.3f} {max(values):7.3f}")
    ratio = statistics.median(ack_lat) / statistics.median(idle)
    print(f"ack p50 / Dovecot wake-up p50 = {ratio:.2f}x; target ack p50 <= 1.0 s, p95 <= 2.0 s")
    ok = statistics.median(ack_lat) <= 1.0 and pct(ack_lat, 95) <= 2.0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
