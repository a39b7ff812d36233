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


@contextmanager
def rolled_back(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work is rolled back at the end: tests sharing one migrated database
    (a module-scoped ``migrated``) share its schema, not their rows."""
    session = factory()
    try:
        yield session
    finally:
        session.rollback()
        session.close()
