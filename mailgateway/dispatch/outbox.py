"""The outbox: one row per outbound message and recipient, with its final bytes (README, "How it works").

Rows are inserted in the transaction that decided to send them, so a rolled-back decision sends
nothing and a committed one is never lost. The idempotency key makes a second decision for the
same logical mail (reprocessing after a crash) a no-op.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache, lru_cache
from typing import Any, Literal, cast

from sqlalchemy import Table, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from mailgateway.clock import aware
from mailgateway.settings import Settings
from mailgateway.store import fast
from mailgateway.store.inserted import attach_inserted
from mailgateway.store.models import OutboundMessage

# VERP tokens: 128 random bits, fresh for every row, stored with it. A DSN naming one proves it
# came from the path of that one message: nobody outside can compute or guess it.
VERP_TOKEN_BYTES = 16


def new_verp_token() -> str:
    """Lower-case hex: the local part survives case-folding relays (RFC 5321 §2.4)."""
    return secrets.token_hex(VERP_TOKEN_BYTES)


def verp_address(settings: Settings, token: str) -> str:
    """VERP return path (bounces+<token>@domain): a bounce names its outbox row exactly."""
    return f"{settings.outbound.bounce_local_part}+{token}@{settings.bounce_domain}"


def enqueue(
    session: Session,
    *,
    raw: bytes,
    recipient: str,
    message_id: str,
    idempotency_key: str,
    kind: str,
    now: datetime,
    settings: Settings,
    case_id: int | None = None,
    bulletin_id: int | None = None,
    priority: int = 0,
    return_path_token: str | None = None,
) -> OutboundMessage | None:
    """Queue ``raw`` for ``recipient``; None (nothing inserted) when the key is already queued.

    ``return_path_token``: a row of one message to several recipients (``Mailer.send_to_staff``)
    shares the return path of the group's first row, whose token that is; the sender delivers
    rows of the same return path and bytes in one transaction (dispatch/sender.py ``_units``),
    and a bounce at that path names its recipient among them (``find_bounced``)."""
    token = new_verp_token()
    values: dict[str, Any] = {
        "idempotency_key": idempotency_key, "kind": kind, "case_id": case_id, "bulletin_id": bulletin_id,
        "message_id": message_id, "verp_token": token,
        "mail_from": verp_address(settings, return_path_token or token),
        "recipient": recipient, "raw": raw, "priority": priority, "status": "queued", "attempts": 0,
        "created_at": now, "next_attempt_at": now,
        "deadline_at": now + timedelta(hours=settings.relay.retry_deadline_hours),
    }
    # No flush first (issue 19): the row refers to nothing pending (case_id is a flushed case's),
    # and a flush per queued mail was a unit of work of its own on the processing hot path.
    with session.no_autoflush:
        new_id = fast.execute(session, _insert_statement(session.get_bind().dialect.name), values).scalar()
    if new_id is None:
        return None
    # The row is known: attach it to the session without reading it back (fan-out hot path).
    row = fast.build(OutboundMessage, {"id": new_id, **values})
    attach_inserted(session, row)
    return row


def queued_keys(session: Session, keys: Sequence[str]) -> set[str]:
    """Which of ``keys`` are already in the outbox (one indexed lookup: idempotency_key is unique)."""
    if not keys:
        return set()
    # Rows are inserted by statement (enqueue), never left pending: no flush needed to see them.
    found: set[str] = set()
    for start in range(0, len(keys), _KEYS_PER_QUERY):
        chunk = keys[start:start + _KEYS_PER_QUERY]
        found.update(str(key) for (key,) in fast.execute(
            session, _queued_keys_statement(len(chunk)), fast.any_of_params(chunk)).rows)
    return found


_KEYS_PER_QUERY = 32


@lru_cache(maxsize=_KEYS_PER_QUERY)
def _queued_keys_statement(count: int) -> Any:
    """Built once per number of keys, on the table's columns (issue 19: every staff notification
    asks, for as many keys as the region has staff)."""
    column = cast(Table, OutboundMessage.__table__).c.idempotency_key
    return select(column).where(fast.any_of(column, count))


@cache
def _insert_statement(dialect: str) -> Any:
    """One compiled INSERT per dialect, values bound at execution (no per-message compilation).
    ON CONFLICT DO NOTHING: a duplicate key neither raises nor poisons the caller's transaction."""
    insert_ = pg_insert if dialect == "postgresql" else sqlite_insert
    table = cast(Table, OutboundMessage.__table__)
    return (insert_(table).on_conflict_do_nothing(index_elements=["idempotency_key"])
            .returning(table.c.id))


def find_by_verp(session: Session, token: str) -> OutboundMessage | None:
    return session.scalar(select(OutboundMessage).where(OutboundMessage.verp_token == token.lower()))


def find_by_message_id(session: Session, message_id: str) -> OutboundMessage | None:
    mid = message_id.strip()
    if not mid.startswith("<"):
        mid = f"<{mid}>"
    return session.scalar(select(OutboundMessage).where(OutboundMessage.message_id == mid).limit(1))


@dataclass(frozen=True)
class BounceMatch:
    """The outbox rows a bounce is about, and how we know (directory/bounces.py evidence).

    ``rows``: every row of the message whose recipient the report names; for a message to one
    recipient, its row. Empty when the message went to several recipients (one return path,
    one Message-ID: ``enqueue``'s ``return_path_token``) and the report names none of them (a
    forwarding mailbox reports the address it forwarded to): nobody can be blamed, ``row`` is
    the message's for the record."""

    row: OutboundMessage
    evidence: Literal["verp", "message_id"]
    rows: tuple[OutboundMessage, ...]
    copies: tuple[OutboundMessage, ...]  # every row of the message, ``row`` first


# Recipients of one report looked up among a message's rows (a report lists each at most once).
BOUNCE_RECIPIENTS_READ = 100


def find_bounced(session: Session, verp_token: str | None, original_message_id: str | None,
                 recipients: Sequence[str] = ()) -> BounceMatch | None:
    """The outbox rows a bounce is about: by VERP token (exact, strong), else by a Message-ID that
    we actually sent (weaker: Message-IDs travel in replies and forwards). None: nothing of ours,
    the bounce must count for nothing (a guessed or foreign identifier).

    A message to several recipients shares its first row's return path (``enqueue``): the rows
    are those of the recipients the report names (RFC 3464 Original-/Final-Recipient), among that
    message's rows only — never another message's, never by the returned message's To."""
    row = find_by_verp(session, verp_token) if verp_token else None
    evidence: Literal["verp", "message_id"] = "verp"
    if row is None and original_message_id:
        row, evidence = find_by_message_id(session, original_message_id), "message_id"
    if row is None:
        return None
    siblings = list(session.scalars(select(OutboundMessage).where(
        OutboundMessage.message_id == row.message_id, OutboundMessage.mail_from == row.mail_from,
        OutboundMessage.id != row.id).order_by(OutboundMessage.id).limit(STAFF_ROWS_READ)))
    if not siblings:
        return BounceMatch(row, evidence, (row,), (row,))
    named = {r.strip().lower() for r in recipients[:BOUNCE_RECIPIENTS_READ] if r and r.strip()}
    copies = (row, *siblings)
    # Only copies the relay took can come back: a report naming an agent whose copy is still
    # queued (a 4xx for that RCPT) is about nothing we sent them; it must not cancel that copy
    # (found by an outside tester: every agent of the message sees the shared return path).
    return BounceMatch(row, evidence, tuple(r for r in copies
                                            if r.recipient in named and r.status in ("sent", "bounced")), copies)


# Rows of one message read to attribute a report (a message to staff has at most 50 recipients:
# dispatch/mailer.py STAFF_MESSAGE_MAX_RECIPIENTS).
STAFF_ROWS_READ = 200


def mark_bounced(session: Session, row: OutboundMessage, now: datetime, diagnostic: str) -> None:
    row.bounced_at = now
    if row.status in ("queued", "sending", "sent"):
        row.status = "bounced"
    row.last_answer = diagnostic[:2000]


# Every state of an outbox row (``outbox list --status``); see OutboundMessage.status.
STATES = ("queued", "sending", "sent", "failed", "expired", "refused", "bounced", "cancelled")


def list_rows(session: Session, limit: int = 1000, status: str | None = None) -> list[dict[str, Any]]:
    stmt = select(OutboundMessage)
    if status is not None:
        stmt = stmt.where(OutboundMessage.status == status)
    rows = session.scalars(stmt.order_by(OutboundMessage.id.desc()).limit(limit))
    return [
        {"id": r.id, "status": r.status, "kind": r.kind, "recipient": r.recipient, "attempts": r.attempts,
         "message_id": r.message_id, "priority": r.priority, "created_at": aware(r.created_at).isoformat(),
         "next_attempt_at": aware(r.next_attempt_at).isoformat(), "last_answer": r.last_answer,
         "case_id": r.case_id, "bulletin_id": r.bulletin_id}
        for r in rows
    ]


def retry(session: Session, outbound_id: int, now: datetime) -> bool:
    row = session.get(OutboundMessage, outbound_id)
    if row is None or row.status == "sent":
        return False
    row.status = "queued"
    row.next_attempt_at = now
    row.lease_until = None
    row.lease_owner = None
    if aware(row.deadline_at) < now:
        row.deadline_at = now + timedelta(days=1)
    return True


def queue_stats(session: Session, now: datetime) -> dict[str, Any]:
    by_status = dict(session.execute(
        select(OutboundMessage.status, func.count()).group_by(OutboundMessage.status)).all())
    oldest = session.scalar(select(func.min(OutboundMessage.created_at)).where(OutboundMessage.status == "queued"))
    return {"by_status": {str(k): int(v) for k, v in by_status.items()},
            "oldest_queued_seconds": (now - aware(oldest)).total_seconds() if oldest else 0.0}
