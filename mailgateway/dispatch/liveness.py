"""Which senders are alive: outbox rows left ``sending`` by a dead instance go back at start-up.

A claim is a lease (dispatch/sender.py): a sender that dies leaves its rows ``sending`` until
``lease_until`` — five minutes by default — and the housekeeping job that requeues them runs every
ten. After a crash that held an acknowledgement back for minutes. A restarting sender instead asks
who is still alive and requeues the rows of every owner that is provably dead, at once, before
its first claim; a live owner's rows are left alone, so the documented duplicate window (relay
250 received, not yet recorded) stays exactly what it was.

Who is dead:

- SQLite is single-instance and owners are ``<host>:<pid>`` (the daemon's instance id): a row of
  our own id, of another host (a container restarted under a new name) or of a process of this
  host that no longer exists belongs to a dead sender. A live process of this host (an
  ``outbox flush`` running beside us) keeps its rows, and so does an owner whose id names no
  process (an old ``cli-flush`` row: its lease decides, as before).
- PostgreSQL: every running sender holds a session-level advisory lock keyed by its owner id on
  a dedicated connection (``SenderLiveness``). PostgreSQL drops the lock when that session ends,
  whatever the reason (SIGKILL, power cut seen by TCP keepalives, ``pg_terminate_backend``), so a
  lock we can take names a dead owner — no heartbeat row, no clocks compared between machines.
  Owners that are not ``<host>:<pid>`` ids are left to their lease.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, select, text, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from mailgateway.clock import Clock
from mailgateway.store.engine import transaction, write_gate
from mailgateway.store.models import OutboundMessage

log = logging.getLogger("mailgateway.sender")

# Like the IMAP leadership lock: notice a vanished server within ~30 s, give up connecting in 5 s.
_LOCK_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 5, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
    "keepalives_count": 3, "tcp_user_timeout": 15000, "application_name": "mailgateway-sender",
}


def owner_key(owner: str) -> int:
    """Signed 64-bit advisory lock key of a sender owner id."""
    digest = hashlib.sha256(f"mailgateway:sender:{owner}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def parse_owner(owner: str) -> tuple[str, int] | None:
    """``(host, pid)`` of a daemon's ``<host>:<pid>`` owner id, else None."""
    host, sep, pid = owner.rpartition(":")
    if not sep or not host or not pid.isdigit() or len(pid) > 9:
        return None
    return host, int(pid)


def this_process() -> str:
    """This process's owner id, ``<host>:<pid>`` (the daemon's instance id, a CLI's own)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def dead_on_sqlite(owner: str, me: str) -> bool:
    """Whether ``owner`` (of a ``sending`` row, seen at our start-up) cannot be sending any more."""
    if owner == me:  # ours before our first claim: a previous process with the same id (PID 1)
        return True
    parsed = parse_owner(owner)
    if parsed is None:
        return False
    host, pid = parsed
    if host != socket.gethostname():
        return True  # SQLite has one host; check-config refuses instances > 1
    return pid != os.getpid() and not _process_alive(pid)


class SenderLiveness:
    """PostgreSQL: our advisory lock, held while we send; SQLite: nothing to hold."""

    def __init__(self, engine: Engine, owner: str) -> None:
        self.owner = owner
        self.postgres = engine.dialect.name == "postgresql"
        self._engine = (create_engine(engine.url, poolclass=NullPool, connect_args=_LOCK_CONNECT_ARGS)
                        if self.postgres else None)
        self._conn: Connection | None = None

    def hold(self) -> None:
        """Take our own lock (PostgreSQL) before any claim: from now on we count as alive."""
        if self._engine is None or self._conn is not None:
            return
        conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        conn.scalar(text("SELECT pg_advisory_lock(:k)"), {"k": owner_key(self.owner)})
        self._conn = conn

    def dead_owners(self, owners: set[str]) -> set[str]:
        """The owners among ``owners`` that are provably dead (see the module docstring)."""
        if not self.postgres:
            return {o for o in owners if dead_on_sqlite(o, self.owner)}
        dead = {o for o in owners if o == self.owner}
        conn = self._conn
        if conn is None:
            return dead
        return dead | _unlocked(conn, owners - dead)

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()  # NullPool: the session ends, and its lock with it
            except Exception:
                log.debug("closing the sender liveness connection failed", exc_info=True)
        if self._engine is not None:
            self._engine.dispose()


def _unlocked(conn: Connection, owners: set[str]) -> set[str]:
    """PostgreSQL: the ``<host>:<pid>`` owners whose advisory lock nobody holds (dead)."""
    dead = set()
    for owner in owners:
        if parse_owner(owner) is None:
            continue
        key = owner_key(owner)
        if conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}):
            conn.scalar(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            dead.add(owner)
    return dead


def dead_among(engine: Engine, owners: set[str], me: str) -> set[str]:
    """The owners among ``owners`` that are provably dead, asked by a process that holds no
    lock of its own for it (a bulletin's fan-out owner, seen by a starting daemon). ``me`` (this
    process's id) counts as dead: a row of ours seen before we began is a previous process's."""
    if engine.dialect.name != "postgresql":
        return {o for o in owners if dead_on_sqlite(o, me)}
    probe = create_engine(engine.url, poolclass=NullPool, connect_args=_LOCK_CONNECT_ARGS)
    try:
        with probe.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            return {o for o in owners if o == me} | _unlocked(conn, owners - {me})
    finally:
        probe.dispose()


def reclaim_dead_senders(factory: sessionmaker[Session], clock: Clock, liveness: SenderLiveness) -> int:
    """Requeue now the ``sending`` rows of dead owners; return how many."""
    m = OutboundMessage
    now = clock.now()
    with write_gate(factory.kw["bind"]), transaction(factory) as session:
        owners = {str(o) for o in session.scalars(
            select(m.lease_owner).where(m.status == "sending", m.lease_owner.is_not(None)).distinct())}
        dead = liveness.dead_owners(owners)
        if not dead:
            return 0
        result = session.execute(
            update(m).where(m.status == "sending", m.lease_owner.in_(sorted(dead)))
            .values(status="queued", lease_until=None, lease_owner=None, next_attempt_at=now)
            .execution_options(synchronize_session=False))
        count = int(getattr(result, "rowcount", 0) or 0)
    if count:
        log.warning("reclaimed %d outbound message(s) left sending by a dead sender (%s)", count,
                    ", ".join(sorted(dead)))
    return count
