"""What processing does with a declaration, an alert, an automatic reply or an unknown message.

Each handler runs inside the message's transaction and returns an ``Outcome``. Replies and
commands are the mail commands feature's (``commands/handling.py``), bounces the bulletins
feature's (``bulletins/tracking.py``); ``pipeline.py`` is the whole routing.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from mailgateway.cases import service
from mailgateway.cases.timeline import append_event
from mailgateway.clock import french_datetime
from mailgateway.dispatch.compose import MailSpec
from mailgateway.dispatch.contexts import case_context, region_context
from mailgateway.mail.facts import MessageFacts
from mailgateway.processing import replay
from mailgateway.processing.context import Env, Outcome, notify_staff
from mailgateway.statuses import CaseStatus
from mailgateway.store.models import Case, Establishment, InboundMessage

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
    """Mail to an unverified address never echoes text of an unauthenticated message
    (subject, structure name, free text): only the reference, the date received and the incident
    type / category as enumeration codes (shown by their French labels). A DKIM-signed mail can
    otherwise be made to carry an attacker's words, signed by the agency, to anyone."""
    base = {**region_context(env.settings, region), "received_at_fr": french_datetime(inbound.received_at),
            "incident_type": _enum_code(case.incident_type), "category": _enum_code(case.category),
            "summary_only": not verified}
    if verified:
        return {**base, "case": case_context(case), "subject": service.one_line(facts.subject)}
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
    title = " — ".join(x for x in (structure, decl.incident_type) if x) or service.one_line(facts.subject, 120)
    case = service.new_case(session, region=region, kind="incident", inbound=inbound, facts=facts, title=title,
                            at=env.clock.now())
    case.finess = decl.finess
    case.establishment = structure
    case.category = decl.category or (est.category if est else None)
    case.incident_type = decl.incident_type
    case.nature = decl.nature
    case.fields = {"declaration": decl.to_json()}
    case.declarant = service.declarant_of(facts)
    now = env.clock.now()
    if case.declarant:
        from_address, from_name = env.mailer.from_identity(region)
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
            service.change_status(session, case, CaseStatus.PRIS_EN_COMPTE, actor="passerelle", at=now,
                                  reason="accusé de réception envoyé")
    else:
        append_event(session, case, type="accuse_reception_impossible", actor="passerelle", at=now,
                     data={"motif": "aucune adresse de déclarant utilisable"})
    # A declaration for the same structure as an open case is linked to it, and staff are told.
    window = timedelta(hours=env.settings.cases.duplicate_window_hours)
    other = service.flag_duplicate(session, case, window, at=env.clock.now())
    notify_staff(env, session, case, inbound, facts, extra={"duplicate_of": other.reference} if other else {})
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
    title = service.one_line(alert.title or facts.subject, 160)
    case = service.new_case(session, region=region, kind="alert", inbound=inbound, facts=facts, title=title,
                            at=env.clock.now())
    case.tlp = alert.tlp
    case.fields = {"alert": alert.to_json()}
    now = env.clock.now()
    if alert.authentic:
        service.change_status(session, case, CaseStatus.A_DIFFUSER, actor="passerelle", at=now,
                              reason="alerte authentifiée")
    else:
        # An unauthenticated alert is held, staff are warned, the message is kept.
        append_event(session, case, type="alerte_non_authentifiee", actor="passerelle", at=now,
                     data={"motif": facts.sender.detail or "expéditeur non authentifié"})
    notify_staff(env, session, case, inbound, facts)
    return Outcome("processed", case=case)


def handle_silently(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts) -> Outcome:
    """Auto-replies and loops: never answered (RFC 3834 §2), attached to their case if threaded."""
    case = service.threaded_case(session, facts)
    if case is not None:
        inbound.case_id = case.id
        append_event(session, case, type="message_automatique", actor=facts.sender.address or "inconnu",
                     at=env.clock.now(), inbound_id=inbound.id,
                     data={"type": facts.kind, "objet": service.one_line(facts.subject)})
    return Outcome("processed", case=case)


def handle_unknown(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts) -> Outcome:
    reason = facts.quarantine_reason or "message non reconnu (ni déclaration, ni alerte, ni réponse)"
    return Outcome("quarantined", reason)
