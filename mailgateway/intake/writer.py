"""Group commit for intake: many accepts, one durable commit (DESIGN §2 and §9).

SMTP sessions hand their message to one writer thread; it takes whatever is waiting (up to
``batch``), stores it in one transaction, commits (fsync), and only then resolves each caller's
future, so every ``250`` is still sent after the message is on disk. Under load this turns one
fsync per message into one per batch; with one message waiting it costs nothing extra.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from mailgateway.clock import Clock
from mailgateway.intake.accept import Accepted, accept_in
from mailgateway.store.engine import transaction, write_gate

log = logging.getLogger("mailgateway.intake")


@dataclass
class _Item:
    raw: bytes
    source: str
    mail_from: str | None
    rcpt_tos: Sequence[str]
    region: str | None
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
               region: str | None) -> Future[Accepted]:
        item = _Item(raw, source, mail_from, rcpt_tos, region)
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
        try:
            results = []
            with self.gate, transaction(self.factory) as session:
                now = self.clock.now()
                for it in items:
                    results.append(accept_in(session, it.raw, source=it.source, now=now, mail_from=it.mail_from,
                                             rcpt_tos=it.rcpt_tos, region=it.region))
        except Exception as exc:  # the sources answer 4xx and retry: nothing is lost
            log.exception("accept failed for a batch of %d", len(items))
            for it in items:
                it.future.set_exception(exc)
            return
        for it, res in zip(items, results, strict=True):
            it.future.set_result(res)
