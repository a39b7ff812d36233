"""GDPR storage limitation (Regulation 2016/679 art. 5.1.e): after ``[scheduler].retention_days``
for its status (counted from closing, else from the last activity), a case loses its personal data.

What goes: the raw bytes of its inbound and sent outbound messages (emptied, ``purged_at`` set;
the content hash stays so a re-delivered copy is still recognised), the envelope of its inbound
messages, the declarant and assignee columns, the free text and declarant of the extracted
declaration, the auto-reply log rows. What stays: the case's statistics (dates, type, category,
severity, nature, establishment, FINESS) and its timeline. ``case_events`` rows are never changed:
they are the hash-chained audit trail (CSP art. L.1111-8-2 incident follow-up) and ``cases verify``
still holds; they may name addresses of the declarant and staff, kept as part of that audit trail.
A "anonymisation" event records the purge itself.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from mailgateway.cases.timeline import append_event
from mailgateway.jobs.base import JobContext, JobOutcome, plural, rowcount, try_job_lock
from mailgateway.store.engine import transaction
from mailgateway.store.models import AutoReplyLog, Case, InboundMessage, OutboundMessage

JOB = "retention"
# Extracted fields kept for statistics; everything else in ``fields`` is dropped.
KEPT_DECLARATION = ("finess", "category", "incident_type", "nature", "severity", "detected_at", "impacts")
KEPT_ALERT = ("reference", "title", "tlp", "targets", "cves", "authentic")
# Outbound rows still to be delivered keep their bytes.
FINAL_OUTBOUND = ("sent", "failed", "expired", "bounced", "refused")


def _kept_fields(fields: dict[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    if isinstance(decl := fields.get("declaration"), dict):
        kept["declaration"] = {k: decl.get(k) for k in KEPT_DECLARATION}
    if isinstance(alert := fields.get("alert"), dict):
        kept["alert"] = {k: alert.get(k) for k in KEPT_ALERT}
    return kept


def anonymise(session: Session, case: Case, now: datetime, days: int) -> tuple[int, int]:
    """Purge ``case``'s personal data; return (inbound, outbound) messages emptied."""
    inbound = rowcount(session.execute(
        update(InboundMessage).where(InboundMessage.case_id == case.id, InboundMessage.purged_at.is_(None))
        .values(raw=b"", mail_from=None, rcpt_tos=[], auth=None, purged_at=now)))
    outbound = rowcount(session.execute(
        update(OutboundMessage).where(OutboundMessage.case_id == case.id, OutboundMessage.bulletin_id.is_(None),
                                      OutboundMessage.status.in_(FINAL_OUTBOUND), OutboundMessage.purged_at.is_(None))
        .values(raw=b"", purged_at=now)))
    session.execute(delete(AutoReplyLog).where(AutoReplyLog.case_id == case.id))
    case.declarant = None
    case.assignee = None
    case.fields = _kept_fields(case.fields or {})
    case.anonymised_at = now
    append_event(session, case, type="anonymisation", actor="passerelle", at=now,
                 data={"motif": f"durée de conservation échue ({days} jours, RGPD art. 5.1.e)",
                       "messages_entrants": inbound, "messages_sortants": outbound})
    return inbound, outbound


def run(ctx: JobContext, now: datetime) -> JobOutcome:
    rules = {status: days for status, days in ctx.settings.scheduler.retention_days.items() if days > 0}
    cases = messages = 0
    with transaction(ctx.factory) as session:
        if not try_job_lock(session, JOB):
            return JobOutcome(JOB, skipped=True, summary="rétention : déjà en cours sur une autre instance")
        for status, days in sorted(rules.items()):
            since = func.coalesce(Case.closed_at, Case.updated_at)
            stmt = select(Case).where(Case.status == status, Case.anonymised_at.is_(None),
                                      since < now - timedelta(days=days)).order_by(Case.id)
            for case in session.scalars(stmt).all():
                # Decided at ``now`` (``scheduler run-due --now T``), done and dated when it is
                # done, on the real clock like a reminder (jobs/deadlines.py): an event hours ahead
                # sorts after what people did in between.
                inbound, outbound = anonymise(session, case, ctx.mailer.clock.now(), days)
                cases += 1
                messages += inbound + outbound
    summary = (f"rétention : {plural(cases, 'dossier anonymisé', 'dossiers anonymisés')}, "
               f"{plural(messages, 'message purgé', 'messages purgés')}")
    return JobOutcome(JOB, count=cases, summary=summary)
