"""Queue a batch of already composed and signed messages in one statement (bulletin fan-out).

``outbox.enqueue`` inserts one row per call inside the transaction that decided to send it. A
fan-out composes and signs a whole batch *before* its write transaction (bulletins/fanout.py), so
the transaction only inserts: one multi-row ``INSERT … ON CONFLICT (idempotency_key) DO NOTHING
RETURNING`` per batch holds SQLite's write lock for milliseconds, not for the seconds the
composing and signing took. The rows are the same as ``outbox.enqueue``'s: a fresh VERP token per
row, the same deadline, the same idempotency key (a batch re-run after a crash inserts nothing twice).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from mailgateway.dispatch.outbox import new_verp_token, verp_address
from mailgateway.settings import Settings
from mailgateway.store.models import OutboundMessage

__all__ = ["Ready", "enqueue_many"]

@dataclass(frozen=True)
class Ready:
    """One message with its final bytes, for ``recipient`` (lower-case)."""

    idempotency_key: str
    recipient: str
    message_id: str
    raw: bytes


def enqueue_many(session: Session, messages: Sequence[Ready], *, kind: str, now: datetime, settings: Settings,
                 bulletin_id: int | None = None, priority: int = 0) -> dict[str, int]:
    """Queue ``messages``; return the outbox id of each idempotency key, whether inserted now or
    by an earlier run (then its row is left as it is: at-least-once, never twice)."""
    if not messages:
        return {}
    deadline = now + timedelta(hours=settings.relay.retry_deadline_hours)
    values: list[dict[str, Any]] = []
    for m in messages:
        token = new_verp_token()
        values.append({
            "idempotency_key": m.idempotency_key, "kind": kind, "case_id": None, "bulletin_id": bulletin_id,
            "message_id": m.message_id, "verp_token": token, "mail_from": verp_address(settings, token),
            "recipient": m.recipient, "raw": m.raw, "priority": priority, "status": "queued", "attempts": 0,
            "created_at": now, "next_attempt_at": now, "deadline_at": deadline,
        })
    conn = session.connection()  # Core executemany (insertmanyvalues: multi-row VALUES), no ORM objects
    ids = {str(key): int(oid) for oid, key in conn.execute(_insert_statement(conn.dialect.name), values)}
    del values
    missing = [m.idempotency_key for m in messages if m.idempotency_key not in ids]
    if missing:
        m_ = OutboundMessage
        ids.update((str(key), int(oid)) for oid, key in conn.execute(
            select(m_.id, m_.idempotency_key).where(m_.idempotency_key.in_(missing))))
    return ids


@cache
def _insert_statement(dialect: str) -> Any:
    insert_ = pg_insert if dialect == "postgresql" else sqlite_insert
    table = cast(Table, OutboundMessage.__table__)
    return (insert_(table).on_conflict_do_nothing(index_elements=["idempotency_key"])
            .returning(table.c.id, table.c.idempotency_key))
