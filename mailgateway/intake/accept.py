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

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from mailgateway.store.models import InboundMessage, InboundSourceKey, dedup_key
from mailgateway.wire import canonical


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
    key = dedup_key(digest, region)
    same = select(InboundMessage.id).where(InboundMessage.sha256 == digest)
    if region is not None:
        # This region's copy: stored for it, or stored without arrival information (``ingest``)
        # and routed to it by processing (the runner records the region it was processed for).
        same = same.where(or_(InboundMessage.dedup_key == key, InboundMessage.region == region))
    # Without arrival information (``ingest``) the bytes stored for any region are a duplicate.
    existing = session.scalar(same.order_by(InboundMessage.id).limit(1))
    duplicate = existing is not None
    if existing is None:
        row = InboundMessage(
            sha256=digest,
            dedup_key=key,
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
