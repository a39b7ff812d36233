"""Deadlines per status and their reminders (Instruction SG/SHFDS/FSSI/2017/281: the ARS
acknowledges, has the incident qualified and follows it; ACSS alerts are relayed without delay).

A case that stays in a status longer than ``[scheduler.deadlines.<STATUS>].hours`` is overdue.
Step 0 reminds the assignee (else the region's staff); each later step, one cadence apart,
escalates to the region's referent; there are at most ``max_steps`` reminders per stay in the
status. A reminder is one ``reminders`` row (unique per case, deadline, step) inserted *before*
its mail is queued, in the same transaction: running the job again, concurrently or at the same
instant, sends nothing twice. Leaving the status and coming back starts a new deadline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgateway.cases.timeline import append_event
from mailgateway.clock import aware, french_datetime
from mailgateway.directory.staff import staff_addresses
from mailgateway.dispatch.compose import MailSpec
from mailgateway.dispatch.contexts import case_context, region_context
from mailgateway.jobs.base import (
    JobContext,
    JobOutcome,
    french_duration,
    insert_ignore,
    plural,
    referents,
    try_job_lock,
)
from mailgateway.jobs.business import Calendar
from mailgateway.processing.context import Env
from mailgateway.settings import DeadlineSettings, Settings, _default_deadlines
from mailgateway.statuses import CaseStatus
from mailgateway.store.engine import transaction
from mailgateway.store.models import Case, CaseEvent, Reminder

log = logging.getLogger("mailgateway.jobs.deadlines")
JOB = "deadlines"


@dataclass(frozen=True)
class Overdue:
    case: Case
    entered_at: datetime  # when the case entered its current status
    due_at: datetime  # first deadline
    step: int  # highest cadence step due now (0-based)
    step_due_at: datetime
    rule: DeadlineSettings

    @property
    def key(self) -> str:
        """Reminder.deadline: the status and the stay it belongs to (a new stay, new reminders)."""
        return f"{self.case.status}@{aware(self.entered_at).replace(microsecond=0).isoformat()}"


def active_rules(settings: Settings) -> dict[str, DeadlineSettings]:
    """Configured deadlines over the defaults: a [scheduler.deadlines] entry replaces its status's
    default only; ``hours = 0`` disables one."""
    rules = {**_default_deadlines(), **settings.scheduler.deadlines}
    return {status: rule for status, rule in rules.items() if rule.hours > 0}


def _fallback_entered(case: Case) -> datetime:
    if case.status == CaseStatus.PRIS_EN_COMPTE and case.acknowledged_at is not None:
        return case.acknowledged_at
    if case.status == CaseStatus.QUALIFIE and case.qualified_at is not None:
        return case.qualified_at
    return case.opened_at


def entered_status_at(session: Session, cases: list[Case]) -> dict[int, datetime]:
    """When each case entered its current status: its last "statut" event to that status."""
    found: dict[int, datetime] = {}
    if not cases:
        return found
    by_id = {c.id: c for c in cases}
    rows = session.execute(
        select(CaseEvent.case_id, CaseEvent.at, CaseEvent.data)
        .where(CaseEvent.type == "statut", CaseEvent.case_id.in_(list(by_id)))
        .order_by(CaseEvent.case_id, CaseEvent.seq)
    )
    for case_id, at, data in rows:
        if isinstance(data, dict) and data.get("vers") == by_id[case_id].status:
            found[case_id] = aware(at)  # later events overwrite: the last entry wins
    return {cid: found.get(cid, aware(_fallback_entered(c))) for cid, c in by_id.items()}


def overdue_cases(session: Session, settings: Settings, now: datetime, region: str | None = None) -> list[Overdue]:
    """Open cases past their status deadline at ``now`` (also used by the digest)."""
    rules = active_rules(settings)
    if not rules:
        return []
    stmt = select(Case).where(Case.status.in_(list(rules)), Case.merged_into_id.is_(None))
    if region is not None:
        stmt = stmt.where(Case.region == region)
    cases = list(session.scalars(stmt.order_by(Case.id)))
    entered = entered_status_at(session, cases)
    cal = Calendar.from_settings(settings.scheduler)
    result: list[Overdue] = []
    for case in cases:
        rule = rules[case.status]
        due = cal.add(entered[case.id], rule.hours)
        if now < due:
            continue
        step, step_due = 0, due
        cadence = rule.cadence_hours or rule.hours
        while step + 1 < rule.max_steps:
            following = cal.add(step_due, cadence)
            if following > now:
                break
            step, step_due = step + 1, following
        result.append(Overdue(case, entered[case.id], due, step, step_due, rule))
    return result


def _recipients(settings: Settings, session: Session, item: Overdue) -> list[str]:
    case = item.case
    if item.step == 0:
        return [case.assignee.lower()] if case.assignee else staff_addresses(settings, session, case.region)
    return referents(settings, session, case.region)


def _remind(ctx: JobContext, session: Session, item: Overdue, now: datetime) -> int | None:
    """Insert the reminder row, then queue its mail and record it on the timeline.

    Returns the number of mails queued, or None when this step was already reminded."""
    case = item.case
    inserted = insert_ignore(session, Reminder, {"case_id": case.id, "deadline": item.key, "step": item.step,
                                                 "sent_at": now}, ["case_id", "deadline", "step"])
    if inserted is None:
        return None
    env: Env = ctx.env
    escalation = item.step > 0
    context: dict[str, Any] = {
        **region_context(env.settings, case.region), "case": case_context(case),
        "since_fr": french_datetime(item.entered_at), "due_fr": french_datetime(item.due_at),
        "late": french_duration((now - item.due_at).total_seconds() / 3600),
        "allowed": french_duration(item.rule.hours), "business_hours": ctx.settings.scheduler.business_hours,
        "step": item.step + 1, "steps": item.rule.max_steps, "escalation": escalation,
    }
    from_address, from_name = env.mailer.from_identity(case.region)
    queued: list[str] = []
    for address in _recipients(ctx.settings, session, item):
        spec = MailSpec(template="rappel", context=context, to=address, from_address=from_address,
                        from_name=from_name, idempotency_key=f"rappel:{case.id}:{item.key}:{item.step}:{address}",
                        auto_submitted="auto-generated", in_reply_to=case.origin_message_id)
        if ctx.mailer.send(session, spec, kind="rappel", case=case) is not None:
            queued.append(address)
    # The reminder is on the timeline even when every send was refused (the refusals are too),
    # at the time it was sent, like its mail: ``scheduler run-due --now T`` decides at T, and a
    # timeline event at T (hours ahead) sorted after what people did in between (an outside
    # tester). The mailer runs on the real clock (cli/scheduler.py DecidingAt); the instant the
    # reminder was decided for is kept in its data.
    append_event(session, case, type="rappel", actor="passerelle", at=ctx.mailer.clock.now(),
                 data={"statut": case.status, "echeance": item.due_at.isoformat(), "etape": item.step + 1,
                       "escalade": escalation, "destinataires": queued, "decide_pour": now.isoformat()})
    return len(queued)


def run(ctx: JobContext, now: datetime) -> JobOutcome:
    """Send the reminders due at ``now``; each (case, deadline, step) at most once, ever."""
    reminders = mails = 0
    with transaction(ctx.factory) as session:
        if not try_job_lock(session, JOB):
            return JobOutcome(JOB, skipped=True, summary="rappels : déjà en cours sur une autre instance")
        for item in overdue_cases(session, ctx.settings, now):
            try:
                with session.begin_nested():  # one broken case does not block the others
                    sent = _remind(ctx, session, item, now)
            except Exception:
                log.exception("reminder failed for case %s", item.case.reference)
                continue
            if sent is not None:
                reminders += 1
                mails += sent
    summary = f"{plural(reminders, 'rappel envoyé', 'rappels envoyés')} ({plural(mails, 'message')})"
    return JobOutcome(JOB, count=reminders, summary=summary, mails=mails)
