"""Cases handled by mail: staff commands, replies from establishments, duplicate declarations.

``processing/pipeline.py`` routes two kinds of message here:

- ``handle_command``: a mail of ``#commande`` lines. Commands
  count only from an *authenticated* member of the staff of the case's region ([[staff]] and the
  imported staff list — re-checked here against the database, which analysis cannot see). Every
  command mail from staff gets a receipt listing what was applied and what was refused and why;
  a refused mail that looks like it comes from staff (agency domain, staff lists) gets a receipt
  saying why nothing happened; anyone else is ignored (an establishment's "#..." line is just text
  of its reply). Once only: a command mail dated too long before its reception (or
  undated) is refused, and one whose DKIM signature or Message-ID already ran commands is a
  replay, refused (``processing/replay.py``); the keys are recorded with the commands they run.
- ``handle_reply``: a reply from an establishment (or the national cell)
  is attached to its case and the assignee (else the region's staff) is notified; a reply to a
  closed case reopens it or opens a linked case (``[cases] reply_to_closed``).

A new declaration for the same FINESS as an open case of the last ``[cases]
duplicate_window_hours`` is linked to it by processing (``cases.service.flag_duplicate``);
``#fusionner REF`` merges.

Every change is on the timeline with the sender's address as actor.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgateway.cases import lifecycle, service
from mailgateway.cases.service import CaseError
from mailgateway.cases.timeline import append_event
from mailgateway.clock import aware, french_datetime
from mailgateway.commands import closure, receipts, reply_notice
from mailgateway.commands.table import COMMANDS, HELP_POINTER, Ctx, help_text, no_case_reason, transition_refusal
from mailgateway.directory.staff import all_staff, staff_addresses
from mailgateway.dispatch.wording import nombre
from mailgateway.mail.analyse import FORWARDED_RELAY, UNRECOGNISED, coverage_reason, other_case_reason
from mailgateway.mail.commands import (
    HINT_UNKNOWN,
    REASON_INHERITED_SUBJECT,
    REASON_ONE_PER_LINE,
    REASON_UNKNOWN,
    WHOLE_TEXT,
    Hint,
    command_hints,
    repeats,
    signature_part,
)
from mailgateway.mail.declaration import says_new_incident
from mailgateway.mail.facts import Command, MessageFacts
from mailgateway.mail.headers import id_forms
from mailgateway.mail.labels import load_labels
from mailgateway.processing import replay
from mailgateway.processing.context import (
    REPLY_NOTICE,
    Env,
    Outcome,
    agency_domains,
    noticed_inbound,
    notify_staff,
)
from mailgateway.store.models import (
    Case,
    Confirmation,
    Contact,
    InboundMessage,
    OutboundMessage,
    ReplayKey,
    StaffMember,
)

__all__ = ["handle_command", "handle_reply", "status_refusal"]

QUERIES = frozenset({"ouverts", "retards"})


# --- who may command ---------------------------------------------------------------------------


def looks_like_staff(env: Env, session: Session, address: str) -> bool:
    """Claims to be staff (a From header proves nothing): listed, or in the agency's domains."""
    return address in all_staff(env.settings, session) or address.rpartition("@")[2] in agency_domains(env.settings)


def _staff_regions(env: Env, session: Session, address: str) -> set[str]:
    found = {s.region for s in env.settings.staff if s.address.lower() == address}
    found.update(session.scalars(select(StaffMember.region).where(StaffMember.address == address)))
    return found


def _query_region(env: Env, session: Session, facts: MessageFacts, sender: str) -> str | None:
    """Region of a command that names no case: the SSI mailbox written to, else the sender's own."""
    regions = _staff_regions(env, session, sender)
    if facts.region and (facts.region in regions or not regions):
        return facts.region
    return next(iter(regions)) if len(regions) == 1 else facts.region


def _refusal(env: Env, session: Session, facts: MessageFacts, sender: str, region: str | None) -> str | None:
    if not sender:
        return "expéditeur absent : commande ignorée"
    if not facts.sender.authenticated:
        detail = facts.sender.detail or "signature DKIM absente ou invalide"
        return f"message non authentifié : commande ignorée ({detail})"
    if region is None:
        return "région inconnue : commande ignorée"
    if sender not in staff_addresses(env.settings, session, region):
        return f"{sender} ne fait pas partie des agents SSI de la région {region} : commande ignorée"
    return None


def _refused_by_analysis(facts: MessageFacts, case: Case | None) -> str | None:
    """What analysis refused for the whole mail, processing refuses too (one reading of a message):
    the thread names one case and the subject another, or unsigned headers would have chosen
    another case than the signed ones (mail/analyse.py). Without a case, each command is refused
    with ``no_case_reason``, which says more."""
    if case is None:
        return None
    steered = facts.extra.get("steered_by_uncovered")
    if isinstance(steered, list) and steered:
        return coverage_reason([str(name) for name in steered])
    other = facts.extra.get("subject_names_other_case")
    if isinstance(other, str) and other:
        return other_case_reason(facts.case_ref, other)
    return None


def _stale(env: Env, inbound: InboundMessage, facts: MessageFacts) -> str | None:
    """A command mail dated too long before its reception (or undated) acts on nothing."""
    return replay.command_date_refusal(inbound.raw, facts, aware(inbound.received_at),
                                       env.settings.authentication.max_command_age_days)


def _case_from_token(session: Session, commands: tuple[Command, ...]) -> Case | None:
    """``#confirmer <jeton>`` in a new mail: the pending confirmation names its case."""
    for cmd in commands:
        if cmd.name in ("confirmer", "annuler") and cmd.args:
            pending = session.get(Confirmation, cmd.args[0].lower())
            if pending is not None and pending.case_id is not None:
                return session.get(Case, pending.case_id)
    return None


# --- commands ----------------------------------------------------------------------------------


def handle_command(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts,
                   opened: Case | None = None, *, received_before: bool = False) -> Outcome:
    """The commands of ``facts`` on the case they answer, or on ``opened``: the case the same mail
    just opened (an agent's forward of a declaration, commands in the cover note), or, with
    ``received_before``, the case of the forwarded declaration received directly before."""
    sender = (facts.sender.address or "").strip().lower()
    case = opened or service.threaded_case(session, facts) or _case_from_token(session, facts.commands)
    region = case.region if case is not None else _query_region(env, session, facts, sender)
    refusal = (_refusal(env, session, facts, sender, region) or _stale(env, inbound, facts)
               or _refused_by_analysis(facts, case))
    if refusal is not None:
        return _refused(env, session, inbound, facts, case, region, sender, refusal)
    assert region is not None
    # Once only, per region (the case's, else the one the mail was processed for): the keys are
    # recorded in this transaction, the one that runs the commands.
    first = replay.claim(session, facts, inbound.id, env.clock.now(), region=region)
    if first is not None:
        return _refused(env, session, inbound, facts, case, region, sender, replay.COMMAND_REPLAYED,
                        first=first)
    if case is not None and opened is None:
        service.record_received(session, case, inbound, facts, at=env.clock.now())
    ctx = Ctx(env=env, session=session, inbound=inbound, facts=facts, case=case, actor=sender, region=region,
              now=env.clock.now())
    results: list[dict[str, Any]] = []
    ran: list[Command] = []
    answered = _answered_case(session, facts, case) if opened is None else None
    followed = _followed(answered, case)
    writer = _answered_writer(session, facts, case) if opened is None else None
    for cmd in facts.commands:
        # The same command in the Subject and in the body (Outlook users write both) runs once:
        # the second is reported as a duplicate, not as a refusal of the first's work; the one
        # that says more runs (mail/analyse.py puts the Subject's after the body's then).
        if any(repeats(cmd, other) for other in ran):
            results.append(_duplicate(cmd))
            continue
        ran.append(cmd)
        other_declarant = (_other_declarant(followed, answered, case, cmd)
                           or _other_writer(writer, case, cmd))
        results.append(other_declarant if other_declarant is not None else _run(ctx, cmd))
    results.extend(_under_signature(facts))
    # A case this mail closed or merged: its declarant is told ([cases] notify_declarant_on_close).
    closure.notify_declarants(env, session, [case, ctx.case], actor=sender, at=ctx.now)
    for index, (query, cases, detail) in enumerate(ctx.digests):
        receipts.send_digest(env, session, inbound, facts, index=index, to=sender, region=region,
                                 query=query, cases=cases, detail=detail)
    # A query answered by its digest needs no separate receipt; anything else gets one.
    only_queries = bool(ctx.digests) and all(
        r.get("duplicate") or (r["applied"] and (r["name"] in QUERIES or (r["name"] == "statut" and r["digest"])))
        for r in results)
    if not only_queries:
        receipts.send_receipt(env, session, inbound, facts, to=sender, region=region, case=ctx.case,
                                  results=results, confirmation=ctx.confirmation,
                                  confirmations=ctx.confirmations,
                                  help_text=_help(ctx), followed=followed,
                                  outsiders=_outsiders(env, facts),
                                  received_before=case.reference if received_before and case is not None else None)
    applied = sum(1 for r in results if r["applied"] and not r["pending"])
    done = nombre(applied, "commande appliquée", "commandes appliquées")
    return Outcome("processed", reason=f"{done} sur {len(results)}", case=ctx.case)


def _outsiders(env: Env, facts: MessageFacts) -> list[str]:
    """The To/Cc addresses of a command mail outside the agency (its domains, the ACSS's): they
    read the commands and whatever the mail quotes (an outside tester: a reply-all to the attached
    original put the hospital in To, and nobody told the agent)."""
    inside = agency_domains(env.settings) | {d.lower() for d in env.settings.authentication.acss_domains}
    found = [a for a in facts.recipients if "@" in a and a.rpartition("@")[2].lower() not in inside]
    return list(dict.fromkeys(a.lower() for a in found))[:5]


# Commands that write to the case's declarant (``#clore`` its reason, in the closure mail).
_TO_DECLARANT = frozenset({"repondre", "demander-info", "clore"})


def _answered_case(session: Session, facts: MessageFacts, case: Case | None) -> Case | None:
    """The case the mail answers when it now stands merged or transferred into ``case``; else None."""
    if case is None or not facts.case_ref or facts.case_ref == case.reference:
        return None
    return session.scalar(select(Case).where(Case.reference == facts.case_ref))


def _followed(answered: Case | None, case: Case | None) -> dict[str, str] | None:
    """For the receipt: the commands of a mail answering a merged or transferred case ran on the
    case that stands for it, and it says so (an outside tester: a receipt under another reference,
    with no word of why)."""
    if answered is None or case is None:
        return None
    moved = (case.fields or {}).get("transfere_de") == answered.reference
    how = "transféré vers" if moved else "fusionné dans"
    return {"answered": answered.reference, "case": case.reference, "how": how}


def _other_declarant(followed: dict[str, str] | None, answered: Case | None, case: Case | None,
                     cmd: Command) -> dict[str, Any] | None:
    """A refusal for ``#repondre``/``#demander-info``/``#clore <motif>`` answering a merged case
    whose declarant is not the surviving case's: the mail would go to someone the agent did not
    answer (an outside tester: two people of one hospital, the merged case's declarant never got
    the answer, the other one did; an outside attacker: « #clore Faux positif ; entre nous… »
    mailed that reason to the other declarant). ``followed``: ``_followed(answered, case)``. None
    when the command may run."""
    if followed is None or answered is None or case is None or cmd.name not in _TO_DECLARANT or not cmd.accepted:
        return None
    if cmd.name == "clore" and not cmd.args:  # no words of the agent's in the closure mail
        return None
    if not answered.declarant or answered.declarant.lower() == (case.declarant or "").lower():
        return None
    what = "non appliquée (son motif est adressé au déclarant)" if cmd.name == "clore" else "non envoyée"
    return _not_sent(cmd, f"{what} : {answered.reference} est {followed['how']} {case.reference}, dont le déclarant "
                          f"est {case.declarant or 'inconnu'}, pas {answered.declarant} ; écrivez à "
                          f"{answered.declarant} directement, ou répondez depuis la notification de "
                          f"{case.reference} pour écrire à son déclarant")


def _not_sent(cmd: Command, message: str) -> dict[str, Any]:
    """A command's result when it is refused because its mail would reach someone else."""
    return {"name": cmd.name, "line": cmd.line, "applied": False, "digest": False, "pending": False,
            "preview": None, "text": cmd.args[0] if cmd.args else None, "message": message}


def _answered_writer(session: Session, facts: MessageFacts, case: Case | None) -> str | None:
    """Who wrote the reply a staff mail answers, when the mail answers our « Réponse reçue »
    notification of it (the notification's key names the reply): its sender's address, else None."""
    if case is None or not facts.in_reply_to:
        return None
    key = session.scalar(select(OutboundMessage.idempotency_key).where(
        OutboundMessage.message_id.in_(id_forms(facts.in_reply_to, 10)), OutboundMessage.kind == REPLY_NOTICE,
        OutboundMessage.case_id == case.id).limit(1))
    inbound_id = noticed_inbound(key or "")
    if inbound_id is None:
        return None
    auth = session.scalar(select(InboundMessage.auth).where(InboundMessage.id == inbound_id))
    address = (auth or {}).get("address") if isinstance(auth, dict) else None
    return address.strip().lower() if isinstance(address, str) and address.strip() else None


def _other_writer(writer: str | None, case: Case | None, cmd: Command) -> dict[str, Any] | None:
    """A refusal for ``#repondre``/``#demander-info`` answering the « Réponse reçue » of a reply
    whose writer is not the case's declarant: the mail goes to the declarant, not to who the agent
    answers (an outside tester: a merged case's declarant asked a question, the agent's
    « #repondre Oui, coupez le VPN du CH d'Angers » went to the other hospital). None when the
    command may run."""
    if writer is None or case is None or cmd.name not in ("repondre", "demander-info") or not cmd.accepted:
        return None
    if writer == (case.declarant or "").strip().lower():
        return None
    return _not_sent(cmd, f"non envoyée : le message auquel vous répondez est de {writer}, pas du déclarant de "
                          f"{case.reference} ({case.declarant or 'inconnu'}) à qui elle irait ; écrivez à {writer} "
                          f"directement, ou répondez depuis la notification de {case.reference} pour écrire à "
                          f"son déclarant")


def _under_signature(facts: MessageFacts) -> list[dict[str, Any]]:
    """Commands written under the signature separator, never read there: said in the receipt even
    when other commands of the mail ran (found by an outside tester: a « #transmettre-acss » under
    « -- », below a « #note » that ran, was never sent to the ACSS and the receipt listed the note only)."""
    return [{"name": "", "line": hint.line, "applied": False, "digest": False, "pending": False, "preview": None,
             "text": None, "message": f"non exécutée : {hint.why} ; écrivez-la au-dessus de la signature"}
            for hint in command_hints("", signature_part(facts.body_text), [], load_labels())]


def _help(ctx: Ctx) -> str | None:
    """The whole list for « #aide » or a mistake nothing suggests; a one-line pointer otherwise."""
    if ctx.show_help:
        return help_text()
    return HELP_POINTER if ctx.help_pointer else None


def _duplicate(cmd: Command) -> dict[str, Any]:
    return {"name": cmd.name, "line": cmd.line, "applied": False, "message": "déjà dans ce message (objet ou "
            "corps) : exécutée une seule fois", "digest": False, "pending": False, "preview": None,
            "text": None, "duplicate": True}


def _run(ctx: Ctx, cmd: Command) -> dict[str, Any]:
    result: dict[str, Any] = {"name": cmd.name, "line": cmd.line, "applied": False, "message": None,
                              "digest": False, "pending": False, "preview": None,
                              # The whole text the command carries, quoted in full by the receipt.
                              "text": cmd.args[0] if cmd.name in WHOLE_TEXT and cmd.args else None}
    if cmd.reason in (REASON_ONE_PER_LINE, REASON_INHERITED_SUBJECT):
        result["message"] = cmd.reason
        return result
    spec = None if cmd.reason == REASON_UNKNOWN else COMMANDS.get(cmd.name)
    if spec is None:
        hint = next((h for h in hints(ctx.facts, [cmd]) if h.why == HINT_UNKNOWN), None)
        if hint is None:
            ctx.show_help = True
        else:
            ctx.help_pointer = True
        result["message"] = (f"commande inconnue ; vouliez-vous écrire « {hint.suggestion} » ?"
                             if hint is not None else "commande inconnue (voir la liste ci-dessous)")
        return result
    before = len(ctx.digests)
    try:
        if spec.needs_case and ctx.case is None:
            raise CaseError(no_case_reason(ctx.facts))
        asked = len(ctx.confirmations)
        ctx.preview = None
        result["message"] = spec.run(ctx, cmd)
        result["applied"] = True
        # Accepted but not done: it waits for "#confirmer <jeton>" (the receipt must not say "appliquée").
        result["pending"] = len(ctx.confirmations) > asked
        result["preview"] = ctx.preview
    except (CaseError, lifecycle.InvalidTransition) as exc:
        reason = transition_refusal(exc) if isinstance(exc, lifecycle.InvalidTransition) else str(exc)
        result["message"] = reason
        if ctx.case is not None:
            append_event(ctx.session, ctx.case, type="commande_refusee", actor=ctx.actor, at=ctx.now,
                         inbound_id=ctx.inbound.id, data={"commande": cmd.line[:500], "motif": reason})
    result["digest"] = len(ctx.digests) > before
    return result


def _refused(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts, case: Case | None,
             region: str | None, sender: str, refusal: str, first: ReplayKey | None = None) -> Outcome:
    """Nothing is applied. Staff (or whoever claims to be) are told why; others are not answered.

    ``first``: the record of the message that already ran these commands (a replay), for the
    timeline and for a receipt that says when, calmly: it is most often a client resending.
    The receipt goes under the automatic-reply caps: replaying one signed mail a thousand times
    must not mail its author a thousand times.
    """
    lines = [c.line[:500] for c in facts.commands]
    motif: dict[str, Any] = {"commandes": lines, "motif": refusal}
    if first is not None:
        motif["deja_execute_par_message"] = first.inbound_id
    staff_like = bool(sender) and looks_like_staff(env, session, sender)
    if case is not None and not staff_like:
        # An establishment wrote "#..." in its reply: it is a reply like any other.
        outcome = handle_reply(env, session, inbound, facts)
        target = outcome.case or case
        append_event(session, target, type="commande_ignoree", actor=sender or "inconnu", at=env.clock.now(),
                     inbound_id=inbound.id, data=motif)
        return outcome
    if case is not None:
        service.record_received(session, case, inbound, facts, at=env.clock.now())
        append_event(session, case, type="commande_refusee", actor=sender or "inconnu", at=env.clock.now(),
                     inbound_id=inbound.id, data=motif)
    if staff_like and region is not None:
        receipts.send_receipt(env, session, inbound, facts, to=sender, region=region, case=case, results=[],
                                  refused_all=refusal, authenticated=False,
                                  replayed_fr=replay.first_applied_fr(first) if first is not None else None,
                                  unauthenticated=_unproven(inbound, facts, lines))
    return Outcome("processed", reason=refusal, case=case)


def _unproven(inbound: InboundMessage, facts: MessageFacts, lines: list[str]) -> dict[str, Any] | None:
    """What the receipt of a mail not proven to be its sender's says (French): the agent whose
    address it bears may never have written it — « dkim=none (no signature) » told them nothing
    (an outside tester, an agent: a forged « #clore fausse alerte » in her name)."""
    if facts.sender.authenticated:
        return None
    detail = facts.sender.detail or ""
    if "dkim=none" in detail or not detail:
        why = "il ne porte pas la signature DKIM de votre domaine"
    elif "dkim=fail" in detail:
        why = "sa signature DKIM ne correspond pas à son contenu (modifié en chemin, ou signature imitée)"
    else:
        why = "sa signature DKIM n'a pas pu être vérifiée"
    # Its words are anyone's: cut short, and defanged by the template (a link in a forged subject
    # must not reach staff clickable in a mail the agency signs).
    return {"subject": service.one_line(facts.subject)[:100], "received": french_datetime(aware(inbound.received_at)),
            "commands": [line[:200] for line in lines[:10]], "why": why, "detail": detail[:300]}


def hints(facts: MessageFacts, unknown: list[Command]) -> list[Hint]:
    """What a mail of staff probably meant where no command ran (typo, no "#", under the signature)."""
    return command_hints(facts.new_text, signature_part(facts.body_text), unknown, load_labels())


def written_to_the_gateway(env: Env, facts: MessageFacts, sender: str) -> bool:
    """Addressed to the gateway's mailboxes alone (and the sender): not a copy of a conversation —
    with an establishment, or among agents answering each other with « Répondre à tous » (a
    notification names every agent of the region in To: issue 19; found by an outside tester)."""
    own = {r.address.lower() for r in env.settings.regions}
    return all(a.strip().lower() in own or a.strip().lower() == sender for a in facts.recipients)


def _nothing_understood(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts,
                        case: Case, sender: str) -> None:
    """The receipt of an authenticated staff mail in which no command was recognised: always when
    a line looks like a command (a typo, no "#", under the signature); otherwise only when the mail
    was written to the gateway alone — staff answering an establishment, or each other, with the
    SSI mailbox in copy expect their mail to be filed, not a receipt for each message."""
    found = [{"line": h.line, "suggestion": h.suggestion, "why": h.why} for h in hints(facts, [])]
    if not found and not written_to_the_gateway(env, facts, sender):
        return
    receipts.send_receipt(env, session, inbound, facts, to=sender, region=case.region, case=case, results=[],
                          understood={"hints": found}, help_text=HELP_POINTER if found else help_text(),
                          capped=True)


def body_reference_prehandler(env: Env, session: Session, inbound: InboundMessage,
                              facts: MessageFacts) -> Outcome | None:
    """A mail naming its case in its text only (« Concernant le dossier SSI-PDL-2026-0005 : … »,
    no reference in the subject, no thread) from an address the case already writes to (its
    declarant, a contact of its establishment: ``reply_notice.on_case``) is a reply to that case,
    as the same reference in the subject makes it: it opened a second case with a second
    acknowledgement and reference, or went to quarantine (an outside tester, an RSSI). Anyone
    else's, or one naming a case of another region, goes on as before (a declaration, a quarantine)."""
    ref = facts.extra.get("body_ref")
    sender = (facts.sender.address or "").strip().lower()
    if facts.kind not in ("declaration", "unknown") or facts.case_ref or not isinstance(ref, str) or not sender:
        return None
    if facts.kind == "declaration" and (facts.extra.get("declaration_by") == "labelled" or _says_new(facts)):
        # A declaration form, or « Nouvel incident, distinct de celui du dossier SSI-… »: a case of
        # its own, naming the other (an outside attacker: a hospital's new declaration vanished
        # into its old case, no acknowledgement, no reference).
        return None
    if facts.region and sender in staff_addresses(env.settings, session, facts.region):
        return None  # staff's own mail: commands, or answered as not understood
    case = service.by_reference(session, ref)
    if case is None or case.region != (facts.region or inbound.region):
        return None
    if not reply_notice.on_case(session, service.resolve(session, case), sender):
        return None
    inbound.kind = "reply"
    return handle_reply(env, session, inbound, replace(facts, kind="reply", case_ref=case.reference,
                                                       quarantine_reason=None,
                                                       extra={**facts.extra, "threaded_by": "body"}))


def _says_new(facts: MessageFacts) -> bool:
    return says_new_incident(facts.new_text or facts.body_text or "")


def unrecognised_staff_prehandler(env: Env, session: Session, inbound: InboundMessage,
                                  facts: MessageFacts) -> Outcome | None:
    """A mail nothing recognised, written by authenticated staff of the region it arrived in (no
    case reference, no command: « assigner moi » in a new mail): answered — what was not
    understood, the nearest commands, the list — and filed; quarantining an agent's own mail would
    only send the agent a quarantine notice. Anything else (None) goes on to quarantine as before."""
    if facts.kind != "unknown" or facts.quarantine_reason != UNRECOGNISED or not facts.sender.authenticated:
        return None
    sender = (facts.sender.address or "").strip().lower()
    region = facts.region
    if not sender or region is None or sender not in staff_addresses(env.settings, session, region):
        return None
    found = [{"line": h.line, "suggestion": h.suggestion, "why": h.why} for h in hints(facts, [])]
    receipts.send_receipt(env, session, inbound, facts, to=sender, region=region, case=None, results=[],
                          understood={"hints": found}, help_text=HELP_POINTER if found else help_text(),
                          capped=True)
    return Outcome("processed", reason="message d'un agent sans référence de dossier ni commande reconnue")


# --- replies -----------------------------------------------------------------------------------


def _from_acss(env: Env, address: str, facts: MessageFacts) -> bool:
    """A reply staff may read as the national cell's: authenticated (aligned DKIM or a trusted
    Authentication-Results), from its address or domains. A From alone proves nothing — an
    unsigned « CERT Santé <alerte@esante…> » is shown as the unauthenticated mail it is."""
    if not facts.sender.authenticated:
        return False
    domain = address.rpartition("@")[2]
    return address == env.settings.acss.address.lower() or domain in {
        d.lower() for d in env.settings.authentication.acss_domains}


def _establishment_domains(session: Session, case: Case) -> set[str]:
    """Domains that speak for the case's establishment: its declarant's and its directory contacts'."""
    found = {case.declarant.rpartition("@")[2].lower()} if case.declarant and "@" in case.declarant else set()
    if case.finess:
        found.update(a.rpartition("@")[2].lower()
                     for a in session.scalars(select(Contact.address).where(Contact.finess == case.finess)))
    return found


def _case_domains(env: Env, session: Session, case: Case) -> set[str]:
    """The establishment's domains and the ACSS's: who may change a case's status by a reply."""
    found = _establishment_domains(session, case)
    acss = env.settings.acss.address.lower()
    found.update({acss.rpartition("@")[2], *(d.lower() for d in env.settings.authentication.acss_domains)})
    return {d for d in found if d}


def status_refusal(env: Env, session: Session, case: Case, facts: MessageFacts) -> str | None:
    """Why a reply may not change the case's status (docs/guarantees.md), None when it may.

    Case references are sequential: anyone can write « [SSI-ARA-2026-0042] » in a subject. Only a
    reply authenticated (aligned DKIM) from the establishment's or the ACSS's domain may reopen a
    closed case; any other reply is attached to the case and notified, and changes nothing."""
    if not facts.sender.authenticated:
        return "réponse non authentifiée"
    sender = (facts.sender.address or "").strip().lower()
    if sender.rpartition("@")[2] not in _case_domains(env, session, case):
        return f"{sender or 'expéditeur inconnu'} n'appartient pas à l'établissement du dossier"
    return None


MAX_REPLY_INLINE = 4000  # characters of a reply's new text shown in « Réponse reçue »


def handle_reply(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts) -> Outcome:
    """Attach a reply to its case and notify; reopen or link a closed case."""
    case = service.threaded_case(session, facts)
    if case is None and facts.extra.get("quotes_our_mail"):
        return Outcome("quarantined", FORWARDED_RELAY)  # ours, answered by no one we sent it to
    if case is None:
        return Outcome("quarantined", f"réponse à un dossier inconnu : {facts.case_ref}")
    service.record_received(session, case, inbound, facts, at=env.clock.now())
    sender = (facts.sender.address or "").strip().lower()
    if sender and sender in staff_addresses(env.settings, session, case.region):
        # Staff writing in the thread: nothing to notify. An authenticated one is told that no
        # command was recognised, and what was probably meant (never anyone else: From proves nothing).
        if facts.sender.authenticated:
            _nothing_understood(env, session, inbound, facts, case, sender)
        return Outcome("processed", case=case)
    now = env.clock.now()
    target = case
    text = (facts.new_text or facts.body_text or "").strip()
    extra: dict[str, Any] = {"reply_from": sender or "inconnu", "from_acss": _from_acss(env, sender, facts),
                             "reopened": False, "linked_from": None,
                             # The answer itself, inline (the .eml is for the record, not for reading).
                             "reply_text": text[:MAX_REPLY_INLINE], "reply_truncated": len(text) > MAX_REPLY_INLINE}
    if facts.sender.authenticated and _of_the_establishment(session, case, sender):
        # Only the establishment's own, authenticated: an outsider's « RE: [REF] » must not put
        # indicators in the case's exports (STIX, MISP) and what is sent to the ACSS.
        service.add_indicators(session, target, facts, at=now, actor=sender)
    if not extra["from_acss"] and not _known_to_the_case(env, session, case, sender):
        # Anyone may write « RE: [SSI-…] » (the references follow each other): an outsider's « fausse
        # alerte, vous pouvez clore » reached staff as « Réponse reçue : CHU d'Angers — … » (an
        # outside attacker). Filed, and said to come from someone the case does not know.
        extra["stranger"] = {"declarant": case.declarant, "by_subject": facts.extra.get("threaded_by") == "subject"}
    # Only an authenticated reply from the establishment (or ACSS) reopens or links.
    refusal = None if lifecycle.is_open(case.status) else status_refusal(env, session, case, facts)
    if refusal is not None:
        extra["kept_closed"] = refusal
        append_event(session, case, type="reouverture_refusee", actor=sender or "inconnu", at=now,
                     inbound_id=inbound.id, data={"motif": refusal})
    elif not lifecycle.is_open(case.status):
        if env.settings.cases.reply_to_closed == "link":
            target = _follow_up(env, session, inbound, facts, case)
            extra["linked_from"] = case.reference
        else:
            service.reopen(session, case, actor="passerelle", at=now,
                           reason=f"réponse reçue de {sender or 'un expéditeur inconnu'}")
            extra["reopened"] = True
    # A reopened case always reaches staff, caps or not (found by an outside tester: the declarant
    # was told « l'équipe SSI en est informée » while the per-domain cap had silenced the notice).
    # Not a flood: a case reopens once per closure, and only staff close cases.
    notify_staff(env, session, target, inbound, facts, template="reponse_recue", kind=REPLY_NOTICE,
                 extra=extra, capped=not extra["reopened"])
    # The establishment is told what became of its reply (reopened, kept closed, received).
    reply_notice.tell_sender(env, session, inbound, facts, case=case, target=target, extra=extra)
    return Outcome("processed", case=target)


def _of_the_establishment(session: Session, case: Case, sender: str) -> bool:
    """The case's declarant, a contact of its establishment, or an address of the declarant's
    domain (a colleague of the same hospital)."""
    if not sender:
        return False
    if reply_notice.on_case(session, service.resolve(session, case), sender):
        return True
    domain = sender.rpartition("@")[2]
    return bool(domain) and (case.declarant or "").lower().rpartition("@")[2] == domain


def _known_to_the_case(env: Env, session: Session, case: Case, sender: str) -> bool:
    """Whether the case knows who wrote (no « expéditeur inconnu du dossier » flag): its
    establishment, a domain of its contacts (a GHT's shared domain), the ACSS, or the agency
    itself (another region's staff, a director: an outside tester saw them flagged)."""
    if _of_the_establishment(session, case, sender):
        return True
    domain = sender.rpartition("@")[2]
    if domain in {r.address.lower().rpartition("@")[2] for r in env.settings.regions}:
        return True
    # Not ``_case_domains``: the ACSS is known only authenticated (``from_acss``), its domain in a
    # From proves nothing.
    return bool(domain) and domain in _establishment_domains(session, case)


def _follow_up(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts, closed: Case) -> Case:
    """A new case for a reply to a closed one, linked both ways (``reply_to_closed = "link"``)."""
    title = f"Suite de {closed.reference} — {closed.title}"[:500]
    case = service.new_case(session, region=closed.region, kind=closed.kind, inbound=inbound, facts=facts,
                            title=title, at=env.clock.now())
    for name in ("finess", "establishment", "category", "incident_type", "nature", "declarant", "tlp"):
        setattr(case, name, getattr(closed, name))
    case.fields = {"suite_de": closed.reference}
    service.link(session, case, closed, type="dossier_lie", actor="passerelle", at=env.clock.now())
    return case

