"""IMAP intake: watch every regional SSI mailbox with IDLE and accept each message exactly once.

One ``MailboxWatcher`` thread per ``[regions.imap]`` (imapclient is synchronous); ``ImapIntake``
starts and stops them. Per message (README, "How it works"):

1. ``UID FETCH BODY.PEEK[]`` -- PEEK never sets ``\\Seen``: staff read the same mailbox and may
   open a message first, so no state depends on ``\\Seen`` (docs/guarantees.md).
2. ``accept_in`` in its own transaction, with the source key
   ``imap:<region>:<folder>:<uidvalidity>:<uid>``; commit.
3. Only then the server is answered: the message moves to the processed folder (``Traité``;
   never deleted, see ``imap_session``), and ``last_uid`` and the key's ``acknowledged_at`` are
   recorded. A crash between 2 and 3 means the UID is fetched again on restart; ``accept_in``
   finds the source key (duplicate) and the message is just moved: exactly once.

First start: ``initial_sync = "new"`` records ``UIDNEXT - 1`` and skips what is already there (no
flood); ``"all"`` takes the whole folder; older mail is taken on request with ``backfill``.

UIDVALIDITY change (RFC 3501 §2.3.1.1: every UID may have changed): the folder is re-read by date
-- everything since the last contact (minus a day), or all of it under ``initial_sync = "all"``.
Processed mail has left the folder, and what is left but was already accepted is a content-hash
duplicate in ``accept_in``: it is moved, not processed again.

Waiting: IDLE (RFC 2177), re-issued every ``idle_renew_seconds`` (settings cap it at 29 minutes)
with a NOOP round trip bounded by ``timeout_seconds`` so a stuck connection is noticed; polling
every ``poll_interval_seconds`` when the server lacks IDLE. Any error (server restart, BYE, socket,
login, database) drops the connection and reconnects after an exponential backoff with jitter.
Each mailbox has its own thread and its own errors: one failing mailbox never stops the others.

Quarantine: everything accepted moves to the processed folder at once (the accept is what makes it
safe to mark); processing decides about quarantine a moment later. The watcher then moves the
quarantined ones on to ``quarantine_folder`` (found by Message-ID in the processed folder), so staff
see them in their client; it checks for such work between syncs and every few seconds of IDLE.
A message without a Message-ID stays in the processed folder (the CLI and metrics still show it).

Several instances (PostgreSQL): every instance runs a watcher per mailbox, but only the holder of
the mailbox's advisory lock connects; the others stay in ``standby`` and take over within seconds
when the holder dies (``intake/leadership.py``). ``mailbox_states.holder`` names the leader.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.clock import Clock, aware
from mailgateway.errors import ConfigError
from mailgateway.intake.accept import Accepted, accept_in
from mailgateway.intake.imap_session import FETCH_BATCH, FolderStatus, ImapSession
from mailgateway.intake.leadership import Leadership, LeadershipLost, SoleLeader, leadership_factory
from mailgateway.intake.priority import Prioritiser, PriorityRule
from mailgateway.settings import ImapSettings, RegionSettings, Settings
from mailgateway.store.engine import reading, transaction
from mailgateway.store.models import InboundMessage, InboundSourceKey, MailboxState

__all__ = ["ImapIntake", "MailboxHealth", "MailboxWatcher", "backfill", "mailbox_key"]

log = logging.getLogger(__name__)

# Called with the id of each newly accepted message (not for duplicates: a duplicate was stored
# before, and the processor takes every "received" row on start anyway).
OnAccepted = Callable[[int], None]
# How often an idle watcher looks for messages that processing quarantined.
QUARANTINE_CHECK_SECONDS = 5.0


def mailbox_key(region: str, folder: str) -> str:
    return f"{region}:{folder}"


@dataclass(frozen=True)
class MailboxHealth:
    """What ``mailgateway status`` and the metrics show for one mailbox."""

    region: str
    folder: str
    state: str  # new | standby | connecting | idle | polling | syncing | error | stopped
    last_contact_at: datetime | None = None
    last_message_at: datetime | None = None
    last_error: str | None = None
    accepted: int = 0  # messages accepted (not duplicates) since start
    reconnects: int = 0


class MailboxWatcher:
    """Watch one regional mailbox in its own thread until ``stop()``."""

    def __init__(
        self,
        region: RegionSettings,
        factory: sessionmaker[Session],
        clock: Clock,
        on_accepted: OnAccepted | None = None,
        *,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
        idle_wait_step: float = 1.0,
        after_commit: Callable[[int], None] | None = None,
        leadership: Leadership | None = None,
        holder: str | None = None,
        priority: Prioritiser | None = None,
    ) -> None:
        if region.imap is None:
            raise ConfigError([(f"regions.{region.code}.imap", "no IMAP settings for this region")])
        self.region = region.code
        self.settings: ImapSettings = region.imap
        self.factory = factory
        self.clock = clock
        self.on_accepted = on_accepted
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        # IDLE is checked in steps so stop() is honoured within this many seconds.
        self.idle_wait_step = idle_wait_step
        # Test seam: runs after the accept commit and before the server is answered.
        self.after_commit = after_commit
        self.key = mailbox_key(self.region, self.settings.folder)
        # Several instances: only the holder of the mailbox's lock watches it (leadership.py).
        self.leadership: Leadership = leadership or SoleLeader()
        self.holder = holder  # this instance's id, recorded in mailbox_states.holder
        self.priority = priority  # processing order of what it accepts (intake/priority.py)
        self._leading = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._session: ImapSession | None = None
        self._lock = threading.Lock()
        self._health = MailboxHealth(self.region, self.settings.folder, "new")
        self._synced = False  # the current connection completed its first sync
        self._uidvalidity = 0

    # lifecycle

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name=f"imap-{self.region}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("IMAP watcher %s did not stop within %s s", self.key, timeout)

    def health(self) -> MailboxHealth:
        with self._lock:
            return self._health

    def _note(self, **changes: object) -> None:
        with self._lock:
            self._health = replace(self._health, **changes)  # type: ignore[arg-type]

    def run(self) -> None:
        attempt = 0
        try:
            while not self._stop.is_set():
                if not self._lead():
                    self._stop.wait(self.leadership.retry_seconds)
                    continue
                try:
                    self._connect_and_watch()
                except LeadershipLost as exc:
                    log.warning("IMAP %s: %s; back to standby", self.key, exc)
                    self._drop_session()
                    self._standby()
                except Exception as exc:
                    # Back off from the base again once a connection had worked (server restart).
                    attempt = 1 if self._synced else attempt + 1
                    delay = self._backoff(attempt)
                    log.warning("IMAP %s: %s; reconnecting in %.1f s", self.key, exc, delay)
                    self._note(state="error", last_error=str(exc), reconnects=self.health().reconnects + 1)
                    self._record_state(state="error", last_error=str(exc)[:2000])
                    self._drop_session()
                    self._stop.wait(delay)
        finally:
            self._drop_session()
            self._note(state="stopped")
            if self._leading:  # a standby's "stopped" would overwrite the leader's state
                self._record_state(state="stopped")
            self._leading = False
            self.leadership.release()

    def _lead(self) -> bool:
        """True when this watcher holds the mailbox (it just took it, or still has it)."""
        if not self.leadership.acquire():
            if self._leading:
                self._standby()
            elif self.health().state != "standby":
                log.info("IMAP %s: standby, another instance watches this mailbox", self.key)
                self._note(state="standby")
            return False
        if not self._leading:
            self._leading = True
            if self.leadership.takeover_grace > 0:
                # Longer than a former leader needs to notice it lost the lock (it checks every step).
                log.info("IMAP %s: leadership taken (%s); connecting in %.1f s", self.key, self.holder,
                         self.leadership.takeover_grace)
                if self._stop.wait(self.leadership.takeover_grace):
                    return False
            self._record_state(state="connecting", holder=self.holder)
        return True

    def _standby(self) -> None:
        self._leading = False
        self.leadership.release()
        self._note(state="standby")

    def _drop_session(self) -> None:
        if self._session is not None:
            self._session.abort()
            self._session = None

    def _backoff(self, attempt: int) -> float:
        # Exponential backoff with "equal jitter": half fixed, half random, so mailboxes that failed
        # together (one server restart) do not reconnect in lockstep.
        ceiling = min(self.backoff_max, self.backoff_base * 2.0 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - not cryptographic

    # one connection

    def _connect_and_watch(self) -> None:
        self._synced = False
        self._note(state="connecting")
        self._session = session = ImapSession(self.settings)
        status = session.open()
        self.leadership.check()
        last_uid = self._align(session, status)
        self._sync(session, last_uid)
        self._synced = True
        while not self._stop.is_set():
            if session.can_idle:
                self._idle(session)
            else:
                self._note(state="polling")
                self._record_state(state="polling")
                if self._pause(self.settings.poll_interval_seconds):
                    break
                session.noop()
            self._sync(session, self._last_uid())
            self._sweep_quarantine(session)
        session.close()
        self._session = None

    def _idle(self, session: ImapSession) -> None:
        """One IDLE period: until new mail, stop(), or the renewal time (RFC 2177 §3: < 29 min)."""
        self._note(state="idle")
        self._record_state(state="idle")
        session.idle_start()
        remaining = self.settings.idle_renew_seconds
        since_check = 0.0
        while remaining > 0 and not self._stop.is_set():
            step = min(self.idle_wait_step, remaining)
            if session.idle_wait(step):
                break
            self.leadership.check()
            remaining -= step
            since_check += step
            if since_check >= QUARANTINE_CHECK_SECONDS:
                since_check = 0.0
                if self._quarantine_work():
                    break
        session.idle_stop()
        # The round trip that proves the connection is alive (socket timeout bounds it).
        session.noop()

    def _pause(self, seconds: float) -> bool:
        """Wait up to ``seconds``, checking leadership each step; True when stop() was called."""
        remaining = seconds
        while remaining > 0:
            step = min(self.idle_wait_step, remaining)
            if self._stop.wait(step):
                return True
            self.leadership.check()
            remaining -= step
        return self._stop.is_set()

    # state

    def _last_uid(self) -> int:
        with transaction(self.factory) as db:
            row = db.get(MailboxState, self.key)
            return row.last_uid if row is not None else 0

    def _align(self, session: ImapSession, status: FolderStatus) -> int:
        """Reconcile the stored UIDVALIDITY with the server's; return the last UID already handled."""
        resync: list[int] = []
        with transaction(self.factory) as db:
            row = db.get(MailboxState, self.key)
            if row is None:
                row = MailboxState(mailbox=self.key, last_uid=0, state="new")
                db.add(row)
            if row.uidvalidity is None:
                # First start: "new" skips what is already in the folder (no flood); "all" takes it.
                row.last_uid = status.uidnext - 1 if self.settings.initial_sync == "new" else 0
                log.info("IMAP %s: first start, initial_sync=%s, last_uid=%d",
                         self.key, self.settings.initial_sync, row.last_uid)  # fmt: skip
            elif row.uidvalidity != status.uidvalidity:
                if self.settings.initial_sync == "all":
                    row.last_uid = 0
                else:
                    since = aware(row.last_contact_at or self.clock.now()) - timedelta(days=1)
                    resync = session.uids_since(since.date())
                    row.last_uid = status.uidnext - 1
                log.warning("IMAP %s: UIDVALIDITY changed %s -> %s; re-reading %s", self.key,
                            row.uidvalidity, status.uidvalidity, resync or "the folder")  # fmt: skip
            row.uidvalidity = status.uidvalidity
            row.last_contact_at = self.clock.now()
            row.state = "syncing"
            last_uid = row.last_uid
            self._uidvalidity = status.uidvalidity
        if resync:
            self._take(session, resync, advance=False)
        return last_uid

    def _record_state(self, **fields: object) -> None:
        try:
            with transaction(self.factory) as db:
                row = db.get(MailboxState, self.key)
                if row is None:
                    row = MailboxState(mailbox=self.key, last_uid=0)
                    db.add(row)
                for name, value in fields.items():
                    setattr(row, name, value)
                if fields.get("state") in ("idle", "polling"):
                    row.last_contact_at = self.clock.now()
        except Exception:
            log.exception("IMAP %s: could not record state %s", self.key, fields)

    # messages

    def _sync(self, session: ImapSession, last_uid: int) -> None:
        self._note(state="syncing", last_contact_at=self.clock.now())
        self._take(session, session.uids_after(last_uid), advance=True)

    def _take(self, session: ImapSession, uids: list[int], *, advance: bool) -> None:
        for start in range(0, len(uids), FETCH_BATCH):
            batch = uids[start : start + FETCH_BATCH]
            bodies = session.fetch(batch)
            for uid in batch:
                if self._stop.is_set():
                    return
                self.leadership.check()  # never accept or move for a mailbox we no longer hold
                raw = bodies.get(uid)
                if raw is None:  # expunged by someone else meanwhile
                    self._acknowledge(uid, None, advance, new=False)
                    continue
                source_key = f"imap:{self.key}:{self._uidvalidity}:{uid}"
                accepted = accept_message(self.factory, raw, self.region, source_key, self.clock,
                                          rule=self.priority.rule() if self.priority is not None else None)
                if self.after_commit is not None:
                    self.after_commit(uid)
                session.mark_processed(uid)
                self._acknowledge(uid, source_key, advance, new=not accepted.duplicate)
                if self.on_accepted is not None and not accepted.duplicate:
                    self.on_accepted(accepted.inbound_id)

    def _acknowledge(self, uid: int, source_key: str | None, advance: bool, *, new: bool) -> None:
        now = self.clock.now()
        with transaction(self.factory) as db:
            if source_key is not None:
                key = db.get(InboundSourceKey, source_key)
                if key is not None and key.acknowledged_at is None:
                    key.acknowledged_at = now
            row = db.get(MailboxState, self.key)
            if row is not None:
                if advance and uid > row.last_uid:
                    row.last_uid = uid
                row.last_contact_at = now
                if source_key is not None:
                    row.last_message_at = now
        if source_key is not None:
            self._note(last_message_at=now, last_contact_at=now, accepted=self.health().accepted + int(new))


    # quarantine

    def _quarantine_query(self) -> Any:
        return (select(InboundSourceKey.key, InboundMessage.message_id)
                .join(InboundMessage, InboundMessage.id == InboundSourceKey.inbound_id)
                .where(InboundSourceKey.key.like(f"imap:{self.key}:%"),
                       InboundSourceKey.acknowledged_at.is_not(None),
                       InboundSourceKey.quarantined_at.is_(None),
                       InboundMessage.status == "quarantined"))

    def _quarantine_work(self) -> bool:
        try:
            with reading(self.factory) as db:
                return db.execute(self._quarantine_query().limit(1)).first() is not None
        except Exception:
            log.exception("IMAP %s: could not look for quarantined messages", self.key)
            return False

    def _sweep_quarantine(self, session: ImapSession) -> None:
        with reading(self.factory) as db:
            rows = db.execute(self._quarantine_query().limit(200)).all()
        if not rows:
            return
        ids = [mid for _key, mid in rows if mid]
        moved = set(session.move_to_quarantine(ids))
        now = self.clock.now()
        with transaction(self.factory) as db:
            for key, _mid in rows:
                row = db.get(InboundSourceKey, key)
                if row is not None:
                    row.quarantined_at = now  # looked for once: found and moved, or not there
        log.info("IMAP %s: %d quarantined message(s) moved to %s", self.key, len(moved),
                 self.settings.quarantine_folder)


def accept_message(factory: sessionmaker[Session], raw: bytes, region: str, source_key: str, clock: Clock,
                   rule: PriorityRule | None = None) -> Accepted:
    """Accept in its own committed transaction; a concurrent accept of the same key is a duplicate.
    ``rule``: the processing priority (intake/priority.py)."""
    for attempt in (1, 2):
        try:
            with transaction(factory) as db:
                accepted = accept_in(db, raw, source="imap", now=clock.now(), source_key=source_key,
                                     region=region, rule=rule)  # fmt: skip
                return accepted
        except IntegrityError:
            # Another instance (or a backfill) inserted the same source key or content first: on the
            # second try accept_in finds it and answers duplicate.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


class ImapIntake:
    """Every configured regional mailbox, each in its own watcher thread."""

    def __init__(
        self,
        settings: Settings,
        factory: sessionmaker[Session],
        clock: Clock,
        on_accepted: OnAccepted | None = None,
        *,
        instance_id: str | None = None,
        priority: Prioritiser | None = None,
    ) -> None:
        # PostgreSQL: one advisory lock per mailbox, on connections of their own (leadership.py).
        self._lock_engine, leadership = leadership_factory(settings.database.url)
        self.priority = priority or Prioritiser(settings, factory.kw["bind"])
        self.watchers = [
            MailboxWatcher(region, factory, clock, on_accepted, holder=instance_id,
                           leadership=leadership(mailbox_key(region.code, region.imap.folder)),
                           priority=self.priority)
            for region in settings.regions
            if region.imap is not None
        ]

    def start(self) -> None:
        for watcher in self.watchers:
            watcher.start()

    def stop(self, timeout: float = 10.0) -> None:
        for watcher in self.watchers:
            watcher._stop.set()  # all at once, then wait for each
        for watcher in self.watchers:
            watcher.stop(timeout)
        if self._lock_engine is not None:
            self._lock_engine.dispose()

    def health(self) -> list[MailboxHealth]:
        return [w.health() for w in self.watchers]


def backfill(
    settings: Settings,
    factory: sessionmaker[Session],
    region: str,
    since: date,
    clock: Clock,
    on_accepted: OnAccepted | None = None,
) -> int:
    """Accept the mail of ``region``'s folder received since ``since`` (``imap backfill``).

    Returns the number of messages newly accepted (duplicates are moved but not counted). Safe
    beside a running watcher: both go through the same source keys.
    """
    conf = settings.region(region)
    if conf is None or conf.imap is None:
        raise ConfigError([("regions", f"no [regions.imap] for region {region!r}")])
    key = mailbox_key(region, conf.imap.folder)
    priority = Prioritiser(settings, factory.kw["bind"])
    session = ImapSession(conf.imap)
    status = session.open()
    count = 0
    try:
        uids = session.uids_since(since)
        for start in range(0, len(uids), FETCH_BATCH):
            bodies = session.fetch(uids[start : start + FETCH_BATCH])
            for uid, raw in sorted(bodies.items()):
                source_key = f"imap:{key}:{status.uidvalidity}:{uid}"
                accepted = accept_message(factory, raw, region, source_key, clock, rule=priority.rule())
                session.mark_processed(uid)
                with transaction(factory) as db:
                    ack = db.get(InboundSourceKey, source_key)
                    if ack is not None and ack.acknowledged_at is None:
                        ack.acknowledged_at = clock.now()
                if not accepted.duplicate:
                    count += 1
                    if on_accepted is not None:
                        on_accepted(accepted.inbound_id)
    finally:
        session.close()
    return count
