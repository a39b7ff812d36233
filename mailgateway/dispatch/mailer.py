"""The outbound gate: queue one mail under the rules that hold on every outbound path.

- never to a no-reply address, nor to ourselves (loops);
- automatic replies are capped per recipient per hour and per day, and per case (storms), and
  all together per hour (a global budget: rotating recipients must not turn the gateway into a
  signed spam relay); over the budget staff get one warning an hour, not one per refusal;
- staff notifications caused by one sender are capped per hour (``notice_refused``);
- TLP: RED never leaves the agency (staff only), AMBER / AMBER+STRICT only to allowed recipients,
  the label in the subject;
- a refused send is recorded on the case timeline with its reason.

The mail is composed (rendered) here and queued with its final bytes but the signature in the
caller's transaction; the sender DKIM-signs and delivers it later (DESIGN.md: "Send … signs, delivers"):
the RSA signature, a tenth of the processing host's time per declaration, is then made in the
daemon's sender thread, beside processing instead of in its write transaction (issue 19).

The gate needs two things from above the sending machinery, given to it by ``app.py``: who the
staff are (``StaffDirectory``, implemented by ``directory.staff.StaffDirectory``) and where a case
records what was sent or refused (``CaseJournal``, implemented by ``cases.timeline.append_event``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import cache
from typing import Any, Protocol, cast

from sqlalchemy import Insert, Select, String, Table, and_, bindparam, func, insert, or_, select
from sqlalchemy import case as case_
from sqlalchemy.orm import Session

from mailgateway.clock import Clock
from mailgateway.dispatch import outbox
from mailgateway.dispatch.compose import Composed, Composer, MailSpec, SharedBodies
from mailgateway.dispatch.contexts import region_context
from mailgateway.errors import PolicyRefusal
from mailgateway.mail.autoreply import is_no_reply
from mailgateway.mail.tlp import relay_label
from mailgateway.settings import Settings
from mailgateway.store import fast
from mailgateway.store.models import AutoReplyLog, Case, OutboundMessage, StaffNoticeLog

log = logging.getLogger("mailgateway.mailer")

# Template of the warnings the gateway sends its own staff about its budgets (one per hour).
WARNING_TEMPLATE = "avertissement"
# Recipients of one staff message (its To line): RFC 5321 §4.5.3.1.8 has every relay take at
# least 100 RCPTs a transaction; a longer staff list is sent as several messages.
STAFF_MESSAGE_MAX_RECIPIENTS = 50



@dataclass(frozen=True)
class Refusal:
    """Why ``Mailer.send`` did not queue a mail; ``capped``: an automatic-reply cap or the global
    budget held it back, so nobody was told and a person must answer instead (the staff
    notification of a declaration says so: processing/handlers.py)."""

    reason: str
    capped: bool


class StaffDirectory(Protocol):
    """The agency's staff: [[staff]] of the configuration and the imported list (lower-case)."""

    def of_region(self, session: Session, region: str) -> list[str]: ...

    def everyone(self, session: Session) -> frozenset[str]: ...


class CaseJournal(Protocol):
    """Appends an event to a case's timeline."""

    def __call__(self, session: Session, case: Case, *, type: str, actor: str, at: datetime,
                 data: dict[str, Any] | None = None, inbound_id: int | None = None,
                 outbound_id: int | None = None) -> object: ...


class Mailer:
    def __init__(self, settings: Settings, composer: Composer, clock: Clock, *, staff: StaffDirectory,
                 journal: CaseJournal) -> None:
        self.settings = settings
        self.composer = composer
        self.clock = clock
        self.staff = staff
        self.journal = journal
        self.own = {r.address.lower() for r in settings.regions}

    def _tlp_allows(self, session: Session, tlp: str | None, recipient: str) -> bool:
        return self.tlp_gate(session, tlp)(recipient)

    def tlp_gate(self, session: Session, tlp: str | None) -> Callable[[str], bool]:
        """The TLP rule for ``tlp`` as a predicate on a (lower-case) recipient address, reading the
        staff lists once: ``send`` uses it, and so does a relay counting whom it can reach."""
        # A label this gate does not know is AMBER+STRICT (mail/tlp.py fails closed), never CLEAR.
        tlp = relay_label(tlp) if tlp is not None else None
        if tlp is None or tlp in ("CLEAR", "GREEN"):
            return lambda recipient: True
        staff = self.staff.everyone(session)
        if tlp == "RED":
            return lambda recipient: recipient in staff
        acss = self.settings.acss.address.lower()
        if tlp == "AMBER+STRICT":
            # TLP 2.0: AMBER+STRICT stays within the recipient organisation: agency and ACSS only.
            return lambda recipient: recipient in staff or recipient == acss
        allowed_domains = {d.lower() for d in self.settings.outbound.amber_allowed_domains}
        return lambda recipient: (recipient in staff or recipient == acss
                                  or recipient.rpartition("@")[2] in allowed_domains)

    def _cap_reached(self, session: Session, recipient: str, case: Case | None, verified: bool, *,
                     per_case_only: bool = False) -> str | None:
        """Per recipient (replies to a verified address and to an unverified one counted apart:
        forged mail in someone's name must not use up what their own authenticated mail is owed)
        per hour and per day, and per case (every reply of the case)."""
        now = self.clock.now()
        out = self.settings.outbound
        # One query for the three caps (this runs for every automatic reply). No flush first: the
        # log is written by statement (send), never left pending, and nothing else pending counts.
        with session.no_autoflush:
            row = fast.execute(session, _caps_statement(), {
                "recipient": recipient, "verified": verified, "hour_ago": now - timedelta(hours=1),
                "day_ago": now - timedelta(days=1), "case_id": case.id if case is not None else None}).rows[0]
        last_hour, last_day, for_case = (int(v or 0) for v in row)
        if per_case_only:
            last_hour = last_day = 0
        if last_hour >= out.auto_replies_per_hour:
            return f"plafond de réponses automatiques atteint pour {recipient} (par heure)"
        if last_day >= out.auto_replies_per_day:
            return f"plafond de réponses automatiques atteint pour {recipient} (par jour)"
        if case is not None and for_case >= out.auto_replies_per_case:
            return f"plafond de réponses automatiques atteint pour le dossier {case.reference}"
        return None

    def _global_budget_reached(self, session: Session) -> str | None:
        """All automatic replies of the last hour, every recipient together (index ix_auto_reply_at)."""
        budget = self.settings.outbound.auto_reply_global_per_hour
        with session.no_autoflush:  # see _cap_reached
            total = int(fast.execute(session, _replies_since_statement(),
                                     {"since": self.clock.now() - timedelta(hours=1)}).scalar() or 0)
        if total < budget:
            return None
        return f"budget global de réponses automatiques atteint ({budget} par heure, tous destinataires confondus)"

    def _hour_bucket(self) -> str:
        return self.clock.now().strftime("%Y%m%d%H")

    def _region_of(self, spec: MailSpec, case: Case | None) -> str | None:
        if case is not None:
            return case.region
        sender = spec.from_address.lower()
        return next((r.code for r in self.settings.regions if r.address.lower() == sender), None)

    def warn_staff(self, session: Session, region: str, *, topic: str, motif: str,
                   details: Sequence[str] = ()) -> int:
        """One warning per ``topic``, region and clock hour (idempotency key): staff are told that a
        budget was reached, never once per refused mail."""
        context = {**region_context(self.settings, region), "motif": motif, "details": list(details)[:20]}
        key = f"avertissement:{topic}:{region}:{self._hour_bucket()}"
        return self.send_to_staff(session, region, template=WARNING_TEMPLATE, context=context,
                                  kind="avertissement_plafond", key=key, priority=0)

    def notice_refused(self, session: Session, sender: str, *, pooled: str | None = None,
                       pooled_cap: int | None = None) -> str | None:
        """Which cap keeps staff from being notified of a message from ``sender`` this hour —
        ``"sender"`` or ``"pooled"`` — or None, and then the notice is counted.

        The cap is per sender key (an address, or ``domain:<d>`` for a signing domain; lower-cased;
        an empty sender is one sender): an outsider must not be able to push a stream of gateway
        notifications, with attachments, to staff. ``pooled``: a second key shared by many senders
        (all unauthenticated mail of a region) with its own cap ``pooled_cap``; both must allow it."""
        key = (sender or "").strip().lower()[:512]
        pool = pooled if pooled is not None and pooled_cap is not None else None
        # Both counts in one query (index ix_staff_notice_sender_at); no flush first: the log is
        # written by statement below, never left pending (issue 19). Without a pool, ``pool`` is
        # NULL: ``sender = NULL`` counts nothing.
        with session.no_autoflush:
            own, shared = fast.execute(session, _notices_statement(), {
                "key": key, "pool": pool, "since": self.clock.now() - timedelta(hours=1)}).rows[0]
        if int(own or 0) >= self.settings.outbound.staff_notifications_per_sender_per_hour:
            return "sender"
        if pool is not None and pooled_cap is not None and int(shared or 0) >= pooled_cap:
            return "pooled"
        now = self.clock.now()
        with session.no_autoflush:  # a log row refers to nothing pending
            fast.execute(session, _log_insert(StaffNoticeLog),
                         [{"sender": k, "at": now} for k in (key, pooled) if k is not None])
        return None

    def from_identity(self, region: str) -> tuple[str, str]:
        """The region's SSI address and display name: every mail of the gateway comes from it."""
        reg = self.settings.region(region)
        address = reg.address if reg else self.settings.regions[0].address
        return address, f"ARS {reg.name if reg else region} - Cellule SSI"

    def send_to_staff(
        self,
        session: Session,
        region: str,
        *,
        template: str,
        context: Mapping[str, Any],
        kind: str,
        key: str,
        recipients: Sequence[str] | None = None,
        case: Case | None = None,
        priority: int = 5,
        on_cases: Sequence[Case] = (),
        **spec: Any,
    ) -> int:
        """One message to the staff of ``region`` (or to ``recipients``), all of them in To; an
        outbox row per person, idempotency key ``<key>:<address>``; returns how many rows were
        queued. ``on_cases``: more cases whose timelines say it was sent (a digest's).

        One message, not one per person (issue 19): composed, signed, handed to the relay and
        stored by it once, in one transaction with a RCPT each (dispatch/sender.py), and one
        Message-ID, so every agent's reply threads under the same notification. The team sees
        who else was told. Each row keeps its recipient, status and attempts: a refused RCPT or
        a bounce is that person's alone (``outbox.find_bounced``)."""
        from_address, from_name = self.from_identity(region)
        addresses = list(dict.fromkeys(recipients or self.staff.of_region(session, region)))
        # Already queued (an hourly warning repeated by every capped message of a burst, a message
        # processed again): skipped before composing, ≈1 ms each (issue 19).
        queued = outbox.queued_keys(session, [f"{key}:{address}" for address in addresses])
        todo = [address for address in addresses if f"{key}:{address}" not in queued]
        sent = 0
        bodies: SharedBodies = {}  # one rendering for every message of this notice
        for first in range(0, len(todo), STAFF_MESSAGE_MAX_RECIPIENTS):
            chunk = todo[first:first + STAFF_MESSAGE_MAX_RECIPIENTS]
            mail = MailSpec(template=template, context=context, to=chunk[0], from_address=from_address,
                            from_name=from_name, idempotency_key=key, auto_submitted="auto-generated", **spec)
            message_key = key if first == 0 else f"{key}#{first // STAFF_MESSAGE_MAX_RECIPIENTS}"
            sent += self._send_to_several(session, mail, chunk, message_key, kind=kind, case=case,
                                          priority=priority, bodies=bodies, on_cases=on_cases)
        return sent

    def _send_to_several(self, session: Session, spec: MailSpec, addresses: Sequence[str], message_key: str, *,
                         kind: str, case: Case | None, priority: int, bodies: SharedBodies,
                         on_cases: Sequence[Case] = ()) -> int:
        """``spec`` as one message to those of ``addresses`` the rules of ``send`` allow, its
        Message-ID made of ``message_key``, and a row per address keyed ``<spec's key>:<address>``.
        A message to one address is ``send``'s (its Message-ID made of that row's key)."""
        key = spec.idempotency_key
        tlp = spec.tlp or (case.tlp if case is not None else None)
        gate = self.tlp_gate(session, tlp)
        allowed: list[str] = []
        for address in addresses:
            recipient = address.strip().lower()
            reason = self.address_refusal(recipient, tlp, gate)
            if reason is None:
                allowed.append(recipient)
            else:
                self._refused(session, kind, recipient, reason, case, "passerelle")
        if len(allowed) <= 1:
            return sum(self.send(session, replace(spec, to=a, idempotency_key=f"{key}:{a}"), kind=kind,
                                 case=case, priority=priority, bodies=bodies, on_cases=on_cases) is not None
                       for a in allowed)
        try:
            composed = self.composer.compose(
                replace(spec, to=allowed[0], to_all=allowed, tlp=tlp, idempotency_key=message_key), bodies, sign=False)
        except PolicyRefusal as exc:
            for recipient in allowed:
                self._refused(session, kind, recipient, exc.reason, case, "passerelle")
            return 0
        now = self.clock.now()
        return_path: str | None = None  # the first row inserted gives the message its return path
        queued = 0
        for recipient in allowed:
            row = outbox.enqueue(
                session, raw=composed.raw, recipient=recipient, message_id=composed.message_id,
                idempotency_key=f"{key}:{recipient}", kind=kind, now=now, settings=self.settings,
                case_id=case.id if case is not None else None, priority=priority, return_path_token=return_path)
            if row is None:
                continue  # queued meanwhile: idempotent
            return_path = return_path or row.verp_token
            queued += 1
            self._journal_sent(session, case, row, spec, composed, kind=kind, actor="passerelle", on_cases=on_cases)
        return queued

    def _journal_sent(self, session: Session, case: Case | None, row: OutboundMessage, spec: MailSpec,
                      composed: Composed, *, kind: str, actor: str, on_cases: Sequence[Case] = ()) -> None:
        """A mail queued for a case (and ``on_cases``): on its timeline, with its recipient,
        subject and Message-ID."""
        for told in ([case] if case is not None else []) + list(on_cases):
            self.journal(session, told, type="mail_sortant", actor=actor, at=self.clock.now(), outbound_id=row.id,
                         data={"type": kind, "destinataire": row.recipient, "objet": composed.subject,
                               "message_id": composed.message_id, **_excerpt(spec)})

    def _refused(self, session: Session, kind: str, recipient: str, reason: str, case: Case | None,
                 actor: str) -> None:
        """A mail not queued for ``recipient``: a log line with its fields (docs/operations.md, like
        a failed delivery) and, for a case, its timeline."""
        log.info("outbound %s to %s refused before sending: %s", kind, recipient, reason,
                 extra={"recipient": recipient, "case_ref": case.reference if case is not None else None,
                        "delivery": "refused", "kind": kind})
        if case is not None:
            self.journal(session, case, type="envoi_refuse", actor=actor, at=self.clock.now(),
                         data={"destinataire": recipient, "type": kind, "motif": reason})

    def address_refusal(self, recipient: str, tlp: str | None, allows: Callable[[str], bool]) -> str | None:
        """Why ``recipient`` (stripped, lower case) may never receive this mail, in French, or None:
        an invalid address, a no-reply robot, ourselves (a loop), or one the TLP marking excludes
        (``allows``: see ``tlp_gate``). The bulletin fan-out checks the same rule before composing."""
        if not recipient or "@" not in recipient:
            return f"adresse de destination invalide : {recipient!r}"
        if is_no_reply(recipient):
            return f"adresse de non-réponse ou de robot : {recipient}"
        if recipient in self.own:
            return f"adresse de la passerelle elle-même (boucle) : {recipient}"
        if not allows(recipient):
            return f"TLP:{tlp} interdit l'envoi à {recipient}"
        return None

    def send(
        self,
        session: Session,
        spec: MailSpec,
        *,
        kind: str,
        case: Case | None = None,
        auto_reply: bool = False,
        verified: bool = False,
        vouched: bool = False,
        priority: int = 0,
        bulletin_id: int | None = None,
        actor: str = "passerelle",
        refusals: list[Refusal] | None = None,
        bodies: SharedBodies | None = None,
        on_cases: Sequence[Case] = (),
    ) -> OutboundMessage | None:
        """Compose and queue ``spec``; return the outbox row, or None when refused or already queued.
        A refusal is also appended to ``refusals`` when given (already queued is no refusal).
        ``verified``: an automatic reply to the very address that authenticated the message it
        answers (its own per-recipient caps). ``vouched``: moreover under a domain the agency
        knows (directory/known.py: an establishment of the directory, the agency, ACSS) and for
        a new case: only the per-case cap applies. Its own mail is no flood and no backscatter,
        and each of its declarations is owed its acknowledgement — two outside testers: a flood
        of unauthenticated declarations used up the global budget and a genuine signed declarant
        got none; an RSSI's sixth declaration in an hour of crisis got none either. A loop cannot
        go through it: what answers an acknowledgement joins its case, it opens no new one."""
        recipient = spec.to.strip().lower()
        tlp = spec.tlp or (case.tlp if case is not None else None)
        reason: str | None = None
        capped = False
        def allows(address: str) -> bool:
            return self._tlp_allows(session, tlp, address)

        reason = self.address_refusal(recipient, tlp, allows)
        if reason is None and auto_reply:
            reason = self._cap_reached(session, recipient, case, verified, per_case_only=vouched)
            if reason is None and not vouched and (reason := self._global_budget_reached(session)) is not None:
                region = self._region_of(spec, case)
                if region is not None:
                    self.warn_staff(session, region, topic="reponses_automatiques", motif=reason)
            capped = reason is not None
        if reason is None:
            try:
                composed = self.composer.compose(replace(spec, to=recipient, tlp=tlp), bodies, sign=False)
            except PolicyRefusal as exc:
                reason = exc.reason
        if reason is not None:
            if refusals is not None:
                refusals.append(Refusal(reason, capped))
            self._refused(session, kind, recipient, reason, case, actor)
            return None
        row = outbox.enqueue(
            session,
            raw=composed.raw,
            recipient=recipient,
            message_id=composed.message_id,
            idempotency_key=spec.idempotency_key,
            kind=kind,
            now=self.clock.now(),
            settings=self.settings,
            case_id=case.id if case is not None else None,
            bulletin_id=bulletin_id,
            priority=priority,
        )
        if row is None:
            return None  # already queued by an earlier run: idempotent
        if auto_reply:
            with session.no_autoflush:  # a log row refers to nothing pending (case_id: a flushed case's)
                fast.execute(session, _log_insert(AutoReplyLog), {"recipient": recipient,
                                                            "case_id": case.id if case else None,
                                                            "at": self.clock.now(), "verified": verified})
        self._journal_sent(session, case, row, spec, composed, kind=kind, actor=actor, on_cases=on_cases)
        return row


def _excerpt(spec: MailSpec) -> dict[str, str]:
    """The start of a text a person wrote (an answer, a request: context "message"), for the
    case's story (cases/story.py): staff read what was said without opening the outbox."""
    text = spec.context.get("message")
    return {"extrait": " ".join(text.split())[:300]} if isinstance(text, str) and text.strip() else {}


# The caps' statements run for every declaration (issue 19): built once, on the tables' columns,
# values bound at execution — an ORM ``select(Entity.column)`` built per call cost ≈ 0.3 ms of
# construction and ORM compilation each time, the executed statement ≈ 0.05 ms.
@cache
def _caps_statement() -> Select[int, int, int]:
    """Automatic replies to :recipient (as verified or not: :verified) in the last hour, in the
    last day, and for case :case_id (NULL: none; ``case_id = NULL`` is never true)."""
    log_ = AutoReplyLog.__table__.c
    per_recipient = and_(log_.recipient == bindparam("recipient"), log_.verified == bindparam("verified"),
                         log_.at >= bindparam("day_ago"))
    per_case = log_.case_id == bindparam("case_id")
    return select(
        func.count(case_((and_(per_recipient, log_.at >= bindparam("hour_ago")), 1))),
        func.count(case_((per_recipient, 1))),
        func.count(case_((per_case, 1))),
    ).where(or_(per_recipient, per_case))


@cache
def _replies_since_statement() -> Select[int]:
    log_ = AutoReplyLog.__table__.c
    return select(func.count()).select_from(AutoReplyLog.__table__).where(log_.at >= bindparam("since"))


@cache
def _notices_statement() -> Select[int, int]:
    """Staff notices since :since for sender key :key and pool key :pool (NULL: no pool, and
    ``sender IN (:key, NULL)`` is ``sender = :key``)."""
    log_ = StaffNoticeLog.__table__.c
    key, pool = bindparam("key", type_=String), bindparam("pool", type_=String)
    return select(
        func.count(case_((log_.sender == key, 1))),
        func.count(case_((log_.sender == pool, 1))),
    ).where(log_.at >= bindparam("since"), log_.sender.in_([key, pool]))


@cache
def _log_insert(model: type[AutoReplyLog] | type[StaffNoticeLog]) -> Insert:
    return insert(cast(Table, model.__table__))
