"""Contact status changes driven by bounces, scored the way Mailman 3 scores list members,
and hardened against forged bounces (docs/guarantees.md).

Each bounce adds to the contact's score (permanent 1.0, temporary 0.5); at the threshold (5.0),
reached by a permanent bounce, the contact becomes ``bouncing`` and bulletins fall back to the
establishment's next contact (targets.py). A score older than ``bounce_stale_days`` without a
new bounce restarts from zero, and, as in Mailman, only one bounce per contact and per day is
scored: a full mailbox answering every message of one busy day is one bad day, not ten. Every
bounce is kept as a ContactBounce row, scored or not, with how it reached us, for the weekly
report and for staff.

A bounce is only as good as its evidence (``evidence``):

* ``relay``: our own relay refused or gave up the message (RFC 5321 §4.2.1, recorded by the
  sender). Nobody else can produce it, but it is still one delivery: like a VERP DSN, it counts
  as one refused message (one « 550 5.1.1 » is no « refus répétés »).
* ``verp``: a DSN mailed back to the message's VERP return path. The token is random and only
  ever sent with that one message, so the DSN comes from somewhere on its delivery path; still,
  one such DSN is one delivery.

Either way the contact becomes bouncing only after permanent failures on ``bounce_min_messages``
distinct outbound messages (within ``bounce_window_days``). Soft bounces (temporary, a full
mailbox) are scored and recorded but never take a contact out of use. A bouncing contact comes
back with ``reactivate``: authenticated mail from its address, staff's « #reactiver », the CLI
or a contacts import listing it as active.
* ``message_id``: a DSN that only names one of our Message-IDs in its body. Message-IDs travel
  further than return paths (quoted in replies, forwarded), so such a DSN is recorded and counts
  towards the distinct messages, but never scores and never marks a contact bouncing unless a
  ``relay`` or ``verp`` failure is among them: anonymous DSNs alone never take a contact away.

A delivery is counted once: a second DSN for the same outbound message scores nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Literal

from sqlalchemy import Select, bindparam, func, select
from sqlalchemy.orm import Session

from mailgateway.clock import PARIS, Clock, aware
from mailgateway.directory.addresses import normalise_address
from mailgateway.directory.targets import RECIPIENT_ROLES, Target, _where
from mailgateway.settings import DirectorySettings, Settings
from mailgateway.store import fast
from mailgateway.store.models import Contact, ContactBounce, Establishment, OutboundMessage

Evidence = Literal["relay", "verp", "message_id"]
RELAY: Evidence = "relay"
VERP: Evidence = "verp"
MESSAGE_ID: Evidence = "message_id"
_STRONG = frozenset({RELAY, VERP})
# Recent permanent bounces read per contact to count distinct messages (bounded work).
_HISTORY_LIMIT = 500


@dataclass(frozen=True)
class BouncePolicy:
    threshold: float = 5.0
    soft_score: float = 0.5
    hard_score: float = 1.0
    stale_after: timedelta = timedelta(days=7)
    hard_marks_bouncing: bool = True
    once_per_day: bool = True
    min_messages: int = 2
    window: timedelta = timedelta(days=90)

    @classmethod
    def from_settings(cls, s: DirectorySettings) -> BouncePolicy:
        return cls(
            threshold=s.bounce_threshold,
            soft_score=s.soft_bounce_score,
            hard_score=s.hard_bounce_score,
            stale_after=timedelta(days=s.bounce_stale_days),
            hard_marks_bouncing=s.hard_bounce_marks_bouncing,
            min_messages=max(1, s.bounce_min_messages),
            window=timedelta(days=s.bounce_window_days),
        )


DEFAULT_POLICY = BouncePolicy()


def record_bounce(
    session: Session,
    address: str,
    permanent: bool,
    diagnostic: str | None,
    now: datetime,
    outbound_id: int | None = None,
    *,
    policy: BouncePolicy = DEFAULT_POLICY,
    evidence: Evidence = RELAY,
) -> list[Contact]:
    """Score a bounce against every contact with this address; return the contacts touched.

    One address may serve several establishments (a GHT's shared SSI mailbox): all are scored.
    An unknown address touches nothing and returns an empty list. ``evidence`` says how the
    failure reached us (module docstring); callers handling a DSN must say so.
    """
    canonical = normalise_address(address) or address.strip().lower()
    contacts = list(session.scalars(select(Contact).where(Contact.address == canonical).order_by(Contact.id)))
    for contact in contacts:
        history = _permanent_history(session, contact, now, policy)
        repeat = _already_counted(session, contact, outbound_id, permanent)
        _score(contact, permanent, now, policy, counts=evidence in _STRONG and not repeat)
        if permanent:
            history.append((outbound_id, evidence))
        if contact.status == "active" and _marks_bouncing(contact, permanent, history, policy):
            contact.status = "bouncing"
        contact.updated_at = now
        session.add(
            ContactBounce(
                contact_id=contact.id,
                at=now,
                permanent=permanent,
                diagnostic=diagnostic,
                outbound_id=outbound_id,
                evidence=evidence,
            )
        )
    session.flush()
    return contacts


def contacts_of(session: Session, address: str, region: str | None = None) -> list[Contact]:
    """Every contact with this address (of the establishments of ``region`` when given)."""
    canonical = normalise_address(address) or address.strip().lower()
    query = select(Contact).where(Contact.address == canonical)
    if region is not None:
        query = query.where(Contact.finess.in_(select(Establishment.finess).where(Establishment.region == region)))
    return list(session.scalars(query.order_by(Contact.id)))


def statuses_of(session: Session, address: str) -> dict[int, str]:
    """Status of every contact with this address (before a bounce, to see what it changed)."""
    canonical = normalise_address(address) or address.strip().lower()
    return {cid: status for cid, status in session.execute(
        select(Contact.id, Contact.status).where(Contact.address == canonical))}


def newly_out_of_use(contacts: list[Contact], before: dict[int, str]) -> list[Contact]:
    """The contacts a bounce just took out of use (active before, bouncing or disabled now)."""
    return [c for c in contacts if before.get(c.id) == "active" and c.status in ("bouncing", "disabled")]


def _score(contact: Contact, permanent: bool, now: datetime, policy: BouncePolicy, *, counts: bool) -> None:
    """Mailman's score: stale scores restart; soft bounces score once a day."""
    last = aware(contact.last_bounce_at) if contact.last_bounce_at is not None else None
    if last is not None and now - last > policy.stale_after:
        contact.bounce_score = 0.0
    already_today = last is not None and last.astimezone(PARIS).date() == now.astimezone(PARIS).date()
    if counts and not (policy.once_per_day and already_today and not permanent):
        contact.bounce_score += policy.hard_score if permanent else policy.soft_score
    contact.last_bounce_at = now


def _marks_bouncing(contact: Contact, permanent: bool,
                    history: list[tuple[int | None, str | None]], policy: BouncePolicy) -> bool:
    # A soft bounce (RFC 3463 4.x.x, a full mailbox 5.2.2) never takes a contact out of use: the
    # mailbox exists and will take mail again; it is scored for the reports only.
    if not permanent:
        return False
    if contact.bounce_score >= policy.threshold:
        return True  # only relay/VERP bounces ever score
    if not policy.hard_marks_bouncing:
        return False
    return refusals(history) >= policy.min_messages


def refusals(history: list[tuple[int | None, str | None]]) -> int:
    """Distinct deliveries refused for good, as counted towards ``min_messages``: each outbound
    message once (a bounce naming none counts alone), and none at all without one ``relay`` or
    ``verp`` failure among them. Our relay's own 5xx is no exception: one « 550 5.1.1 » during one
    bulletin is one refusal (a mailbox being migrated, a typo since corrected), not « refus répétés »."""
    if not any(e in _STRONG for _oid, e in history):
        return 0
    return len({oid if oid is not None else f"none:{n}" for n, (oid, _e) in enumerate(history)})


def refusals_of(session: Session, contact: Contact, now: datetime, policy: BouncePolicy = DEFAULT_POLICY) -> int:
    """How many distinct refused deliveries currently count against ``contact`` (staff wording)."""
    return refusals(_permanent_history(session, contact, now, policy))


def _permanent_history(session: Session, contact: Contact, now: datetime,
                       policy: BouncePolicy) -> list[tuple[int | None, str | None]]:
    """(outbound_id, evidence) of the contact's permanent bounces still counted."""
    since = now - policy.window
    if contact.bounces_counted_since is not None:
        since = max(since, aware(contact.bounces_counted_since))
    rows = session.execute(
        select(ContactBounce.at, ContactBounce.outbound_id, ContactBounce.evidence)
        .where(ContactBounce.contact_id == contact.id, ContactBounce.permanent.is_(True))
        .order_by(ContactBounce.id.desc()).limit(_HISTORY_LIMIT)
    ).all()
    # Rows recorded before 0002 carry no evidence: they came through the same paths, count as strong.
    return [(oid, evidence or RELAY) for at, oid, evidence in rows if aware(at) >= since]


def _already_counted(session: Session, contact: Contact, outbound_id: int | None, permanent: bool) -> bool:
    """A bounce for a delivery already scored for this contact (same or stronger failure)."""
    if outbound_id is None:
        return False
    query = select(ContactBounce.id).where(
        ContactBounce.contact_id == contact.id, ContactBounce.outbound_id == outbound_id,
        ContactBounce.evidence.in_(_STRONG))
    if permanent:
        query = query.where(ContactBounce.permanent.is_(True))
    return session.scalar(query.limit(1)) is not None


def reactivate(contact: Contact, now: datetime | None = None) -> None:
    """Staff confirmed the mailbox works again: active, score and counted bounces cleared
    (history is kept)."""
    contact.status = "active"
    contact.bounce_score = 0.0
    if now is not None:
        contact.updated_at = now
        contact.bounces_counted_since = now
    elif contact.last_bounce_at is not None:
        contact.bounces_counted_since = aware(contact.last_bounce_at) + timedelta(microseconds=1)


def reactivate_address(session: Session, address: str, now: datetime, *,
                       statuses: tuple[str, ...] = ("bouncing",), region: str | None = None,
                       only_if: Callable[[Contact], bool] | None = None) -> list[Contact]:
    """Reactivate every contact with this address whose status is in ``statuses`` (of the
    establishments of ``region`` when given, and for which ``only_if`` holds when given); return
    them. Unknown or active: empty list."""
    canonical = normalise_address(address) or address.strip().lower()
    pending = any(isinstance(o, Contact) for o in (*session.new, *session.dirty))
    if not pending and region is None and statuses == ("bouncing",) and fast.execute(
            session, _bouncing_statement(), {"address": canonical}).scalar() is None:
        # Asked of every authenticated message, answered « nobody » almost always: one statement
        # built once, run on the driver, no ORM query (9 % of the processing host's samples in a
        # signed burst; issue 19). A contact change pending (a bounce earlier in the same
        # transaction) takes the path below, which flushes it first.
        return []
    query = select(Contact).where(Contact.address == canonical, Contact.status.in_(statuses))
    if region is not None:
        query = query.where(Contact.finess.in_(select(Establishment.finess).where(Establishment.region == region)))
    # Flush first only when a contact change is pending, not the whole handler's work each time.
    with contextlib.nullcontext() if pending else session.no_autoflush:
        contacts = list(session.scalars(query.order_by(Contact.id)))
    if only_if is not None:
        contacts = [c for c in contacts if only_if(c)]
    for contact in contacts:
        reactivate(contact, now)
    if contacts:
        session.flush()
    return contacts


@cache
def _bouncing_statement() -> Select[tuple[int]]:
    """Whether a contact with this address is out of use after refusals (``reactivate_address``'s
    hot path): built once, values bound at execution (store/fast.py)."""
    c = Contact.__table__.c
    return select(c.id).where(c.address == bindparam("address"),
                              c.status == bindparam("bouncing", value="bouncing")).limit(1)


def out_of_use(session: Session, region: str, target: Target, limit: int = 5) -> tuple[int, list[str]]:
    """Establishments of ``target`` left without any active recipient contact because theirs were
    taken out of use (bouncing, disabled): how many, and a few of those addresses (for « #reactiver »)."""
    roles = list(RECIPIENT_ROLES)
    active = select(Contact.finess).where(Contact.status == "active", Contact.role.in_(roles))
    stopped = select(Contact.finess).where(Contact.status.in_(("bouncing", "disabled")), Contact.role.in_(roles))
    targeted = _where(select(Establishment.finess), region, target).where(
        Establishment.finess.not_in(active), Establishment.finess.in_(stopped))
    count = int(session.scalar(select(func.count()).select_from(targeted.subquery())) or 0)
    if not count:
        return 0, []
    addresses = session.scalars(
        select(Contact.address).where(Contact.finess.in_(targeted), Contact.status.in_(("bouncing", "disabled")),
                                      Contact.role.in_(roles)).distinct().order_by(Contact.address).limit(limit))
    return count, list(addresses)


def disable(contact: Contact, now: datetime | None = None) -> None:
    """Stop using a contact without deleting it (bounce history and bulletin records stay)."""
    contact.status = "disabled"
    if now is not None:
        contact.updated_at = now


def contact_bounce_hook(settings: Settings, clock: Clock) -> Callable[[Session, OutboundMessage, str], None]:
    """An ``on_permanent_failure`` for ``dispatch.sender.Sender``: score a bounce against the
    recipient's contacts (the bulletins feature's hook adds fallback contacts on top)."""
    policy = BouncePolicy.from_settings(settings.directory)

    def hook(session: Session, row: OutboundMessage, answer: str) -> None:
        record_bounce(session, row.recipient, row.status == "failed", answer, clock.now(), row.id, policy=policy)

    return hook
