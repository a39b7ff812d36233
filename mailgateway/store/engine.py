"""Database engine, sessions and migrations.

SQLite (WAL, ``synchronous=FULL``: a commit is on disk before SMTP answers 250) is the embedded,
single-instance default; PostgreSQL (psycopg 3) is the multi-instance engine.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.request import pathname2url

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.errors import SchemaError

log = logging.getLogger("mailgateway.store")

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# Advisory lock key serialising migrations run at start by several instances (PostgreSQL).
MIGRATION_LOCK_KEY = int.from_bytes(hashlib.sha256(b"mailgateway:migrations").digest()[:8], "big", signed=True)


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    """Create the engine; for SQLite create the parent directory and set durability pragmas."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        existing: Path | None = None
        database = _file_of(parsed.database)
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
            if database.exists() or lock_file(database).exists():
                existing = database.absolute()
        if existing is not None:
            # A database that exists, or existed (its write-lock file, which only a running
            # installation creates, is there), is opened read-write, never created again: SQLite
            # creates an empty file at the path on any new connection, so after the file was
            # deleted or moved under the daemon (outside tester) a worker started meanwhile made a
            # fresh, empty database that the next start migrated — what had been accepted was lost
            # without a word. Its connections now fail (« unable to open database file »).
            uri = f"file:{pathname2url(str(existing))}?mode=rw"

            def _connect() -> sqlite3.Connection:
                return sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False)

            engine = create_engine(url, creator=_connect)
        else:
            engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy issue BEGIN itself (pysqlite's implicit transactions are off).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # BEGIN IMMEDIATE: take the write lock up front so two processes never deadlock on
            # a read->write upgrade (case numbering, claims). Read-only sessions (``reading``)
            # use a deferred BEGIN: in WAL mode they neither wait for nor block the writer.
            if conn.get_execution_options().get("mailgateway_readonly"):
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


class DatabaseFileWatch:
    """The SQLite file a process opened, deleted or replaced under it since (an ``rm``, a restore
    copied over the running database): every later write goes to a file nobody will open again,
    and the next start creates an empty one. Found by an outside tester: the daemon kept
    answering 250 into the deleted file, /healthz said ok, and the restart lost what it had
    accepted. ``problem()`` is a ``stat(2)``: the accept writer asks before and after each batch
    (intake/writer.py: 451 then), the health check at each /healthz and /metrics."""

    def __init__(self, engine: Engine) -> None:
        database = _file_of(engine.url.database) if is_sqlite(engine) else None
        self.path = database.absolute() if database is not None else None
        self.identity = _identity(self.path) if self.path is not None else None

    def problem(self) -> str | None:
        if self.path is None or self.identity is None:
            return None
        now = _identity(self.path)
        if now == self.identity:
            return None
        what = "supprimé" if now is None else "remplacé"
        return (f"fichier de la base de données {what} pendant le fonctionnement : {self.path} ; les messages "
                "sont refusés (451) : restaurez-le puis redémarrez le service")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def lock_file(database: Path) -> Path:
    """``<database>.write-lock``: the write gate's ``flock`` file (``write_gate``), which only a
    running installation creates — so it also tells that a database existed at ``database``."""
    return Path(f"{os.path.abspath(database)}.write-lock")


class InstanceRunning(Exception):
    """Another ``mailgateway run`` holds this SQLite database (``hold_instance``)."""


def hold_instance(url: str, wait_seconds: float = 5.0) -> int | None:
    """On SQLite, the daemon's claim on its database: a POSIX record lock (``lockf``) on
    ``<database>.instance-lock``, held until this process ends, or ``InstanceRunning``. SQLite is
    for one instance (docs/operations.md §7); a second ``run`` on the same file started its own
    watchers, processing and sender beside the first (an outside tester). Record locks, not
    ``flock``: they belong to the process and are not inherited by its forked children, so the
    kernel releases the claim the moment the daemon dies, SIGKILL included, even while a child
    outlives it; a restart waits up to ``wait_seconds`` for the dead one's exit to be reaped.
    Returns the descriptor (kept open for the process's life), None on another database."""
    database = sqlite_file(url)
    if database is None:
        return None
    # The real path: the database reached through a symlink to its file is the same database (an
    # outside tester ran two daemons so). A hard link still escapes: misconfiguration.
    path = f"{os.path.realpath(database)}.instance-lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except FileNotFoundError:
        return None  # no such directory: opening the database says so in its own words
    except OSError as exc:
        log.warning("instance lock %s unusable (%s): a second daemon on this database would not be refused",
                    path, exc)
        return None
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            os.close(fd)
            raise InstanceRunning(f"une autre instance de mailgateway utilise déjà cette base : {database} "
                                  f"(verrou {path}) ; SQLite ne sert qu'une instance") from None
        return fd


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (``sqlite:///relative/path``, ``sqlite:////absolute/path``,
    SQLAlchemy's reading: three slashes and a relative path, four for an absolute one), or None
    for another database or one in memory."""
    if not url.startswith("sqlite:///"):
        return None
    # SQLAlchemy's own reading (percent-escapes decoded, the query left out): the file the engine
    # opens, not a second reading of the URL (« p%20x/db.db »: an outside tester).
    return _file_of(make_url(url).database)


def _file_of(database: str | None) -> Path | None:
    """The file of a SQLite URL's database part; None in memory or as SQLite's own ``file:`` URI
    (left to SQLite as written)."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception."""
    with factory() as session, session.begin():
        yield session


def write_gate(engine: Engine) -> WriteGate | NullGate:
    """The gate of SQLite's single writer, across the threads and processes of one installation.

    SQLite lets one transaction write at a time; a second writer waits in SQLite's busy handler,
    which sleeps in growing steps (up to 100 ms) instead of being woken. The hot writers (the
    accept writer and the sender in the daemon, the processor in the processing host, a separate
    process) take this gate around their write transactions, so they hand the database to each
    other at once and the accept writer's batches are never starved: a thread lock for the threads
    of one process, then ``flock(2)`` on ``<database>.write-lock`` for the processes (the kernel
    wakes the next waiter on unlock, and releases the lock of a process that dies). Writers that
    do not take it (CLI commands) still meet the others in the busy handler: the gate is about
    speed, SQLite's own lock about correctness. PostgreSQL has row locks: no gate (a null context).
    """
    if not is_sqlite(engine):
        return NullGate()
    database = engine.url.database
    path = str(lock_file(Path(database))) if database and database != ":memory:" else None
    key = path or str(engine.url)
    # One gate per database file in this process, whichever engine reaches it. A forked child
    # gets its own: an flock is shared by the descriptors of a fork (flock(2)), and a thread lock
    # held in the parent at fork stays held in the child for ever.
    with _GATES_LOCK:
        gate = _GATES.get(key)
        if gate is None or gate.pid != os.getpid():
            gate = _GATES[key] = WriteGate(path)
    return gate


class NullGate:
    """PostgreSQL has row locks: no gate."""

    holding: Callable[[float], None] | None = None
    path: str | None = None

    def acquire(self, timeout: float | None = None) -> None:
        pass

    def release(self) -> None:
        pass

    def __enter__(self) -> NullGate:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass


class GateTimeout(Exception):
    """The write gate was not obtained in time (a holder paused or wedged): the caller answers 4xx."""


class _Waiter:
    """A blocking ``flock`` in progress in its own thread, for a caller that may give up on it."""

    def __init__(self) -> None:
        self.got = threading.Event()
        self.claimed = True  # somebody waits for it; False: unlock it as soon as it is obtained


class WriteGate:
    """A thread lock, then (with a lock file) an exclusive ``flock`` on it; reusable, not reentrant.

    ``with gate`` waits as long as it takes (the processor, the sender); ``acquire(timeout)`` gives
    up after ``timeout`` seconds (the accept writer: an SMTP client must get its 451 before it
    gives up itself, docs/guarantees.md). ``flock(2)`` has no timeout: a bounded wait hands the
    blocking call to a thread that unlocks at once what it obtains after its caller gave up.
    ``holding``: called with the monotonic time the gate was taken, and 0.0 when released (the
    processing host publishes it for the daemon's supervision, processing/host.py).
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.pid = os.getpid()
        self._threads = threading.Lock()
        self._fd: int | None = None
        self._file_usable = path is not None
        self._state = threading.Lock()
        self._waiter: _Waiter | None = None
        self.holding: Callable[[float], None] | None = None

    def _open(self) -> int | None:
        assert self.path is not None
        try:
            # 0600 like the database; O_CLOEXEC: a child process must not inherit (and hold) it;
            # O_NOFOLLOW: a symlink planted at this path is refused, not followed to another file.
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:  # a read-only directory: SQLite's busy handler alone, as before
            self._file_usable = False
            log.warning("write gate %s unavailable (%s): writers of other processes meet in "
                        "SQLite's busy handler", self.path, exc)
            return None

    def _descriptor(self) -> int | None:
        """The lock file's descriptor, reopened when the file at the path is no longer the one we
        hold (deleted or replaced while running): both processes must lock the same inode."""
        if not self._file_usable or self.path is None:
            return None
        fd = self._fd
        if fd is not None and self._waiter is None:
            try:
                mine, there = os.fstat(fd), os.stat(self.path, follow_symlinks=False)
                same = (mine.st_ino, mine.st_dev) == (there.st_ino, there.st_dev)
            except OSError:
                same = False
            if not same:
                log.warning("write gate %s was deleted or replaced: reopened", self.path)
                os.close(fd)
                fd = self._fd = None
        if fd is None:
            fd = self._fd = self._open()
        return fd

    def acquire(self, timeout: float | None = None) -> None:
        """Take the gate, within ``timeout`` seconds if given (else :class:`GateTimeout`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._threads.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            raise GateTimeout(f"write gate busy for over {timeout:g} s")
        try:
            fd = self._descriptor()
            if fd is not None:
                self._flock_within(fd, deadline, timeout)
        except BaseException:
            self._threads.release()
            raise
        if self.holding is not None and fd is None:  # (with a lock file: said once it is held)
            self.holding(time.monotonic())

    def _flock_within(self, fd: int, deadline: float | None, timeout: float | None) -> None:
        # Every wait goes through the one waiter thread: a second blocking flock on the same open
        # file would succeed as soon as the first did, and its unlock release the other's lock.
        with self._state:
            waiter = self._waiter
            if waiter is None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    if self.holding is not None:
                        self.holding(time.monotonic())
                    return
                except BlockingIOError:
                    pass
                waiter = self._waiter = _Waiter()
                threading.Thread(target=self._wait_for_lock, args=(fd, waiter), name="write-gate-wait",
                                 daemon=True).start()
            else:  # an earlier caller gave up on it: take it over
                waiter.claimed = True
        if waiter.got.wait(None if deadline is None else max(0.0, deadline - time.monotonic())):
            return  # "holding" said by the waiter
        with self._state:
            if waiter.got.is_set():  # obtained just now ("holding" said by the waiter)
                return
            waiter.claimed = False
        raise GateTimeout(f"write gate busy for over {timeout or 0:g} s")

    def _wait_for_lock(self, fd: int, waiter: _Waiter) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            obtained = True
        except OSError:
            obtained = False
        with self._state:
            self._waiter = None
            if obtained and waiter.claimed:
                # Said now, not when the caller's thread wakes up: a host paused in between held
                # the lock while reporting it free, and was then killed as silent, not as holding.
                if self.holding is not None:
                    self.holding(time.monotonic())
                waiter.got.set()
            elif obtained:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def release(self) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            # Cleared after the unlock: "holding" is never reported false while the lock is held.
            if self.holding is not None:
                self.holding(0.0)
            self._threads.release()

    def __enter__(self) -> WriteGate:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def flock_holders(path: str) -> set[int]:
    """The processes holding an ``flock`` on ``path``, read from ``/proc/locks`` (Linux; empty
    elsewhere or when unreadable). A line with ``->`` is a request still waiting, not a holder.

    The daemon's supervision asks it of a silent processing host: the host says when it holds the
    write gate, but a host paused between ``flock`` and saying so held it unseen (processing/host.py).
    Lines read ``N: FLOCK ADVISORY WRITE <pid> <major>:<minor>:<inode> 0 EOF`` (proc(5))."""
    try:
        inode = os.stat(path, follow_symlinks=False).st_ino
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            lines = locks.read().splitlines()
    except OSError:
        return set()
    holders: set[int] = set()
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        pid, where = fields[4], fields[5]
        if where.rpartition(":")[2] == str(inode) and pid.isdigit():
            holders.add(int(pid))
    return holders


_GATES: dict[str, WriteGate] = {}
_GATES_LOCK = threading.Lock()


@contextmanager
def reading(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A read-only unit of work: never takes SQLite's write lock (analysis, CLI views)."""
    with factory(bind=_readonly(factory)) as session:
        try:
            yield session
        finally:
            session.rollback()


# Keyed by the sessionmaker, not the engine: the read-only variant holds its engine, and an entry
# whose value holds its own key would never leave a weak dictionary.
_READONLY: weakref.WeakKeyDictionary[sessionmaker[Session], Engine] = weakref.WeakKeyDictionary()


def _readonly(factory: sessionmaker[Session]) -> Engine:
    """The factory's engine in its read-only variant, made once: the analysis worker reads once
    per message (issue 19), and each ``execution_options`` call builds a new engine proxy."""
    found = _READONLY.get(factory)
    if found is None:
        found = _READONLY[factory] = factory.kw["bind"].execution_options(mailgateway_readonly=True)
    return found


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def refuse_lost_database(url: str) -> None:
    """SchemaError when a SQLite file is gone but its write-lock file, which only a running
    installation creates, is there: the database was deleted or moved, not a first start.
    Creating an empty one lost what had been accepted into it (outside tester): the operator
    decides (restore it, or remove the lock file to start afresh)."""
    path = sqlite_file(url)
    if path is None or not lock_file(path).exists():
        return
    # An empty file at its place is no database either (a « touch », a failed copy, « sqlite3 db
    # '.tables' » run to have a look): it was migrated into a fresh, empty schema (outside tester).
    if not path.exists() or path.stat().st_size == 0:
        state = "absente" if not path.exists() else "vide (0 octet)"
        raise SchemaError(f"base de données {state} : {path.absolute()}, alors que {path.name}.write-lock montre "
                          "qu'elle a existé ; restaurez-la (sauvegarde), ou supprimez ce fichier .write-lock pour "
                          "en créer une nouvelle, vide")


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations (``mailgateway db upgrade``; also done by ``run`` on SQLite)."""
    from alembic import command
    from alembic.util.exc import CommandError

    refuse_lost_database(url)
    engine = make_engine(url)  # creates the SQLite directory
    try:
        current_revision(engine)  # a file that is no database: its reason, before Alembic's traceback
    finally:
        engine.dispose()
    try:
        command.upgrade(alembic_config(url), revision)
    except CommandError as exc:  # an unknown stamped revision, several heads: the reason, no traceback
        raise SchemaError(f"migration impossible : {exc} (base migrée par une autre version du code ? "
                          "installer celle-ci ou restaurer la sauvegarde d'avant la migration)") from exc


# Every command, every daemon start and every processing host compares these two revisions.
# Alembic's own answer costs ≈0.2 s (its import pulls Mako and Pygments, and it executes every
# migration file), a fifth of a command such as `cases list`: both are read directly, and Alembic
# is imported only to migrate. Migrations are numbered: ``NNNN_slug.py`` holding revision
# ``NNNN`` and down_revision the number before (scripts/new-migration; tests/store/test_migrations.py
# checks that this reading agrees with Alembic's).


def current_revision(engine: Engine) -> str | None:
    """The revision the database is stamped with (None: never migrated). SchemaError for a file
    that is no database (a stray file at the configured path); locked or unreachable
    (OperationalError) stays itself: the callers wait or report it."""
    from sqlalchemy import inspect

    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            stamped = list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    except DatabaseError as exc:
        if isinstance(exc, OperationalError):
            raise
        raise SchemaError(f"base de données illisible : {exc.orig}") from exc
    if len(stamped) > 1:  # branches: never made by us; Alembic refuses them too
        raise SchemaError(f"base marquée de plusieurs révisions de schéma : {', '.join(sorted(stamped))}")
    return stamped[0] if stamped else None


def head_revision() -> str | None:
    """The newest migration on disk (read at each call: a processing host restarted after an
    upgrade in place compares it with the daemon's, processing/host.py)."""
    chain = _numbered_chain(sorted((MIGRATIONS_DIR / "versions").glob("*.py")))
    if chain is not None:
        return chain
    from alembic.script import ScriptDirectory  # anything else (a hotfix, a branch): Alembic decides

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def _numbered_chain(files: list[Path]) -> str | None:
    """The last revision when the files are exactly 0001_….py, 0002_….py, … each holding its own
    number as ``revision`` and the one before as ``down_revision``; None otherwise (found by an
    outside tester: a ``0009_hotfix.py`` holding revision ``0009b`` was skipped, a ``0010_x.py``
    holding ``ff10`` made every command see the schema behind)."""
    for number, path in enumerate(files, start=1):
        expected = f"{number:04d}"
        if not path.name.startswith(f"{expected}_"):
            return None
        before = f"{number - 1:04d}" if number > 1 else None
        if _literals(path) != {"revision": expected, "down_revision": before}:
            return None
    return f"{len(files):04d}" if files else None


# CPython 3.11's ast.parse is not thread-safe (concurrent calls raise "AST constructor recursion
# depth mismatch", gh-106905): instances starting together migrate from threads.
_PARSING = threading.Lock()


def _literals(path: Path) -> dict[str, object] | None:
    """``revision`` and ``down_revision`` as the module binds them last, read by Python's own
    parser without running the file (its imports are what costs); None when either is not a
    plain literal or the file does not parse (Alembic then decides, and reports)."""
    import ast

    try:
        with _PARSING:
            body = ast.parse(path.read_bytes()).body
    except (SyntaxError, ValueError):
        return None
    found: dict[str, object] = {}
    for node in body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                try:
                    found[target.id] = ast.literal_eval(value)
                except ValueError:
                    return None
    return found


def ensure_schema(url: str) -> None:
    """Upgrade when the database is behind; cheap when it is current.

    PostgreSQL: instances starting together on a database that is behind take turns under a
    session advisory lock; the second finds the schema at head and does nothing.
    """
    refuse_lost_database(url)
    engine = make_engine(url)
    try:
        if current_revision(engine) == head_revision():
            return
        if engine.dialect.name != "postgresql":
            upgrade(url)
            return
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            try:
                upgrade(url)  # Alembic reads the revision again: a no-op if another did it meanwhile
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
    finally:
        engine.dispose()


os.environ.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")
