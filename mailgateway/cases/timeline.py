"""The append-only, tamper-evident case timeline, and the audit ledger that anchors it.

Each event's hash is ``sha256(prev_hash || canonical JSON of the event)``; the first event chains
from 64 zeros. Since migration 0002 the canonical JSON also holds ``state``: the sha256 of the
case's audited state (status, severity, declarant, TLP, fields, links... see ``STATE_COLUMNS``)
as it is written with the event. So:

- changing, inserting or deleting an event breaks every later hash;
- editing an audited column of the case row without an event makes the row disagree with the
  state sealed in its latest event;
- each transaction that writes events also appends, per case, an entry ``(reference, last event
  seq, last event hash)`` to its region's ``audit_ledger``, itself a hash chain. The ledger lives
  outside the mutable case row: deleting a case, truncating its tail events or rewriting its row
  together with ``last_event_hash``/``event_count`` no longer verifies.

``mailgateway cases verify`` (cases/verify.py) checks all of this. The chains prove integrity
against edits through the database, not against someone who recomputes every chain; the ledger
heads printed by ``cases verify`` are what to copy elsewhere to anchor them.

Events are *sealed* (state, prev_hash, hash) in a ``before_flush`` hook rather than in
``append_event``: callers routinely append an event and then set the columns it describes (a new
case is numbered, its first event appended, then its FINESS, declarant... are filled in), and the
state an event seals must be the state written with it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, cast

from sqlalchemy import Insert, Table, bindparam, insert, inspect, select, update
from sqlalchemy import event as orm_event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, SessionTransaction, UOWTransaction

from mailgateway.clock import aware
from mailgateway.store import fast, inserted, written
from mailgateway.store.models import AuditHead, AuditLedger, Case, CaseEvent, InboundMessage

GENESIS = "0" * 64
# The audited state of a case: what the timeline vouches for. Not audited: updated_at, the
# *_at milestones and anonymised_at (bookkeeping, set with an event anyway), the chain head itself.
STATE_COLUMNS = ("reference", "region", "kind", "status", "severity", "nature", "incident_type", "category",
                 "tlp", "title", "finess", "establishment", "declarant", "assignee", "fields", "origin_message_id")
# Links are sealed by the *reference* they point at, so re-pointing an id is seen.
LINK_COLUMNS = (("merged_into_id", "merged_into"), ("linked_case_id", "linked_case"))
AUDITED_ATTRIBUTES = STATE_COLUMNS + tuple(column for column, _ in LINK_COLUMNS)
SAFETY_NET_TYPE = "etat"

_PENDING = "mailgateway.timeline.pending"
_TOUCHED = "mailgateway.timeline.touched"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def json_copy(value: Any) -> Any:
    """``value`` as storing it as JSON and reading it back gives it (a copy: later changes by the
    caller are not the event's). Plain values — str, int, bool, None, dicts of str keys, lists —
    are copied as they are, 6 → 1 µs an event (issue 19); anything else (a float, a tuple, a
    date, a subclass) takes the round trip."""
    try:
        return _plain_copy(value)
    except TypeError:
        return json.loads(json.dumps(value, default=str))


def _plain_copy(value: Any) -> Any:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is dict:
        copied = {}
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(key)
            copied[key] = _plain_copy(item)
        return copied
    if kind is list:
        return [_plain_copy(item) for item in value]
    raise TypeError(kind)


def _canonical(case_ref: str, seq: int, at: datetime, actor: str, type_: str, data: dict[str, Any],
               state: str | None = None) -> bytes:
    body: dict[str, Any] = {
        "case": case_ref,
        "seq": seq,
        "at": aware(at).astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": actor,
        "type": type_,
        "data": data,
    }
    if state is not None:  # events written before migration 0002 keep their original hash
        body["state"] = state
    return _dumps(body)


def event_hash(prev: str, case_ref: str, seq: int, at: datetime, actor: str, type_: str, data: dict[str, Any],
               state: str | None = None) -> str:
    return hashlib.sha256(prev.encode() + _canonical(case_ref, seq, at, actor, type_, data, state)).hexdigest()


def state_hash(values: Mapping[str, Any], reference_of: Callable[[int | None], str | None]) -> str:
    """sha256 of the audited state, from column values (ORM object or raw row alike)."""
    state = {name: values.get(name) for name in STATE_COLUMNS}
    for column, key in LINK_COLUMNS:
        state[key] = reference_of(values.get(column))
    return hashlib.sha256(_dumps(state)).hexdigest()


def ledger_hash(prev: str, region: str, seq: int, case_ref: str, event_seq: int, event_hash_: str) -> str:
    body = {"region": region, "seq": seq, "case": case_ref, "event_seq": event_seq, "event_hash": event_hash_}
    return hashlib.sha256(prev.encode() + _dumps(body)).hexdigest()


def append_event(
    session: Session,
    case: Case,
    *,
    type: str,
    actor: str,
    at: datetime,
    data: dict[str, Any] | None = None,
    inbound_id: int | None = None,
    outbound_id: int | None = None,
) -> PendingEvent:
    """Append one event: sealed (state, prev_hash, hash) and written at the next flush, anchored
    in the ledger at commit."""
    event = _add_event(session, case, type=type, actor=actor, at=at, data=data,
                       inbound_id=inbound_id, outbound_id=outbound_id)
    session.info.setdefault(_PENDING, []).append((case, event))
    case.updated_at = at
    # No flush here: events are written with the rest of the transaction (autoflush before any
    # query), which matters on the processing hot path (several events per message).
    return event


@dataclass(slots=True)
class PendingEvent:
    """An event appended and not written yet: the row ``case_events`` will hold. Not an ORM
    object (issue 19: building a mapped instance per event cost more than writing it)."""

    case_id: int | None
    seq: int
    at: datetime
    actor: str
    type: str
    data: dict[str, Any]
    inbound_id: int | None
    outbound_id: int | None
    prev_hash: str = ""
    hash: str = ""
    state_hash: str | None = None


def _add_event(session: Session, case: Case, *, type: str, actor: str, at: datetime, data: dict[str, Any] | None,
               inbound_id: int | None = None, outbound_id: int | None = None) -> PendingEvent:
    payload = json_copy(data or {})  # what is hashed is what is stored
    seq = (case.event_count or 0) + 1
    # Not in the session: sealed and written by one statement at the next flush (_write).
    event = PendingEvent(case_id=case.id, seq=seq, at=at, actor=actor, type=type, data=payload,
                         inbound_id=inbound_id, outbound_id=outbound_id)
    case.event_count = seq
    return event


# --- sealing at flush ----------------------------------------------------------------------------


def _audited_changes(case: Case) -> list[str]:
    state = inspect(case)
    return [name for name in AUDITED_ATTRIBUTES if state.attrs[name].history.has_changes()]


def _reference_in(session: Session) -> Callable[[int | None], str | None]:
    def reference_of(case_id: int | None) -> str | None:
        if case_id is None:
            return None
        other = session.get(Case, case_id)  # identity map first: both sides of a link are loaded
        return other.reference if other is not None else None
    return reference_of


def _before_flush(session: Session, _context: UOWTransaction, _instances: object) -> None:
    # Events of a savepoint rolled back were dropped with it (_rolled_back).
    pending: list[tuple[Case, PendingEvent]] = session.info.pop(_PENDING, [])
    # Safety net: every code path that changes a case appends an event saying so (cases/service.py,
    # processing, jobs); one that forgets would leave a row the chain does not vouch for, and
    # ``cases verify`` would then cry wolf on an honest database. Rather than trust every present
    # and future writer, a change of an audited column flushed without any event for that case gets
    # an "etat" event naming the columns: the chain stays honest (it records what the gateway wrote)
    # and edits made *outside* the gateway (SQL) still stand out. Its time is the case's updated_at:
    # the injected clock is not reachable from here.
    with_events = {id(case) for case, _ in pending}
    for obj in list(session.dirty):
        if isinstance(obj, Case) and obj.id is not None and id(obj) not in with_events:
            changed = _audited_changes(obj)
            if changed:
                event = _add_event(session, obj, type=SAFETY_NET_TYPE, actor="passerelle",
                                   at=obj.updated_at, data={"champs": changed})
                pending.append((obj, event))
                with_events.add(id(obj))
    if pending:
        _seal(session, pending)
        _write(session, pending)
    # The case's new head and count, and the message's status, by statement (issue 19).
    written.write_changed(session, (Case, InboundMessage))


def _write(session: Session, pending: list[tuple[Case, PendingEvent]]) -> None:
    """The sealed events, in one INSERT of many rows (issue 19: the unit of work's flush of five
    new objects per declaration cost ≈ 0.5 ms; nothing reads an event's id back). Every writer
    writes a new case before its first event (``new_case`` by statement, ``transfer`` by a
    flush): an event's hash seals its case's row, which must exist."""
    if any(case.id is None for case, _event in pending):
        raise ValueError("event appended to a case not written yet: write the case first")
    fast.execute(session, _events_insert(), [{name: getattr(event, name) for name in _EVENT_COLUMNS}
                                             for _case, event in pending])


_EVENT_COLUMNS = tuple(c.key for c in cast(Table, CaseEvent.__table__).c if c.key != "id")


@cache
def _events_insert() -> Insert:
    return insert(cast(Table, CaseEvent.__table__))


def _seal(session: Session, pending: list[tuple[Case, PendingEvent]]) -> None:
    reference_of = _reference_in(session)
    states: dict[int, str] = {}
    touched: dict[int, Case] = session.info.setdefault(_TOUCHED, {})
    for case, event in pending:
        state = states.get(id(case))
        if state is None:
            state = states[id(case)] = state_hash({name: getattr(case, name) for name in AUDITED_ATTRIBUTES},
                                                  reference_of)
        prev = case.last_event_hash or GENESIS
        event.case_id = case.id
        event.prev_hash = prev
        event.state_hash = state
        event.hash = event_hash(prev, case.reference, event.seq, event.at, event.actor, event.type, event.data,
                                state)
        case.last_event_hash = event.hash
        touched[id(case)] = case


def _before_commit(session: Session) -> None:
    """Anchor the chain head of every case the transaction wrote events for, once per
    transaction (not per flush: processing flushes before each query): one ledger entry per case
    and one head read and update per region."""
    if session.in_nested_transaction():
        return  # a savepoint's release: the outer transaction anchors at its commit
    session.flush()  # seal what is pending first: the anchor is the final head
    touched: dict[int, Case] = session.info.pop(_TOUCHED, {})
    cases = [case for case in touched.values() if inspect(case).persistent and case.last_event_hash]
    for region in sorted({case.region for case in cases}):
        seq, prev = _locked_head(session, region)
        entries: list[dict[str, Any]] = []
        for case in cases:
            if case.region == region:
                seq += 1
                last_hash = case.last_event_hash or GENESIS
                entry_hash = ledger_hash(prev, region, seq, case.reference, case.event_count, last_hash)
                entries.append({"region": region, "seq": seq, "case_reference": case.reference,
                                "event_seq": case.event_count, "event_hash": last_hash, "prev_hash": prev,
                                "hash": entry_hash})
                prev = entry_hash
        # Core statements (no ORM objects to track): the ledger costs three statements per
        # region and transaction, whatever the number of events.
        fast.execute(session, _ledger_insert(), entries)
        fast.execute(session, _head_update(), {"head_region": region, "seq": seq, "hash": prev})


def _locked_head(session: Session, region: str) -> tuple[int, str]:
    """The region's ledger head (seq, hash), locked until commit (PostgreSQL row lock; SQLite
    transactions already hold the write lock, BEGIN IMMEDIATE): concurrent instances append in turn."""
    rows = fast.execute(session, _head_select(), {"head_region": region}).rows
    if not rows:
        values = {"region": region, "seq": 0, "hash": GENESIS}
        dialect = session.get_bind().dialect.name
        insert_head = pg_insert if dialect == "postgresql" else sqlite_insert
        session.execute(insert_head(AuditHead).values(values).on_conflict_do_nothing())
        rows = fast.execute(session, _head_select(), {"head_region": region}).rows
    seq, hash_ = rows[0]
    return int(seq), str(hash_)


# The ledger's statements, built once (issue 19: every processing batch anchors).
@cache
def _ledger_insert() -> Insert:
    return insert(cast(Table, AuditLedger.__table__))


@cache
def _head_select() -> Any:
    c = cast(Table, AuditHead.__table__).c
    return select(c.seq, c.hash).where(c.region == bindparam("head_region")).with_for_update()


@cache
def _head_update() -> Any:
    table = cast(Table, AuditHead.__table__)
    return update(table).where(table.c.region == bindparam("head_region")).values(
        seq=bindparam("seq"), hash=bindparam("hash"))


def _rolled_back(session: Session, previous: SessionTransaction) -> None:
    """A savepoint rolled back: the events it appended and did not flush are gone with it (a
    savepoint begins with a flush, so everything pending is its own)."""
    if previous.nested:
        session.info.pop(_PENDING, None)


def _transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # rolled back or committed: nothing left to anchor
        session.info.pop(_TOUCHED, None)
        session.info.pop(_PENDING, None)


@contextmanager
def savepoint(session: Session) -> Iterator[None]:
    """A savepoint (``SAVEPOINT``) for one unit inside a longer transaction — one message of a
    processing batch (processing/runner.py): on an exception it is rolled back alone and the
    cases it touched are forgotten by the ledger anchor, so the outer commit anchors only what it
    writes (a case's head re-read after the rollback would otherwise be anchored a second time)."""
    touched = dict(session.info.get(_TOUCHED, {}))
    position = inserted.mark(session)
    nested = session.begin_nested()
    try:
        yield
        nested.commit()  # flushes: a failing INSERT raises here, still inside this savepoint
    except BaseException:
        # Still this savepoint's to close when its own flush failed (at ``commit`` above): the
        # flush rolled the SAVEPOINT back but left the transaction « deactive », and until it
        # is rolled back every statement of the session raises (outside tester: the quarantine
        # of the failing message could then not be written, and it was tried again and again).
        if nested.is_active or session.get_nested_transaction() is nested:
            nested.rollback()
        session.info[_TOUCHED] = touched
        inserted.forget_since(session, position)  # rows inserted by statement are gone too
        raise


# Registered on the Session class: every session of the process, whichever module made it.
orm_event.listen(Session, "before_flush", _before_flush)
orm_event.listen(Session, "before_commit", _before_commit)
orm_event.listen(Session, "after_transaction_end", _transaction_end)
orm_event.listen(Session, "after_soft_rollback", _rolled_back)


@dataclass(frozen=True)
class ChainBreak:
    """One problem found by ``cases verify``: ``seq`` names the event when there is one."""

    case_ref: str
    seq: int | None
    reason: str

    def __str__(self) -> str:
        if self.seq is None:
            return f"{self.case_ref}: {self.reason}"
        return f"{self.case_ref}: événement {self.seq} : {self.reason}"

