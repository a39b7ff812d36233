"""Operations test data: a known database content for ``status`` and the metrics gauges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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
