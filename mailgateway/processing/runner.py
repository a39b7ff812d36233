"""Process accepted messages: classify, authenticate, extract, apply — once (DESIGN §2).

For one message:
1. read the raw bytes (short read);
2. authenticate and analyse — pure, no lock held (a large message must not block intake);
3. in one write transaction: re-check the message is still ``received`` (another worker or an
   earlier run may have finished it), apply the handler, queue outbound mail, mark it processed.

A crash anywhere before the commit leaves the message ``received``: it is processed again on
restart, with the same result once (handlers are deterministic and outbound mail has idempotency
keys). A handler that raises quarantines the message with the exception recorded; a database
that is briefly unavailable leaves it ``received`` for the next sweep.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.clock import Clock
from mailgateway.logs import bind, log_context
from mailgateway.mail.analyse import analyse
from mailgateway.mail.auth import Authenticator
from mailgateway.mail.context import AnalysisContext, EstablishmentInfo, build_context
from mailgateway.mail.facts import MessageFacts, SenderVerdict
from mailgateway.processing.handlers import HANDLERS, Env, Outcome
from mailgateway.processing.routing import resolve_region
from mailgateway.settings import Settings
from mailgateway.store.engine import reading, transaction, write_gate
from mailgateway.store.models import Case, Establishment, InboundMessage, OutboundMessage

log = logging.getLogger("mailgateway.processing")


@dataclass(frozen=True)
class Result:
    inbound_id: int
    status: str  # processed | quarantined | skipped | retry
    kind: str | None = None
    case_ref: str | None = None
    reason: str | None = None
    # Wall time of process() (the metrics' processing latency histogram).
    seconds: float = field(default=0.0, compare=False)


def _strip(mid: str) -> str:
    return mid.strip().strip("<>").strip()


def thread_lookup_for(session: Session) -> Callable[[Sequence[str]], str | None]:
    """Message-IDs of a reply -> case reference, our own mail first (issue 4: threading)."""

    def lookup(message_ids: Sequence[str]) -> str | None:
        ids = [m for m in (_strip(x) for x in message_ids) if m][:50]
        if not ids:
            return None
        bracketed = [f"<{m}>" for m in ids]
        ref = session.scalar(
            select(Case.reference).join(OutboundMessage, OutboundMessage.case_id == Case.id)
            .where(OutboundMessage.message_id.in_(bracketed)).limit(1)
        )
        if ref:
            return ref
        ref = session.scalar(
            select(Case.reference).join(InboundMessage, InboundMessage.case_id == Case.id)
            .where(or_(InboundMessage.message_id.in_(bracketed), InboundMessage.message_id.in_(ids))).limit(1)
        )
        if ref:
            return ref
        return session.scalar(
            select(Case.reference).where(or_(Case.origin_message_id.in_(bracketed), Case.origin_message_id.in_(ids)))
            .limit(1)
        )

    return lookup


def establishment_lookup_for(session: Session) -> Callable[[str], EstablishmentInfo | None]:
    def lookup(finess: str) -> EstablishmentInfo | None:
        est = session.get(Establishment, finess)
        if est is None:
            return None
        return EstablishmentInfo(finess=est.finess, name=est.name, category=est.category,
                                 departement=est.departement, region=est.region)

    return lookup


class Processor:
    def __init__(
        self,
        settings: Settings,
        factory: sessionmaker[Session],
        clock: Clock,
        authenticator: Authenticator,
        env: Env,
        on_outbound: Callable[[], None] = lambda: None,
        on_result: Callable[[Result], None] = lambda _r: None,
    ) -> None:
        self.settings = settings
        self.factory = factory
        self.clock = clock
        self.authenticator = authenticator
        self.env = env
        self.on_outbound = on_outbound
        self.on_result = on_result

    def context(self, session: Session) -> AnalysisContext:
        return build_context(
            self.settings,
            thread_lookup=thread_lookup_for(session),
            establishment_lookup=establishment_lookup_for(session),
        )

    def pending(self, limit: int = 100) -> list[int]:
        with reading(self.factory) as session:
            return list(session.scalars(
                select(InboundMessage.id).where(InboundMessage.status == "received")
                .order_by(InboundMessage.id).limit(limit)
            ))

    def analyse_raw(self, session: Session, raw: bytes) -> MessageFacts:
        try:
            verdict = self.authenticator.verify(raw)
        except Exception as exc:  # authentication must never lose a message
            log.exception("authentication failed")
            verdict = SenderVerdict(detail=f"vérification impossible : {type(exc).__name__}")
        return analyse(raw, self.context(session), verdict)

    def process(self, inbound_id: int) -> Result:
        started = time.monotonic()
        # Every log line of this message (handlers, mailer, ...) carries its ids (mailgateway.logs).
        with log_context(inbound_id=inbound_id):
            try:
                result = self._process(inbound_id)
            except OperationalError as exc:
                log.warning("database unavailable while processing inbound %s: %s", inbound_id, exc)
                result = Result(inbound_id, "retry", reason=str(exc))
            except Exception as exc:
                result = self._quarantine(inbound_id, exc)
        result = replace(result, seconds=time.monotonic() - started)
        self.on_result(result)
        return result

    def _process(self, inbound_id: int) -> Result:
        with reading(self.factory) as session:
            row = session.get(InboundMessage, inbound_id)
            if row is None or row.status != "received":
                return Result(inbound_id, "skipped")
            raw = row.raw
            facts = resolve_region(self.settings, self.analyse_raw(session, raw), row.region, row.rcpt_tos or ())
        bind(message_id=facts.message_id, case_ref=facts.case_ref, region=facts.region)
        with write_gate(self.factory.kw["bind"]), transaction(self.factory) as session:
            stmt = select(InboundMessage).where(InboundMessage.id == inbound_id)
            if session.get_bind().dialect.name == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True)
            row = session.scalar(stmt)
            if row is None or row.status != "received":
                return Result(inbound_id, "skipped")
            row.attempts = (row.attempts or 0) + 1
            row.kind = facts.kind
            row.message_id = (facts.message_id or "")[:998] or None
            row.region = row.region or facts.region
            row.auth = {
                "address": facts.sender.address, "authenticated": facts.sender.authenticated,
                "method": facts.sender.method, "domain": facts.sender.domain, "detail": facts.sender.detail,
            }
            outcome = None
            attachments = int(facts.extra.get("attachments", 0) or 0)
            if attachments > self.settings.intake.max_attachments:
                # Issue 5: attachment limits; the message is kept, in quarantine, with the reason.
                outcome = Outcome("quarantined", f"trop de pièces jointes : {attachments} "
                                                 f"(maximum {self.settings.intake.max_attachments})")
            # Capabilities may claim a message first (e.g. an establishment acknowledging a bulletin).
            for prehandler in self.env.extra.get("prehandlers", []) if outcome is None else []:
                outcome = prehandler(self.env, session, row, facts)
                if outcome is not None:
                    break
            if outcome is None:
                handler = HANDLERS.get(facts.kind)
                outcome = handler(self.env, session, row, facts) if handler else Outcome(
                    "quarantined", f"type de message sans traitement : {facts.kind}")
            row.status = outcome.status
            row.reason = outcome.reason
            row.processed_at = self.clock.now()
            case_ref = outcome.case.reference if outcome.case is not None else None
        bind(case_ref=case_ref)
        log.info("inbound %s %s kind=%s case=%s", inbound_id, outcome.status, facts.kind, case_ref,
                 extra={"case_ref": case_ref, "message_id": facts.message_id})
        self.on_outbound()
        return Result(inbound_id, outcome.status, facts.kind, case_ref, outcome.reason)

    def _quarantine(self, inbound_id: int, exc: BaseException) -> Result:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()[:2000]
        log.error("inbound %s quarantined: %s", inbound_id, detail)
        with transaction(self.factory) as session:
            row = session.get(InboundMessage, inbound_id)
            if row is not None and row.status == "received":
                row.status = "quarantined"
                row.reason = f"erreur de traitement : {detail}"
                row.processed_at = self.clock.now()
                row.attempts = (row.attempts or 0) + 1
        return Result(inbound_id, "quarantined", reason=detail)

    def process_pending(self, limit: int = 1000) -> list[Result]:
        return [self.process(i) for i in self.pending(limit)]


def describe(result: Result) -> dict[str, Any]:
    return {"inbound_id": result.inbound_id, "status": result.status, "kind": result.kind,
            "case_ref": result.case_ref, "reason": result.reason}
