"""Staff notifications put off while a backlog is processed (issue 19).

In a burst each declaration costs an acknowledgement and a staff notification. The notification
(composed with the original attached, signed, sent, stored by the relay) is about a fifth of a
declaration's CPU on a 2-CPU machine, all of it spent before the next declarant gets their
acknowledgement. What the declarant waits for is that acknowledgement, the receipt the
regulation's declaration calls for; staff read the new cases a moment later either way.

So while a sweep works through a backlog (more than a batch of messages due), ``notify_staff``
(processing/context.py) writes what it would queue into ``deferred_staff_notices``, in the
transaction that processes the message, and the sweep composes and queues those notices once
nothing is due any more, or as soon as the oldest has waited ``[processing]
staff_notice_max_delay_seconds`` (60 s; a burst of thousands is worked through within it): a
continuous stream of arrivals delays staff by that bound at most, never starves them. Nothing is
lost: a crash in between leaves the rows, composed by the next sweep (``Processor``,
processing/runner.py, says there may be some at start, and looks for other instances' once a
minute). What is decided is decided in the processing transaction (the per-sender cap, the
recipients of a reply, whether the original fits); the staff list and the case's TLP marking
are read when composing, seconds later, like any mail queued then.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from datetime import datetime, timedelta
from functools import cache
from typing import Any, cast

from sqlalchemy import Insert, Select, Table, bindparam, delete, func, insert, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.cases.story import story
from mailgateway.clock import Clock, aware
from mailgateway.dispatch.compose import Attachment
from mailgateway.dispatch.contexts import case_context
from mailgateway.dispatch.mailer import Mailer
from mailgateway.processing import wave
from mailgateway.statuses import CaseStatus
from mailgateway.store import fast
from mailgateway.store.engine import reading, transaction, write_gate
from mailgateway.store.models import Case, CaseEvent, DeferredStaffNotice, InboundMessage

log = logging.getLogger("mailgateway.processing")

# Notices composed in one write transaction (the accept writer waits for the gate meanwhile).
LATER_CHUNK = 50
# Outbox priority of a notice composed from here (case mail 0, reports and digests to staff 5,
# bulletins 10): behind the acknowledgements of a backlog still being worked through, which keep
# coming while the sender works through a chunk of notices (an outside tester: both waited up to
# 19.5 s at the tail of a stream); ahead of everything else.
DEFERRED_PRIORITY = 1
# Notices taken by one transaction in a wave (digests of wave.DIGEST_CASES each).
WAVE_CHUNK = 2 * wave.DIGEST_CASES
# A processor with none of its own deferred looks for other instances' (a crash) this often.
LOOK_SECONDS = 60.0
# What people did on a case while its notice waited, shown in it: at most this many lines.
SINCE_LINES = 12
# What counts as done: the case's state changed by someone (commands are applied for
# authenticated staff only) and the mail people sent. Not what merely arrived or was refused: an
# outside tester's twenty forged « [REF] #clore » mails filled the block with « Message reçu »
# and « Commande refusée » lines and pushed a colleague's note out of it.
DONE_TYPES = ("statut", "qualification", "structure", "assignation", "note", "fusion", "dossier_lie", "confirmation",
              "diffusion", "transfert", "declaration_transferee")
SENT_BY_PEOPLE = frozenset({"reponse", "demande_info", "transmission_acss", "cloture_declarant", "transfert",
                            "alerte_relais"})



@cache
def _insert() -> Insert:
    """A deferred notice's row, compiled once and run on the driver (store/fast.py): one per
    declaration of a burst."""
    return insert(cast(Table, DeferredStaffNotice.__table__))


@cache
def _raw_statement() -> Select[tuple[bytes]]:
    return select(InboundMessage.__table__.c.raw).where(InboundMessage.__table__.c.id == bindparam("id"))


def defer(session: Session, now: datetime, case: Case, inbound: InboundMessage | None, region: str,
          attach_original: bool, call: dict[str, Any]) -> bool:
    """Put off ``Mailer.send_to_staff(session, region, case=case, **call)`` (the original of
    ``inbound`` attached if ``attach_original``). False, and nothing written, when ``call`` is not
    plain JSON: it is then sent at once, as before."""
    try:
        spec = json.dumps({**call, "region": region, "attach_original": attach_original}, allow_nan=False,
                          ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        log.warning("staff notice %s not deferred: its context is not plain JSON", call.get("key"))
        return False
    # No flush: the row names its case by id (flushed already), and flushing what the handler has
    # pending here only adds a flush per message (issue 19: 9 % of a signed burst's processing).
    fast.execute(session, _insert(), {"created_at": now, "case_id": case.id,
                                      "inbound_id": inbound.id if inbound is not None else None, "spec": spec})
    return True


def waits_for(session: Session, case: Case) -> bool:
    """Whether a notice of ``case`` is deferred: a later one (a complement's « Réponse reçue »
    processed by a small sweep) must wait behind it, so staff read a case's mail in order."""
    if case.id is None:
        return False
    with session.no_autoflush:
        return session.scalar(select(DeferredStaffNotice.id).where(DeferredStaffNotice.case_id == case.id)
                              .limit(1)) is not None


def count_deferred(factory: sessionmaker[Session]) -> int:
    with reading(factory) as session:
        return int(session.scalar(select(func.count()).select_from(DeferredStaffNotice)) or 0)


def any_deferred(factory: sessionmaker[Session], clock: Clock, *, waited: float | None = None) -> bool:
    """Whether some notice waits (``waited`` seconds at least, if given): read first, so a sweep
    finding none takes no write lock."""
    with reading(factory) as session:
        return session.scalar(_waiting(select(DeferredStaffNotice.id), clock, waited).limit(1)) is not None


def _waiting(stmt: Select[Any], clock: Clock, waited: float | None) -> Select[Any]:
    if waited is None:
        return stmt
    return stmt.where(DeferredStaffNotice.created_at <= clock.now() - timedelta(seconds=waited))


def send_deferred(mailer: Mailer, factory: sessionmaker[Session], clock: Clock, *,
                  waited: float | None = None, limit: int = LATER_CHUNK, digest_from: int = 0) -> int:
    """Compose and queue, oldest first, up to ``limit`` deferred notices (only those that have
    waited ``waited`` seconds, if given) in one write transaction; return how many were taken.

    A wave (``digest_from`` notices or more deferred, 0: never): up to ``WAVE_CHUNK`` of the
    oldest are taken, whatever their age, and the new declarations' among them are told in
    digests (processing/wave.py); the others go as above, those that have waited.

    A notice that fails to compose (a template error) is journaled on its case as not sent and
    dropped, with the error logged: it would fail the same way at every sweep. That transaction
    then runs again with a savepoint per notice (per digest: one that fails is sent as its
    notices), so the others are queued."""
    try:
        return _send(mailer, factory, clock, waited, limit, digest_from, careful=False)
    except OperationalError:
        raise
    except Exception:
        log.warning("deferred staff notices failed in one transaction; again one by one", exc_info=True)
        return _send(mailer, factory, clock, waited, limit, digest_from, careful=True)


def _send(mailer: Mailer, factory: sessionmaker[Session], clock: Clock, waited: float | None, limit: int,
          digest_from: int, *, careful: bool) -> int:
    model = DeferredStaffNotice
    with write_gate(factory.kw["bind"]), transaction(factory) as session:
        waves = _wave_regions(session, digest_from)
        in_wave = bool(waves)
        # SKIP LOCKED: on PostgreSQL, two instances compose different notices (ignored by SQLite,
        # whose writers take turns). Queuing is idempotent anyway (outbox keys).
        stmt = (select(model).order_by(model.id).limit(WAVE_CHUNK) if in_wave
                else _waiting(select(model), clock, waited).order_by(model.id).limit(limit))
        notices = list(session.scalars(stmt.with_for_update(skip_locked=True)))
        if not notices:
            return 0
        cases = {c.id: c for c in session.scalars(select(Case).where(Case.id.in_({n.case_id for n in notices})))}
        since = _since(session, notices)
        calls = {n.id: json.loads(n.spec) for n in notices}
        due = clock.now() - timedelta(seconds=waited) if waited is not None else None
        told = [n for n in notices if cases[n.case_id].region in waves and wave.digestible(calls[n.id])]
        told_ids = {n.id for n in told}
        # Digests first: a reply's notice later in the queue follows its case's in the outbox.
        alone = [n for n in notices
                 if n.id not in told_ids and (not in_wave or due is None or aware(n.created_at) <= due)]
        alone += _send_waves(mailer, session, clock, told, calls, cases, since, careful=careful)
        for notice in alone:
            call, case = calls[notice.id], cases[notice.case_id]
            if careful:
                try:
                    with session.begin_nested():
                        _queue(mailer, session, notice, call, case, since[notice.id])
                except OperationalError:
                    raise
                except Exception as exc:
                    _failed(mailer, session, clock, call, case, exc)
            else:
                _queue(mailer, session, notice, call, case, since[notice.id])
        taken = told_ids | {n.id for n in alone}  # a digest's lone case is in both
        session.execute(delete(model).where(model.id.in_(taken)))
    return len(taken)


def _wave_regions(session: Session, digest_from: int) -> set[str]:
    """The regions in a wave: ``digest_from`` notices or more deferred for their cases (0: none).
    Per region: a flood into one mailbox must not turn another region's lone declaration into a
    digest (an outside tester: 80 declarations to PDL, ARA's one case told as « Afflux »)."""
    if digest_from <= 0:
        return set()
    model = DeferredStaffNotice
    counts = session.execute(select(Case.region, func.count()).select_from(model)
                             .join(Case, Case.id == model.case_id).group_by(Case.region))
    return {region for region, count in counts if int(count) >= digest_from}


def _send_waves(mailer: Mailer, session: Session, clock: Clock, notices: list[DeferredStaffNotice],
                calls: dict[int, dict[str, Any]], cases: dict[int, Case], since: dict[int, list[str]], *,
                careful: bool) -> list[DeferredStaffNotice]:
    """``notices`` told in digests, per region (processing/wave.py); returns those to be sent as
    notices of their own: a digest's lone case, and a digest's that failed to compose (``careful``)."""
    by_region: dict[str, list[DeferredStaffNotice]] = {}
    for notice in notices:
        by_region.setdefault(calls[notice.id]["region"], []).append(notice)
    left: list[DeferredStaffNotice] = []
    for region, group in by_region.items():
        items = []
        for notice in group:
            case = cases[notice.case_id]
            context = {**calls[notice.id]["context"], "case": case_context(case)}
            _drop_settled_hints(session, case, context)
            items.append(wave.Item(case, context, since[notice.id], notice.inbound_id, notice.id))
        try:
            with session.begin_nested() if careful else nullcontext():
                alone = {i.notice_id for i in wave.send_digests(mailer, session, clock, region, items,
                                                                 priority=DEFERRED_PRIORITY)}
        except OperationalError:
            raise
        except Exception:
            if not careful:
                raise  # the whole transaction again, carefully (send_deferred)
            log.error("staff digest of %s new declaration(s) of %s not composed: sent one by one", len(items),
                      region, exc_info=True)
            alone = {n.id for n in group}
        left += [n for n in group if n.id in alone]
    return left


def _since(session: Session, notices: list[DeferredStaffNotice]) -> dict[int, list[str]]:
    """For each notice, the story lines (cases/story.py) of what people did on its case after it
    was put off (``DONE_TYPES``, mail of ``SENT_BY_PEOPLE``): a command applied, a note, an answer
    to the declarant. What merely arrived, was refused or is the gateway's own is not listed (the
    notices that follow say it). One query for the chunk."""
    first = min(n.created_at for n in notices)
    rows = session.scalars(
        select(CaseEvent)
        .where(CaseEvent.case_id.in_({n.case_id for n in notices}), CaseEvent.at > first,
               CaseEvent.actor != "passerelle", CaseEvent.type.in_((*DONE_TYPES, "mail_sortant")))
        .order_by(CaseEvent.case_id, CaseEvent.seq))
    by_case: dict[int, list[CaseEvent]] = {}
    for event in rows:
        if event.type == "mail_sortant" and (event.data or {}).get("type") not in SENT_BY_PEOPLE:
            continue  # the gateway's receipts and notices, sent in someone's name
        by_case.setdefault(event.case_id, []).append(event)
    since: dict[int, list[str]] = {}
    for notice in notices:
        events = [e for e in by_case.get(notice.case_id, ()) if e.at > notice.created_at]
        lines = story(events)
        since[notice.id] = (lines if len(lines) <= SINCE_LINES
                            else [*lines[:SINCE_LINES - 1], f"… et {len(lines) - SINCE_LINES + 1} autres "
                                                             "(« cases show » ou « #statut »)"])
    return since


def _queue(mailer: Mailer, session: Session, notice: DeferredStaffNotice, call: dict[str, Any], case: Case,
           since: list[str]) -> None:
    call = dict(call)
    region = call.pop("region")
    # The case as it is now: a colleague may have closed, assigned, transferred or merged it
    # meanwhile (an outside tester: « statut : pris en compte » on a case already closed), and
    # what was done since, so that the notice does not read as if nobody had touched it (another:
    # « #assigner moi » offered on a case already assigned, qualified and answered).
    context = {**call["context"], "case": case_context(case), "depuis": since}
    _drop_settled_hints(session, case, context)
    call["context"] = context
    attachments: list[Attachment] = []
    if call.pop("attach_original", False) and notice.inbound_id is not None:
        # One original at a time (each may be megabytes); no flush of the last notice's rows first.
        raw = fast.execute(session, _raw_statement(), {"id": notice.inbound_id}).scalar()
        if raw:
            attachments = [Attachment(raw, "message-original.eml")]
    call["priority"] = max(int(call.get("priority", 0)), DEFERRED_PRIORITY)
    mailer.send_to_staff(session, region, case=case, attachments=attachments, **call)


def _drop_settled_hints(session: Session, case: Case, context: dict[str, Any]) -> None:
    """Hints decided when the message was processed that what happened since has settled (an
    outside tester: « répondez #fusionner X » on a case already merged, or naming a duplicate
    already merged into it; a transfer suggested for a case already transferred)."""
    if case.status == CaseStatus.CLOS or case.merged_into_id is not None:
        context.pop("duplicate_of", None)
        context.pop("duplicate_candidates", None)
        context.pop("out_of_region", None)
        return
    duplicate = context.get("duplicate_of")
    if isinstance(duplicate, str):
        with session.no_autoflush:
            other = session.execute(select(Case.status, Case.merged_into_id).where(Case.reference == duplicate)).first()
        if other is None or other[1] is not None or other[0] == CaseStatus.CLOS:
            context.pop("duplicate_of", None)


def _failed(mailer: Mailer, session: Session, clock: Clock, call: dict[str, Any], case: Case, exc: Exception) -> None:
    log.error("deferred staff notice %s for case %s not sent: %s", call.get("key"), case.reference, exc, exc_info=exc)
    mailer.journal(session, case, type="envoi_refuse", actor="passerelle", at=clock.now(),
                   data={"destinataire": "équipe", "type": call.get("kind"),
                         "motif": f"erreur de composition : {type(exc).__name__}"})
