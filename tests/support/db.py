"""Migrated databases for tests: one helper behind every database fixture."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session, sessionmaker

from mailgateway.store.engine import make_engine, make_sessionmaker, upgrade


@contextmanager
def migrated(url: str) -> Iterator[sessionmaker[Session]]:
    """Upgrade ``url`` to head and give a sessionmaker; the engine is disposed afterwards."""
    upgrade(url)
    engine = make_engine(url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()
