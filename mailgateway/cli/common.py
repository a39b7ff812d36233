"""What the command-line modules share: one migrated database per command, a case by reference."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from mailgateway.errors import InputError
from mailgateway.settings import Settings

if TYPE_CHECKING:  # imported when a command runs: `mailgateway --help` stays fast
    from sqlalchemy.orm import Session, sessionmaker

    from mailgateway.store.models import Case


@contextmanager
def database(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """The migrated database of ``settings`` for one command; the engine is disposed after.

    An SQLite file that does not exist is refused (InputError, exit 2): these commands read or
    change what is there. They used to create an empty database at a mistyped path and answer
    « chaîne d'audit intacte (0 dossier(s)) », so a check after a restore could pass on the
    wrong file (outside tester). ``run`` and ``db upgrade`` create it; ``status`` says so too."""
    from mailgateway.store.engine import ensure_schema, make_engine, make_sessionmaker

    require_database(settings)
    ensure_schema(settings.database.url)
    engine = make_engine(settings.database.url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def require_database(settings: Settings) -> None:
    """InputError (exit 2) when the SQLite file of ``settings`` does not exist: a command that
    reads or works on what is there never creates an empty database at a mistyped path (a timer's
    « scheduler run-due » would have done so silently: outside testers). ``run``, ``db upgrade``,
    ``ingest`` and ``directory import`` create it."""
    from mailgateway.store.engine import sqlite_file

    path = sqlite_file(settings.database.url)
    if path is not None and not path.exists():
        raise InputError(f"base de données absente : {path.absolute()} (vérifiez [database] url ; "
                         "« mailgateway db upgrade » ou le démon la créent)")


def write_private(path: str, data: bytes) -> None:
    """``data`` into the file ``path``, created with mode 0600 (it may hold personal data or TLP
    material); InputError (exit 2, one line) when it cannot be written (a missing directory, a
    directory: outside tester, a traceback)."""
    import os

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        raise InputError(f"{path} : écriture impossible ({exc.strerror or exc})") from exc


def case_by_reference(session: Session, text: str) -> tuple[str, Case | None]:
    """(canonical reference, case or None) of a reference typed by a person (« ssi-ara-2026-42 »)."""
    from sqlalchemy import select

    from mailgateway.mail.refs import CASE_REF, canonical
    from mailgateway.store.models import Case

    match = CASE_REF.fullmatch(text.strip().upper())
    reference = canonical(*match.groups()) if match else text.strip()
    return reference, session.scalar(select(Case).where(Case.reference == reference))
