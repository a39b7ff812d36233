"""Shared fixtures. Servers come from ``tests/support/servers.py``; add small fixtures here.

Missing server binaries skip locally and fail under ``CI=true`` (``tests.support.unavailable``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import unavailable
from tests.support.db import migrated, rolled_back
from tests.support.servers import Dovecot, PostgresCluster, ServerUnavailable, SmtpSink

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CORPUS_DIR = PROJECT_ROOT.parent / "shared" / "corpus"

_user_numbers = itertools.count(1)
_SHARED_USERS = 300


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The shared real-world corpus (``../shared/corpus``); never copied into the project."""
    if not CORPUS_DIR.is_dir():
        unavailable(f"corpus not found at {CORPUS_DIR}")
    return CORPUS_DIR


# --- Dovecot ------------------------------------------------------------------------------------


def _start_dovecot(**kwargs: str) -> Dovecot:
    try:
        return Dovecot(**kwargs).start()
    except ServerUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    """A fresh Dovecot of this test's own: restart/kill it freely."""
    server = _start_dovecot()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def shared_dovecot() -> Iterator[Dovecot]:
    """One Dovecot for the session; use ``imap_user`` for an isolated mailbox. Do not stop it."""
    try:
        server = Dovecot()
    except ServerUnavailable as exc:
        unavailable(str(exc))
    for n in range(1, _SHARED_USERS + 1):  # known before start: no passwd-file reload to wait for
        server.add_user(f"user{n}@ars.test", "secret")
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def imap_user(shared_dovecot: Dovecot) -> str:
    """A fresh, empty mailbox user on the shared Dovecot (password: ``secret``)."""
    n = next(_user_numbers)
    if n > _SHARED_USERS:
        return shared_dovecot.add_user(f"user{n}@ars.test", "secret")
    return f"user{n}@ars.test"


# --- PostgreSQL ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    try:
        cluster = PostgresCluster().start()
    except ServerUnavailable as exc:
        unavailable(str(exc))
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster) -> str:
    """A fresh, empty PostgreSQL database (SQLAlchemy URL, psycopg 3)."""
    return pg_cluster.create_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database file (created on first connect)."""
    return f"sqlite:///{tmp_path / 'mailgateway.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Run the test on both engines: embedded SQLite and multi-instance PostgreSQL."""
    if request.param == "sqlite":
        url: str = request.getfixturevalue("sqlite_url")
    else:
        url = request.getfixturevalue("pg_url")
    return url


# --- SMTP ---------------------------------------------------------------------------------------


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """The test relay: records what it receives; see SmtpSink.fail() for failure injection."""
    sink = SmtpSink().start()
    try:
        yield sink
    finally:
        sink.stop()


# --- migrated databases -------------------------------------------------------------------------


@pytest.fixture
def db_factory(db_url: str) -> Iterator[object]:
    """A migrated database on each engine, as a sessionmaker; the engine is disposed afterwards."""
    with migrated(db_url) as factory:
        yield factory


@pytest.fixture
def sqlite_factory(sqlite_url: str) -> Iterator[object]:
    """A migrated SQLite database as a sessionmaker."""
    with migrated(sqlite_url) as factory:
        yield factory


@pytest.fixture(scope="module")
def module_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One SQLite database at head for a whole test module whose tests each roll back
    (``rolled_back_session``): the mutation-killing modules run hundreds of small tests."""
    with migrated(f"sqlite:///{tmp_path_factory.mktemp('module') / 'module.db'}") as made:
        yield made


@pytest.fixture
def rolled_back_session(module_factory: Any) -> Iterator[object]:
    with rolled_back(module_factory) as session:
        yield session
