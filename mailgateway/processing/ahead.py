"""Analysis ahead: the worker analyses the next messages while processing yields to intake.

During a burst (issue 19), a sweep leaves SQLite's write lock to the accept writer (the SMTP
clients wait on its commits, processing can follow a moment later), and the analysis worker sat
idle with it: about one CPU of two unused while the burst arrives. Analysis needs no write lock
(processing/worker.py reads), so while the sweep yields, ``AnalysisAhead.step`` keeps the worker
busy with the next due messages, and a batch later takes their facts instead of asking again.

What it may not change (docs/guarantees.md):

* **Tries are counted before a message is tried**, and an analysis ahead is not a try: nothing is
  written for it. An analysis that fails ahead (over its budget, the worker lost, an error) is
  forgotten; the message is analysed again by its batch, counted, within its own budget, and
  quarantined there if it must be. A message that kills its worker costs its budget twice.
* **The facts are those a batch would have read.** Analysis reads the database (threading: which
  case a Message-ID belongs to; the FINESS directory) and the settings. Facts are not used
  when the settings were reloaded since, when older than ``FRESH_SECONDS``, or when the message
  names a Message-ID (In-Reply-To, References) and a write transaction applied messages since
  its analysis began: it may name one of them (``BatchRun._stale`` covers the batch's own).
* **Bounded memory**: at most ``LOOKAHEAD`` messages and ``LOOKAHEAD_CHARS`` characters of text.
* The worker serves one request at a time: whoever uses it next first reads what the request
  ahead still owes (``settle``), each message within its budget.
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

# Messages analysed ahead and not yet taken, at most; and their texts (body and new text), in
# characters: a declaration's facts are a few kilobytes, a large mail's text up to 250,000
# characters (mail/analyse.py), so the second bound is the one that holds for large mail.
LOOKAHEAD = 1000
LOOKAHEAD_CHARS = 4_000_000
# Messages per request: what ``settle`` may wait for when a batch needs the worker.
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
        self._worker = worker
        # The next ``limit`` due messages of normal priority whose id is above ``after``.
        self._due_after = due_after
        self._facts: dict[int, _Analysed] = {}
        self._chars = 0
        self._stream: AnalysisStream | None = None
        self._request: tuple[Settings, int, float] | None = None
        self._last = 0  # the highest id asked for: the next request starts after it
        # A batch's request with messages still to answer (``hold``): nothing is asked ahead
        # meanwhile, not even after its worker was replaced (it then asks again for the rest).
        self._held: AnalysisStream | None = None
        # Write transactions that applied messages (the processor counts them).
        self.applied = 0
        self.taken = 0  # facts used by a batch (tests, the benchmark's log line)

    def __len__(self) -> int:
        return len(self._facts)

    @property
    def asking(self) -> bool:
        """A request is in the worker's hands."""
        return self._stream is not None

    def step(self, settings: Settings, timeout: float) -> None:
        """Without waiting: file the answers already here; with none owed, ask for the next
        messages (when there is room)."""
        stream = self._stream
        if stream is not None:
            # An answer past its budget is read too: the worker is killed then, not when it ends.
            while stream and (stream.ready() or stream.overdue()):
                self._file(stream)
            if stream:
                return
            self._stream = None
        self._forget_old()
        if len(self._facts) >= LOOKAHEAD or self._chars >= LOOKAHEAD_CHARS:
            return
        if self._held or self._worker.owing is not None:  # a batch's request is being answered
            return
        ids = [i for i in self._due_after(self._last, REQUEST) if i not in self._facts]
        if not ids:
            return
        self._last = max(ids)
        stream = self._worker.stream(settings, ids, timeout)
        try:
            stream.begin()
        except (WorkerLost, WorkerUnavailable):  # no worker now: the batches will say so
            return
        self._stream = stream
        self._request = (settings, self.applied, time.monotonic())

    def hold(self, stream: AnalysisStream | None) -> None:
        """While ``stream`` has messages left, ask nothing ahead (None: the batch is done)."""
        self._held = stream

    def settle(self) -> None:
        """Read what the request ahead still owes (each answer within its budget): the worker is
        then free for another request."""
        stream, self._stream = self._stream, None
        while stream:
            self._file(stream)

    def take(self, inbound_id: int, settings: Settings) -> MessageFacts | None:
        """The facts analysed ahead for this message, if they still hold; else None (and they
        are forgotten)."""
        found = self._facts.pop(inbound_id, None)
        if found is None:
            return None
        self._chars -= _chars(found.facts)
        if (found.settings is not settings or time.monotonic() - found.at > FRESH_SECONDS
                or (found.facts.named_ids and found.applied != self.applied)):
            return None
        self.taken += 1
        return found.facts

    def close(self) -> None:
        """Forget everything; a request still owing answers is abandoned with its worker
        (``AnalysisStream.close``)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
        self._facts.clear()
        self._chars = 0

    def _file(self, stream: AnalysisStream) -> None:
        inbound_id = stream.upcoming
        try:
            _, facts = stream.next()
        except (AnalysisFailed, AnalysisRetry) as exc:  # the worker goes on with the next one
            log.info("inbound %s: analysis ahead failed (%s); its batch analyses it", inbound_id, exc)
            return
        except (AnalysisTimeout, WorkerLost, WorkerUnavailable) as exc:
            # The rest of the request is dropped with the worker (a new one takes a second to
            # start): their batches analyse them.
            log.info("inbound %s: analysis ahead failed (%s); its batch analyses it", inbound_id, exc)
            stream.close()
            return
        if facts is None or self._request is None:
            return
        settings, applied, at = self._request
        self._facts[inbound_id] = _Analysed(facts, settings, applied, at)
        self._chars += _chars(facts)

    def _forget_old(self) -> None:
        now = time.monotonic()
        for inbound_id in [i for i, a in self._facts.items() if now - a.at > FRESH_SECONDS]:
            self._chars -= _chars(self._facts.pop(inbound_id).facts)


def _chars(facts: MessageFacts) -> int:
    return len(facts.body_text) + len(facts.new_text)
