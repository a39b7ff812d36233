"""The group commit fails an item alone (docs/guarantees.md: one bad MAIL FROM made 59 of 60 honest messages
get 451): envelopes are checked before queueing, and each item has its own savepoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.clock import SystemClock
from mailgateway.intake.writer import AcceptWriter, EnvelopeError
from mailgateway.store.engine import reading
from mailgateway.store.models import InboundMessage
from tests.support.db import migrated


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with migrated(f"sqlite:///{tmp_path / 'writer.db'}") as f:
        yield f


def _stored(factory: sessionmaker[Session]) -> list[tuple[bytes, str | None, str | None]]:
    with reading(factory) as s:
        return [(r.raw, r.mail_from, r.peer) for r in s.scalars(select(InboundMessage).order_by(InboundMessage.id))]


def test_a_non_utf8_sender_is_refused_before_the_batch(factory: sessionmaker[Session]) -> None:
    writer = AcceptWriter(factory, SystemClock())
    bad = writer.submit(b"Subject: x\r\n\r\nbad\r\n", source="smtp", mail_from="caf\udce9@chu.test",
                        rcpt_tos=["ssi-pdl@ars.test"], region="PDL", peer="192.0.2.7")
    assert isinstance(bad.exception(timeout=1), EnvelopeError)
    control = writer.submit(b"Subject: x\r\n\r\nbad\r\n", source="smtp", mail_from="a@b.test",
                            rcpt_tos=["ssi-pdl@ars.test\r\nX-Injected: 1"], region="PDL")
    assert isinstance(control.exception(timeout=1), EnvelopeError)
    writer.start()
    try:
        good = writer.submit(b"Subject: y\r\n\r\ngood\r\n", source="smtp", mail_from="dsi@chu.test",
                             rcpt_tos=["ssi-pdl@ars.test"], region="PDL", peer="192.0.2.7")
        assert not good.result(timeout=30).duplicate
    finally:
        writer.stop()
    assert _stored(factory) == [(b"Subject: y\r\n\r\ngood\r\n", "dsi@chu.test", "192.0.2.7")]


def poison_trigger(factory: sessionmaker[Session], marker: str = "poison") -> None:
    """A real database failure for one row: SQLite aborts any insert whose sender contains ``marker``
    (what a value PostgreSQL refuses, or a full disk on one large message, does to one row)."""
    with factory.kw["bind"].begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER poison BEFORE INSERT ON inbound_messages "
            f"WHEN NEW.mail_from LIKE '%{marker}%' BEGIN SELECT RAISE(ABORT, 'poisoned row'); END")


def test_an_item_failing_in_the_batch_fails_alone(factory: sessionmaker[Session]) -> None:
    """Whatever makes one insert fail (here: the database refuses one row), the batch statement is
    rolled back and each message is stored again on its own: its neighbours in the same transaction
    are committed, only its caller gets the error."""
    poison_trigger(factory)
    writer = AcceptWriter(factory, SystemClock())
    # Submitted before the writer starts: all 60 are taken as one batch.
    futures = [writer.submit(b"Subject: %d\r\n\r\nok\r\n" % n, source="smtp",
                             mail_from="poison@chu.test" if n == 30 else "dsi@chu.test",
                             rcpt_tos=["ssi-pdl@ars.test"], region="PDL") for n in range(60)]
    writer.start()
    try:
        outcomes = [f.exception(timeout=30) for f in futures]
    finally:
        writer.stop()
    assert [n for n, exc in enumerate(outcomes) if exc is not None] == [30]
    stored = _stored(factory)
    assert len(stored) == 59 and not any(sender == "poison@chu.test" for _, sender, _ in stored)
    assert writer.stats.batches == 1 and writer.stats.fallbacks == 1


def test_a_store_refusing_every_message_makes_intake_unhealthy_until_one_is_stored(
        factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    """An outside tester (ops): a read-only database file — every accept answered 451, while
    /healthz said ok (reads still worked). The writer's ``health`` is what /healthz shows for intake
    (daemon.py); a single message refused for its own value does not count."""
    from sqlalchemy.exc import OperationalError

    import mailgateway.intake.writer as writer_module

    def refused(*_args: object, **_kw: object) -> object:
        raise OperationalError("INSERT", {}, Exception("attempt to write a readonly database"))

    writer = AcceptWriter(factory, SystemClock())
    monkeypatch.setattr(writer_module, "accept_batch", refused)
    monkeypatch.setattr(AcceptWriter, "_store_one", staticmethod(lambda *_a: refused()))
    writer.start()
    try:
        first = writer.submit(b"Subject: 1\r\n\r\nx\r\n", source="smtp", mail_from="dsi@chu.test",
                              rcpt_tos=["ssi-pdl@ars.test"], region="PDL")
        assert isinstance(first.exception(timeout=30), OperationalError)
        assert writer.health() is not None and "readonly database" in (writer.health() or "")
        monkeypatch.undo()
        again = writer.submit(b"Subject: 2\r\n\r\nx\r\n", source="smtp", mail_from="dsi@chu.test",
                              rcpt_tos=["ssi-pdl@ars.test"], region="PDL")
        assert again.exception(timeout=30) is None
        assert writer.health() is None
    finally:
        writer.stop()
