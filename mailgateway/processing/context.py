"""What every feature's message handling shares: the environment, the outcome, the staff notice.

``Env`` is what a handler may use (settings, the outbound ``Mailer`` gate, the clock); a handler
returns an ``Outcome``. ``Handler`` and ``Prehandler`` are the two shapes ``pipeline.py`` wires:
a prehandler may claim any message first (``None``: not mine), a handler takes one kind.
``notify_staff`` is the one staff notification about an inbound message (capped per sender).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from mailgateway.cases import service
from mailgateway.cases.timeline import append_event
from mailgateway.clock import Clock, aware, french_datetime
from mailgateway.directory.establishments import establishment
from mailgateway.directory.known import is_known_domain
from mailgateway.dispatch import originals, relaylimits
from mailgateway.dispatch.compose import Attachment
from mailgateway.dispatch.contexts import case_context, region_context, staff_indicators
from mailgateway.dispatch.mailer import Mailer
from mailgateway.mail.auth import organisational_domain
from mailgateway.mail.dates import detection_fr
from mailgateway.mail.facts import MessageFacts
from mailgateway.processing import later
from mailgateway.settings import Settings
from mailgateway.store.models import Case, InboundMessage


@dataclass
class Env:
    settings: Settings
    mailer: Mailer
    clock: Clock
    # Set by a sweep working through a backlog: staff notifications wait for its end (processing/later.py).
    defer_staff_notices: bool = False
    # Some may be deferred (by a backlog, behind a case's deferred one, or before a start): the
    # processor's sweeps look for them until one finds none (processing/runner.py).
    staff_notices_deferred: bool = False


def agency_domains(settings: Settings) -> set[str]:
    """The agency's own mail domains: its regional mailboxes', its staff's, its DKIM domain's."""
    found = {r.address.rpartition("@")[2].lower() for r in settings.regions if r.address}
    found.update(s.address.rpartition("@")[2].lower() for s in settings.staff)
    if settings.dkim and settings.dkim.domain:
        found.add(settings.dkim.domain.lower())
    return found


@dataclass(frozen=True)
class Outcome:
    status: str  # processed | quarantined
    reason: str | None = None
    case: Case | None = None


Handler = Callable[[Env, Session, InboundMessage, MessageFacts], Outcome]
Prehandler = Callable[[Env, Session, InboundMessage, MessageFacts], Outcome | None]


# The shared key (with ``:<region>``) of every unauthenticated sender in the staff notice log.
UNAUTHENTICATED_POOL = "pool:unauthenticated"


def _notice_capped(env: Env, session: Session, case: Case, facts: MessageFacts) -> bool:
    """Per-sender cap on staff notifications: over it, the message stays stored and attached to
    its case, the timeline says so, and staff get one summary notice for that sender and hour.
    The cap is against floods: an authenticated sender of a known domain (an authentic ACSS alert,
    the agency, an establishment of the directory or a portal that signs its mail) answers for its
    mail and is never held back — in a wave of declarations from one portal address, staff must see
    every case. A signature alone exempts nothing: anyone can sign with a domain of their own, so
    other signed mail is capped per signing domain (not per address), and unauthenticated mail per
    address and all together (``staff_notifications_unauthenticated_per_hour``), a From being free."""
    if facts.sender.authenticated and is_known_domain(
            env.settings, session, facts.sender.auth_domain or facts.sender.domain, facts.sender.address):
        return False
    sender = (facts.sender.address or "").strip().lower()
    outbound = env.settings.outbound
    if facts.sender.authenticated:
        # A signing domain answers as one sender: rotating local parts (rot1@, rot2@…) gains nothing,
        # nor does rotating subdomains (s1.attacker.test, s2.…: one wildcard DNS record signs them all,
        # found by an outside tester): the budget is the organisational domain's.
        signer = organisational_domain(facts.sender.auth_domain or facts.sender.domain)
        refused = env.mailer.notice_refused(session, f"domain:{signer}")
        sender = f"domaine signataire {signer}"  # one summary notice per domain and hour
    else:
        refused = env.mailer.notice_refused(session, sender, pooled=f"{UNAUTHENTICATED_POOL}:{case.region}",
                                            pooled_cap=outbound.staff_notifications_unauthenticated_per_hour)
    if refused is None:
        return False
    if refused == "pooled":
        cap = outbound.staff_notifications_unauthenticated_per_hour
        append_event(session, case, type="notification_limitee", actor="passerelle", at=env.clock.now(),
                     data={"expediteur": sender or "inconnu",
                           "motif": f"plus de {cap} notifications de messages non authentifiés en une heure"})
        env.mailer.warn_staff(
            session, case.region, topic="notifications:non-authentifies",
            motif=f"plus de {cap} messages non authentifiés en une heure (tous expéditeurs confondus)",
            details=[f"premier message non notifié : dossier {case.reference}",
                     "les messages non authentifiés suivants sont rattachés à leurs dossiers sans notification"])
        return True
    cap = outbound.staff_notifications_per_sender_per_hour
    append_event(session, case, type="notification_limitee", actor="passerelle", at=env.clock.now(),
                 data={"expediteur": sender or "inconnu", "motif": f"plus de {cap} notifications en une heure"})
    topic = "notifications:" + hashlib.sha256(sender.encode()).hexdigest()[:16]
    env.mailer.warn_staff(
        session, case.region, topic=topic,
        motif=f"plus de {cap} messages en une heure {_of_sender(sender)}",
        details=[f"premier message non notifié : dossier {case.reference}",
                 "les messages suivants de cet expéditeur sont rattachés à leurs dossiers sans notification"])
    return True


def _of_sender(sender: str) -> str:
    """« de l'adresse x@y », « du domaine signataire y »: never « de accueil@… » (French elision)."""
    if not sender:
        return "d'un expéditeur inconnu"
    if sender.startswith("domaine "):
        return "du " + sender
    return f"de l'adresse {sender}"


def _original(env: Env, session: Session, case: Case, inbound: InboundMessage,
              ) -> tuple[list[Attachment], dict[str, Any]]:
    """The original, attached to each staff member's notification only when it fits: under
    ``[outbound] staff_attachment_max_bytes`` (a 25 MB declaration copied into every notification
    would multiply the database by the staff count) and under the relay's size limit (a relay
    refuses a larger message for good, RFC 1870: the notification would be lost). Otherwise the
    notification summarises it (size, SHA-256, each attachment's name, size and hash) and says
    how to fetch it: « #original REF » by mail, « mailgateway cases original REF »."""
    raw = inbound.raw or b""
    attached = bool(raw) and relaylimits.attachment_fits(
        env.settings, session, size=len(raw), wire_size=originals.attached_size(raw))
    context: dict[str, Any] = {
        "original_attached": attached, "original_size_fr": originals.size_fr(len(raw)),
        "original_command": f"mailgateway cases original {case.reference}",
        "original_mail_command": f"#original {case.reference}",
    }
    if not attached:
        context.update(originals.summary_context(raw))
    return ([Attachment(raw, "message-original.eml")] if attached else []), context


def _file_names(facts: MessageFacts) -> dict[str, Any] | None:
    """The names of the original's files and how many it has: an RSSI's declaration may be a PDF
    or a .docx form alone, and the notification said only « Le message d'origine est joint », every
    field « non précisé » (an outside tester)."""
    count = facts.extra.get("attachments")
    names = facts.extra.get("attachment_names")
    if not isinstance(count, int) or count <= 0:
        return None
    shown = [str(n) for n in names][:10] if isinstance(names, list) else []
    return {"total": count, "names": shown}


# The staff notification of an establishment's reply (« Réponse reçue »): its outbox kind.
REPLY_NOTICE = "notification_reponse"


def _notice_key(kind: str, inbound_id: int) -> str:
    """The idempotency key of a staff notice of an inbound message (``noticed_inbound`` reads it)."""
    return f"{kind}:{inbound_id}"


def noticed_inbound(key: str) -> int | None:
    """The inbound message a staff notice's idempotency key names (``_notice_key``; the mailer
    may append the recipient), or None."""
    number = key.split(":")[1] if key.count(":") >= 1 else ""
    return int(number) if number.isdigit() else None


def notify_staff(env: Env, session: Session, case: Case, inbound: InboundMessage, facts: MessageFacts,
                 template: str = "staff_notification", kind: str = "notification_equipe",
                 extra: dict[str, Any] | None = None, capped: bool = True) -> int:
    """Tell the region's staff (the assignee, for a reply) about ``inbound``, the original attached.
    ``capped=False``: a notice the per-sender caps must not hold back (bounded otherwise)."""
    if capped and _notice_capped(env, session, case, facts):
        return 0
    attachments, original = _original(env, session, case, inbound)
    est = establishment(session, case.finess) if case.finess else None
    context = {
        **region_context(env.settings, case.region),
        "case": case_context(case),
        "received_at_fr": french_datetime(inbound.received_at),
        "declaration": facts.declaration.to_json() if facts.declaration else None,
        "alert": facts.alert.to_json() if facts.alert else None,
        "establishment": {"name": est.name, "departement": est.departement} if est else None,
        "declarant": case.declarant,
        "sender": facts.sender.to_json(),
        "unsigned_reply_to": facts.extra.get("unsigned_reply_to"),
        # Why a signed alert is not authentic (an unsigned Subject, a reading the signature leaves
        # open): « authentifié par DKIM » two lines below « Authentifiée : NON » said nothing.
        "alert_not_authentic": facts.extra.get("alert_not_authentic"),
        "original_file_names": _file_names(facts),
        # Defanged, French type names: a staff notification is read in Outlook, where a URL is a link.
        "indicators": staff_indicators(i.to_json() for i in facts.indicators[:50]),
        "detected_at_fr": detection_fr(facts.declaration.detected_at, facts.declaration.detected_at_as_written,
                                       aware(inbound.received_at)) if facts.declaration else None,
        "subject": service.one_line(facts.subject),
        **original,
        **(extra or {}),
    }
    assignee = [case.assignee] if case.assignee and kind == REPLY_NOTICE else None
    call: dict[str, Any] = {
        "template": template, "context": context, "kind": kind, "key": _notice_key(kind, inbound.id),
        "recipients": assignee, "priority": 0,
        "in_reply_to": facts.message_id, "references": facts.answer_references(),
    }
    if (env.defer_staff_notices or later.waits_for(session, case)) and later.defer(
            session, env.clock.now(), case, inbound, case.region, bool(attachments), call):
        env.staff_notices_deferred = True
        return len(assignee or ()) or 1
    return env.mailer.send_to_staff(session, case.region, case=case, attachments=attachments, **call)
