"""Helpers for the IMAP intake tests: a region wired to a Dovecot user, and database queries."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.clock import SystemClock
from mailgateway.intake.imap import MailboxWatcher
from mailgateway.settings import DatabaseSettings, ImapSettings, RegionSettings, Settings
from mailgateway.store.engine import make_engine, make_sessionmaker
from mailgateway.store.models import InboundMessage, InboundSourceKey, MailboxState
from tests.support.db import at_head
from tests.support.servers import Dovecot

PROCESSED = "Traité"


def message(subject: str, body: str = "Bonjour,\r\n") -> bytes:
    return (
        f"From: dsi@chu-exemple.test\r\nTo: ssi-ara@ars.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{abs(hash(subject))}@chu-exemple.test>\r\n\r\n{body}"
    ).encode()


@dataclass
class Mailbox:
    """One regional mailbox on a Dovecot user, and the gateway's database."""

    dovecot: Dovecot
    user: str
    region: RegionSettings
    engine: Engine
    url: str
    watchers: list[MailboxWatcher] = field(default_factory=list)
    accepted_ids: list[int] = field(default_factory=list)

    @property
    def factory(self) -> sessionmaker[Session]:
        return make_sessionmaker(self.engine)

    def close(self) -> None:
        self.stop_all()
        self.engine.dispose()

    @property
    def imap_settings(self) -> ImapSettings:
        assert self.region.imap is not None
        return self.region.imap

    def settings(self) -> Settings:
        return Settings(database=DatabaseSettings(url=self.url), regions=(self.region,))

    def with_imap(self, **changes: Any) -> None:
        self.region = dataclasses.replace(self.region, imap=dataclasses.replace(self.imap_settings, **changes))

    def watcher(self, **kwargs: Any) -> MailboxWatcher:
        kwargs.setdefault("backoff_base", 0.05)
        kwargs.setdefault("backoff_max", 0.5)
        kwargs.setdefault("idle_wait_step", 0.2)
        w = MailboxWatcher(self.region, self.factory, SystemClock(), self.accepted_ids.append, **kwargs)
        self.watchers.append(w)
        return w

    def start(self, **kwargs: Any) -> MailboxWatcher:
        w = self.watcher(**kwargs)
        w.start()
        return w

    @contextmanager
    def imap(self) -> Iterator[Any]:
        client = self.dovecot.imap(self.user)
        try:
            yield client
        finally:
            client.logout()

    def deliver(self, raw: bytes) -> None:
        self.dovecot.deliver(self.user, raw)

    def append(self, raw: bytes, folder: str = "INBOX", **kwargs: Any) -> None:
        """IMAP APPEND keeps the bytes exactly (LMTP adds trace headers)."""
        with self.imap() as client:
            client.append(folder, raw, **kwargs)

    def folder_uids(self, folder: str) -> list[int]:
        with self.imap() as client:
            if not client.folder_exists(folder):
                return []
            client.select_folder(folder, readonly=True)
            return sorted(client.search("ALL"))

    def flags(self, folder: str) -> dict[int, tuple[bytes, ...]]:
        with self.imap() as client:
            client.select_folder(folder, readonly=True)
            uids = client.search("ALL")
            return {uid: tuple(f) for uid, f in client.get_flags(uids).items()} if uids else {}

    # database

    def inbound(self) -> list[InboundMessage]:
        with self.factory() as db:
            return list(db.scalars(select(InboundMessage).order_by(InboundMessage.id)))

    def source_keys(self) -> list[InboundSourceKey]:
        with self.factory() as db:
            return list(db.scalars(select(InboundSourceKey).order_by(InboundSourceKey.key)))

    def inbound_count(self) -> int:
        with self.factory() as db:
            return db.scalar(select(func.count()).select_from(InboundMessage)) or 0

    def state(self) -> MailboxState | None:
        with self.factory() as db:
            return db.get(MailboxState, f"ARA:{self.imap_settings.folder}")

    def stop_all(self) -> None:
        for w in self.watchers:
            w.stop()


def make_mailbox(
    dovecot: Dovecot, user: str, tmp: Path, code: str = "ARA", url: str | None = None, **imap: Any
) -> Mailbox:
    url = url or f"sqlite:///{tmp / 'gw.db'}"
    at_head(url)
    password_file = dovecot.password_file(user, tmp)
    settings = ImapSettings(
        host="127.0.0.1",
        port=dovecot.imap_port,
        tls=False,
        username=user,
        password_file=str(password_file),
        processed_folder=PROCESSED,
        timeout_seconds=5,
        **imap,
    )
    region = RegionSettings(code=code, name="Auvergne-Rhône-Alpes", address=user, imap=settings)
    return Mailbox(dovecot, user, region, make_engine(url), url)
