"""Staff commands that fetch what a notification could not carry: ``#original``, ``#quarantaine``.

- ``#original [REF]``: the message that opened the case, attached, to the staff member who asks,
  when it fits the relay (dispatch/relaylimits.py; one copy, so ``[outbound]
  staff_attachment_max_bytes`` does not apply); otherwise its summary (size, SHA-256, attachments)
  and the server command (« mailgateway cases original REF »).
- ``#quarantaine``: the quarantine of the staff member's region (and of messages whose region is
  unknown), by mail; ``#quarantaine liberer N`` releases message N of their region for processing,
  recorded in ``quarantine_log`` with their address (processing/quarantine.py).

Only authenticated staff of the region get here (commands/handling.py). The functions take plain
arguments, not the command table's context: ``commands/table.py`` registers thin wrappers.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from mailgateway.cases import service
from mailgateway.cases.service import CaseError
from mailgateway.clock import french_datetime
from mailgateway.commands.receipts import original_of
from mailgateway.dispatch import originals, relaylimits
from mailgateway.dispatch.compose import Attachment, MailSpec
from mailgateway.dispatch.contexts import case_context, french_title, region_context
from mailgateway.dispatch.render import defang_text
from mailgateway.dispatch.wording import nombre
from mailgateway.mail.facts import MessageFacts
from mailgateway.mail.refs import CASE_REF, canonical
from mailgateway.processing import quarantine
from mailgateway.processing.context import Env
from mailgateway.store.models import Case, InboundMessage

LIST_LIMIT = 50
_RELEASE = {"liberer", "libérer", "liberation", "libération", "release", "relacher", "relâcher"}


def target_case(session: Session, case: Case | None, args: tuple[str, ...] | list[str], region: str) -> Case:
    """The case named in ``args`` (a reference), else the case of the thread; of ``region`` only."""
    for arg in args:
        match = CASE_REF.fullmatch(arg.strip("[]<>()«» ").upper())
        if match is None:
            continue
        found = service.by_reference(session, canonical(*match.groups()))
        if found is None or found.region != region:
            raise CaseError(f"dossier inconnu dans la région {region} : {arg}")
        return found
    if case is None:
        raise CaseError("référence attendue : « #original SSI-XXX-AAAA-NNNN », ou répondez au message du dossier")
    return case


def send_original(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts, *, actor: str,
                  region: str, case: Case) -> str:
    """Mail the case's original to ``actor``: attached when the relay takes it, else summarised."""
    original = original_of(session, case)
    if original is None or not original.raw:
        raise CaseError(f"le message d'origine de {case.reference} n'est plus conservé (rétention)")
    raw = original.raw
    attached = relaylimits.attachment_fits(env.settings, session, size=len(raw),
                                           wire_size=originals.attached_size(raw), capped=False)
    context: dict[str, Any] = {
        **region_context(env.settings, case.region), "case": case_context(case),
        "received_at_fr": french_datetime(original.received_at),
        "subject": defang_text(service.one_line(french_title(case.title) or "")),
        "original_attached": attached, "original_requested": True,
        "original_size_fr": originals.size_fr(len(raw)),
        "original_command": f"mailgateway cases original {case.reference}",
    }
    if not attached:
        context.update(originals.summary_context(raw))
    from_address, from_name = env.mailer.from_identity(region)
    spec = MailSpec(template="original", context=context, to=actor, from_address=from_address, from_name=from_name,
                    idempotency_key=f"original:{inbound.id}:{case.id}", in_reply_to=facts.message_id,
                    references=facts.answer_references(),
                    attachments=[Attachment(raw, "message-original.eml")] if attached else [])
    row = env.mailer.send(session, spec, kind="message_original", case=case, actor=actor)
    if row is None:
        raise CaseError("envoi du message d'origine refusé (voir la chronologie du dossier)")
    if attached:
        return f"message d'origine de {case.reference} envoyé en pièce jointe ({originals.size_fr(len(raw))})"
    return (f"message d'origine de {case.reference} trop volumineux pour le relais ({originals.size_fr(len(raw))}) : "
            f"résumé envoyé ; sur le serveur : « mailgateway cases original {case.reference} »")


def quarantine_command(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts, *, actor: str,
                       region: str, args: tuple[str, ...] | list[str]) -> str:
    """``#quarantaine`` (list) or ``#quarantaine liberer N``."""
    words = [a.strip().lower() for a in args if a.strip()]
    if words and words[0] in _RELEASE:
        return _release(env, session, actor=actor, region=region, args=words[1:])
    if words and words[0] not in ("liste", "list", "lister"):
        raise CaseError("usage : « #quarantaine » (liste) ou « #quarantaine liberer N »")
    return _send_list(env, session, inbound, facts, actor=actor, region=region)


def _release(env: Env, session: Session, *, actor: str, region: str, args: list[str]) -> str:
    number = args[0].lstrip("n°#").strip() if args else ""
    if not number.isdigit() or len(number) > 18:
        raise CaseError("numéro attendu : « #quarantaine liberer N » (N : le numéro donné par l'avis de quarantaine)")
    try:
        before = quarantine.release(session, int(number), actor=actor, now=env.clock.now(), regions={region})
    except quarantine.QuarantineError as exc:
        raise CaseError(str(exc)) from exc
    return f"message n° {before.id} remis en traitement (motif de la quarantaine : {before.reason_fr})"


def _send_list(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts, *, actor: str,
               region: str) -> str:
    found = quarantine.list_quarantined(session, regions={region, None}, limit=LIST_LIMIT + 1)
    shown = found[:LIST_LIMIT]
    oldest = min((m.quarantined_at or m.received_at for m in shown), default=env.clock.now())
    context: dict[str, Any] = {
        **region_context(env.settings, region), "listing": True, "count": len(shown), "limit": LIST_LIMIT,
        "since_fr": french_datetime(oldest),
        "messages": [{"id": m.id, "received_fr": french_datetime(m.received_at), "source": m.source,
                      "sender": m.sender or m.envelope_from, "subject": m.subject,
                      "reason": m.reason_fr + ("" if m.region else " (région inconnue : libération sur le serveur)")}
                     for m in shown],
    }
    from_address, from_name = env.mailer.from_identity(region)
    spec = MailSpec(template="quarantaine", context=context, to=actor, from_address=from_address,
                    from_name=from_name, idempotency_key=f"quarantaine_liste:{inbound.id}",
                    in_reply_to=facts.message_id, references=facts.answer_references())
    if env.mailer.send(session, spec, kind="liste_quarantaine", actor=actor) is None:
        raise CaseError("envoi de la liste refusé")
    more = " (les plus récents)" if len(found) > LIST_LIMIT else ""
    return f"liste de la quarantaine envoyée : {nombre(len(shown), 'message')}{more}"
