"""The sender: claim due outbox rows, deliver their final bytes, record the relay's answer.

One runner skeleton: claim a batch, deliver it with ``relay.concurrency`` workers,
commit the answers, repeat; sleep until woken (``wake()`` after an enqueue) or the next row is due.
The sender renders nothing: the outbox holds final bytes (README, "How it works"). It adds the
DKIM signature (DESIGN.md: "Send … signs, delivers"), unless the row already starts with one
(a bulletin signed by the fan-out's signing processes): signing here, in the claim's thread
(OpenSSL releases the GIL), takes the RSA operation out of the processing host's write
transactions (issue 19), ``t=`` is the time of sending and queued mail follows a key rotation.
Mail that cannot be signed is never sent unsigned: it fails at once, without a bounce scored
against its recipient.

Claiming. On PostgreSQL ``SELECT ... FOR UPDATE SKIP LOCKED`` lets several instances share the
queue. SQLite has no row locks (SQLAlchemy silently drops FOR UPDATE there): the claim is one
``UPDATE ... WHERE status='queued'`` inside ``BEGIN IMMEDIATE``, which holds the database's only
write lock, so two claimers can never take the same row. A claim is a lease: the rows of a sender
that died go back to the queue once ``lease_until`` has passed — at once when a sender starts and
finds them left by a dead one (dispatch/liveness.py) — and a worker gives a row back
instead of sending it when its own lease is about to run out. Order: ``priority`` (case mail 0,
staff notifications put off behind a backlog 1, reports and digests to staff 5, bulletins 10), then
``next_attempt_at``, then id.

Results (RFC 5321 §4.2.1). 2yz -> ``sent``. 4yz, timeouts, refused or dropped connections ->
``queued`` again after exponential backoff with jitter, until ``deadline_at`` -> ``expired``.
5yz -> ``failed``, final. ``expired`` and ``failed`` are reported to ``on_permanent_failure``
(by default: a bounce scored against the directory contact). Every attempt is a DeliveryAttempt
row; a throttled message waits and is not an attempt.

Duplicates. At most one delivery per row in normal operation. The only duplicate window is
between the relay's 250 and the commit recording it: answers are committed by one group-commit
task as soon as the previous commit ends (typically a few milliseconds, tens of messages at
full speed). If the process dies, is cancelled mid-transaction or loses its database in that
window, the row's lease expires and the message is sent again, with the same Message-ID, so
receivers can recognise it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.clock import Clock, aware
from mailgateway.dispatch import relaylimits
from mailgateway.dispatch.compose import Signer
from mailgateway.dispatch.dkim import DkimSigner
from mailgateway.dispatch.liveness import SenderLiveness, reclaim_dead_senders
from mailgateway.dispatch.throttle import Throttle
from mailgateway.dispatch.transport import MaildirTransport, RelayPool, Transport
from mailgateway.errors import DeliveryError, PermanentDeliveryError, PolicyRefusal
from mailgateway.mail.bounce import mailbox_full
from mailgateway.settings import Settings
from mailgateway.store.engine import reading, transaction, write_gate
from mailgateway.store.models import Case, DeliveryAttempt, OutboundMessage

log = logging.getLogger("mailgateway.sender")

PermanentHook = Callable[[Session, OutboundMessage, str], None]

# A worker sleeps through a short throttle pause; a longer one puts the message back in the queue
# so that other domains and higher-priority mail keep flowing.
DOMAIN_MAX_SLEEP = 0.25
# The start-up EHLO that learns the relay's SIZE waits at most this long.
PROBE_SECONDS = 5.0
RELAY_MAX_SLEEP = 5.0


@dataclass
class FlushResult:
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    expired: int = 0
    throttled: int = 0

    def add(self, other: FlushResult) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def summary(self) -> str:
        return (f"envoyés : {self.sent}, reportés : {self.deferred}, échecs définitifs : {self.failed}, "
                f"expirés : {self.expired}, en attente (débit) : {self.throttled}")


@dataclass
class _Claimed:
    id: int
    mail_from: str
    recipient: str
    raw: bytes
    deadline_at: datetime
    leased_at: float  # time.monotonic()
    refusal: str | None = None  # why it cannot be DKIM-signed: never sent


DKIM_FIELD = b"DKIM-Signature:"


def _units(claimed: list[_Claimed]) -> list[list[_Claimed]]:
    """``claimed`` as mail transactions, in claim order: rows sharing their return path and
    bytes are one message to several recipients (``outbox.enqueue``'s ``return_path_token``: mail
    to a region's staff, dispatch/mailer.py), delivered together; every other row is alone (each has
    its own VERP return path). A claim takes a message's rows whole (``Sender._rest_of_message``)."""
    units: list[list[_Claimed]] = []
    by_return_path: dict[str, list[list[_Claimed]]] = {}  # not keyed by the bytes: 40,000 hashes
    for item in claimed:
        same = by_return_path.setdefault(item.mail_from, [])
        unit = next((u for u in same if u[0].raw == item.raw), None)
        if unit is None:
            unit = []
            same.append(unit)
            units.append(unit)
        unit.append(item)
    return units


@dataclass
class _Outcome:
    item: _Claimed
    status: str  # sent | temporary | permanent | throttled (put back, not an attempt)
    code: int | None = None
    answer: str = ""
    retry_in: float = 0.0
    ours: bool = False  # refused here (cannot be signed): not the recipient's failure, no bounce


def backoff_seconds(settings: Settings, attempts: int) -> float:
    """Exponential backoff with jitter: uniform in [base, min(max, base * 2^(attempts-1))]."""
    base = settings.relay.retry_base_seconds
    ceiling = min(settings.relay.retry_max_seconds, base * (2 ** min(max(attempts - 1, 0), 30)))
    return random.uniform(base, max(base, ceiling))  # noqa: S311 - jitter, not security


# How long the sender waits for SMTP intake to be quiet before a batch, at most, and how often it
# looks (``Sender._yield_to_intake``).
INTAKE_YIELD_SECONDS = 0.25
INTAKE_YIELD_STEP = 0.02

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
        signer: Signer | None = None,
    ) -> None:
        relay = settings.relay
        self.settings = settings
        # ``signer``: the application's (app.composer.signer), else ``[dkim]``'s keys read here.
        self.signer = signer if signer is not None else DkimSigner.from_settings(settings.dkim)
        self.factory = factory
        self.clock = clock
        self.owner = owner_id
        self.on_permanent_failure = on_permanent_failure
        self.poll_seconds = poll_seconds
        self.workers = max(1, relay.concurrency)
        # Under a relay rate, claim about ten seconds' worth: new case mail never waits long
        # behind a throttled bulletin batch.
        if relay.max_per_second > 0:
            batch = min(batch, max(self.workers, int(relay.max_per_second * 10)))
        self.batch = batch
        # Give a row back rather than send it when less than this is left of its lease.
        self.lease_guard = max(relay.lease_seconds / 2, relay.lease_seconds - 2 * relay.timeout_seconds)
        if transport is None:
            transport = RelayPool(relay) if relay.host else MaildirTransport(Path(relay.maildir))
        self.transport = transport
        self.throttle = Throttle(
            per_second=relay.max_per_second, per_hour=relay.max_per_hour,
            per_domain_per_second=relay.per_domain_per_second, per_domain_per_hour=relay.per_domain_per_hour,
        )
        # Without a per-domain limit, no per-domain state: the throttle keeps one entry per domain
        # it has seen, and a 40,000-recipient bulletin reaches tens of thousands of domains (issue 19:
        # memory flat in the number of recipients).
        self._per_domain = relay.per_domain_per_second > 0 or relay.per_domain_per_hour > 0
        self._wake = asyncio.Event()
        # Set by the daemon: SMTP intake is answering a burst (messages wait for their commit, or
        # one was just answered). The sender shares the daemon's event loop and GIL with it.
        self.intake_busy: Callable[[], bool] | None = None
        self._stop: asyncio.Event | None = None
        # Read by the metrics scrape (mailgateway.metrics): attempts by outcome since start. Only
        # ever mutated in place, on the event loop's thread.
        self.stats: dict[str, int] = {"sent": 0, "temporary": 0, "permanent": 0, "expired": 0}
        self.throttled_total = 0
        # The relay SIZE last written to ``relay_limits`` (dispatch/relaylimits.py).
        self._recorded_size: tuple[bool, int | None] = (False, None)

    def wake(self) -> None:
        """Something was enqueued: start a pass now instead of at the next poll (loop thread only)."""
        self._wake.set()

    # -- claiming ----------------------------------------------------------------------------
    def _claim(self, after_id: int | None) -> list[_Claimed]:
        """Lease up to ``batch`` due rows; ``after_id``: ignore backoff, walk ids above it instead."""
        now = self.clock.now()
        lease = now + timedelta(seconds=self.settings.relay.lease_seconds)
        m = OutboundMessage
        claimable = or_(m.status == "queued", and_(m.status == "sending", m.lease_until < now))
        with write_gate(self.factory.kw["bind"]), transaction(self.factory) as session:
            locking = session.get_bind().dialect.name == "postgresql"
            if after_id is None:
                ids = self._due_ids(session, now, locking)
            else:
                stmt = select(m.id).where(claimable, m.id > after_id).order_by(m.id).limit(self.batch)
                ids = list(session.scalars(stmt.with_for_update(skip_locked=True) if locking else stmt))
            if not ids:
                return []
            if len(ids) >= self.batch:  # the claim may cut a message to several staff in two
                ids += self._rest_of_message(session, ids, claimable, None if after_id is not None else now, locking)
            # Atomic: the rows are locked (PostgreSQL) or we hold SQLite's write lock (BEGIN IMMEDIATE);
            # ``claimable`` is repeated so that the claim is still correct without either.
            session.execute(
                update(m).where(m.id.in_(ids), claimable)
                .values(status="sending", lease_until=lease, lease_owner=self.owner)
                .execution_options(synchronize_session=False)
            )
            rows = session.execute(
                select(m.id, m.mail_from, m.recipient, m.raw, m.deadline_at)
                .where(m.id.in_(ids), m.status == "sending", m.lease_owner == self.owner, m.lease_until == lease)
                .order_by(m.priority, m.next_attempt_at, m.id)
            ).all()
        leased_at = time.monotonic()
        claimed = [_Claimed(r[0], r[1], r[2], r[3], aware(r[4]), leased_at) for r in rows]
        for unit in _units(claimed):  # the same message to several recipients is signed once
            lead = self._signed(unit[0])
            for item in unit[1:]:
                item.raw, item.refusal = lead.raw, lead.refusal
        return claimed

    def _rest_of_message(self, session: Session, ids: list[int], claimable: Any, due_at: datetime | None,
                         locking: bool) -> list[int]:
        """The other claimable rows of the message whose row ends a full claim: cut there, one
        message to several agents went out as two transactions of the same bytes (an outside
        tester: about 1 staff notification in 100 during a burst). One indexed lookup; a bulletin's
        rows each have their own Message-ID, so nothing is added to a fan-out's claims."""
        m = OutboundMessage
        message_id = session.scalar(select(m.message_id).where(m.id == ids[-1]))
        stmt = select(m.id).where(m.message_id == message_id, claimable, m.id.not_in(ids))
        if due_at is not None:
            stmt = stmt.where(m.next_attempt_at <= due_at)
        stmt = stmt.order_by(m.id).limit(self.batch)
        return list(session.scalars(stmt.with_for_update(skip_locked=True) if locking else stmt))

    def _signed(self, item: _Claimed) -> _Claimed:
        """``item`` with its DKIM-Signature fields prepended (module docstring), or its refusal."""
        if self.signer is None or item.raw.startswith(DKIM_FIELD):
            return item
        try:
            item.raw = self.signer.sign(item.raw) + item.raw
        except PolicyRefusal as exc:
            item.refusal = exc.reason
        return item

    def _due_ids(self, session: Session, now: datetime, locking: bool) -> list[int]:
        """The first ``batch`` due rows in sending order: queued ones, and sending ones whose lease
        ran out (their sender died). Two queries, not one with ``status = 'queued' OR …``: with
        the OR, SQLite read every queued row and sorted them all for each claim (a temporary
        B-tree per batch: O(queue) per claim, O(queue²) per fan-out — 19 s of 109 for 40,000
        bulletins, under the write gate, issue 19); each query alone walks ix_outbound_due in
        order and stops at ``batch``. The union's first ``batch`` is the first ``batch`` of the
        two firsts."""
        m = OutboundMessage
        order = (m.priority, m.next_attempt_at, m.id)
        picked: list[Any] = []
        for which in (m.status == "queued", and_(m.status == "sending", m.lease_until < now)):
            stmt = (select(m.id, m.priority, m.next_attempt_at).where(which, m.next_attempt_at <= now)
                    .order_by(*order).limit(self.batch))
            picked += session.execute(stmt.with_for_update(skip_locked=True) if locking else stmt).all()
        picked.sort(key=lambda r: (r[1], r[2], r[0]))
        return [r[0] for r in picked[:self.batch]]

    # -- delivering --------------------------------------------------------------------------
    async def _deliver_unit(self, unit: list[_Claimed]) -> list[_Outcome]:
        """One mail transaction: a row alone, or the rows of one message to several recipients
        (``_units``) with one MAIL, a RCPT each and one DATA. Per-domain limits send each alone."""
        if len(unit) > 1 and self._per_domain:
            return [outcome for item in unit for outcome in await self._deliver_unit([item])]
        lead = unit[0]
        if lead.refusal is not None:
            return [_Outcome(item, "permanent", None, lead.refusal, ours=True) for item in unit]
        held = await self._turn(unit)
        if held is not None:
            return held
        try:
            answers = await self.transport.send_many(lead.mail_from, [item.recipient for item in unit], lead.raw)
        except Exception as exc:  # anything but a relay's answer is temporary: never lose mail
            log.exception("unexpected transport failure for outbound %s",
                          lead.id if len(unit) == 1 else [item.id for item in unit],
                          extra={"outbound_id": lead.id, "recipient": lead.recipient})
            return [_Outcome(item, "temporary", None, f"{type(exc).__name__}: {exc}") for item in unit]
        return [self._outcome(item, answer) for item, answer in zip(unit, answers, strict=True)]

    async def _turn(self, unit: list[_Claimed]) -> list[_Outcome] | None:
        """Wait for the relay's rate (and a row's domain's, under per-domain limits: a unit of one);
        None when the unit may go, else what to record instead (given back, not an attempt). The
        relay's rate counts recipients."""
        lead = unit[0]
        while True:
            if time.monotonic() - lead.leased_at > self.lease_guard:
                return [_Outcome(item, "throttled", answer="lease running out") for item in unit]
            relay_wait = self.throttle.relay_wait()
            if relay_wait > 0:
                if relay_wait > RELAY_MAX_SLEEP:  # the hourly quota is spent
                    return [_Outcome(item, "throttled", answer="relay quota", retry_in=relay_wait) for item in unit]
                await asyncio.sleep(relay_wait)
                continue
            domain_wait = self.throttle.domain_wait(lead.recipient) if self._per_domain else 0.0
            if domain_wait > 0:
                if domain_wait > DOMAIN_MAX_SLEEP:
                    return [_Outcome(lead, "throttled", answer="domain rate",
                                     retry_in=self.throttle.put_back(lead.recipient, domain_wait))]
                await asyncio.sleep(domain_wait)
                continue
            # No await since the checks: all-or-nothing.
            for item in unit:
                if self._per_domain:
                    self.throttle.take(item.recipient)
                else:
                    for limit in self.throttle.relay:
                        limit.take()
            return None

    @staticmethod
    def _outcome(item: _Claimed, answer: str | DeliveryError) -> _Outcome:
        if isinstance(answer, str):
            return _Outcome(item, "sent", 250, answer)
        if isinstance(answer, PermanentDeliveryError) and not mailbox_full(answer.answer or ""):
            return _Outcome(item, "permanent", answer.code, answer.answer)
        # RFC 3463 §3.3: X.2.2 "mailbox full" is useful for persistent transient errors; a full
        # mailbox empties — retried until the row expires, never a contact disabled (the same
        # reading as bounce reports: mail/bounce.py ``mailbox_full``).
        return _Outcome(item, "temporary", answer.code, answer.answer)

    async def _deliver_batch(self, claimed: list[_Claimed]) -> FlushResult:
        recorder = _GroupCommit(self)
        todo = list(reversed(_units(claimed)))  # pop() from the end keeps the claim order

        async def worker() -> None:
            while todo and not (self._stop is not None and self._stop.is_set()):
                for outcome in await self._deliver_unit(todo.pop()):
                    recorder.add(outcome)

        self.throttle.new_pass()
        try:
            await asyncio.gather(*(worker() for _ in range(min(self.workers, len(todo)))))
        except asyncio.CancelledError:
            # Shutdown past its grace period: record what the relay already answered and give
            # back what was not tried, synchronously (we are being cancelled). What was in flight
            # stays leased: the relay may have accepted it (the duplicate window above).
            recorder.abandon()
            self._record_with_retries([*recorder.pending, *(_Outcome(i, "throttled") for u in todo for i in u)])
            raise
        # Stopping: what was not tried goes back to the queue at once.
        for unit in todo:
            for item in unit:
                recorder.add(_Outcome(item, "throttled", answer="sender stopping"))
        return await recorder.close()

    # -- recording ---------------------------------------------------------------------------
    def _record(self, outcomes: list[_Outcome]) -> FlushResult:
        """Write the answers of one group in one transaction (Core executemany: this runs at the
        fan-out's rate, where ORM unit-of-work bookkeeping per row was the main cost)."""
        result = FlushResult()
        now = self.clock.now()
        m = OutboundMessage
        with write_gate(self.factory.kw["bind"]), transaction(self.factory) as session:
            current = {r[0]: r[1] for r in session.execute(
                select(m.id, m.attempts).where(m.id.in_([o.item.id for o in outcomes]),
                                               m.status == "sending", m.lease_owner == self.owner))}
            put_back: list[dict[str, object]] = []
            attempted: list[dict[str, object]] = []
            attempts: list[dict[str, object]] = []
            final: list[tuple[int, str]] = []
            # One retry time for the copies of one message deferred together (a 4xx to its DATA,
            # a dropped connection): they go out again in one transaction, not one each.
            retry_at: dict[tuple[str, int], datetime] = {}
            for out in outcomes:
                oid = out.item.id
                if oid not in current:
                    # Reclaimed after our lease expired, or requeued by an operator.
                    log.warning("outbound %s: lease lost before its result (%s) was recorded", oid, out.status,
                                extra={"outbound_id": oid, "recipient": out.item.recipient})
                    continue
                if out.status == "throttled":
                    put_back.append({"oid": oid, "due": now + timedelta(seconds=out.retry_in)})
                    result.throttled += 1
                    continue
                count = current[oid] + 1
                # The reply as the relay wrote it (RFC 5321 §4.2: code, then text) for operators.
                reply = out.answer if out.code is None or out.answer.startswith(str(out.code)) \
                    else f"{out.code} {out.answer}"
                due, sent_at = now, None
                if out.status == "sent":
                    status, sent_at = "sent", now
                    result.sent += 1
                elif out.status == "temporary" and now < out.item.deadline_at:
                    status = "queued"
                    due = retry_at.setdefault((out.item.mail_from, count),
                                              now + timedelta(seconds=backoff_seconds(self.settings, count)))
                    result.deferred += 1
                elif out.status == "temporary":
                    status = "expired"
                    result.expired += 1
                else:
                    status = "failed"
                    result.failed += 1
                if status in ("expired", "failed") and not out.ours:
                    final.append((oid, out.answer))
                attempted.append({"oid": oid, "st": status, "n": count, "ans": reply[:2000], "due": due,
                                  "sent": sent_at})
                attempts.append({"outbound_id": oid, "at": now, "outcome": out.status, "code": out.code,
                                 "answer": out.answer[:2000]})
            conn = session.connection()  # Core executemany, not the ORM's bulk-by-primary-key mode
            if put_back:
                conn.execute(update(m).where(m.id == bindparam("oid")).values(
                    status="queued", lease_until=None, next_attempt_at=bindparam("due")), put_back)
            if attempted:
                conn.execute(update(m).where(m.id == bindparam("oid")).values(
                    status=bindparam("st"), lease_until=None, attempts=bindparam("n"), last_answer=bindparam("ans"),
                    next_attempt_at=bindparam("due"), sent_at=bindparam("sent")), attempted)
                conn.execute(insert(DeliveryAttempt), attempts)
            for oid, answer in final:
                row = session.get(OutboundMessage, oid)
                if row is not None:
                    self._report_permanent(session, row, answer)
        return result

    def _report_permanent(self, session: Session, row: OutboundMessage, answer: str) -> None:
        if self.on_permanent_failure is None:
            return
        try:
            with session.begin_nested():  # a failing hook must not lose the delivery results
                self.on_permanent_failure(session, row, answer)
        except Exception:
            log.exception("permanent-failure hook failed for outbound %s", row.id,
                          extra={"outbound_id": row.id, "recipient": row.recipient})

    def _record_with_retries(self, outcomes: list[_Outcome]) -> FlushResult:
        for attempt in range(4):
            try:
                return self._record(outcomes)
            except OperationalError:
                if attempt == 3:
                    raise
                log.warning("recording delivery results failed; retrying", exc_info=True)
                time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def _count(self, outcomes: list[_Outcome], result: FlushResult) -> None:
        self.stats["sent"] += result.sent
        self.stats["expired"] += result.expired
        self.stats["temporary"] += sum(o.status == "temporary" for o in outcomes)
        self.stats["permanent"] += sum(o.status == "permanent" for o in outcomes)
        self.throttled_total += result.throttled
        failed = [out for out in outcomes if out.status in ("temporary", "permanent")]
        refs = self._case_refs([out.item.id for out in failed]) if failed else {}
        for out in failed:
            # docs/operations.md: every line about a message carries its fields (jq-selectable).
            log.warning("delivery of outbound %s to %s: %s %s", out.item.id, out.item.recipient,
                        out.status, out.answer,
                        extra={"outbound_id": out.item.id, "recipient": out.item.recipient,
                               "case_ref": refs.get(out.item.id), "delivery": out.status, "code": out.code})

    def _case_refs(self, ids: list[int]) -> dict[int, str]:
        """Case references of outbound rows, for the log lines of failed deliveries (one query)."""
        try:
            with reading(self.factory) as session:
                return {int(oid): str(ref) for oid, ref in session.execute(
                    select(OutboundMessage.id, Case.reference).join(Case, Case.id == OutboundMessage.case_id)
                    .where(OutboundMessage.id.in_(ids)))}
        except OperationalError:
            return {}  # a busy database must not cost the log line

    # -- the relay's size limit -------------------------------------------------------------
    def _remember_relay_size(self) -> None:
        """Record a SIZE the relay advertised (RFC 1870) when it changed, for the processes that
        compose mail to staff (processing/context.py): a notification is built to fit it."""
        key = getattr(self.transport, "key", None)
        advertised = getattr(self.transport, "advertised", (False, None))
        if not isinstance(key, str) or not advertised[0] or advertised == self._recorded_size:
            return
        with write_gate(self.factory.kw["bind"]), transaction(self.factory) as session:
            relaylimits.remember(session, key, advertised[1], self.clock.now())
        self._recorded_size = advertised
        log.info("relay %s advertises SIZE %s", key, advertised[1] or "unlimited")

    async def _learn_relay_size(self) -> None:
        """At start, ask the relay for its SIZE (one EHLO): mail to staff composed from
        now on fits it, instead of the assumed ``[relay] assumed_size_bytes``. Best effort: a relay
        down now is seen at the first delivery."""
        probe = getattr(self.transport, "probe", None)
        key = getattr(self.transport, "key", None)
        if probe is None or not isinstance(key, str):
            return
        try:
            # Short: a relay that does not answer must not hold back the first deliveries.
            await asyncio.wait_for(probe(), timeout=min(PROBE_SECONDS, self.settings.relay.timeout_seconds))
        except Exception as exc:  # unreachable now: the first delivery will tell
            log.info("relay %s not reached at start (%s); its SIZE is learnt at the first delivery", key, exc)
            return
        await self._after_batch()

    async def _after_batch(self) -> None:
        try:
            await asyncio.to_thread(self._remember_relay_size)
        except OperationalError:
            log.warning("could not record the relay's SIZE; tried again after the next batch", exc_info=True)

    # -- passes ------------------------------------------------------------------------------
    async def _drain(self, include_backoff: bool) -> FlushResult:
        result = FlushResult()
        if include_backoff:
            # One walk over every row by id, backoff ignored; rows deferred again are not revisited.
            cursor = 0
            while claimed := await asyncio.to_thread(self._claim, cursor):
                cursor = max(c.id for c in claimed)
                result.add(await self._deliver_batch(claimed))
                await self._after_batch()
        # A full batch means more is waiting: the next one is claimed (a thread, the database)
        # while this one is delivered, so the relay connections never idle through a claim
        # (issue 19: ≈ 15 % of a 40,000-message fan-out was spent between batches).
        ahead: asyncio.Future[list[_Claimed]] | None = None
        try:
            while not (self._stop is not None and self._stop.is_set()):
                claimed = await (ahead if ahead is not None else asyncio.to_thread(self._claim, None))
                ahead = None
                if not claimed:
                    break
                if len(claimed) >= self.batch:
                    ahead = asyncio.ensure_future(asyncio.to_thread(self._claim, None))
                result.add(await self._deliver_batch(claimed))
                await self._after_batch()
                await self._yield_to_intake()
        except BaseException:
            if ahead is not None:  # failing or cancelled: its rows go back once its claim ends
                ahead.add_done_callback(self._give_back_claimed)
            raise
        if ahead is not None:  # stopping with a batch claimed ahead: back to the queue at once
            result.add(await self._deliver_batch(await ahead))
        return result

    def _give_back_claimed(self, ahead: asyncio.Future[list[_Claimed]]) -> None:
        """A batch claimed ahead that will not be delivered (the pass failed or is cancelled):
        queued again now, not at the end of its lease. In a thread, as every database write of
        the sender (a failing database retries for seconds: the event loop must not wait); in
        this one only when the loop's executor is gone (the end of a cancelled run)."""
        if ahead.cancelled() or ahead.exception() is not None or not ahead.result():
            return
        items = ahead.result()
        try:
            asyncio.get_running_loop().run_in_executor(None, self._give_back_now, items)
        except RuntimeError:
            self._give_back_now(items)

    def _give_back_now(self, items: list[_Claimed]) -> None:
        try:
            self._record_with_retries([_Outcome(i, "throttled", answer="sender stopping") for i in items])
        except Exception:
            log.exception("could not give back %d claimed rows; their lease will", len(items))

    def _seconds_to_next_due(self) -> float:
        with reading(self.factory) as session:
            nxt = session.scalar(select(func.min(OutboundMessage.next_attempt_at))
                                 .where(OutboundMessage.status == "queued"))
        if nxt is None:
            return self.poll_seconds
        return min(self.poll_seconds, max(0.0, (aware(nxt) - self.clock.now()).total_seconds()))

    async def flush(self, include_backoff: bool = False) -> FlushResult:
        """Deliver what is due now and return the counts (``outbox flush [--all]``)."""
        try:
            return await self._drain(include_backoff)
        finally:
            await self.transport.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; the batch in hand is finished, the rest given back."""
        self._stop = stop
        liveness = SenderLiveness(self.factory.kw["bind"], self.owner)
        try:
            await self._reclaim_at_start(liveness)
            await self._learn_relay_size()
            while not stop.is_set():
                self._wake.clear()
                pause = self.poll_seconds
                try:
                    await self._yield_to_intake()
                    await self._drain(False)
                    pause = await asyncio.to_thread(self._seconds_to_next_due)
                except Exception:
                    log.exception("sender pass failed; retrying")
                if pause > 0:
                    waiters = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())}
                    await asyncio.wait(waiters, timeout=pause, return_when=asyncio.FIRST_COMPLETED)
                    for w in waiters:
                        w.cancel()
        finally:
            await self.transport.close()
            await asyncio.to_thread(liveness.release)

    async def _yield_to_intake(self) -> None:
        """While SMTP intake answers a burst, wait for a quiet moment before the next batch —
        ``INTAKE_YIELD_SECONDS`` at most, so a continuous stream never holds mail back longer
        (issue 19: the sender's claims, SMTP sessions and commits took the daemon's GIL from the
        accepts, 0.37 × a bare sink with processing on, 0.45 × without)."""
        busy = self.intake_busy
        waited = 0.0
        while busy is not None and waited < INTAKE_YIELD_SECONDS and busy():
            await asyncio.sleep(INTAKE_YIELD_STEP)
            waited += INTAKE_YIELD_STEP

    async def _reclaim_at_start(self, liveness: SenderLiveness) -> None:
        """Before the first claim: be seen alive, then take back at once what dead senders left
        ``sending`` (dispatch/liveness.py) instead of waiting for their leases to run out."""
        # PostgreSQL: no claim before our liveness lock is held, or a sender starting elsewhere
        # would take us for dead and send our rows again.
        while not (self._stop is not None and self._stop.is_set()):
            try:
                await asyncio.to_thread(liveness.hold)
                break
            except Exception as exc:
                log.warning("sender liveness lock unavailable (%s); trying again", exc)
                await asyncio.sleep(self.poll_seconds)
        try:
            await asyncio.to_thread(reclaim_dead_senders, self.factory, self.clock, liveness)
        except Exception:  # the leases and the housekeeping job still bring them back
            log.exception("start-up reclaim of outbound rows failed; their leases will bring them back")


class _GroupCommit:
    """Commit answers in small groups: when ``size`` are waiting or the oldest waited ``delay`` s.

    One commit at a time. This bounds the duplicate window (250 received, not yet committed) to
    ``delay`` plus one commit, without paying a transaction and an fsync per message.
    """

    def __init__(self, sender: Sender, size: int = 100, delay: float = 0.05) -> None:
        self.sender = sender
        self.size = size
        self.delay = delay
        self.pending: list[_Outcome] = []
        self.result = FlushResult()
        self.task: asyncio.Task[None] | None = None
        self.full = asyncio.Event()
        self.closing = False

    def add(self, outcome: _Outcome) -> None:
        self.pending.append(outcome)
        if len(self.pending) >= self.size:
            self.full.set()
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._commit_all())

    async def _commit_all(self) -> None:
        while self.pending:
            if len(self.pending) < self.size and not self.closing:
                self.full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.full.wait(), self.delay)
            chunk, self.pending = self.pending, []
            try:
                done = await asyncio.to_thread(self.sender._record_with_retries, chunk)
            except Exception:
                # The database is gone: these rows stay leased and are retried after the lease.
                log.exception("could not record %d delivery results", len(chunk))
                continue
            self.result.add(done)
            self.sender._count(chunk, done)

    async def close(self) -> FlushResult:
        self.closing = True
        self.full.set()
        while self.task is not None and not self.task.done():
            await self.task
        return self.result

    def abandon(self) -> None:
        if self.task is not None:
            self.task.cancel()
