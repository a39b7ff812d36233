"""Statements run on the driver's cursor (store/fast.py) store and return what SQLAlchemy would,
on SQLite and on PostgreSQL: the same parameters processed by the same types, errors raised as
SQLAlchemy's (the processing runner retries an OperationalError and quarantines anything else)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, cast

import pytest
from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.store import fast
from mailgateway.store.engine import transaction
from mailgateway.store.models import AutoReplyLog, OutboundMessage, StaffNoticeLog

NOW = datetime(2026, 12, 6, 7, 30, 15, 123456, tzinfo=UTC)


def _outbound(key: str, raw: bytes = b"Subject: x\r\n\r\n\xe9t\xe9\r\n") -> dict[str, Any]:
    return {"idempotency_key": key, "kind": "accuse", "case_id": None, "bulletin_id": None,
            "message_id": f"<{key}@ars.test>", "verp_token": key, "mail_from": "b@ars.test",
            "recipient": "rssi@chu.test", "raw": raw, "priority": 3, "status": "queued", "attempts": 0,
            "created_at": NOW, "next_attempt_at": NOW + timedelta(seconds=1),
            "deadline_at": NOW + timedelta(hours=48)}


# Statements are built once and kept, as on the hot path (fast keys its cache by the object).
@cache
def _insert_returning() -> Any:
    table = cast(Table, OutboundMessage.__table__)
    return insert(table).returning(table.c.id, table.c.created_at)


@cache
def _log_insert() -> Any:
    return insert(cast(Table, AutoReplyLog.__table__))


@cache
def _log_since() -> Any:
    c = AutoReplyLog.__table__.c
    return (select(c.recipient, c.at, c.verified).where(c.at >= bindparam("since"))
            .order_by(c.id))


@cache
def _requeue() -> Any:
    c = OutboundMessage.__table__.c
    return update(OutboundMessage.__table__).where(c.status == "queued", c.priority == bindparam("p")).values(
        status="sending", attempts=c.attempts + 1)


@cache
def _expanding() -> Any:
    c = StaffNoticeLog.__table__.c
    return select(func.count()).where(c.sender.in_(bindparam("senders", expanding=True)))


def test_rows_written_and_read_by_the_driver_are_sqlalchemys(db_factory: sessionmaker[Session]) -> None:
    with transaction(db_factory) as s:
        written = fast.execute(s, _insert_returning(), _outbound("k1"))
        assert written.rowcount == 1 and len(written.rows) == 1
        new_id, created = written.rows[0]
        assert isinstance(new_id, int) and created.replace(tzinfo=UTC) == NOW
        fast.execute(s, _log_insert(), [
            {"recipient": f"r{i}@chu.test", "case_id": None, "at": NOW + timedelta(minutes=i), "verified": i % 2 == 0}
            for i in range(3)])
    with transaction(db_factory) as s:
        row = s.get(OutboundMessage, new_id)
        assert row is not None
        assert (row.raw, row.priority, row.status, row.message_id) == (
            _outbound("k1")["raw"], 3, "queued", "<k1@ars.test>")
        assert row.deadline_at.replace(tzinfo=UTC) == NOW + timedelta(hours=48)
        through_sqlalchemy = [tuple(r) for r in s.execute(_log_since(), {"since": NOW + timedelta(minutes=1)})]
        through_driver = fast.execute(s, _log_since(), {"since": NOW + timedelta(minutes=1)}).rows
        assert through_driver == through_sqlalchemy
        assert [r[0] for r in through_driver] == ["r1@chu.test", "r2@chu.test"]
        assert [r[2] for r in through_driver] == [False, True]  # booleans, not 0 and 1
        # Values compiled into the statement (status, attempts + 1) and the count of rows changed.
        assert fast.execute(s, _requeue(), {"p": 3}).rowcount == 1
        assert fast.execute(s, _requeue(), {"p": 3}).rowcount == 0
    with db_factory() as s:
        again = s.get(OutboundMessage, new_id)
        assert again is not None and (again.status, again.attempts) == ("sending", 1)


def test_a_statement_rendered_at_execution_runs_through_sqlalchemy(db_factory: sessionmaker[Session]) -> None:
    with transaction(db_factory) as s:
        fast.execute(s, insert(StaffNoticeLog), [{"sender": "a", "at": NOW}, {"sender": "b", "at": NOW}])
        assert fast.execute(s, _expanding(), {"senders": ["a", "b", "c"]}).scalar() == 2
        assert fast.execute(s, _expanding(), {"senders": ["c"]}).scalar() == 0


def test_driver_errors_are_sqlalchemys(db_factory: sessionmaker[Session]) -> None:
    """A duplicate key is an IntegrityError as SQLAlchemy raises it, not the driver's own class."""
    with pytest.raises(IntegrityError), transaction(db_factory) as s:
        fast.execute(s, _insert_returning(), _outbound("twice"))
        fast.execute(s, _insert_returning(), _outbound("twice"))


def test_a_missing_parameter_is_refused(db_factory: sessionmaker[Session]) -> None:
    with pytest.raises(Exception, match="since"), transaction(db_factory) as s:
        fast.execute(s, _log_since(), {"sinse": NOW})


def test_queued_keys_are_found_among_many_in_chunks(db_factory: sessionmaker[Session]) -> None:
    """``outbox.queued_keys`` asks with one parameter per key (no expanding IN), 32 keys a query:
    a region with 70 staff members is three queries and every queued key is found."""
    from mailgateway.dispatch.outbox import queued_keys
    with transaction(db_factory) as s:
        fast.execute(s, _insert_returning(), _outbound("k-3"))
        fast.execute(s, _insert_returning(), _outbound("k-64"))
        asked = [f"k-{i}" for i in range(70)]
        assert queued_keys(s, asked) == {"k-3", "k-64"}
        assert queued_keys(s, []) == set()


def test_an_object_built_from_an_inserted_row_is_persistent_clean_and_tracks_changes(
        db_factory: sessionmaker[Session]) -> None:
    """``fast.build`` + ``attach_inserted``: what the session holds is the row as inserted (nothing
    pending), a later change is written at the flush, an attribute not given is read back."""
    from sqlalchemy import inspect

    from mailgateway.store.inserted import attach_inserted

    with transaction(db_factory) as session:
        values = _outbound("built")
        values["id"] = fast.execute(session, _insert_returning(), values).rows[0][0]
        del values["attempts"]  # not given: loaded from the row when read
        row = fast.build(OutboundMessage, values)
        attach_inserted(session, row)
        state = inspect(row)
        assert state.persistent and not session.dirty and not state.modified
        assert row.recipient == "rssi@chu.test" and row.attempts == 0
        row.status = "sending"
        assert row in session.dirty
    with db_factory() as session:
        assert session.scalar(select(OutboundMessage.status).where(OutboundMessage.id == values["id"])) == "sending"
