"""Weekly report to each region's staff: declarations per week by type and severity, delays to
acknowledge and qualify, bulletin coverage; charts inline in the HTML (multipart/related) with a
text fallback, and the same figures as CSV (``mailgateway report weekly --out DIR``)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from mailgateway.dispatch import relaylimits
from mailgateway.dispatch.compose import InlineImage
from mailgateway.dispatch.contexts import region_context
from mailgateway.jobs.base import JobContext, JobOutcome, claim_period, plural, try_job_lock
from mailgateway.jobs.charts import Figure, figures
from mailgateway.jobs.stats import WeeklyStats, compute, week_start
from mailgateway.store.engine import reading, transaction

log = logging.getLogger("mailgateway.jobs.report")
JOB = "weekly_report"


def period(now: datetime) -> str:
    year, week, _ = week_start(now).isocalendar()
    return f"{year}-W{week:02d}"


def report_context(stats: WeeklyStats, figs: list[Figure]) -> dict[str, object]:
    last = stats.weeks[-1]
    return {
        "weeks": len(stats.weeks), "from_fr": stats.weeks[0].strftime("%d/%m/%Y"),
        "to_fr": (last + timedelta(days=6)).strftime("%d/%m/%Y"), "week_label": stats.week_labels[-1],
        "total": stats.total, "last_week": stats.declarations[-1],
        "rows": [{"label": lab, "monday": d.strftime("%d/%m"), "count": n,
                  "ack": stats.ack_median_hours[i], "qualify": stats.qualify_median_hours[i]}
                 for i, (lab, d, n) in enumerate(zip(stats.week_labels, stats.weeks, stats.declarations, strict=True))],
        "by_type": {k: sum(v) for k, v in stats.by_type.items()},
        "by_severity": {k: sum(v) for k, v in stats.by_severity.items()},
        "ack": stats.ack_overall, "qualify": stats.qualify_overall, "bulletins": stats.bulletins,
        "figures": [{"cid": f"{f.name}@mailgateway", "title": f.title} for f in figs],
    }


def fitting(ctx: JobContext, session: Session, figs: list[Figure]) -> list[Figure]:
    """The charts, unless with the report they would not fit the relay's size limit (RFC 1870;
    dispatch/relaylimits.py): a report refused for good is worse than one without pictures
    (``mailgateway report weekly --out DIR`` draws them)."""
    limit = relaylimits.message_limit(ctx.settings, session)
    size = sum(relaylimits.encoded_size(len(f.png)) for f in figs) + relaylimits.MAIL_OVERHEAD_BYTES
    if limit is not None and size > limit:
        log.warning("weekly report: charts left out (%d bytes with the mail, relay limit %d)", size, limit)
        return []
    return figs


def run(ctx: JobContext, now: datetime) -> JobOutcome:
    weeks = ctx.settings.scheduler.report_weeks
    mails = 0
    with transaction(ctx.factory) as session:
        if not try_job_lock(session, JOB) or not claim_period(session, JOB, period(now), now):
            return JobOutcome(JOB, skipped=True, summary="rapport hebdomadaire déjà envoyé cette semaine")
        for region in ctx.settings.regions:
            stats = compute(session, region.code, now, weeks)
            figs = fitting(ctx, session, figures(stats))
            context = {**region_context(ctx.settings, region.code), **report_context(stats, figs)}
            images = [InlineImage(f"{f.name}@mailgateway", f.png, filename=f"{f.name}.png") for f in figs]
            mails += ctx.mailer.send_to_staff(session, region.code, template="rapport_hebdo", context=context,
                                              kind="rapport_hebdo", key=f"rapport_hebdo:{period(now)}:{region.code}",
                                              inline_images=images)
    return JobOutcome(JOB, count=mails, mails=mails,
                      summary=f"rapport hebdomadaire : envoyé à {plural(mails, 'destinataire', 'destinataires')}")


def export(ctx: JobContext, now: datetime, out_dir: Path, region: str | None = None) -> list[Path]:
    """Write ``<REGION>_<figure>.csv`` and ``.png`` into ``out_dir``; return the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    codes = [region] if region else [r.code for r in ctx.settings.regions]
    with reading(ctx.factory) as session:
        for code in codes:
            for fig in figures(compute(session, code, now, ctx.settings.scheduler.report_weeks)):
                table, picture = out_dir / f"{code}_{fig.name}.csv", out_dir / f"{code}_{fig.name}.png"
                table.write_text(fig.csv, encoding="utf-8")
                picture.write_bytes(fig.png)
                written += [table, picture]
    return written
