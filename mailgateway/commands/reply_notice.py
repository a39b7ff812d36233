"""The establishment is told what became of its reply (template ``suivi_declarant``).

``handling.handle_reply`` attaches a reply to its case and notifies staff; the sender used to hear
nothing. Now, once the reply is filed, its sender gets one short French mail when:

- an authenticated reply reopened the closed case (« votre dossier REF a été rouvert ; l'équipe SSI
  en est informée »), or opened a linked case (``[cases] reply_to_closed = "link"``);
- the reply was attached to a closed case and did not reopen it (unauthenticated, or from outside
  the establishment: docs/guarantees.md): « rattaché au dossier REF, clos ; s'il s'agit d'un nouvel
  incident, déclarez-le … »;
- it answers a ``#demander-info`` of the case (it names that mail's Message-ID): « bien reçu ».

Never anyone else. The mail goes only to an address already on the case — its declarant, the
declarant of a case merged into it, or a directory contact of its establishment — so a forged From
gets nothing but a mail to an address the case already writes to. The mail quotes nothing of the
reply (not even its subject: the reference and our own words only), goes through ``Mailer.send``
as an automatic reply (per-recipient, per-case and global caps, never to a no-reply address or to
ourselves) and is threaded under the reply (In-Reply-To; References only for an authenticated
sender, as the acknowledgement does).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from mailgateway.cases import lifecycle, service
from mailgateway.dispatch.compose import MailSpec
from mailgateway.dispatch.contexts import region_context
from mailgateway.mail.facts import MessageFacts
from mailgateway.mail.headers import id_forms
from mailgateway.processing.context import Env
from mailgateway.store.models import Case, Contact, InboundMessage, OutboundMessage

TEMPLATE = KIND = "suivi_declarant"
REQUEST_KIND = "demande_info"  # the mail of « #demander-info » (commands/table.py)

# What happened to the reply, as the template words it.
REOPENED, LINKED, KEPT_CLOSED, INFO_RECEIVED = "rouvert", "nouveau_dossier", "rattache_clos", "info_recue"


def on_case(session: Session, case: Case, address: str) -> bool:
    """``address`` is one the case already writes to: its declarant (or that of a case merged into
    it) or a directory contact of its establishment."""
    if not address:
        return False
    declarant = session.scalar(select(Case.id).where(
        Case.declarant == address, or_(Case.id == case.id, Case.merged_into_id == case.id)).limit(1))
    if declarant is not None:
        return True
    if not case.finess:
        return False
    return session.scalar(select(Contact.id).where(
        Contact.finess == case.finess, Contact.address == address).limit(1)) is not None


def answers_request(session: Session, case: Case, facts: MessageFacts) -> bool:
    """The reply names (In-Reply-To / References) a « #demander-info » mail of the case."""
    ids = id_forms(facts.in_reply_to)
    if not ids:
        return False
    return session.scalar(select(OutboundMessage.id).where(
        OutboundMessage.case_id == case.id, OutboundMessage.kind == REQUEST_KIND,
        OutboundMessage.message_id.in_(ids)).limit(1)) is not None


def situation(session: Session, case: Case, facts: MessageFacts, extra: dict[str, Any]) -> str | None:
    """What happened to the reply (``extra``: what ``handle_reply`` told staff), None: nothing to say."""
    if extra.get("kept_closed"):
        return KEPT_CLOSED
    if extra.get("reopened"):
        return REOPENED
    if extra.get("linked_from"):
        return LINKED
    if lifecycle.is_open(case.status) and answers_request(session, case, facts):
        return INFO_RECEIVED
    return None


def tell_sender(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts, *, case: Case,
                target: Case, extra: dict[str, Any]) -> OutboundMessage | None:
    """The short mail to the reply's sender; ``case``: the case the reply was threaded to,
    ``target``: the case it is attached to now (another one when it opened a linked case)."""
    what = situation(session, case, facts, extra)
    sender = (facts.sender.address or "").strip().lower()
    if what is None or not on_case(session, case, sender):
        return None
    verified = facts.sender.authenticated
    from_address, from_name = env.mailer.from_identity(target.region)
    spec = MailSpec(
        template=TEMPLATE,
        context={**region_context(env.settings, target.region), "situation": what,
                 # References of ours only: the reply's own words are never echoed.
                 "case": {"reference": target.reference}, "previous": case.reference},
        to=sender, from_address=from_address, from_name=from_name, reply_to=from_address,
        idempotency_key=f"{KIND}:{inbound.id}",
        in_reply_to=facts.message_id,
        references=[*service.thread_ids(session, target, correspondent=sender)] if verified else [],
    )
    return env.mailer.send(session, spec, kind=KIND, case=target, auto_reply=True, verified=verified)
