"""Daily digest to each region's staff: new, overdue and open cases, alerts awaiting approval,
bulletins in flight, contacts bouncing, and mail to staff that failed for good since the previous
digest (dispatch/failures.py: a lost notification must reach someone). Once per day (``job_runs``
row for the date, inserted in the transaction that queues the mail)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailgateway.cases.lifecycle import CLOSED
from mailgateway.clock import french_datetime, paris
from mailgateway.directory.staff import all_staff, staff_addresses
from mailgateway.dispatch.contexts import french_title, region_context
from mailgateway.dispatch.failures import staff_failures
from mailgateway.dispatch.render import defang_text
from mailgateway.jobs.base import (
    JobContext,
    JobOutcome,
    claim_period,
    french_date,
    last_run,
    plural,
    try_job_lock,
)
from mailgateway.jobs.deadlines import overdue_cases
from mailgateway.statuses import CaseStatus
from mailgateway.store.engine import transaction
from mailgateway.store.models import Bulletin, Case, Contact, Establishment

JOB = "digest"
LIST_LIMIT = 50
IN_FLIGHT = ("draft", "approved", "sending")


def _row(case: Case, **extra: Any) -> dict[str, Any]:
    # Enumeration codes of the title (« RANCONGICIEL ») in French; URLs a declaration put there, defanged.
    title = defang_text(french_title(case.title))
    return {"reference": case.reference, "title": title, "status": case.status, "severity": case.severity,
            "kind": case.kind, "establishment": case.establishment, "assignee": case.assignee,
            "opened_fr": french_datetime(case.opened_at), **extra}


def failed_staff_mail(session: Session, ctx: JobContext, region: str, since: datetime) -> list[dict[str, Any]]:
    """Mail to staff refused for good since ``since`` that concerns ``region``: to one of its staff,
    or about one of its cases."""
    mine = set(staff_addresses(ctx.settings, session, region))
    return [{"id": f.id, "recipient": f.recipient, "kind": f.kind, "failed_fr": french_datetime(f.failed_at),
             "case_ref": f.case_ref, "answer": " ".join(f.answer.split())[:200], "status": f.status}
            for f in staff_failures(session, all_staff(ctx.settings, session), since, limit=LIST_LIMIT)
            if f.recipient in mine or f.region == region]


def digest_context(session: Session, ctx: JobContext, region: str, now: datetime,
                   failures_since: datetime | None = None) -> dict[str, Any]:
    """Everything the digest shows for ``region`` at ``now``."""
    open_stmt = select(Case).where(Case.region == region, Case.status.not_in(CLOSED),
                                   Case.merged_into_id.is_(None), Case.kind != "bulletin")
    open_count = int(session.scalar(select(func.count()).select_from(open_stmt.subquery())) or 0)
    open_cases = list(session.scalars(open_stmt.order_by(Case.opened_at).limit(LIST_LIMIT)))
    new_cases = list(session.scalars(
        select(Case).where(Case.region == region, Case.opened_at >= now - timedelta(days=1), Case.opened_at < now,
                           Case.kind != "bulletin").order_by(Case.opened_at)))
    overdue = [_row(o.case, due_fr=french_datetime(o.due_at), step=o.step + 1)
               for o in overdue_cases(session, ctx.settings, now, region)]
    alerts = list(session.scalars(select(Case).where(Case.region == region, Case.kind == "alert",
                                                     Case.status == CaseStatus.A_DIFFUSER).order_by(Case.opened_at)))
    bulletins = [{"id": b.id, "subject": b.subject, "status": b.status, "recipients": b.recipients,
                  "created_fr": french_datetime(b.created_at)}
                 for b in session.scalars(select(Bulletin).where(Bulletin.region == region,
                                                                 Bulletin.status.in_(IN_FLIGHT)).order_by(Bulletin.id))]
    bouncing = [{"address": c.address, "establishment": e.name, "finess": e.finess, "role": c.role}
                for c, e in session.execute(
                    select(Contact, Establishment).join(Establishment, Establishment.finess == Contact.finess)
                    .where(Establishment.region == region, Contact.status == "bouncing")
                    .order_by(Establishment.name).limit(LIST_LIMIT)).all()]
    return {
        "date_fr": french_date(now), "new_cases": [_row(c) for c in new_cases], "overdue": overdue,
        "open_cases": [_row(c) for c in open_cases], "open_count": open_count,
        "alerts": [_row(c) for c in alerts], "bulletins": bulletins, "bouncing": bouncing,
        "limit": LIST_LIMIT,
        "staff_failures": failed_staff_mail(session, ctx, region, failures_since or now - timedelta(days=1)),
    }


def period(now: datetime) -> str:
    return paris(now).date().isoformat()


def run(ctx: JobContext, now: datetime) -> JobOutcome:
    mails = 0
    with transaction(ctx.factory) as session:
        if not try_job_lock(session, JOB):
            return JobOutcome(JOB, skipped=True, summary="synthèse quotidienne déjà envoyée aujourd'hui")
        previous = last_run(session, JOB)
        if not claim_period(session, JOB, period(now), now):
            return JobOutcome(JOB, skipped=True, summary="synthèse quotidienne déjà envoyée aujourd'hui")
        since = min(previous, now - timedelta(days=1)) if previous is not None else now - timedelta(days=1)
        for region in ctx.settings.regions:
            context = {**region_context(ctx.settings, region.code),
                       **digest_context(session, ctx, region.code, now, failures_since=since)}
            mails += ctx.mailer.send_to_staff(session, region.code, template="digest", context=context,
                                              kind="synthese", key=f"digest:{period(now)}:{region.code}")
    return JobOutcome(JOB, count=mails, mails=mails,
                      summary=f"synthèse quotidienne : envoyée à {plural(mails, 'destinataire', 'destinataires')}")
