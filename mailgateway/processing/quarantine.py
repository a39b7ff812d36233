"""Quarantined messages: what staff and operators see of them, and their release.

A message is quarantined when processing cannot act on it (a reply to an unknown case, an
unknown region, a message out of budget, a handler error): it is kept whole, never dropped
(README, "How it works"). It must not wait for the next morning's summary either: the
``quarantine_notices`` job tells the region's staff within ``[scheduler]
quarantine_notice_minutes`` (jobs/quarantine.py), and staff or operators can list, show and
release it (``mailgateway quarantine list|show|release``, ``#quarantaine`` by mail).

Releasing puts the message back to ``received`` with its attempts reset: the processing sweep
takes it again, with whatever changed since (a case created, a directory imported). Every
release is recorded in ``quarantine_log`` with who released it and the reason it had.

The raw message is hostile: its headers are read with a bounded parse, decoded, stripped of
control characters and shortened; they are shown as text only, never used as headers.
"""

from __future__ import annotations

import email.parser
import email.policy
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, exists, or_, select, true, update
from sqlalchemy.orm import Session

from mailgateway.clock import aware
from mailgateway.mail.headers import decode_header_value
from mailgateway.store.models import InboundMessage, QuarantineLog
from mailgateway.wire import header_block_problem

HEADER_BYTES = 64 * 1024  # the header block read to show a message; the rest is not parsed
TEXT_CHARS = 200
NOTIFIED = "notified"
RELEASED = "released"
# "ValueError: ..." — an exception text recorded by the runner (linear: no nested quantifiers).
_EXCEPTION = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,100}(?:Error|Exception|Timeout)\b")


class QuarantineError(Exception):
    """A refused quarantine operation, with its French reason."""


@dataclass(frozen=True)
class QuarantinedMessage:
    id: int
    region: str | None
    status: str
    source: str
    received_at: datetime
    quarantined_at: datetime | None
    envelope_from: str
    sender: str
    subject: str
    message_id: str
    date: str
    to: str
    size: int
    attempts: int
    reason: str
    reason_fr: str
    purged: bool

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "region": self.region, "status": self.status, "source": self.source,
                "received_at": self.received_at.isoformat(),
                "quarantined_at": self.quarantined_at.isoformat() if self.quarantined_at else None,
                "envelope_from": self.envelope_from, "from": self.sender, "subject": self.subject,
                "message_id": self.message_id, "date": self.date, "to": self.to, "size": self.size,
                "attempts": self.attempts, "reason": self.reason, "reason_fr": self.reason_fr}


def safe_text(value: str, limit: int = TEXT_CHARS) -> str:
    """One printable line of at most ``limit`` characters (untrusted text shown to people)."""
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in value[: limit * 4]).split())
    return text[:limit] + ("…" if len(text) > limit else "")


def reason_fr(reason: str | None) -> str:
    """The quarantine reason in French: the gateway's own reasons are French already; an exception
    recorded by the runner is introduced as a processing error."""
    text = safe_text(reason or "", 300)
    if not text:
        return "motif non précisé"
    if _EXCEPTION.match(text):
        return f"erreur de traitement du message ({text})"
    return text


def _headers(raw: bytes) -> dict[str, str]:
    try:
        msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw[:HEADER_BYTES])
    except Exception:
        return {}
    found: dict[str, str] = {}
    for name in ("From", "To", "Subject", "Message-ID", "Date"):
        try:
            value = msg.get(name)
        except Exception:
            value = None
        found[name] = safe_text(decode_header_value(value)) if value is not None else ""
    return found


def describe(row: InboundMessage) -> QuarantinedMessage:
    headers = _headers(row.raw or b"")
    return QuarantinedMessage(
        id=row.id, region=row.region, status=row.status, source=row.source, received_at=aware(row.received_at),
        quarantined_at=aware(row.processed_at) if row.processed_at is not None else None,
        envelope_from=safe_text(row.mail_from or ""), sender=headers.get("From", ""),
        subject=headers.get("Subject", ""), message_id=headers.get("Message-ID", ""), date=headers.get("Date", ""),
        to=headers.get("To", ""), size=row.size, attempts=row.attempts, reason=row.reason or "",
        reason_fr=reason_fr(row.reason), purged=row.purged_at is not None)


def _regions(regions: set[str | None] | None) -> ColumnElement[bool]:
    if regions is None:
        return true()
    named = sorted(r for r in regions if r is not None)
    clause = InboundMessage.region.in_(named)
    return or_(clause, InboundMessage.region.is_(None)) if None in regions else clause


def list_quarantined(session: Session, *, regions: set[str | None] | None = None,
                     limit: int = 100) -> list[QuarantinedMessage]:
    """Quarantined messages, newest first; ``regions``: only these (None in it: region unknown)."""
    rows = session.scalars(select(InboundMessage).where(InboundMessage.status == "quarantined", _regions(regions))
                           .order_by(InboundMessage.id.desc()).limit(limit))
    return [describe(r) for r in rows]


def find(session: Session, inbound_id: int) -> InboundMessage | None:
    row = session.get(InboundMessage, inbound_id)
    return row if row is not None and row.status == "quarantined" else None


def release(session: Session, inbound_id: int, *, actor: str, now: datetime,
            regions: set[str | None] | None = None) -> QuarantinedMessage:
    """Put a quarantined message back to processing (the caller commits); ``regions``: the
    releaser may only release these. Raises ``QuarantineError`` with a French reason."""
    row = session.get(InboundMessage, inbound_id)
    if row is None or (regions is not None and row.region not in regions):
        raise QuarantineError(f"message inconnu en quarantaine : {inbound_id}")
    if row.status != "quarantined":
        raise QuarantineError(f"le message n° {inbound_id} n'est pas en quarantaine (statut : {row.status})")
    if row.purged_at is not None:
        raise QuarantineError(f"le message n° {inbound_id} a été purgé (rétention) : rien à retraiter")
    if not row.raw:  # received empty: never purged (« purgé » was said of it: outside tester)
        raise QuarantineError(f"le message n° {inbound_id} est vide (0 octet reçu) : rien à retraiter")
    problem = header_block_problem(row.raw)
    if problem is not None:
        # Deterministic: its header block is one two parsers could read differently (wire.py), so
        # processing would quarantine it again at once — and announce it again. Kept as it is.
        raise QuarantineError(f"le message n° {inbound_id} ne peut pas être retraité : {problem} ; il serait "
                              "aussitôt remis en quarantaine (il reste consultable : mailgateway quarantine show)")
    before = describe(row)
    # Guarded on the status: two releases at once put the message back once.
    done = session.execute(update(InboundMessage).where(
        InboundMessage.id == inbound_id, InboundMessage.status == "quarantined").values(
        status="received", attempts=0, retry_at=None, lease_until=None, processed_at=None, reason=None))
    if not getattr(done, "rowcount", 1):
        raise QuarantineError(f"le message n° {inbound_id} vient d'être libéré par ailleurs")
    session.add(QuarantineLog(inbound_id=inbound_id, action=RELEASED, actor=actor[:512], at=now,
                              detail=before.reason[:2000] or None))
    return before


def released_by_staff(session: Session, inbound_id: int) -> bool:
    """Whether the message was ever released from quarantine (by staff or an operator)."""
    return session.scalar(select(exists().where(QuarantineLog.inbound_id == inbound_id,
                                                QuarantineLog.action == RELEASED))) is True


def history(session: Session, inbound_id: int) -> list[QuarantineLog]:
    return list(session.scalars(select(QuarantineLog).where(QuarantineLog.inbound_id == inbound_id)
                                .order_by(QuarantineLog.id)))


def awaiting_notice(session: Session, now: datetime, lookback: timedelta, limit: int = 1000) -> list[InboundMessage]:
    """Quarantined in the last ``lookback`` and not yet announced to staff (since this quarantine:
    a message released and quarantined again is announced again)."""
    notified = exists().where(and_(QuarantineLog.inbound_id == InboundMessage.id, QuarantineLog.action == NOTIFIED,
                                   QuarantineLog.at >= InboundMessage.processed_at))
    return list(session.scalars(select(InboundMessage).where(
        InboundMessage.status == "quarantined", InboundMessage.processed_at >= now - lookback,
        InboundMessage.processed_at <= now, ~notified).order_by(InboundMessage.id).limit(limit)))


def mark_notified(session: Session, ids: list[int], *, actor: str, now: datetime, detail: str) -> None:
    session.add_all(QuarantineLog(inbound_id=i, action=NOTIFIED, actor=actor, at=now, detail=detail) for i in ids)
