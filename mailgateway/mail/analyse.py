"""``analyse(raw, ctx, sender)``: one inbound message to MessageFacts (README, "Command line"). Pure, total.

Classification order (the first rule that holds gives the kind):

1. **loop** — our loop header (``X-Mailgateway-Loop`` equal to ``ctx.loop_token``) or a From
   that is one of our own addresses: our own mail coming back, never processed again.
2. **bounce** — an RFC 3464 delivery-status report, a non-standard bounce recognised by
   flufl.bounce, or mail to our VERP return path (``bounces+<token>@<bounce domain>``).
3. **auto_reply** — RFC 3834 ``Auto-Submitted`` other than ``no``, ``Precedence:
   bulk/junk/list`` (not from ACSS domains, whose alerts are bulk mail), ``X-Auto-Response-
   Suppress``, ``X-Autoreply``/``X-Autorespond``, out-of-office subjects ("Réponse automatique",
   "Absence", "Out of Office", "Automatic reply"), a ``Return-Path: <>``.
4. **reply / command** — threaded to a case (In-Reply-To/References through
   ``ctx.thread_lookup``, then a ``[SSI-...]`` tag in the subject, then a reference in one of our
   Message-IDs): ``command`` when the new text (or the subject) holds a ``#command`` line, else
   ``reply``. Not threaded: ``command`` when the subject is a query command (``#statut REF``,
   ``#ouverts``, ``#retards``, ``#bulletin ...``) or when staff wrote ``#command`` lines.
5. **alert** — from (under) an ACSS domain, or two alert signals (alert word, TLP marking, CERT
   reference, known issuer).
6. **declaration** — a labelled form ("Champ : valeur", portal notifications) or French free text
   about an incident; forwarded declarations (message/rfc822 attachment, at any depth, or inline
   "Forwarded message" / "Message transféré" / "Début du message réexpédié" / Outlook's "De : …
   Envoyé : … Objet :" block, nested) are read in the forwarded part, and the declarant is who
   wrote to the agency — never the forwarded message's author (``forwarded_author``).

Read receipts (RFC 8098 ``disposition-notification`` reports, Outlook « Lu : ») are ``auto_reply``
with ``extra["receipt"]``, checked before bounces. Any answer to one of our messages is also read
for what it says beyond being one (``extra["courtesy"]``, ``extra["reply_declaration"]``:
docs/understanding.md).
7. **unknown** — with a ``quarantine_reason``.

``analyse`` never raises: any internal exception gives kind ``unknown`` with the exception named
in ``quarantine_reason``. Work is bounded by the limits of ``mail.parse`` (25 MB, 10,000 parts).

One view of a message (docs/guarantees.md, RFC 6376 §8.15). Before anything else:

* a header block that DKIM (dkimpy) and analysis (the ``email`` package) could read differently
  (``mailgateway.wire.header_block_problem``, then a field-by-field comparison of both parsers'
  lists) or that is over the analysis budget (header fields and bytes, DKIM signatures, names in
  ``h=``) gives kind ``unknown`` with the reason, and the sender is never authenticated;
* for an authenticated sender, Subject / In-Reply-To / References steer only when the accepted
  signature covers them (``SenderVerdict.signed_headers``): case threading and ``in_reply_to`` use
  covered headers only; commands that an uncovered header would have steered (another case, a
  preview or token found through it, a command in the subject) are refused with the reason; an
  alert whose Subject is not covered is not authentic and takes its title and TLP from the body.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from mailgateway.mail.alert import domain_in, extract_alert, looks_like_alert, quotes_our_mail
from mailgateway.mail.autoreply import auto_reply_reason, loop_reason
from mailgateway.mail.bounce import detect_bounce, verp_token
from mailgateway.mail.commands import (
    REASON_INHERITED_SUBJECT,
    REASON_UNKNOWN,
    authorise,
    is_staff,
    parse_command_line,
    parse_commands,
    repeats,
)
from mailgateway.mail.context import AnalysisContext
from mailgateway.mail.courtesy import is_courtesy
from mailgateway.mail.declaration import (
    addresses_in,
    extract_declaration,
    forwarded_author_address,
    labelled_fields,
    looks_like_declaration,
)
from mailgateway.mail.facts import Bounce, Command, Declaration, MessageFacts, SenderVerdict
from mailgateway.mail.headers import message_ids
from mailgateway.mail.indicators import (
    contact_line_phones,
    extract_indicators,
    phone_e164,
    signature_phones,
    writer_words,
)
from mailgateway.mail.indicators_in import with_attached
from mailgateway.mail.labels import Labels, load_labels
from mailgateway.mail.parse import (
    MAX_TEXT_CHARS,
    ParsedMessage,
    inner_text,
    message_digest,
    message_problem,
    parse_message,
    text_digest,
)
from mailgateway.mail.receipt import read_receipt
from mailgateway.mail.refs import CASE_REF, find_ref, is_forward, strip_prefixes, thread_case
from mailgateway.mail.text import fold, forwarded_from, header_block_end, match_form, new_text, split_forwarded
from mailgateway.mail.transfer import reading_fixed_by_body
from mailgateway.wire import canonical, header_block

__all__ = ["analyse"]

_FRENCH_WORDS = frozenset(
    "le la les des est nous vous une pour dans sur avec qui que pas du au aux ce cette sont été "
    "bonjour cordialement notre nos votre merci suite depuis ont avons".split()
)


# The reason of a well-formed mail that is nothing we know: staff mail like that is answered
# instead (commands/handling.py, handle_unknown); a degraded or unreadable one never is.
UNRECOGNISED = "message non reconnu : ni déclaration, ni alerte, ni réponse à un dossier"


def analyse(raw: bytes, ctx: AnalysisContext, sender: SenderVerdict | None = None, *,
            released: bool = False) -> MessageFacts:
    """Classify and extract; never raises (failures become kind "unknown" with the reason).
    ``released``: staff released this message from quarantine after it was recognised as nothing
    (``UNRECOGNISED``): they read it, so what is nothing else is a declaration to qualify."""
    try:
        return _analyse(raw, ctx, sender, released)
    except Exception as exc:  # the contract: a message that breaks the parser is quarantined
        return MessageFacts(
            kind="unknown",
            sender=sender or SenderVerdict(),
            quarantine_reason=f"erreur d'analyse : {type(exc).__name__}: {exc}"[:500],
        )


def _sender_from_headers(pm: ParsedMessage) -> SenderVerdict:
    found = pm.from_address()
    if not found:
        return SenderVerdict(detail="From must hold exactly one address" if pm.has("From") else "no From header")
    address = found[1]
    domain = address.rpartition("@")[2] or None
    return SenderVerdict(address=address, domain=domain, authenticated=False, detail="From header only")


def _sent_at(pm: ParsedMessage) -> datetime | None:
    value = pm.header("Date")
    if not value:
        return None
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return dt if dt.tzinfo is not None else None


def _frenchish(text: str) -> bool:
    words = set(fold(text[:5000]).split())
    return len(words & _FRENCH_WORDS) >= 4


def _region(recipients: list[str], case_ref: str | None, ctx: AnalysisContext) -> str | None:
    for address in recipients:
        region = ctx.region_addresses.get(address.lower())
        if region:
            return region
    if case_ref:
        return case_ref.split("-")[1]
    return ctx.default_region


def _own_domains(ctx: AnalysisContext) -> list[str]:
    domains = {a.rpartition("@")[2] for a in ctx.own_addresses if "@" in a}
    domains.update(a.rpartition("@")[2] for a in ctx.region_addresses if "@" in a)
    if ctx.bounce_domain:
        domains.add(ctx.bounce_domain.lower())
    return sorted(d for d in domains if d)


def _labels(ctx: AnalysisContext) -> Labels:
    return load_labels(ctx.extra_field_labels, ctx.extra_incident_types, ctx.extra_categories,
                       ctx.extra_severities, ctx.extra_alert_targets, ctx.extra_courtesy)


# Headers that choose what an action applies to (case, preview, query): RFC 6376 §8.15.
_STEERING = (("subject", "Subject"), ("in-reply-to", "In-Reply-To"), ("references", "References"))


def _uncovered(pm: ParsedMessage, sender: SenderVerdict) -> list[str]:
    """Steering headers present in the message but not covered by the accepted signature."""
    if not sender.authenticated:
        return []
    return [shown for name, shown in _STEERING if pm.has(name) and name not in sender.signed_headers]


# Headers that decide how the signed body bytes read as text (RFC 2045): the body hash fixes the
# bytes, not their meaning. An outside attacker re-sent a genuine staff reply quoting his own
# declaration with only these changed — « 8bit » to « quoted-printable » turned his quoted
# « …=0A#clore Fausse alerte=0A » into command lines outside the quote; text/plain to text/html,
# the charset to utf-7, the outer boundary to one of his own attached message's did the same. A
# header present and not covered lets anyone choose the reading; an absent one was pinned by its
# absence (adding it makes it present).
_READING = (("content-type", "Content-Type"), ("content-transfer-encoding", "Content-Transfer-Encoding"))


def unpinned_reading(pm: ParsedMessage, sender: SenderVerdict, raw: bytes) -> list[str]:
    """The body-reading headers present in the message but not covered by the accepted signature.
    A multipart message's own Content-Transfer-Encoding reads nothing (its parts carry theirs, in
    the signed body): not counted; nor a single part's whose body admits no other dangerous
    reading (mail/transfer.py: Exchange Online never signs it, and plain-text mail is common)."""
    if not sender.authenticated:
        return []
    signed = sender.signed_headers
    body = raw[len(header_block(raw)):]
    found = [shown for name, shown in _READING if pm.has(name) and name not in signed]
    if "Content-Transfer-Encoding" in found and "Content-Type" not in found and (
            pm.msg.is_multipart() or reading_fixed_by_body(_transfer_encoding(pm), body)):
        found = [name for name in found if name != "Content-Transfer-Encoding"]
    # An unsigned header deleted reads too (an outside attacker, round 4: a genuine QP reply with
    # its Content-Transfer-Encoding removed read as 7bit, its soft breaks cutting lines; a Content-Type
    # removed reads a MIME body as plain text): absent and not signed, the default reading must be
    # the only one the body admits.
    if not pm.has("content-transfer-encoding") and "content-transfer-encoding" not in signed and (
            not pm.msg.is_multipart() and not reading_fixed_by_body("", body)):
        found.append("Content-Transfer-Encoding")
    if not pm.has("content-type") and "content-type" not in signed and _MIME_IN_BODY.search(body[:200_000]):
        found.insert(0, "Content-Type")
    return found


# A body that holds MIME parts (a boundary line, then a part's Content-Type).
_MIME_IN_BODY = re.compile(rb"(?mi)^--[^\s]{1,200}[ \t]*\r?\n(?:[^\r\n]{0,998}\r?\n){0,20}?content-type[ \t]*:")


def _transfer_encoding(pm: ParsedMessage) -> str:
    """The top-level Content-Transfer-Encoding as the email package compares it when it decodes
    (compat32 ``get_payload``): the raw value, lower case, not stripped nor decoded."""
    try:
        return str(pm.msg.get("Content-Transfer-Encoding", "")).lower()
    except Exception:
        return "?"  # unreadable: fixed by nothing (mail/transfer.py reads it as identity)


def coverage_reason(names: list[str]) -> str:
    if len(names) == 1:
        return f"en-tête {names[0]} non couvert par la signature DKIM"
    return f"en-têtes {', '.join(names)} non couverts par la signature DKIM"


def _never_authenticated(sender: SenderVerdict, why: str) -> SenderVerdict:
    detail = "; ".join(x for x in (sender.detail, f"not authenticated: {why}") if x)
    return replace(
        sender, authenticated=False, method=None, auth_domain=None, signed_headers=frozenset(),
        signature_key=None, detail=detail[:1000],
    )


def other_case_reason(threaded: str | None, tagged: str) -> str:
    # Said under « Aucune commande n'a été appliquée : » or after a refused command: no need to repeat it.
    return (f"ce message répond au dossier {threaded} mais son objet désigne le dossier {tagged} ; répondez au "
            f"message du dossier voulu sans changer la référence de l'objet")


def _refused(commands: tuple[Command, ...], reason: str) -> tuple[Command, ...]:
    return tuple(
        c if c.reason == REASON_UNKNOWN else Command(c.name, c.args, accepted=False, reason=reason, line=c.line)
        for c in commands
    )


def _pinned(commands: tuple[Command, ...], unpinned: list[str]) -> tuple[Command, ...]:
    return _refused(commands, coverage_reason(unpinned)) if unpinned else commands


def _unanchored(bounce: Bounce, own_domains: list[str]) -> bool:
    """A bounce that names no mail of ours: no VERP token, and no original Message-ID in our
    domains (docs/guarantees.md: only those count; the others are ignored)."""
    if bounce.verp_token is not None:
        return False
    original = bounce.original_message_id or ""
    return not (original and domain_in(original.strip("<>").rpartition("@")[2], own_domains))


def _ordered(ids: list[str], own_domains: list[str]) -> list[str]:
    unique = list(dict.fromkeys(ids))
    unique.sort(key=lambda mid: not domain_in(mid.rpartition("@")[2], own_domains))
    return unique


def _analyse(raw: bytes, ctx: AnalysisContext, given: SenderVerdict | None, released: bool = False) -> MessageFacts:
    raw = canonical(raw)  # the bytes the verifier read (idempotent: accept stored them so)
    pm = parse_message(raw)
    labels = _labels(ctx)
    sender = given if given is not None else _sender_from_headers(pm)
    recipients = [a for _n, a in pm.addresses("To", "Cc")]
    envelope = [a for _n, a in pm.addresses("Delivered-To", "X-Original-To", "Envelope-To")]
    problem = message_problem(raw, pm)
    if problem is not None:
        # Two parsers, two messages: nothing of it is acted on, nobody is authenticated by it.
        return MessageFacts(
            kind="unknown",
            region=_region(recipients + envelope, None, ctx),
            sender=_never_authenticated(sender, problem),
            quarantine_reason=f"en-têtes ambigus ou hors limites : {problem}",
            recipients=tuple(recipients[:200]),
            extra={"header_problem": problem},
        )
    subject = pm.header("Subject")[:1000]
    # Reply-To counts when it holds one address and From does not name several (or nobody at all
    # while present): beside an ambiguous From, or itself a list, it names nobody to answer
    # (outside tester: « From: victime@… <ssi@evil…> » with a Reply-To was acknowledged at it).
    reply_to_pairs = pm.addresses("Reply-To")
    from_names_nobody = pm.has("From") and pm.from_address() is None
    reply_to = reply_to_pairs[0][1] if len(reply_to_pairs) == 1 and not from_names_nobody else None
    own_domains = _own_domains(ctx)
    in_reply_ids = message_ids(pm.header("In-Reply-To"))
    reference_ids = message_ids(" ".join(pm.headers("References")))
    all_ids = _ordered(in_reply_ids + reference_ids, own_domains)
    text = pm.text()
    fresh = new_text(text)
    uncovered = _uncovered(pm, sender)
    # Steering data: for an authenticated sender, only what the signature covers (else all of it,
    # which authorises nothing anyway).
    ids = _ordered(
        (in_reply_ids if "In-Reply-To" not in uncovered else [])
        + (reference_ids if "References" not in uncovered else []),
        own_domains,
    )
    steering_subject = "" if "Subject" in uncovered else subject
    case_ref, how = thread_case(ids, steering_subject, ctx.thread_lookup, own_domains)
    steered = _steered_by_uncovered(uncovered, case_ref, ids, all_ids, subject, ctx, own_domains)
    # The body's reading not pinned by the signature: no command of it counts, whatever it steers.
    unpinned = unpinned_reading(pm, sender, raw)
    steered = unpinned + steered
    # The thread names one case, the subject (edited by hand) another: commands are refused
    # rather than applied to either (found by an outside tester: an agent who re-tagged a reply
    # « [SSI-…-0005] » had his #repondre about 0005's patients mailed to 0004's declarant).
    tagged = find_ref(steering_subject) if how == "thread" else None
    other_case = tagged if tagged and tagged != case_ref else None
    region = _region(recipients + envelope, case_ref, ctx)
    extra: dict[str, object] = {"parse": pm.degraded} if pm.degraded else {}
    if case_ref is None:
        # « Concernant le dossier SSI-PDL-2026-0005 : … », no reference in the subject nor a
        # thread: processing files it on that case when its sender is one the case writes to
        # (commands/handling.py ``body_reference_prehandler``); one reference only.
        named = {find_ref(m.group(0)) for m in CASE_REF.finditer(fresh[:3000])}
        if len(named) == 1:
            extra["body_ref"] = named.pop()
    if pm.attachments:
        extra["attachments"] = pm.attachments
        if pm.attachment_names:  # named to staff: a declaration may be in a PDF alone (outside tester)
            extra["attachment_names"] = [name[:200] for name in pm.attachment_names]
    if how:
        extra["threaded_by"] = how
    if uncovered:
        extra["uncovered_headers"] = uncovered
    answer_to = [address for _name, address in reply_to_pairs if address.lower() != (sender.address or "").lower()]
    if answer_to and sender.authenticated and "reply-to" not in sender.signed_headers:
        # A Reply-To added in transit to a signed mail (outside attacker): the notification says
        # « authentifié par DKIM » and attaches the original, whose Reply-To staff would answer —
        # one address or several (« rssi@chu…, rssi-chu@evil… »: attacker again).
        extra["unsigned_reply_to"] = ", ".join(answer_to[:5])
    base = MessageFacts(
        region=region,
        case_ref=case_ref,
        sender=sender,
        message_id=pm.message_id(),
        in_reply_to=tuple(ids),
        named_ids=tuple(all_ids),
        # Only an authenticated sender's own (signed) thread: an outsider's References must not
        # choose the thread our mail joins in a mailbox (found by an outside tester).
        thread_chain=tuple(dict.fromkeys(
            (reference_ids if "References" not in uncovered else [])
            + (in_reply_ids if "In-Reply-To" not in uncovered else []))) if sender.authenticated else (),
        subject=subject,
        reply_to=reply_to,
        new_text=fresh[:50_000],
        body_text=text[:200_000],
        recipients=tuple(recipients[:200]),
        extra=extra,
    )

    if pm.degraded == "too-large":
        return replace(base, kind="unknown", quarantine_reason="message trop volumineux (plus de 25 Mo)")
    # 1. loop
    reason = loop_reason(pm, ctx.loop_token, ctx.own_addresses)
    if reason:
        extra["loop"] = reason
        return replace(base, kind="loop")
    # 1b. read receipt (RFC 8098 MDN, Outlook « Lu : »): automatic, never a reply to read.
    receipt = read_receipt(pm)
    if receipt is not None:
        extra["receipt"] = receipt.to_json()
        extra["auto_reply"] = f"accusé de lecture ({receipt.disposition})"
        return replace(base, kind="auto_reply")
    # 2. bounce (an out-of-office sent to our VERP return path is an auto-reply, not a bounce)
    token = verp_token(pm, ctx.bounce_local_part, ctx.bounce_domain)
    auto = auto_reply_reason(pm, labels.auto_reply_subjects, bulk_allowed=_from_acss(sender, ctx))
    bounce = detect_bounce(pm, token)
    if bounce is not None and _unanchored(bounce, own_domains) and (
            case_ref or (bounce.words_only and sender.authenticated)
            or looks_like_declaration(text, subject, labels)[1] == "labelled"):
        # A report about no mail of ours (no VERP token, no Message-ID we sent: it could only be
        # ignored as a bounce) that names a case or holds a declaration's labelled fields (its
        # keywords alone are in real bounces' wording too: the bounce corpus), or found by its words
        # alone in an authenticated sender's mail, is read as what it is: a hospital quoting its
        # mail log or an NDR (« RCPT TO:<…> », « 550 5.1.1 … », DSN fields, a forwarded
        # « Undelivered Mail ») in a phishing or mail incident (found by outside testers).
        bounce = None
    if bounce is not None and bounce.diagnostic is not None:
        # BOUNCES: a non-delivery report (it always has a diagnostic) is a bounce even when its
        # null return path or Auto-Submitted also reads as an auto-reply (mail/bounce.py).
        return replace(base, kind="bounce", bounce=bounce)
    if bounce is not None and not (auto and not pm.delivery_status and not bounce.recipients):
        return replace(base, kind="bounce", bounce=bounce)
    # 3. auto-reply
    if auto:
        extra["auto_reply"] = auto
        return replace(base, kind="auto_reply")
    # An answer to one of our messages (a case's, a bulletin's or a relayed alert's): what it says
    # beyond being one. Analysis cannot tell a bulletin's Message-ID, so every answer is read.
    # A forward of our relay or bulletin keeps no In-Reply-To (Outlook « TR: »): our subject tag or
    # our address as the forwarded author says it answers us (processing finds which message).
    ours = quotes_our_mail(subject, text, ctx.own_addresses)
    if ours:
        extra["quotes_our_mail"] = ours
    if all_ids or ours or case_ref:
        # A reply with our case tag in its subject only (no In-Reply-To: a client that drops it)
        # is read as one too: « Merci, bonne journée » reopened a closed case (outside tester).
        _read_reply(pm, fresh, ctx, labels, reply_to, extra)
    # 4. reply / command
    commands = _commands(subject, fresh, labels,
                         _inherited_from(subject, in_reply_ids, reference_ids, ctx, labels), _writer(pm))
    if extra.get("courtesy") and commands and all(c.name == "lu" for c in commands) and not is_staff(
            sender.address, ctx.staff):
        # « #lu » is a courtesy (docs/understanding.md), never a command of an establishment's: as a
        # command it reopened a closed case and notified staff (outside tester).
        commands = []
    bare_subject = strip_prefixes(subject)
    is_bulletin = fold(bare_subject).startswith("#bulletin") and "Subject" not in uncovered
    subject_query = (bare_subject.startswith("#") and bool(commands) and commands[0].line == bare_subject.strip()
                     and commands[0].reason != REASON_INHERITED_SUBJECT)
    if (subject_query and not case_ref and not is_staff(sender.address, ctx.staff)
            and looks_like_declaration(text, subject, labels)[0]):
        # « #URGENT Déclaration d'incident : … », « #aide rançongiciel en cours »: a hospital's
        # signed declaration was read as a command of theirs, refused, and nobody saw it (an
        # outside attacker). Commands are staff's: from anyone else this is the mail's subject.
        subject_query = False
        commands = commands[1:]
    source: _Source | None = None
    if commands and not (case_ref or subject_query or ours) and is_staff(sender.address, ctx.staff):
        # An agent forwarding an establishment's declaration with commands in the cover note
        # (« TR: » + « #qualifier grave »): the declaration opens its case, the commands apply to
        # it (processing/pipeline.py). An outside tester: no case, no acknowledgement, and a
        # receipt « aucun dossier concerné » — the same forward without the command opened one.
        source = _declaration_source(pm, text, subject, labels)
        if source.outer is None or not looks_like_declaration(source.text, source.subject, labels)[0]:
            source = None
    forward_commands = source is not None
    if source is None and (case_ref or subject_query or (commands and is_staff(sender.address, ctx.staff))):
        kind = "command" if commands else "reply"
        cmd_region = case_ref.split("-")[1] if case_ref else region
        facts_commands = authorise(commands, sender, cmd_region, ctx.staff)
        if steered:
            facts_commands = _refused(facts_commands, coverage_reason(steered))
            extra["steered_by_uncovered"] = steered
        elif other_case:
            facts_commands = _refused(facts_commands, other_case_reason(case_ref, other_case))
            extra["subject_names_other_case"] = other_case
        indicators = extract_indicators([fresh], _participants(pm, ctx, reply_to), labels.noise_domains,
                                        _own_numbers(fresh, _writer(pm)))
        return replace(base, kind=kind, commands=facts_commands, indicators=indicators, is_bulletin_request=is_bulletin)
    # 5. alert — never an answer to what we sent (``quotes_our_mail``): an establishment's « RE: »
    # to a relayed alert carries the alert's words and TLP, and was read as a forged alert (outside
    # tester: `parse --json` said « alert », staff were warned of a forgery). Processing attaches
    # such an answer to what it answers (bulletins/tracking.py) whatever its kind; one it cannot
    # place is kept in quarantine (FORWARDED_RELAY, commands/handling.py).
    if source is None and not ours and (_from_acss(sender, ctx) or looks_like_alert(subject, text, labels)):
        if "Subject" in uncovered:
            # Title and TLP only from what was signed (the body: l= is refused), and not authentic.
            alert = extract_alert("", text, sender, ctx.acss_domains, labels)
            alert = replace(alert, authentic=False)
            extra["alert_not_authentic"] = coverage_reason(["Subject"])
            # Nothing downstream (relay title, notification) may fall back on the unsigned text.
            extra["unsigned_subject"] = subject
            base = replace(base, subject="")
        else:
            alert = extract_alert(subject, text, sender, ctx.acss_domains, labels)
        # The mailboxes the cell addressed, as far as the signature says (processing/handlers.py
        # ``_alert_caution``): a Cc added in transit naming this mailbox made a re-injected alert
        # pass for one sent here (an outside attacker).
        extra["signed_recipients"] = [address for name in ("To", "Cc") if name.lower() in sender.signed_headers
                                      for _n, address in pm.addresses(name)][:200]
        if unpinned and alert.authentic:
            # Its text (targets, recommendations, indicators) is read in a way the signature does not fix.
            alert = replace(alert, authentic=False)
            extra["alert_not_authentic"] = coverage_reason(unpinned)
        indicators = extract_indicators([text, *pm.all_links()], _participants(pm, ctx, reply_to), labels.noise_domains)
        # INDICATORS: an attached STIX bundle or MISP event adds its indicators; its TLP is cross-checked.
        alert, indicators = with_attached(pm, alert, indicators, _participants(pm, ctx, reply_to),
                                          labels.noise_domains, extra)
        return replace(base, kind="alert", alert=alert, indicators=indicators)
    # 6. an answer to what we sent (a relayed alert, a bulletin) is read in its writer's own text
    #    only, never in the message of ours it quotes or forwards (outside tester: a « TR: » of our
    #    relay with « Pour info. » was read as a forwarded declaration of our own alert). A reply,
    #    which processing attaches to the message it answers (bulletins/tracking.py) — even from
    #    the ACSS (a signed ACSS « RE: » to our relay became a new alert case).
    if ours:
        own = extra.get("reply_declaration")
        if isinstance(own, Declaration):
            indicators = extract_indicators([fresh], _participants(pm, ctx, reply_to), labels.noise_domains,
                                            _own_numbers(fresh, _writer(pm)))
            return replace(base, kind="declaration", declaration=own, indicators=indicators)
        return replace(base, kind="reply")
    # 7. declaration (possibly forwarded)
    source = source or _declaration_source(pm, text, subject, labels)
    decl_text, decl_subject, links = source.text, source.subject, source.links
    is_decl, why = looks_like_declaration(decl_text, decl_subject, labels)
    if not is_decl and source.outer is None and pm.attachment_names:
        # The form attached under a short note (« Fiche de déclaration », « cf. PJ »): its file name
        # says what it is (« Formulaire de déclaration incident sécurité.docx »; outside tester).
        # Keywords only: a name is no labelled form.
        is_decl, why = looks_like_declaration(decl_text, "\n".join([decl_subject, *pm.attachment_names]), labels)
        if not is_decl and _announces_attached_declaration(decl_subject + "\n" + decl_text):
            # « Vous trouverez en PJ la déclaration » above a PDF: quarantined, the laboratory never
            # acknowledged (an outside tester, an RSSI).
            is_decl, why = True, "keywords"
    if not is_decl and released and not pm.degraded:
        # Released from « message non reconnu » by staff: releasing it again found nothing else,
        # and the message stayed in quarantine for ever (outside tester: a form attached alone).
        is_decl, why = True, "released"
    if (
        is_decl
        and why not in ("labelled", "released")
        and not (_frenchish(decl_subject + " " + decl_text) or region_hit(recipients + envelope, ctx))
    ):
        is_decl = False
    if is_decl:
        extra["declaration_by"] = why
        if unpinned and _agency_colleague(sender, region, ctx):
            # An agent's signature that leaves the body's reading open proves nothing of what the
            # body declares (see ``by_agency``): not presented to staff as the agent's.
            sender = _never_authenticated(sender, coverage_reason(unpinned))
            base = replace(base, sender=sender)
        from_addr = sender.address
        # A colleague of the agency forwarding an establishment's declaration: the establishment
        # is the declarant, the colleague is recorded (``transmis_par``) and not acknowledged.
        agency = _agency_domains(ctx)
        # Not when the signature leaves the body's reading open: an outside attacker re-sent an
        # agent's reply quoting his planted « =0A---------- Message transféré … » relabelled
        # quoted-printable, and it became the agent's forward of another hospital's declaration.
        by_agency = (source.outer is not None and source.author_declares and not unpinned
                     and _agency_colleague(sender, region, ctx))
        writer = _writer(pm, source.author)
        declaration = extract_declaration(
            decl_text, decl_subject, ctx, labels, from_addr, reply_to, _sent_at(pm), source.author, source.outer,
            agency_forward=(*agency, *ctx.acss_domains) if by_agency else None, writer=writer,
            from_verified=sender.authenticated,  # aligned with From by definition (mail/auth.py)
        )
        if source.outer is not None:
            extra["forwarded"] = True
        if by_agency:
            extra["transmis_par"] = (sender.address or "").lower()
            if source.message_id:  # the establishment's own mail may have reached us already
                extra["forwarded_message_id"] = source.message_id
            # What it says, to check against what reached us (under that Message-ID, or from that
            # declarant for an inline forward, which has none): a forged copy under the genuine
            # one's Message-ID joined the genuine case (outside attacker); an inline « TR: » of a
            # declaration received before opened a second case (outside tester, an agent).
            if source.forwarded_digest is not None:
                extra["forwarded_text_digest"] = source.forwarded_digest
        # The addresses the form gives as the declarant's own (« Courriel du déclarant ») are no
        # indicator (an outside tester, an RSSI: listed as one when it differed from From).
        excluded = [*_participants(pm, ctx, reply_to), *source.participants, declaration.declarant or "",
                    *_declarant_addresses(decl_text, labels)]
        phones = _declarant_phones(decl_text, labels) + _own_numbers(decl_text, writer)
        if source.outer is not None:
            phones += signature_phones(source.outer, _writer(pm))
        indicators = extract_indicators([decl_text, *links], excluded, (*labels.noise_domains, *agency), phones)
        return replace(base, kind="declaration", declaration=declaration, indicators=indicators,
                       commands=_pinned(authorise(commands, sender, region, ctx.staff), unpinned)
                       if forward_commands else ())
    if commands and is_staff(sender.address, ctx.staff):  # a forward that is no declaration after all
        indicators = extract_indicators([fresh], _participants(pm, ctx, reply_to), labels.noise_domains,
                                        _own_numbers(fresh, _writer(pm)))
        return replace(base, kind="command", commands=_pinned(authorise(commands, sender, region, ctx.staff), unpinned),
                       indicators=indicators, is_bulletin_request=is_bulletin)
    # 8. unknown
    reason_text = UNRECOGNISED
    if pm.degraded:
        reason_text += f" (analyse dégradée : {pm.degraded})"
    elif not text.strip() and pm.parts <= 1 and not pm.header("From"):
        reason_text = "contenu illisible : aucun en-tête ni texte exploitable"
    # No indicators for unknown mail: mostly spam, whose links would only be noise for staff.
    return replace(base, kind="unknown", quarantine_reason=reason_text)


def _own_numbers(text: str, writer: Sequence[str] = ()) -> list[str]:
    """The writer's own numbers (a signature, a « Tél. » line): never indicators (outside tester)."""
    return signature_phones(text, writer) + contact_line_phones(text)


def _writer(pm: ParsedMessage, *more: str | None) -> tuple[str, ...]:
    """The words naming the mail's writer (From, Reply-To, Sender; ``more``: a forwarded author)."""
    return writer_words(*(part for pair in pm.addresses("From", "Reply-To", "Sender") for part in pair), *more)


FORWARDED_RELAY = ("transfert d'un message envoyé par la passerelle (alerte relayée ou bulletin), "
                   "sans réponse d'un établissement destinataire reconnue : pas une nouvelle alerte")


def _html_says_no_more(pm: ParsedMessage, labels: Labels) -> bool:
    """A courtesy must be one in every alternative: « Merci » in text/plain beside an HTML part
    reporting encrypted servers is not one (a reply read in Outlook shows the HTML)."""
    if not pm.html_raw or not any(p.strip() for p in pm.plain):
        return True  # HTML only: already what ``fresh`` was read from
    pm.convert_html()
    html_fresh = new_text("\n\n".join(pm.html)[:MAX_TEXT_CHARS])
    return not html_fresh.strip() or is_courtesy(html_fresh, pm.attachments, labels)


def _read_reply(pm: ParsedMessage, fresh: str, ctx: AnalysisContext, labels: Labels, reply_to: str | None,
                extra: dict[str, object]) -> None:
    """What a reply says beyond being one: a mere courtesy (``extra["courtesy"]``: « Merci, bonne
    journée », « #lu »), or a declaration in its new text (``extra["reply_declaration"]``, for a
    reply to a relayed alert or bulletin: processing opens a case linked to it)."""
    if is_courtesy(fresh, pm.attachments, labels) and _html_says_no_more(pm, labels):
        extra["courtesy"] = True
        return
    if not fresh.strip() or fresh.lstrip().startswith("#"):
        return  # staff commands are not declarations
    # The new text alone: the subject of an answer echoes ours (« RE: Campagne d'hameçonnage »).
    is_decl, why = looks_like_declaration(fresh, "", labels)
    if is_decl and (why == "labelled" or _frenchish(fresh)):
        extra["reply_declaration"] = extract_declaration(
            fresh, "", ctx, labels, (pm.from_address() or ("", None))[1], reply_to, _sent_at(pm)
        )


def _steered_by_uncovered(
    uncovered: list[str],
    case_ref: str | None,
    ids: list[str],
    all_ids: list[str],
    subject: str,
    ctx: AnalysisContext,
    own_domains: list[str],
) -> list[str]:
    """The uncovered headers that would have steered commands, had they been read: then the
    commands are refused (with a receipt) rather than applied to what covered headers alone give.

    Nothing steers when uncovered headers change nothing: e.g. a signer that never covers
    In-Reply-To, replying under a covered ``[SSI-…]`` subject that names the same case.
    """
    if not uncovered:
        return []
    steered: list[str] = []
    if "Subject" in uncovered and strip_prefixes(subject).startswith("#"):
        steered.append("Subject")  # a subject command or query (#statut REF, #bulletin ...)
    whole, _how = thread_case(all_ids, subject, ctx.thread_lookup, own_domains)
    extra_ids = [i for i in all_ids if i not in ids]
    if whole != case_ref or (case_ref is None and extra_ids):
        # Another case, or Message-IDs (bulletin preview, confirmation) seen only through them.
        steered.extend(h for h in uncovered if h not in steered)
    return [shown for _n, shown in _STEERING if shown in steered]


def region_hit(addresses: list[str], ctx: AnalysisContext) -> bool:
    return any(a.lower() in ctx.region_addresses for a in addresses)


def _from_acss(sender: SenderVerdict, ctx: AnalysisContext) -> bool:
    return domain_in(sender.auth_domain or sender.domain, ctx.acss_domains)


def _commands(subject: str, fresh: str, labels: Labels, inherited: Callable[[Command], bool],
              writer: Sequence[str] = ()) -> list[Command]:
    """The subject's command, then the body's (after them when one of them repeats it, saying
    more). A command that begins the subject ends at the case tag that follows it (« RE:
    #qualifier significatif [SSI-…] Nouvelle déclaration… »: found by an outside tester, the tag
    and our subject were read as the severity). Nothing after the start of the subject is read:
    our own subjects carry a declarant's words (a structure named « CHU #clore » made every staff
    reply close the case: found by an outside tester). A subject command the writer did not write
    (``inherited``) is refused, with its reason."""
    found: list[Command] = []
    cmd = _subject_command(subject, labels)
    body = parse_commands(fresh, labels, writer)
    if cmd is not None:
        cmd = replace(cmd, accepted=False, reason=REASON_INHERITED_SUBJECT) if inherited(cmd) else cmd
        if any(repeats(cmd, other) for other in body):
            # « RE: #clore [SSI-…] » above « #clore <motif> » in the body: the body's, which says
            # more, runs; the Subject's is its duplicate (an outside tester, an agent: the bare
            # Subject command closed the case first, and the motif was lost).
            return [*body, cmd]
        found.append(cmd)
    found.extend(body)
    return found


def _subject_command(subject: str, labels: Labels) -> Command | None:
    bare = strip_prefixes(subject)
    if not bare.startswith("#"):
        return None
    tag = _tag_at(bare)
    return parse_command_line(bare[:tag].rstrip() if tag is not None else bare, labels)


def _tag_at(bare: str) -> int | None:
    """Where a Subject's bracketed case tag opens (« [SSI-… »), or None. The bracketed tag only:
    « #statut SSI-… » names its case as its argument."""
    return next((m.start() - 1 for m in CASE_REF.finditer(bare) if bare[m.start() - 1 : m.start()] == "["), None)


def _inherited_from(subject: str, in_reply_ids: Sequence[str], reference_ids: Sequence[str], ctx: AnalysisContext,
                    labels: Labels) -> Callable[[Command], bool]:
    """Whether a command that begins ``subject`` may not be its writer's. An outsider's mail filed
    on a case, Subject « #clore incident résolu [SSI-…] »: an agent's plain « RE: » to it — or a
    « TR: » to a colleague, Cc the SSI address — closed the case, mailed the establishment the
    outsider's words, moved it to another region (an outside attacker). What a mail client keeps
    of the Subject it answers is no one's word, so a Subject command counts only in a reply to a
    mail of ours (a notification, a receipt) whose Subject the reply keeps after the command: the
    agent wrote the command in front of it. Not in a forward; not in a reply to anything else —
    one the gateway never saw (sent to the agent alone), one received under a Message-ID the
    outsider chose (the genuine declaration's: attacker), one with no thread at all. The parent is
    In-Reply-To, else the last of References (55 made-up References must not hide it: attacker)."""
    def inherited(cmd: Command) -> bool:
        if is_forward(subject):
            return True
        bare = strip_prefixes(subject)
        if bare == subject.strip():
            return False  # a new mail: its Subject is its writer's
        parents = list(in_reply_ids) or list(reference_ids[-1:])
        if not parents:
            return True  # « RE: #clore … » with no thread: whose Subject it was is unknown
        try:
            known = ctx.thread_subjects(parents[:10])
        except Exception:
            return True  # not known to be the writer's: refused, with its reason
        kept = _after_command(bare)
        return not any(ours and _same_words(strip_prefixes(parent_subject), kept)
                       for parent_subject, ours in (known.get(p, ("", False)) for p in parents))

    return inherited


def _after_command(bare: str) -> str:
    """A Subject (prefixes stripped) without the command that begins it: from the case tag's
    opening bracket on (« #qualifier grave [SSI-…] Nouvelle … » -> « [SSI-…] Nouvelle … »)."""
    tag = _tag_at(bare)
    return bare[tag:] if tag is not None else ""


def _same_words(a: str, b: str) -> bool:
    return bool(b) and " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def _participants(pm: ParsedMessage, ctx: AnalysisContext, reply_to: str | None) -> list[str]:
    """Addresses that are the message's own participants or ours: noise, not indicators."""
    found = [a for _n, a in pm.addresses("From", "To", "Cc", "Sender", "Reply-To")]
    found.extend(ctx.own_addresses)
    found.extend(ctx.region_addresses)
    if reply_to:
        found.append(reply_to)
    return found


def _agency_domains(ctx: AnalysisContext) -> tuple[str, ...]:
    """The agency's own domains: those of its regional mailboxes (and of the gateway's addresses)."""
    return tuple(_own_domains(ctx))


def _agency_colleague(sender: SenderVerdict, region: str | None, ctx: AnalysisContext) -> bool:
    """An authenticated member of the region's staff, or any DKIM-authenticated sender of the
    agency's own domains: someone whose forward of a declaration is a transmission, not theirs."""
    if not sender.authenticated or not sender.address:
        return False
    address = sender.address.lower()
    regions = ctx.staff.get(address)
    if regions and (region is None or region in regions):
        return True
    return domain_in(sender.domain or address.rpartition("@")[2], list(_agency_domains(ctx)))


def _declarant_addresses(text: str, labels: Labels) -> list[str]:
    fields = labelled_fields(text, labels).values
    return addresses_in(" ".join(fields.get(k, "") for k in ("declarant", "declarant_email")))


def _declarant_phones(text: str, labels: Labels) -> list[str]:
    """Numbers given as the declarant's contact are not indicators of compromise."""
    fields = labelled_fields(text, labels).values
    return phone_e164(" ".join(fields.get(k, "") for k in ("phone", "declarant", "declarant_email")))


@dataclass(frozen=True)
class _Source:
    """Where a declaration is read: its text and subject, the forwarded author, the links, and the
    text of the message itself (the cover note of a forward: the only place the declarant's own
    address is read from); ``outer`` is None when nothing was forwarded."""

    text: str
    subject: str
    author: str | None
    links: list[str]
    outer: str | None
    # The author's level reads as a declaration on its own (not a forwarded phishing mail shown
    # as evidence): only then may an agency colleague's forward name its author as declarant.
    author_declares: bool = False
    # Addresses of the forwarded levels' headers (From/To/Cc of each): participants, not
    # indicators — except the author of a deepest level that is evidence, not a declaration.
    participants: tuple[str, ...] = ()
    # The Message-ID of the attached message read as the declaration (a forward as attachment).
    message_id: str | None = None
    # What the forwarded declaration says, to compare with what reached us directly (processing/
    # handlers.py ``_received_before``): attached, the whole message as read (``message_digest``);
    # inline, its own text without its header block (``text_digest``).
    forwarded_digest: str | None = None


MAX_INLINE_FORWARDS = 5


def _inline_segments(text: str) -> tuple[str, list[tuple[str, str | None]]]:
    """(text before the first forward, [(own text of each forwarded level, its From line)]),
    outermost first, at most ``MAX_INLINE_FORWARDS`` levels (a forward of a forward...)."""
    before, rest = split_forwarded(text)
    segments: list[tuple[str, str | None]] = []
    while rest is not None and len(segments) < MAX_INLINE_FORWARDS:
        author = forwarded_from(rest)
        # The level's own header block (« De : / Date : / Objet : ») is not a deeper forward.
        cut = header_block_end(rest)
        own, deeper = split_forwarded(rest[cut:])
        segments.append((rest[:cut] + own, author))
        rest = deeper
    return before, segments


def _author_of(segments: list[tuple[str, str | None]], labels: Labels, subject: str) -> tuple[str | None, bool]:
    """(author of the forwarded level that holds the declaration, True), else (the deepest
    author, False)."""
    for own, author in segments:
        if author and looks_like_declaration(own, subject, labels)[0]:
            return author, True
    authors = [a for _own, a in segments if a]
    return (authors[-1] if authors else None), False


def _inline_participants(segments: list[tuple[str, str | None]], labels: Labels, subject: str) -> list[str]:
    """Addresses of each inline level's header block (« De : / À : / Cc : »), but the author of
    the deepest level when that level is not itself a declaration (a forwarded phishing mail:
    its sender is an indicator)."""
    found: list[str] = []
    for n, (own, author) in enumerate(segments):
        head = own[: header_block_end(own)]
        addresses = addresses_in(head[:5000])
        if n == len(segments) - 1 and author and not looks_like_declaration(own, subject, labels)[0]:
            evidence = forwarded_author_address(author)
            addresses = [a for a in addresses if a != evidence]
        found.extend(addresses)
    return found


def _attached_participants(attached: list[tuple[ParsedMessage, str]], verdicts: list[tuple[bool, str]]) -> list[str]:
    found: list[str] = []
    for (parsed, _body), (declares, _why) in zip(attached, verdicts, strict=True):
        found.extend(a for _n, a in parsed.addresses("To", "Cc", "Reply-To", "Sender"))
        if declares or parsed.forwarded:
            found.extend(a for _n, a in parsed.addresses("From"))
    return found


def _declaration_source(pm: ParsedMessage, text: str, subject: str, labels: Labels) -> _Source:
    """The declaration's source: an attached message/rfc822 (at any depth: a cover note forwarding
    a forward), else an inline forward (Thunderbird, Gmail, Apple Mail, Outlook header block, to
    any depth), else the message's own text. The first forwarded message that reads as a
    declaration wins; otherwise the first with text."""
    own_before, own_segments = _inline_segments(text)
    outer = own_before if own_segments else text
    attached: list[tuple[ParsedMessage, str]] = []
    # Breadth first, outermost first: a forward's own attached messages are found in its parse
    # too (those inside a base64-encoded message/rfc822 are only found there).
    queue = list(pm.forwarded)
    seen: set[int] = set()
    while queue and len(seen) < 2 * MAX_INLINE_FORWARDS:
        inner = queue.pop(0)
        if id(inner) in seen:
            continue
        seen.add(id(inner))
        parsed, inner_body = inner_text(inner)
        queue.extend(parsed.forwarded)
        if inner_body.strip():
            attached.append((parsed, inner_body))
    verdicts = [looks_like_declaration(b, p.header("Subject") or subject, labels) for p, b in attached]
    # A labelled form (the portal's, a hand-made one) wins over a cover note whose subject merely
    # says « déclaration »; then the first that reads as one.
    chosen = next((a for a, v in zip(attached, verdicts, strict=True) if v[1] == "labelled"), None) or next(
        (a for a, v in zip(attached, verdicts, strict=True) if v[0]), None
    )
    declares = chosen is not None
    if chosen is None and attached:
        # No forwarded message reads as a declaration on its own (a forwarded phishing mail): the
        # cover note says what happened, the forwarded message shows it.
        chosen = (attached[0][0], outer.strip() + "\n\n" + attached[0][1])
    participants = _attached_participants(attached, verdicts) + _inline_participants(own_segments, labels, subject)
    if chosen is not None:
        parsed, inner_body = chosen
        inner_subject = parsed.header("Subject") or subject
        _before, segments = _inline_segments(inner_body)
        author, inner_declares = _author_of(segments, labels, inner_subject) if segments else (None, False)
        participants += _inline_participants(segments, labels, inner_subject)
        return _Source(inner_body, inner_subject + "\n" + subject, author or parsed.header("From") or None,
                       parsed.all_links() + pm.all_links(), outer,
                       author_declares=inner_declares if author else declares, participants=tuple(participants),
                       message_id=None if author else parsed.message_id(),
                       forwarded_digest=None if author else message_digest(parsed))
    if own_segments:
        forwarded = "\n".join(own for own, _a in own_segments)
        author, declares = _author_of(own_segments, labels, subject)
        body = next((own for own, a in own_segments if a == author), None) if declares else None
        return _Source(own_before + "\n" + forwarded, subject, author, pm.all_links(), outer,
                       author_declares=declares, participants=tuple(participants),
                       forwarded_digest=text_digest(body[header_block_end(body):]) if body is not None else None)
    form = _attached_form(pm, text, subject, labels)
    if form is not None:
        return _Source(text.strip() + "\n\n" + form, subject, None, pm.all_links(), None)
    return _Source(text, subject, None, pm.all_links(), None)


_ATTACHED = ("ci joint", "en pj", "en piece jointe", "en pieces jointe", "pj ", "joint a ce", "en annexe")
_DECLARED = ("declaration", "signalement", "declarons", "signalons", "declarer", "signaler")


def _announces_attached_declaration(text: str) -> bool:
    """A cover note that says the declaration is attached (« Vous trouverez en PJ la déclaration
    pour notre site », « ci-joint notre signalement »). Asked only of mail with a file attached."""
    form = match_form(text[:2000]) + " "
    return any(words in form for words in _ATTACHED) and any(word in form for word in _DECLARED)


def _attached_form(pm: ParsedMessage, text: str, subject: str, labels: Labels) -> str | None:
    """The declaration's form attached as a text file under a cover note (« ci-joint notre fiche
    de déclaration »), read after the note; None when the note is a form itself or no attached
    text is one. It was not read: the case showed « non précisé » everywhere (note of 2026-12-07)."""
    if not pm.text_files or looks_like_declaration(text, subject, labels)[1] == "labelled":
        return None
    return next((t for t in pm.attached_texts() if looks_like_declaration(t, subject, labels)[1] == "labelled"), None)
