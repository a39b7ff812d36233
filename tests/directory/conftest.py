from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from tests.support.db import migrated

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture
def session(sqlite_url: str) -> Iterator[Session]:
    """A session on a migrated SQLite database, in one transaction rolled back at the end."""
    with migrated(sqlite_url) as factory, factory() as s, s.begin():
        yield s


@pytest.fixture
def any_session(db_url: str) -> Iterator[Session]:
    """Like ``session``, on SQLite and on PostgreSQL."""
    with migrated(db_url) as factory, factory() as s, s.begin():
        yield s
