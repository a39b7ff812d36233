"""Migrations and models agree on both engines, and the migrations go down and up again."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from mailgateway.store import engine as engine_module
from mailgateway.store.engine import (
    MIGRATIONS_DIR,
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


def alembic_revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def test_revisions_read_without_alembic_are_alembics(db_url: str) -> None:
    """current_revision and head_revision skip Alembic (≈0.2 s a command): same answers."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert head_revision() == script.get_current_head()
    # The convention the fast reading relies on: NNNN_slug.py holds revision NNNN, after NNNN-1.
    for rev in script.walk_revisions():
        assert Path(rev.path).name.startswith(f"{rev.revision}_"), rev.path
        assert len(rev.revision) == 4 and rev.revision.isdigit(), rev.revision
        assert rev.down_revision == (None if rev.revision == "0001" else f"{int(rev.revision) - 1:04d}")
    assert revision(db_url) is None and alembic_revision(db_url) is None
    for target in ("0003", "head"):
        upgrade(db_url, target)
        assert revision(db_url) == alembic_revision(db_url) is not None


# The newest numbered migration, the one after it and the one before it (the cases below add a
# file after the real chain, whatever its length).
HEAD = max(path.name[:4] for path in (MIGRATIONS_DIR / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))
NEXT, BEFORE = f"{int(HEAD) + 1:04d}", f"{int(HEAD) - 1:04d}"


@pytest.mark.parametrize(("name", "revision", "down", "source"), [
    (f"{NEXT}_next.py", NEXT, HEAD, ""),  # the convention: read without Alembic
    ("ae1027a6acf_hotfix.py", "ae1027a6acf", HEAD, ""),  # named otherwise
    (f"{HEAD}_hotfix.py", f"{HEAD}b", HEAD, ""),  # a number taken twice: was skipped (outside tester)
    (f"{NEXT}_hotfix.py", "ff10", HEAD, ""),  # a number that is not its revision: "behind" for ever
    (f"{NEXT}_twice.py", f"{NEXT}b", HEAD, f"revision = '{NEXT}'\n"),  # bound again: Python keeps the last
    (f"{NEXT}_branch.py", NEXT, BEFORE, ""),  # two heads: Alembic refuses them, so do we
])
def test_a_migration_outside_the_numbered_chain_is_left_to_alembic(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, revision: str, down: str, source: str) -> None:
    versions = tmp_path / "migrations" / "versions"
    versions.mkdir(parents=True)
    for existing in (MIGRATIONS_DIR / "versions").glob("*.py"):
        (versions / existing.name).write_text(existing.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "migrations" / "env.py").write_text((MIGRATIONS_DIR / "env.py").read_text(encoding="utf-8"))
    (versions / name).write_text(
        f'{source}revision = "{revision}"\ndown_revision = "{down}"\n'
        "def upgrade() -> None:\n    pass\ndef downgrade() -> None:\n    pass\n", encoding="utf-8")
    monkeypatch.setattr(engine_module, "MIGRATIONS_DIR", tmp_path / "migrations")
    # Which reading answers: the numbered chain for the convention only, Alembic for the rest.
    in_chain = name == f"{NEXT}_next.py"
    assert engine_module._numbered_chain(sorted(versions.glob("*.py"))) == (NEXT if in_chain else None)
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    if down == BEFORE:
        with pytest.raises(Exception, match=r"[Mm]ultiple heads"):
            script.get_current_head()
        with pytest.raises(Exception, match=r"[Mm]ultiple heads"):
            head_revision()
        return
    assert head_revision() == script.get_current_head() == revision


def test_revision_literals_are_read_as_python_binds_them(tmp_path: Path) -> None:
    migration = tmp_path / "0010_x.py"
    cases = [
        ("revision: str = '0010'\ndown_revision: str | None = (\n    '0009')\n",
         {"revision": "0010", "down_revision": "0009"}),
        ("revision = '0010'\ndown_revision = None  # first\n", {"revision": "0010", "down_revision": None}),
        ("revision = '0010'\nrevision = REV\n", None),  # not a literal: Alembic runs it
        ("revision = '0010'\ndef upgrade(:\n", None),  # does not parse: Alembic reports it
    ]
    for source, expected in cases:
        migration.write_text(source, encoding="utf-8")
        assert engine_module._literals(migration) == expected, source


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


def test_the_head_is_read_from_many_threads_at_once() -> None:
    """Instances starting together migrate from threads, and CPython 3.11's ast.parse is not
    thread-safe (a run of the suite failed with "AST constructor recursion depth mismatch")."""
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(20):
                assert head_revision() is not None
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


def test_the_sqlite_file_is_read_from_the_url_as_sqlalchemy_reads_it() -> None:
    """An outside tester: with « p%20x » in the URL the daemon opened « p x » while the commands'
    check looked for « p%20x », and refused a database that was there."""
    from pathlib import Path

    from mailgateway.store.engine import sqlite_file

    assert sqlite_file("sqlite:////srv/p%20x/db%3Fa.db") == Path("/srv/p x/db?a.db")
    assert sqlite_file("sqlite:///var/x.db?timeout=3") == Path("var/x.db")
    assert sqlite_file("sqlite:///:memory:") is None and sqlite_file("sqlite://") is None
    assert sqlite_file("postgresql+psycopg://u@h/db") is None
