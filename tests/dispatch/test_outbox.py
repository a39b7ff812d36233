"""The outbox: idempotent enqueue with a VERP return path, bounce attribution, operator helpers."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.clock import aware
from mailgateway.dispatch import outbox
from mailgateway.settings import OutboundSettings, RelaySettings, Settings
from mailgateway.store.engine import transaction
from mailgateway.store.models import OutboundMessage

NOW = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
SETTINGS = dataclasses.replace(
    Settings(),
    outbound=OutboundSettings(bounce_domain="ars.test", bounce_local_part="rebonds"),
    relay=RelaySettings(retry_deadline_hours=48),
)


def put(session: Session, key: str, recipient: str = "ssi@chu.test", **kw: object) -> OutboundMessage | None:
    args: dict[str, object] = dict(raw=b"Subject: x\r\n\r\nbody\r\n", recipient=recipient,
                                   message_id=f"<{key}@ars.test>", idempotency_key=key, kind="accuse_reception",
                                   now=NOW, settings=SETTINGS)
    args.update(kw)
    return outbox.enqueue(session, **args)  # type: ignore[arg-type]


def test_enqueue_inserts_a_queued_row_with_a_verp_return_path(db_factory: sessionmaker[Session]) -> None:
    with transaction(db_factory) as session:
        row = put(session, "k1")
        assert row is not None
    with db_factory() as session:
        stored = session.get(OutboundMessage, row.id)
        assert stored is not None
        assert stored.status == "queued" and stored.attempts == 0
        assert stored.mail_from == f"rebonds+{stored.verp_token}@ars.test"
        assert len(stored.verp_token) >= 16
        assert aware(stored.next_attempt_at) == NOW
        assert aware(stored.deadline_at) == NOW + timedelta(hours=48)
        assert stored.raw == b"Subject: x\r\n\r\nbody\r\n"


def test_each_row_gets_its_own_verp_token(db_factory: sessionmaker[Session]) -> None:
    with transaction(db_factory) as session:
        a, b = put(session, "a"), put(session, "b")
        assert a is not None and b is not None
        assert a.verp_token != b.verp_token


def test_a_second_enqueue_with_the_same_key_is_a_noop_and_keeps_the_transaction(
    db_factory: sessionmaker[Session],
) -> None:
    with transaction(db_factory) as session:
        assert put(session, "same") is not None
    with transaction(db_factory) as session:
        assert put(session, "same", recipient="other@chu.test") is None
        # The caller's transaction is still usable (no aborted PostgreSQL transaction).
        assert put(session, "next") is not None
    with db_factory() as session:
        rows = session.scalars(select(OutboundMessage).order_by(OutboundMessage.id)).all()
        assert [(r.idempotency_key, r.recipient) for r in rows] == [("same", "ssi@chu.test"), ("next", "ssi@chu.test")]


def test_a_rolled_back_decision_sends_nothing(db_factory: sessionmaker[Session]) -> None:
    try:
        with transaction(db_factory) as session:
            put(session, "k")
            raise RuntimeError("processing failed")
    except RuntimeError:
        pass
    with db_factory() as session:
        assert session.scalar(select(func.count()).select_from(OutboundMessage)) == 0


def test_bounces_are_attributed_by_verp_token_or_message_id(db_factory: sessionmaker[Session]) -> None:
    with transaction(db_factory) as session:
        row = put(session, "k")
        assert row is not None
        token, mid = row.verp_token, row.message_id
    with transaction(db_factory) as session:
        found = outbox.find_by_verp(session, token.upper())
        assert found is not None and found.idempotency_key == "k"
        found = outbox.find_by_message_id(session, mid.strip("<>"))
        assert found is not None and found.idempotency_key == "k"
        assert outbox.find_by_verp(session, "0" * 20) is None
        outbox.mark_bounced(session, found, NOW, "550 5.1.1 user unknown")
    with db_factory() as session:
        stored = session.get(OutboundMessage, row.id)
        assert stored is not None and stored.status == "bounced"
        assert stored.bounced_at is not None and stored.last_answer == "550 5.1.1 user unknown"


def test_retry_requeues_a_failed_row_now_but_never_a_sent_one(db_factory: sessionmaker[Session]) -> None:
    with transaction(db_factory) as session:
        failed, sent = put(session, "f"), put(session, "s")
        assert failed is not None and sent is not None
        failed.status, failed.deadline_at = "expired", NOW - timedelta(hours=1)
        sent.status = "sent"
    later = NOW + timedelta(hours=3)
    with transaction(db_factory) as session:
        assert outbox.retry(session, failed.id, later) is True
        assert outbox.retry(session, sent.id, later) is False
        assert outbox.retry(session, 999_999, later) is False
    with db_factory() as session:
        row = session.get(OutboundMessage, failed.id)
        assert row is not None and row.status == "queued"
        assert aware(row.next_attempt_at) == later and aware(row.deadline_at) > later


def test_queue_stats_counts_by_status_and_ages_the_oldest_queued_row(db_factory: sessionmaker[Session]) -> None:
    with transaction(db_factory) as session:
        put(session, "old", now=NOW - timedelta(minutes=10))
        put(session, "new")
        done = put(session, "done", now=NOW - timedelta(hours=5))
        assert done is not None
        done.status = "sent"
    with db_factory() as session:
        stats = outbox.queue_stats(session, NOW)
        listed = outbox.list_rows(session, limit=2)
    assert stats == {"by_status": {"queued": 2, "sent": 1}, "oldest_queued_seconds": 600.0}
    assert [r["status"] for r in listed] == ["sent", "queued"]  # newest first
    assert set(listed[0]) >= {"id", "recipient", "attempts", "next_attempt_at", "last_answer"}
