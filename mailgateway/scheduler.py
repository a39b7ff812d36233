"""When jobs run: the schedule table, ``scheduler run-due``, and APScheduler inside the daemon.

``JOBS`` is the whole schedule: each job has an APScheduler trigger (Europe/Paris wall-clock time)
and a rule saying whether it is due at an instant, which ``run-due --now`` uses (cron-less
operation, tests). Interval jobs (deadlines, housekeeping, bulletin follow-ups) are always due;
daily and weekly jobs are due from their hour for ``catch_up_hours`` and run once per period
(``job_runs``).

In the daemon, APScheduler 3 keeps the schedule in the gateway's database (``apscheduler_jobs``)
so next run times survive restarts, and a run missed while stopped fires once at start
(``coalesce``) within the catch-up grace. Several instances on PostgreSQL may share that table and
fire the same job: each job run takes an advisory lock and is idempotent (``mailgateway.jobs``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import func, select

from mailgateway.clock import PARIS, paris
from mailgateway.interfaces import DaemonContext
from mailgateway.jobs import deadlines, digest, housekeeping, report, retention
from mailgateway.jobs import quarantine as quarantine_notices
from mailgateway.jobs.base import JobContext, JobOutcome
from mailgateway.settings import SchedulerSettings
from mailgateway.store.engine import reading
from mailgateway.store.models import JobRun

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler
    from sqlalchemy import Engine


log = logging.getLogger("mailgateway.scheduler")
JOBSTORE_TABLE = "apscheduler_jobs"
WEEKDAYS = ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche")
JobFn = Callable[[JobContext, datetime], JobOutcome]


def in_window(sc: SchedulerSettings, now: datetime, hour: int, weekday: int | None = None) -> bool:
    """True when ``now`` is within ``catch_up_hours`` after ``hour`` (on ``weekday``), Paris time."""
    local = paris(now)
    for day in (local.date(), local.date() - timedelta(days=1)):  # a window may cross midnight
        start = datetime.combine(day, time(hour), PARIS)
        if (weekday is None or day.weekday() == weekday) and start <= local < start + timedelta(
                hours=max(sc.catch_up_hours, 1 / 60)):
            return True
    return False


@dataclass(frozen=True)
class JobDef:
    name: str
    label: str  # French, for `scheduler list`
    run: JobFn
    trigger: Callable[[SchedulerSettings], BaseTrigger]
    due: Callable[[SchedulerSettings, datetime], bool]
    describe: Callable[[SchedulerSettings], str]


def _every(minutes: Callable[[SchedulerSettings], float]) -> Callable[[SchedulerSettings], BaseTrigger]:
    return lambda sc: IntervalTrigger(minutes=minutes(sc), timezone=PARIS)


JOBS: tuple[JobDef, ...] = (
    JobDef("deadlines", "échéances et rappels", deadlines.run, _every(lambda sc: sc.deadline_interval_minutes),
           lambda sc, now: True, lambda sc: f"toutes les {sc.deadline_interval_minutes:g} min"),
    JobDef("housekeeping", "maintenance de la file sortante", housekeeping.run,
           _every(lambda sc: sc.housekeeping_interval_minutes), lambda sc, now: True,
           lambda sc: f"toutes les {sc.housekeeping_interval_minutes:g} min"),
    JobDef("bulletins", "suivi des bulletins", housekeeping.bulletins,
           _every(lambda sc: sc.housekeeping_interval_minutes),
           lambda sc, now: True, lambda sc: f"toutes les {sc.housekeeping_interval_minutes:g} min"),
    JobDef("digest", "synthèse quotidienne", digest.run,
           lambda sc: CronTrigger(hour=sc.digest_hour, minute=0, timezone=PARIS),
           lambda sc, now: in_window(sc, now, sc.digest_hour), lambda sc: f"chaque jour à {sc.digest_hour} h"),
    JobDef("quarantine_summary", "résumé de la quarantaine", housekeeping.quarantine_summary,
           lambda sc: CronTrigger(hour=sc.quarantine_summary_hour, minute=5, timezone=PARIS),
           lambda sc, now: in_window(sc, now, sc.quarantine_summary_hour),
           lambda sc: f"chaque jour à {sc.quarantine_summary_hour} h 05"),
    # SILENT: a quarantined message reaches staff within minutes (jobs/quarantine.py).
    JobDef("quarantine_notices", "avis de quarantaine aux agents", quarantine_notices.run,
           _every(lambda sc: sc.quarantine_notice_minutes), lambda sc, now: True,
           lambda sc: f"toutes les {sc.quarantine_notice_minutes:g} min"),
    JobDef("weekly_report", "rapport hebdomadaire", report.run,
           lambda sc: CronTrigger(day_of_week=sc.weekly_report_weekday, hour=sc.weekly_report_hour, minute=10,
                                  timezone=PARIS),
           lambda sc, now: in_window(sc, now, sc.weekly_report_hour, sc.weekly_report_weekday),
           lambda sc: f"chaque {WEEKDAYS[sc.weekly_report_weekday]} à {sc.weekly_report_hour} h 10"),
    JobDef("retention", "rétention (RGPD)", retention.run,
           lambda sc: CronTrigger(hour=sc.retention_hour, minute=30, timezone=PARIS),
           lambda sc, now: in_window(sc, now, sc.retention_hour),
           lambda sc: f"chaque jour à {sc.retention_hour} h 30"),
)
BY_NAME = {job.name: job for job in JOBS}


class JobRunner:
    """Runs jobs in one ``JobContext``; ``on_run`` hears every outcome (metrics, waking the sender)."""

    def __init__(self, ctx: JobContext, on_run: Callable[[JobOutcome | None, str], None] | None = None) -> None:
        self.ctx = ctx
        self.on_run = on_run

    def run(self, name: str, now: datetime | None = None) -> JobOutcome:
        now = now or self.ctx.clock.now()
        try:
            outcome = BY_NAME[name].run(self.ctx, now)
        except Exception:
            if self.on_run is not None:
                self.on_run(None, name)
            raise
        log.info("job %s: %s", name, outcome.summary)
        if self.on_run is not None:
            self.on_run(outcome, name)
        return outcome

    def run_due(self, now: datetime) -> list[JobOutcome]:
        sc = self.ctx.settings.scheduler
        return [self.run(job.name, now) for job in JOBS if job.due(sc, now)]


# -- APScheduler -------------------------------------------------------------------------------

_active: JobRunner | None = None
_active_lock = threading.Lock()


def fire(name: str) -> None:
    """Entry point stored in the job store (by reference: the job store is shared by instances)."""
    with _active_lock:
        runner = _active
    if runner is None:
        log.warning("job %s fired but no scheduler runner is active", name)
        return
    try:
        runner.run(name)
    except Exception:
        log.exception("job %s failed", name)


def build_scheduler(engine: Engine, sc: SchedulerSettings) -> BackgroundScheduler:
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    return BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(engine=engine, tablename=JOBSTORE_TABLE)},
        executors={"default": ThreadPoolExecutor(2)},
        job_defaults={"coalesce": True, "max_instances": 1,
                      "misfire_grace_time": max(60, int(sc.catch_up_hours * 3600))},
        timezone=PARIS,
    )


def sync_jobs(scheduler: BackgroundScheduler, sc: SchedulerSettings) -> list[str]:
    """Add our jobs to the (started) scheduler; a stored job whose trigger is unchanged keeps its
    next run time, so a restart neither skips nor repeats a run. Returns the jobs (re)written."""
    changed = []
    for job in JOBS:
        trigger = job.trigger(sc)
        stored = scheduler.get_job(job.name)
        if stored is not None and str(stored.trigger) == str(trigger):
            continue
        scheduler.add_job(fire, trigger=trigger, args=[job.name], id=job.name, name=job.label,
                          replace_existing=True)
        changed.append(job.name)
    return changed


class SchedulerExtension:
    """Daemon extension: APScheduler in a background thread for the daemon's lifetime."""

    def __init__(self, jobs: Callable[[], JobContext]) -> None:
        """``jobs``: the context the jobs run in, read when the daemon starts (it builds it then)."""
        self.jobs = jobs
        self.scheduler: BackgroundScheduler | None = None
        self.runner: JobRunner | None = None

    async def start(self, ctx: DaemonContext) -> None:
        global _active
        settings = ctx.settings
        if not settings.scheduler.enabled:
            log.info("scheduler disabled ([scheduler] enabled = false)")
            return

        def on_run(outcome: JobOutcome | None, name: str) -> None:
            ctx.job_ran(name, "error" if outcome is None else "skipped" if outcome.skipped else "ok")
            if outcome is not None and outcome.mails:
                ctx.wake_sender()

        self.runner = JobRunner(self.jobs(), on_run)
        with _active_lock:
            _active = self.runner
        self.scheduler = build_scheduler(ctx.engine, settings.scheduler)
        await asyncio.to_thread(self._start, settings.scheduler)

    def _start(self, sc: SchedulerSettings) -> None:
        assert self.scheduler is not None
        self.scheduler.start(paused=True)
        sync_jobs(self.scheduler, sc)
        self.scheduler.resume()
        log.info("scheduler started: %s", ", ".join(job.name for job in JOBS))

    async def stop(self, ctx: DaemonContext) -> None:
        global _active
        if self.scheduler is not None and self.scheduler.running:
            await asyncio.to_thread(self.scheduler.shutdown, True)
        with _active_lock:
            if _active is self.runner:
                _active = None

    def reload(self, ctx: DaemonContext) -> None:
        if self.scheduler is not None and self.scheduler.running:
            changed = sync_jobs(self.scheduler, ctx.settings.scheduler)
            if changed:
                log.info("schedule changed for: %s", ", ".join(changed))


# -- command line ------------------------------------------------------------------------------


def format_list(ctx: JobContext, now: datetime) -> str:
    """``scheduler list``: each job, when it runs, its next and last run."""
    sc = ctx.settings.scheduler
    with reading(ctx.factory) as session:
        last = dict(session.execute(select(JobRun.job, func.max(JobRun.ran_at)).group_by(JobRun.job)).all())
    lines = [f"{'tâche':<20} {'quand':<28} {'prochain passage':<22} dernier passage"]
    for job in JOBS:
        trigger = job.trigger(sc)
        # An interval trigger counts from when it was created: from now, for this listing.
        following = (paris(now) + trigger.interval if isinstance(trigger, IntervalTrigger)
                     else trigger.get_next_fire_time(None, paris(now)))
        nxt = following.astimezone(PARIS).strftime("%d/%m/%Y %H:%M") if following else "—"
        ran = last.get(job.name)
        ran_fr = paris(ran).strftime("%d/%m/%Y %H:%M") if ran else "—"
        lines.append(f"{job.name:<20} {job.describe(sc):<28} {nxt:<22} {ran_fr}")
    if not sc.enabled:
        lines.append("(planificateur désactivé dans [scheduler] : seul « scheduler run-due » exécute les tâches)")
    return "\n".join(lines)
