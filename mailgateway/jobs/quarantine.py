"""Quarantine notices: staff hear of a quarantined message within minutes, not the next morning.

Every ``[scheduler] quarantine_notice_minutes`` the messages quarantined since the last notice
are announced to their region's staff (a message whose region is unknown: to every region's
staff), one mail per region and run however many there are: a flood of junk becomes one notice
listing at most ``LIST_LIMIT`` messages and a count of the others, never one mail per message.
Each message is announced once per quarantine (``quarantine_log``). The notice gives, for each,
its number, the reason in French, the sender and subject (as text), and how to release it:
« #quarantaine liberer N » by mail, « mailgateway quarantine release N » on the server.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from mailgateway.clock import french_datetime, paris
from mailgateway.dispatch.contexts import region_context
from mailgateway.jobs.base import JobContext, JobOutcome, plural, try_job_lock
from mailgateway.processing import quarantine
from mailgateway.store.engine import transaction

JOB = "quarantine_notices"
LIST_LIMIT = 20
# Messages quarantined longer ago than this are left to the daily summary (a first run after an
# upgrade must not announce a year of quarantine).
LOOKBACK = timedelta(days=1)


def message_line(m: quarantine.QuarantinedMessage) -> dict[str, Any]:
    return {"id": m.id, "received_fr": french_datetime(m.received_at), "source": m.source,
            "sender": m.sender or m.envelope_from, "subject": m.subject, "reason": m.reason_fr,
            "region": m.region}


def run(ctx: JobContext, now: datetime) -> JobOutcome:
    mails = 0
    with transaction(ctx.factory) as session:
        if not try_job_lock(session, JOB):
            return JobOutcome(JOB, skipped=True, summary="avis de quarantaine : déjà en cours sur une autre instance")
        rows = quarantine.awaiting_notice(session, now, LOOKBACK)
        if not rows:
            return JobOutcome(JOB, summary="avis de quarantaine : aucun nouveau message")
        views = [quarantine.describe(r) for r in rows]
        batch = f"{paris(now).strftime('%Y%m%d%H%M')}-{rows[-1].id}"
        for region in ctx.settings.regions:
            # A message whose region is unknown is shown to every region.
            mine = [v for v in views if v.region in (region.code, None)]
            if not mine:
                continue
            context: dict[str, Any] = {
                **region_context(ctx.settings, region.code), "notice": True,
                "since_fr": french_datetime(min(v.quarantined_at or v.received_at for v in mine)),
                "count": len(mine), "limit": LIST_LIMIT, "messages": [message_line(v) for v in mine[:LIST_LIMIT]],
            }
            mails += ctx.mailer.send_to_staff(
                session, region.code, template="quarantaine", context=context, kind="avis_quarantaine",
                key=f"avis_quarantaine:{region.code}:{batch}", priority=0)
        quarantine.mark_notified(session, [r.id for r in rows], actor="passerelle", now=now, detail=batch)
    return JobOutcome(JOB, count=len(rows), mails=mails,
                      summary=f"avis de quarantaine : {plural(len(rows), 'message')}, "
                              f"{plural(mails, 'avis envoyé', 'avis envoyés')}")
