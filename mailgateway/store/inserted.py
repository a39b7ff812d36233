"""Rows inserted by statement and attached to the session as persistent objects (issue 19).

The processing hot path inserts a new case and its outbox rows with one ``INSERT … RETURNING``
each, then attaches an object built from the same values (``make_transient_to_detached``)
instead of letting the unit of work flush them: the flush of one new object cost ≈ 0.5 ms.

The session does not know those objects are new. When a savepoint is rolled back (one message
of a processing batch failed, processing/runner.py) their rows are gone, yet the objects stay in
the identity map as persistent, and the next INSERT, which may be given the same id (SQLite
reuses the highest rowid), could not be attached. ``savepoint`` (cases/timeline.py) therefore
expunges what was attached since it began: ``mark`` before, ``forget_since`` on rollback.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction, make_transient_to_detached

_ATTACHED = "mailgateway.store.inserted"


def attach_inserted(session: Session, obj: Any) -> None:
    """Attach ``obj``, whose row this transaction just inserted by statement, as persistent."""
    make_transient_to_detached(obj)
    session.add(obj)
    session.info.setdefault(_ATTACHED, []).append(obj)


def mark(session: Session) -> int:
    return len(session.info.get(_ATTACHED, ()))


def forget_since(session: Session, position: int) -> None:
    """The savepoint that began at ``position`` was rolled back: its inserted rows no longer exist."""
    attached: list[Any] = session.info.get(_ATTACHED, [])
    for obj in attached[position:]:
        if obj in session:
            session.expunge(obj)
    del attached[position:]


def _transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # committed (rows are real) or rolled back (session expired)
        session.info.pop(_ATTACHED, None)


event.listen(Session, "after_transaction_end", _transaction_end)
