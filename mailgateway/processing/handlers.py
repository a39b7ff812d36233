"""What processing does with each kind of message: one small named step per kind (STYLE §3).

Each handler runs inside the message's transaction and returns an ``Outcome``. The table
``HANDLERS`` at the bottom is the whole routing: a kind missing from it is quarantined.
"""

from __future__ import annotations

import hashlib
import re
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
from mailgateway.processing import replay
from mailgateway.processing.mailer import Mailer, is_no_reply, staff_addresses
from mailgateway.settings import Settings
from mailgateway.store.models import Case, Contact, Establishment, InboundMessage, Indicator


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


def _notice_capped(env: Env, session: Session, case: Case, facts: MessageFacts) -> bool:
    """Per-sender cap on staff notifications (issue 15): over it, the message stays stored and
    attached to its case, the timeline says so, and staff get one summary notice for that sender
    and hour. The cap is against anonymous floods: an authenticated sender (an authentic ACSS
    alert, a portal or an establishment that signs its mail) answers for its mail and is never
    held back — in a wave of declarations from one portal address, staff must see every case."""
    if facts.sender.authenticated:
        return False
    sender = (facts.sender.address or "").strip().lower()
    if env.mailer.notice_allowed(session, sender):
        return False
    cap = env.settings.outbound.staff_notifications_per_sender_per_hour
    append_event(session, case, type="notification_limitee", actor="passerelle", at=env.clock.now(),
                 data={"expediteur": sender or "inconnu", "motif": f"plus de {cap} notifications en une heure"})
    topic = "notifications:" + hashlib.sha256(sender.encode()).hexdigest()[:16]
    env.mailer.warn_staff(
        session, case.region, topic=topic,
        motif=f"plus de {cap} messages en une heure de {sender or 'un expéditeur inconnu'}",
        details=[f"premier message non notifié : dossier {case.reference}",
                 "les messages suivants de cet expéditeur sont rattachés à leurs dossiers sans notification"])
    return True


def _original(env: Env, case: Case, inbound: InboundMessage) -> tuple[list[Attachment], dict[str, Any]]:
    """The original, attached once per staff member only when small: a 25 MB declaration copied
    into every notification multiplied the database by the staff count (issue 15)."""
    size = len(inbound.raw)
    attached = size <= env.settings.outbound.staff_attachment_max_bytes
    context = {"original_attached": attached, "original_size_fr": f"{size / 1_048_576:.1f} Mo",
               "original_command": f"mailgateway cases original {case.reference}"}
    return ([Attachment(inbound.raw, "message-original.eml")] if attached else []), context


def notify_staff(env: Env, session: Session, case: Case, inbound: InboundMessage, facts: MessageFacts,
                 template: str = "staff_notification", kind: str = "notification_equipe",
                 extra: dict[str, Any] | None = None) -> int:
    if _notice_capped(env, session, case, facts):
        return 0
    attachments, original = _original(env, case, inbound)
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
        **original,
        **(extra or {}),
    }
    assignee = [case.assignee] if case.assignee and kind == "notification_reponse" else None
    return env.mailer.send_to_staff(
        session, case.region, template=template, context=context, kind=kind, key=f"{kind}:{inbound.id}",
        recipients=assignee, case=case, priority=0,
        in_reply_to=facts.message_id, references=list(facts.in_reply_to),
        attachments=attachments,
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


# An enumeration code (RANCONGICIEL, ETABLISSEMENT_SANTE): what the label tables map mail text to.
_ENUM_CODE = re.compile(r"[A-Z][A-Z0-9_+]{0,47}")


def _enum_code(value: str | None) -> str | None:
    return value if value and _ENUM_CODE.fullmatch(value) else None


def _declarant_verified(facts: MessageFacts, declarant: str) -> bool:
    """The acknowledgement goes back to the very address that authenticated the declaration.
    Otherwise the recipient came from From / Reply-To / « Courriel du déclarant » of a message
    anyone could have written, and may be a victim."""
    sender = (facts.sender.address or "").strip().lower()
    return facts.sender.authenticated and bool(sender) and sender == declarant


def _acknowledgement_context(env: Env, region: str, case: Case, inbound: InboundMessage, facts: MessageFacts,
                             verified: bool) -> dict[str, Any]:
    """Issue 15: mail to an unverified address never echoes text of an unauthenticated message
    (subject, structure name, free text): only the reference, the date received and the incident
    type / category as enumeration codes (shown by their French labels). A DKIM-signed mail can
    otherwise be made to carry an attacker's words, signed by the agency, to anyone."""
    base = {**region_context(env, region), "received_at_fr": french_datetime(inbound.received_at),
            "incident_type": _enum_code(case.incident_type), "category": _enum_code(case.category),
            "summary_only": not verified}
    if verified:
        return {**base, "case": case_context(case), "subject": _one_line(facts.subject)}
    safe = dict.fromkeys(case_context(case))
    safe.update(reference=case.reference, kind=case.kind, status=case.status, severity=case.severity)
    return {**base, "case": safe, "subject": ""}


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
        verified = _declarant_verified(facts, case.declarant)
        spec = MailSpec(
            template="acknowledgement",
            context=_acknowledgement_context(env, region, case, inbound, facts, verified),
            to=case.declarant, from_address=from_address, from_name=from_name,
            idempotency_key=f"acknowledgement:{inbound.id}",
            in_reply_to=facts.message_id, references=list(facts.in_reply_to) if verified else [],
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


def _replayed_alert(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts, *,
                    region: str, authentic: bool) -> Outcome | None:
    """Once only (processing/replay.py): an alert already received *in this region* opens no
    second case, so it can be neither announced nor relayed twice there. The keys are scoped by
    region: one alert sent to several regional mailboxes opens one case in each, and a copy sent
    to the wrong region first cannot suppress it for the right one. Only an authentic alert
    records its keys: a forged copy arriving first must not make the genuine one look replayed."""
    now = env.clock.now()
    first = (replay.claim(session, facts, inbound.id, now, region=region) if authentic
             else replay.recorded(session, replay.keys_of(facts, region)))
    if first is None:
        return None
    original = session.get(InboundMessage, first.inbound_id)
    case = session.get(Case, original.case_id) if original is not None and original.case_id else None
    if case is not None:
        inbound.case_id = case.id
        append_event(session, case, type="alerte_rejouee", actor=facts.sender.address or "inconnu", at=now,
                     inbound_id=inbound.id,
                     data={"motif": replay.ALERT_REPLAYED, "deja_recue_par_message": first.inbound_id,
                           "message_id": facts.message_id})
    return Outcome("processed", reason=replay.ALERT_REPLAYED, case=case)


def handle_alert(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts) -> Outcome:
    region = facts.region
    if region is None or env.settings.region(region) is None:
        return Outcome("quarantined", "région destinataire inconnue pour l'alerte")
    alert = facts.alert
    assert alert is not None
    replayed = _replayed_alert(env, session, inbound, facts, region=region, authentic=alert.authentic)
    if replayed is not None:
        return replayed
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


def _case_domains(env: Env, session: Session, case: Case) -> set[str]:
    """Domains that speak for the case's establishment: its declarant's and its directory contacts'."""
    found = {case.declarant.rpartition("@")[2].lower()} if case.declarant and "@" in case.declarant else set()
    if case.finess:
        found.update(a.rpartition("@")[2].lower()
                     for a in session.scalars(select(Contact.address).where(Contact.finess == case.finess)))
    acss = env.settings.acss.address.lower()
    found.update({acss.rpartition("@")[2], *(d.lower() for d in env.settings.authentication.acss_domains)})
    return {d for d in found if d}


def status_refusal(env: Env, session: Session, case: Case, facts: MessageFacts) -> str | None:
    """Why a reply may not change the case's status (issue 15), None when it may.

    Case references are sequential: anyone can write « [SSI-ARA-2026-0042] » in a subject. Only a
    reply authenticated (aligned DKIM) from the establishment's or the ACSS's domain may reopen a
    closed case; any other reply is attached to the case and notified, and changes nothing."""
    if not facts.sender.authenticated:
        return "réponse non authentifiée"
    sender = (facts.sender.address or "").strip().lower()
    if sender.rpartition("@")[2] not in _case_domains(env, session, case):
        return f"{sender or 'expéditeur inconnu'} n'appartient pas à l'établissement du dossier"
    return None


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
    match = outbox.find_bounced(session, bounce.verp_token, bounce.original_message_id)
    if match is None:
        return Outcome("processed", reason="rebond ignoré : il ne désigne aucun message envoyé par la passerelle")
    if match.evidence != "verp":
        # Only our random VERP return path proves the DSN travelled that message's path (issue 15).
        return Outcome("processed", reason="rebond non vérifié (reçu hors de l'adresse de retour du message)")
    row = match.row
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
