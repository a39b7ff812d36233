"""What happens after a bulletin is queued: acknowledgements, bounces, fallback contacts.

* Acknowledgement: any reply threaded to one of our bulletin messages (In-Reply-To/References,
  RFC 5322 §3.6.4), ``#lu`` or free text, marks the establishment as having acknowledged, and so
  does a read receipt saying it was displayed (RFC 8098 ``displayed``, Outlook « Lu : »).
  Other automatic replies (RFC 3834), bounces and loops never count.
* Replies are read, not just counted: one that says more than an acknowledgement (a courtesy
  « Merci, bien reçu » or ``#lu`` is all it may say, ``mail/courtesy.py``: any other text, an
  attachment, a question) reaches the region's staff with its text inline (``reponse_diffusion``),
  attached to the alert's case for a relayed alert. One that reads as a declaration goes on to
  processing, which opens a case linked to the alert (``processing/handlers.py``).
* Bounces, from a DSN mailed back to the VERP return path (RFC 3464) or from a 5xx answer of the
  relay (``Sender.on_permanent_failure``, RFC 5321 §4.2.1), go through ``apply_bounce``: the
  outbox row is marked, the contact scored (directory.record_bounce), and for a permanent bounce
  of a bulletin message the establishment's next contact (ssi, then rssi, then dsi) gets the
  bulletin instead while staff get a "contact à corriger" task. Case mail bounces are recorded
  on the case timeline and notified to staff the same way.

A temporary DSN ("delayed", RFC 3464 §2.3.3) is scored against the contact but does not mark the
message bounced: the remote MTA is still trying.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import case as sql_case
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgateway.bulletins.fanout import FANOUT_KINDS, queue_message
from mailgateway.cases import service
from mailgateway.cases.timeline import append_event
from mailgateway.clock import aware, french_datetime
from mailgateway.directory import BouncePolicy, RecipientRow, record_bounce
from mailgateway.directory.bounces import (
    Evidence,
    newly_out_of_use,
    reactivate_address,
    refusals_of,
    statuses_of,
)
from mailgateway.directory.staff import staff_addresses
from mailgateway.directory.targets import RECIPIENT_ROLES
from mailgateway.dispatch import outbox
from mailgateway.dispatch.contexts import region_context
from mailgateway.mail.auth import organisational_domain
from mailgateway.mail.bounce import mailbox_full
from mailgateway.mail.facts import MessageFacts
from mailgateway.processing import replay
from mailgateway.processing.context import Env, Outcome, notify_staff
from mailgateway.store.models import (
    Bulletin,
    BulletinRecipient,
    Case,
    CaseEvent,
    Contact,
    Establishment,
    InboundMessage,
    Indicator,
    OutboundMessage,
)

log = logging.getLogger(__name__)
_NEVER_ACKNOWLEDGES = frozenset({"bounce", "loop", "auto_reply"})
# Our messages a reply acknowledges: the bulletin or relayed alert, and its reminder.
ANSWERED_KINDS = (*FANOUT_KINDS, "relance_bulletin")


def _bracketed(ids: tuple[str, ...] | list[str]) -> list[str]:
    out = []
    for mid in ids[:50]:
        bare = mid.strip().strip("<>").strip()
        if bare:
            out.append(f"<{bare}>")
    return out


def bulletin_message(session: Session, message_ids: tuple[str, ...] | list[str],
                     kinds: tuple[str, ...] = FANOUT_KINDS) -> OutboundMessage | None:
    """Our bulletin message (of ``kinds``) that one of ``message_ids`` names, if any."""
    ids = _bracketed(message_ids)
    if not ids:
        return None
    return session.scalar(select(OutboundMessage).where(
        OutboundMessage.message_id.in_(ids), OutboundMessage.bulletin_id.is_not(None),
        OutboundMessage.kind.in_(kinds)).order_by(OutboundMessage.id).limit(1))


MAX_FORWARD_CANDIDATES = 50


def _folded(text: str) -> str:
    return " ".join(text.casefold().split())


def answered_message(session: Session, facts: MessageFacts) -> OutboundMessage | None:
    """Our bulletin or relayed alert (or its reminder) that this mail answers: named by
    In-Reply-To/References, or — for a forward that keeps none (Outlook « TR: ») — one sent to
    the sender's address whose subject the mail carries, when analysis saw our subject tag or our
    address as the forwarded author (``extra["quotes_our_mail"]``, mail/alert.py). The latest such
    message wins; without a subject in common, the forwarded block must name us and the latest
    message sent to that address is the one."""
    if facts.in_reply_to:
        row = bulletin_message(session, facts.in_reply_to, kinds=ANSWERED_KINDS)
        if row is not None:
            return row
    if facts.case_ref:
        # Threaded to a case (its In-Reply-To or its [SSI-…] tag): an answer to that case's mail,
        # never a bulletin's by the fallback below — found by an outside tester: an Outlook reply
        # (« De : ARS … Envoyé : … » quoted) from a laboratory that had also received a bulletin
        # was filed as the bulletin's read receipt and never reached its case.
        return None
    how = facts.extra.get("quotes_our_mail")
    sender = (facts.sender.address or "").strip().lower()
    if not how or not sender:
        return None
    rows = list(session.scalars(select(OutboundMessage).where(
        OutboundMessage.recipient == sender, OutboundMessage.bulletin_id.is_not(None),
        OutboundMessage.kind.in_(ANSWERED_KINDS)).order_by(OutboundMessage.id.desc()).limit(MAX_FORWARD_CANDIDATES)))
    subject = _folded(facts.subject)
    body = _folded(facts.body_text[:20_000])
    for where in (subject, body):
        for row in rows:
            bulletin = session.get(Bulletin, row.bulletin_id)
            title = _folded(bulletin.subject) if bulletin is not None else ""
            if title and title in where:
                return row
    return rows[0] if rows and how == "transfert" else None


# Indicators whose mention in an establishment's answer is a sighting (a phone number is not).
SIGHTING_TYPES = ("ip", "domain", "url", "hash", "email")
MAX_ALERT_INDICATORS = 500
_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_/:")


def _named_in(value: str, text: str) -> bool:
    """``value`` occurs in ``text`` as a whole token (« 203.0.113.4 » is not in « 203.0.113.45 »).
    str.find only: linear in the text for each value."""
    start = text.find(value)
    while start != -1:
        end = start + len(value)
        before = text[start - 1] if start else " "
        after = text[end] if end < len(text) else " "
        dotted_on = after == "." and text[end + 1 : end + 2].isalnum()  # « 203.0.113.45.7 »
        if before not in _TOKEN_CHARS and before != "." and after not in _TOKEN_CHARS and not dotted_on:
            return True
        start = text.find(value, start + 1)
    return False


def sighted_indicators(session: Session, case: Case | None, new_text: str) -> list[str]:
    """The alert's indicators (IP, domain, URL, hash, address) that an establishment's own text
    names: « nous avons observé une connexion depuis 203.0.113.45 » reports a sighting, which
    staff must see as an incident, not as a thank-you. Defanged forms (« 203.0.113[.]45 ») count."""
    if case is None or case.kind != "alert" or not new_text.strip():
        return []
    text = new_text[:20_000].casefold().replace("[.]", ".").replace("(.)", ".").replace("hxxp", "http")
    values = session.scalars(select(Indicator.value).where(
        Indicator.case_id == case.id, Indicator.type.in_(SIGHTING_TYPES)).order_by(Indicator.id)
        .limit(MAX_ALERT_INDICATORS))
    return [v for v in values if len(v) >= 4 and _named_in(v.casefold(), text)][:20]


def recipient_of(session: Session, row: OutboundMessage) -> BulletinRecipient | None:
    rec = session.scalar(select(BulletinRecipient).where(BulletinRecipient.outbound_id == row.id).limit(1))
    if rec is None and row.bulletin_id is not None:
        # A message superseded by a fallback contact: the establishment is found by address.
        rec = session.scalar(select(BulletinRecipient).where(
            BulletinRecipient.bulletin_id == row.bulletin_id, BulletinRecipient.address == row.recipient).limit(1))
    return rec


def read_receipt_of(facts: MessageFacts) -> bool:
    """A read receipt saying the message was displayed (mail/receipt.py)."""
    receipt = facts.extra.get("receipt")
    return isinstance(receipt, dict) and bool(receipt.get("read"))


def only_acknowledges(facts: MessageFacts) -> bool:
    """The reply says nothing beyond « lu » / « merci, bien reçu » (mail/courtesy.py)."""
    return bool(facts.extra.get("courtesy"))


MAX_INLINE_TEXT = 8000


def acknowledgement_prehandler(env: Env, session: Session, inbound: InboundMessage,
                               facts: MessageFacts) -> Outcome | None:
    """An establishment replied to a bulletin: acknowledged. Not ours: None (next handler).
    First, whatever the mail: authenticated mail from a contact taken out of use reactivates it."""
    reactivate_sender(env, session, facts, inbound)
    receipt = facts.kind == "auto_reply" and "receipt" in facts.extra
    if facts.kind in _NEVER_ACKNOWLEDGES and not receipt:
        return None
    row = answered_message(session, facts)
    if row is None or from_staff(env, session, row, facts):
        return None
    rec = recipient_of(session, row)
    # Only the establishment the message went to acknowledges it: a reply threaded under another
    # establishment's copy (its In-Reply-To is easy to get) is processed, but counts nothing for it
    # (outside tester: « Bien reçu » from one hospital marked a laboratory as having read).
    counts = rec is not None and rec.acknowledged_at is None and _same_organisation(facts.sender.address, row.recipient)
    if receipt:
        if read_receipt_of(facts) and counts and rec is not None:
            rec.acknowledged_at = env.clock.now()  # RFC 8098 "displayed": read
        _attach(env, session, row, inbound, facts)
        return Outcome("processed", reason=f"accusé de lecture automatique du bulletin {row.bulletin_id}")
    if counts and rec is not None:
        rec.acknowledged_at = env.clock.now()
    if facts.extra.get("reply_declaration") is not None or (
            not only_acknowledges(facts) and sighted_indicators(session, alert_case_of(session, row), facts.new_text)):
        # An incident declared in answer, or a sighting of the alert's indicators: processing opens
        # a case linked to the alert. Read in the new text only: « RE: Campagne d'hameçonnage » with
        # a question is not a declaration.
        return None
    if not only_acknowledges(facts):
        notify_reply(env, session, row, rec, inbound, facts)
        return Outcome("processed", reason=f"réponse au bulletin {row.bulletin_id} transmise à l'équipe")
    _attach(env, session, row, inbound, facts)
    return Outcome("processed", reason=f"accusé de lecture du bulletin {row.bulletin_id}")


def _same_organisation(sender: str | None, recipient: str) -> bool:
    """The sender writes from the recipient's organisational domain (the same mailbox, a colleague,
    a subdomain: mail/auth.py, the public suffix list)."""
    mine = (sender or "").strip().lower().rpartition("@")[2]
    theirs = recipient.strip().lower().rpartition("@")[2]
    return bool(mine) and organisational_domain(mine) == organisational_domain(theirs)


def reactivate_sender(env: Env, session: Session, facts: MessageFacts,
                      inbound: InboundMessage | None = None) -> list[Contact]:
    """Mail authenticated as coming from a bouncing contact's address (DKIM aligned with its
    From, mail/auth) proves the mailbox lives again: its contacts are reactivated
    (directory.bounces.reactivate: score and counted refusals cleared, history kept) and a log
    line says so. Only ``bouncing`` contacts (out of use after refusals): a contact staff disabled
    stays disabled. A report, a loop or an automatic reply proves nothing of the kind."""
    sender = (facts.sender.address or "").strip().lower()
    if not sender or not facts.sender.authenticated or facts.kind in _NEVER_ACKNOWLEDGES:
        return []
    contacts = reactivate_address(session, sender, env.clock.now(),
                                  only_if=None if inbound is None else _written_after_bounce(inbound, facts))
    for contact in contacts:
        log.info("contact reactivated by authenticated mail", extra={
            "contact_id": contact.id, "finess": contact.finess, "address": contact.address,
            "method": facts.sender.method, "message_id": facts.message_id})
    return contacts


def _written_after_bounce(inbound: InboundMessage, facts: MessageFacts) -> Callable[[Contact], bool]:
    """Whether ``inbound`` was written after the contact's last refusal: only then does it prove
    the mailbox lives again. An outside tester replayed a signed mail ten days old behind one more
    ``Received:`` line and reactivated a bouncing contact (bulletins would go on to a dead
    mailbox). Read only when a bouncing contact has this address (rare), like the command date
    check (processing/replay.py): a ``Date:`` the signature covers, if it names its headers,
    and not more than a day ahead of the reception."""

    @cache
    def written() -> datetime | None:  # read once, whatever the number of contacts
        when, problem = replay.sent_at(inbound.raw)
        signed = facts.sender.signed_headers
        if when is None or problem is not None or (signed and "date" not in signed):
            return None
        return None if when > aware(inbound.received_at) + replay.MAX_FUTURE else when

    def proves(contact: Contact) -> bool:
        when = written()
        return when is not None and (contact.last_bounce_at is None or when > aware(contact.last_bounce_at))

    return proves


def from_staff(env: Env, session: Session, row: OutboundMessage, facts: MessageFacts) -> bool:
    """Mail from the staff of the bulletin's region: never an establishment's answer.

    Staff answering our own notification of an establishment's reply (« #repondre … ») quote its
    References, which name the relayed message: without this, the agent's mail was read as the
    establishment's acknowledgement and forwarded back to staff as « Réponse de agent@… ». The
    address alone decides (authenticated or not): a staff address is never an establishment's,
    and the command handler checks authentication itself."""
    sender = (facts.sender.address or "").strip().lower()
    bulletin = session.get(Bulletin, row.bulletin_id) if row.bulletin_id is not None else None
    if not sender or bulletin is None:
        return False
    return sender in staff_addresses(env.settings, session, bulletin.region)


@dataclass(frozen=True)
class RelayQuestion:
    """An establishment's answer to a relayed alert, as staff were notified of it."""

    inbound_id: int
    author: str  # the answer's From address, where staff's « #repondre » goes
    message_id: str | None  # to thread the answer under the establishment's mail (RFC 5322 §3.6.4)


def relay_question(session: Session, facts: MessageFacts, case: Case) -> RelayQuestion | None:
    """The establishment answer whose staff notification (``reponse_diffusion``) this staff mail
    replies to, on ``case`` (the alert's). The notification's idempotency key names the inbound
    message (``notification_reponse_diffusion:<inbound id>:<agent>``), and the alert's timeline
    says who wrote it: no new column, and the declarant of the alert (the national cell) is
    never mistaken for the establishment that asked."""
    for mid in _bracketed(facts.in_reply_to)[:20]:  # In-Reply-To first: the nearest notification
        row = session.scalar(select(OutboundMessage).where(
            OutboundMessage.message_id == mid, OutboundMessage.kind == "notification_reponse_diffusion",
            OutboundMessage.case_id == case.id).limit(1))
        if row is None:
            continue
        _kind, _sep, rest = row.idempotency_key.partition(":")
        inbound_id = rest.partition(":")[0]
        if not inbound_id.isdigit():
            continue
        event = session.scalar(select(CaseEvent).where(
            CaseEvent.case_id == case.id, CaseEvent.inbound_id == int(inbound_id),
            CaseEvent.type == "message_recu").limit(1))
        inbound = session.get(InboundMessage, int(inbound_id))
        if event is None or inbound is None or "@" not in (event.actor or ""):
            continue
        return RelayQuestion(inbound.id, event.actor.strip().lower(), inbound.message_id)
    return None


def alert_case_of(session: Session, row: OutboundMessage) -> Case | None:
    """The alert case a relayed message belongs to (None for an awareness bulletin)."""
    bulletin = session.get(Bulletin, row.bulletin_id) if row.bulletin_id is not None else None
    if bulletin is None or bulletin.case_id is None:
        return None
    return session.get(Case, bulletin.case_id)


def _attach(env: Env, session: Session, row: OutboundMessage, inbound: InboundMessage, facts: MessageFacts) -> None:
    """A relayed alert's case keeps every answer on its timeline (a bulletin has no case)."""
    case = alert_case_of(session, row)
    if case is not None:
        service.record_received(session, case, inbound, facts, at=env.clock.now())


def notify_reply(env: Env, session: Session, row: OutboundMessage, rec: BulletinRecipient | None,
                 inbound: InboundMessage, facts: MessageFacts) -> int:
    """Tell the region's staff what an establishment answered to a bulletin or relayed alert,
    its text inline (the relayed mail invites questions: « que devons-nous faire ? »)."""
    bulletin = session.get(Bulletin, row.bulletin_id) if row.bulletin_id is not None else None
    if bulletin is None:
        return 0
    est = session.get(Establishment, rec.finess) if rec is not None else None
    text = (facts.new_text or facts.body_text or "").strip()
    extra: dict[str, Any] = {
        "reply_from": facts.sender.address or "inconnu",
        "reply_text": text[:MAX_INLINE_TEXT],
        "reply_truncated": len(text) > MAX_INLINE_TEXT,
        "question": "?" in text,
        "attachments": int(facts.extra.get("attachments", 0) or 0),
        "bulletin": {"id": bulletin.id, "subject": bulletin.subject},
        "establishment": {"name": est.name, "finess": est.finess, "departement": est.departement} if est else None,
    }
    case = alert_case_of(session, row)
    if case is not None:
        service.record_received(session, case, inbound, facts, at=env.clock.now())
        return notify_staff(env, session, case, inbound, facts, template="reponse_diffusion",
                            kind="notification_reponse_diffusion", extra=extra)
    context: dict[str, Any] = {
        **region_context(env.settings, bulletin.region),
        "case": None,
        "received_at_fr": french_datetime(inbound.received_at),
        "sender": facts.sender.to_json(),
        "subject": service.one_line(facts.subject),
        "indicators": [i.to_json() for i in facts.indicators[:50]],
        "original_attached": False,
        **extra,
    }
    return env.mailer.send_to_staff(session, bulletin.region, template="reponse_diffusion", context=context,
                                    kind="notification_reponse_diffusion",
                                    key=f"notification_reponse_diffusion:{inbound.id}",
                                    in_reply_to=facts.message_id)


# --- bounces ------------------------------------------------------------------------------------


UNMATCHED_BOUNCE = "rebond ignoré : il ne désigne aucun message envoyé par la passerelle"
UNVERIFIED_BOUNCE = ("rebond non vérifié (reçu hors de l'adresse de retour du message) : "
                     "enregistré, sans effet sur le contact ni sur la diffusion")


def handle_bounce(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts) -> Outcome:
    """The ``bounce`` handler (``processing/pipeline.py``): a DSN names its outbox row by VERP
    token, else by Message-ID.

    Only a DSN at the message's own VERP return path acts (row bounced, fallback contact, staff
    task). One that merely names a Message-ID of ours is recorded against the contact as weak
    evidence (directory/bounces.py) and nothing else: Message-IDs are seen by more people than
    the return path. One that names nothing we sent counts for nothing (docs/guarantees.md: forged DSNs).
    """
    bounce = facts.bounce
    assert bounce is not None
    match = outbox.find_bounced(session, bounce.verp_token, bounce.original_message_id, bounce.recipients)
    if match is None:
        return Outcome("processed", reason=UNMATCHED_BOUNCE)
    diagnostic = bounce.diagnostic or "; ".join(bounce.recipients) or "rebond"
    if not match.rows:
        return _unattributed_bounce(env, session, match, inbound, bounce.recipients, diagnostic,
                                    permanent=bounce.permanent)
    if match.evidence != "verp":
        for row in match.rows:
            record_bounce(session, row.recipient, bounce.permanent, diagnostic, env.clock.now(),
                          outbound_id=row.id, policy=BouncePolicy.from_settings(env.settings.directory),
                          evidence="message_id")
        return Outcome("processed", reason=UNVERIFIED_BOUNCE)
    case = None
    for row in match.rows:  # a report about a message to several agents may name several
        case = apply_bounce(env, session, row, permanent=bounce.permanent, diagnostic=diagnostic,
                            inbound=inbound, evidence="verp") or case
    return Outcome("processed", case=case)


UNATTRIBUTED_BOUNCE = ("rebond d'un message envoyé à plusieurs destinataires qui n'en nomme aucun "
                       "(une boîte qui fait suivre ?) : enregistré, aucune adresse mise en cause")


def _unattributed_bounce(env: Env, session: Session, match: outbox.BounceMatch, inbound: InboundMessage,
                         reported: Sequence[str], diagnostic: str, *, permanent: bool) -> Outcome:
    """A report at the return path of a message to several agents naming none of them (one of
    them forwards to an address that refused): which agent cannot be known, so no row is marked
    and no address scored; the case's story says a copy did not arrive, and where it went."""
    row = match.row
    case = session.get(Case, row.case_id) if row.case_id is not None else None
    if case is not None:
        inbound.case_id = case.id
        append_event(session, case, type="rebond", actor="passerelle", at=env.clock.now(), inbound_id=inbound.id,
                     outbound_id=row.id,
                     data={"destinataire": ", ".join(_addresses(reported)[:5]) or "inconnu",
                           "permanent": permanent, "diagnostic": diagnostic[:500],
                           "envoye_a": ", ".join(c.recipient for c in match.copies),
                           "non_attribue": True})
    return Outcome("processed", reason=UNATTRIBUTED_BOUNCE, case=case)


def _addresses(reported: Sequence[str]) -> list[str]:
    """What a report names that looks like an address: the rest of its text stays out of the story."""
    found = (r.strip().lower() for r in reported[:50])
    return [a for a in found if 3 <= len(a) <= 254 and a.count("@") >= 1 and a.isprintable() and " " not in a]


def permanent_failure_hook(env: Env) -> Callable[[Session, OutboundMessage, str], None]:
    """For ``Sender(on_permanent_failure=...)``: a 5xx at the relay (failed) is a hard bounce,
    a message given up after its deadline (expired) a soft one."""

    def hook(session: Session, row: OutboundMessage, answer: str) -> None:
        # « 552 5.2.2 mailbox full » at the relay is final for this message, not for the contact.
        permanent = row.status == "failed" and not mailbox_full(answer)
        apply_bounce(env, session, row, permanent=permanent, diagnostic=answer)

    return hook


def apply_bounce(env: Env, session: Session, row: OutboundMessage, *, permanent: bool, diagnostic: str,
                 inbound: InboundMessage | None = None, evidence: Evidence = "relay") -> Case | None:
    """A failure of ``row`` known from our relay (``relay``) or a DSN at its VERP address (``verp``)."""
    now = env.clock.now()
    if permanent:
        outbox.mark_bounced(session, row, now, diagnostic)
    policy = BouncePolicy.from_settings(env.settings.directory)
    before = statuses_of(session, row.recipient)
    contacts = record_bounce(session, row.recipient, permanent, diagnostic, now, outbound_id=row.id, policy=policy,
                             evidence=evidence)
    # One refusal no longer takes a directory contact out of use (bounce_min_messages). Staff are
    # asked to correct a contact when this bounce did, for an address the directory does not know,
    # and on our relay's own refusal (staff have always been told of those: the first one now says
    # the address stays in use until a second message is refused).
    marked = bool(newly_out_of_use(contacts, before))
    notify = not contacts or marked or (evidence == "relay" and any(c.status == "active" for c in contacts))
    refused = refusals_of(session, contacts[0], now, policy) if contacts else 0
    finess = contacts[0].finess if contacts else None
    case = session.get(Case, row.case_id) if row.case_id is not None else None
    if row.bulletin_id is not None and row.kind in FANOUT_KINDS:
        bulletin = session.get(Bulletin, row.bulletin_id)
        rec = recipient_of(session, row)
        if bulletin is None or rec is None:
            return None
        if row.status in ("bounced", "failed"):
            rec.status = "bounced"
        elif row.status == "expired":
            rec.status = "expired"
        if not permanent:
            return None
        fallback = _fallback(env, session, bulletin, rec, row)
        if notify:
            _contact_task(env, session, bulletin.region, row, diagnostic, rec.finess, fallback, bulletin=bulletin,
                          marked=marked, known=bool(contacts), refused=refused, policy=policy)
        return None
    if case is not None:
        if inbound is not None:
            inbound.case_id = case.id
        append_event(session, case, type="rebond", actor="passerelle", at=now,
                     inbound_id=inbound.id if inbound is not None else None, outbound_id=row.id,
                     data={"destinataire": row.recipient, "permanent": permanent, "diagnostic": diagnostic[:500]})
        if permanent and notify:
            _contact_task(env, session, case.region, row, diagnostic, finess or case.finess, None, case=case,
                          marked=marked, known=bool(contacts), refused=refused, policy=policy)
    elif permanent and contacts and notify:
        est = session.get(Establishment, contacts[0].finess)
        if est is not None and est.region and env.settings.region(est.region) is not None:
            _contact_task(env, session, est.region, row, diagnostic, est.finess, None, marked=marked, known=True,
                          refused=refused, policy=policy)
    return case


def _fallback(env: Env, session: Session, bulletin: Bulletin, rec: BulletinRecipient,
              bounced: OutboundMessage) -> str | None:
    """Queue the bulletin to the establishment's next usable contact; return its address."""
    if bulletin.status == "cancelled":
        return None
    tried = set(session.scalars(select(OutboundMessage.recipient).where(OutboundMessage.bulletin_id == bulletin.id,
                                                                        OutboundMessage.kind.in_(FANOUT_KINDS))))
    tried.add(bounced.recipient)
    preference = sql_case({role: rank for rank, role in enumerate(RECIPIENT_ROLES)}, value=Contact.role)
    candidates = session.execute(
        select(Establishment.finess, Establishment.name, Establishment.category, Establishment.departement,
               Contact.id, Contact.address, Contact.role)
        .join(Contact, Contact.finess == Establishment.finess)
        .where(Establishment.finess == rec.finess, Contact.status == "active", Contact.role.in_(RECIPIENT_ROLES))
        .order_by(preference, Contact.id)
    ).all()
    for values in candidates:
        row = RecipientRow(*values)
        if row.address in tried:
            continue
        case = session.get(Case, bulletin.case_id) if bulletin.case_id is not None else None
        alert = dict((case.fields or {}).get("alert") or {}) if case is not None else None
        out = queue_message(env, session, bulletin, row, alert=alert, case=case, attempt=f":{row.contact_id}")
        if out is None:
            continue
        rec.contact_id, rec.address, rec.outbound_id, rec.status = row.contact_id, row.address, out.id, "queued"
        return row.address
    return None


def _contact_task(env: Env, session: Session, region: str, row: OutboundMessage, diagnostic: str,
                  finess: str | None, fallback: str | None, *, bulletin: Bulletin | None = None,
                  case: Case | None = None, marked: bool = False, known: bool = False, refused: int = 0,
                  policy: BouncePolicy | None = None) -> int:
    """Staff task: this contact address is broken; correct the directory (contact_a_corriger).
    ``marked``: a directory contact with this address was just taken out of use; ``known``: the
    directory has it; ``refused``: distinct messages refused so far (the wording says which)."""
    if row.kind == "contact_a_corriger" or row.recipient in staff_addresses(env.settings, session, region):
        return 0  # a task about a task, or about staff's own mailbox, would loop (docs/guarantees.md)
    est = session.get(Establishment, finess) if finess else None
    context: dict[str, Any] = {
        **region_context(env.settings, region),
        "address": row.recipient,
        "diagnostic": " ".join(diagnostic.split())[:500],
        "establishment": {"name": est.name, "finess": est.finess, "departement": est.departement} if est else None,
        "fallback": fallback,
        "bulletin": {"id": bulletin.id, "subject": bulletin.subject} if bulletin is not None else None,
        "case": {"reference": case.reference} if case is not None else None,
        "bounced_at_fr": french_datetime(env.clock.now()),
        "marked": marked,
        "known": known,
        "refused": refused,
        "min_messages": (policy or BouncePolicy()).min_messages,
    }
    return env.mailer.send_to_staff(session, region, template="contact_a_corriger", context=context,
                                    kind="contact_a_corriger", key=f"contact_a_corriger:{row.id}", case=case)
