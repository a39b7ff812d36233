"""The database fails under the daemon: locked for a while, full, restarted. The SMTP client is
never told 250 for a message that is not stored (RFC 5321 §4.2.5: a 4yz makes it retry later),
and what was answered 250 is processed once the database is back."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy import create_engine, event, func, select, text

from mailgateway.clock import SystemClock
from mailgateway.intake.smtp import IntakeHandler, start_smtp
from mailgateway.intake.writer import AcceptWriter
from mailgateway.settings import load_settings
from mailgateway.store.engine import make_engine, make_sessionmaker, reading, upgrade
from mailgateway.store.models import InboundMessage
from tests.support.chaos import ChaosConfig, Delivery, case_origins, db_tally, mta_send, numbered_declaration
from tests.support.gateway import RunningGateway
from tests.support.servers import PostgresCluster, SmtpSink


def wait_processed(config: ChaosConfig, count: int, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while True:
        tally = db_tally(config.db_path)
        if tally.inbound_total >= count and tally.inbound_received == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{tally.inbound_total} stored, {tally.inbound_received} unprocessed")
        time.sleep(0.1)


def test_sqlite_locked_for_seconds_makes_the_daemon_wait_not_fail(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    config = ChaosConfig(tmp_path / "gw", relay_port=smtp_sink.port)
    with RunningGateway(config) as gateway:
        for n in range(5):
            raw, _mid, declarant = numbered_declaration(n, tag="lock")
            gateway.send(raw, mail_from=declarant)
        wait_processed(config, 5)
        # Another process holds SQLite's only write lock (BEGIN IMMEDIATE) for 3 s.
        blocker = sqlite3.connect(config.db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        results: dict[int, tuple[Delivery, float]] = {}

        def client(n: int) -> None:
            raw, _mid, declarant = numbered_declaration(n, tag="lock")
            started = time.monotonic()
            delivery = mta_send(config.smtp_port, raw, declarant, give_up_at=started + 30, timeout=20)
            results[n] = (delivery, time.monotonic() - started)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(5, 25)]
        for t in threads:
            t.start()
        time.sleep(3)
        assert not results, "a message was answered while the database was locked"
        blocker.rollback()
        blocker.close()
        for t in threads:
            t.join()
        # Each client got its 250 on the first attempt, after waiting: no 4xx, no refused mail.
        assert {n: d.attempts for n, (d, _s) in results.items()} == {n: 1 for n in range(5, 25)}
        assert all(d.accepted for d, _s in results.values())
        assert min(s for _d, s in results.values()) >= 2.5
        wait_processed(config, 25)
    origins = case_origins(config.db_path)
    assert sorted(origins) == sorted(numbered_declaration(n, tag="lock")[1] for n in range(25))
    assert all(len(refs) == 1 for refs in origins.values())


async def test_disk_full_at_accept_answers_451_never_250(tmp_path: Path) -> None:
    config = ChaosConfig(tmp_path / "gw")
    settings = load_settings(config.path)
    upgrade(settings.database.url)
    engine = make_engine(settings.database.url)
    limit = {"pages": 0}

    @event.listens_for(engine, "connect")
    def _cap(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        # SQLITE_FULL exactly as a full disk raises it: no page may be added beyond the cap.
        if limit["pages"]:
            dbapi_conn.execute(f"PRAGMA max_page_count = {limit['pages']}")

    probe = sqlite3.connect(config.db_path)
    limit["pages"] = probe.execute("PRAGMA page_count").fetchone()[0] + 1
    probe.close()
    factory = make_sessionmaker(engine)
    writer = AcceptWriter(factory, SystemClock())
    writer.start()
    accepted: list[int] = []
    handler = IntakeHandler(settings, writer, accepted.append)
    server = await start_smtp(settings, handler)
    raw, _mid, declarant = numbered_declaration(1, tag="full")
    big = raw + (b"x" * 76 + b"\r\n") * 2000  # ~150 KB: needs many new pages
    try:
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await aiosmtplib.send(big, sender=declarant, recipients=["ssi-pdl@ars.test"], hostname="127.0.0.1",
                                  port=config.smtp_port, local_hostname="client.test", start_tls=False)
        assert refused.value.code == 451 and "4.3.0" in refused.value.message
        with reading(factory) as session:
            assert session.scalar(select(func.count()).select_from(InboundMessage)) == 0
        assert accepted == []
        # Space is back (new connections have no cap): the client's retry is stored and answered 250.
        limit["pages"] = 0
        engine.dispose()
        await aiosmtplib.send(big, sender=declarant, recipients=["ssi-pdl@ars.test"], hostname="127.0.0.1",
                              port=config.smtp_port, local_hostname="client.test", start_tls=False)
        with reading(factory) as session:
            assert session.scalar(select(func.count()).select_from(InboundMessage)) == 1
        assert len(accepted) == 1
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.to_thread(writer.stop)
        engine.dispose()


def test_daemon_out_of_disk_answers_451_then_accepts_after_space_returns(tmp_path: Path) -> None:
    """The real process: ``prlimit --fsize`` makes every write past the cap fail with EFBIG,
    as a full file system would (ENOSPC); CPython ignores SIGXFSZ, so the write errors out."""
    config = ChaosConfig(tmp_path / "gw")
    with RunningGateway(config) as gateway:
        pid = str(gateway.proc.pid)
        raw, mid, declarant = numbered_declaration(1, tag="efbig")
        big = raw + (b"x" * 76 + b"\r\n") * 13000  # ~1,015 KB (1 MiB allowed): beyond the cap in the WAL
        sizes = [p.stat().st_size for p in config.directory.iterdir() if p.is_file()]
        cap = max(sizes) + 64 * 1024
        assert cap < len(big) // 2, sizes
        subprocess.run(["prlimit", "--pid", pid, f"--fsize={cap}:unlimited"], check=True)
        try:
            delivery = mta_send(config.smtp_port, big, declarant, give_up_at=time.monotonic() + 3, pause=0.5)
        finally:
            subprocess.run(["prlimit", "--pid", pid, "--fsize=unlimited:unlimited"], check=True)
        assert not delivery.accepted and delivery.attempts >= 2
        assert delivery.answer.startswith("451") and "4.3.0" in delivery.answer
        assert db_tally(config.db_path).inbound_total == 0
        assert mta_send(config.smtp_port, big, declarant, give_up_at=time.monotonic() + 10).accepted
        wait_processed(config, 1)
        assert db_tally(config.db_path).by_message_id.get(mid, [("?", None)])[0][0] in ("processed", "quarantined")


def test_postgresql_restart_under_intake_loses_nothing(tmp_path: Path, smtp_sink: SmtpSink,
                                                        pg_cluster: PostgresCluster, pg_url: str) -> None:
    config = ChaosConfig(tmp_path / "gw", relay_port=smtp_sink.port)
    config.database_url = pg_url
    config.write()
    engine = create_engine(pg_url)

    def unprocessed_and_cases() -> tuple[int, int, int]:
        with engine.connect() as conn:
            total = conn.execute(text("SELECT count(*) FROM inbound_messages")).scalar_one()
            waiting = conn.execute(text("SELECT count(*) FROM inbound_messages WHERE status = 'received'")).scalar_one()
            cases = conn.execute(text("SELECT count(*) FROM cases")).scalar_one()
        return int(total), int(waiting), int(cases)

    try:
        with RunningGateway(config):
            results: dict[int, Delivery] = {}
            # A bound, not a duration (a real MTA retries for days): the restarted cluster and the
            # clients' retries took over 40 s with three test processes on two cores.
            give_up_at = time.monotonic() + 120

            def client(k: int) -> None:
                for n in range(k, 40, 4):
                    raw, _mid, declarant = numbered_declaration(n, tag="pg")
                    results[n] = mta_send(config.smtp_port, raw, declarant, give_up_at=give_up_at, pause=0.2)
                    time.sleep(0.1)

            threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
            for t in threads:
                t.start()
            time.sleep(0.5)
            pg_cluster.stop()  # fast shutdown: open connections are cut
            time.sleep(2)
            pg_cluster.start()
            for t in threads:
                t.join()
            assert all(d.accepted for d in results.values()) and len(results) == 40
            assert any(d.attempts > 1 for d in results.values()), "the outage was not felt by any client"
            deadline = time.monotonic() + 40
            while unprocessed_and_cases() != (40, 0, 40):
                assert time.monotonic() < deadline, unprocessed_and_cases()
                time.sleep(0.2)
    finally:
        engine.dispose()
