"""Alembic environment: the URL comes from the caller's config, never from a file here."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from mailgateway.store.engine import make_engine
from mailgateway.store.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url") or "sqlite://"


def _sqlite_foreign_keys(connection: Connection, on: bool) -> None:
    """SQLite alters a table by copying it (batch mode: create, copy, DROP, rename); with foreign
    keys enforced, dropping a table that other rows reference fails (or would cascade), so
    migrations run with them off — the documented SQLite procedure (https://sqlite.org/lang_altertable.html,
    "Making Other Kinds Of Table Schema Changes") — and are checked before they are on again.
    The pragma is a no-op inside a transaction: it is set on the raw connection, outside one."""
    raw = connection.connection.dbapi_connection
    assert raw is not None
    cursor = raw.cursor()
    try:
        if on:
            broken = cursor.execute("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"migration left {len(broken)} broken foreign key(s): {broken[:5]}")
        cursor.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    finally:
        cursor.close()


def run_migrations_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            _sqlite_foreign_keys(connection, on=False)
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            # APScheduler owns its job table.
            include_name=lambda name, type_, _p: not (type_ == "table" and name == "apscheduler_jobs"),
        )
        with context.begin_transaction():
            context.run_migrations()
        if sqlite:
            _sqlite_foreign_keys(connection, on=True)
    engine.dispose()


run_migrations_online()
