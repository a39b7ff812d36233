"""Mailbox leadership on PostgreSQL: one watcher per mailbox among instances, takeover, lock loss."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from mailgateway.intake.imap import ImapIntake, MailboxWatcher
from mailgateway.intake.leadership import AdvisoryLock, LeadershipLost, SoleLeader, lock_engine, lock_key
from mailgateway.store.engine import make_engine
from tests.support.imap import Mailbox, make_mailbox, message
from tests.support.servers import Dovecot, wait_for

WATCHING = {"connecting", "syncing", "idle", "polling"}


@pytest.fixture
def locks(pg_url: str) -> Iterator[Engine]:
    engine = lock_engine(pg_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def mailbox(shared_dovecot: Dovecot, imap_user: str, tmp_path: Path, pg_url: str) -> Iterator[Mailbox]:
    box = make_mailbox(shared_dovecot, imap_user, tmp_path, url=pg_url)
    try:
        yield box
    finally:
        box.close()


def instance(box: Mailbox, locks: Engine, name: str) -> MailboxWatcher:
    lock = AdvisoryLock(locks, f"ARA:{box.imap_settings.folder}", retry_seconds=0.3, takeover_grace=0.5)
    return box.start(leadership=lock, holder=name)


class Overlap:
    """Samples the watchers' states every 20 ms: how many watched the mailbox at the same time."""

    def __init__(self, watchers: list[MailboxWatcher]) -> None:
        self.watchers = watchers
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.most = max(self.most, sum(w.health().state in WATCHING for w in self.watchers))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.most


def leader(watchers: list[MailboxWatcher]) -> MailboxWatcher | None:
    idle = [w for w in watchers if w.health().state == "idle"]
    return idle[0] if len(idle) == 1 and all(w.health().state == "standby" for w in watchers if w not in idle) \
        else None


def test_lock_keys_are_stable_signed_64_bit_and_distinct_per_mailbox() -> None:
    assert lock_key("ARA:INBOX") == lock_key("ARA:INBOX")
    assert lock_key("ARA:INBOX") != lock_key("PDL:INBOX")
    assert -(2**63) <= lock_key("ARA:INBOX") < 2**63
    # The key must not change between releases: instances of two versions must exclude each other.
    assert lock_key("ARA:INBOX") == int.from_bytes(
        hashlib.sha256(b"mailgateway:imap:ARA:INBOX").digest()[:8], "big", signed=True)


def test_sqlite_needs_no_lock(tmp_path: Path) -> None:
    from mailgateway.clock import SystemClock
    from mailgateway.settings import DatabaseSettings, ImapSettings, RegionSettings, Settings
    from mailgateway.store.engine import make_sessionmaker

    region = RegionSettings(code="ARA", name="ARA", address="a@ars.test",
                            imap=ImapSettings(host="127.0.0.1", username="u", password_file="/dev/null"))
    settings = Settings(database=DatabaseSettings(url=f"sqlite:///{tmp_path / 'x.db'}"), regions=(region,))
    engine = make_engine(settings.database.url)
    intake = ImapIntake(settings, make_sessionmaker(engine), SystemClock(), instance_id="solo")
    assert isinstance(intake.watchers[0].leadership, SoleLeader)
    engine.dispose()


def test_one_of_two_instances_watches_and_mail_is_taken_once(mailbox: Mailbox, locks: Engine) -> None:
    a, b = instance(mailbox, locks, "A"), instance(mailbox, locks, "B")
    wait_for(lambda: leader([a, b]), timeout=15)
    overlap = Overlap([a, b])
    first = leader([a, b])
    assert first is not None
    state = mailbox.state()
    assert state is not None and state.holder == first.holder and state.state == "idle"
    for n in range(5):
        mailbox.deliver(message(f"Déclaration {n}"))
    wait_for(lambda: mailbox.inbound_count() == 5, timeout=10)
    time.sleep(1.0)
    assert mailbox.inbound_count() == 5 and len(mailbox.accepted_ids) == 5
    assert overlap.stop() == 1


def test_the_standby_takes_over_when_the_leader_stops(mailbox: Mailbox, locks: Engine) -> None:
    a, b = instance(mailbox, locks, "A"), instance(mailbox, locks, "B")
    first = wait_for(lambda: leader([a, b]), timeout=15)
    second = b if first is a else a
    first.stop()
    started = time.monotonic()
    wait_for(lambda: second.health().state == "idle", timeout=10)
    took = time.monotonic() - started
    assert took < 5, took
    state = mailbox.state()
    assert state is not None and state.holder == second.holder and state.state == "idle"
    mailbox.deliver(message("Après la relève"))
    wait_for(lambda: mailbox.inbound_count() == 1, timeout=10)


def test_a_leader_whose_lock_connection_dies_stops_watching_never_two_at_once(
    mailbox: Mailbox, locks: Engine, pg_url: str
) -> None:
    a, b = instance(mailbox, locks, "A"), instance(mailbox, locks, "B")
    first = wait_for(lambda: leader([a, b]), timeout=15)
    overlap = Overlap([a, b])
    lock = first.leadership
    assert isinstance(lock, AdvisoryLock) and lock.held
    engine = make_engine(pg_url)
    try:
        with engine.connect() as conn:
            # The database ends the leader's lock session (what a restart or a network cut does).
            killed = conn.scalar(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND objid = CAST(CAST(:k AS bigint) & 4294967295 AS oid)"), {"k": lock.key})
        assert killed == 1
        # Someone leads again (either of the two), and mail still comes in exactly once.
        wait_for(lambda: leader([a, b]), timeout=15)
        mailbox.deliver(message("Après la coupure"))
        wait_for(lambda: mailbox.inbound_count() == 1, timeout=10)
        time.sleep(0.5)
        assert mailbox.inbound_count() == 1
    finally:
        engine.dispose()
    assert overlap.stop() == 1


def test_check_raises_once_the_lock_is_gone(pg_url: str, locks: Engine) -> None:
    lock = AdvisoryLock(locks, "ARA:INBOX")
    other = AdvisoryLock(locks, "ARA:INBOX")
    assert lock.acquire() and not other.acquire()
    lock.check()
    lock.release()
    with pytest.raises(LeadershipLost):
        lock.check()
    assert other.acquire()
    other.release()
