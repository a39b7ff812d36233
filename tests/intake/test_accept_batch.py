"""The accept writer's group commit stores a whole batch in three statements (intake/accept.py
``accept_batch``) and keeps every guarantee of docs/guarantees.md: a batch decides as if its messages
were accepted one after the other (a duplicate inside the batch is a duplicate, answered 250 and not
processed again; the same bytes to another region are that region's message), and a row the
database refuses fails its own message alone (451) while its neighbours get their 250.

The SMTP tests drive the real listener (aiosmtpd + IntakeHandler + AcceptWriter on SQLite) over
loopback: the writer starts only once every client waits for its answer, so all of them are one batch.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import smtplib
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.clock import FixedClock, SystemClock
from mailgateway.intake.accept import Accepted, Arrival, accept_batch, accept_in
from mailgateway.intake.smtp import IntakeHandler, start_smtp
from mailgateway.intake.writer import AcceptWriter
from mailgateway.settings import load_settings
from mailgateway.store.engine import make_engine, make_sessionmaker, reading, transaction
from mailgateway.store.models import InboundMessage, dedup_key
from tests.intake.test_writer import poison_trigger
from tests.support.db import at_head, migrated
from tests.support.gateway import GatewayConfig
from tests.support.servers import wait_for

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
PDL, ARA = "ssi-pdl@ars.test", "ssi-ara@ars.test"


def _raw(n: int) -> bytes:
    return (b"From: Etablissement <dsi@chu.test>\r\nTo: ssi-pdl@ars.test\r\nSubject: declaration %d\r\n"
            b"Message-ID: <batch-%d@chu.test>\r\nDate: Fri, 27 Nov 2026 09:12:00 +0100\r\n\r\nBonjour.\r\n" % (n, n))


def _rows(factory: sessionmaker[Session]) -> list[tuple[int, str | None, str | None]]:
    with reading(factory) as s:
        return [(r.id, r.region, r.mail_from) for r in s.scalars(select(InboundMessage).order_by(InboundMessage.id))]


# -- accept_batch itself -------------------------------------------------------------------------


@pytest.fixture
def factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    """SQLite and PostgreSQL: the INSERT … ON CONFLICT DO NOTHING RETURNING is each dialect's."""
    with migrated(db_url) as f:
        yield f


@pytest.fixture
def sqlite_factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with migrated(f"sqlite:///{tmp_path / 'batch.db'}") as f:
        yield f


def _shape(results: Sequence[Accepted]) -> list[list[tuple[int, bool]]]:
    """Each result as [(row number in order of first appearance, duplicate), ...] per region: ids
    differ between two databases, which rows are the same row does not."""
    order: dict[int, int] = {}
    return [[(order.setdefault(a.inbound_id, len(order)), a.duplicate) for a in (r, *r.others)] for r in results]


def test_a_batch_decides_as_if_its_messages_came_one_after_the_other(
        factory: sessionmaker[Session], sqlite_factory: sessionmaker[Session]) -> None:
    """200 arrivals drawn from 6 messages and every kind of destination (one region, two, none):
    one batch gives the same rows, duplicates and ids as 200 batches of one (on SQLite)."""
    rng = random.Random(19)
    destinations: list[tuple[str | None, ...]] = [("PDL",), ("ARA",), ("PDL", "ARA"), ("ARA", "PDL"), (None,)]
    arrivals = [Arrival.of(_raw(rng.randrange(6)), source="smtp", mail_from="dsi@chu.test",
                           regions=rng.choice(destinations)) for _ in range(200)]
    with transaction(factory) as s:
        batched = accept_batch(s, arrivals, NOW)
    singly = []
    for arrival in arrivals:
        with transaction(sqlite_factory) as s:
            singly += accept_batch(s, [arrival], NOW)
    assert _shape(batched) == _shape(singly)
    assert [(region, sender) for _, region, sender in _rows(factory)] == [
        (region, sender) for _, region, sender in _rows(sqlite_factory)]
    assert sum(not a.duplicate for r in batched for a in (r, *r.others)) == len(_rows_of(batched))


def test_the_writers_connection_decides_as_a_session_does(
        factory: sessionmaker[Session], sqlite_factory: sessionmaker[Session]) -> None:
    """The accept writer stores through a Core connection, on SQLite a statement a row on the
    driver (store/fast.py): 200 arrivals in batches of 1 to 9 give the rows, duplicates and ids
    that one ORM session gives them, and so do the same batches over the same stored rows again
    (every one then a duplicate)."""
    rng = random.Random(20)
    destinations: list[tuple[str | None, ...]] = [("PDL",), ("ARA",), ("PDL", "ARA"), ("ARA", "PDL"), (None,)]
    arrivals = [Arrival.of(_raw(rng.randrange(12)), source="smtp", mail_from="dsi@chu.test",
                           regions=rng.choice(destinations)) for _ in range(200)]
    cuts = [0]
    while cuts[-1] < len(arrivals):
        cuts.append(min(len(arrivals), cuts[-1] + rng.randint(1, 9)))
    with transaction(sqlite_factory) as s:
        expected = accept_batch(s, arrivals, NOW) + accept_batch(s, arrivals, NOW)
    engine = factory.kw["bind"]
    got: list[Accepted] = []
    for _ in range(2):
        for start, end in itertools.pairwise(cuts):
            with engine.begin() as conn:
                got += accept_batch(conn, arrivals[start:end], NOW)
    assert _shape(got) == _shape(expected)
    assert all(a.duplicate for r in got[len(arrivals):] for a in (r, *r.others))
    assert _rows(factory) == _rows(sqlite_factory)


def _rows_of(results: Sequence[Accepted]) -> set[int]:
    return {a.inbound_id for r in results for a in (r, *r.others)}


def test_a_duplicate_inside_a_batch_is_the_first_ones_row(factory: sessionmaker[Session]) -> None:
    with transaction(factory) as s:
        stored = accept_in(s, _raw(1), source="smtp", now=NOW, region="PDL")
    with transaction(factory) as s:
        first, again, old, ara = accept_batch(s, [
            Arrival.of(_raw(2), source="smtp", regions=("PDL",)),
            Arrival.of(_raw(2), source="smtp", regions=("PDL",)),  # a client retrying at once
            Arrival.of(_raw(1), source="smtp", regions=("PDL",)),  # stored by an earlier batch
            Arrival.of(_raw(2), source="smtp", regions=("ARA",)),  # the same bytes, another region
        ], NOW)
    assert not first.duplicate and again.duplicate and again.inbound_id == first.inbound_id
    assert old.duplicate and old.inbound_id == stored.inbound_id
    assert not ara.duplicate and ara.inbound_id != first.inbound_id
    assert [region for _, region, _ in _rows(factory)] == ["PDL", "PDL", "ARA"]


def test_a_key_stored_by_a_concurrent_writer_is_a_duplicate_of_its_row(factory: sessionmaker[Session]) -> None:
    """Another PostgreSQL instance (or an IMAP watcher) may store the same key between the batch's
    SELECT and its INSERT: ON CONFLICT DO NOTHING skips it, and the message is answered as a
    duplicate of that row. Simulated with a row the SELECT (by hash) cannot see but the key conflicts with."""
    arrival = Arrival.of(_raw(3), source="smtp", regions=("PDL",))
    with transaction(factory) as s:
        s.add(InboundMessage(sha256="0" * 64, dedup_key=dedup_key(arrival.digest, "PDL"), raw=arrival.raw,
                             size=len(arrival.raw), source="imap", region="PDL", received_at=NOW))
    with factory.kw["bind"].begin() as conn:  # as the accept writer stores (on SQLite, on the driver)
        fresh, raced = accept_batch(conn, [Arrival.of(_raw(4), source="smtp", regions=("PDL",)), arrival], NOW)
    assert not fresh.duplicate
    assert raced.duplicate and raced.inbound_id == _rows(factory)[0][0]
    assert len(_rows(factory)) == 2


def test_a_row_the_database_refuses_fails_its_message_alone_with_the_rest_stored_once(
        sqlite_factory: sessionmaker[Session]) -> None:
    """The batch statement fails: it is rolled back and each message is stored again on its own;
    a duplicate inside that batch is still a duplicate (not stored twice by the fallback)."""
    factory = sqlite_factory
    poison_trigger(factory)
    writer = AcceptWriter(factory, FixedClock(NOW))
    futures = [writer.submit(_raw(9 if n == 4 else n % 3), source="smtp",
                             mail_from="poison@chu.test" if n == 4 else "dsi@chu.test",
                             rcpt_tos=[PDL], region="PDL") for n in range(6)]  # 0 1 2 0 [9] 2
    writer.start()
    try:
        outcomes = [f.exception(timeout=30) or f.result() for f in futures]
    finally:
        writer.stop()
    assert [isinstance(o, Exception) for o in outcomes] == [False] * 4 + [True, False]
    ok = [o for o in outcomes if isinstance(o, Accepted)]
    assert [o.duplicate for o in ok] == [False, False, False, True, True]  # 0 1 2 0 2
    assert ok[3].inbound_id == ok[0].inbound_id and ok[4].inbound_id == ok[2].inbound_id
    assert len(_rows(factory)) == 3
    assert writer.stats.batches == 1 and writer.stats.fallbacks == 1 and writer.stats.failed == 1


# -- over SMTP -----------------------------------------------------------------------------------


@dataclass
class Intake:
    writer: AcceptWriter
    handler: IntakeHandler
    factory: sessionmaker[Session]
    port: int
    processed: list[int] = field(default_factory=list)

    def one_batch(self, sends: Sequence[tuple[str, Sequence[str], bytes]]) -> list[tuple[int, str]]:
        """Each (MAIL FROM, RCPT TOs, message) on its own connection; every DATA is waiting for its
        answer before the writer starts, so they are all one group commit. The DATA replies."""
        replies: list[tuple[int, str]] = [(0, "")] * len(sends)

        def client(k: int) -> None:
            mail_from, rcpts, raw = sends[k]
            with smtplib.SMTP("127.0.0.1", self.port, local_hostname="relay.test", timeout=60) as s:
                s.ehlo()
                s.mail(mail_from)
                for rcpt in rcpts:
                    s.rcpt(rcpt)
                code, text = s.data(raw)
                replies[k] = (code, text.decode())

        threads = [threading.Thread(target=client, args=(k,)) for k in range(len(sends))]
        for t in threads:
            t.start()
        wait_for(lambda: self.handler.storing == len(sends), timeout=30)
        self.writer.start()
        for t in threads:
            t.join(60)
        return replies


@contextmanager
def running_intake(directory: Path, smtp_keys: str = "") -> Iterator[Intake]:
    """The daemon's SMTP intake in this process (aiosmtpd on its own event loop thread, the accept
    writer not started: ``Intake.one_batch`` starts it); ``smtp_keys``: more ``[intake.smtp]`` keys."""
    config = GatewayConfig(directory)
    anchor = 'server_hostname = "gateway.test"'
    config.path.write_text(config.path.read_text().replace(anchor, f"{anchor}\n{smtp_keys}", 1))
    settings = load_settings(config.path)
    at_head(settings.database.url)
    engine = make_engine(settings.database.url)
    factory = make_sessionmaker(engine)
    writer = AcceptWriter(factory, SystemClock())
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    processed: list[int] = []
    handler = IntakeHandler(settings, writer, lambda inbound_id: processed.append(inbound_id))
    server = asyncio.run_coroutine_threadsafe(start_smtp(settings, handler), loop).result(30)
    assert settings.intake.smtp is not None
    try:
        yield Intake(writer, handler, factory, settings.intake.smtp.port, processed)
    finally:
        # Closed on its own loop's thread: Server.close() from this thread raced the loop's own
        # wake-up of the server's waiters ('NoneType' object is not iterable, once in a full run).
        async def close() -> None:
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
        writer.stop()
        engine.dispose()


@pytest.fixture
def intake(tmp_path: Path) -> Iterator[Intake]:
    with running_intake(tmp_path / "gw") as running:
        yield running


def test_one_refused_row_gets_451_and_the_rest_of_its_batch_250(intake: Intake) -> None:
    poison_trigger(intake.factory)
    sends = [("poison@chu.test" if n == 2 else f"dsi-{n}@chu.test", [PDL], _raw(n)) for n in range(6)]
    replies = intake.one_batch(sends)
    assert [code for code, _ in replies] == [250, 250, 451, 250, 250, 250], replies
    assert "4.3.0" in replies[2][1]
    assert intake.writer.stats.batches == 1 and intake.writer.stats.fallbacks == 1
    senders = sorted(sender or "" for _, _, sender in _rows(intake.factory))
    assert senders == [f"dsi-{n}@chu.test" for n in (0, 1, 3, 4, 5)]
    assert len(intake.processed) == 5


def test_same_bytes_to_two_regions_and_a_retry_in_one_batch(intake: Intake) -> None:
    """The same declaration to PDL and to ARA (two transactions), to both at once, and again to PDL:
    one row per region, every client answered 250, only the two new rows processed."""
    raw = _raw(7)
    replies = intake.one_batch([("dsi@chu.test", [PDL], raw), ("dsi@chu.test", [ARA], raw),
                                ("dsi@chu.test", [PDL, ARA], raw), ("dsi@chu.test", [PDL], raw)])
    assert [code for code, _ in replies] == [250] * 4, replies
    rows = _rows(intake.factory)
    assert sorted(region or "" for _, region, _ in rows) == ["ARA", "PDL"]
    assert sorted(intake.processed) == sorted(inbound_id for inbound_id, _, _ in rows)
    assert intake.writer.stats.batches == 1 and intake.writer.stats.rows == 5
