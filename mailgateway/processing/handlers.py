"""What processing does with a declaration, an alert, an automatic reply or an unknown message.

Each handler runs inside the message's transaction and returns an ``Outcome``. Replies and
commands are the mail commands feature's (``commands/handling.py``), bounces the bulletins
feature's (``bulletins/tracking.py``); ``pipeline.py`` is the whole routing.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import replace
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgateway.bulletins import tracking
from mailgateway.cases import lifecycle, service
from mailgateway.cases.timeline import append_event
from mailgateway.clock import aware, french_datetime
from mailgateway.directory.establishments import (
    EJ_SITES_SHOWN,
    establishment,
    establishments_of_ej,
    finess_of_contact,
)
from mailgateway.directory.known import is_known_domain
from mailgateway.directory.staff import staff_addresses
from mailgateway.dispatch.compose import MailSpec
from mailgateway.dispatch.contexts import case_context, region_context
from mailgateway.dispatch.mailer import Refusal
from mailgateway.mail.analyse import FORWARDED_RELAY, UNRECOGNISED, analyse
from mailgateway.mail.autoreply import is_no_reply
from mailgateway.mail.context import build_context
from mailgateway.mail.dates import detection_fr
from mailgateway.mail.declaration import extract_declaration, says_new_incident, says_portal
from mailgateway.mail.facts import Declaration, MessageFacts, SenderVerdict
from mailgateway.mail.headers import decode_header_value
from mailgateway.mail.labels import load_labels
from mailgateway.mail.parse import message_digest, parse_message, text_digest
from mailgateway.processing import regional, replay
from mailgateway.processing.context import Env, Outcome, agency_domains, notify_staff
from mailgateway.processing.quarantine import released_by_staff
from mailgateway.processing.routing import resolve_region
from mailgateway.processing.worker import context_for
from mailgateway.statuses import CaseStatus
from mailgateway.store.models import Case, Establishment, InboundMessage, OutboundMessage, ReplayKey
from mailgateway.wire import canonical, header_block

# An enumeration code (RANCONGICIEL, ETABLISSEMENT_SANTE): what the label tables map mail text to.
_ENUM_CODE = re.compile(r"[A-Z][A-Z0-9_+]{0,47}")


def _enum_code(value: str | None) -> str | None:
    return value if value and _ENUM_CODE.fullmatch(value) else None


def _understood(decl: Declaration | None, case: Case, inbound: InboundMessage,
                from_portal: bool = False) -> dict[str, Any]:
    """What the acknowledgement restates of the declaration, for the declarant to check, and what
    it could not read (French): an outside tester, an RSSI, could not tell whether « grave » and the
    detection date had been understood, nor that a form in an attachment had not been read.
    Enumeration codes and a date only: safe to send to an address nobody verified."""
    if decl is None:
        return {}
    severity = _enum_code(decl.severity)
    severity = None if severity == "NON_QUALIFIE" else severity
    detected = detection_fr(decl.detected_at, decl.detected_at_as_written, aware(inbound.received_at))
    read = {"type d'incident": decl.incident_type, "gravité": severity, "date de détection": detected,
            "numéro FINESS de l'établissement": decl.finess or case.finess}
    if from_portal:
        del read["gravité"]  # the portal's form has no severity: nothing to ask its declarant
    return {"declared_severity": severity, "detected_fr": detected, "missing": [k for k, v in read.items() if not v],
            "impacts": [code for code in (_enum_code(i) for i in decl.impacts) if code]}


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
    from_portal = _from_portal(facts, case.declarant)
    base = {**region_context(env.settings, region), "received_at_fr": french_datetime(inbound.received_at),
            "incident_type": _enum_code(case.incident_type), "category": _enum_code(case.category),
            "summary_only": not verified, "from_portal": from_portal,
            **_understood(facts.declaration, case, inbound, from_portal)}
    if verified:
        return {**base, "case": case_context(case), "subject": service.one_line(facts.subject)}
    safe = dict.fromkeys(case_context(case))
    safe.update(reference=case.reference, kind=case.kind, status=case.status, severity=case.severity)
    return {**base, "case": safe, "subject": ""}


def _from_portal(facts: MessageFacts, declarant: str | None) -> bool:
    """A notification of the national portal (issue 17): a labelled form sent by a no-reply robot
    for a declarant it names (« Courriel du déclarant »), or one that says it comes from the
    portal. Its acknowledgement must not ask the declarant to declare on the portal again."""
    if facts.extra.get("declaration_by") != "labelled":
        return False
    sender = (facts.sender.address or "").strip().lower()
    if sender and is_no_reply(sender) and bool(declarant) and declarant != sender:
        return True
    return says_portal(facts.subject[:300] + " " + facts.body_text[:2000])


def _ack_held_back(refusals: list[Refusal]) -> dict[str, Any]:
    """An acknowledgement an automatic-reply cap held back (six declarations from one address in
    an hour): the declarant heard nothing, so the staff notification says so, prominently, and
    how to answer by hand (``#repondre`` is a person's mail, not capped). Refused for another
    reason (an address our relay path cannot carry, such as a quoted local part, a no-reply
    address): said just as prominently, with the reason, since ``#repondre`` would meet the same
    refusal (found by an outside tester: only « statut : reçu » hinted at it)."""
    capped = next((r.reason for r in refusals if r.capped), None)
    if capped:
        return {"ack_capped": capped}
    return {"ack_refused": _reason_without_address(refusals[0].reason)} if refusals else {}


NO_DECLARANT = ("aucune adresse de déclarant utilisable (l'en-tête From ne contient pas une seule adresse "
                "lisible et authentifiable)")


def _sender_as_written(inbound: InboundMessage) -> dict[str, Any]:
    """The From field as the mail wrote it and the envelope sender, for staff to answer by hand."""
    try:
        found = email.message_from_bytes(header_block(inbound.raw or b""), policy=email.policy.compat32).get("From")
        written = " ".join(decode_header_value(found).split())[:300] if found is not None else ""
    except Exception:  # a header staff are told about; never a reason to fail the declaration
        written = ""
    return {"from_header": written or "(absent)", "envelope_from": (inbound.mail_from or "")[:300]}


def _reason_without_address(reason: str) -> str:
    """« adresse invalide : '…' » → « adresse invalide »: the banner says why, never the address
    itself, which the declarant wrote (« "URGENT ARS : revalidez votre session sur …"@chu… » in
    bold red at the top of a signed notification: found by an outside tester). The address is
    on the « Déclarant » line below."""
    head = reason.split(" : ", 1)[0]
    return "adresse refusée" if "@" in head else head


def _establishment(session: Session, decl: Declaration, sender: SenderVerdict | None = None,
                   ) -> tuple[Declaration, Establishment | None, list[Establishment]]:
    """The establishment (FINESS ET) of a declaration, as the directory tells it.

    A declaration that gives no number, from an authenticated address the directory holds as one
    establishment's contact, is that establishment's (an outside tester: three « CH de Laval »
    cases from its RSSI's known address, no FINESS, never flagged as possible duplicates). An
    unauthenticated From proves nothing: it never names the establishment.

    The directory is keyed by the géographique number (ET) and knows each one's juridique
    number (EJ). When the declaration's number is not an ET: another number of the mail that is
    one wins; else an EJ with exactly one ET in the directory is that ET (several: the EJ is kept,
    staff choose: they are returned, for the staff notification to list). The EJ is recorded
    either way; the category of a resolved ET fills a declaration that gave none.
    """
    if not decl.finess and sender is not None and sender.authenticated and sender.address:
        known = finess_of_contact(session, sender.address)
        if known is not None:
            # The directory names it, not words of the text (an outside tester: « un poste du
            # laboratoire » made the CH's case a laboratory's, « l'EHPAD voisin » its structure).
            decl = replace(decl, finess=known, structure=None, category=None)
    if not decl.finess:
        return decl, None, []
    est = establishment(session, decl.finess)
    if est is None:
        for other in decl.finess_others:
            candidate = establishment(session, other)
            if candidate is not None:
                est = candidate
                break
    if est is None:
        ets = establishments_of_ej(session, decl.finess)
        if len(ets) == 1:
            est = ets[0]
        elif ets:
            return replace(decl, finess_ej=decl.finess_ej or decl.finess), None, ets
    if est is None:
        return decl, None, []
    ej = decl.finess_ej or (decl.finess if decl.finess != est.finess else None) or est.finess_ej
    return replace(decl, finess=est.finess, finess_ej=ej, departement=est.departement or decl.departement,
                   category=decl.category or est.category), est, []



def handle_declaration(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts) -> Outcome:
    region = facts.region
    if region is None or env.settings.region(region) is None:
        return Outcome("quarantined", "région destinataire inconnue : aucune boîte SSI régionale ne correspond")
    replayed = _replayed_declaration(env, session, inbound, facts, region=region)
    if replayed is not None:
        return replayed
    earlier = _received_before(env, session, facts, region)
    if earlier is not None:
        # An agent forwarding (as an attachment) an establishment's declaration that reached the
        # SSI address too: attached to its case, no second case, no second acknowledgement (an
        # outside attacker: a new reference was sent to the establishment and the agent's commands
        # ran on the copy). The agent is told by the receipt (processing/pipeline.py).
        service.record_received(session, earlier, inbound, facts, at=env.clock.now())
        append_event(session, earlier, type="declaration_transferee", actor=str(facts.extra["transmis_par"]),
                     at=env.clock.now(), inbound_id=inbound.id, data={"transmis_par": facts.extra["transmis_par"],
                                                                      "deja_recue": True})
        return Outcome("processed", reason=FORWARDED_RECEIVED_BEFORE, case=earlier)
    decl = facts.declaration
    assert decl is not None
    # Directory rows are never written while processing: reading them needs no flush of this
    # message's pending changes first (issue 19: each autoflush is a unit of work of its own).
    with session.no_autoflush:
        decl, est, sites = _establishment(session, decl, facts.sender)
    facts = replace(facts, declaration=decl)
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
    # An agency colleague who forwarded an establishment's declaration: recorded, not answered.
    forwarder = facts.extra.get("transmis_par")
    forwarded_mid = facts.extra.get("forwarded_message_id") if forwarder else None
    if isinstance(forwarder, str) and forwarder:
        case.fields["declaration"]["transmis_par"] = forwarder
        if isinstance(forwarded_mid, str) and forwarded_mid:
            # The establishment's own mail, which it has: what our mail to it answers (the
            # colleague's forward it never saw is not; an outside tester, an agent: the
            # acknowledgement and every #repondre came unthreaded).
            case.fields["declaration"]["message_transmis"] = forwarded_mid
    now = env.clock.now()
    if decl.forwarded_author:
        # Both on the case: who wrote to us (answered) and the author of what was forwarded (never,
        # unless a colleague of the agency transmitted it: then that author is the declarant).
        data = {"declarant": case.declarant, "auteur_du_message_transfere": decl.forwarded_author}
        if forwarder:
            data["transmis_par"] = forwarder
        append_event(session, case, type="declaration_transferee", actor="passerelle", at=now, data=data)
    # A declaration for the same structure as an open case is linked to it, and staff are told.
    window = timedelta(hours=env.settings.cases.duplicate_window_hours)
    verified = bool(case.declarant) and _declarant_verified(facts, case.declarant or "")
    if verified:
        case.fields["declarant_authentifie"] = True  # what a later declaration without FINESS is matched on
    # Without a FINESS, the declarant stands for the structure: only one who authenticated, and
    # never a colleague of the agency (an agent forwarding two unrelated phishing mails is no
    # structure: an outside tester).
    by_declarant = verified and not forwarder and (case.declarant or "").rpartition("@")[2] not in agency_domains(
        env.settings)
    # No autoflush for the lookup: this case's row was flushed by new_case (its id excludes it),
    # and every other case was written by an earlier savepoint or transaction.
    with session.no_autoflush:
        other = service.find_duplicate(session, case, window, declarant=case.declarant if by_declarant else None)
        candidates = service.other_open_cases(session, case, window, other) if other is not None else []
    refusals: list[Refusal] = []  # why the acknowledgement was not sent, if it was not
    if case.declarant:
        from_address, from_name = env.mailer.from_identity(region)
        context = _acknowledgement_context(env, region, case, inbound, facts, verified)
        if verified and other is not None and other.declarant == case.declarant and len(candidates) == 1:
            # The same authenticated declarant sent this structure's declaration before (a resend, a
            # correction): told which case already holds it (found by an outside tester: three
            # references for one incident). Never to anyone else: it would tell a stranger that
            # this structure has an incident open.
            context["earlier_case"] = other.reference
        spec = MailSpec(
            template="acknowledgement",
            context=context,
            to=case.declarant, from_address=from_address, from_name=from_name,
            idempotency_key=f"acknowledgement:{inbound.id}",
            # Not threaded under a colleague's internal forward, which the establishment never saw:
            # under its own forwarded mail, when it had a Message-ID.
            in_reply_to=(forwarded_mid if isinstance(forwarded_mid, str) and forwarded_mid else None) if forwarder
            else facts.message_id,
            references=[] if forwarder else facts.answer_references() if verified else [],
        )
        # From an address that authenticated under a known domain: only the per-case cap
        # (Mailer.send ``vouched``).
        vouched = verified and is_known_domain(env.settings, session, facts.sender.auth_domain or facts.sender.domain,
                                               facts.sender.address)
        if env.mailer.send(session, spec, kind="accuse_reception", case=case, auto_reply=True, verified=verified,
                           vouched=vouched, refusals=refusals) is not None:
            case.acknowledged_at = now
            service.change_status(session, case, CaseStatus.PRIS_EN_COMPTE, actor="passerelle", at=now,
                                  reason="accusé de réception envoyé")
    else:
        append_event(session, case, type="accuse_reception_impossible", actor="passerelle", at=now,
                     data={"motif": "aucune adresse de déclarant utilisable"})
        # Staff are told as loudly as for a refused acknowledgement, with what the mail said of its
        # sender (an outside tester: « From: Lemaire, Sylvie <…> », two addresses by RFC 5322, got
        # no acknowledgement and a notification that only said « Déclarant : inconnu »).
        refusals.append(Refusal(NO_DECLARANT, capped=False))
    if other is not None:
        service.link(session, case, other, type="doublon_possible", actor="passerelle", at=env.clock.now())
    extra: dict[str, Any] = {"duplicate_of": other.reference, "duplicate_by": "FINESS" if case.finess else
                             "déclarant"} if other else {}
    if len(candidates) > 1:  # no incident type to choose by: every open case of the structure
        extra["duplicate_candidates"] = [{"reference": c.reference, "incident_type": c.incident_type}
                                         for c in candidates]
    if sites:  # an EJ of several sites: which one is for staff to find out
        extra["ej_sites"] = {"finess_ej": decl.finess_ej, "more": len(sites) > EJ_SITES_SHOWN, "sites": [
            {"name": s.name, "finess": s.finess, "departement": s.departement} for s in sites[:EJ_SITES_SHOWN]]}
    extra.update(_ack_held_back(refusals))
    if not case.declarant:
        extra.update(_sender_as_written(inbound))
    extra.update(regional.out_of_region(env, session, case, inbound, facts))  # « hors région »
    notify_staff(env, session, case, inbound, facts, extra=extra)
    return Outcome("processed", case=case)


FORWARDED_RECEIVED_BEFORE = "déclaration transmise par un agent, déjà reçue directement"


def _received_before(env: Env, session: Session, facts: MessageFacts, region: str) -> Case | None:
    """The case the establishment's own mail opened, when an agency colleague forwards that mail
    and it reached this region already: attached, the case it opened itself (its origin
    Message-ID, ``extra["forwarded_message_id"]``); inline (no Message-ID), one of the declarant's
    cases of the duplicate window; either way from the same declarant, who authenticated then
    (``declarant_authentifie``), still standing (not merged away). A Message-ID alone proves
    nothing: a stranger sending first under the genuine one made the genuine declaration vanish
    into their case, and an agent's ``#repondre`` went to them (an outside attacker); a merged case
    sent it to the other declarant."""
    mid = facts.extra.get("forwarded_message_id")
    digest = facts.extra.get("forwarded_text_digest")
    declarant = (facts.declaration.declarant or "").strip().lower() if facts.declaration else ""
    if not facts.extra.get("transmis_par") or not isinstance(digest, str) or not declarant:
        return None
    c = Case  # origin_message_id and mid: both as analysis reads them (mail/headers.py message_ids)
    # Attached: the case its Message-ID opened. Inline (no Message-ID): the declarant's latest
    # cases of the duplicate window, whichever opened with the same text.
    by_mid = isinstance(mid, str) and bool(mid)
    since = env.clock.now() - timedelta(hours=env.settings.cases.duplicate_window_hours)
    with session.no_autoflush:
        found = session.scalars(select(c).where(
            c.origin_message_id == mid if by_mid else c.opened_at >= since, c.region == region,
            c.declarant == declarant, c.merged_into_id.is_(None))
            .order_by(c.id if by_mid else c.id.desc()).limit(5)).all()
        return next((case for case in found if (case.fields or {}).get("declarant_authentifie")
                     and _says_what_opened(session, case, digest, whole=by_mid)), None)


def _says_what_opened(session: Session, case: Case, digest: object, *, whole: bool) -> bool:
    """Whether the forwarded copy's text is the text of the mail that opened ``case``. Message-ID
    and From prove nothing: an unsigned copy of the genuine declaration, its Message-ID and From
    kept and its words changed (« fausse alerte, écrivez à … »), forwarded by an agent, joined the
    genuine case and was said « déjà reçue directement » (an outside attacker). A copy that
    differs is processed as the new declaration it is (and flagged as a possible duplicate)."""
    if not isinstance(digest, str):
        return False
    raw = session.scalar(select(InboundMessage.raw).where(InboundMessage.case_id == case.id)
                         .order_by(InboundMessage.id).limit(1))
    if raw is None:
        return False
    parsed = parse_message(canonical(raw))
    # Attached, the whole message is compared (``message_digest``); inline, its text alone.
    return (message_digest(parsed) if whole else text_digest(parsed.text())) == digest


def _replayed_declaration(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts, *,
                          region: str) -> Outcome | None:
    """Once only (processing/replay.py, ``declaration_keys``): a declaration already received in
    this region — its signature, or the same From, Message-ID and body behind other headers (a
    relay's retry, one more ``Received:``; an unsigned copy of a signed one, never the reverse) —
    opens no second case, sends no second acknowledgement and no second
    staff notification: it is attached to the first one's case, the timeline says so. Found by an
    outside tester: one signed declaration replayed with an added header opened a case and
    notified staff each time (a known domain is exempt from the notification caps)."""
    now = env.clock.now()
    looked_up, recorded = replay.declaration_keys(facts, inbound.raw or b"", region)
    first = replay.claim_keys(session, recorded, inbound.id, now, looked_up=looked_up)
    if first is None:
        return None
    case = _attach_replay(env, session, inbound, facts, first, "declaration_rejouee", replay.DECLARATION_REPLAYED)
    if case is None:  # the first one's case is gone: this one is processed as new
        return None
    return Outcome("processed", reason=replay.DECLARATION_REPLAYED, case=case)


def _attach_replay(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts, first: ReplayKey,
                   event: str, motif: str) -> Case | None:
    """The case of the message that acted first, with this copy attached and on its timeline."""
    original = session.get(InboundMessage, first.inbound_id)
    case = session.get(Case, original.case_id) if original is not None and original.case_id else None
    if case is not None:
        inbound.case_id = case.id
        append_event(session, case, type=event, actor=facts.sender.address or "inconnu", at=env.clock.now(),
                     inbound_id=inbound.id,
                     data={"motif": motif, "deja_recue_par_message": first.inbound_id,
                           "message_id": facts.message_id})
    return case


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
    case = _attach_replay(env, session, inbound, facts, first, "alerte_rejouee", replay.ALERT_REPLAYED)
    return Outcome("processed", reason=replay.ALERT_REPLAYED, case=case)




def handle_alert(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts) -> Outcome:
    region = facts.region
    if region is None or env.settings.region(region) is None:
        return Outcome("quarantined", "région destinataire inconnue pour l'alerte")
    alert = facts.alert
    assert alert is not None
    if not alert.authentic and facts.extra.get("quotes_our_mail"):
        # Our own relay or bulletin forwarded back (an answer from an address we did not send it to,
        # a colleague's forward): never an alert, nor a « nouvelle version » of the one relayed.
        return Outcome("quarantined", FORWARDED_RELAY)
    replayed = _replayed_alert(env, session, inbound, facts, region=region, authentic=alert.authentic)
    if replayed is not None:
        return replayed
    title = service.one_line(alert.title or facts.subject, 160)
    case = service.new_case(session, region=region, kind="alert", inbound=inbound, facts=facts, title=title,
                            at=env.clock.now())
    case.tlp = alert.tlp
    case.fields = {"alert": alert.to_json()}
    # Where each indicator came from (the mail's text, an attached STIX bundle or MISP event):
    # kept with the case so the exported files and staff can tell (mail/indicators_in.py).
    sources = facts.extra.get("indicator_sources")
    if sources:
        case.fields["indicator_sources"] = sources
    now = env.clock.now()
    if alert.authentic:
        service.change_status(session, case, CaseStatus.A_DIFFUSER, actor="passerelle", at=now,
                              reason="alerte authentifiée")
    else:
        # An unauthenticated alert is held, staff are warned, the message is kept.
        append_event(session, case, type="alerte_non_authentifiee", actor="passerelle", at=now,
                     data={"motif": facts.sender.detail or "expéditeur non authentifié"})
    # One case per receiving region, linked by the alert reference; a second version flagged.
    extra = regional.link_alert(env, session, case, inbound, facts)
    caution = _alert_caution(env, inbound, facts, region) if alert.authentic else []
    if caution:
        append_event(session, case, type="alerte_a_verifier", actor="passerelle", at=now, data={"motifs": caution})
        extra = {**extra, "alert_caution": caution}
    notify_staff(env, session, case, inbound, facts, extra=extra)
    return Outcome("processed", case=case)


def _alert_caution(env: Env, inbound: InboundMessage, facts: MessageFacts, region: str) -> list[str]:
    """What staff should check before relaying an authentic alert (French): a signature proves who
    wrote it, not that it is current nor that it was meant for this agency — a genuine alert can
    be re-sent to every regional mailbox months later (outside attack). Flags, not refusals: the
    cell also writes to the agencies in Bcc, and a resend may be deliberate."""
    found: list[str] = []
    sent, _ = replay.sent_at(inbound.raw or b"")
    if sent is not None:
        age = env.clock.now() - sent
        if age.total_seconds() > env.settings.authentication.max_alert_age_days * 86400:
            found.append(f"alerte ancienne : datée du {french_datetime(sent)}, il y a {age.days} jours")
    reg = env.settings.region(region)
    signed_to = "to" in facts.sender.signed_headers  # an unsigned To proves nothing either way
    # To and Cc as far as they are signed: an unsigned Cc naming this mailbox proves nothing (an
    # outside attacker added one to a genuine alert re-sent here; no caution was shown).
    signed = facts.extra.get("signed_recipients")
    addressed = {str(a).strip().lower() for a in (signed if isinstance(signed, list) else facts.recipients)}
    if signed_to and reg is not None and reg.address.lower() not in addressed:
        found.append(f"cette boîte ({reg.address}) n'est ni dans le « À » ni dans le « Cc » signés de l'alerte "
                     "(copie cachée, ou message réinjecté par un tiers)")
    return found


def handle_silently(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts) -> Outcome:
    """Auto-replies and loops: never answered (RFC 3834 §2), attached to their case if threaded."""
    case = service.threaded_case(session, facts)
    if case is not None:
        inbound.case_id = case.id
        append_event(session, case, type="message_automatique", actor=facts.sender.address or "inconnu",
                     at=env.clock.now(), inbound_id=inbound.id,
                     data={"type": facts.kind, "objet": service.one_line(facts.subject)})
    return Outcome("processed", case=case)


def relay_declaration_prehandler(env: Env, session: Session, inbound: InboundMessage,
                                 facts: MessageFacts) -> Outcome | None:
    """A reply to a relayed alert or a bulletin that reads as a declaration (« une secrétaire a
    envoyé le formulaire aux fraudeurs ») opens an incident case linked to the alert's case; the
    acknowledgement was counted by ``tracking.acknowledgement_prehandler``. Not such: None."""
    # Read in the reply's new text only: its subject echoes ours (« RE: Campagne d'hameçonnage »).
    decl = facts.extra.get("reply_declaration")
    answers = bool(facts.in_reply_to) or bool(facts.extra.get("quotes_our_mail"))
    if facts.kind in ("command", "bounce", "loop", "auto_reply") or not answers or facts.extra.get("courtesy"):
        return None
    row = tracking.answered_message(session, facts)  # threaded, or a forward of our relay
    if row is None or tracking.from_staff(env, session, row, facts):
        return None  # staff are never an establishment declaring (nor its declarant)
    alert_case = tracking.alert_case_of(session, row)
    if not isinstance(decl, Declaration):
        # « Nous avons observé une connexion depuis 203.0.113.45 »: a sighting of the alert's
        # indicators is an incident to follow, whatever words it uses.
        sighted = tracking.sighted_indicators(session, alert_case, facts.new_text)
        if not sighted:
            return None
        decl = _sighting(env, session, row, facts)
        facts = replace(facts, extra={**facts.extra, "indicateurs_observes": sighted})
    # Not an alert, whatever analysis read in the relay it quotes: the staff notice of this case
    # warned of an « ALERTE NON AUTHENTIFIÉE » with our own relay subject as its title (outside tester).
    as_declaration = replace(facts, kind="declaration", declaration=decl, case_ref=None, alert=None)
    outcome = handle_declaration(env, session, inbound, as_declaration)
    if outcome.case is not None and alert_case is not None and alert_case.id != outcome.case.id:
        service.link(session, outcome.case, alert_case, type="dossier_lie", actor="passerelle", at=env.clock.now())
    return outcome


def new_incident_in_reply_prehandler(env: Env, session: Session, inbound: InboundMessage,
                                     facts: MessageFacts) -> Outcome | None:
    """A reply on a closed case that declares another incident (« c'est un NOUVEL incident, sans
    lien avec le précédent », of another type or at another establishment) opens its own case,
    linked to the one it answers. An outside tester, an RSSI: a ransomware at another site, written in reply to the
    closed phishing case of the first, reopened that case under its old title — no case, no
    acknowledgement, no deadlines, nothing to CERT Santé. Not such: None."""
    decl = facts.extra.get("reply_declaration")
    if (facts.kind != "reply" or not isinstance(decl, Declaration) or not decl.incident_type
            or not says_new_incident(facts.new_text)):
        return None  # an incident of its own names what it is
    answered = service.threaded_case(session, facts)
    if answered is None or answered.kind != "incident" or lifecycle.is_open(answered.status):
        # On an open case, news is of that incident whatever words it uses (« afin d'éviter tout
        # nouvel incident », « en cas de nouvel incident, nous vous recontacterons »: an outside
        # tester saw seven follow-ups open seven cases); staff read it there.
        return None
    if decl.incident_type == answered.incident_type and not (decl.finess and decl.finess != answered.finess):
        return None  # the same kind of incident at the same place: the closed one again (it reopens)
    sender = (facts.sender.address or "").strip().lower()
    if sender and sender in staff_addresses(env.settings, session, answered.region):
        return None  # staff writing in a thread are not declaring
    as_declaration = replace(facts, kind="declaration", declaration=decl, case_ref=None)
    outcome = handle_declaration(env, session, inbound, as_declaration)
    if outcome.case is not None and outcome.case.id != answered.id:
        service.link(session, outcome.case, answered, type="dossier_lie", actor="passerelle", at=env.clock.now())
    return outcome


def _sighting(env: Env, session: Session, row: OutboundMessage, facts: MessageFacts) -> Declaration:
    """The declaration an establishment's sighting makes: read from its own text, the
    establishment (FINESS) the relayed message was sent to when the text names none."""
    ctx = build_context(env.settings)
    labels = load_labels(ctx.extra_field_labels, ctx.extra_incident_types, ctx.extra_categories,
                         ctx.extra_severities, ctx.extra_alert_targets, ctx.extra_courtesy)
    decl = extract_declaration(facts.new_text, "", ctx, labels, facts.sender.address, facts.reply_to, None)
    rec = tracking.recipient_of(session, row)
    if not decl.finess and rec is not None:
        decl = replace(decl, finess=rec.finess)
    return decl


def courtesy_prehandler(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts) -> Outcome | None:
    """« Merci, bonne journée » on a closed case: attached to its timeline, the case stays closed
    and nobody is notified. A substantive reply goes on to the reply handler (``[cases]
    reply_to_closed``: reopen or link). Courtesy: ``mail/courtesy.py``, conservative."""
    if facts.kind != "reply" or not facts.extra.get("courtesy"):
        return None
    case = service.threaded_case(session, facts)
    if case is None or lifecycle.is_open(case.status):
        return None
    service.record_received(session, case, inbound, facts, at=env.clock.now())
    append_event(session, case, type="remerciement_recu", actor=facts.sender.address or "inconnu",
                 at=env.clock.now(), inbound_id=inbound.id,
                 data={"motif": "message de courtoisie : le dossier reste clos"})
    return Outcome("processed", reason="message de courtoisie sur un dossier clos : rattaché, dossier non rouvert",
                   case=case)


def handle_unknown(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts) -> Outcome:
    """Quarantined with its reason; unless staff released it from quarantine as nothing recognised
    (``#quarantaine liberer N``, ``mailgateway quarantine release N``): it is then a declaration
    to qualify, its case opened and its sender acknowledged as for any declaration. Before, a
    release analysed it again, found nothing again and put it back in quarantine: a declaration
    sent as a form attached alone could never become a case (outside tester). Analysed again here,
    in this process: rare, and within the budget the first analysis kept."""
    if facts.quarantine_reason == UNRECOGNISED and released_by_staff(session, inbound.id):
        again = resolve_region(env.settings, analyse(inbound.raw, context_for(env.settings, session), facts.sender,
                                                     released=True),
                               inbound.region, inbound.rcpt_tos or ())
        if again.kind == "declaration":
            inbound.kind = again.kind
            return handle_declaration(env, session, inbound, again)
    reason = facts.quarantine_reason or "message non reconnu (ni déclaration, ni alerte, ni réponse)"
    return Outcome("quarantined", reason)
