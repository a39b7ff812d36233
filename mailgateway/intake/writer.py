"""Group commit for intake: many accepts, one durable commit (README, "How it works" and "Benchmarks").

SMTP sessions hand their message to one writer thread; it takes whatever is waiting (up to
``batch``), stores it in one transaction, commits (fsync), and only then resolves each caller's
future, so every ``250`` is still sent after the message is on disk. Under load this turns one
fsync per message into one per batch; with one message waiting it costs nothing extra.

One bad item never fails its neighbours (docs/guarantees.md: one non-UTF-8 ``MAIL FROM`` made 59 of 60
honest messages get 451): the envelope is checked before the item is queued, and each item is
stored under its own savepoint, so an item that fails is rolled back alone and only its caller
gets the error. Only a failure of the batch itself (the commit) fails every item.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.clock import Clock
from mailgateway.intake.accept import Accepted, accept_in
from mailgateway.store.engine import transaction, write_gate

log = logging.getLogger("mailgateway.intake")


class EnvelopeError(ValueError):
    """An envelope address that cannot be stored or routed (permanent: the client gets a 5xx)."""


def address_problem(address: str) -> str | None:
    """Why an envelope address is unusable, or None.

    aiosmtpd decodes command arguments as UTF-8 with ``surrogateescape``: bytes that are not
    UTF-8 (RFC 6531 allows UTF-8 only) come through as lone surrogates, which no database can
    store. Control characters (RFC 5321 §4.1.2 allows none in a path) would reach the logs.
    """
    if any("\udc80" <= ch <= "\udcff" for ch in address):
        return "address is not valid UTF-8"
    if any(ch < " " or ch == "\x7f" for ch in address):
        return "address contains control characters"
    return None


def check_envelope(mail_from: str | None, rcpt_tos: Sequence[str], peer: str | None = None) -> None:
    for address in (mail_from or "", *rcpt_tos, peer or ""):
        if problem := address_problem(address):
            raise EnvelopeError(problem)


@dataclass
class _Item:
    raw: bytes
    source: str
    mail_from: str | None
    rcpt_tos: Sequence[str]
    regions: Sequence[str | None]
    peer: str | None = None
    future: Future[Accepted] = field(default_factory=Future)


class AcceptWriter:
    def __init__(self, factory: sessionmaker[Session], clock: Clock, batch: int = 64) -> None:
        self.factory = factory
        self.clock = clock
        self.batch = batch
        self.gate = write_gate(factory.kw["bind"])
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="accept-writer", daemon=True)
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def stop(self) -> None:
        if self._started:
            self._queue.put(None)
            self._thread.join(timeout=30)

    def submit(self, raw: bytes, *, source: str, mail_from: str | None, rcpt_tos: Sequence[str],
               region: str | None = None, peer: str | None = None,
               regions: Sequence[str] = ()) -> Future[Accepted]:
        """Queue one message; ``regions`` (every receiving region, intake/accept.py) or ``region``."""
        item = _Item(raw, source, mail_from, rcpt_tos, list(regions) or [region], peer)
        try:
            check_envelope(mail_from, rcpt_tos, peer)
        except EnvelopeError as exc:  # never queued: it cannot reach (and fail) a batch
            item.future.set_exception(exc)
            return item.future
        self._queue.put(item)
        return item.future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            items = [first]
            stop = False
            while len(items) < self.batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                items.append(nxt)
            self._write(items)
            if stop:
                return

    def _write(self, items: list[_Item]) -> None:
        outcomes: list[Accepted | BaseException] = []
        try:
            with self.gate, transaction(self.factory) as session:
                now = self.clock.now()
                for it in items:
                    outcomes.append(self._write_one(session, it, now))
        except Exception as exc:  # the sources answer 4xx and retry: nothing is lost
            log.exception("accept failed for a batch of %d", len(items))
            for it in items:
                it.future.set_exception(exc)
            return
        for it, outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                it.future.set_exception(outcome)
            else:
                it.future.set_result(outcome)

    @staticmethod
    def _write_one(session: Session, it: _Item, now: datetime) -> Accepted | BaseException:
        """One item under its own savepoint: its failure rolls back only its own rows."""
        try:
            with session.begin_nested():
                # One row per receiving region, the same bytes (intake/accept.py); no regional
                # recipient (the bounce address): one row without a region, as always.
                done = [accept_in(session, it.raw, source=it.source, now=now, mail_from=it.mail_from,
                                  rcpt_tos=it.rcpt_tos, region=region, peer=it.peer)
                        for region in dict.fromkeys(it.regions)]
                return Accepted(done[0].inbound_id, done[0].duplicate, tuple(done[1:]))
        except (SQLAlchemyError, ValueError) as exc:  # ValueError: UnicodeError, a bad value
            log.warning("accept failed for one message of a batch: %s", type(exc).__name__, exc_info=exc)
            return exc
