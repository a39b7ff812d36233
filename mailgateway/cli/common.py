"""What the command-line modules share: one migrated database per command, a case by reference."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from mailgateway.settings import Settings

if TYPE_CHECKING:  # imported when a command runs: `mailgateway --help` stays fast
    from sqlalchemy.orm import Session, sessionmaker

    from mailgateway.store.models import Case


@contextmanager
def database(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """The migrated database of ``settings`` for one command; the engine is disposed after."""
    from mailgateway.store.engine import ensure_schema, make_engine, make_sessionmaker

    ensure_schema(settings.database.url)
    engine = make_engine(settings.database.url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def case_by_reference(session: Session, text: str) -> tuple[str, Case | None]:
    """(canonical reference, case or None) of a reference typed by a person (« ssi-ara-2026-42 »)."""
    from sqlalchemy import select

    from mailgateway.mail.refs import CASE_REF, canonical
    from mailgateway.store.models import Case

    match = CASE_REF.fullmatch(text.strip().upper())
    reference = canonical(*match.groups()) if match else text.strip()
    return reference, session.scalar(select(Case).where(Case.reference == reference))
