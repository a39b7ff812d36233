"""Migrations and models agree on both engines, and the migrations go down and up again."""

from __future__ import annotations

import threading
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from mailgateway.store.engine import (
    alembic_config,
    current_revision,
    ensure_schema,
    head_revision,
    make_engine,
    upgrade,
)
from mailgateway.store.models import Base

APSCHEDULER_TABLE = "apscheduler_jobs"  # APScheduler creates and owns it (migrations/env.py)


def schema_diff(url: str) -> list[Any]:
    """What autogenerate would write to turn the migrated schema into the models: [] when in step."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={
                "compare_type": True,
                "compare_server_default": True,
                "include_name": lambda name, type_, _p: not (type_ == "table" and name == APSCHEDULER_TABLE),
            })
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        return current_revision(engine)
    finally:
        engine.dispose()


def test_an_empty_database_migrates_to_head_and_matches_the_models(db_url: str) -> None:
    upgrade(db_url)
    assert revision(db_url) == head_revision()
    assert set(Base.metadata.tables) <= tables(db_url)
    assert schema_diff(db_url) == []


def test_downgrade_to_base_then_upgrade_again(db_url: str) -> None:
    upgrade(db_url)
    command.downgrade(alembic_config(db_url), "base")
    assert revision(db_url) is None
    assert tables(db_url) <= {"alembic_version"}
    upgrade(db_url)
    assert revision(db_url) == head_revision()
    assert schema_diff(db_url) == []


def test_instances_starting_together_on_an_empty_postgresql_database_migrate_it_once(pg_url: str) -> None:
    # Every instance's `run` calls ensure_schema; they take turns under an advisory lock.
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def start() -> None:
        barrier.wait()
        try:
            ensure_schema(pg_url)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert revision(pg_url) == head_revision()
    assert schema_diff(pg_url) == []


def test_contacts_imported_before_0008_get_their_domain(db_url: str) -> None:
    """0008 indexes the domain of every contact address (directory/known.py): the rows already
    there are filled by the migration, not only those inserted after it."""
    upgrade(db_url, "0007")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO establishments (finess, name, category, departement, source, updated_at) "
                              "VALUES ('690781810', 'CHU', 'CH', '69', 'finess', CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO contacts (finess, address, role, status, bounce_score, created_at, "
                              "updated_at) VALUES ('690781810', 'rssi@chu-lyon.test', 'rssi', 'active', 0, "
                              "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        upgrade(db_url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT domain FROM contacts")).scalar_one() == "chu-lyon.test"
    finally:
        engine.dispose()
