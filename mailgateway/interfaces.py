"""Protocols through which the daemon and its extensions meet without importing each other.

The daemon (a face) runs extensions — the metrics (a face) and the scheduler (a feature) — and
hands each the ``DaemonContext``: the narrow view of the running daemon they use. ``Daemon``
implements it; the extensions depend on this module only, so none of them imports the daemon
(no ``daemon`` ⇄ ``metrics`` cycle, no ``getattr`` probing).

Other ports live beside the code that needs them: the outbound gate's ``StaffDirectory`` and
``CaseJournal`` in ``dispatch/mailer.py``, a scheduled job's ``JobContext`` in ``jobs/base.py``,
the message handlers' ``Handler`` and ``Prehandler`` in ``processing/context.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.settings import Settings


class MailboxHealthView(Protocol):
    """One IMAP watcher's state (``intake.imap.MailboxHealth``)."""

    @property
    def region(self) -> str: ...
    @property
    def folder(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def last_contact_at(self) -> datetime | None: ...
    @property
    def last_message_at(self) -> datetime | None: ...
    @property
    def last_error(self) -> str | None: ...


class DaemonContext(Protocol):
    """What an extension may use of the running daemon."""

    @property
    def settings(self) -> Settings: ...
    @property
    def factory(self) -> sessionmaker[Session]: ...
    @property
    def engine(self) -> Engine: ...

    def mailbox_health(self) -> Sequence[MailboxHealthView] | None:
        """The IMAP watchers of this process; None when it watches no mailbox."""
        ...

    def delivery_counts(self) -> Mapping[str, int] | None:
        """The sender's running counts by outcome (a live mapping); None before the sender runs."""
        ...

    def wake_sender(self) -> None:
        """Mail was queued: deliver now rather than at the next poll."""
        ...

    def job_ran(self, name: str, outcome: str) -> None:
        """A scheduled job ran: ``ok``, ``skipped`` or ``error``."""
        ...


class Extension(Protocol):
    """A part of the daemon started after intake and stopped before it (metrics, scheduler)."""

    async def start(self, ctx: DaemonContext) -> None: ...

    async def stop(self, ctx: DaemonContext) -> None: ...

    def reload(self, ctx: DaemonContext) -> None: ...
