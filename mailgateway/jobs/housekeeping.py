"""Housekeeping: outbox lease reclaim, bulletin follow-ups, the daily quarantine summary."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update

from mailgateway.bulletins import followups
from mailgateway.clock import french_datetime, paris
from mailgateway.dispatch.contexts import region_context
from mailgateway.jobs import quarantine as quarantine_notices
from mailgateway.jobs.base import JobContext, JobOutcome, claim_period, last_run, plural, rowcount, try_job_lock
from mailgateway.processing import quarantine
from mailgateway.store.engine import transaction
from mailgateway.store.models import InboundMessage, OutboundMessage

log = logging.getLogger("mailgateway.jobs.housekeeping")
JOB = "housekeeping"
QUARANTINE_JOB = "quarantine_summary"
BULLETINS_JOB = "bulletins"
LIST_LIMIT = 100


def run(ctx: JobContext, now: datetime) -> JobOutcome:
    """Requeue messages whose sender died holding them (``sending`` past ``lease_until``)."""
    with transaction(ctx.factory) as session:
        if not try_job_lock(session, JOB):
            return JobOutcome(JOB, skipped=True, summary="maintenance : déjà en cours sur une autre instance")
        reclaimed = rowcount(session.execute(
            update(OutboundMessage).where(OutboundMessage.status == "sending", OutboundMessage.lease_until < now)
            .values(status="queued", lease_until=None, lease_owner=None, next_attempt_at=now)))
        due = int(session.scalar(select(func.count()).select_from(OutboundMessage).where(
            OutboundMessage.status == "queued", OutboundMessage.next_attempt_at <= now)) or 0)
    if reclaimed:
        log.warning("reclaimed %d outbound message(s) from expired leases", reclaimed)
    summary = (f"maintenance : {plural(reclaimed, 'message réclamé', 'messages réclamés')} (bail expiré), "
               f"{plural(due, 'message')} à envoyer")
    return JobOutcome(JOB, count=reclaimed, summary=summary, mails=due)


def bulletins(ctx: JobContext, now: datetime) -> JobOutcome:
    """Bulletin follow-ups (bulletins/followups.py): the author's report, reminders to the silent."""
    steps: list[Callable[..., int]] = [followups.send_due_reports, followups.send_due_reminders]
    mails = 0
    with transaction(ctx.factory) as session:
        if not try_job_lock(session, BULLETINS_JOB):
            return JobOutcome(BULLETINS_JOB, skipped=True, summary="bulletins : déjà en cours sur une autre instance")
        for step in steps:
            mails += step(ctx.env, session, now)
    return JobOutcome(BULLETINS_JOB, count=mails, mails=mails,
                      summary=f"bulletins : {plural(mails, 'message envoyé', 'messages envoyés')} (rapports, relances)")


def quarantine_summary(ctx: JobContext, now: datetime) -> JobOutcome:
    """Once a day, tell each region's staff about messages quarantined since the last summary."""
    mails = count = 0
    with transaction(ctx.factory) as session:
        if not try_job_lock(session, QUARANTINE_JOB):
            return JobOutcome(QUARANTINE_JOB, skipped=True, summary="quarantaine : déjà en cours")
        since = last_run(session, QUARANTINE_JOB) or now - timedelta(days=1)
        if not claim_period(session, QUARANTINE_JOB, paris(now).date().isoformat(), now):
            return JobOutcome(QUARANTINE_JOB, skipped=True, summary="quarantaine : résumé déjà fait aujourd'hui")
        at = func.coalesce(InboundMessage.processed_at, InboundMessage.received_at)
        rows = list(session.scalars(select(InboundMessage).where(
            InboundMessage.status == "quarantined", at >= since, at < now).order_by(InboundMessage.id)))
        count = len(rows)
        for region in ctx.settings.regions:
            # A message whose region is unknown is shown to every region.
            mine = [r for r in rows if r.region in (region.code, None)]
            if not mine:
                continue
            context: dict[str, Any] = {
                **region_context(ctx.settings, region.code), "since_fr": french_datetime(since),
                "count": len(mine), "limit": LIST_LIMIT,
                # Sender and subject read from the headers (as text), reason in French (SILENT).
                "messages": [quarantine_notices.message_line(quarantine.describe(r)) for r in mine[:LIST_LIMIT]],
            }
            mails += ctx.mailer.send_to_staff(
                session, region.code, template="quarantaine", context=context, kind="resume_quarantaine",
                key=f"quarantaine:{paris(now).date().isoformat()}:{region.code}")
    return JobOutcome(QUARANTINE_JOB, count=count, mails=mails,
                      summary=f"quarantaine : {plural(count, 'nouveau message', 'nouveaux messages')}, "
                              f"{plural(mails, 'résumé envoyé', 'résumés envoyés')}")
