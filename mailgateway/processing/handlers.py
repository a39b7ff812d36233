"""What processing does with each kind of message: one small named step per kind (STYLE §3).

Each handler runs inside the message's transaction and returns an ``Outcome``. The table
``HANDLERS`` at the bottom is the whole routing: a kind missing from it is quarantined.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgateway.cases import lifecycle
from mailgateway.cases.reference import next_reference
from mailgateway.cases.timeline import append_event
from mailgateway.clock import PARIS, Clock, aware
from mailgateway.dispatch.compose import Attachment, MailSpec
from mailgateway.mail.facts import MessageFacts
from mailgateway.processing.mailer import Mailer, is_no_reply, staff_addresses
from mailgateway.settings import Settings
from mailgateway.store.models import Case, Establishment, InboundMessage, Indicator


@dataclass
class Env:
    settings: Settings
    mailer: Mailer
    clock: Clock
    # Hooks filled by later capabilities (commands, bulletins, bounces): kind -> handler.
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    status: str  # processed | quarantined
    reason: str | None = None
    case: Case | None = None


def french_datetime(at: datetime) -> str:
    local = aware(at).astimezone(PARIS)
    return local.strftime("%d/%m/%Y à %H:%M")


def region_context(env: Env, region: str) -> dict[str, Any]:
    reg = env.settings.region(region)
    return {
        "service_name": env.settings.outbound.service_name,
        "region_name": reg.name if reg else region,
        "region_address": reg.address if reg else "",
        "region_code": region,
    }


def case_context(case: Case) -> dict[str, Any]:
    return {
        "reference": case.reference,
        "kind": case.kind,
        "status": case.status,
        "severity": case.severity,
        "title": case.title,
        "establishment": case.establishment,
        "finess": case.finess,
        "assignee": case.assignee,
        "declarant": case.declarant,
        "tlp": case.tlp,
    }


def from_identity(env: Env, region: str) -> tuple[str, str]:
    return env.mailer.from_identity(region)


def _one_line(text: str | None, limit: int = 200) -> str:
    return " ".join((text or "").split())[:limit]


def declarant_of(facts: MessageFacts) -> str | None:
    """The person who declared; a portal's no-reply sender is never answered (issue 2)."""
    candidates = [
        facts.declaration.declarant if facts.declaration else None,
        facts.reply_to,
        facts.sender.address,
    ]
    for candidate in candidates:
        if candidate and "@" in candidate and not is_no_reply(candidate):
            return candidate.strip().lower()
    return None


def notify_staff(env: Env, session: Session, case: Case, inbound: InboundMessage, facts: MessageFacts,
                 template: str = "staff_notification", kind: str = "notification_equipe",
                 extra: dict[str, Any] | None = None) -> int:
    est = session.get(Establishment, case.finess) if case.finess else None
    context = {
        **region_context(env, case.region),
        "case": case_context(case),
        "received_at_fr": french_datetime(inbound.received_at),
        "declaration": facts.declaration.to_json() if facts.declaration else None,
        "alert": facts.alert.to_json() if facts.alert else None,
        "establishment": {"name": est.name, "departement": est.departement} if est else None,
        "declarant": case.declarant,
        "sender": facts.sender.to_json(),
        "indicators": [i.to_json() for i in facts.indicators[:50]],
        "subject": _one_line(facts.subject),
        **(extra or {}),
    }
    assignee = [case.assignee] if case.assignee and kind == "notification_reponse" else None
    return env.mailer.send_to_staff(
        session, case.region, template=template, context=context, kind=kind, key=f"{kind}:{inbound.id}",
        recipients=assignee, case=case, priority=0,
        in_reply_to=facts.message_id, references=list(facts.in_reply_to),
        attachments=[Attachment(inbound.raw, "message-original.eml")],
    )


def _new_case(env: Env, session: Session, *, region: str, kind: str, inbound: InboundMessage,
              facts: MessageFacts, title: str) -> Case:
    now = env.clock.now()
    reference = next_reference(session, region, aware(inbound.received_at).astimezone(PARIS).year)
    case = Case(
        reference=reference, region=region, kind=kind, status=lifecycle.initial_status(kind),
        severity="NON_QUALIFIE", title=title, opened_at=inbound.received_at, updated_at=now,
        origin_message_id=facts.message_id, fields={}, event_count=0,
    )
    session.add(case)
    session.flush()
    inbound.case_id = case.id
    append_event(
        session, case, type="message_recu", actor=facts.sender.address or "inconnu", at=now,
        inbound_id=inbound.id,
        data={"type": facts.kind, "objet": _one_line(facts.subject), "message_id": facts.message_id,
              "authentification": {"authentifie": facts.sender.authenticated, "methode": facts.sender.method,
                                   "detail": facts.sender.detail}},
    )
    for indicator in {(i.type, i.value) for i in facts.indicators[:200]}:
        session.add(Indicator(case_id=case.id, type=indicator[0], value=indicator[1][:2000]))
    return case


def handle_declaration(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts) -> Outcome:
    region = facts.region
    if region is None or env.settings.region(region) is None:
        return Outcome("quarantined", "région destinataire inconnue : aucune boîte SSI régionale ne correspond")
    decl = facts.declaration
    assert decl is not None
    est = session.get(Establishment, decl.finess) if decl.finess else None
    structure = decl.structure or (est.name if est else None)
    title = " — ".join(x for x in (structure, decl.incident_type) if x) or _one_line(facts.subject, 120)
    case = _new_case(env, session, region=region, kind="incident", inbound=inbound, facts=facts, title=title)
    case.finess = decl.finess
    case.establishment = structure
    case.category = decl.category or (est.category if est else None)
    case.incident_type = decl.incident_type
    case.nature = decl.nature
    case.fields = {"declaration": decl.to_json()}
    case.declarant = declarant_of(facts)
    now = env.clock.now()
    if case.declarant:
        from_address, from_name = from_identity(env, region)
        spec = MailSpec(
            template="acknowledgement",
            context={**region_context(env, region), "case": case_context(case),
                     "received_at_fr": french_datetime(inbound.received_at), "subject": _one_line(facts.subject)},
            to=case.declarant, from_address=from_address, from_name=from_name,
            idempotency_key=f"acknowledgement:{inbound.id}",
            in_reply_to=facts.message_id, references=list(facts.in_reply_to),
        )
        if env.mailer.send(session, spec, kind="accuse_reception", case=case, auto_reply=True) is not None:
            case.acknowledged_at = now
            case.status = "PRIS_EN_COMPTE"
            append_event(session, case, type="statut", actor="passerelle", at=now,
                         data={"de": "RECU", "vers": "PRIS_EN_COMPTE", "motif": "accusé de réception envoyé"})
    else:
        append_event(session, case, type="accuse_reception_impossible", actor="passerelle", at=now,
                     data={"motif": "aucune adresse de déclarant utilisable"})
    # Capability hook (cases/commands.py): link a possible duplicate, mention it to staff.
    duplicates: Callable[..., dict[str, Any]] | None = env.extra.get("duplicates")
    notify_staff(env, session, case, inbound, facts, extra=duplicates(env, session, case) if duplicates else None)
    return Outcome("processed", case=case)


def handle_alert(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts) -> Outcome:
    region = facts.region
    if region is None or env.settings.region(region) is None:
        return Outcome("quarantined", "région destinataire inconnue pour l'alerte")
    alert = facts.alert
    assert alert is not None
    title = _one_line(alert.title or facts.subject, 160)
    case = _new_case(env, session, region=region, kind="alert", inbound=inbound, facts=facts, title=title)
    case.tlp = alert.tlp
    case.fields = {"alert": alert.to_json()}
    now = env.clock.now()
    if alert.authentic:
        case.status = "A_DIFFUSER"
        append_event(session, case, type="statut", actor="passerelle", at=now,
                     data={"de": "RECUE", "vers": "A_DIFFUSER", "motif": "alerte authentifiée"})
    else:
        # DESIGN §8: an unauthenticated alert is held, staff are warned, the message is kept.
        append_event(session, case, type="alerte_non_authentifiee", actor="passerelle", at=now,
                     data={"motif": facts.sender.detail or "expéditeur non authentifié"})
    notify_staff(env, session, case, inbound, facts)
    return Outcome("processed", case=case)


def _threaded_case(session: Session, facts: MessageFacts) -> Case | None:
    if not facts.case_ref:
        return None
    case = session.scalar(select(Case).where(Case.reference == facts.case_ref))
    while case is not None and case.merged_into_id is not None:
        case = session.get(Case, case.merged_into_id)
    return case


def handle_reply(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts) -> Outcome:
    case = _threaded_case(session, facts)
    if case is None:
        return Outcome("quarantined", f"réponse à un dossier inconnu : {facts.case_ref}")
    inbound.case_id = case.id
    now = env.clock.now()
    append_event(session, case, type="message_recu", actor=facts.sender.address or "inconnu", at=now,
                 inbound_id=inbound.id,
                 data={"type": facts.kind, "objet": _one_line(facts.subject), "message_id": facts.message_id,
                       "authentification": {"authentifie": facts.sender.authenticated,
                                            "methode": facts.sender.method}})
    hook: Callable[..., Outcome | None] | None = env.extra.get("reply")
    if hook is not None:
        result = hook(env, session, inbound, facts, case)
        if result is not None:
            return result
    sender = (facts.sender.address or "").lower()
    if sender not in staff_addresses(env.settings, session, case.region):
        notify_staff(env, session, case, inbound, facts, kind="notification_reponse")
    return Outcome("processed", case=case)


def handle_command(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts) -> Outcome:
    hook: Callable[..., Outcome] | None = env.extra.get("command")
    if hook is not None:
        return hook(env, session, inbound, facts, _threaded_case(session, facts))
    if facts.case_ref:
        return handle_reply(env, session, inbound, facts)
    return Outcome("quarantined", "commande reçue mais le traitement des commandes n'est pas disponible")


def handle_bounce(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts) -> Outcome:
    hook: Callable[..., Outcome] | None = env.extra.get("bounce")
    if hook is not None:
        return hook(env, session, inbound, facts)
    from mailgateway.dispatch import outbox

    bounce = facts.bounce
    assert bounce is not None
    row = outbox.find_bounced(session, bounce.verp_token, bounce.original_message_id)
    if row is None:
        return Outcome("processed", reason="rebond sans message d'origine identifiable")
    outbox.mark_bounced(session, row, env.clock.now(), "; ".join(bounce.recipients) or "rebond")
    if row.case_id is not None:
        case = session.get(Case, row.case_id)
        if case is not None:
            inbound.case_id = case.id
            append_event(session, case, type="rebond", actor="passerelle", at=env.clock.now(),
                         inbound_id=inbound.id, outbound_id=row.id,
                         data={"destinataire": row.recipient, "permanent": bounce.permanent})
    return Outcome("processed", case=None)


def handle_silently(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts) -> Outcome:
    """Auto-replies and loops: never answered (RFC 3834 §2), attached to their case if threaded."""
    case = _threaded_case(session, facts)
    if case is not None:
        inbound.case_id = case.id
        append_event(session, case, type="message_automatique", actor=facts.sender.address or "inconnu",
                     at=env.clock.now(), inbound_id=inbound.id,
                     data={"type": facts.kind, "objet": _one_line(facts.subject)})
    return Outcome("processed", case=case)


def handle_unknown(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts) -> Outcome:
    reason = facts.quarantine_reason or "message non reconnu (ni déclaration, ni alerte, ni réponse)"
    return Outcome("quarantined", reason)


Handler = Callable[[Env, Session, InboundMessage, MessageFacts], Outcome]

HANDLERS: dict[str, Handler] = {
    "declaration": handle_declaration,
    "alert": handle_alert,
    "reply": handle_reply,
    "command": handle_command,
    "bounce": handle_bounce,
    "auto_reply": handle_silently,
    "loop": handle_silently,
    "unknown": handle_unknown,
}
