"""Helpers for the chaos tests (tests/chaos) and the intake benchmark: an MTA-like client that
retries until it gets a 250, numbered declarations, and tallies read straight from the database
and from the relay.

What "lost" and "duplicate" mean here is the README's *Guarantees* section:

* lost: a message that got a ``250`` from the gateway but never became a processed inbound row
  with a case;
* duplicate case: two cases for one declaration (one Message-ID);
* duplicate acknowledgement: the relay received the mail of one (recipient, case) more than once.
  Re-sends keep their Message-ID, so they are told apart from a second, distinct mail.
"""

from __future__ import annotations

import email
import re
import smtplib
import sqlite3
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from email import policy
from pathlib import Path

from tests.support.gateway import DECLARATION, GatewayConfig
from tests.support.servers import ReceivedMessage

REF_RE = re.compile(r"\[(SSI-[A-Z]+-\d{4}-\d+)\]")
DIGEST_ROW_RE = re.compile(r"^== \d+\. (SSI-[A-Z]+-\d{4}-\d+) ", re.MULTILINE)


def _plain(msg: email.message.Message) -> str:
    part = msg.get_body(("plain",)) if isinstance(msg, email.message.EmailMessage) else None
    return str(part.get_content()) if part is not None else ""


class ChaosConfig(GatewayConfig):
    """GatewayConfig with the knobs chaos runs need: no intake rate limit (one loopback client
    sends hundreds of messages), short relay leases (a killed sender's rows come back in seconds,
    not the default five minutes) and a short relay timeout."""

    lease_seconds: float = 4.0
    relay_timeout_seconds: float = 2.0
    database_url: str | None = None  # None: the SQLite file ``db_path``

    def write(self) -> Path:
        path = super().write()
        text = path.read_text(encoding="utf-8")
        if self.database_url is not None:
            text = text.replace(f'url = "sqlite:///{self.db_path}"', f'url = "{self.database_url}"', 1)
        text = text.replace('server_hostname = "gateway.test"\n',
                            'server_hostname = "gateway.test"\nrate_limit_per_minute = 0\n', 1)
        text = text.replace("retry_max_seconds = 2.0\n",
                            f"retry_max_seconds = 2.0\nlease_seconds = {self.lease_seconds}\n"
                            f"timeout_seconds = {self.relay_timeout_seconds}\n", 1)
        path.write_text(text, encoding="utf-8")
        return path


def numbered_declaration(n: int, *, tag: str = "chaos") -> tuple[bytes, str, str]:
    """Declaration number ``n``: (raw, Message-ID without brackets, declarant address).

    Each has its own declarant, so the per-recipient auto-reply cap (docs/guarantees.md) never applies,
    and its own Message-ID, so content-hash dedup treats them as distinct messages.
    """
    mid = f"{tag}-{n}@chu-nantes.test"
    declarant = f"rssi-{n}@chu-nantes.test"
    raw = (DECLARATION.replace("<decl-1@chu-nantes.test>", f"<{mid}>")
           .replace("From: Jeanne Martin <dsi@chu-nantes.test>", f"From: Jeanne Martin <{declarant}>"))
    return raw.encode(), mid, declarant


@dataclass
class Delivery:
    """What an MTA-like client saw for one message."""

    attempts: int = 0
    accepted: bool = False
    answer: str = ""


def mta_send(port: int, raw: bytes, mail_from: str, to: Sequence[str] = ("ssi-pdl@ars.test",), *,
             give_up_at: float, pause: float = 0.1, timeout: float = 10.0) -> Delivery:
    """Send like an MTA (RFC 5321 §4.5.4.1): on a refused or dropped connection, a timeout or a
    4xx, try again later with the same bytes; stop at the first 2xx. A 5xx is final."""
    result = Delivery()
    while time.monotonic() < give_up_at:
        result.attempts += 1
        try:
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=timeout) as s:
                s.sendmail(mail_from, list(to), raw)
            result.accepted = True
            return result
        except smtplib.SMTPResponseException as exc:
            result.answer = f"{exc.smtp_code} {exc.smtp_error!r}"
            if exc.smtp_code >= 500:
                return result
        except smtplib.SMTPRecipientsRefused as exc:
            result.answer = repr(exc.recipients)
            codes = [code for code, _msg in exc.recipients.values()]
            if all(code >= 500 for code in codes):
                return result
        except (OSError, smtplib.SMTPException) as exc:  # refused, reset, disconnected mid-DATA
            result.answer = f"{type(exc).__name__}: {exc}"
        time.sleep(pause)
    return result


@dataclass
class DbTally:
    inbound_total: int
    inbound_received: int  # not processed yet
    by_message_id: dict[str, list[tuple[str, int | None]]]  # Message-ID -> [(status, case_id)]
    cases: int
    outbox_by_status: dict[str, int]


def db_tally(db_path: Path) -> DbTally:
    """Counts read through a read-only connection (WAL: never blocks the daemon's writer)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute("SELECT message_id, status, case_id FROM inbound_messages").fetchall()
        by_mid: dict[str, list[tuple[str, int | None]]] = defaultdict(list)
        received = 0
        for mid, status, case_id in rows:
            if status == "received":
                received += 1
            if mid:
                by_mid[mid.strip("<>")].append((status, case_id))
        cases = conn.execute("SELECT count(*) FROM cases").fetchone()[0]
        outbox = dict(conn.execute("SELECT status, count(*) FROM outbound_messages GROUP BY status").fetchall())
    finally:
        conn.close()
    return DbTally(len(rows), received, dict(by_mid), cases, outbox)


def case_origins(db_path: Path) -> dict[str, list[str]]:
    """Message-ID of each declaration -> references of the cases opened from it."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute(
            "SELECT i.message_id, c.reference FROM cases c JOIN inbound_messages i ON i.case_id = c.id "
            "WHERE i.id = (SELECT min(i2.id) FROM inbound_messages i2 WHERE i2.case_id = c.id)").fetchall()
    finally:
        conn.close()
    out: dict[str, list[str]] = defaultdict(list)
    for mid, ref in rows:
        out[(mid or "").strip("<>")].append(ref)
    return dict(out)


@dataclass
class RelayTally:
    """Mail received by the relay, grouped by (recipient, case reference)."""

    groups: dict[tuple[str, str], list[str]]  # -> Message-IDs, one per copy received
    unreferenced: int

    @property
    def copies(self) -> int:
        return sum(len(v) for v in self.groups.values())

    def resent(self) -> dict[tuple[str, str], list[str]]:
        """Groups received more than once."""
        return {k: v for k, v in self.groups.items() if len(v) > 1}

    def distinct_mails(self) -> dict[tuple[str, str], set[str]]:
        """Groups with more than one distinct Message-ID: a second mail, not a re-send."""
        return {k: set(v) for k, v in self.groups.items() if len(set(v)) > 1}


def relay_tally(messages: Sequence[ReceivedMessage]) -> RelayTally:
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    unreferenced = 0
    for m in messages:
        msg = email.message_from_bytes(m.raw, policy=policy.default)
        found = REF_RE.search(str(msg.get("Subject", "")))
        # A staff digest of a wave (processing/wave.py) tells each case it lists: one row each.
        refs = DIGEST_ROW_RE.findall(_plain(msg)) if "Afflux de déclarations" in str(msg.get("Subject", "")) else []
        if not refs and found is not None:
            refs = [found.group(1)]
        if not refs:
            unreferenced += 1
            continue
        for ref in refs:
            for rcpt in m.rcpt_tos:
                groups[(rcpt.lower(), ref)].append(str(msg.get("Message-ID", "")))
    return RelayTally(dict(groups), unreferenced)
