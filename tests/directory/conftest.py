from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from mailgateway.store.engine import make_engine, make_sessionmaker, upgrade

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture
def session(sqlite_url: str) -> Iterator[Session]:
    """A session on a migrated SQLite database, in one transaction rolled back at the end."""
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    try:
        with make_sessionmaker(engine)() as s, s.begin():
            yield s
    finally:
        engine.dispose()


@pytest.fixture
def any_session(db_url: str) -> Iterator[Session]:
    """Like ``session``, on SQLite and on PostgreSQL."""
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as s, s.begin():
            yield s
    finally:
        engine.dispose()
