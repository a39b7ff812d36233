"""What every job shares: its context, its outcome, the cross-instance lock, period claims, recipients."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy import CursorResult, Result, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.clock import Clock, aware, paris
from mailgateway.directory.staff import staff_addresses
from mailgateway.dispatch.mailer import Mailer
from mailgateway.processing.context import Env
from mailgateway.settings import Settings
from mailgateway.store.models import JobRun, StaffMember


class JobContext(Protocol):
    """What a scheduled job may use: the settings, the database, the clock, the outbound gate and
    the features' environment — not the daemon, the CLI or the processing runner. ``app.App``
    provides it (read at each run, so a reloaded configuration is seen at once)."""

    settings: Settings
    factory: sessionmaker[Session]
    clock: Clock
    mailer: Mailer
    env: Env


@dataclass(frozen=True)
class JobOutcome:
    job: str
    count: int = 0
    # French, for staff and operators ("3 rappels envoyés").
    summary: str = ""
    # True when another instance held the job's lock or the period was already done.
    skipped: bool = False
    mails: int = 0


def rowcount(result: Result[Any]) -> int:
    """Rows matched by an UPDATE/DELETE (``session.execute`` is typed as a plain Result)."""
    return int(cast(CursorResult[Any], result).rowcount)


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_try_advisory_xact_lock``."""
    return int.from_bytes(hashlib.sha256(f"mailgateway:job:{name}".encode()).digest()[:8], "big", signed=True)


def try_job_lock(session: Session, name: str) -> bool:
    """Take the job's lock for the current transaction; False when another instance holds it.

    PostgreSQL: a transaction-scoped advisory lock, released at commit/rollback, so a crashed
    instance never leaves it behind. SQLite is single-instance and its write transactions are
    already exclusive (``BEGIN IMMEDIATE``, store/engine.py).
    """
    if session.get_bind().dialect.name != "postgresql":
        return True
    return bool(session.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": lock_key(name)}))


def insert_ignore(session: Session, model: Any, values: dict[str, Any], unique: list[str]) -> int | None:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING id: the new id, or None when the row existed.

    The conflict neither raises nor poisons the transaction (PostgreSQL aborts a transaction on
    a unique violation); under concurrency the second inserter waits for the first to commit.
    """
    insert_ = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = insert_(model).values(values).on_conflict_do_nothing(index_elements=unique).returning(model.id)
    new_id = session.execute(stmt).scalar_one_or_none()
    return int(new_id) if new_id is not None else None


def claim_period(session: Session, job: str, period: str, now: datetime, summary: str | None = None) -> bool:
    """Record that ``job`` ran for ``period``; False when it already did (here or elsewhere)."""
    values = {"job": job, "period": period, "ran_at": now, "summary": summary}
    return insert_ignore(session, JobRun, values, ["job", "period"]) is not None


def last_run(session: Session, job: str) -> datetime | None:
    at = session.scalar(select(JobRun.ran_at).where(JobRun.job == job).order_by(JobRun.ran_at.desc()).limit(1))
    return aware(at) if at is not None else None


def referents(settings: Settings, session: Session, region: str) -> list[str]:
    """The region's referents (role ``[[regions]].referent``, default "referent"); escalations go
    there. Falls back to all the region's staff when none is configured."""
    reg = settings.region(region)
    role = (reg.referent if reg and reg.referent else "referent").lower()
    found = {s.address.lower() for s in settings.staff if s.region == region and s.role.lower() == role}
    found.update(a.lower() for a in session.scalars(
        select(StaffMember.address).where(StaffMember.region == region, StaffMember.role == role)))
    return sorted(found) or staff_addresses(settings, session, region)


def french_date(at: datetime) -> str:
    return paris(at).strftime("%d/%m/%Y")


def plural(n: int, singular: str, plural_form: str | None = None) -> str:
    """French agreement: 0 and 1 take the singular (« 0 rappel envoyé », « 2 rappels envoyés »)."""
    return f"{n} {singular if n <= 1 else (plural_form or singular + 's')}"


def french_duration(hours: float) -> str:
    """« 3 h 20 min », « 2 j 4 h »: compact, for mail bodies."""
    minutes = max(0, round(hours * 60))
    days, rest = divmod(minutes, 24 * 60)
    h, m = divmod(rest, 60)
    if days:
        return f"{days} j {h} h" if h else f"{days} j"
    if h:
        return f"{h} h {m:02d} min" if m else f"{h} h"
    return f"{m} min"
