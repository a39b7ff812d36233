"""Accept: store the raw bytes durably, deduplicated, before the source gets its answer (README, "How it works").

Accept parses nothing beyond what routing needs (the envelope) and never loses a message. A
message whose content hash is already stored is a duplicate: the source may be answered as if
accepted (SMTP 250, IMAP move) because the first copy is safe in the database. A source key
(``imap:ARA:INBOX:<uidvalidity>:<uid>``) records the server-side identity for exactly-once IMAP
intake.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgateway.store.models import InboundMessage, InboundSourceKey
from mailgateway.wire import canonical


@dataclass(frozen=True)
class Accepted:
    inbound_id: int
    duplicate: bool


def content_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


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
) -> Accepted:
    """Store ``raw`` in the caller's transaction; the caller commits before answering the source.

    What is stored (and hashed) is ``canonical(raw)``: line endings are normalised once, here, for
    SMTP, IMAP and CLI alike, so that DKIM verification and analysis read the same bytes (docs/guarantees.md).
    """
    raw = canonical(raw)
    if source_key is not None:
        known = session.get(InboundSourceKey, source_key)
        if known is not None:
            return Accepted(known.inbound_id, duplicate=True)
    digest = content_hash(raw)
    existing = session.scalar(select(InboundMessage.id).where(InboundMessage.sha256 == digest))
    duplicate = existing is not None
    if existing is None:
        row = InboundMessage(
            sha256=digest,
            raw=raw,
            size=len(raw),
            source=source,
            mail_from=mail_from,
            peer=peer,
            rcpt_tos=[r.lower() for r in rcpt_tos],
            region=region,
            received_at=now,
            status="received",
            attempts=0,
        )
        session.add(row)
        session.flush()
        existing = row.id
    if source_key is not None:
        session.add(InboundSourceKey(key=source_key, inbound_id=existing))
        session.flush()
    return Accepted(existing, duplicate=duplicate)
