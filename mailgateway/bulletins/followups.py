"""Bulletin follow-up: delivery counts, the author's report after 24 h, reminders to the silent.

``status_counts`` is the ``bulletin status --json`` object. Counts of messages follow the outbox
(delivered = the relay accepted it, bounced = hard bounce, 5xx or given up, pending = still
queued); ``acknowledged`` counts establishments that replied. A message that bounced and was
re-sent to the establishment's next contact counts once in ``bounced`` and once more in
``delivered``/``pending``; ``fallbacks`` says how many such re-sends there were.

``send_due_reports`` and ``send_due_reminders`` are scheduler jobs: each runs in the caller's
transaction, is idempotent (``report_sent_at``, ``reminded_at``) and returns how many mails it
queued.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailgateway.bulletins.fanout import FANOUT_KINDS, PRIORITY, template_context
from mailgateway.clock import french_datetime
from mailgateway.directory import RecipientRow, count_establishments, parse_target
from mailgateway.directory.staff import staff_addresses
from mailgateway.dispatch.compose import MailSpec
from mailgateway.dispatch.contexts import region_context
from mailgateway.processing.context import Env
from mailgateway.store.models import Bulletin, BulletinRecipient, Case, Contact, Establishment, OutboundMessage

KIND_REPORT = "bulletin_rapport"
KIND_REMINDER = "relance_bulletin"
_DELIVERED = ("sent",)
_PENDING = ("queued", "sending")
_BOUNCED = ("bounced", "failed", "expired")
REMINDER_BATCH = 500


def status_counts(session: Session, bulletin_id: int) -> dict[str, Any] | None:
    bulletin = session.get(Bulletin, bulletin_id)
    if bulletin is None:
        return None
    by_status = {str(k): int(v) for k, v in session.execute(
        select(OutboundMessage.status, func.count()).where(
            OutboundMessage.bulletin_id == bulletin_id, OutboundMessage.kind.in_(FANOUT_KINDS))
        .group_by(OutboundMessage.status)).all()}
    rec_status = {str(k): int(v) for k, v in session.execute(
        select(BulletinRecipient.status, func.count()).where(BulletinRecipient.bulletin_id == bulletin_id)
        .group_by(BulletinRecipient.status)).all()}
    acknowledged = int(session.scalar(select(func.count()).select_from(BulletinRecipient).where(
        BulletinRecipient.bulletin_id == bulletin_id, BulletinRecipient.acknowledged_at.is_not(None))) or 0)
    messages = sum(by_status.values())
    with_message = sum(v for k, v in rec_status.items() if k not in ("refused",))
    per_dep: dict[str, dict[str, int]] = defaultdict(lambda: {"recipients": 0, "delivered": 0, "acknowledged": 0})
    per_cat: dict[str, dict[str, int]] = defaultdict(lambda: {"recipients": 0, "delivered": 0, "acknowledged": 0})
    rows = session.execute(
        select(Establishment.departement, Establishment.category, OutboundMessage.status,
               BulletinRecipient.acknowledged_at.is_not(None), func.count())
        .select_from(BulletinRecipient)
        .join(Establishment, Establishment.finess == BulletinRecipient.finess)
        .outerjoin(OutboundMessage, OutboundMessage.id == BulletinRecipient.outbound_id)
        .where(BulletinRecipient.bulletin_id == bulletin_id)
        .group_by(Establishment.departement, Establishment.category, OutboundMessage.status,
                  BulletinRecipient.acknowledged_at.is_not(None))).all()
    for dep, cat, status, acked, n in rows:
        for table, key in ((per_dep, dep or "?"), (per_cat, cat or "AUTRE")):
            table[key]["recipients"] += n
            table[key]["delivered"] += n if status in _DELIVERED else 0
            table[key]["acknowledged"] += n if acked else 0
    return {
        "id": bulletin.id, "status": bulletin.status, "region": bulletin.region, "target": bulletin.target,
        "tlp": bulletin.tlp, "subject": bulletin.subject,
        "recipients": bulletin.recipients,
        "delivered": sum(by_status.get(s, 0) for s in _DELIVERED),
        "pending": sum(by_status.get(s, 0) for s in _PENDING),
        "bounced": sum(by_status.get(s, 0) for s in _BOUNCED),
        "acknowledged": acknowledged,
        "failed": by_status.get("failed", 0) + by_status.get("expired", 0),
        "cancelled": by_status.get("cancelled", 0),
        "refused": rec_status.get("refused", 0),
        "messages": messages,
        "fallbacks": max(0, messages - with_message),
        "unreached": rec_status.get("bounced", 0) + rec_status.get("expired", 0),
        "by_departement": dict(sorted(per_dep.items())),
        "by_category": dict(sorted(per_cat.items())),
    }


def _without_ssi(session: Session, bulletin: Bulletin, limit: int = 200) -> list[dict[str, Any]]:
    """Establishments reached only through a fallback contact, or not at all: fix their SSI address."""
    rows = session.execute(
        select(Establishment.finess, Establishment.name, Establishment.departement, BulletinRecipient.status,
               Contact.role, BulletinRecipient.address)
        .select_from(BulletinRecipient)
        .join(Establishment, Establishment.finess == BulletinRecipient.finess)
        .outerjoin(Contact, Contact.id == BulletinRecipient.contact_id)
        .where(BulletinRecipient.bulletin_id == bulletin.id,
               (BulletinRecipient.status.in_(("bounced", "expired"))) | (Contact.role != "ssi"))
        .order_by(Establishment.finess).limit(limit)).all()
    return [{"finess": f, "name": n, "departement": d, "unreached": s in ("bounced", "expired"), "role": r,
             "address": a} for f, n, d, s, r, a in rows]


def send_due_reports(env: Env, session: Session, now: datetime) -> int:
    """Report to the author of each bulletin fanned out ``report_after_hours`` ago."""
    since = now - timedelta(hours=env.settings.bulletins.report_after_hours)
    due = list(session.scalars(select(Bulletin).where(
        Bulletin.status == "sent", Bulletin.report_sent_at.is_(None), Bulletin.approved_at <= since)))
    sent = 0
    for bulletin in due:
        counts = status_counts(session, bulletin.id) or {}
        targeted = count_establishments(session, bulletin.region, parse_target(bulletin.target))
        context = {**region_context(env.settings, bulletin.region), "counts": counts,
                   "bulletin": {"id": bulletin.id, "subject": bulletin.subject, "tlp": bulletin.tlp,
                                "target": bulletin.target},
                   "approved_at_fr": french_datetime(bulletin.approved_at or bulletin.created_at),
                   "targeted": targeted, "no_contact": max(0, targeted - counts.get("recipients", 0)
                                                           - counts.get("refused", 0)),
                   "without_ssi": _without_ssi(session, bulletin)}
        recipients = [bulletin.author] if "@" in bulletin.author else []
        recipients = recipients or staff_addresses(env.settings, session, bulletin.region)
        case = session.get(Case, bulletin.case_id) if bulletin.case_id is not None else None
        from_address, from_name = env.mailer.from_identity(bulletin.region)
        for to in recipients:
            spec = MailSpec(template=KIND_REPORT, context=context, to=to, from_address=from_address,
                            from_name=from_name, idempotency_key=f"{KIND_REPORT}:{bulletin.id}:{to}",
                            auto_submitted="auto-generated", tlp=bulletin.tlp)
            if env.mailer.send(session, spec, kind=KIND_REPORT, case=case, priority=5,
                               bulletin_id=bulletin.id) is not None:
                sent += 1
        bulletin.report_sent_at = now
    return sent


def send_due_reminders(env: Env, session: Session, now: datetime) -> int:
    """One reminder to each establishment that has not acknowledged a bulletin after the delay."""
    hours = env.settings.bulletins.reminder_after_hours
    if hours <= 0:
        return 0
    since = now - timedelta(hours=hours)
    ids = list(session.scalars(
        select(BulletinRecipient.id)
        .join(OutboundMessage, OutboundMessage.id == BulletinRecipient.outbound_id)
        .join(Bulletin, Bulletin.id == BulletinRecipient.bulletin_id)
        .where(BulletinRecipient.acknowledged_at.is_(None), BulletinRecipient.reminded_at.is_(None),
               OutboundMessage.status == "sent", OutboundMessage.sent_at <= since, Bulletin.status == "sent")
        .order_by(BulletinRecipient.id)))
    sent = 0
    bulletins: dict[int, Bulletin] = {}
    for start in range(0, len(ids), REMINDER_BATCH):
        written: list[object] = []
        for rec in session.scalars(select(BulletinRecipient).where(
                BulletinRecipient.id.in_(ids[start:start + REMINDER_BATCH]))):
            bulletin = bulletins.get(rec.bulletin_id) or session.get(Bulletin, rec.bulletin_id)
            assert bulletin is not None
            bulletins[bulletin.id] = bulletin
            original = session.get(OutboundMessage, rec.outbound_id) if rec.outbound_id else None
            est = session.get(Establishment, rec.finess)
            row = RecipientRow(rec.finess, est.name if est else rec.finess, est.category if est else None,
                               est.departement if est else None, rec.contact_id or 0, rec.address, "ssi")
            context = {**template_context(env, bulletin, row),
                       "sent_at_fr": french_datetime(original.sent_at) if original and original.sent_at else ""}
            from_address, from_name = env.mailer.from_identity(bulletin.region)
            spec = MailSpec(template=KIND_REMINDER, context=context, to=rec.address, from_address=from_address,
                            from_name=from_name, reply_to=from_address,
                            idempotency_key=f"{KIND_REMINDER}:{bulletin.id}:{rec.finess}",
                            auto_submitted="auto-generated", tlp=bulletin.tlp,
                            in_reply_to=original.message_id if original else None,
                            extra_headers={"X-Mailgateway-Bulletin": str(bulletin.id)})
            out = env.mailer.send(session, spec, kind=KIND_REMINDER, priority=PRIORITY, bulletin_id=bulletin.id)
            rec.reminded_at = now
            written.append(rec)
            if out is not None:
                sent += 1
                written.append(out)
            if original is not None:
                written.append(original)
        session.flush()
        for obj in written:
            if obj in session:
                session.expunge(obj)
    return sent
