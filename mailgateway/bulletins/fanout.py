"""Awareness bulletins and ACSS alert relays: one personalised, signed message per establishment.

A bulletin is a row (``Bulletin``) with a region, a target expression (directory/targets.py), a
subject, a body and a TLP label. Its fan-out streams the recipients from the directory (one per
establishment: its ``ssi`` contact, else ``rssi``, else ``dsi``) and queues one message each,
through the ``Mailer`` (TLP, no-reply and loop rules of docs/guarantees.md), with its own Message-ID and
its own VERP return path (``outbox.enqueue``), at priority 10 so case mail drains first.

A large fan-out (the daemon, ``bulletin send --yes``: a ``checkpoint`` is given) is a pipeline
(issue 19, benchmarks/README.md): recipients are streamed from a separate read-only session
(``yield_per``); each batch of ``[bulletins] fanout_commit_every`` is composed in this thread and
DKIM-signed in a pool of worker processes (dispatch/dkim.py ``SigningPool``: ``cryptography``
keeps the GIL while signing) *before* its write transaction, while the previous batch is signed
and the one before inserted; the insert is one multi-row statement (dispatch/bulletin_mail.py)
under the in-process write gate, then committed, and the sender is woken. SQLite's write lock is
thus held for milliseconds per batch, and at most ``PIPELINE_DEPTH`` batches of composed bytes
are alive at once: memory stays flat in the number of recipients.
A small one (approval inside a processing transaction) queues through ``Mailer.send`` as before.
A fan-out is resumable: an establishment already queued is skipped (and the outbox's
idempotency key makes a second queueing a no-op anyway).

TLP (FIRST TLP 2.0): RED never leaves the agency, so a RED bulletin is refused outright; AMBER
goes only where the Mailer allows it (the refused establishments are counted as ``refused``).

Alerts: ``relay_alert`` fans out the agency's own relay (template ``alerte_relais``: the alert
quoted, the agency as sender — never re-sent under the third party's From) to the categories the
alert targets, then moves the case to DIFFUSEE.

Other modules: ``by_mail`` (bulletins requested and approved by mail), ``tracking``
(acknowledgements, bounces, fallback contacts), ``followups`` (reports and reminders)
and ``cli/bulletin.py`` (the ``bulletin`` command).
"""

from __future__ import annotations

import copy
import logging
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, func, insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.bulletins.indicator_files import relay_attachments
from mailgateway.cases import lifecycle, service
from mailgateway.cases.timeline import append_event
from mailgateway.directory import RecipientRow, Target, count_recipients, parse_target, select_recipients
from mailgateway.directory.bounces import out_of_use
from mailgateway.directory.categories import normalise_category
from mailgateway.dispatch.bulletin_mail import Ready, enqueue_many
from mailgateway.dispatch.compose import Attachment, Composer, MailSpec
from mailgateway.dispatch.contexts import region_context
from mailgateway.dispatch.dkim import DkimSigner, SigningPool
from mailgateway.dispatch.fanout_worker import (
    ComposerRecipe,
    Outcome,
    compose_each,
    compose_in_worker,
    sign_in_worker,
)
from mailgateway.dispatch.liveness import dead_among, this_process
from mailgateway.dispatch.wording import nombre
from mailgateway.errors import InputError, PolicyRefusal
from mailgateway.mail.parse import parse_message
from mailgateway.mail.tlp import LABELS as TLP_LABELS
from mailgateway.mail.tlp import operator_label, relay_label
from mailgateway.processing.context import Env
from mailgateway.settings import Settings
from mailgateway.statuses import CaseStatus
from mailgateway.store.engine import reading, write_gate
from mailgateway.store.models import Bulletin, BulletinRecipient, Case, InboundMessage, OutboundMessage

log = logging.getLogger("mailgateway.bulletins")

__all__ = [
    "CHUNK",
    "FANOUT_KINDS",
    "BulletinError",
    "FanOutStats",
    "Reach",
    "approve_bulletin",
    "cancel_bulletin",
    "check_tlp",
    "create_bulletin",
    "fan_out",
    "reach_refusal",
    "relay_alert",
    "relay_reach",
    "tlp_rule",
    "withheld_note",
]

PRIORITY = 10  # models.OutboundMessage.priority: 0 case mail, 5 reports, 10 bulletins
CHUNK = 1000
# Batches composed or being signed ahead of the one being inserted: bounds the bytes in memory.
PIPELINE_DEPTH = 2
# Messages per task handed to a signing process: small enough that every worker gets a share of
# a batch, large enough that the pickling round trip is a small part of the signing.
SIGN_TASK = 50
KIND_BULLETIN = "bulletin"
KIND_RELAY = "alerte_relais"
FANOUT_KINDS = (KIND_BULLETIN, KIND_RELAY)
TLPS = TLP_LABELS


class BulletinError(InputError):
    """A bulletin operation refused, with a French reason for the operator or the author."""


def check_tlp(value: str | None) -> str:
    """Canonical TLP 2.0 label (mail/tlp.py); an unknown one is refused, RED too: it never leaves the
    agency (docs/guarantees.md). No label at all is CLEAR: the author of a bulletin is the source and decides."""
    marking = operator_label(value)
    if not marking.known:
        raise BulletinError(f"TLP inconnu « {value} » (valeurs : CLEAR, GREEN, AMBER, AMBER+STRICT, RED)")
    label = marking.label
    if label == "RED":
        raise BulletinError("TLP:RED : une information TLP:RED ne quitte jamais l'agence ; "
                            "aucune diffusion aux établissements n'est possible")
    return label


def create_bulletin(
    session: Session, settings: Settings, *, region: str, target: str | Target, subject: str, body: str,
    tlp: str | None, author: str, now: datetime, case_id: int | None = None,
) -> Bulletin:
    """A draft bulletin; InputError (French) on an unknown region, a bad target or TLP:RED."""
    if settings.region(region) is None:
        raise BulletinError(f"région « {region} » absente de la configuration")
    parsed = target if isinstance(target, Target) else parse_target(target)
    parsed.check_region(region)
    if not " ".join(subject.split()):
        raise BulletinError("objet du bulletin vide")
    if not body.strip():
        raise BulletinError("texte du bulletin vide")
    bulletin = Bulletin(region=region, target=str(parsed), subject=" ".join(subject.split())[:500], body=body,
                        tlp=check_tlp(tlp), status="draft", author=author, case_id=case_id, created_at=now,
                        recipients=0)
    session.add(bulletin)
    session.flush()
    return bulletin


def _alert_of(session: Session, bulletin: Bulletin) -> tuple[Case | None, dict[str, Any]]:
    case = session.get(Case, bulletin.case_id) if bulletin.case_id is not None else None
    return case, dict((case.fields or {}).get("alert") or {}) if case is not None else {}


def template_context(env: Env, bulletin: Bulletin, row: RecipientRow | None,
                     alert: dict[str, Any] | None = None, case: Case | None = None) -> dict[str, Any]:
    """Context of ``bulletin`` / ``alerte_relais`` for one establishment (row None: a sample)."""
    return {
        **region_context(env.settings, bulletin.region),
        "bulletin": {"id": bulletin.id, "subject": bulletin.subject, "body": bulletin.body, "tlp": bulletin.tlp},
        "establishment": {
            "name": row.name if row else "Établissement", "finess": row.finess if row else "000000000",
            "category": row.category if row else None, "departement": row.departement if row else None,
        },
        "alert": alert or None,
        "case": {"reference": case.reference} if case is not None else None,
    }


def queue_message(env: Env, session: Session, bulletin: Bulletin, row: RecipientRow, *,
                  alert: dict[str, Any] | None = None, case: Case | None = None,
                  attempt: str = "", attachments: Sequence[Attachment] | None = None) -> OutboundMessage | None:
    """Compose and queue the message of ``bulletin`` for one establishment (None: refused or dup)."""
    from_address, from_name = env.mailer.from_identity(bulletin.region)
    if attachments is None:  # INDICATORS: a single copy (a bounce's fallback contact) builds its own files
        attachments = relay_attachments(env.settings, session, bulletin, case)
    spec = MailSpec(
        template=KIND_RELAY if case is not None else KIND_BULLETIN,
        context=template_context(env, bulletin, row, alert, case),
        to=row.address, from_address=from_address, from_name=from_name, reply_to=from_address,
        idempotency_key=f"bulletin:{bulletin.id}:{row.finess}{attempt}",
        auto_submitted="auto-generated", tlp=bulletin.tlp,
        # RFC 2919-style identification lets establishments filter bulletins; not a mailing list.
        extra_headers={"X-Mailgateway-Bulletin": str(bulletin.id)},
        attachments=attachments,  # INDICATORS: STIX / MISP / CSV files (bulletins/indicator_files.py)
    )
    kind = KIND_RELAY if case is not None else KIND_BULLETIN
    return env.mailer.send(session, spec, kind=kind, priority=PRIORITY, bulletin_id=bulletin.id,
                           actor=bulletin.approved_by or "passerelle")


def _stream(session: Session, bulletin: Bulletin, *, separate: bool = True) -> Generator[RecipientRow, None, None]:
    """Recipients, streamed. ``separate``: from a second, read-only session, so the writer may
    commit meanwhile (a commit would end the cursor); else from ``session`` itself, which then
    also sees the caller's uncommitted directory changes."""
    if not separate:
        yield from select_recipients(session, bulletin.region, parse_target(bulletin.target), batch=CHUNK)
        return
    bind = session.get_bind()
    reader = Session(bind=bind.execution_options(mailgateway_readonly=True))
    try:
        yield from select_recipients(reader, bulletin.region, parse_target(bulletin.target), batch=CHUNK)
    finally:
        reader.rollback()
        reader.close()


@dataclass
class FanOutStats:
    """Where a chunked fan-out spent its time (seconds, this thread), for benchmarks/fanout.py."""

    composed: float = 0.0  # streaming recipients, the rules, rendering and MIME
    signing_wait: float = 0.0  # waiting for the signing processes (or signing here)
    inserting: float = 0.0  # waiting for the write gate, inserting, committing
    batches: int = 0
    in_process: bool = False  # signed in this process (no pool, or it failed)
    fallbacks: int = 0
    signing_processes: list[int] = field(default_factory=list)


def fan_out(env: Env, session: Session, bulletin: Bulletin,
            checkpoint: Callable[[Session], None] | None = None, stats: FanOutStats | None = None,
            stop: Callable[[], bool] | None = None) -> int:
    """Queue the bulletin for every recipient not yet queued; return how many were queued.

    ``checkpoint(session)`` commits (the CLI; the daemon also wakes its sender there): with it the
    fan-out is the pipeline of the module docstring and commits every batch itself, under the
    write gate — the caller must not hold the gate, nor an open transaction on ``session``.
    Without it (a small approval in the caller's transaction) every message goes through the Mailer.
    ``stop()`` true between two batches (the daemon stopping): return what is queued, the bulletin
    left ``sending`` for ``resume_interrupted_fan_outs``.
    """
    if checkpoint is not None:
        return _pipeline(env, session, bulletin, checkpoint, stats or FanOutStats(), stop)
    check_tlp(bulletin.tlp)
    case, alert = _alert_of(session, bulletin)
    bulletin.status = "sending"
    bulletin.fan_out_owner = this_process()
    already = int(session.scalar(select(func.count()).select_from(BulletinRecipient)
                                 .where(BulletinRecipient.bulletin_id == bulletin.id)) or 0)
    done: set[str] = set()
    if already:
        done = set(session.scalars(select(BulletinRecipient.finess)
                                   .where(BulletinRecipient.bulletin_id == bulletin.id)))
    queued = int(session.scalar(select(func.count()).select_from(BulletinRecipient).where(
        BulletinRecipient.bulletin_id == bulletin.id, BulletinRecipient.outbound_id.is_not(None))) or 0)
    written: list[object] = []
    files = relay_attachments(env.settings, session, bulletin, case)  # INDICATORS: built once per bulletin
    for row in _stream(session, bulletin, separate=False):
        if row.finess in done:
            continue
        out = queue_message(env, session, bulletin, row, alert=alert or None, case=case, attachments=files)
        recipient = BulletinRecipient(
            bulletin_id=bulletin.id, finess=row.finess, contact_id=row.contact_id, address=row.address,
            outbound_id=out.id if out is not None else None, status="queued" if out is not None else "refused",
        )
        session.add(recipient)
        written.append(recipient)
        if out is not None:
            written.append(out)
            queued += 1
        if len(written) >= CHUNK:
            bulletin.recipients = queued
            session.flush()
            for obj in written:
                session.expunge(obj)
            written.clear()
    bulletin.recipients = queued
    bulletin.status = "sent"
    session.flush()
    for obj in written:
        session.expunge(obj)
    return queued


@dataclass
class _Planned:
    """One establishment of a batch: its message to compose, or why it is refused."""

    row: RecipientRow
    recipient: str
    key: str
    spec: MailSpec | None = None
    raw: bytes = b""  # composed in this thread, unsigned, when only signing is handed out ("sign")
    message_id: str = ""
    refusal: str | None = None


@dataclass
class _Batch:
    planned: list[_Planned]
    # per task handed to the workers: (the items it covers, its future outcomes)
    tasks: list[tuple[list[_Planned], Future[list[Outcome]]]]


class _Workers:
    """Where a batch is composed and signed.

    "compose": in the SigningPool's processes (composer rebuilt there: dispatch/bulletin_mail.py);
    "sign": composed here, signed there (a composer that cannot travel, with a DkimSigner);
    "thread": both here (no DKIM, or a signer that is not a DkimSigner).
    Whatever a dead pool leaves undone is done here (``SigningPool.wait``)."""

    def __init__(self, env: Env, stats: FanOutStats) -> None:
        self.composer = env.mailer.composer
        self.clock = env.clock
        signer = self.composer.signer
        self.pool = (SigningPool(signer, env.settings.bulletins.signing_processes)
                     if isinstance(signer, DkimSigner) and signer._recipe is not None else None)
        self.recipe = ComposerRecipe.of(self.composer, env.settings.outbound.templates_dir)
        if self.pool is None or self.pool.in_process:
            self.mode = "thread"
        else:
            self.mode = "compose" if self.recipe is not None else "sign"
        self.unsigned = _unsigned(self.composer)
        stats.in_process = self.mode == "thread"

    def prepare(self, item: _Planned) -> None:
        """In the streaming loop: compose now unless the workers will."""
        if self.mode == "sign" and item.spec is not None:
            try:
                composed = self.unsigned.compose(item.spec)
            except PolicyRefusal as exc:
                item.refusal = exc.reason
            else:
                item.raw, item.message_id = composed.raw, composed.message_id

    def submit(self, items: list[_Planned]) -> Future[list[Outcome]]:
        specs = [i.spec for i in items if i.spec is not None]

        def here() -> list[Outcome]:
            return compose_each(self.composer, specs)

        if self.mode == "thread" or self.pool is None:
            done: Future[list[Outcome]] = Future()
            done.set_result(here())
            return done
        if self.mode == "compose" and self.recipe is not None:
            return self.pool.run(compose_in_worker, (self.recipe, self.clock.now(), specs), here)
        raws = [i.raw for i in items]
        return self.pool.run(sign_in_worker, (raws, [i.message_id for i in items]), here)

    def wait(self, items: list[_Planned], future: Future[list[Outcome]]) -> list[Outcome]:
        if self.pool is None:
            return future.result()
        specs = [i.spec for i in items if i.spec is not None]
        return self.pool.wait(future, lambda: compose_each(self.composer, specs))

    def close(self, stats: FanOutStats) -> None:
        if self.pool is not None:
            stats.signing_processes = self.pool.pids()
            stats.fallbacks = self.pool.fallbacks
            stats.in_process = stats.in_process or self.pool.in_process
            self.pool.close()


def _refusal(env: Env, allows: Callable[[str], bool], tlp: str | None, recipient: str) -> str | None:
    """The rules ``Mailer.send`` applies to a bulletin's message (no case, no automatic reply),
    checked before composing (docs/guarantees.md)."""
    return env.mailer.address_refusal(recipient, tlp, allows)


def _unsigned(composer: Composer) -> Composer:
    """The same composer (templates, clock, Message-ID secret, loop token) without its signer."""
    twin = copy.copy(composer)
    twin.signer = None
    return twin


def _pipeline(env: Env, session: Session, bulletin: Bulletin, checkpoint: Callable[[Session], None],
              stats: FanOutStats, stop: Callable[[], bool] | None) -> int:
    engine = session.get_bind().engine
    check_tlp(bulletin.tlp)
    with write_gate(engine):
        # Everything read from the writer's session is read here, under the gate; the commit ends
        # that transaction: composing and signing below hold no lock.
        case, alert = _alert_of(session, bulletin)
        bulletin.status = "sending"
        bulletin.fan_out_owner = this_process()
        done = set(session.scalars(select(BulletinRecipient.finess)
                                   .where(BulletinRecipient.bulletin_id == bulletin.id)))
        queued = int(session.scalar(select(func.count()).select_from(BulletinRecipient).where(
            BulletinRecipient.bulletin_id == bulletin.id, BulletinRecipient.outbound_id.is_not(None))) or 0)
        files = relay_attachments(env.settings, session, bulletin, case)  # INDICATORS: once per bulletin
        tlp = bulletin.tlp
        allows = env.mailer.tlp_gate(session, tlp)
        bulletin.recipients = queued
        checkpoint(session)
    from_address, from_name = env.mailer.from_identity(bulletin.region)
    kind = KIND_RELAY if case is not None else KIND_BULLETIN
    every = min(CHUNK, env.settings.bulletins.fanout_commit_every)  # CHUNK: the most ever held per batch

    def plan(row: RecipientRow) -> _Planned:
        recipient = row.address.strip().lower()
        key = f"bulletin:{bulletin.id}:{row.finess}"
        item = _Planned(row, recipient, key, refusal=_refusal(env, allows, tlp, recipient))
        if item.refusal is None:
            item.spec = MailSpec(
                template=kind, context=template_context(env, bulletin, row, alert or None, case),
                to=recipient, from_address=from_address, from_name=from_name, reply_to=from_address,
                idempotency_key=key, auto_submitted="auto-generated", tlp=tlp,
                # RFC 2919-style identification lets establishments filter bulletins; not a mailing list.
                extra_headers={"X-Mailgateway-Bulletin": str(bulletin.id)},
                attachments=files,  # INDICATORS: STIX / MISP / CSV files (bulletins/indicator_files.py)
            )
            workers.prepare(item)
        return item

    def submit(planned: list[_Planned]) -> _Batch:
        todo = [i for i in planned if i.refusal is None]
        tasks = [todo[i:i + SIGN_TASK] for i in range(0, len(todo), SIGN_TASK)]
        return _Batch(planned, [(t, workers.submit(t)) for t in tasks])

    def insert_batch(batch: _Batch) -> int:
        t0 = time.perf_counter()
        for items, future in batch.tasks:
            for item, outcome in zip(items, workers.wait(items, future), strict=True):
                if isinstance(outcome, str):
                    item.refusal = outcome
                else:
                    item.raw, item.message_id = outcome
        t1 = time.perf_counter()
        stats.signing_wait += t1 - t0
        ready = [Ready(i.key, i.recipient, i.message_id, i.raw) for i in batch.planned if i.refusal is None]
        for item in batch.planned:
            item.raw, item.spec = b"", None  # the bytes now live in ``ready`` only, until inserted
            if item.refusal is not None:
                # docs/operations.md: a refusal is a log line with its fields, like a failed delivery.
                log.info("outbound %s to %s refused before sending: %s", kind, item.recipient, item.refusal,
                         extra={"recipient": item.recipient, "delivery": "refused", "kind": kind})
        with write_gate(engine), _rolled_back_on_error(session):
            ids = enqueue_many(session, ready, kind=kind, now=env.clock.now(), settings=env.settings,
                               bulletin_id=bulletin.id, priority=PRIORITY)
            del ready
            rows = [{"bulletin_id": bulletin.id, "finess": i.row.finess, "contact_id": i.row.contact_id,
                     "address": i.row.address, "outbound_id": ids.get(i.key) if i.refusal is None else None,
                     "status": "queued" if i.refusal is None and i.key in ids else "refused"}
                    for i in batch.planned]
            session.connection().execute(insert(BulletinRecipient), rows)
            added = sum(r["status"] == "queued" for r in rows)
            bulletin.recipients = (bulletin.recipients or 0) + added
            checkpoint(session)
        stats.inserting += time.perf_counter() - t1
        stats.batches += 1
        return added

    workers = _Workers(env, stats)
    pending: deque[_Batch] = deque()
    rows = _stream(session, bulletin, separate=True)
    stopped = False
    try:
        t0 = time.perf_counter()
        planned: list[_Planned] = []
        for row in rows:
            if row.finess in done:
                continue
            done.add(row.finess)  # one message per establishment, even if the stream repeated it
            planned.append(plan(row))
            if len(planned) >= every:
                pending.append(submit(planned))
                planned = []
                stats.composed += time.perf_counter() - t0
                while len(pending) > PIPELINE_DEPTH:
                    queued += insert_batch(pending.popleft())
                if stop is not None and stop():
                    stopped = True
                    # Read the rest without composing (a few milliseconds per thousand): ending
                    # the stream early would leave PostgreSQL's server-side cursor open.
                    for _row in rows:
                        pass
                    break
                t0 = time.perf_counter()
        if planned:
            pending.append(submit(planned))
        stats.composed += time.perf_counter() - t0
        while pending:
            queued += insert_batch(pending.popleft())
    finally:
        rows.close()
        pending.clear()
        workers.close(stats)
    if stopped:
        # The daemon is stopping: what was composed is queued; the bulletin stays "sending" and
        # the next start resumes it (resume_interrupted_fan_outs), skipping what is queued.
        log.info("bulletin %s: fan-out paused by the stop after %d recipients; resumed at the next start",
                 bulletin.id, queued)
        return queued
    with write_gate(engine):
        bulletin.recipients = queued
        bulletin.status = "sent"
        checkpoint(session)
    return queued


@contextmanager
def _rolled_back_on_error(session: Session) -> Iterator[None]:
    """A failed batch ends its transaction before the gate is released (the next writer must not
    find SQLite's lock still held by this session)."""
    try:
        yield
    except BaseException:
        session.rollback()
        raise


def _approve(bulletin: Bulletin, approver: str, now: datetime) -> None:
    if bulletin.status == "cancelled":
        raise BulletinError(f"le bulletin {bulletin.id} a été annulé")
    if bulletin.status == "sent":
        raise BulletinError(f"le bulletin {bulletin.id} a déjà été diffusé")
    bulletin.approved_at = bulletin.approved_at or now
    bulletin.approved_by = bulletin.approved_by or approver
    bulletin.status = "approved"


def _fan_out_or_defer(env: Env, session: Session, bulletin: Bulletin) -> int:
    """Queue a small audience now, in the caller's transaction; leave a large one ``approved`` for
    ``fan_out_approved`` (the daemon), which commits chunk by chunk: a 40,000-recipient approval
    by mail must not hold the database's write lock for minutes. Returns the recipients planned."""
    planned = count_recipients(session, bulletin.region, parse_target(bulletin.target))
    if planned <= env.settings.bulletins.inline_fanout_limit:
        return fan_out(env, session, bulletin)
    bulletin.recipients = planned
    return planned


def fan_out_approved(env: Env, factory: sessionmaker[Session], on_chunk: Callable[[], None] | None = None,
                     stats: FanOutStats | None = None, stop: Callable[[], bool] | None = None) -> int:
    """Queue every approved bulletin, committing every CHUNK recipients (daemon). Returns the
    recipients of the bulletins processed (0: nothing was waiting).

    ``on_chunk`` is called after each committed chunk (the daemon wakes its sender): composing and
    signing the next chunk overlaps with sending the previous one, so what counts — approval to the
    last message at the relay — is not the sum of the two. ``stop()``: see ``fan_out`` (the daemon
    may pass its stop event's ``is_set``, so a stop does not wait for a 40,000-recipient fan-out)."""
    total = 0

    def checkpoint(s: Session) -> None:
        s.commit()
        if on_chunk is not None:
            on_chunk()

    # Read-only (a deferred BEGIN): this look runs every 2 s beside processing; under BEGIN
    # IMMEDIATE it waited in SQLite's busy handler and took the write lock away from the
    # processing host between two of its transactions (issue 19, py-spy of the daemon).
    with reading(factory) as session:
        pending = list(session.scalars(select(Bulletin.id).where(Bulletin.status == "approved")))
    for bulletin_id in pending:
        if stop is not None and stop():
            break
        with factory() as session:
            # Claim: approved -> sending, once, so two workers never fan out the same bulletin.
            # Under the write gate, and committed before the fan-out: it takes the gate per batch.
            with write_gate(factory.kw["bind"]):
                result = session.execute(update(Bulletin).where(Bulletin.id == bulletin_id,
                                                                Bulletin.status == "approved")
                                         .values(status="sending", fan_out_owner=this_process()))
                claimed = cast(CursorResult[Any], result).rowcount
                bulletin = session.get(Bulletin, bulletin_id) if claimed else None
                session.commit()
            if bulletin is None:
                continue
            total += fan_out(env, session, bulletin, checkpoint=checkpoint, stats=stats, stop=stop)
    return total


def resume_interrupted_fan_outs(factory: sessionmaker[Session], me: str | None = None, *,
                                at_start: bool = True) -> int:
    """Bulletins left ``sending`` by a fan-out that stopped go back to ``approved``: at daemon
    start (``me``: its instance id, this process's by default) and from time to time after.

    Only those whose owner is provably dead (dispatch/liveness.py): a ``bulletin send --yes``
    still fanning out, or another live instance, keeps its bulletin (an outside tester restarted
    the daemon during a CLI fan-out: two fan-outs of one bulletin, an ERROR on the unique
    recipient constraint). Rows without an owner (before revision 0009) are resumed, as before.
    At start a row of ``me`` is a previous process's; later it is our own fan-out, left alone."""
    me = me or this_process()
    engine = factory.kw["bind"]
    with reading(factory) as session:
        owners = set(session.scalars(select(Bulletin.fan_out_owner).where(Bulletin.status == "sending")))
    if not at_start:
        owners.discard(me)
    if not owners:
        return 0
    dead = dead_among(engine, {o for o in owners if o is not None}, me)
    resumed: list[Any] = [Bulletin.fan_out_owner.in_(sorted(dead))] if dead else []
    if None in owners:
        resumed.append(Bulletin.fan_out_owner.is_(None))
    if not resumed:
        return 0
    with write_gate(engine), factory() as session:
        result = session.execute(update(Bulletin).where(Bulletin.status == "sending", or_(*resumed))
                                 .values(status="approved", fan_out_owner=None))
        session.commit()
    count = int(cast(CursorResult[Any], result).rowcount or 0)
    if count:
        log.warning("%d bulletin fan-out(s) left by a stopped process resumed (%s)", count,
                    ", ".join(sorted(dead)) or "owner unknown")
    return count


def approve_bulletin(env: Env, session: Session, bulletin_id: int, approver: str) -> int:
    """Approve a draft and queue it (now or by the daemon); return the recipients planned."""
    bulletin = session.get(Bulletin, bulletin_id)
    if bulletin is None:
        raise BulletinError(f"bulletin inconnu : {bulletin_id}")
    _approve(bulletin, approver, env.clock.now())
    return _fan_out_or_defer(env, session, bulletin)


def cancel_bulletin(env: Env, session: Session, bulletin_id: int, actor: str) -> int:
    """Cancel a bulletin; messages still queued are withdrawn. Return how many were withdrawn."""
    bulletin = session.get(Bulletin, bulletin_id)
    if bulletin is None:
        raise BulletinError(f"bulletin inconnu : {bulletin_id}")
    withdrawn = 0
    for out in session.scalars(select(OutboundMessage).where(
            OutboundMessage.bulletin_id == bulletin_id, OutboundMessage.status == "queued",
            OutboundMessage.kind.in_(FANOUT_KINDS))):
        out.status = "cancelled"
        out.last_answer = f"bulletin annulé par {actor}"
        withdrawn += 1
    if withdrawn:
        session.execute(
            update(BulletinRecipient)
            .where(BulletinRecipient.bulletin_id == bulletin_id, BulletinRecipient.status == "queued")
            .values(status="cancelled")
        )
    bulletin.status = "cancelled"
    return withdrawn


def alert_text(session: Session, case: Case) -> str:
    """The alert as received (plain text of the first message of the case)."""
    inbound = session.scalar(select(InboundMessage).where(InboundMessage.case_id == case.id)
                             .order_by(InboundMessage.id).limit(1))
    if inbound is None:
        return case.title
    try:
        parsed = parse_message(inbound.raw)
        parsed.convert_html()
        return parsed.text().strip()[:100_000] or case.title
    except Exception:  # the alert was understood once; a relay must not fail on re-reading it
        return case.title


@dataclass(frozen=True)
class Reach:
    """Whom a relay can reach: the establishments targeted, and those the TLP gate lets through."""

    tlp: str
    planned: int
    allowed: int
    # The first few of each, for the preview staff read before confirming (``relay_reach(sample=N)``).
    sample: tuple[RecipientRow, ...] = ()
    withheld_sample: tuple[RecipientRow, ...] = ()
    # Reaching nobody: targeted establishments whose contacts refusals took out of use, a few addresses.
    out_of_use: int = 0
    out_of_use_addresses: tuple[str, ...] = ()

    @property
    def withheld(self) -> int:
        return self.planned - self.allowed


def _tlp_rule(env: Env, tlp: str) -> str:
    """Why TLP ``tlp`` keeps an alert from establishments, in French (FIRST TLP 2.0)."""
    if tlp == "AMBER":
        domains = ", ".join(env.settings.outbound.amber_allowed_domains)
        where = f"les domaines {domains}" if domains else "aucun domaine d'établissement"
        return (f"TLP:AMBER ne permet l'envoi qu'à l'agence, à l'ACSS et aux domaines listés dans "
                f"[outbound] amber_allowed_domains (ici : {where})")
    return f"TLP:{tlp} réserve l'information à l'agence et à l'ACSS, aucun établissement ne peut la recevoir"


def _what_to_do(tlp: str) -> str:
    advice = ("demandez à l'ACSS / CERT Santé une version partageable (TLP:CLEAR ou TLP:GREEN), ou diffusez "
              "un bulletin rédigé par l'ARS (courriel « #bulletin » avec « #tlp GREEN »)")
    if tlp == "AMBER":
        advice += (", ou demandez à l'administrateur de la passerelle d'autoriser les domaines des établissements "
                   "concernés (réglage [outbound] amber_allowed_domains)")
    return advice


def relay_reach(env: Env, session: Session, case: Case, *, sample: int = 0) -> Reach:
    """Count, before anything is written, whom the relay of ``case`` would reach (the Mailer's TLP
    rule on each targeted establishment's address): "relayée à 0 établissement(s)" is refused up front.
    ``sample``: keep the first that many recipients, and of those the TLP keeps out, for a preview."""
    alert = dict((case.fields or {}).get("alert") or {})
    # Fails closed: an unknown, unparsed or missing marking relays as AMBER+STRICT (mail/tlp.py).
    tlp = check_tlp(relay_label(alert.get("tlp") or case.tlp))
    target = Target(categories=_alert_categories(alert))
    allows = env.mailer.tlp_gate(session, tlp)
    planned = allowed = 0
    reached: list[RecipientRow] = []
    kept_out: list[RecipientRow] = []
    for row in select_recipients(session, case.region, target, batch=CHUNK):
        planned += 1
        if allows(row.address.strip().lower()):
            allowed += 1
            if len(reached) < sample:
                reached.append(row)
        elif len(kept_out) < sample:
            kept_out.append(row)
    stopped, addresses = out_of_use(session, case.region, target) if not planned else (0, [])
    return Reach(tlp=tlp, planned=planned, allowed=allowed, sample=tuple(reached), withheld_sample=tuple(kept_out),
                 out_of_use=stopped, out_of_use_addresses=tuple(addresses))


def tlp_rule(env: Env, tlp: str) -> str:
    """Why TLP ``tlp`` keeps establishments out, in French, naming the setting that would let them in."""
    return _tlp_rule(env, tlp)


def out_of_use_context(session: Session, region: str, target: Target) -> dict[str, Any]:
    """For a preview finding establishments without an active address: how many lost theirs to
    refusals (directory/bounces.py), and a few addresses staff may « #reactiver » once checked."""
    count, addresses = out_of_use(session, region, target)
    return {"out_of_use": count, "out_of_use_addresses": addresses}


def reach_refusal(env: Env, reach: Reach) -> str | None:
    """The French reason a relay reaching nobody is refused, with what to do; None if someone is reached."""
    if reach.allowed:
        return None
    if not reach.planned and reach.out_of_use:
        return (f"alerte non relayée : {nombre(reach.out_of_use, 'établissement ciblé')} sans adresse active : "
                f"contacts désactivés après des refus — #reactiver <adresse> (par exemple : "
                f"{', '.join(reach.out_of_use_addresses)}) une fois l'adresse vérifiée auprès de l'établissement")
    if not reach.planned:
        return ("aucun établissement ciblé par l'alerte n'a de contact joignable dans l'annuaire de la région : "
                "alerte non relayée")
    return (f"alerte non relayée : aucun des établissements ciblés ({reach.planned}) ne peut la recevoir — "
            f"{_tlp_rule(env, reach.tlp)} ; {_what_to_do(reach.tlp)}")


def withheld_note(env: Env, reach: Reach) -> str:
    """For a receipt: how many establishments the TLP keeps out, and why ("" when none)."""
    if not reach.withheld:
        return ""
    held = nombre(reach.withheld, "établissement retenu", "établissements retenus")
    return f"{held} par le TLP sur {reach.planned} ({_tlp_rule(env, reach.tlp)})"


def _alert_categories(alert: dict[str, Any]) -> frozenset[str]:
    return frozenset(c for c in (normalise_category(str(t)) for t in alert.get("targets") or ()) if c)


def relay_alert(env: Env, session: Session, case: Case, approver: str) -> Bulletin:
    """Relay an authentic ACSS alert to the categories it targets in the case's region.

    The case must be an authentic alert awaiting broadcast (A_DIFFUSER); it becomes DIFFUSEE. A
    relay that would reach no establishment (none targeted, or all kept out by the TLP) is refused
    with its reason, and nothing is written: the case keeps its status.
    """
    if case.kind != "alert":
        raise BulletinError(f"{case.reference} n'est pas une alerte")
    alert = dict((case.fields or {}).get("alert") or {})
    if not alert.get("authentic"):
        raise BulletinError(f"{case.reference} : alerte non authentifiée, aucune diffusion possible")
    try:
        lifecycle.check_transition("alert", case.status, CaseStatus.DIFFUSEE)
    except lifecycle.InvalidTransition as exc:
        raise BulletinError(f"{case.reference} : {exc}") from exc
    reach = relay_reach(env, session, case)
    refusal = reach_refusal(env, reach)
    if refusal is not None:
        raise BulletinError(refusal)
    now = env.clock.now()
    # A savepoint: should the Mailer still refuse every address (no-reply, loop...), the draft
    # bulletin and its "refused" rows are undone and the relay refused, as above.
    savepoint = session.begin_nested()
    bulletin = create_bulletin(
        session, env.settings, region=case.region, target=Target(categories=_alert_categories(alert)),
        subject=alert.get("title") or case.title or "Alerte de sécurité", body=alert_text(session, case),
        tlp=reach.tlp, author=approver, now=now, case_id=case.id,
    )
    _approve(bulletin, approver, now)
    count = _fan_out_or_defer(env, session, bulletin)
    if bulletin.status == "approved":
        # Deferred to the daemon (which overwrites this with what it queued): what the TLP gate lets through.
        count = bulletin.recipients = reach.allowed
    if not count:
        savepoint.rollback()
        raise BulletinError(f"alerte non relayée : aucun des établissements ciblés ({reach.planned}) n'a pu "
                            "recevoir l'alerte (adresses refusées, voir « bulletin status »)")
    savepoint.commit()
    withheld = reach.planned - count
    service.change_status(session, case, CaseStatus.DIFFUSEE, actor=approver, at=now,
                          reason=f"alerte relayée à {nombre(count, 'établissement')} (bulletin {bulletin.id})")
    append_event(session, case, type="diffusion", actor=approver, at=now,
                 data={"bulletin": bulletin.id, "cible": bulletin.target, "destinataires": count,
                       "tlp": bulletin.tlp, "retenus": withheld})
    return bulletin


