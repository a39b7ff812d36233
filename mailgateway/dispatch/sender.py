"""The sender: claim due outbox rows, deliver their final bytes, record the relay's answer.

Claiming (DESIGN §2, issue 8): on PostgreSQL ``FOR UPDATE SKIP LOCKED`` lets several instances
share the queue; SQLite has no row locks (SQLAlchemy silently drops FOR UPDATE there), so a claim
is one atomic ``UPDATE ... WHERE status='queued'`` under SQLite's write lock. A claim is a lease:
rows of a sender that died go back to the queue when ``lease_until`` has passed.

Results: 2xx -> ``sent``; 4xx, timeouts, refused or dropped connections -> retried with
exponential backoff and jitter until ``deadline_at`` (then ``expired``); 5xx -> ``failed``, final,
and reported to ``on_permanent_failure`` (the directory marks the contact bouncing). Every attempt
is a DeliveryAttempt row.

Duplicate window: results are committed in small batches right after the relay answers; a crash
between a relay's 250 and that commit re-sends those messages (at most ``batch`` of them, with the
same Message-ID, so receivers can de-duplicate). This is the only duplicate window.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.clock import Clock, aware
from mailgateway.dispatch.transport import MaildirTransport, RelayPool, Transport
from mailgateway.errors import PermanentDeliveryError, TemporaryDeliveryError
from mailgateway.settings import Settings
from mailgateway.store.engine import transaction
from mailgateway.store.models import DeliveryAttempt, OutboundMessage

log = logging.getLogger("mailgateway.sender")

PermanentHook = Callable[[Session, OutboundMessage, str], None]


@dataclass
class FlushResult:
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    expired: int = 0

    def summary(self) -> str:
        return (f"envoyés : {self.sent}, reportés : {self.deferred}, échecs définitifs : {self.failed}, "
                f"expirés : {self.expired}")


@dataclass
class _Claimed:
    id: int
    mail_from: str
    recipient: str
    raw: bytes
    attempts: int
    deadline_at: datetime


@dataclass
class _Outcome:
    item: _Claimed
    status: str  # sent | temporary | permanent
    code: int | None
    answer: str


class TokenBucket:
    """``rate`` per second with a burst of one second's worth; 0 means unlimited."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = max(rate, 1.0)
        self.stamp = time.monotonic()

    def delay(self) -> float:
        """Seconds to wait before one more message may go (0: go now, token taken)."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        self.tokens = min(max(self.rate, 1.0), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


@dataclass
class _HourWindow:
    limit: int
    sent: list[float] = field(default_factory=list)

    def delay(self) -> float:
        if self.limit <= 0:
            return 0.0
        now = time.monotonic()
        self.sent = [t for t in self.sent if now - t < 3600]
        if len(self.sent) < self.limit:
            self.sent.append(now)
            return 0.0
        return 3600 - (now - self.sent[0])


class Throttle:
    """Per relay and per destination domain rates (issue 8); a throttled message just waits."""

    def __init__(self, settings: Settings) -> None:
        relay = settings.relay
        self.global_bucket = TokenBucket(relay.max_per_second)
        self.global_hour = _HourWindow(relay.max_per_hour)
        self.per_domain_rate = relay.per_domain_per_second
        self.per_domain_hour = relay.per_domain_per_hour
        self.domains: dict[str, tuple[TokenBucket, _HourWindow]] = {}
        self.lock = asyncio.Lock()

    async def wait(self, recipient: str) -> None:
        domain = recipient.rpartition("@")[2].lower()
        async with self.lock:
            if domain not in self.domains:
                self.domains[domain] = (TokenBucket(self.per_domain_rate), _HourWindow(self.per_domain_hour))
            checks: list[TokenBucket | _HourWindow] = [self.global_bucket, self.global_hour, *self.domains[domain]]
            for check in checks:
                while (pause := check.delay()) > 0:
                    await asyncio.sleep(min(pause, 5.0))


def backoff_seconds(settings: Settings, attempts: int) -> float:
    """Exponential backoff with full jitter between base and max (issue 8)."""
    base = settings.relay.retry_base_seconds
    ceiling = min(settings.relay.retry_max_seconds, base * (2 ** max(attempts - 1, 0)))
    return random.uniform(base, max(base, ceiling))  # noqa: S311 - jitter, not security


class Sender:
    def __init__(
        self,
        settings: Settings,
        factory: sessionmaker[Session],
        clock: Clock,
        owner_id: str,
        *,
        on_permanent_failure: PermanentHook | None = None,
        transport: Transport | None = None,
        batch: int = 200,
        poll_seconds: float = 2.0,
    ) -> None:
        self.settings = settings
        self.factory = factory
        self.clock = clock
        self.owner = owner_id
        self.on_permanent_failure = on_permanent_failure
        self.batch = batch
        self.poll_seconds = poll_seconds
        if transport is None:
            if settings.relay.host:
                transport = RelayPool(settings.relay)
            else:
                transport = MaildirTransport(Path(settings.relay.maildir))
        self.transport = transport
        self.throttle = Throttle(settings)
        self._wake = asyncio.Event()
        self.stats = {"sent": 0, "temporary": 0, "permanent": 0}

    def wake(self) -> None:
        self._wake.set()

    # -- claiming ----------------------------------------------------------------------------
    def _claim(self, include_backoff: bool) -> list[_Claimed]:
        now = self.clock.now()
        lease = now + timedelta(seconds=self.settings.relay.lease_seconds)
        due = or_(
            OutboundMessage.status == "queued",
            (OutboundMessage.status == "sending") & (OutboundMessage.lease_until < now),
        )
        with transaction(self.factory) as session:
            stmt = select(OutboundMessage.id).where(due)
            if not include_backoff:
                stmt = stmt.where(OutboundMessage.next_attempt_at <= now)
            stmt = stmt.order_by(OutboundMessage.priority, OutboundMessage.next_attempt_at, OutboundMessage.id)
            stmt = stmt.limit(self.batch)
            if session.get_bind().dialect.name == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True)
            ids = list(session.scalars(stmt))
            if not ids:
                return []
            # Under SQLite's write lock (BEGIN IMMEDIATE) or PostgreSQL's row locks this is atomic.
            session.execute(
                update(OutboundMessage).where(OutboundMessage.id.in_(ids), due)
                .values(status="sending", lease_until=lease, lease_owner=self.owner)
            )
            rows = session.execute(
                select(OutboundMessage.id, OutboundMessage.mail_from, OutboundMessage.recipient, OutboundMessage.raw,
                       OutboundMessage.attempts, OutboundMessage.deadline_at)
                .where(OutboundMessage.id.in_(ids), OutboundMessage.lease_owner == self.owner,
                       OutboundMessage.status == "sending")
                .order_by(OutboundMessage.priority, OutboundMessage.id)
            ).all()
        return [_Claimed(r[0], r[1], r[2], r[3], r[4], aware(r[5])) for r in rows]

    # -- delivering --------------------------------------------------------------------------
    async def _deliver_one(self, item: _Claimed) -> _Outcome:
        await self.throttle.wait(item.recipient)
        try:
            answer = await self.transport.send(item.mail_from, item.recipient, item.raw)
        except PermanentDeliveryError as exc:
            return _Outcome(item, "permanent", exc.code, exc.answer)
        except TemporaryDeliveryError as exc:
            return _Outcome(item, "temporary", exc.code, exc.answer)
        except Exception as exc:  # any other failure is treated as temporary: never lose mail
            return _Outcome(item, "temporary", None, f"{type(exc).__name__}: {exc}")
        return _Outcome(item, "sent", 250, answer)

    def _record(self, outcomes: Sequence[_Outcome], result: FlushResult) -> None:
        now = self.clock.now()
        with transaction(self.factory) as session:
            for out in outcomes:
                row = session.get(OutboundMessage, out.item.id)
                if row is None or row.lease_owner != self.owner:
                    continue
                row.attempts = out.item.attempts + 1
                row.last_answer = out.answer[:2000]
                row.lease_until = None
                session.add(DeliveryAttempt(outbound_id=row.id, at=now, outcome=out.status, code=out.code,
                                            answer=out.answer[:2000]))
                if out.status == "sent":
                    row.status = "sent"
                    row.sent_at = now
                    result.sent += 1
                elif out.status == "temporary" and now < out.item.deadline_at:
                    row.status = "queued"
                    row.next_attempt_at = now + timedelta(seconds=backoff_seconds(self.settings, row.attempts))
                    result.deferred += 1
                else:
                    expired = out.status == "temporary"
                    row.status = "expired" if expired else "failed"
                    if expired:
                        result.expired += 1
                    else:
                        result.failed += 1
                    if self.on_permanent_failure is not None:
                        self.on_permanent_failure(session, row, out.answer)
                self.stats[out.status] = self.stats.get(out.status, 0) + 1
        for out in outcomes:
            if out.status != "sent":
                log.warning("delivery to %s %s: %s", out.item.recipient, out.status, out.answer)

    async def _drain(self, include_backoff: bool) -> FlushResult:
        result = FlushResult()
        workers = max(1, self.settings.relay.concurrency)
        while True:
            claimed = await asyncio.to_thread(self._claim, include_backoff)
            if not claimed:
                return result
            await self._deliver_batch(claimed, workers, result)
            if include_backoff:
                # One pass over what waits on backoff; what failed again keeps its new backoff.
                include_backoff = False

    async def _deliver_batch(self, claimed: list[_Claimed], workers: int, result: FlushResult) -> None:
        queue: asyncio.Queue[_Claimed] = asyncio.Queue()
        for item in claimed:
            queue.put_nowait(item)
        outcomes: list[_Outcome] = []
        commits: list[asyncio.Task[None]] = []

        def commit() -> None:
            chunk = outcomes[:]
            outcomes.clear()
            commits.append(asyncio.create_task(asyncio.to_thread(self._record, chunk, result)))

        async def worker() -> None:
            while not queue.empty():
                outcomes.append(await self._deliver_one(queue.get_nowait()))
                if len(outcomes) >= 50:  # the duplicate window is at most one such chunk
                    commit()

        await asyncio.gather(*(worker() for _ in range(min(workers, len(claimed)))))
        if outcomes:
            commit()
        await asyncio.gather(*commits)

    async def flush(self, include_backoff: bool = False) -> FlushResult:
        try:
            return await self._drain(include_backoff)
        finally:
            await self.transport.close()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    await self._drain(False)
                except Exception:
                    log.exception("sender pass failed; retrying")
                waiter = asyncio.create_task(self._wake.wait())
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait({waiter, stopper}, timeout=self.poll_seconds,
                                   return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
        finally:
            await self.transport.close()
