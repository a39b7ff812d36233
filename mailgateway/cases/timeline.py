"""The append-only, tamper-evident case timeline.

Each event's hash is ``sha256(prev_hash || canonical JSON of the event)``; the first event chains
from 64 zeros. Changing, inserting or deleting any event breaks every later hash, and
``mailgateway cases verify`` names the first broken event. (The chain proves integrity against
edits through the database, not against someone who recomputes the whole chain; the last hash is
also logged so it can be anchored elsewhere.)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgateway.clock import aware
from mailgateway.store.models import Case, CaseEvent

GENESIS = "0" * 64


def _canonical(case_ref: str, seq: int, at: datetime, actor: str, type_: str, data: dict[str, Any]) -> bytes:
    body = {
        "case": case_ref,
        "seq": seq,
        "at": aware(at).astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": actor,
        "type": type_,
        "data": data,
    }
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def event_hash(prev: str, case_ref: str, seq: int, at: datetime, actor: str, type_: str, data: dict[str, Any]) -> str:
    return hashlib.sha256(prev.encode() + _canonical(case_ref, seq, at, actor, type_, data)).hexdigest()


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
) -> CaseEvent:
    """Append one event; the case row carries the chain head so appends need no extra read."""
    payload = json.loads(json.dumps(data or {}, default=str))  # what is hashed is what is stored
    prev = case.last_event_hash or GENESIS
    seq = (case.event_count or 0) + 1
    event = CaseEvent(
        case_id=case.id,
        seq=seq,
        at=at,
        actor=actor,
        type=type,
        data=payload,
        inbound_id=inbound_id,
        outbound_id=outbound_id,
        prev_hash=prev,
        hash=event_hash(prev, case.reference, seq, at, actor, type, payload),
    )
    session.add(event)
    case.last_event_hash = event.hash
    case.event_count = seq
    case.updated_at = at
    # No flush here: the unit of work writes events with the rest of the transaction (autoflush
    # before any query), which matters on the processing hot path (several events per message).
    return event


@dataclass(frozen=True)
class ChainBreak:
    case_ref: str
    seq: int
    reason: str


def verify_chain(session: Session, case: Case) -> ChainBreak | None:
    """Return the first broken event of ``case``'s timeline, or None when the chain holds."""
    prev = GENESIS
    expected_seq = 1
    events = session.scalars(select(CaseEvent).where(CaseEvent.case_id == case.id).order_by(CaseEvent.seq))
    for event in events:
        if event.seq != expected_seq:
            return ChainBreak(case.reference, expected_seq, "événement manquant")
        if event.prev_hash != prev:
            return ChainBreak(case.reference, event.seq, "chaînage rompu (hash précédent différent)")
        computed = event_hash(prev, case.reference, event.seq, event.at, event.actor, event.type, event.data)
        if computed != event.hash:
            return ChainBreak(case.reference, event.seq, "contenu modifié (hash différent)")
        prev = event.hash
        expected_seq += 1
    if case.last_event_hash not in (None, prev) or (case.event_count or 0) != expected_seq - 1:
        return ChainBreak(case.reference, expected_seq, "fin de chaîne supprimée")
    return None
