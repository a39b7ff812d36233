"""Mailbox leadership: with several instances on one PostgreSQL database, one watcher per mailbox.

Every instance runs a watcher for every ``[regions.imap]`` mailbox; only the one holding the
mailbox's lock connects to the IMAP server, the others wait in ``standby`` and try again every
``retry_seconds``. The lock is a PostgreSQL *session-level* advisory lock
(``pg_try_advisory_lock``) taken on a dedicated connection kept open for as long as the watcher
leads. PostgreSQL releases it when that session ends, whatever the reason: graceful stop, SIGKILL
of the holder (the kernel closes the socket and the backend exits at once), ``pg_terminate_backend``.
Nothing depends on timeouts or clocks agreeing between machines, and no row is left to clean up.

The watcher calls :meth:`Leadership.check` between IMAP round trips (each IDLE step, each fetch
batch). A failing check (connection lost, database restarted) means the lock may already belong to
someone else: the watcher drops its IMAP session and goes back to standby. A new leader waits
``takeover_grace`` before connecting, longer than the old leader needs to notice, so two watchers
never work on one mailbox at the same time. Even if they did, accepts are deduplicated by source
key (``imap:<mailbox>:<uidvalidity>:<uid>``), so mail would still be taken once.

SQLite is single-instance (``check-config`` refuses ``instances > 1``): every watcher leads.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

# libpq options for the lock connection: give up connecting after 5 s, and notice a vanished
# server within ~30 s instead of the kernel's 15-minute retransmission timeout (tcp_user_timeout,
# in ms), so a leader cut off from its database stops watching.
_LOCK_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 15000,
    "application_name": "mailgateway-imap-leader",
}


class LeadershipLost(Exception):
    """The lock connection failed: another instance may lead now; stop watching."""


def lock_key(mailbox: str) -> int:
    """A stable signed 64-bit advisory lock key for a mailbox (``region:folder``)."""
    digest = hashlib.sha256(f"mailgateway:imap:{mailbox}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Leadership(Protocol):
    """Who may watch one mailbox. Methods are called from the watcher's own thread only."""

    # Seconds between two attempts while in standby.
    retry_seconds: float
    # Seconds a new leader waits before connecting (see module docstring).
    takeover_grace: float

    def acquire(self) -> bool:
        """Take the lock if it is free; True when this watcher leads (now or already)."""
        ...

    def check(self) -> None:
        """Raise :class:`LeadershipLost` unless the lock is still ours."""
        ...

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        ...


class SoleLeader:
    """SQLite, a single instance: always the leader, nothing to lock."""

    retry_seconds = 0.0
    takeover_grace = 0.0

    def acquire(self) -> bool:
        return True

    def check(self) -> None:
        return None

    def release(self) -> None:
        return None


class AdvisoryLock:
    """A PostgreSQL session-level advisory lock held on a dedicated connection.

    A standby keeps its connection between attempts (no reconnection every few seconds); the
    connection is closed when the lock is released or lost.
    """

    def __init__(self, engine: Engine, mailbox: str, *, retry_seconds: float = 3.0,
                 takeover_grace: float = 2.0) -> None:
        self.engine = engine
        self.mailbox = mailbox
        self.key = lock_key(mailbox)
        self.retry_seconds = retry_seconds
        self.takeover_grace = takeover_grace
        self._conn: Connection | None = None
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    def acquire(self) -> bool:
        if self._held:
            try:
                self.check()
                return True
            except LeadershipLost:
                pass  # connection closed by check(); try to take the lock again at once
        try:
            if self._conn is None:
                # Autocommit: a session-level lock must not depend on a transaction staying open.
                self._conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._held = bool(self._conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}))
        except Exception as exc:
            log.warning("IMAP %s: leadership lock unavailable: %s", self.mailbox, exc)
            self._discard()
            return False
        return self._held

    def check(self) -> None:
        conn = self._conn
        if conn is None or not self._held:
            raise LeadershipLost(f"IMAP {self.mailbox}: leadership lock not held")
        try:
            # pg_locks shows a bigint key as classid (high 32 bits), objid (low), objsubid 1.
            held = conn.scalar(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                     " AND pid = pg_backend_pid() AND objsubid = 1"
                     " AND classid = CAST((CAST(:k AS bigint) >> 32) & 4294967295 AS oid)"
                     " AND objid = CAST(CAST(:k AS bigint) & 4294967295 AS oid)"),
                {"k": self.key},
            )
        except Exception as exc:
            self._discard()
            raise LeadershipLost(f"IMAP {self.mailbox}: leadership lock connection lost: {exc}") from exc
        if not held:
            self._discard()
            raise LeadershipLost(f"IMAP {self.mailbox}: leadership lock no longer held")

    def release(self) -> None:
        if self._held and self._conn is not None:
            try:
                self._conn.scalar(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            except Exception:
                log.debug("IMAP %s: unlock failed (connection gone: the lock went with it)", self.mailbox)
        self._discard()

    def _discard(self) -> None:
        conn, self._conn, self._held = self._conn, None, False
        _close(conn)


def _close(conn: Connection | None) -> None:
    if conn is None:
        return
    try:
        conn.close()  # NullPool: closes the session, which releases any lock it still held
    except Exception:
        log.debug("closing the leadership connection failed", exc_info=True)


def lock_engine(url: str) -> Engine:
    """An engine for lock connections: never pooled, so closing one ends its session."""
    return create_engine(url, poolclass=NullPool, connect_args=_LOCK_CONNECT_ARGS)


def leadership_factory(url: str) -> tuple[Engine | None, Any]:
    """``(engine_to_dispose, mailbox -> Leadership)`` for the database at ``url``."""
    if not url.startswith("postgresql"):
        return None, lambda _mailbox: SoleLeader()
    engine = lock_engine(url)
    return engine, lambda mailbox: AdvisoryLock(engine, mailbox)
