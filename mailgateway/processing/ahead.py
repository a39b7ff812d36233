"""Analysis ahead: while processing yields to intake, a second worker analyses the next messages.

During a burst (issue 19), a sweep leaves SQLite's write lock to the accept writer (the SMTP
clients wait on its commits, processing can follow a moment later), and the analysis worker sat
idle with it: about one CPU of two unused while the burst arrived. Analysis needs no write lock
(processing/worker.py reads), so while the sweep yields, ``AnalysisAhead.step`` has a worker of
its own analyse the next due messages, and their batch later takes those facts instead of asking
its worker again.

That worker runs at the lowest priority (nice 19): it uses CPU nobody else wants, so a burst's
accepts (the daemon) and the batches' own analyses are never slowed by it; on a saturated
machine it simply gets little done. It is a separate process, not the batches' worker, so a
batch never waits behind a request ahead (answers on one pipe are read in order).

What it may not change (docs/guarantees.md):

* **Tries are counted before a message is tried**, and an analysis ahead is not a try: nothing is
  written for it. An analysis that fails ahead (over its budget, the worker lost, an error) is
  forgotten; the message is analysed again by its batch, counted, within its own budget, and
  quarantined there if it must be. The worker ahead, when lost, is started again when
  processing is idle (``revive``), without waiting for it: its start-up never delays a batch.
* **The facts are those a batch would have read.** Analysis reads the database (threading: which
  case a Message-ID belongs to; the FINESS directory) and the settings. Facts are not used
  when the settings were reloaded since, when older than ``FRESH_SECONDS``, or when the message
  names a Message-ID (In-Reply-To, References) and messages were applied since its analysis
  began: it may name one of them (``BatchRun._stale`` covers the batch's own).
* **Bounded memory**: at most ``LOOKAHEAD`` messages and ``LOOKAHEAD_CHARS`` characters of text.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from mailgateway.mail.facts import MessageFacts
from mailgateway.processing.worker import (
    AnalysisFailed,
    AnalysisRetry,
    AnalysisStream,
    AnalysisTimeout,
    AnalysisWorker,
    WorkerLost,
    WorkerUnavailable,
)
from mailgateway.settings import Settings

log = logging.getLogger("mailgateway.processing.ahead")

# The worker ahead's priority (nice(2): 19 is the lowest): idle CPU only.
NICE = 19
# Messages analysed ahead and not yet taken, at most; and their texts (body and new text), in
# characters: a declaration's facts are a few kilobytes, a large mail's text up to 250,000
# characters (mail/analyse.py), so the second bound is the one that holds for large mail.
LOOKAHEAD = 1000
LOOKAHEAD_CHARS = 4_000_000
# Messages per request.
REQUEST = 25
# Facts older than this are analysed again (a DKIM key rotated, a directory imported).
FRESH_SECONDS = 60.0


@dataclass(frozen=True)
class _Analysed:
    facts: MessageFacts
    settings: Settings
    applied: int  # ``AnalysisAhead.applied`` when its request was sent
    at: float  # time.monotonic() then


class AnalysisAhead:
    """The facts of messages analysed ahead, by message id; used by one processing thread."""

    def __init__(self, worker: AnalysisWorker, due_after: Callable[[int, int], list[int]]) -> None:
        self.worker = worker
        # The next ``limit`` due messages of normal priority whose id is above ``after``.
        self._due_after = due_after
        self._facts: dict[int, _Analysed] = {}  # in the order analysed: the oldest first
        self._chars = 0
        self._stream: AnalysisStream | None = None
        self._request: tuple[Settings, int, float] | None = None
        self._passed: set[int] = set()  # asked for, then processed without these facts
        self._last = 0  # the highest id asked for: the next request starts after it
        # Messages applied by this processor so far (it counts them): facts analysed before
        # the last one may name it.
        self.applied = 0
        self.taken = 0  # facts used by a batch (tests, the benchmark)
        self.analysed = 0  # answers filed; those not taken were analysed twice

    def __len__(self) -> int:
        return len(self._facts)

    @property
    def asking(self) -> bool:
        """A request is in the worker's hands."""
        return self._stream is not None

    def step(self, settings: Settings, timeout: float) -> None:
        """Without waiting: file the answers already here; with none owed, ask for the next
        messages (when there is room and the worker is up)."""
        stream = self._stream
        if stream is not None:
            # An answer past its budget is read too: the worker is killed then, not when it ends.
            while stream and (stream.ready() or stream.overdue()):
                self._file(stream)
            if stream:
                return
            self._stream = None
            self._passed.clear()
        self._forget_old()
        if len(self._facts) >= LOOKAHEAD or self._chars >= LOOKAHEAD_CHARS or not self.worker.ready_now():
            return
        ids = self._due_after(self._last, REQUEST)  # above every id asked for: none analysed yet
        if not ids:
            return
        self._last = max(ids)
        stream = self.worker.stream(settings, ids, timeout)
        try:
            stream.begin()
        except (WorkerLost, WorkerUnavailable):  # ``revive`` starts it again when idle
            return
        self._stream = stream
        self._request = (settings, self.applied, time.monotonic())

    def take(self, inbound_id: int, settings: Settings) -> MessageFacts | None:
        """The facts analysed ahead for this message, if they still hold; else None (and they
        are forgotten, or will be when they arrive)."""
        found = self._facts.pop(inbound_id, None)
        if found is None:
            if self._stream is not None:
                self._passed.add(inbound_id)
            return None
        self._chars -= _chars(found.facts)
        if (found.settings is not settings or time.monotonic() - found.at > FRESH_SECONDS
                or (found.facts.named_ids and found.applied != self.applied)):
            return None
        self.taken += 1
        return found.facts

    def revive(self, settings: Settings) -> None:
        """Start the worker ahead if none is alive (its start-up, about a second of imports,
        runs beside processing at the lowest priority: nothing waits for it)."""
        if self.worker.pid is None and self._stream is None:
            try:
                self.worker.start(settings)
            except WorkerUnavailable as exc:
                log.warning("analysis worker ahead unavailable: %s", exc)

    def close(self) -> None:
        """Forget everything and stop the worker ahead."""
        if self.analysed:
            log.info("analysis ahead: %s message(s) analysed, %s used by their batch", self.analysed, self.taken)
        self._stream = None
        self._facts.clear()
        self._chars = 0
        self.worker.close()

    def _file(self, stream: AnalysisStream) -> None:
        inbound_id = stream.upcoming
        try:
            _, facts = stream.next()
        except (AnalysisFailed, AnalysisRetry) as exc:  # the worker goes on with the next one
            log.info("inbound %s: analysis ahead failed (%s); its batch analyses it", inbound_id, exc)
            return
        except (AnalysisTimeout, WorkerLost, WorkerUnavailable) as exc:
            # The rest of the request is dropped with the worker: their batches analyse them.
            log.info("inbound %s: analysis ahead failed (%s); its batch analyses it", inbound_id, exc)
            stream.close()
            return
        if facts is None or self._request is None:
            return
        self.analysed += 1
        if inbound_id in self._passed:  # its batch did not wait for it
            return
        settings, applied, at = self._request
        self._facts[inbound_id] = _Analysed(facts, settings, applied, at)
        self._chars += _chars(facts)

    def _forget_old(self) -> None:
        now = time.monotonic()
        while self._facts:
            inbound_id, oldest = next(iter(self._facts.items()))
            if now - oldest.at <= FRESH_SECONDS:
                return
            del self._facts[inbound_id]
            self._chars -= _chars(oldest.facts)


def _chars(facts: MessageFacts) -> int:
    return len(facts.body_text) + len(facts.new_text)
