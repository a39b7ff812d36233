"""Accept: store the raw bytes durably, deduplicated, before the source gets its answer (README, "How it works").

Accept parses nothing beyond what routing needs (the envelope) and never loses a message. The
region of a message is where it arrived (docs/guarantees.md): the IMAP mailbox, or each regional
SMTP envelope recipient. One SMTP transaction to several regional mailboxes is stored once per
receiving region (``intake/writer.py``), the same bytes in each row, and each row is processed
on its own. A message whose content hash is already stored *for the same region*
(``dedup_key``) is a duplicate: the source may be answered as if accepted (SMTP 250, IMAP move)
because that region's copy is safe in the database. The same bytes sent later to another region
are that region's message. A source key (``imap:ARA:INBOX:<uidvalidity>:<uid>``) records the
server-side identity for exactly-once IMAP intake.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Insert, Table, bindparam, select
from sqlalchemy.orm import Session

from mailgateway.intake.priority import NORMAL, PriorityRule
from mailgateway.store import fast
from mailgateway.store.models import InboundMessage, InboundSourceKey, dedup_key
from mailgateway.wire import canonical

_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Accepted:
    inbound_id: int
    duplicate: bool
    # The other receiving regions' rows of the same SMTP transaction (intake/writer.py).
    others: tuple[Accepted, ...] = ()

    @property
    def everywhere_duplicate(self) -> bool:
        """Every receiving region had this message already (nothing new to process)."""
        return all(a.duplicate for a in (self, *self.others))

    @property
    def fresh(self) -> list[int]:
        """Ids of the rows this accept stored (duplicates excluded): what is to be processed."""
        return [a.inbound_id for a in (self, *self.others) if not a.duplicate]


def content_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def stored_form(raw: bytes) -> bytes:
    """``canonical(raw)`` (mailgateway.wire), without its two copying passes when ``raw`` is
    already canonical, as what an MTA sends over SMTP is (CRLF lines, RFC 5321 §2.3.8): every LF
    preceded by a CR, no BOM. Two counting passes in C, no allocation; ``raw`` itself is returned."""
    if not raw.startswith(_BOM) and (lf := raw.count(b"\n")) and lf == raw.count(b"\r\n"):
        return raw
    return canonical(raw)


@dataclass(frozen=True)
class Arrival:
    """One message to store, as it will be stored: ``raw`` canonical (``stored_form``) and hashed.

    ``regions``: every receiving region (one row each, the same bytes), or ``(None,)`` for a
    message without arrival information (the bounce address, ``ingest``). ``priority``: its place
    in the processing queue (intake/priority.py; it orders, it grants nothing)."""

    raw: bytes
    digest: str
    source: str
    mail_from: str | None
    rcpt_tos: tuple[str, ...]
    regions: tuple[str | None, ...]
    peer: str | None = None
    priority: int = NORMAL

    @classmethod
    def of(cls, raw: bytes, *, source: str, mail_from: str | None = None, rcpt_tos: Sequence[str] = (),
           regions: Sequence[str | None] = (None,), peer: str | None = None,
           rule: PriorityRule | None = None) -> Arrival:
        """Normalise line endings once, before hashing (docs/guarantees.md, "one view"); ``rule``
        decides the priority from the envelope and the From of the stored bytes (no rule: NORMAL)."""
        raw = stored_form(raw)
        priority = rule.priority(mail_from, raw) if rule is not None else NORMAL
        return cls(raw, content_hash(raw), source, mail_from, tuple(r.lower() for r in rcpt_tos),
                   tuple(dict.fromkeys(regions or (None,))), peer, priority)


# ``INSERT … ON CONFLICT (dedup_key) DO NOTHING RETURNING id, dedup_key``, one per dialect
# (SQLite ≥ 3.35, PostgreSQL), built once so SQLAlchemy's compiled cache serves every batch.
_INSERTS: dict[str, Insert] = {}
_TABLE = cast(Table, InboundMessage.__table__)


def _insert_once(dialect: str) -> Insert:
    stmt = _INSERTS.get(dialect)
    if stmt is None:
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt = pg_insert(_TABLE).on_conflict_do_nothing(index_elements=["dedup_key"])
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(_TABLE).on_conflict_do_nothing(index_elements=["dedup_key"])
        stmt = _INSERTS[dialect] = stmt.returning(_TABLE.c.id, _TABLE.c.dedup_key)
    return stmt


# Built once (the batch's hashes are one expanding parameter): no statement construction per batch.
# ORM attributes (not table columns): an ORM session autoflushes pending changes first.
_STORED = (select(InboundMessage.id, InboundMessage.sha256, InboundMessage.dedup_key, InboundMessage.region)
           .where(InboundMessage.sha256.in_(bindparam("digests", expanding=True))).order_by(InboundMessage.id))
_STORED_ONE = (select(InboundMessage.id, InboundMessage.sha256, InboundMessage.dedup_key, InboundMessage.region)
               .where(InboundMessage.sha256 == bindparam("digest")).order_by(InboundMessage.id))
_RACED = select(InboundMessage.id, InboundMessage.dedup_key).where(
    InboundMessage.dedup_key.in_(bindparam("keys", expanding=True)))


def _earlier(stored: Sequence[tuple[int, str, str | None]], key: str, region: str | None) -> int | None:
    """The stored row that makes (this hash, ``region``) a duplicate, or None (``stored``: the rows
    of this hash, oldest first, as (id, dedup_key, region))."""
    for inbound_id, stored_key, stored_region in stored:
        # Without arrival information (``ingest``) the bytes stored for any region are a duplicate.
        # With a region: this region's copy, stored for it, or stored without arrival information
        # and routed to it by processing (the runner records the region it was processed for).
        if region is None or stored_key == key or stored_region == region:
            return inbound_id
    return None


def accept_batch(session: Session | Connection, arrivals: Sequence[Arrival], now: datetime) -> list[Accepted]:
    """Store ``arrivals`` in the caller's transaction, one row per receiving region; the caller
    commits before answering any source.

    ``session``: an ORM session (``accept_in``: it autoflushes what the caller changed) or a Core
    connection (the accept writer's group commit, intake/writer.py). Three statements whatever the
    batch size: one SELECT of the rows already stored with these hashes, one multi-row ``INSERT … ON CONFLICT
    (dedup_key) DO NOTHING RETURNING`` of the new ones, and — only when a concurrent writer (another
    PostgreSQL instance, an IMAP watcher) stored a key meanwhile — one SELECT of those keys. Within
    the batch, arrivals are decided in order, as if accepted one after the other: the second copy
    of the same bytes for the same region is a duplicate of the first.
    """
    if not arrivals:
        return []
    digests = list(dict.fromkeys(a.digest for a in arrivals))
    # The accept writer's connection on SQLite: each statement on the driver (store/fast.py), a
    # row at a time — one process, no round trips — for 110 µs of CPU a message instead of 190
    # through SQLAlchemy's expanding IN and multi-row INSERT (issue 19: the writer shares the
    # daemon's GIL with the SMTP event loop; accept alone ran at 0.38 × a bare sink).
    per_row = session if isinstance(session, Connection) and session.dialect.name == "sqlite" else None
    found: dict[str, list[tuple[int, str, str | None]]] = {}
    stored = ([row for digest in digests for row in fast.run(per_row, _STORED_ONE, {"digest": digest}).rows]
              if per_row is not None else session.execute(_STORED, {"digests": digests}))
    for inbound_id, digest, key, region in stored:
        found.setdefault(digest, []).append((int(inbound_id), key, region))
    # Per arrival and region: ("old", id) a stored row, ("twin", key) a row stored by an earlier
    # arrival of this batch (both duplicates), ("new", key) a row this arrival stores.
    plans: list[list[tuple[str, Any]]] = []
    planned: dict[str, list[tuple[str, str | None]]] = {}  # hash -> (key, region) planned in this batch
    rows: list[dict[str, Any]] = []
    for a in arrivals:
        plan: list[tuple[str, Any]] = []
        for region in a.regions:
            key = dedup_key(a.digest, region)
            existing = _earlier(found.get(a.digest, ()), key, region)
            if existing is not None:
                plan.append(("old", existing))
                continue
            earlier = planned.setdefault(a.digest, [])
            twin = next((k for k, r in earlier if region is None or k == key), None)
            if twin is not None:
                plan.append(("twin", twin))
                continue
            earlier.append((key, region))
            plan.append(("new", key))
            rows.append({"sha256": a.digest, "dedup_key": key, "raw": a.raw, "size": len(a.raw),
                         "source": a.source, "mail_from": a.mail_from, "peer": a.peer,
                         "rcpt_tos": list(a.rcpt_tos), "region": region, "received_at": now,
                         "status": "received", "attempts": 0, "priority": a.priority})
        plans.append(plan)
    ids: dict[str, int] = {}
    if rows and per_row is not None:
        insert = _insert_once("sqlite")
        ids = {key: int(i) for row in rows for i, key in fast.run(per_row, insert, row).rows}
    elif rows:
        dialect = session.get_bind().dialect if isinstance(session, Session) else session.dialect
        ids = {key: int(i) for i, key in session.execute(_insert_once(dialect.name), rows)}
    raced = [r["dedup_key"] for r in rows if r["dedup_key"] not in ids]
    if raced:  # stored by a concurrent writer since the SELECT: a duplicate of its row
        ids.update((key, int(i)) for i, key in session.execute(_RACED, {"keys": raced}))
    out = []
    for plan in plans:
        done = [Accepted(value, duplicate=True) if kind == "old"
                else Accepted(ids[value], duplicate=kind == "twin" or value in raced) for kind, value in plan]
        out.append(Accepted(done[0].inbound_id, done[0].duplicate, tuple(done[1:])))
    return out


def accept_in(
    session: Session,
    raw: bytes,
    *,
    source: str,
    now: datetime,
    mail_from: str | None = None,
    rcpt_tos: Sequence[str] = (),
    source_key: str | None = None,
    region: str | None = None,
    peer: str | None = None,
    rule: PriorityRule | None = None,
) -> Accepted:
    """Store ``raw`` in the caller's transaction; the caller commits before answering the source.

    What is stored (and hashed) is ``canonical(raw)``: line endings are normalised once, here, for
    SMTP, IMAP and CLI alike, so that DKIM verification and analysis read the same bytes (docs/guarantees.md).
    ``rule``: the processing priority (intake/priority.py; IMAP intake), else NORMAL.
    """
    if source_key is not None:
        known = session.get(InboundSourceKey, source_key)
        if known is not None:
            return Accepted(known.inbound_id, duplicate=True)
    arrival = Arrival.of(raw, source=source, mail_from=mail_from, rcpt_tos=rcpt_tos, regions=(region,), peer=peer,
                         rule=rule)
    accepted = accept_batch(session, [arrival], now)[0]
    if source_key is not None:
        session.add(InboundSourceKey(key=source_key, inbound_id=accepted.inbound_id))
        session.flush()
    return accepted
