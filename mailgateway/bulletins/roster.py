"""Read-only views of bulletins for operators: ``bulletin list`` and the per-establishment list of
``bulletin status ID`` (key ``establishments``), at any time — not only in the 24 h report.

An establishment's state (README « Command line », a contract): ``acknowledged`` (it replied),
``delivered`` (the relay accepted the current message), ``pending`` (queued or being sent),
``bounced`` (5xx, DSN, or given up: the last contact tried failed) or ``unreached`` (no message
could be sent: refused by TLP, cancelled). After a fallback to another contact
(bulletins/tracking.py) the state is that of the message to the contact tried last.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailgateway.clock import aware
from mailgateway.store.models import Bulletin, BulletinRecipient, Establishment, OutboundMessage

STATES = ("acknowledged", "delivered", "pending", "bounced", "unreached")
_OUTBOX_STATE = {"sent": "delivered", "queued": "pending", "sending": "pending", "bounced": "bounced",
                 "failed": "bounced", "expired": "bounced"}


def _iso(value: datetime | None) -> str | None:
    return aware(value).isoformat() if value is not None else None


def establishment_state(acknowledged: bool, recipient_status: str | None, outbox_status: str | None) -> str:
    if acknowledged:
        return "acknowledged"
    if recipient_status in ("bounced", "expired"):
        return "bounced"
    return _OUTBOX_STATE.get(outbox_status or "", "unreached")


def establishments(session: Session, bulletin_id: int) -> list[dict[str, Any]]:
    """One entry per targeted establishment: ``finess``, ``name``, ``email`` (the contact tried
    last), ``state``, plus ``departement``, ``acknowledged_at`` and the relay's ``answer``."""
    rows = session.execute(
        select(BulletinRecipient.finess, Establishment.name, Establishment.departement, BulletinRecipient.address,
               BulletinRecipient.status, BulletinRecipient.acknowledged_at, OutboundMessage.status,
               OutboundMessage.last_answer)
        .select_from(BulletinRecipient)
        .outerjoin(Establishment, Establishment.finess == BulletinRecipient.finess)
        .outerjoin(OutboundMessage, OutboundMessage.id == BulletinRecipient.outbound_id)
        .where(BulletinRecipient.bulletin_id == bulletin_id)
        .order_by(BulletinRecipient.finess)).all()
    out = []
    for finess, name, departement, address, rec_status, acked_at, out_status, answer in rows:
        state = establishment_state(acked_at is not None, rec_status, out_status)
        out.append({"finess": finess, "name": name or finess, "email": address, "state": state,
                    "departement": departement, "acknowledged_at": _iso(acked_at),
                    "answer": answer if state in ("bounced", "pending") else None})
    return out


def bulletin_list(session: Session, limit: int = 200) -> list[dict[str, Any]]:
    """The latest bulletins, newest first, with their status and per-establishment counts."""
    bulletins = list(session.scalars(select(Bulletin).order_by(Bulletin.id.desc()).limit(limit)))
    ids = [b.id for b in bulletins]
    counts: dict[int, dict[str, int]] = {i: dict.fromkeys(STATES, 0) for i in ids}
    if ids:
        for bid, rec_status, out_status, acked, n in session.execute(
            select(BulletinRecipient.bulletin_id, BulletinRecipient.status, OutboundMessage.status,
                   BulletinRecipient.acknowledged_at.is_not(None), func.count())
            .select_from(BulletinRecipient)
            .outerjoin(OutboundMessage, OutboundMessage.id == BulletinRecipient.outbound_id)
            .where(BulletinRecipient.bulletin_id.in_(ids))
            .group_by(BulletinRecipient.bulletin_id, BulletinRecipient.status, OutboundMessage.status,
                      BulletinRecipient.acknowledged_at.is_not(None))):
            counts[int(bid)][establishment_state(bool(acked), rec_status, out_status)] += int(n)
    return [
        {"id": b.id, "status": b.status, "region": b.region, "tlp": b.tlp, "subject": b.subject,
         "target": b.target, "author": b.author, "created_at": _iso(b.created_at), "approved_at": _iso(b.approved_at),
         "recipients": b.recipients, **counts[b.id]}
        for b in bulletins
    ]
