"""The sender's claim (issue 19): the first ``batch`` due rows in sending order — priority, then
due time, then id — whether queued or left ``sending`` by a dead sender whose lease ran out, read
in index order. One query with ``status = 'queued' OR …`` made SQLite sort every queued row for
each claim: O(queue) per batch, quadratic over a 40,000-recipient fan-out, under the write gate."""

from __future__ import annotations

from sqlalchemy import event, update
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.clock import FixedClock
from mailgateway.dispatch.sender import Sender
from mailgateway.store.engine import transaction
from mailgateway.store.models import OutboundMessage
from tests.dispatch.test_sender import NOW, make_settings, queue


def test_expired_leases_and_queued_rows_are_claimed_in_one_order(db_factory: sessionmaker[Session]) -> None:
    settings = make_settings(None, lease_seconds=60)
    bulletins = queue(db_factory, settings, [f"b{n}@chu.test" for n in range(4)], priority=10, prefix="b")
    acks = queue(db_factory, settings, ["a0@chu.test", "a1@chu.test"], priority=0, prefix="a")
    clock = FixedClock(NOW)
    dead = Sender(settings, db_factory, clock, "killed", on_permanent_failure=None, batch=3)
    sender = Sender(settings, db_factory, clock, "survivor", on_permanent_failure=None, batch=3)
    # The dead sender held one acknowledgement and one bulletin; its lease then ran out.
    with transaction(db_factory) as s:
        s.execute(update(OutboundMessage).where(OutboundMessage.id.in_([acks[1], bulletins[0]]))
                  .values(status="sending", lease_owner="killed", lease_until=NOW))
    assert dead.owner == "killed"
    clock.advance(seconds=1)
    claimed = [c.id for c in sender._claim(None)]
    # Priority first (the two acknowledgements, one of them reclaimed), then the oldest bulletin.
    assert claimed == [acks[0], acks[1], bulletins[0]]
    assert [c.id for c in sender._claim(None)] == bulletins[1:]


def test_the_claim_walks_the_due_index_without_sorting_the_queue(sqlite_factory: sessionmaker[Session]) -> None:
    settings = make_settings(None)
    sender = Sender(settings, sqlite_factory, FixedClock(NOW), "s", on_permanent_failure=None, batch=50)
    plans: list[str] = []
    with sqlite_factory() as s:
        conn = s.connection()

        def explain(conn_: object, cursor: object, statement: str, params: object, context: object,
                    executemany: bool) -> None:
            if statement.startswith("SELECT outbound_messages.id") and "ORDER BY" in statement:
                plans.append(" ".join(str(r[-1]) for r in cursor.connection.execute(  # type: ignore[attr-defined]
                    f"EXPLAIN QUERY PLAN {statement}", params)))

        event.listen(conn.engine, "before_cursor_execute", explain)
        try:
            sender._due_ids(s, NOW, locking=False)
        finally:
            event.remove(conn.engine, "before_cursor_execute", explain)
    assert len(plans) == 2
    assert all("ix_outbound_due" in p and "TEMP B-TREE" not in p for p in plans), plans
