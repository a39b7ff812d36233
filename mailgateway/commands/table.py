"""One small function per staff command, registered in ``COMMANDS``: every command is found in one table.

A command function validates first and changes the case only when it will succeed: a refusal is
a ``CaseError`` (or ``InvalidTransition``) with a French reason, and leaves nothing behind. The
names are the canonical names of ``mailgateway/data/labels.toml`` (synonyms, accents and case are
normalised by ``mail/commands.py``).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgateway.bulletins import fanout, tracking
from mailgateway.cases import lifecycle, service
from mailgateway.cases.service import CaseError
from mailgateway.cases.timeline import append_event
from mailgateway.clock import aware, french_datetime
from mailgateway.commands import closure, on_demand, receipts
from mailgateway.commands.transfer import transfer_case
from mailgateway.directory.bounces import contacts_of, reactivate_address
from mailgateway.directory.establishments import EJ_SITES_SHOWN, establishment, establishments_of_ej
from mailgateway.directory.staff import staff_addresses
from mailgateway.dispatch.compose import MailSpec
from mailgateway.dispatch.contexts import case_context, region_context
from mailgateway.dispatch.render import libelle
from mailgateway.dispatch.wording import nombre
from mailgateway.mail.declaration import valid_finess
from mailgateway.mail.facts import Command, MessageFacts
from mailgateway.mail.refs import CASE_REF, canonical
from mailgateway.mail.text import fold
from mailgateway.processing.context import Env
from mailgateway.statuses import CaseStatus, Severity
from mailgateway.store.models import Case, Confirmation, InboundMessage

log = logging.getLogger(__name__)


@dataclass
class Ctx:
    env: Env
    session: Session
    inbound: InboundMessage
    facts: MessageFacts
    case: Case | None
    actor: str  # the authenticated staff address
    region: str
    now: datetime
    confirmation: dict[str, str] | None = None
    # Every token asked for by this mail (one per pending command), for the receipt.
    confirmations: list[dict[str, str]] = field(default_factory=list)
    # What a pending "#diffuser" would do (count, sample, TLP refusals), set by the command.
    preview: dict[str, Any] | None = None
    digests: list[tuple[str, list[Case], Case | None]] = field(default_factory=list)
    show_help: bool = False
    # A mistake with a suggestion: the receipt gives the suggestion and a one-line pointer to
    # « #aide », not the whole list (``show_help``: the whole list, for #aide or no suggestion).
    help_pointer: bool = False
    # Cases that were GRAVE at some point of this mail (requalified by it, either way): closing
    # one still takes a confirmation, so "#qualifier sans-suite" + "#clore" is not a shortcut.
    was_grave: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Spec:
    run: Callable[[Ctx, Command], str | None]  # returns a French note for the receipt
    needs_case: bool = True
    summary: str = ""


_SEVERITY = {"grave": Severity.GRAVE, "significatif": Severity.SIGNIFICATIF, "significative": Severity.SIGNIFICATIF,
             "sans-suite": Severity.SANS_SUITE, "sanssuite": Severity.SANS_SUITE, "sans_suite": Severity.SANS_SUITE,
             "non-qualifie": Severity.NON_QUALIFIE}
_STATUS_ALIASES = {"OUVERT": CaseStatus.PRIS_EN_COMPTE, "FERME": CaseStatus.CLOS, "CLOTURE": CaseStatus.CLOS,
                   "RESOLUE": CaseStatus.RESOLU, "DIFFUSE": CaseStatus.DIFFUSEE, "EN_COURS": CaseStatus.SUIVI,
                   "SUIVRE": CaseStatus.SUIVI}


def _case(ctx: Ctx) -> Case:
    assert ctx.case is not None
    return ctx.case


def _text(cmd: Command) -> str:
    return " ".join(cmd.args).strip()


def _event(ctx: Ctx, type_: str, data: dict[str, Any]) -> None:
    append_event(ctx.session, _case(ctx), type=type_, actor=ctx.actor, at=ctx.now,
                 inbound_id=ctx.inbound.id, data=data)


# --- commands ----------------------------------------------------------------------------------


def assigner(ctx: Ctx, cmd: Command) -> str | None:
    case = _case(ctx)
    who = cmd.args[0].lower() if cmd.args else "moi"
    target = ctx.actor if who in ("moi", "me", "moi-meme") else who
    if target not in staff_addresses(ctx.env.settings, ctx.session, case.region):
        raise CaseError(f"{target} ne fait pas partie des agents SSI de la région {case.region}")
    service.assign(ctx.session, case, target, actor=ctx.actor, at=ctx.now)
    if target != ctx.actor:
        # The new assignee learns it from the gateway, not from a colleague's forwarded receipt.
        receipts.to_assignee(ctx.env, ctx.session, ctx.inbound, case, assignee=target, actor=ctx.actor)
        return f"dossier assigné à {target} (prévenu par courriel)"
    return f"dossier assigné à {target}"


def qualifier(ctx: Ctx, cmd: Command) -> str | None:
    case = _case(ctx)
    word = "-".join(cmd.args)
    severity = _SEVERITY.get(word) or _SEVERITY.get(word.replace("-", ""))
    if severity is None:
        raise CaseError("gravité attendue : grave, significatif ou sans-suite")
    if Severity.GRAVE in (case.severity, severity):
        ctx.was_grave.add(case.id)
    moved = service.qualify(ctx.session, case, severity, actor=ctx.actor, at=ctx.now)
    # Staff read French labels, never enumeration codes (issue 17).
    # « gravité : significatif » (the regulation's word for the incident), never « gravité significatif ».
    return f"gravité : {libelle(severity)}" + (
        f", statut : {libelle(CaseStatus.QUALIFIE)}" if moved else f", statut : {libelle(case.status)} (inchangé)")


def finess(ctx: Ctx, cmd: Command) -> str | None:
    """« #finess 490100021 »: the establishment hit, by its géographique number (ET) in the
    directory — the site of an EJ of several, which the staff notification lists, or a correction."""
    case = _case(ctx)
    number = "".join(cmd.args)[:20].replace(" ", "")
    if not valid_finess(number):
        raise CaseError("numéro FINESS géographique (ET) attendu : 9 chiffres, clé de contrôle comprise")
    est = establishment(ctx.session, number)
    if est is None:
        sites = establishments_of_ej(ctx.session, number)[:EJ_SITES_SHOWN]
        if sites:
            raise CaseError(f"{number} est un FINESS juridique (EJ) : donnez celui de l'établissement touché "
                            f"({', '.join(f'{s.finess} {s.name}' for s in sites)})")
        raise CaseError(f"FINESS {number} absent de l'annuaire : vérifiez le numéro")
    service.set_establishment(ctx.session, case, finess=est.finess, name=est.name, category=est.category,
                              actor=ctx.actor, at=ctx.now)
    return f"structure : {est.name} (FINESS {est.finess})"


def statut(ctx: Ctx, cmd: Command) -> str | None:
    refs = [a for a in cmd.args if CASE_REF.fullmatch(a)]
    if refs:
        # "#statut REF": a digest of that case (a query, by mail to the SSI address).
        target = service.by_reference(ctx.session, refs[0])
        if target is None or target.region != ctx.region:
            raise CaseError(f"dossier inconnu dans la région {ctx.region} : {refs[0]}")
        ctx.digests.append(("statut", [], service.resolve(ctx.session, target)))
        return "synthèse du dossier envoyée"
    case = _case_or_raise(ctx)
    if not cmd.args:
        ctx.digests.append(("statut", [], case))
        return "synthèse du dossier envoyée"
    wanted = fold("_".join(cmd.args)).upper().replace("-", "_")
    wanted = _STATUS_ALIASES.get(wanted, wanted)
    if wanted not in lifecycle.statuses_for(case.kind) and wanted.startswith("EN_"):
        wanted = wanted.removeprefix("EN_")  # "#statut en suivi", "en accompagnement"
    if wanted not in lifecycle.statuses_for(case.kind):
        known = ", ".join(f"« {libelle(st)} »" for st in lifecycle.statuses_for(case.kind))
        raise CaseError(f"statut inconnu : {' '.join(cmd.args)} (statuts : {known})")
    if wanted in lifecycle.CLOSED:
        return clore(ctx, Command("clore", (), True, None, cmd.line))
    if case.status in lifecycle.CLOSED:
        raise CaseError(f"{case.reference} est clos : utilisez #rouvrir")
    if wanted == CaseStatus.DIFFUSEE and case.kind == "alert":
        # DIFFUSEE says the alert was relayed: only the relay itself (#diffuser) may set it.
        raise CaseError("une alerte passe au statut « diffusée » par sa diffusion : utilisez #diffuser "
                        "(un aperçu des destinataires vous sera envoyé avant confirmation)")
    previous = service.change_status(ctx.session, case, wanted, actor=ctx.actor, at=ctx.now)
    return f"statut {libelle(previous)} → {libelle(wanted)}"


def transition_refusal(exc: lifecycle.InvalidTransition) -> str:
    """An impossible status change in the staff's words: French labels, never the stored codes
    (« passage de QUALIFIE à QUALIFIE impossible » said nothing), and « déjà » for the same status."""
    if exc.current == exc.target:
        return f"le dossier est déjà au statut « {libelle(exc.current)} » : rien à changer"
    return f"passage du statut « {libelle(exc.current)} » au statut « {libelle(exc.target)} » impossible"


def _case_or_raise(ctx: Ctx) -> Case:
    if ctx.case is None:
        raise CaseError(NO_CASE)
    return ctx.case


def transmettre_acss(ctx: Ctx, cmd: Command) -> str | None:
    case = _case(ctx)
    if case.kind != "incident":
        raise CaseError("seule une déclaration d'incident se transmet à l'ACSS")
    if not lifecycle.is_open(case.status):
        raise CaseError(f"{case.reference} est clos")
    row = receipts.to_acss(ctx.env, ctx.session, ctx.inbound, case, comment=_text(cmd), actor=ctx.actor)
    if row is None:
        raise CaseError(f"envoi à {ctx.env.settings.acss.address} refusé ou déjà fait (voir la chronologie)")
    note = f"déclaration transmise à {row.recipient}"
    target = CaseStatus.EN_QUALIFICATION
    if case.status != target and lifecycle.allowed(case.kind, case.status, target):
        service.change_status(ctx.session, case, target, actor=ctx.actor, at=ctx.now,
                              reason="transmise à l'ACSS pour qualification")
        note += f", statut {libelle(target)}"
    return note


def _to_declarant(ctx: Ctx, cmd: Command, template: str, kind: str, what: str) -> str | None:
    case = _case(ctx)
    text = _text(cmd)
    if not text:
        raise CaseError(f"texte manquant : « #{cmd.name} <texte> »")
    if not case.declarant:
        raise CaseError("aucune adresse de déclarant connue pour ce dossier")
    row = receipts.to_declarant(ctx.env, ctx.session, ctx.inbound, case, template=template, kind=kind,
                                    text=text, actor=ctx.actor)
    if row is None:
        raise CaseError(f"envoi à {case.declarant} refusé (voir la chronologie du dossier)")
    return f"{what} envoyée à {case.declarant}"


def demander_info(ctx: Ctx, cmd: Command) -> str | None:
    # A question on a closed case contradicts the closure the declarant has just been told of (an
    # outside tester: « #clore » then « #demander-info » in one mail sent both in the same second).
    if _case(ctx).status == CaseStatus.CLOS:
        raise CaseError("dossier clos : une demande d'informations n'a plus d'objet ; rouvrez-le d'abord "
                        "(« #rouvrir ») ou répondez au déclarant avec « #repondre <texte> »")
    return _to_declarant(ctx, cmd, "demande_info", "demande_info", "demande d'informations")


def repondre(ctx: Ctx, cmd: Command) -> str | None:
    # In answer to the notification of an establishment's question on a relayed alert, the
    # answer goes to that establishment, not to the alert's declarant (the national cell).
    asked = tracking.relay_question(ctx.session, ctx.facts, _case(ctx))
    if asked is not None:
        return _to_relay_author(ctx, cmd, asked)
    return _to_declarant(ctx, cmd, "reponse", "reponse", "réponse")


def _to_relay_author(ctx: Ctx, cmd: Command, asked: tracking.RelayQuestion) -> str | None:
    """« #repondre » to an establishment's answer to a relayed alert: threaded under its mail,
    tagged with the alert's reference (its next answer comes back to the alert's case)."""
    case = _case(ctx)
    text = _text(cmd)
    if not text:
        raise CaseError(f"texte manquant : « #{cmd.name} <texte> »")
    from_address, from_name = ctx.env.mailer.from_identity(case.region)
    spec = MailSpec(
        template="reponse",
        context={**region_context(ctx.env.settings, case.region), "case": case_context(case), "message": text,
                 "author": ctx.actor, "has_greeting": receipts.has_greeting(text),
                 "has_closing": receipts.has_closing(text), "relay": True},
        to=asked.author, from_address=from_address, from_name=from_name,
        idempotency_key=f"reponse:{ctx.inbound.id}:{case.id}:{asked.inbound_id}",
        in_reply_to=asked.message_id, references=[asked.message_id] if asked.message_id else [],
        auto_submitted=receipts.HUMAN,
    )
    row = ctx.env.mailer.send(ctx.session, spec, kind="reponse", case=case, actor=ctx.actor)
    if row is None:
        raise CaseError(f"envoi à {asked.author} refusé (voir la chronologie du dossier)")
    return f"réponse envoyée à {asked.author}"


def note(ctx: Ctx, cmd: Command) -> str | None:
    text = _text(cmd)
    if not text:
        raise CaseError("texte manquant : « #note <texte> »")
    service.add_note(ctx.session, _case(ctx), text, actor=ctx.actor, at=ctx.now)
    return "note ajoutée à la chronologie"


def _ask_confirmation(ctx: Ctx, command: str, args: list[str], hours: float) -> str:
    token = secrets.token_hex(6)  # 48 bits, single use, short-lived: not guessable in time
    expires = ctx.now + timedelta(hours=hours)
    ctx.session.add(Confirmation(token=token, case_id=ctx.case.id if ctx.case else None,
                                 command=command, args=args, requested_by=ctx.actor, created_at=ctx.now,
                                 expires_at=expires))
    if ctx.case is not None:
        _event(ctx, "confirmation_demandee", {"commande": command, "expire": expires.isoformat()})
    ctx.confirmation = {"token": token, "expires_fr": french_datetime(expires), "command": command}
    ctx.confirmations.append(ctx.confirmation)
    # The token itself is given once, at the end of the receipt, after what the command will do.
    return "confirmation demandée (jeton à la fin de ce compte rendu)"


def _grave_in_this_mail(ctx: Ctx, case: Case) -> bool:
    """GRAVE now, or at any point of the mail being run (only #qualifier changes the severity)."""
    return case.severity == Severity.GRAVE or case.id in ctx.was_grave


def clore(ctx: Ctx, cmd: Command) -> str | None:
    case = _case(ctx)
    target = CaseStatus.CLOSE if case.kind == "alert" else CaseStatus.CLOS
    lifecycle.check_transition(case.kind, case.status, target)
    reason = _text(cmd) or None
    if _grave_in_this_mail(ctx, case):
        # A GRAVE incident is closed by two explicit steps: the regulatory follow-up ends here.
        _ask_confirmation(ctx, "clore", [reason or ""], ctx.env.settings.cases.confirmation_hours)
        told = closure.declarant_to_tell(ctx.env, case)
        # The motif reaches a verified declarant only (commands/closure.py): the receipt must not
        # promise it to an address that came from headers anyone writes (found by an outside tester).
        verified = bool(told) and closure.declarant_verified(ctx.session, case)
        motif = f", motif : « {_excerpt(reason)} »" if reason else ""
        return (f"clôture du dossier {case.reference} (gravité « {libelle(case.severity)} ») en attente de "
                "confirmation : une fois confirmée, le dossier sera clos"
                + (f" et le déclarant ({told}) en sera informé par courriel{motif}" if verified or (told and not reason)
                   else f" et le déclarant ({told}) en sera informé par courriel, sans le motif (adresse non vérifiée)"
                   f"{motif.replace(', motif', ' ; motif', 1)}" if told else f" (aucun mail au déclarant){motif}")
                + " ; jeton à la fin de ce compte rendu")
    service.close(ctx.session, case, actor=ctx.actor, at=ctx.now, reason=reason)
    return f"dossier clos{f' ({_excerpt(reason)})' if reason else ''}"


def _excerpt(text: str, size: int = 80) -> str:
    """The first line of a (multi-line) text, for a one-line note; the receipt quotes it whole."""
    first = text.strip().split("\n", 1)[0].strip()
    if len(first) <= size and "\n" not in text.strip():
        return first
    cut = first[:size]
    if len(first) > size and not first[size].isspace() and " " in cut:
        cut = cut.rsplit(" ", 1)[0]  # at a word's end: « donnée … » read as a word of its own (outside tester)
    return cut.rstrip() + " …"


def rouvrir(ctx: Ctx, cmd: Command) -> str | None:
    target = service.reopen(ctx.session, _case(ctx), actor=ctx.actor, at=ctx.now, reason=_text(cmd) or None)
    return f"dossier rouvert, statut {libelle(target)}"


def diffuser(ctx: Ctx, cmd: Command) -> str | None:
    case = _case(ctx)
    if case.kind != "alert":
        # Bulletins are approved in answer to their preview (bulletins/by_mail.py).
        raise CaseError("seule une alerte se diffuse depuis son dossier (bulletin : répondez à son aperçu)")
    if not (case.fields or {}).get("alert", {}).get("authentic"):
        raise CaseError("alerte non authentifiée : aucune diffusion possible")
    lifecycle.check_transition("alert", case.status, CaseStatus.DIFFUSEE)
    # Refused now, not after the confirmation, when the TLP lets no targeted establishment have it.
    size = ctx.env.settings.bulletins.preview_sample
    reach = _call(lambda: fanout.relay_reach(ctx.env, ctx.session, case, sample=size))
    refusal = fanout.reach_refusal(ctx.env, reach)
    if refusal is not None:
        raise CaseError(refusal)
    # Every broadcast waits for an explicit confirmation: it reaches every targeted establishment.
    # What it will do comes first (count, sample, TLP refusals with the rule and the setting that
    # decides), as for a bulletin's preview: receipt.txt.j2 shows it before the token.
    ctx.preview = _relay_preview(ctx, reach)
    note = f"l'alerte TLP:{reach.tlp} atteindra {nombre(reach.allowed, 'établissement')} sur {reach.planned}"
    pending = _ask_confirmation(ctx, "diffuser", [], ctx.env.settings.bulletins.confirmation_hours)
    return f"{note} ; {pending}"


def _relay_preview(ctx: Ctx, reach: fanout.Reach) -> dict[str, Any]:
    """Whom "#confirmer" would relay the alert to (counted again on confirmation: the directory may change)."""

    def rows(found: tuple[Any, ...]) -> list[dict[str, Any]]:
        return [{"name": r.name, "finess": r.finess, "address": r.address, "role": r.role,
                 "departement": r.departement, "category": r.category} for r in found]

    return {"tlp": reach.tlp, "planned": reach.planned, "allowed": reach.allowed, "withheld": reach.withheld,
            "sample": rows(reach.sample), "withheld_sample": rows(reach.withheld_sample),
            "rule": fanout.tlp_rule(ctx.env, reach.tlp) if reach.withheld else None}


def _call(action: Callable[[], Any]) -> Any:
    """Run a bulletins operation; its refusal (BulletinError, French) becomes the command's."""
    try:
        return action()
    except fanout.BulletinError as exc:  # a refusal with its French reason
        raise CaseError(str(exc)) from exc


def broadcast(ctx: Ctx, case: Case) -> str:
    """Relay the alert through the bulletins feature."""
    reach = _call(lambda: fanout.relay_reach(ctx.env, ctx.session, case))
    bulletin = _call(lambda: fanout.relay_alert(ctx.env, ctx.session, case, ctx.actor))
    withheld = fanout.withheld_note(ctx.env, reach)
    return f"alerte relayée à {nombre(bulletin.recipients, 'établissement')}" + (f" ; {withheld}" if withheld else "")


def _pending_here(ctx: Ctx) -> str:
    """« ; en attente sur <REF> : #confirmer <jeton> (#<commande>) » for the case the mail
    answers, or "" (an outside tester: « #confirmer » alone in answer to the receipt that holds
    the token got « jeton de confirmation inconnu » and no word of which one)."""
    case = ctx.case
    if case is None or case.region != ctx.region:
        return ""
    found = ctx.session.scalars(select(Confirmation).where(
        Confirmation.case_id == case.id, Confirmation.used_at.is_(None)).order_by(Confirmation.created_at)).all()
    waiting = [f"#confirmer {c.token} (#{c.command})" for c in found if aware(c.expires_at) >= ctx.now][:3]
    return f" ; en attente sur {case.reference} : " + ", ".join(waiting) if waiting else ""


def confirmer(ctx: Ctx, cmd: Command) -> str | None:
    token = cmd.args[0].lower() if cmd.args else ""
    if not token:
        raise CaseError("jeton manquant : recopiez la ligne « #confirmer <jeton> » du compte rendu"
                        + _pending_here(ctx))
    pending = ctx.session.get(Confirmation, token)
    if pending is None:
        raise CaseError("jeton de confirmation inconnu" + _pending_here(ctx))
    if pending.used_at is not None:
        raise CaseError(f"jeton déjà utilisé par {pending.used_by}")
    if aware(pending.expires_at) < ctx.now:
        raise CaseError("jeton expiré : renvoyez la commande")
    case = ctx.session.get(Case, pending.case_id) if pending.case_id is not None else None
    if case is None or case.region != ctx.region:
        raise CaseError("ce jeton ne concerne pas un dossier de votre région")
    if (pending.command == "diffuser" and ctx.env.settings.cases.broadcast_second_approver
            and pending.requested_by.lower() == ctx.actor):
        raise CaseError("une diffusion doit être confirmée par un autre agent que son demandeur")
    ctx.case = case
    if pending.command == "clore":
        closed = CaseStatus.CLOSE if case.kind == "alert" else CaseStatus.CLOS
        lifecycle.check_transition(case.kind, case.status, closed)
        reason = str((pending.args or [""])[0] or "") or None
        service.close(ctx.session, case, actor=ctx.actor, at=ctx.now, reason=reason)
        result = "dossier clos"
    elif pending.command == "diffuser":
        result = broadcast(ctx, case)
    elif pending.command == "fusionner":
        result = _confirmed_merge(ctx, case, pending)
    else:
        raise CaseError(f"commande à confirmer inconnue : {pending.command}")
    pending.used_at = ctx.now
    pending.used_by = ctx.actor
    _event(ctx, "confirmation", {"commande": pending.command, "demandee_par": pending.requested_by})
    return result


def annuler(ctx: Ctx, cmd: Command) -> str | None:
    token = cmd.args[0].lower() if cmd.args else ""
    pending = ctx.session.get(Confirmation, token) if token else None
    case = ctx.session.get(Case, pending.case_id) if pending and pending.case_id else None
    if pending is None or pending.used_at is not None or case is None or case.region != ctx.region:
        raise CaseError("aucune commande en attente pour ce jeton")
    pending.used_at = ctx.now
    pending.used_by = f"annulé par {ctx.actor}"
    ctx.case = case
    _event(ctx, "confirmation_annulee", {"commande": pending.command})
    return f"commande #{pending.command} annulée"


def fusionner(ctx: Ctx, cmd: Command) -> str | None:
    case = _case(ctx)
    refs = [a for a in cmd.args if CASE_REF.fullmatch(a)]
    if not refs:
        raise CaseError("référence attendue : « #fusionner SSI-XXX-AAAA-NNNN »")
    match = CASE_REF.fullmatch(refs[0])
    assert match is not None
    target = service.by_reference(ctx.session, canonical(*match.groups()))
    if target is None:
        raise CaseError(f"dossier inconnu : {refs[0]}")
    target = service.resolve(ctx.session, target)
    if _grave_in_this_mail(ctx, case) and target.severity != Severity.GRAVE:
        # Merging closes the duplicate: its GRAVE follow-up would end unless the target carries it.
        _check_merge(ctx, case, target)
        return _ask_confirmation(ctx, "fusionner", [target.reference], ctx.env.settings.cases.confirmation_hours)
    service.merge(ctx.session, case, target, actor=ctx.actor, at=ctx.now)
    return f"{case.reference} fusionné dans {target.reference}"


def _check_merge(ctx: Ctx, case: Case, target: Case) -> None:
    """Refuse now what ``service.merge`` would refuse at confirmation (same rules, no change)."""
    if case.id == target.id or case.region != target.region or case.merged_into_id is not None:
        raise CaseError(f"fusion de {case.reference} dans {target.reference} impossible")
    if not lifecycle.is_open(target.status):
        raise CaseError(f"{target.reference} est clos : rouvrez-le avant d'y fusionner un doublon")


def _confirmed_merge(ctx: Ctx, case: Case, pending: Confirmation) -> str:
    reference = str((pending.args or [""])[0] or "")
    found = service.by_reference(ctx.session, reference) if reference else None
    if found is None:
        raise CaseError(f"dossier inconnu : {reference}")
    target = service.resolve(ctx.session, found)
    service.merge(ctx.session, case, target, actor=ctx.actor, at=ctx.now)
    return f"{case.reference} fusionné dans {target.reference}"


def aide(ctx: Ctx, cmd: Command) -> str | None:
    ctx.show_help = True
    return None


def ouverts(ctx: Ctx, cmd: Command) -> str | None:
    found = service.open_cases(ctx.session, ctx.region)
    ctx.digests.append(("ouverts", found, None))
    return f"liste des dossiers ouverts envoyée ({nombre(len(found), 'dossier')})"


def reactiver(ctx: Ctx, cmd: Command) -> str | None:
    """« #reactiver <adresse> »: staff confirm a contact of their region works again (after the
    establishment corrected its mailbox): active again, its counted refusals cleared."""
    address = (cmd.args[0] if cmd.args else "").strip("<>()«»\"',;: ").lower()
    if "@" not in address:
        raise CaseError("adresse manquante : « #reactiver <adresse> »")
    if not contacts_of(ctx.session, address, ctx.region):
        raise CaseError(f"{address} ne figure pas dans l'annuaire des contacts de la région {ctx.region}")
    done = reactivate_address(ctx.session, address, ctx.now, statuses=("bouncing", "disabled"), region=ctx.region)
    if not done:
        return f"{address} est déjà actif : rien à réactiver"
    log.info("contact reactivated by staff", extra={"address": address, "actor": ctx.actor,
                                                     "contacts": [c.id for c in done]})
    return f"contact {address} réactivé ({nombre(len(done), 'établissement')})"


def retards(ctx: Ctx, cmd: Command) -> str | None:
    found = service.overdue_cases(ctx.session, ctx.region, ctx.now, ctx.env.settings.cases.overdue_days)
    ctx.digests.append(("retards", found, None))
    return f"liste des dossiers en retard envoyée ({nombre(len(found), 'dossier')})"


def not_here(ctx: Ctx, cmd: Command) -> str | None:
    raise CaseError("commande réservée aux demandes de bulletin et aux établissements")


NO_CASE = ("aucun dossier concerné : répondez au message du dossier ou indiquez sa référence "
           "[SSI-XXX-AAAA-NNNN] dans l'objet")



def no_case_reason(facts: MessageFacts) -> str:
    """Why a command found no case, and what works when the cause is an unsigned thread.

    Analysis ignores In-Reply-To / References that the DKIM signature does not cover (RFC 6376
    §8.15; some Microsoft 365 setups sign neither): "reply to the message" cannot work then."""
    every = [str(h) for h in _as_list(facts.extra.get("uncovered_headers"))]
    uncovered = [h for h in every if h in ("In-Reply-To", "References")]
    if not uncovered and "Subject" in every and CASE_REF.search(facts.subject or ""):
        # docs/guarantees.md: an unsigned Subject cannot choose a case (anyone can type a reference).
        return ("aucun dossier concerné : la référence est dans l'objet, mais l'en-tête Subject n'est pas "
                "couvert par la signature DKIM de votre message, la passerelle ne peut donc pas s'y fier ; "
                "répondez directement à un message de la passerelle sur ce dossier")
    if not uncovered:
        return NO_CASE
    why = (f"aucun dossier ni bulletin concerné : votre messagerie ne signe pas (DKIM) les en-têtes "
           f"{', '.join(uncovered)} qui relient votre réponse au message d'origine, la passerelle ne peut donc "
           "pas s'y fier")
    if "subject" in facts.sender.signed_headers:
        return (why + " ; indiquez dans l'objet la référence [SSI-XXX-AAAA-NNNN] du dossier, gardez l'objet du "
                "message du bulletin (« [Bulletin 12] Aperçu du bulletin : … »), ou envoyez « #confirmer <jeton> » "
                "dans un nouveau message")
    return (why + " ; l'objet n'est pas signé non plus : envoyez « #confirmer <jeton> » dans un nouveau message, "
            "ou demandez à l'administrateur de votre messagerie de signer Subject, In-Reply-To et References")


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, (list, tuple)) else []


def transferer(ctx: Ctx, cmd: Command) -> str | None:
    """``#transferer <REGION>``: move a declaration to the region its establishment belongs to
    (commands/transfer.py). Authorised like every command: authenticated staff of the case's
    region (commands/handling.py), so only the source region can give a case away."""
    # The mail's later commands still name the old case, now closed: they act on nothing there.
    _moved, note = transfer_case(ctx.env, ctx.session, ctx.inbound, _case(ctx), cmd.args, actor=ctx.actor)
    return note


# SILENT (issue 17): what a notification could not carry, on demand (commands/on_demand.py).
def original(ctx: Ctx, cmd: Command) -> str | None:
    case = on_demand.target_case(ctx.session, ctx.case, cmd.args, ctx.region)
    return on_demand.send_original(ctx.env, ctx.session, ctx.inbound, ctx.facts, actor=ctx.actor,
                                   region=ctx.region, case=case)


def quarantaine(ctx: Ctx, cmd: Command) -> str | None:
    return on_demand.quarantine_command(ctx.env, ctx.session, ctx.inbound, ctx.facts, actor=ctx.actor,
                                        region=ctx.region, args=cmd.args)
# end SILENT


COMMANDS: dict[str, Spec] = {
    "assigner": Spec(assigner, summary="#assigner <adresse|moi>     assigner le dossier"),
    "qualifier": Spec(qualifier, summary="#qualifier grave|significatif|sans-suite"),
    "finess": Spec(finess, summary="#finess <FINESS ET>          préciser l'établissement touché"),
    "statut": Spec(statut, needs_case=False,
                   summary="#statut <statut>            changer le statut (ou #statut REF : synthèse)"),
    "transmettre-acss": Spec(transmettre_acss, summary="#transmettre-acss [commentaire]  transmettre à l'ACSS"),
    "demander-info": Spec(demander_info, summary="#demander-info <texte>      questionner le déclarant"),
    "repondre": Spec(repondre, summary="#repondre <texte>           répondre au déclarant"),
    "note": Spec(note, summary="#note <texte>               note interne à la chronologie"),
    "clore": Spec(clore, summary="#clore [motif]              clore (confirmation si GRAVE)"),
    "rouvrir": Spec(rouvrir, summary="#rouvrir [motif]            rouvrir un dossier clos"),
    "diffuser": Spec(diffuser, summary="#diffuser                   diffuser l'alerte (avec confirmation)"),
    "confirmer": Spec(confirmer, needs_case=False, summary="#confirmer <jeton>          confirmer une commande"),
    "annuler": Spec(annuler, needs_case=False, summary="#annuler <jeton>            annuler une commande en attente"),
    "fusionner": Spec(fusionner, summary="#fusionner REF              fusionner ce doublon dans REF"),
    "ouverts": Spec(ouverts, needs_case=False, summary="#ouverts                    dossiers ouverts de la région"),
    "retards": Spec(retards, needs_case=False, summary="#retards                    dossiers sans activité récente"),
    "transferer": Spec(transferer, summary="#transferer <RÉGION>        transférer à la région de l'établissement"),
    "original": Spec(original, needs_case=False,
                     summary="#original [REF]             recevoir le message d'origine (ou son résumé)"),
    "quarantaine": Spec(quarantaine, needs_case=False,
                        summary="#quarantaine [liberer N]    liste de la quarantaine / remettre N en traitement"),
    "reactiver": Spec(reactiver, needs_case=False,
                      summary="#reactiver <adresse>        réactiver un contact désactivé après des refus"),
    "aide": Spec(aide, needs_case=False, summary="#aide                       cette aide"),
    "lu": Spec(not_here, needs_case=False,
               summary="#lu                         (établissements) accuser réception d'un bulletin"),
    "bulletin": Spec(not_here, needs_case=False,
                     summary="#bulletin <titre>           (objet d'un courriel à la boîte SSI) préparer un bulletin"),
    "cible": Spec(not_here, needs_case=False,
                  summary="#cible categorie=LBM,ESMS departement=69   destinataires du bulletin (une ligne par "
                          "ensemble, les lignes s'ajoutent)"),
    "tlp": Spec(not_here, needs_case=False,
                summary="#tlp GREEN                   (bulletin) marquage TLP : CLEAR, GREEN, AMBER, AMBER+STRICT"),
}


HELP_POINTER = "Envoyez « #aide » pour la liste des commandes."


def help_text() -> str:
    lines = ["Commandes disponibles (une par ligne, en réponse au message d'un dossier) :"]
    lines += [f"  {spec.summary}" for spec in COMMANDS.values() if spec.summary]
    lines.append("Par courriel à la boîte SSI, objet « #statut REF », « #ouverts » ou « #retards » : synthèse.")
    lines += HELP_NOTES
    return "\n".join(lines)


# What the one-line summaries cannot say: where a text ends, how a bulletin is written.
HELP_NOTES = [
    "",
    "Le texte de #repondre, #demander-info, #note, #clore, #rouvrir et #transmettre-acss commence après la",
    "commande et continue sur les lignes suivantes, jusqu'à la prochaine ligne de commande, la signature",
    "(ligne « -- ») ou le message cité : écrivez-le comme un courriel, sauts de ligne compris.",
    "",
    # The values « #statut » accepts, in the words people type (accents and case do not matter).
    "Statuts d'un incident (#statut <statut>) : "
    + ", ".join(str(libelle(st)) for st in lifecycle.INCIDENT_STATUSES[1:]) + ".",
    "Statuts d'une alerte : " + ", ".join(str(libelle(st)) for st in lifecycle.ALERT_STATUSES[1:])
    + " (« diffusée » s'obtient par #diffuser).",
    "",
    "Bulletin : écrivez à la boîte SSI avec l'objet « #bulletin <titre> », une ou plusieurs lignes",
    "« #cible » (clés categorie, departement, region, finess ; valeurs séparées par des virgules ; une ligne",
    "par ensemble de destinataires, plusieurs lignes s'additionnent, « #cible tous » pour toute la région),",
    "éventuellement « #tlp GREEN », puis le texte. Un aperçu vous revient : répondez « #diffuser ».",
    "Exemple :",
    "  #cible categorie=LBM,ESMS departement=69,01",
    "  #cible finess=690781810",
]
