"""Migrated databases for tests: one helper behind every database fixture."""

from __future__ import annotations

import functools
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import psycopg
from sqlalchemy import make_url
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.store.engine import make_engine, make_sessionmaker, upgrade

# The database every fresh PostgreSQL test database is cloned from (CREATE DATABASE … TEMPLATE).
_PG_TEMPLATE = "mg_head_template"


def at_head(url: str) -> str:
    """Bring the database at ``url`` to the migration head; return ``url``.

    Tests that need a schema, not a migration, get a copy of a database migrated once per test
    process: a SQLite file not created yet becomes a copy of it, an empty PostgreSQL database is
    recreated from it as a template. Alembic took ~0.1 s a SQLite database and more on PostgreSQL,
    for about a thousand databases a run. The migrations themselves are proven on fresh databases
    by tests/store/test_migrations.py (models == migrations, upgrade and downgrade), and the daemon's
    and the CLI's own upgrade on start by the integration and ops tests. Anything else (an
    existing SQLite file, a PostgreSQL database with tables) is upgraded as before.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        if parsed.database and parsed.database != ":memory:" and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with closing(sqlite3.connect(_sqlite_template())) as source, closing(sqlite3.connect(path)) as target:
                source.backup(target)
            return url
    elif parsed.get_backend_name() == "postgresql" and parsed.database and _pg_from_template(url):
        return url
    upgrade(url)
    return url


@functools.cache
def _sqlite_template() -> str:
    path = Path(tempfile.mkdtemp(prefix="mailgw-head-")) / "head.db"
    upgrade(f"sqlite:///{path}")
    return str(path)


def _pg_conninfo(url: str, database: str) -> str:
    parsed = make_url(url).set(drivername="postgresql", database=database)
    return parsed.render_as_string(hide_password=False)


@functools.cache
def _pg_template(admin: str, server_url: str) -> None:
    with closing(psycopg.connect(admin, autocommit=True)) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{_PG_TEMPLATE}"')
        conn.execute(f'CREATE DATABASE "{_PG_TEMPLATE}"')
    upgrade(server_url)  # engines disposed: nobody stays connected to the template


def _pg_from_template(url: str) -> bool:
    """Recreate the empty database of ``url`` from the template; False if it has tables or is in use."""
    name = make_url(url).database or ""
    if name == _PG_TEMPLATE:
        return False
    with closing(psycopg.connect(_pg_conninfo(url, name))) as conn:
        tables = conn.execute("SELECT count(*) FROM information_schema.tables "
                              "WHERE table_schema = 'public'").fetchone()
    if tables is None or tables[0] != 0:
        return False
    admin = _pg_conninfo(url, "postgres")
    _pg_template(admin, str(make_url(url).set(database=_PG_TEMPLATE).render_as_string(hide_password=False)))
    with closing(psycopg.connect(admin, autocommit=True)) as conn:
        try:
            conn.execute(f'DROP DATABASE "{name}"')
        except psycopg.Error:  # someone is connected to it: upgrade it in place instead
            return False
        try:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{_PG_TEMPLATE}"')
        except psycopg.Error:
            conn.execute(f'CREATE DATABASE "{name}"')
            return False
    return True


@contextmanager
def migrated(url: str) -> Iterator[sessionmaker[Session]]:
    """Bring ``url`` to head (``at_head``) and give a sessionmaker; the engine is disposed afterwards."""
    at_head(url)
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
