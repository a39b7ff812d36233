"""Case references ``SSI-<REGION>-<YYYY>-<NNNN>`` (docs/architecture.md, "Contracts").

The sequence is per region and year, never reused, and safe under concurrent processes: the
increment is one ``UPDATE ... RETURNING`` on the sequence row, which PostgreSQL serialises with a
row lock and SQLite with its database write lock (transactions begin IMMEDIATE).
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any, cast

from sqlalchemy import Table, insert, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from mailgateway.store import fast
from mailgateway.store.models import CaseSequence

REFERENCE_RE = re.compile(r"^SSI-(?P<region>[A-Z0-9]{2,5})-(?P<year>\d{4})-(?P<number>\d{4,})$")


def format_reference(region: str, year: int, number: int) -> str:
    return f"SSI-{region}-{year:04d}-{number:04d}"


def region_of(reference: str) -> str | None:
    match = REFERENCE_RE.match(reference)
    return match.group("region") if match else None


def next_reference(session: Session, region: str, year: int) -> str:
    """The next number of ``region`` and ``year``, in one statement: ``INSERT … ON CONFLICT DO
    UPDATE SET last = last + 1 RETURNING last`` (SQLite ≥ 3.35, PostgreSQL). The row lock of the
    upsert serialises concurrent instances as the UPDATE did; numbers stay gap-free per commit."""
    dialect = session.get_bind().dialect.name
    # No autoflush: the sequence is only ever written here, so the caller's pending changes need
    # not be flushed first (issue 19: one unit of work less per new case).
    with session.no_autoflush:
        if dialect in ("postgresql", "sqlite"):
            number = fast.execute(session, _next_statement(dialect),
                                  {"region": region, "year": year, "last": 1}).rows[0][0]
        else:  # pragma: no cover - only the two supported engines
            session.execute(insert(CaseSequence).values(region=region, year=year, last=0))
            number = session.execute(
                update(CaseSequence)
                .where(CaseSequence.region == region, CaseSequence.year == year)
                .values(last=CaseSequence.last + 1)
                .returning(CaseSequence.last)
            ).scalar_one()
    return format_reference(region, year, number)


@cache
def _next_statement(dialect: str) -> Any:
    """Built once per dialect, values bound at execution (issue 19: every new case asks)."""
    insert_ = pg_insert if dialect == "postgresql" else sqlite_insert
    table = cast(Table, CaseSequence.__table__)
    return (insert_(table).on_conflict_do_update(index_elements=["region", "year"], set_={"last": table.c.last + 1})
            .returning(table.c.last))
