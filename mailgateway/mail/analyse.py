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
   about an incident; forwarded declarations (message/rfc822 attachment or inline "Forwarded
   message" / "Message transféré" / "Début du message réexpédié") are read in the forwarded part.
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
from dataclasses import replace
from datetime import datetime

from mailgateway.mail.alert import domain_in, extract_alert, looks_like_alert
from mailgateway.mail.autoreply import auto_reply_reason, loop_reason
from mailgateway.mail.bounce import detect_bounce, verp_token
from mailgateway.mail.commands import REASON_UNKNOWN, authorise, is_staff, parse_command_line, parse_commands
from mailgateway.mail.context import AnalysisContext
from mailgateway.mail.declaration import extract_declaration, labelled_fields, looks_like_declaration
from mailgateway.mail.facts import Command, MessageFacts, SenderVerdict
from mailgateway.mail.headers import message_ids, parse_addresses
from mailgateway.mail.indicators import extract_indicators, phone_e164
from mailgateway.mail.labels import Labels, load_labels
from mailgateway.mail.parse import ParsedMessage, inner_text, message_problem, parse_message
from mailgateway.mail.refs import strip_prefixes, thread_case
from mailgateway.mail.text import fold, forwarded_from, new_text, split_forwarded
from mailgateway.wire import canonical

__all__ = ["analyse"]

_FRENCH_WORDS = frozenset(
    "le la les des est nous vous une pour dans sur avec qui que pas du au aux ce cette sont été "
    "bonjour cordialement notre nos votre merci suite depuis ont avons".split()
)


def analyse(raw: bytes, ctx: AnalysisContext, sender: SenderVerdict | None = None) -> MessageFacts:
    """Classify and extract; never raises (failures become kind "unknown" with the reason)."""
    try:
        return _analyse(raw, ctx, sender)
    except Exception as exc:  # the contract: a message that breaks the parser is quarantined
        return MessageFacts(
            kind="unknown",
            sender=sender or SenderVerdict(),
            quarantine_reason=f"erreur d'analyse : {type(exc).__name__}: {exc}"[:500],
        )


def _sender_from_headers(pm: ParsedMessage) -> SenderVerdict:
    found = pm.from_address()
    if not found:
        return SenderVerdict(detail="no From header")
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
    return load_labels(ctx.extra_field_labels, ctx.extra_incident_types, ctx.extra_categories)


# Headers that choose what an action applies to (case, preview, query): RFC 6376 §8.15.
_STEERING = (("subject", "Subject"), ("in-reply-to", "In-Reply-To"), ("references", "References"))


def _uncovered(pm: ParsedMessage, sender: SenderVerdict) -> list[str]:
    """Steering headers present in the message but not covered by the accepted signature."""
    if not sender.authenticated:
        return []
    return [shown for name, shown in _STEERING if pm.has(name) and name not in sender.signed_headers]


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


def _refused(commands: tuple[Command, ...], reason: str) -> tuple[Command, ...]:
    return tuple(
        c if c.reason == REASON_UNKNOWN else Command(c.name, c.args, accepted=False, reason=reason, line=c.line)
        for c in commands
    )


def _ordered(ids: list[str], own_domains: list[str]) -> list[str]:
    unique = list(dict.fromkeys(ids))
    unique.sort(key=lambda mid: not domain_in(mid.rpartition("@")[2], own_domains))
    return unique


def _analyse(raw: bytes, ctx: AnalysisContext, given: SenderVerdict | None) -> MessageFacts:
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
    reply_to_pairs = parse_addresses(pm.header("Reply-To"))
    reply_to = reply_to_pairs[0][1] if reply_to_pairs else None
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
    region = _region(recipients + envelope, case_ref, ctx)
    extra: dict[str, object] = {"parse": pm.degraded} if pm.degraded else {}
    if pm.attachments:
        extra["attachments"] = pm.attachments
    if how:
        extra["threaded_by"] = how
    if uncovered:
        extra["uncovered_headers"] = uncovered
    base = MessageFacts(
        region=region,
        case_ref=case_ref,
        sender=sender,
        message_id=pm.message_id(),
        in_reply_to=tuple(ids),
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
    # 2. bounce (an out-of-office sent to our VERP return path is an auto-reply, not a bounce)
    token = verp_token(pm, ctx.bounce_local_part, ctx.bounce_domain)
    auto = auto_reply_reason(pm, labels.auto_reply_subjects, bulk_allowed=_from_acss(sender, ctx))
    bounce = detect_bounce(pm, token)
    if bounce is not None and not (auto and not pm.delivery_status and not bounce.recipients):
        return replace(base, kind="bounce", bounce=bounce)
    # 3. auto-reply
    if auto:
        extra["auto_reply"] = auto
        return replace(base, kind="auto_reply")
    # 4. reply / command
    commands = _commands(subject, fresh, labels)
    bare_subject = strip_prefixes(subject)
    is_bulletin = fold(bare_subject).startswith("#bulletin") and "Subject" not in uncovered
    subject_query = bare_subject.startswith("#") and bool(commands) and commands[0].line == bare_subject.strip()
    if case_ref or subject_query or (commands and is_staff(sender.address, ctx.staff)):
        kind = "command" if commands else "reply"
        cmd_region = case_ref.split("-")[1] if case_ref else region
        facts_commands = authorise(commands, sender, cmd_region, ctx.staff)
        if steered:
            facts_commands = _refused(facts_commands, coverage_reason(steered))
        indicators = extract_indicators([fresh], _participants(pm, ctx, reply_to), labels.noise_domains)
        return replace(base, kind=kind, commands=facts_commands, indicators=indicators, is_bulletin_request=is_bulletin)
    # 5. alert
    if _from_acss(sender, ctx) or looks_like_alert(subject, text, labels):
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
        indicators = extract_indicators([text, *pm.all_links()], _participants(pm, ctx, reply_to), labels.noise_domains)
        return replace(base, kind="alert", alert=alert, indicators=indicators)
    # 6. declaration (possibly forwarded)
    decl_text, decl_subject, original_from, links = _declaration_source(pm, text, subject)
    is_decl, why = looks_like_declaration(decl_text, decl_subject, labels)
    if (
        is_decl
        and why != "labelled"
        and not (_frenchish(decl_subject + " " + decl_text) or region_hit(recipients + envelope, ctx))
    ):
        is_decl = False
    if is_decl:
        extra["declaration_by"] = why
        from_addr = sender.address
        declaration = extract_declaration(
            decl_text, decl_subject, ctx, labels, from_addr, reply_to, _sent_at(pm), original_from
        )
        excluded = [*_participants(pm, ctx, reply_to), declaration.declarant or ""]
        phones = _declarant_phones(decl_text, labels)
        indicators = extract_indicators([decl_text, *links], excluded, labels.noise_domains, phones)
        return replace(base, kind="declaration", declaration=declaration, indicators=indicators)
    # 7. unknown
    reason_text = "message non reconnu : ni déclaration, ni alerte, ni réponse à un dossier"
    if pm.degraded:
        reason_text += f" (analyse dégradée : {pm.degraded})"
    elif not text.strip() and pm.parts <= 1 and not pm.header("From"):
        reason_text = "contenu illisible : aucun en-tête ni texte exploitable"
    # No indicators for unknown mail: mostly spam, whose links would only be noise for staff.
    return replace(base, kind="unknown", quarantine_reason=reason_text)


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


def _commands(subject: str, fresh: str, labels: Labels) -> list[Command]:
    found: list[Command] = []
    bare = strip_prefixes(subject)
    if bare.startswith("#"):
        cmd = parse_command_line(bare, labels)
        if cmd is not None:
            found.append(cmd)
    found.extend(parse_commands(fresh, labels))
    return found


def _participants(pm: ParsedMessage, ctx: AnalysisContext, reply_to: str | None) -> list[str]:
    """Addresses that are the message's own participants or ours: noise, not indicators."""
    found = [a for _n, a in pm.addresses("From", "To", "Cc", "Sender", "Reply-To")]
    found.extend(ctx.own_addresses)
    found.extend(ctx.region_addresses)
    if reply_to:
        found.append(reply_to)
    return found


def _declarant_phones(text: str, labels: Labels) -> list[str]:
    """Numbers given as the declarant's contact are not indicators of compromise."""
    fields = labelled_fields(text, labels).values
    return phone_e164(" ".join(fields.get(k, "") for k in ("phone", "declarant", "declarant_email")))


def _declaration_source(pm: ParsedMessage, text: str, subject: str) -> tuple[str, str, str | None, list[str]]:
    """(text, subject, original From, links) of the declaration: the forwarded part when there is one."""
    for inner in pm.forwarded:
        parsed, inner_body = inner_text(inner)
        if inner_body.strip():
            inner_subject = parsed.header("Subject") or subject
            original = parsed.header("From") or None
            return inner_body, inner_subject + "\n" + subject, original, parsed.all_links() + pm.all_links()
    before, forwarded = split_forwarded(text)
    if forwarded and forwarded.strip():
        original = forwarded_from(forwarded)
        return before + "\n" + forwarded, subject, original, pm.all_links()
    return text, subject, None, pm.all_links()
