"""Staff first (issue 19): how long an ARS agent waits for the receipt of a command sent during a
burst of declarations, through the real daemon on SQLite.

A declaration creates a case and its staff notification; then ``--count`` (300) declarations are
sent over 8 connections and, once ``--after`` (60) of them are stored, the agent's signed
``#qualifier significatif`` answering that notification. Measured: from the command's ``250`` to
its receipt (« Compte rendu de vos commandes ») at the relay, and from the burst's start to the
last declarant acknowledgement there. Two runs in one invocation: *with priority* (this code) and
*first come first served* (a SQLite trigger resets every accepted row's ``priority`` to 0: the
sweep then takes the burst in arrival order, as before issue 19), so both figures share one load.

Run: ``.venv/bin/python benchmarks/priority.py [--count 300] [--after 60] [--repeat 1]``.
"""

from __future__ import annotations

import argparse
import os
import smtplib
import sqlite3
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support, benchmarks

from benchmarks.intake import declarations, send_all
from tests.support import casemail
from tests.support.chaos import ChaosConfig
from tests.support.gateway import RunningGateway
from tests.support.servers import SmtpSink, wait_for

STAFF = "agent@ars.test"
FIFO_TRIGGER = ("CREATE TRIGGER fifo AFTER INSERT ON inbound_messages BEGIN "
                "UPDATE inbound_messages SET priority = 0 WHERE id = NEW.id; END")


def stored(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return int(conn.execute("SELECT count(*) FROM inbound_messages").fetchone()[0])
    finally:
        conn.close()


def subject(raw: bytes) -> str:
    return str(casemail.parse(raw)["Subject"] or "")


def run_once(workdir: Path, count: int, after: int, fifo: bool) -> tuple[float, float]:
    sink = SmtpSink().start()
    try:
        config = ChaosConfig(workdir, relay_port=sink.port, static_keys=casemail.staff_keys())
        config.cli("db", "upgrade")
        if fifo:
            with sqlite3.connect(config.db_path) as db:
                db.execute(FIFO_TRIGGER)
        mails = declarations(count + 1)
        with RunningGateway(config) as gw:
            gw.send(mails[0][1], mail_from=mails[0][0])
            wait_for(lambda: any("Nouvelle déclaration" in subject(m.raw) for m in sink.messages_to(STAFF)),
                     timeout=60, interval=0.05)
            notification = casemail.parse(sink.messages_to(STAFF)[0].raw)
            burst_started = time.time()
            burst = threading.Thread(target=send_all, args=(config.smtp_port, mails[1:], 8))
            burst.start()
            wait_for(lambda: stored(config.db_path) >= after + 1, timeout=60, interval=0.01)
            command = casemail.staff_mail("#qualifier significatif\n", sender=STAFF, to="ssi-pdl@ars.test",
                                          subject=f"RE: {notification['Subject']}",
                                          in_reply_to=str(notification["Message-ID"]), date=datetime.now(UTC))
            with smtplib.SMTP("127.0.0.1", config.smtp_port, local_hostname="client.test", timeout=30) as s:
                s.sendmail(STAFF, ["ssi-pdl@ars.test"], command)
            answered = time.time()

            def receipt() -> float | None:
                return next((m.received_at for m in sink.messages_to(STAFF)
                             if "Compte rendu de vos commandes" in subject(m.raw)), None)

            got: float = wait_for(receipt, timeout=300, interval=0.02)
            burst.join()
            acks = lambda: [m.received_at for m in sink.messages if any(r.startswith("rssi-") for r in m.rcpt_tos)]  # noqa: E731
            wait_for(lambda: len(acks()) >= count + 1, timeout=300, interval=0.05)
            return got - answered, max(acks()) - burst_started
    finally:
        sink.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--after", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; {args.count} declarations, the command after {args.after}")
    with tempfile.TemporaryDirectory(prefix="mg-priority-") as tmp:
        for n in range(args.repeat):
            for fifo in (True, False):
                label = "first come first served" if fifo else "with priority"
                staff, last_ack = run_once(Path(tmp) / f"{n}-{label[:4]}", args.count, args.after, fifo)
                print(f"  {label:<24} command 250 -> receipt at relay {staff:6.2f} s; "
                      f"burst start -> last declarant ack {last_ack:6.2f} s")
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
