"""``#transferer <REGION>``: a declaration moved to the region its establishment belongs to.

The case is moved by ``cases.service.transfer`` (new reference in the target region, both
timelines linked, the old case closed as transferred); here is the mail it causes: the target
region's staff are notified (the case is theirs now), and the declarant is told, from the target
region's mailbox and under the new reference, where the follow-up continues.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from mailgateway.cases import service
from mailgateway.cases.service import CaseError
from mailgateway.clock import french_datetime
from mailgateway.commands.closure import declarant_verified
from mailgateway.commands.receipts import HUMAN
from mailgateway.dispatch.compose import MailSpec
from mailgateway.dispatch.contexts import case_context, region_context
from mailgateway.processing.context import Env
from mailgateway.store.models import Case, InboundMessage

__all__ = ["transfer_case"]


def _target_region(env: Env, args: tuple[str, ...]) -> str:
    configured = [r.code for r in env.settings.regions]
    word = (args[0] if args else "").strip().upper()
    if not word:
        raise CaseError(f"région attendue : « #transferer <RÉGION> » (régions : {', '.join(configured)})")
    for region in env.settings.regions:  # the code, or the region's SSI address
        if word in (region.code.upper(), region.address.upper()):
            return region.code
    raise CaseError(f"région non configurée sur cette passerelle : {word[:40]} (régions : {', '.join(configured)}) ;"
                    " le dossier n'est pas transféré")


def transfer_case(env: Env, session: Session, inbound: InboundMessage, case: Case, args: tuple[str, ...], *,
                  actor: str) -> tuple[Case, str]:
    """Move ``case``, notify the target region's staff, tell the declarant; (new case, French note)."""
    target = _target_region(env, args)
    now = env.clock.now()
    source = case.region
    moved = service.transfer(session, case, target, actor=actor, at=now)
    # The target region may already follow this structure (the declarant wrote to both mailboxes).
    window = timedelta(hours=env.settings.cases.duplicate_window_hours)
    duplicate = service.flag_duplicate(session, moved, window, at=now)
    context = {**region_context(env.settings, target), "case": case_context(moved), "previous": case.reference,
               "source_region": source, "source_name": _name(env, source), "author": actor,
               "opened_fr": french_datetime(moved.opened_at),
               "duplicate_of": duplicate.reference if duplicate is not None else None}
    env.mailer.send_to_staff(session, target, template="transfert_equipe", context=context,
                             kind="notification_transfert", key=f"transfert:{inbound.id}:{moved.id}", case=moved,
                             priority=0)
    note = f"dossier transféré à la région {target} : nouvelle référence {moved.reference}"
    if moved.declarant:
        # As for the acknowledgement: an address that did not authenticate the declaration may be a
        # forger's victim, so it is told the references only, no text taken from the mail.
        verified = declarant_verified(session, case)
        shown = case_context(moved) if verified else {**dict.fromkeys(case_context(moved)),
                                                      "reference": moved.reference, "kind": moved.kind}
        from_address, from_name = env.mailer.from_identity(target)
        spec = MailSpec(template="transfert_declarant", context={**context, "case": shown}, to=moved.declarant,
                        from_address=from_address, from_name=from_name,
                        idempotency_key=f"transfert:{inbound.id}:{moved.id}",
                        in_reply_to=service.last_message_from(session, moved, [moved.declarant]) if verified else None,
                        references=(service.thread_ids(session, moved, correspondent=moved.declarant)
                                    if verified else ()),
                        auto_submitted=HUMAN)
        sent = env.mailer.send(session, spec, kind="transfert", case=moved, actor=actor)
        told = f"déclarant {moved.declarant} informé" if sent is not None else "déclarant non informé (envoi refusé)"
        note += f" ; {told}"
    return moved, note


def _name(env: Env, code: str) -> str:
    region = env.settings.region(code)
    return region.name if region is not None else code
