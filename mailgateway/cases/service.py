"""Operations on cases, shared by processing, the mail commands, bulletins and the scheduler.

Each function changes the case in the caller's transaction and appends what it did to the
timeline (``append_event``) with the actor (a staff address or "passerelle"). Status changes go
through ``lifecycle.check_transition``: an impossible change raises ``InvalidTransition`` and
changes nothing. Cases are opened here (``new_case``) and every received message is recorded
here (``record_received``): one place builds those timeline events.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import cache
from typing import Any, cast

from sqlalchemy import Select, Table, bindparam, insert, or_, select
from sqlalchemy import case as sql_case
from sqlalchemy.orm import Session

from mailgateway.cases import lifecycle
from mailgateway.cases.reference import next_reference
from mailgateway.cases.story import label
from mailgateway.cases.timeline import append_event
from mailgateway.clock import aware, paris
from mailgateway.errors import MailgatewayError
from mailgateway.mail.autoreply import is_no_reply
from mailgateway.mail.facts import MessageFacts
from mailgateway.statuses import SEVERITIES, CaseStatus, Severity
from mailgateway.store import fast
from mailgateway.store.inserted import attach_inserted
from mailgateway.store.models import Case, InboundMessage, Indicator, OutboundMessage


class CaseError(MailgatewayError):
    """An operation refused on a case, with a French reason for the staff member's receipt."""


def change_status(session: Session, case: Case, target: str, *, actor: str, at: datetime,
                  reason: str | None = None) -> str:
    """Move ``case`` to ``target``; return the previous status."""
    previous = case.status
    lifecycle.check_transition(case.kind, previous, target)
    case.status = target
    if target in lifecycle.CLOSED:
        case.closed_at = at
    elif previous in lifecycle.CLOSED:
        case.closed_at = None
    if target == CaseStatus.QUALIFIE and case.qualified_at is None:
        case.qualified_at = at
    data: dict[str, object] = {"de": previous, "vers": target}
    if reason:
        data["motif"] = reason
    append_event(session, case, type="statut", actor=actor, at=at, data=data)
    return previous


def assign(session: Session, case: Case, assignee: str, *, actor: str, at: datetime) -> None:
    previous = case.assignee
    case.assignee = assignee.lower()
    append_event(session, case, type="assignation", actor=actor, at=at,
                 data={"de": previous, "vers": case.assignee})


def qualify(session: Session, case: Case, severity: str, *, actor: str, at: datetime) -> bool:
    """Set the severity; move to QUALIFIE when the lifecycle allows it. Return whether it moved."""
    if case.kind != "incident":
        raise CaseError(f"{case.reference} n'est pas un incident : pas de qualification")
    if severity not in SEVERITIES:
        raise CaseError(f"gravité inconnue : {severity}")
    previous = case.severity
    case.severity = severity
    case.qualified_at = case.qualified_at or at
    append_event(session, case, type="qualification", actor=actor, at=at,
                 data={"de": previous, "vers": severity})
    if case.status != CaseStatus.QUALIFIE and lifecycle.allowed(case.kind, case.status, CaseStatus.QUALIFIE):
        change_status(session, case, CaseStatus.QUALIFIE, actor=actor, at=at, reason=f"gravité {severity}")
        return True
    return False


def set_establishment(session: Session, case: Case, *, finess: str, name: str, category: str | None, actor: str,
                      at: datetime) -> None:
    """Staff name the establishment (FINESS ET) of an incident: a declaration that gave the EJ of
    several sites, or a wrong number. The number it replaces stays on the timeline."""
    if case.kind != "incident":
        raise CaseError(f"{case.reference} n'est pas une déclaration d'incident : pas de structure à préciser")
    previous = case.finess
    case.finess = finess
    case.establishment = name
    case.category = category or case.category
    append_event(session, case, type="structure", actor=actor, at=at,
                 data={"de": previous, "vers": finess, "nom": name})


def close(session: Session, case: Case, *, actor: str, at: datetime, reason: str | None = None) -> None:
    target = CaseStatus.CLOSE if case.kind == "alert" else CaseStatus.CLOS
    change_status(session, case, target, actor=actor, at=at, reason=reason)


def reopen_target(case: Case) -> str:
    """Where a closed case goes back to: follow-up once qualified, else acknowledged."""
    if case.kind == "alert":
        return CaseStatus.A_DIFFUSER
    return CaseStatus.SUIVI if case.severity != Severity.NON_QUALIFIE else CaseStatus.PRIS_EN_COMPTE


def reopen(session: Session, case: Case, *, actor: str, at: datetime, reason: str | None = None) -> str:
    if lifecycle.is_open(case.status):
        # The French label, as every message to staff (an outside tester: « statut QUALIFIE »).
        raise CaseError(f"{case.reference} n'est pas clos (statut « {label(case.status)} »)")
    target = reopen_target(case)
    change_status(session, case, target, actor=actor, at=at, reason=reason or "réouverture")
    return target


def add_note(session: Session, case: Case, text: str, *, actor: str, at: datetime) -> None:
    append_event(session, case, type="note", actor=actor, at=at, data={"texte": text[:5000]})


def resolve(session: Session, case: Case) -> Case:
    """The case that stands for ``case``: follows #fusionner to the surviving case."""
    seen = {case.id}
    while case.merged_into_id is not None:
        nxt = session.get(Case, case.merged_into_id)
        if nxt is None or nxt.id in seen:
            break
        seen.add(nxt.id)
        case = nxt
    return case


def by_reference(session: Session, reference: str) -> Case | None:
    return session.scalar(select(Case).where(Case.reference == reference.strip().upper()))


def merge(session: Session, duplicate: Case, target: Case, *, actor: str, at: datetime) -> None:
    """Merge ``duplicate`` into ``target``: the duplicate is closed and points at the target."""
    if duplicate.id == target.id:
        raise CaseError("un dossier ne peut pas être fusionné avec lui-même")
    if duplicate.region != target.region:
        raise CaseError(f"{target.reference} appartient à une autre région")
    if duplicate.merged_into_id is not None:
        raise CaseError(f"{duplicate.reference} est déjà fusionné")
    if resolve(session, target).id == duplicate.id:
        raise CaseError(f"{target.reference} est déjà fusionné dans {duplicate.reference}")
    if not lifecycle.is_open(target.status):
        raise CaseError(f"{target.reference} est clos : rouvrez-le avant d'y fusionner un doublon")
    duplicate.merged_into_id = target.id
    append_event(session, duplicate, type="fusion", actor=actor, at=at,
                 data={"fusionne_dans": target.reference})
    append_event(session, target, type="fusion", actor=actor, at=at,
                 data={"doublon_absorbe": duplicate.reference})
    if lifecycle.is_open(duplicate.status):
        close(session, duplicate, actor=actor, at=at, reason=f"doublon fusionné dans {target.reference}")


def find_duplicate(session: Session, case: Case, window: timedelta, *, declarant: str | None = None) -> Case | None:
    """The first open, unmerged case for the same FINESS in the same region opened within
    ``window``: of the same incident type first, when there is one (an outside tester, an RSSI:
    the resend of a ransomware declaration was pointed at the structure's older « test » case).

    Without a FINESS, ``declarant`` (an address the caller authenticated, never one a mail merely
    names) stands for the structure: « mise à jour : les sauvegardes sont restaurées » sent days
    later without reference nor FINESS opened a case nobody linked to the first (an outside
    tester, an RSSI)."""
    if not case.finess:
        return _same_declarant(session, case, window, declarant) if declarant else None
    # Other cases' pending changes (a status, a merge) decide the answer: flushed first. This
    # case's own are not (it is not its own duplicate): no flush in the middle of a declaration.
    if any(isinstance(obj, Case) and obj is not case for obj in (*session.new, *session.dirty)):
        session.flush()
    found = fast.execute(session, _duplicate_statement(), {
        "finess": case.finess, "region": case.region, "kind": case.kind, "id": case.id,
        "since": aware(case.opened_at) - window, "incident_type": case.incident_type}).scalar()
    return session.get(Case, found) if found is not None else None


def other_open_cases(session: Session, case: Case, window: timedelta, found: Case) -> list[Case]:
    """``found`` (``find_duplicate``'s answer) and, when ``case`` names no incident type, the other
    open cases of its structure within ``window`` (at most 5): which of them the new mail belongs to
    is for staff to say (an outside tester: « point de situation » was offered for a merge with the
    structure's oldest case, a phishing about to be cancelled, not its ransomware)."""
    if case.incident_type or not case.finess:
        return [found]
    with session.no_autoflush:
        ids = list(session.scalars(_duplicate_statement().limit(5), {
            "finess": case.finess, "region": case.region, "kind": case.kind, "id": case.id,
            "since": aware(case.opened_at) - window, "incident_type": case.incident_type}))
    return [c for c in (session.get(Case, i) for i in ids) if c is not None] or [found]


def _same_declarant(session: Session, case: Case, window: timedelta, declarant: str) -> Case | None:
    """The first open case of ``declarant`` opened within ``window`` whose declarant authenticated
    too (``fields["declarant_authentifie"]``): an unsigned declaration in their name, sent first,
    was offered for a merge with the genuine one, and its reference given to the real declarant
    (an outside attacker)."""
    c = Case.__table__.c
    stmt = (select(Case).where(
        c.declarant == declarant.strip().lower(), c.region == case.region, c.kind == case.kind, c.id != case.id,
        c.merged_into_id.is_(None), c.opened_at >= aware(case.opened_at) - window,
        c.status.not_in([str(status) for status in lifecycle.CLOSED])).order_by(c.opened_at, c.id).limit(20))
    with session.no_autoflush:
        return next((found for found in session.scalars(stmt) if (found.fields or {}).get("declarant_authentifie")),
                    None)


@cache
def _duplicate_statement() -> Select[int]:
    """The id of ``find_duplicate``'s case. Built once on the table's columns, values bound at
    execution: every declaration asks (issue 19); the rare case found is then loaded by id."""
    c = Case.__table__.c
    return (select(c.id).where(
        c.finess == bindparam("finess"), c.region == bindparam("region"), c.kind == bindparam("kind"),
        c.id != bindparam("id"), c.merged_into_id.is_(None), c.opened_at >= bindparam("since"),
        # In SQL, not in Python: loading every candidate made each declaration O(open cases).
        # One inequality each, not ``NOT IN (…)``: a list is rendered by SQLAlchemy at every
        # execution, inequalities compile once and run on the driver (store/fast.py).
        *(c.status != bindparam(f"closed_{i}", value=str(status)) for i, status in enumerate(lifecycle.CLOSED)),
        # The first of them: every copy of one incident points at the same case, the one to merge
        # into (found by an outside tester: each new copy pointed at the previous one, a chain of
        # six cases to merge one by one).
        # Of the same incident type first (NULL matches nothing: then the first of all).
    ).order_by(sql_case((c.incident_type == bindparam("incident_type"), 0), else_=1), c.opened_at, c.id).limit(1))


def link(session: Session, case: Case, other: Case, *, type: str, actor: str, at: datetime) -> None:
    """Link two cases both ways (possible duplicate, follow-up of a closed case)."""
    case.linked_case_id = other.id
    if other.linked_case_id is None:
        other.linked_case_id = case.id
    append_event(session, case, type=type, actor=actor, at=at, data={"dossier_lie": other.reference})
    append_event(session, other, type=type, actor=actor, at=at, data={"dossier_lie": case.reference})


def thread_ids(session: Session, case: Case, limit: int = 20, *, correspondent: str | None = None) -> list[str]:
    """Message-IDs of the case's messages, oldest first: References for a mail in its thread.

    ``correspondent``: for mail to someone outside the agency (the declarant), only the messages
    exchanged with that address — what their own mailbox holds. The Message-IDs of staff
    notifications and of staff's own command mail name internal mail (and, from Exchange, internal
    servers): found by outside testers in the References of answers to a declarant."""
    who = correspondent.strip().lower() if correspondent is not None else None
    ids: list[tuple[datetime, str]] = []
    if case.origin_message_id and who is None:
        ids.append((aware(case.opened_at), case.origin_message_id))
    for at, mid, auth in session.execute(
        select(InboundMessage.received_at, InboundMessage.message_id, InboundMessage.auth)
        .where(InboundMessage.case_id == case.id, InboundMessage.message_id.is_not(None))
    ):
        sender = str(auth.get("address") or "").strip().lower() if isinstance(auth, dict) else ""
        if mid and (who is None or sender == who):
            ids.append((aware(at), mid))
    for out_at, out_mid, recipient in session.execute(
        select(OutboundMessage.created_at, OutboundMessage.message_id, OutboundMessage.recipient)
        .where(OutboundMessage.case_id == case.id)
    ):
        if who is None or recipient == who:
            ids.append((aware(out_at), out_mid))
    ids.sort(key=lambda pair: pair[0])
    seen: list[str] = []
    for _at, mid in ids:
        token = mid if mid.startswith("<") else f"<{mid}>"
        if token not in seen:
            seen.append(token)
    # The root and the latest: a trimmed References keeps the thread's first message (RFC 5322
    # §3.6.4; dispatch/compose.bounded_references trims further, as mail clients do).
    return seen if len(seen) <= limit else [seen[0], *seen[-(limit - 1):]]


# Inbound kinds a machine wrote (mail/autoreply.py, mail/bounce.py): never the message answered.
AUTOMATIC_KINDS = ("auto_reply", "bounce", "loop")


def last_message_from(session: Session, case: Case, addresses: Sequence[str]) -> str | None:
    """Message-ID of the latest message of the case (or of a case merged into it) sent by one of
    ``addresses``, to answer it; else the message that opened the case — unless an agency colleague
    transmitted it: the establishment never saw that forward, and a reply threaded under it would
    sit under nothing of theirs (found by an outside tester); then the establishment's own mail
    the colleague forwarded, when it had a Message-ID (``message_transmis``). Their automatic mail (an
    out-of-office, a delivery report) is never the one answered: the closure was threaded under
    the declarant's out-of-office (outside tester)."""
    wanted = {a.lower() for a in addresses if a}
    merged = select(Case.id).where(Case.merged_into_id == case.id).scalar_subquery()
    rows = session.execute(
        select(InboundMessage.message_id, InboundMessage.auth)
        .where(or_(InboundMessage.case_id == case.id, InboundMessage.case_id.in_(merged)),
               InboundMessage.message_id.is_not(None),
               or_(InboundMessage.kind.is_(None), InboundMessage.kind.not_in(AUTOMATIC_KINDS)))
        .order_by(InboundMessage.id.desc()).limit(200)
    )
    for mid, auth in rows:
        if (auth or {}).get("address", "").lower() in wanted:
            return str(mid)
    declaration = (case.fields or {}).get("declaration")
    if isinstance(declaration, dict) and declaration.get("transmis_par"):
        forwarded = declaration.get("message_transmis")  # the establishment's own, if it had one
        return forwarded if isinstance(forwarded, str) and forwarded else None
    return case.origin_message_id


def open_cases(session: Session, region: str, limit: int = 200) -> list[Case]:
    closed = list(lifecycle.CLOSED)
    return list(session.scalars(
        select(Case).where(Case.region == region, Case.status.not_in(closed), Case.merged_into_id.is_(None))
        .order_by(Case.opened_at, Case.id).limit(limit)
    ))


def overdue_cases(session: Session, region: str, now: datetime, days: float, limit: int = 200) -> list[Case]:
    """Open cases without any timeline activity for ``days`` (the scheduler has finer deadlines)."""
    closed = list(lifecycle.CLOSED)
    return list(session.scalars(
        select(Case).where(Case.region == region, Case.status.not_in(closed), Case.merged_into_id.is_(None),
                           Case.updated_at < now - timedelta(days=days))
        .order_by(Case.updated_at, Case.id).limit(limit)
    ))


def one_line(text: str | None, limit: int = 200) -> str:
    """Mail text for a timeline or a template: whitespace folded, at most ``limit`` characters."""
    return " ".join((text or "").split())[:limit]


def declarant_of(facts: MessageFacts) -> str | None:
    """The person who declared; a portal's no-reply sender is never answered.

    A declaration an agency colleague forwarded (``extra["transmis_par"]``, mail/analyse.py) is
    the establishment's: its declarant or nobody, never the colleague who transmitted it."""
    if facts.extra.get("transmis_par"):
        found = facts.declaration.declarant if facts.declaration else None
        return found.strip().lower() if found and "@" in found and not is_no_reply(found) else None
    candidates = [
        facts.declaration.declarant if facts.declaration else None,
        facts.reply_to,
        facts.sender.address,
    ]
    for candidate in candidates:
        if candidate and "@" in candidate and not is_no_reply(candidate):
            return candidate.strip().lower()
    return None


def record_received(session: Session, case: Case, inbound: InboundMessage, facts: MessageFacts, *,
                    at: datetime, detail: bool = False) -> None:
    """Attach ``inbound`` to ``case`` and put it on the timeline (``message_recu``); ``detail``
    adds the authentication detail (the message that opened the case)."""
    inbound.case_id = case.id
    authentication: dict[str, object] = {"authentifie": facts.sender.authenticated, "methode": facts.sender.method}
    if detail:
        authentication["detail"] = facts.sender.detail
    data: dict[str, object] = {"type": facts.kind, "objet": one_line(facts.subject),
                               "message_id": facts.message_id, "authentification": authentication}
    if facts.kind == "reply" and facts.new_text.strip():
        # What the establishment answered, for the story (« #statut », « cases show »): the new text
        # only (quotes and signature removed), one bounded line, shown as text, never as markup.
        data["extrait"] = " ".join(facts.new_text.split())[:300]
    append_event(session, case, type="message_recu", actor=facts.sender.address or "inconnu", at=at,
                 inbound_id=inbound.id, data=data)


def new_case(session: Session, *, region: str, kind: str, inbound: InboundMessage, facts: MessageFacts,
             title: str, at: datetime) -> Case:
    """Open a case for ``inbound`` (reference of its year of reception, initial status), with its
    first timeline event and the message's indicators."""
    reference = next_reference(session, region, paris(inbound.received_at).year)
    values: dict[str, Any] = {column: None for column in _CASE_COLUMNS}
    values.update(reference=reference, region=region, kind=kind, status=lifecycle.initial_status(kind),
                  severity=Severity.NON_QUALIFIE, title=title, opened_at=inbound.received_at, updated_at=at,
                  origin_message_id=facts.message_id, fields={}, event_count=0)
    # One INSERT … RETURNING by statement, the row then attached as persistent (issue 19): the
    # unit of work's flush of one new object cost ≈ 0.5 ms, and flushed the inbound row's pending
    # changes in a second UPDATE. Every column is given, so nothing is loaded back later.
    with session.no_autoflush:
        values["id"] = fast.execute(session, _case_insert(), values).rows[0][0]
    case = fast.build(Case, values)
    attach_inserted(session, case)
    record_received(session, case, inbound, facts, at=at, detail=True)
    # Cut first, then made unique: two long links alike in their first 2,000 characters are one
    # stored indicator (outside tester: the unique index refused the second, and the declaration
    # could not be opened as a case).
    for indicator_type, value in {(i.type, i.value[:2000]) for i in facts.indicators[:200]}:
        session.add(Indicator(case_id=case.id, type=indicator_type, value=value))
    return case


def add_indicators(session: Session, case: Case, facts: MessageFacts, *, at: datetime, actor: str) -> int:
    """The indicators of a follow-up the case does not hold yet (an outside tester, an RSSI: the
    new onion address and IP of a follow-up reached neither the exports nor the ACSS), with a
    timeline event; how many were added."""
    found = {(i.type, i.value[:2000]) for i in facts.indicators[:200]}
    if not found:
        return 0
    held = {(t, v) for t, v in session.execute(select(Indicator.type, Indicator.value)
                                               .where(Indicator.case_id == case.id))}
    new = sorted(found - held)
    for indicator_type, value in new:
        session.add(Indicator(case_id=case.id, type=indicator_type, value=value))
    if new:
        append_event(session, case, type="indicateurs_ajoutes", actor=actor, at=at,
                     data={"indicateurs": [f"{t}:{v[:200]}" for t, v in new[:50]]})
    return len(new)


_CASE_COLUMNS = tuple(c.key for c in cast(Table, Case.__table__).c if c.key != "id")


@cache
def _case_insert() -> Any:
    """Built once (values bound at execution)."""
    table = cast(Table, Case.__table__)
    return insert(table).returning(table.c.id)


def threaded_case(session: Session, facts: MessageFacts) -> Case | None:
    """The case a message is threaded to (its ``[REF]``), following merges."""
    if not facts.case_ref:
        return None
    case = session.scalar(select(Case).where(Case.reference == facts.case_ref))
    while case is not None and case.merged_into_id is not None:
        case = session.get(Case, case.merged_into_id)
    return case


def flag_duplicate(session: Session, case: Case, window: timedelta, *, at: datetime) -> Case | None:
    """Link a new declaration to an open case of the same structure within ``window``; the other case."""
    other = find_duplicate(session, case, window)
    if other is not None:
        link(session, case, other, type="doublon_possible", actor="passerelle", at=at)
    return other


# ROUTING (issue 16): a declaration moved to the region its establishment belongs to.

_CARRIED = ("nature", "incident_type", "category", "tlp", "title", "finess", "establishment", "declarant",
            "acknowledged_at", "qualified_at", "origin_message_id")


def transfer(session: Session, case: Case, region: str, *, actor: str, at: datetime) -> Case:
    """Move an open incident to ``region``: a new reference there (year of reception), the same
    declaration, severity and status; its messages go with it; both timelines say so; the old
    case is closed as transferred and stands for the new one (``merged_into_id``, so a reply
    threaded to the old reference reaches the new case). Returns the new case."""
    if case.kind != "incident":
        raise CaseError("seule une déclaration d'incident se transfère à une autre région")
    if case.region == region:
        raise CaseError(f"{case.reference} relève déjà de la région {region}")
    if case.merged_into_id is not None:
        raise CaseError(f"{case.reference} est déjà fusionné ou transféré")
    if not lifecycle.is_open(case.status):
        raise CaseError(f"{case.reference} est clos : rouvrez-le avant de le transférer")
    moved = Case(reference=next_reference(session, region, paris(case.opened_at).year), region=region,
                 kind=case.kind, status=case.status, severity=case.severity, opened_at=case.opened_at,
                 updated_at=at, fields={**(case.fields or {}), "transfere_de": case.reference}, event_count=0)
    for name in _CARRIED:
        setattr(moved, name, getattr(case, name))
    session.add(moved)
    session.flush()
    # The messages of the case (declaration, replies) go with it; staff command mails stay.
    for inbound in session.scalars(select(InboundMessage).where(InboundMessage.case_id == case.id,
                                                                InboundMessage.kind != "command")):
        inbound.case_id = moved.id
    for indicator in list(session.scalars(select(Indicator).where(Indicator.case_id == case.id).limit(500))):
        session.add(Indicator(case_id=moved.id, type=indicator.type, value=indicator.value))
    append_event(session, moved, type="transfert_recu", actor=actor, at=at,
                 data={"dossier_origine": case.reference, "region_origine": case.region, "statut": case.status,
                       "gravite": case.severity})
    append_event(session, case, type="transfert", actor=actor, at=at,
                 data={"nouveau_dossier": moved.reference, "region": region})
    case.linked_case_id = moved.id
    moved.linked_case_id = case.id
    case.merged_into_id = moved.id
    close(session, case, actor=actor, at=at, reason=f"transféré à la région {region} (dossier {moved.reference})")
    return moved
