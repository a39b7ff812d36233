"""``mailgateway scheduler run-due|list`` and ``report weekly``: scheduled jobs run once, on demand."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from mailgateway.app import Services, build_services
from mailgateway.cli.common import require_database
from mailgateway.clock import PARIS, Clock, FixedClock, SystemClock
from mailgateway.dispatch.mailer import Mailer
from mailgateway.errors import InputError
from mailgateway.processing.context import Env
from mailgateway.scheduler import JobRunner, format_list
from mailgateway.settings import Settings


def parse_now(value: str | None) -> datetime | None:
    """ISO 8601; without an offset the time is Paris wall-clock time (what operators read).

    Returned in UTC: the database stores instants as UTC (SQLite keeps no offset, so a ``+01:00``
    value would be read back an hour off and the sealed state of every case it touched would no
    longer match: ``cases verify`` reported untouched cases as altered)."""
    if value is None:
        return None
    try:  # « --now= » (empty) is a mistake, not « now » (outside tester)
        at = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InputError(f"--now : date invalide {value!r} (attendu ISO 8601, ex. 2026-12-01T08:00:00+01:00)") from exc
    return (at.replace(tzinfo=PARIS) if at.tzinfo is None else at).astimezone(UTC)


def _app(settings: Settings, now: datetime | None) -> Services:
    require_database(settings)
    clock: Clock = FixedClock(now) if now is not None else SystemClock()
    return build_services(settings, clock=clock)


@dataclass
class DecidingAt:
    """The JobContext of ``run-due --now T``: the jobs decide what is due at T (their clock and
    ``now``), while the mailer, built on the real clock, queues what they send for now, with
    today's Date header — a reminder due at "now + 7 days" is sent when the operator asks, it does
    not wait in the outbox until that date."""

    settings: Settings
    factory: sessionmaker[Session]
    clock: Clock
    mailer: Mailer
    env: Env


def deciding_at(services: Services, at: datetime) -> DecidingAt:
    decision = FixedClock(at)
    env = Env(settings=services.settings, mailer=services.mailer, clock=decision)
    return DecidingAt(services.settings, services.factory, decision, services.mailer, env)


def run(args: argparse.Namespace, settings: Settings) -> int:
    now = parse_now(getattr(args, "now", None))
    # The real clock for everything that is sent; T only for what is decided (deciding_at).
    app = _app(settings, None if args.scheduler_cmd == "run-due" else now)
    try:
        at = now or app.clock.now()
        if args.scheduler_cmd == "run-due":
            outcomes = JobRunner(deciding_at(app, at)).run_due(at)
            for outcome in outcomes:
                print(outcome.summary)
            return 0
        if args.scheduler_cmd == "list":
            print(format_list(app, at))
            return 0
    finally:
        app.close()
    return 2


def report(args: argparse.Namespace, settings: Settings) -> int:
    """``report weekly --out DIR [--region R] [--now ISO]``: the weekly figures as CSV and PNG."""
    from mailgateway.jobs import report

    if args.region and settings.region(args.region) is None:
        raise InputError(f"--region : région inconnue {args.region!r}")
    now = parse_now(args.now)
    app = _app(settings, now)
    try:
        files = report.export(app, now or app.clock.now(), Path(args.out), args.region)
    finally:
        app.close()
    print(f"{len(files)} fichiers écrits dans {args.out}")
    return 0
