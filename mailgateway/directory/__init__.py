"""The directory: establishments (FINESS), their contacts, ARS staff, regions; imports and targets.

Public API (everything else in the package is private to it)::

    import_finess(session, path, now, *, radiotherapy_finess=()) -> ImportReport
    import_contacts(session, path, now, *, radiotherapy_finess=()) -> ImportReport
    import_staff(session, path, now) -> ImportReport
    run_import(settings, kind, path, *, now=None) -> (report_text_fr, exit_code)   # the CLI command
    parse_target(expr) -> Target                  # InputError with a French message
    select_recipients(session, region, target) -> Iterator[RecipientRow]   # streamed
    count_recipients(session, region, target) -> int
    record_bounce(session, address, permanent, diagnostic, now, outbound_id=None, *, policy) -> [Contact]
    reactivate(contact, now=None) / disable(contact, now=None)
    lookup_establishment(session, finess) -> EstablishmentInfo | None   # for mail.context
"""

from __future__ import annotations

from datetime import datetime
from os import PathLike

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgateway.clock import SystemClock
from mailgateway.directory.bounces import DEFAULT_POLICY, BouncePolicy, disable, reactivate, record_bounce
from mailgateway.directory.categories import CATEGORIES, normalise_category
from mailgateway.directory.contacts import ROLES, import_contacts
from mailgateway.directory.finess import import_finess
from mailgateway.directory.regions import Region, region_of_departement, regions
from mailgateway.directory.report import ImportReport, LineError
from mailgateway.directory.staff import import_staff
from mailgateway.directory.targets import (
    RecipientRow,
    Target,
    count_establishments,
    count_recipients,
    parse_target,
    select_recipients,
)
from mailgateway.errors import InputError
from mailgateway.mail.context import EstablishmentInfo
from mailgateway.settings import Settings
from mailgateway.store.engine import ensure_schema, is_sqlite, make_engine, make_sessionmaker, transaction
from mailgateway.store.models import Establishment

KINDS = ("finess", "contacts", "staff")

__all__ = [
    "CATEGORIES",
    "DEFAULT_POLICY",
    "KINDS",
    "ROLES",
    "BouncePolicy",
    "ImportReport",
    "LineError",
    "RecipientRow",
    "Region",
    "Target",
    "count_establishments",
    "count_recipients",
    "disable",
    "import_contacts",
    "import_finess",
    "import_staff",
    "lookup_establishment",
    "normalise_category",
    "parse_target",
    "reactivate",
    "record_bounce",
    "region_of_departement",
    "regions",
    "run_import",
    "select_recipients",
]


class _Refused(Exception):
    def __init__(self, report: ImportReport) -> None:
        self.report = report


def lookup_establishment(session: Session, finess: str) -> EstablishmentInfo | None:
    row = session.execute(
        select(
            Establishment.finess,
            Establishment.name,
            Establishment.category,
            Establishment.departement,
            Establishment.region,
        ).where(Establishment.finess == finess.strip().upper())
    ).first()
    return EstablishmentInfo(*row) if row is not None else None


def import_file(
    session: Session, settings: Settings, kind: str, path: str | PathLike[str], now: datetime
) -> ImportReport:
    radiotherapy = settings.labels.radiotherapy_finess
    if kind == "finess":
        return import_finess(session, path, now, radiotherapy_finess=radiotherapy)
    if kind == "contacts":
        return import_contacts(session, path, now, radiotherapy_finess=radiotherapy)
    if kind == "staff":
        return import_staff(session, path, now)
    raise InputError(f"type d'import inconnu « {kind} » (finess, contacts ou staff)")


def run_import(
    settings: Settings, kind: str, path: str | PathLike[str], *, now: datetime | None = None
) -> tuple[str, int]:
    """``mailgateway directory import --kind KIND FILE``: the French report and the exit code.

    Exit 0 when the file was imported (a FINESS import may still list bad lines it skipped),
    2 when it was refused or could not be read (README, "Command line"). One transaction: a refused import,
    or a crash, writes nothing.
    """
    at = now or SystemClock().now()
    try:
        engine = make_engine(settings.database.url)
    except Exception as exc:  # translated at the boundary: a bad URL is bad configuration
        return f"base de données inaccessible : {exc}", 2
    try:
        if is_sqlite(engine):
            ensure_schema(settings.database.url)  # as `run` does for the embedded default
        with transaction(make_sessionmaker(engine)) as session:
            report = import_file(session, settings, kind, path, at)
            if report.refused:
                raise _Refused(report)  # roll back, even if a refusal ever follows a write
    except _Refused as refused:
        report = refused.report
    except InputError as exc:
        return str(exc), 2
    finally:
        engine.dispose()
    return report.to_text_fr(), report.exit_code
