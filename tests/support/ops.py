"""Operations test data: a known database content for ``status`` and the metrics gauges."""

from __future__ import annotations

import socket
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from mailgateway.store.engine import transaction
from mailgateway.store.models import Case, InboundMessage, MailboxState, OutboundMessage

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def populate(factory: sessionmaker[Session]) -> None:
    """3 inbound processed (2 declarations, 1 reply), 1 quarantined unknown, 2 waiting; 3 pending
    outbound (oldest 10 min) and 1 sent; 2 open cases and 1 closed; two mailboxes, one failing."""
    with transaction(factory) as s:
        def inbound(n: int, status: str, kind: str | None) -> None:
            s.add(InboundMessage(sha256=f"{n:064x}", raw=b"x", size=1, source="smtp", status=status, kind=kind,
                                 received_at=NOW - timedelta(minutes=n)))

        inbound(1, "processed", "declaration")
        inbound(2, "processed", "declaration")
        inbound(3, "processed", "reply")
        inbound(4, "quarantined", "unknown")
        inbound(5, "received", None)
        inbound(6, "received", None)
        for n, (status, age) in enumerate([("queued", 10), ("queued", 2), ("sending", 1), ("sent", 60)]):
            s.add(OutboundMessage(idempotency_key=f"k{n}", kind="acknowledgement", message_id=f"<o{n}@ars.test>",
                                  verp_token=f"t{n}", mail_from="bounces@ars.test", recipient="dsi@chu.test",
                                  raw=b"x", status=status, created_at=NOW - timedelta(minutes=age),
                                  next_attempt_at=NOW, deadline_at=NOW + timedelta(days=5)))
        for n, (region, status) in enumerate([("ARA", "RECU"), ("PDL", "QUALIFIE"), ("ARA", "CLOS")], 1):
            s.add(Case(reference=f"SSI-{region}-2026-{n:04d}", region=region, kind="incident", status=status,
                       opened_at=NOW, updated_at=NOW))
        s.add(MailboxState(mailbox="ARA:INBOX", state="idle", last_contact_at=NOW - timedelta(minutes=1)))
        s.add(MailboxState(mailbox="PDL:INBOX", state="error", last_error="connection refused",
                           last_contact_at=NOW - timedelta(hours=1)))


class NotifyListener:
    """A fake systemd: a unix datagram socket collecting sd_notify messages in a thread."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[list[str]] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.messages.append(data.decode().split("\n"))
                self._cond.notify_all()

    def wait_for(self, line: str, *, after: int = 0, timeout: float = 20.0, count: int = 1) -> int:
        """Wait until ``line`` appeared ``count`` times in messages after index ``after``;
        return the index following the last match."""
        def found() -> int | None:
            seen = 0
            for i, msg in enumerate(self.messages[after:], after):
                if line in msg:
                    seen += 1
                    if seen >= count:
                        return i + 1
            return None

        with self._cond:
            if not self._cond.wait_for(lambda: found() is not None, timeout):
                raise AssertionError(f"{line!r} x{count} not notified in {timeout} s; got {self.messages}")
            index = found()
            assert index is not None
            return index

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
