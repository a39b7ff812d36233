"""Figures of the weekly report, computed from cases and bulletins (no side effects).

Weeks are ISO weeks in Paris time (Monday 00:00 to Monday 00:00); the report at ``now`` covers
the ``weeks`` complete weeks before the current one. Only incident cases count as declarations.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailgateway.clock import PARIS, aware
from mailgateway.store.models import Bulletin, BulletinRecipient, Case, OutboundMessage

UNSPECIFIED = "NON_PRECISE"


@dataclass
class WeeklyStats:
    region: str
    weeks: list[date]  # Mondays
    by_type: dict[str, list[int]] = field(default_factory=dict)
    by_severity: dict[str, list[int]] = field(default_factory=dict)
    declarations: list[int] = field(default_factory=list)
    # Median hours per week (None: no case acknowledged/qualified that week).
    ack_median_hours: list[float | None] = field(default_factory=list)
    qualify_median_hours: list[float | None] = field(default_factory=list)
    ack_overall: dict[str, float | int | None] = field(default_factory=dict)
    qualify_overall: dict[str, float | int | None] = field(default_factory=dict)
    bulletins: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.declarations)

    @property
    def week_labels(self) -> list[str]:
        return [f"S{d.isocalendar().week:02d}" for d in self.weeks]


def week_start(at: datetime) -> date:
    local = aware(at).astimezone(PARIS).date()
    return local - timedelta(days=local.weekday())


def _bounds(monday: date) -> datetime:
    """Monday 00:00 in Paris, in UTC: the columns hold UTC without an offset, and SQLite compares
    the text, so a Paris time was read as UTC — a case opened on Sunday after 23:00 UTC (Monday
    in Paris) fell inside the week before and out of every week counted (KeyError; the test
    suite run at 23:44 UTC)."""
    return datetime.combine(monday, datetime.min.time(), PARIS).astimezone(UTC)


def _summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "median": None, "p90": None}
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {"count": len(values), "median": round(statistics.median(ordered), 1), "p90": round(p90, 1)}


def _hours(start: datetime, end: datetime | None) -> float | None:
    return None if end is None else max(0.0, (aware(end) - aware(start)).total_seconds() / 3600)


def compute(session: Session, region: str, now: datetime, weeks: int = 12) -> WeeklyStats:
    current = week_start(now)
    mondays = [current - timedelta(weeks=weeks - i) for i in range(weeks)]
    start, end = _bounds(mondays[0]), _bounds(current)
    stats = WeeklyStats(region, mondays)
    index = {monday: i for i, monday in enumerate(mondays)}
    types: dict[str, Counter[int]] = {}
    severities: dict[str, Counter[int]] = {}
    ack: list[list[float]] = [[] for _ in mondays]
    qual: list[list[float]] = [[] for _ in mondays]
    counts = [0] * weeks
    cases = session.execute(
        select(Case.opened_at, Case.incident_type, Case.severity, Case.acknowledged_at, Case.qualified_at)
        .where(Case.region == region, Case.kind == "incident", Case.merged_into_id.is_(None),
               Case.opened_at >= start, Case.opened_at < end))
    for opened, incident_type, severity, acknowledged, qualified in cases:
        i = index[week_start(opened)]
        counts[i] += 1
        types.setdefault(incident_type or UNSPECIFIED, Counter())[i] += 1
        severities.setdefault(severity or "NON_QUALIFIE", Counter())[i] += 1
        if (h := _hours(opened, acknowledged)) is not None:
            ack[i].append(h)
        if (h := _hours(opened, qualified)) is not None:
            qual[i].append(h)
    stats.declarations = counts
    # Most frequent first: the legend reads in order of importance.
    stats.by_type = {k: [c[i] for i in range(weeks)] for k, c in sorted(types.items(), key=lambda kv: -kv[1].total())}
    stats.by_severity = {k: [c[i] for i in range(weeks)] for k, c in sorted(severities.items())}
    stats.ack_median_hours = [round(statistics.median(v), 1) if v else None for v in ack]
    stats.qualify_median_hours = [round(statistics.median(v), 1) if v else None for v in qual]
    stats.ack_overall = _summary([h for week in ack for h in week])
    stats.qualify_overall = _summary([h for week in qual for h in week])
    stats.bulletins = bulletin_coverage(session, region, start, end)
    return stats


def bulletin_coverage(session: Session, region: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Per bulletin: recipients, delivered (the relay accepted it), acknowledged (#lu)."""
    out: list[dict[str, Any]] = []
    bulletins = session.scalars(select(Bulletin).where(Bulletin.region == region, Bulletin.created_at >= start,
                                                       Bulletin.created_at < end).order_by(Bulletin.created_at))
    for b in bulletins:
        recipients, delivered, acknowledged = session.execute(
            select(func.count(BulletinRecipient.id),
                   func.count(OutboundMessage.id).filter(OutboundMessage.status == "sent"),
                   func.count(BulletinRecipient.acknowledged_at))
            .select_from(BulletinRecipient)
            .outerjoin(OutboundMessage, OutboundMessage.id == BulletinRecipient.outbound_id)
            .where(BulletinRecipient.bulletin_id == b.id)).one()
        total = int(recipients) or b.recipients
        out.append({"id": b.id, "subject": b.subject, "date": aware(b.created_at).astimezone(PARIS).date().isoformat(),
                    "recipients": total, "delivered": int(delivered), "acknowledged": int(acknowledged),
                    "delivered_pct": round(100 * int(delivered) / total, 1) if total else 0.0,
                    "acknowledged_pct": round(100 * int(acknowledged) / total, 1) if total else 0.0})
    return out
