"""IMAP intake against a real Dovecot: exactly once, beside staff, through restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from mailgateway.clock import SystemClock
from mailgateway.intake import imap as imap_module
from mailgateway.intake.imap import ImapIntake, backfill
from mailgateway.intake.imap_session import PROCESSED_KEYWORD, ImapSession
from tests.support.imap import PROCESSED, Mailbox, make_mailbox, message
from tests.support.servers import Dovecot, wait_for


@pytest.fixture
def mailbox(shared_dovecot: Dovecot, imap_user: str, tmp_path: Path) -> Iterator[Mailbox]:
    box = make_mailbox(shared_dovecot, imap_user, tmp_path)
    try:
        yield box
    finally:
        box.close()


@pytest.fixture
def own_mailbox(dovecot: Dovecot, tmp_path: Path) -> Iterator[Mailbox]:
    """A mailbox on a Dovecot of the test's own (to restart or kill it)."""
    box = make_mailbox(dovecot, dovecot.add_user("ssi-ara@ars.test", "s3cret"), tmp_path)
    try:
        yield box
    finally:
        box.close()


def wait_idle(box: Mailbox, timeout: float = 15) -> None:
    wait_for(lambda: all(w.health().state == "idle" for w in box.watchers if w.health().state != "stopped"),
             timeout)  # fmt: skip


def test_mail_delivered_while_watching_is_accepted_by_idle_and_moved(mailbox: Mailbox) -> None:
    """IDLE wakes the watcher (benchmarks/imap_latency.py: ≈ 0.5 s to the acknowledgement); the
    fallback poll is every 30 s. 10 s tells the two apart without failing on a loaded CI machine
    (2 s did, once in five full runs with another test process beside it)."""
    mailbox.start()
    wait_idle(mailbox)
    started = time.monotonic()
    mailbox.deliver(message("Déclaration rançongiciel"))
    wait_for(lambda: mailbox.inbound_count() == 1, timeout=10)
    assert time.monotonic() - started < 10
    (row,) = mailbox.inbound()
    assert row.source == "imap" and row.region == "ARA" and b"Subject: D" in row.raw
    wait_for(lambda: mailbox.folder_uids(PROCESSED), timeout=10)
    assert mailbox.folder_uids("INBOX") == []
    (key,) = mailbox.source_keys()
    assert key.key.startswith("imap:ARA:INBOX:") and key.key.endswith(":1")
    wait_for(lambda: mailbox.source_keys()[0].acknowledged_at is not None)
    assert mailbox.accepted_ids == [row.id]
    # PEEK: the gateway never marks a message read; staff still see it unread in Traité.
    assert all(b"\\Seen" not in flags for flags in mailbox.flags(PROCESSED).values())


def test_mail_read_by_staff_first_is_still_processed(mailbox: Mailbox) -> None:
    first = mailbox.start()
    wait_idle(mailbox)
    first.stop()
    mailbox.deliver(message("lu par un agent"))
    with mailbox.imap() as staff:
        staff.select_folder("INBOX")
        (uid,) = staff.search("ALL")
        staff.fetch([uid], ["BODY[]"])  # a staff client opening it sets \Seen
        assert b"\\Seen" in staff.get_flags([uid])[uid]
    mailbox.start()
    wait_for(lambda: mailbox.inbound_count() == 1, timeout=10)
    wait_for(lambda: mailbox.folder_uids("INBOX") == [], timeout=10)


def test_mail_delivered_while_stopped_is_accepted_at_restart(mailbox: Mailbox) -> None:
    first = mailbox.start()
    wait_idle(mailbox)
    mailbox.deliver(message("avant arrêt"))
    wait_for(lambda: mailbox.inbound_count() == 1, timeout=10)
    first.stop()
    assert first.health().state == "stopped"
    mailbox.deliver(message("pendant arrêt 1"))
    mailbox.deliver(message("pendant arrêt 2"))
    mailbox.start()
    wait_for(lambda: mailbox.inbound_count() == 3, timeout=10)
    wait_for(lambda: len(mailbox.folder_uids(PROCESSED)) == 3, timeout=10)
    assert mailbox.folder_uids("INBOX") == []


def test_initial_sync_new_skips_old_mail(mailbox: Mailbox) -> None:
    mailbox.deliver(message("ancien"))
    mailbox.start()
    wait_idle(mailbox)
    mailbox.deliver(message("nouveau"))
    wait_for(lambda: mailbox.inbound_count() == 1, timeout=10)
    time.sleep(0.3)
    (row,) = mailbox.inbound()
    assert b"nouveau" in row.raw
    assert len(mailbox.folder_uids("INBOX")) == 1  # the old one is left alone for staff
    state = mailbox.state()
    assert state is not None and state.last_uid == 2


def test_initial_sync_all_takes_old_mail(mailbox: Mailbox) -> None:
    mailbox.with_imap(initial_sync="all")
    mailbox.deliver(message("ancien"))
    mailbox.start()
    wait_for(lambda: mailbox.inbound_count() == 1, timeout=10)


def test_crash_between_commit_and_move_gives_no_duplicate(mailbox: Mailbox) -> None:
    crashes: list[int] = []

    def crash_once(uid: int) -> None:
        if not crashes:
            crashes.append(uid)
            raise RuntimeError("simulated crash after commit, before the move")

    mailbox.start(after_commit=crash_once)
    wait_idle(mailbox)
    mailbox.deliver(message("une seule fois"))
    wait_for(lambda: len(mailbox.folder_uids(PROCESSED)) == 1, timeout=15)
    assert crashes == [1]
    assert mailbox.inbound_count() == 1
    assert len(mailbox.source_keys()) == 1
    wait_for(lambda: mailbox.source_keys()[0].acknowledged_at is not None)
    assert mailbox.watchers[0].health().reconnects == 1


def test_uidvalidity_change_does_not_reprocess(mailbox: Mailbox) -> None:
    old = message("d'avant la mise en service")
    mailbox.append(old, msg_time=datetime.now(UTC) - timedelta(days=30))
    watcher = mailbox.start()
    wait_idle(mailbox)
    done = message("déjà traité")
    mailbox.append(done)
    wait_for(lambda: mailbox.inbound_count() == 1, timeout=10)
    watcher.stop()
    # A copy of the processed message comes back (a crash before the move, a restore...), a new
    # one arrives, then the server renumbers the folder.
    mailbox.append(done)
    mailbox.append(message("nouveau"))
    before = mailbox.state()
    assert before is not None and before.uidvalidity is not None
    mailbox.dovecot.doveadm(
        "mailbox", "update", "-u", mailbox.user, "--uid-validity", str(before.uidvalidity + 1000), "INBOX"
    )
    mailbox.start()
    wait_for(lambda: len(mailbox.folder_uids(PROCESSED)) == 3, timeout=15)
    assert mailbox.inbound_count() == 2  # "déjà traité" was a duplicate
    assert len(mailbox.folder_uids("INBOX")) == 1  # the month-old mail is still not processed
    after = mailbox.state()
    assert after is not None and after.uidvalidity == before.uidvalidity + 1000


def test_backfill_takes_old_mail_since_a_date(mailbox: Mailbox) -> None:
    now = datetime.now(UTC)
    mailbox.append(message("très ancien"), msg_time=now - timedelta(days=40))
    mailbox.append(message("ancien"), msg_time=now - timedelta(days=5))
    mailbox.start()
    wait_idle(mailbox)
    mailbox.stop_all()
    since = date.today() - timedelta(days=10)
    assert backfill(mailbox.settings(), mailbox.factory, "ARA", since, SystemClock()) == 1
    assert [b"ancien" in r.raw for r in mailbox.inbound()] == [True]
    assert len(mailbox.folder_uids("INBOX")) == 1
    assert backfill(mailbox.settings(), mailbox.factory, "ARA", since, SystemClock()) == 0


def test_idle_is_renewed(mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> None:
    starts: list[float] = []
    original = ImapSession.idle_start

    def counting(self: ImapSession) -> None:
        starts.append(time.monotonic())
        original(self)

    monkeypatch.setattr(ImapSession, "idle_start", counting)
    mailbox.with_imap(idle_renew_seconds=0.3)
    mailbox.start()
    wait_for(lambda: len(starts) >= 4, timeout=15)
    mailbox.deliver(message("après renouvellements"))
    wait_for(lambda: mailbox.inbound_count() == 1, timeout=10)


def test_one_failing_mailbox_does_not_stop_the_others(mailbox: Mailbox, tmp_path: Path) -> None:
    bad_password = tmp_path / "wrong.pass"
    bad_password.write_text("wrong\n")
    good = mailbox.region
    bad = good.__class__(code="BRE", name="Bretagne", address="ssi-bre@ars.test",
                         imap=mailbox.imap_settings.__class__(**{**mailbox.imap_settings.__dict__,
                                                                 "password_file": str(bad_password)}))  # fmt: skip
    settings = mailbox.settings().__class__(regions=(bad, good))
    intake = ImapIntake(settings, mailbox.factory, SystemClock())
    for w in intake.watchers:
        w.backoff_base, w.backoff_max, w.idle_wait_step = 0.05, 0.2, 0.2
    intake.start()
    try:
        wait_for(lambda: intake.health()[1].state == "idle", timeout=15)
        mailbox.deliver(message("pour ARA"))
        wait_for(lambda: mailbox.inbound_count() == 1, timeout=10)
        # Dovecot delays a failed login (auth_failure_delay): under load the ARA message can be in
        # before BRE's first refusal, so wait for it rather than assume it came first.
        wait_for(lambda: intake.health()[0].reconnects >= 1, timeout=15)
        bre = intake.health()[0]
        assert bre.region == "BRE" and bre.state in ("error", "connecting") and bre.reconnects >= 1
        assert bre.last_error and "AUTHENTICATIONFAILED" in bre.last_error.upper()
    finally:
        intake.stop()
    assert [h.state for h in intake.health()] == ["stopped", "stopped"]


def test_dovecot_restart_mid_idle_reconnects_and_misses_nothing(own_mailbox: Mailbox) -> None:
    box = own_mailbox
    watcher = box.start()
    wait_idle(box)
    box.dovecot.restart()
    box.deliver(message("juste après le redémarrage"))
    wait_for(lambda: box.inbound_count() == 1, timeout=20)
    wait_for(lambda: box.folder_uids("INBOX") == [] and len(box.folder_uids(PROCESSED)) == 1, timeout=20)
    assert watcher.health().reconnects >= 1


# In full-suite runs on a loaded 2-CPU machine, the Dovecot started right after a SIGKILL of the
# previous one has now and then refused IMAP logins for over 20 s (connections time out at login;
# LMTP works), which no watcher can get through; run on demand (pytest -m long) until understood.
@pytest.mark.long
def test_dovecot_crash_mid_idle_reconnects_and_misses_nothing(own_mailbox: Mailbox) -> None:
    box = own_mailbox
    watcher = box.start()
    wait_idle(box)
    box.deliver(message("avant le crash"))
    wait_for(lambda: box.inbound_count() == 1, timeout=20)
    box.dovecot.kill()  # a crash: no BYE, the connection just drops
    box.dovecot.start()
    box.deliver(message("après le crash"))
    # Generous: reconnection waits an exponential backoff with jitter, on a loaded machine.
    wait_for(lambda: box.inbound_count() == 2, timeout=30)
    # A crash in the middle of a MOVE may leave a copy in both folders (Dovecot copies, then
    # expunges): the watcher moves it again, so the processed folder may hold 3; what matters is
    # one processing per message (above) and an empty inbox.
    wait_for(lambda: box.folder_uids("INBOX") == [] and len(box.folder_uids(PROCESSED)) >= 2, timeout=20)
    assert watcher.health().reconnects >= 1


def test_without_move_copies_and_flags_never_deletes(dovecot: Dovecot, tmp_path: Path) -> None:
    caps = "IMAP4rev1 LITERAL+ SASL-IR LOGIN-REFERRALS ID ENABLE IDLE UIDPLUS NAMESPACE"
    dovecot.stop()
    with open(dovecot.config, "a") as conf:
        conf.write(f"imap_capability = {caps}\n")
    dovecot.start()
    box = make_mailbox(dovecot, dovecot.add_user("ssi-ara@ars.test"), tmp_path)
    try:
        box.start()
        wait_idle(box)
        assert not box.watchers[0]._session or not box.watchers[0]._session.can_move
        box.deliver(message("sans MOVE"))
        wait_for(lambda: len(box.folder_uids(PROCESSED)) == 1, timeout=10)
        wait_for(lambda: PROCESSED_KEYWORD in box.flags("INBOX").get(1, ()), timeout=10)
        assert b"\\Deleted" not in box.flags("INBOX")[1]
        box.stop_all()
        box.start()  # the flagged original is not taken again
        wait_idle(box)
        time.sleep(0.3)
        assert box.inbound_count() == 1
    finally:
        box.close()


def test_polls_when_the_server_lacks_idle(dovecot: Dovecot, tmp_path: Path) -> None:
    dovecot.stop()
    with open(dovecot.config, "a") as conf:
        conf.write("imap_capability = IMAP4rev1 LITERAL+ SASL-IR ID ENABLE UIDPLUS MOVE NAMESPACE\n")
    dovecot.start()
    box = make_mailbox(dovecot, dovecot.add_user("ssi-ara@ars.test"), tmp_path, poll_interval_seconds=0.2)
    try:
        box.start()
        wait_for(lambda: box.watchers[0].health().state == "polling", timeout=10)
        box.deliver(message("sans IDLE"))
        wait_for(lambda: box.inbound_count() == 1, timeout=10)
    finally:
        box.close()


def test_backoff_grows_with_jitter() -> None:
    watcher = imap_module.MailboxWatcher.__new__(imap_module.MailboxWatcher)
    watcher.backoff_base, watcher.backoff_max = 1.0, 60.0
    delays = [watcher._backoff(n) for n in range(1, 10)]
    for n, d in enumerate(delays, start=1):
        ceiling = min(60.0, 2.0 ** (n - 1))
        assert ceiling / 2 <= d <= ceiling
    assert len({round(watcher._backoff(6), 6) for _ in range(20)}) > 1


def _imap_children(dovecot: Dovecot) -> list[int]:
    """PIDs of Dovecot's per-connection ``imap`` processes."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("Name", "").strip() == "imap" and int(fields.get("PPid", "0")) == dovecot.pid:
            found.append(int(status.parent.name))
    return found


def test_stuck_connection_is_detected_and_replaced(own_mailbox: Mailbox) -> None:
    box = own_mailbox
    box.with_imap(idle_renew_seconds=0.5, timeout_seconds=1)
    watcher = box.start()
    wait_idle(box)
    (stuck,) = _imap_children(box.dovecot)
    os.kill(stuck, signal.SIGSTOP)  # the server side stops answering; the TCP connection stays up
    try:
        wait_for(lambda: watcher.health().reconnects >= 1, timeout=15)
        box.deliver(message("après une connexion bloquée"))
        wait_for(lambda: box.inbound_count() == 1, timeout=15)
    finally:
        os.kill(stuck, signal.SIGCONT)


_CRASH_CHILD = """
import os, signal, sys
from mailgateway.clock import SystemClock
from mailgateway.intake.imap import MailboxWatcher
from mailgateway.settings import ImapSettings, RegionSettings
from mailgateway.store.engine import make_engine, make_sessionmaker
url, port, user, password_file = sys.argv[1:5]
imap = ImapSettings(host="127.0.0.1", port=int(port), tls=False, username=user,
                    password_file=password_file, processed_folder="Traité", initial_sync="all")
region = RegionSettings(code="ARA", name="ARA", address=user, imap=imap)
crash = lambda uid: os.kill(os.getpid(), signal.SIGKILL)  # after the commit, before the move
MailboxWatcher(region, make_sessionmaker(make_engine(url)), SystemClock(), after_commit=crash).run()
"""


def test_process_killed_after_commit_gives_no_duplicate(mailbox: Mailbox, tmp_path: Path) -> None:
    mailbox.with_imap(initial_sync="all")
    mailbox.deliver(message("tué après le commit"))
    imap = mailbox.imap_settings
    child = subprocess.run(
        [sys.executable, "-c", _CRASH_CHILD, mailbox.url, str(imap.port), imap.username, imap.password_file],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    assert mailbox.inbound_count() == 1  # committed...
    assert len(mailbox.folder_uids("INBOX")) == 1  # ...but the server was never answered
    assert mailbox.source_keys()[0].acknowledged_at is None
    mailbox.start()
    wait_for(lambda: len(mailbox.folder_uids(PROCESSED)) == 1, timeout=15)
    assert mailbox.inbound_count() == 1
    wait_for(lambda: mailbox.source_keys()[0].acknowledged_at is not None)


def test_exactly_once_on_postgresql(shared_dovecot: Dovecot, imap_user: str, tmp_path: Path, pg_url: str) -> None:
    box = make_mailbox(shared_dovecot, imap_user, tmp_path, url=pg_url)
    crashes: list[int] = []

    def crash_once(uid: int) -> None:
        if not crashes:
            crashes.append(uid)
            raise RuntimeError("simulated crash after commit")

    try:
        box.start(after_commit=crash_once)
        wait_idle(box)
        box.deliver(message("PostgreSQL 1"))
        box.deliver(message("PostgreSQL 2"))
        wait_for(lambda: len(box.folder_uids(PROCESSED)) == 2, timeout=15)
        assert box.inbound_count() == 2 and crashes
    finally:
        box.close()
