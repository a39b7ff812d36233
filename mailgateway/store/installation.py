"""Per-installation secrets: random keys created once, on first use, in the database.

Why the database and not a file under the data directory: several instances may share one
database (PostgreSQL, docs/architecture.md, "Contracts"), and every one of them must derive the same Message-ID for the
same logical mail (a re-sent or re-decided mail keeps its Message-ID, docs/guarantees.md) and recognise
the identifiers the others issued. A file would differ per host, and would be lost with the host
while the outbox rows that name its identifiers live on in the database.

Creation is race-free: every instance inserts its own random candidate with ON CONFLICT DO
NOTHING, then reads the row back; the first insert wins and all read the same value.
The value is never logged nor shown by any command.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.store.engine import transaction
from mailgateway.store.models import InstallationSecret

# Key of outbound identifiers (Message-IDs): dispatch/compose.py.
MESSAGE_ID_SECRET = "message-id"  # noqa: S105 - the name of a secret, not one
SECRET_BYTES = 32


def get_or_create(session: Session, name: str) -> bytes:
    """The secret ``name``, created with ``secrets.token_bytes`` if no instance created it yet."""
    table = InstallationSecret.__table__
    assert isinstance(table, Table)
    insert_ = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(
        insert_(table)
        .values(name=name, secret=secrets.token_bytes(SECRET_BYTES), created_at=datetime.now(UTC))
        .on_conflict_do_nothing(index_elements=["name"])
    )
    value = session.scalar(select(InstallationSecret.secret).where(InstallationSecret.name == name))
    if value is None or len(value) < 16:
        raise RuntimeError(f"installation secret {name!r} missing or too short")
    return bytes(value)


def load_secret(factory: sessionmaker[Session], name: str) -> bytes:
    """``get_or_create`` in its own short transaction (call before any long-lived write)."""
    with transaction(factory) as session:
        return get_or_create(session, name)
