"""Mail sent because of staff commands: receipts, requests and answers to the declarant,
transmissions to the national cell (ACSS / CERT Santé), and query digests.

Every mail goes through ``Mailer.send`` (no-reply, loop, TLP and cap rules of docs/guarantees.md) with an
idempotency key derived from the inbound command message, so reprocessing queues nothing twice.
Mail to the declarant is threaded under the case's messages (RFC 5322 §3.6.4: In-Reply-To the
message answered, References the thread) and carries the ``[REF]`` subject tag (docs/architecture.md, "Contracts").
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgateway.cases import service, story
from mailgateway.clock import aware, french_datetime
from mailgateway.dispatch import originals, relaylimits, wording
from mailgateway.dispatch.compose import Attachment, MailSpec
from mailgateway.dispatch.contexts import case_context, region_context
from mailgateway.mail.dates import detection_fr
from mailgateway.mail.facts import MessageFacts
from mailgateway.processing.context import Env
from mailgateway.store.models import Case, CaseEvent, InboundMessage, OutboundMessage

# RFC 3834 §5: "no" — the text was written (or the sending decided) by a person, not a robot.
HUMAN = "no"


def _fr(at: datetime | None) -> str:
    return french_datetime(aware(at)) if at is not None else "—"


def send_receipt(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts, *,
                 to: str, region: str, case: Case | None, results: Sequence[dict[str, Any]],
                 refused_all: str | None = None, confirmation: dict[str, str] | None = None,
                 help_text: str | None = None, authenticated: bool = True,
                 replayed_fr: str | None = None, confirmations: Sequence[dict[str, str]] = (),
                 understood: dict[str, Any] | None = None, capped: bool = False,
                 followed: dict[str, str] | None = None, outsiders: Sequence[str] = (),
                 received_before: str | None = None,
                 unauthenticated: dict[str, Any] | None = None) -> OutboundMessage | None:
    """The receipt of a command mail: what was applied, what was refused and why.

    ``replayed_fr``: the mail had already been received and applied then (« dd/mm/yyyy à HH:MM »):
    the receipt says so plainly instead of listing a refusal. ``confirmations``: every token the
    mail asked for (``confirmation``, the last one, when only that is given). ``understood``: for
    a mail of staff where no command was recognised, what it probably meant (mail/commands.py,
    ``command_hints``). ``capped``: an answer that changes nothing, under the automatic-reply caps.
    ``followed``: the mail answered a case merged or transferred into ``case`` (``answered``, ``how``).
    ``outsiders``: the mail's To/Cc addresses outside the agency, who read it too.
    ``received_before``: the case of the declaration the mail forwarded, which had reached us already.
    ``unauthenticated``: the mail was not proven to be the addressee's (``subject``, ``received``,
    ``commands``, ``why``): the receipt says what was attempted in their name."""
    from_address, from_name = env.mailer.from_identity(region)
    spec = MailSpec(
        template="receipt",
        context={**region_context(env.settings, region), "case": case_context(case) if case else None,
                 "results": list(results), "refused_all": refused_all, "confirmation": confirmation,
                 "help": help_text, "replayed_fr": replayed_fr,
                 "confirmations": list(confirmations) or ([confirmation] if confirmation else []),
                 "understood": understood, "followed": followed, "outsiders": list(outsiders),
                 "received_before": received_before, "unauthenticated": unauthenticated},
        to=to, from_address=from_address, from_name=from_name, idempotency_key=f"receipt:{inbound.id}",
        in_reply_to=facts.message_id, references=facts.answer_references(),
    )
    # A refused (possibly forged) command is answered under the automatic-reply caps: a forger
    # must not turn the gateway into a mail cannon against a staff address (docs/guarantees.md).
    return env.mailer.send(session, spec, kind="recu_commandes", case=case, auto_reply=capped or not authenticated,
                           verified=authenticated, actor=to if authenticated else "passerelle")


# How people open and close a letter in French: the agent's text that already does so gets no
# second « Bonjour, » nor « Cordialement, » from the template (dispatch/wording.py).
has_greeting = wording.has_greeting
has_closing = wording.has_closing


def to_assignee(env: Env, session: Session, inbound: InboundMessage, case: Case, *, assignee: str,
                actor: str) -> OutboundMessage | None:
    """« #assigner paul.durand@… »: the new assignee is told, with the case summary and how to act."""
    from_address, from_name = env.mailer.from_identity(case.region)
    spec = MailSpec(
        template="assignation",
        context={**region_context(env.settings, case.region), "case": case_line(case), "author": actor,
                 "assignee": assignee},
        to=assignee, from_address=from_address, from_name=from_name,
        idempotency_key=f"assignation:{inbound.id}:{case.id}:{assignee}",
        in_reply_to=case.origin_message_id, references=[case.origin_message_id] if case.origin_message_id else [],
        tlp=case.tlp,
    )
    return env.mailer.send(session, spec, kind="assignation", case=case, actor=actor)


def to_declarant(env: Env, session: Session, inbound: InboundMessage, case: Case, *, template: str,
                 kind: str, text: str, actor: str) -> OutboundMessage | None:
    """A request for information or an answer to the declarant, threaded under the case."""
    if not case.declarant:
        return None
    from_address, from_name = env.mailer.from_identity(case.region)
    spec = MailSpec(
        template=template,
        context={**region_context(env.settings, case.region), "case": case_context(case), "message": text,
                 "author": actor, "has_greeting": has_greeting(text), "has_closing": has_closing(text)},
        to=case.declarant, from_address=from_address, from_name=from_name,
        idempotency_key=f"{kind}:{inbound.id}:{case.id}",
        in_reply_to=service.last_message_from(session, case, [case.declarant]),
        references=service.thread_ids(session, case, correspondent=case.declarant),
        auto_submitted=HUMAN,
    )
    return env.mailer.send(session, spec, kind=kind, case=case, actor=actor)


def original_of(session: Session, case: Case) -> InboundMessage | None:
    """The message that opened the case (its first inbound message)."""
    return session.scalar(select(InboundMessage).where(InboundMessage.case_id == case.id)
                          .order_by(InboundMessage.id).limit(1))


def to_acss(env: Env, session: Session, inbound: InboundMessage, case: Case, *, comment: str,
            actor: str) -> OutboundMessage | None:
    """The declaration to the national cell, the original attached as message/rfc822 (RFC 2046
    §5.2.1). Its Message-ID is ours and stable: the cell's answer threads back to the case."""
    from_address, from_name = env.mailer.from_identity(case.region)
    original = original_of(session, case)
    declaration = (case.fields or {}).get("declaration") or {}
    raw = original.raw if original is not None and original.raw else b""
    # A relay refuses a larger message for good (RFC 1870): then the cell gets the summary (size,
    # SHA-256, each attachment's name, size and hash) and asks the agency for the file.
    attached = bool(raw) and relaylimits.attachment_fits(
        env.settings, session, size=len(raw), wire_size=originals.attached_size(raw), capped=False)
    summary = {"original_attached": attached, "original_size_fr": originals.size_fr(len(raw))}
    if raw and not attached:
        summary.update(originals.summary_context(raw))
    spec = MailSpec(
        template="transmission_acss",
        context={**region_context(env.settings, case.region), "case": case_context(case), "declaration": declaration,
                 "comment": comment, "author": actor, "opened_fr": _fr(case.opened_at),
                 "detected_fr": detection_fr(declaration.get("detected_at"), declaration.get("detected_at_as_written"),
                                             aware(case.opened_at)), **summary},
        to=env.settings.acss.address, from_address=from_address, from_name=from_name,
        idempotency_key=f"transmission_acss:{inbound.id}:{case.id}",
        reply_to=from_address, auto_submitted=HUMAN,
        attachments=[Attachment(raw, "declaration-originale.eml")] if attached else [],
    )
    return env.mailer.send(session, spec, kind="transmission_acss", case=case, actor=actor)


def case_line(case: Case) -> dict[str, Any]:
    return {**case_context(case), "opened_fr": _fr(case.opened_at), "updated_fr": _fr(case.updated_at)}


def timeline_lines(session: Session, case: Case, limit: int = 25) -> list[dict[str, Any]]:
    events = list(session.scalars(select(CaseEvent).where(CaseEvent.case_id == case.id)
                                  .order_by(CaseEvent.seq.desc()).limit(limit)))
    # "line": the French story of cases/story.py, the same as ``cases show`` prints.
    return [{"seq": e.seq, "at_fr": e.when, "type": e.type, "actor": e.actor, "what": e.what, "line": e.line}
            for e in story.entries(events)]


def send_digest(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts, *, index: int,
                to: str, region: str, query: str, cases: Sequence[Case], detail: Case | None = None,
                ) -> OutboundMessage | None:
    """Answer to "#statut REF", "#ouverts", "#retards": staff only, so any TLP may be listed."""
    from_address, from_name = env.mailer.from_identity(region)
    spec = MailSpec(
        template="digest_requete",
        context={**region_context(env.settings, region), "query": query, "cases": [case_line(c) for c in cases],
                 "case": case_line(detail) if detail else None,
                 "timeline": timeline_lines(session, detail) if detail else [],
                 "overdue_days": env.settings.cases.overdue_days,
                 "generated_fr": french_datetime(env.clock.now())},
        to=to, from_address=from_address, from_name=from_name,
        idempotency_key=f"digest:{inbound.id}:{index}",
        in_reply_to=facts.message_id, references=facts.answer_references(),
        # The most restrictive label of what is listed (TLP 2.0): the digest stays with staff.
        tlp=_strictest([c.tlp for c in cases] + ([detail.tlp] if detail else [])),
    )
    return env.mailer.send(session, spec, kind="synthese", case=None, actor=to)


_TLP_ORDER = ("CLEAR", "WHITE", "GREEN", "AMBER", "AMBER+STRICT", "RED")


def _strictest(labels: Sequence[str | None]) -> str | None:
    known = [t for t in labels if t in _TLP_ORDER]
    return max(known, key=_TLP_ORDER.index) if known else None
