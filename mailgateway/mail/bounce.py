"""Bounces: RFC 3464 delivery status notifications, the prose of non-standard NDRs, VERP.

* RFC 3464 §2.3: per-recipient fields Final-Recipient / Original-Recipient, Action
  (failed, delayed, delivered, relayed, expanded), Status (RFC 3463: 5.x.x permanent, 4.x.x
  transient), Diagnostic-Code. ``Original-Recipient`` (§2.3.1) is the address as the sender
  gave it, i.e. the address we sent to: it is reported rather than ``Final-Recipient`` (the
  address after aliases and forwarding) when both are there.
* RFC 6522 multipart/report carries the returned message as message/rfc822 or only its headers
  as text/rfc822-headers: that is where the original Message-ID is. Report parts with another
  type (RFC 6533 ``message/global-delivery-status``, ``text/delivery-status``…) are read the
  same way, and so are DSN fields left in the text when broken headers lost the MIME structure.
* Not bounces: RFC 8098 read receipts (``report-type=disposition-notification``), RFC 5965
  feedback reports, DSNs that report only successful deliveries, challenge/response and
  whitelist confirmations, and auto-replies (mail/ndr.py).
* Plain-text NDRs (qmail, Exim, Sendmail, Postfix, Exchange in English and French, Lotus Notes,
  GroupWise…): mail/ndr.py reads the report's own text, never the returned message.
* flufl.bounce (Mailman's detectors) is a last resort for the recipients of a recognised NDR;
  what it finds is kept only when the report's own text names the address.
* VERP: our return path is ``<bounce_local_part>+<token>@<bounce_domain>``; a bounce addressed
  there names the outbound message, hence the address we sent to, without any parsing.
"""

from __future__ import annotations

import email.parser
import email.policy
import logging
import re
from email.message import Message

from mailgateway.mail import ndr
from mailgateway.mail.facts import Bounce
from mailgateway.mail.headers import decode_header_value, message_ids, parse_addresses, parse_header_addresses
from mailgateway.mail.parse import ParsedMessage, part_text, walk
from mailgateway.mail.refs import strip_prefixes

_STATUS = re.compile(r"\b([245])\.\d{1,3}\.\d{1,3}\b")
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (status|failure|has failed|notification)|failure notice|"
    r"returned mail|mail delivery (failed|failure|system)|non remis|non distribu|"
    r"[ée]chec de (la )?(remise|distribution)|nondeliverable|delivery problem|could not be delivered|"
    r"rejected|unzustellbar|returned to sender|mail system error|warning: could not send|"
    r"delayed mail|message not delivered|delivery failure|remise impossible|not delivered|"
    r"user unknown|undelivered mail|mail failure|delivery notification|failed delivery|nicht zustellbar",
    re.I,
)
_BOUNCE_SENDER = re.compile(
    r"^(mailer-daemon|post_?master|mail-daemon|mailerdaemon|mdaemon|"
    r"mail delivery (system|subsystem)|bounce|bounces|mail administrator|system administrator|"
    r"microsoft outlook|mail system|internet mail delivery)(@|$)",
    re.I,
)
# Report parts whose type is not message/delivery-status but that carry its fields.
_REPORT_TYPES = ("message/global-delivery-status", "text/delivery-status", "message/delivery-status",
                 "text/x-delivery-status", "message/x-delivery-status")
_NOT_BOUNCE_REPORTS = ("disposition-notification", "feedback-report")
_SUCCESS_ACTIONS = ("delivered", "relayed", "expanded")
_DELAY_WORDS = ("delayed", "will retry", "not yet been delivered", "has not been delivered yet",
                "temporary failure", "temporarily", "retrasado", "en attente", "differe")
MAX_RECIPIENTS = 100
_log = logging.getLogger(__name__)


def verp_token(pm: ParsedMessage, local_part: str, domain: str) -> str | None:
    """The token of ``<local_part>+<token>@<domain>`` among the envelope/recipient headers."""
    if not domain:
        return None
    prefix = local_part.lower() + "+"
    suffix = "@" + domain.lower()
    for _name, addr in pm.addresses("Delivered-To", "X-Original-To", "Envelope-To", "To", "Cc"):
        if addr.startswith(prefix) and addr.endswith(suffix):
            token = addr[len(prefix) : -len(suffix)]
            if token:
                return token
    return None


def looks_like_bounce(pm: ParsedMessage) -> bool:
    """Cheap signals of a non-delivery report: its sender, its subject, a null return path."""
    sender = pm.from_address()
    if sender and (_BOUNCE_SENDER.match(sender[1]) or _BOUNCE_SENDER.match(sender[0])):
        return True
    if not sender and pm.header("From") and _BOUNCE_SENDER.match(pm.header("From").strip()):
        return True
    if any(_BOUNCE_SENDER.match(a) for _n, a in pm.addresses("Return-Path")):
        return True
    return bool(_BOUNCE_SUBJECT.search(pm.header("Subject")[:300]))


def _null_return_path(pm: ParsedMessage) -> bool:
    # RFC 5321 §4.5.5: notifications are sent with a null reverse-path.
    return any(v.strip() in ("<>", "") for v in pm.headers("Return-Path"))


def _address_of(value: str) -> str | None:
    """The address of a DSN recipient field (``rfc822; user@host``), or None."""
    kind, sep, rest = value.partition(";")
    text = rest if sep else kind
    if sep and kind.strip().lower() not in ("rfc822", "rfc-822", "x400", "unknown", "utf-8", ""):
        return None
    found = ndr.ADDRESS.search(text)
    return found.group(0).strip(".").lower() if found else None


def parse_dsn(text: str) -> tuple[list[str], bool | None, str | None]:
    """(recipients, permanent, diagnostic) from the text of a message/delivery-status part.

    A recipient is its Original-Recipient when the report gives one (RFC 3464 §2.3.1), else its
    Final-Recipient. ``permanent`` is None when no block names a failed or delayed recipient.
    """
    recipients: list[str] = []
    permanent: bool | None = None
    diagnostic: str | None = None
    # RFC 3464 §2.1: blocks separated by blank lines; the first is per-message.
    for block in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n").replace("\r", "\n"))[: MAX_RECIPIENTS + 1]:
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            name, sep, value = line.partition(":")
            if sep and name.strip() and " " not in name.strip():
                fields.setdefault(name.strip().lower(), value.strip())
        final = fields.get("final-recipient", "")
        original = fields.get("original-recipient", "")
        if not (final or original):
            continue
        action = fields.get("action", "").lower().split(" ")[0]
        status = fields.get("status", "")
        if action in _SUCCESS_ACTIONS:
            continue
        address = (_address_of(original) if original else None) or (_address_of(final) if final else None)
        if address and address not in recipients:
            recipients.append(address)
        match = _STATUS.search(status)
        is_permanent = action == "failed" and not (match and match.group(1) == "4")
        if match and match.group(1) == "5":
            is_permanent = True
        if not action and not match:
            is_permanent = True  # a recipient block with neither: a failure report all the same
        if action == "delayed":
            is_permanent = False
        permanent = is_permanent if permanent is None else (permanent or is_permanent)
        if diagnostic is None and fields.get("diagnostic-code"):
            diagnostic = fields["diagnostic-code"][:500]
    return recipients, permanent, diagnostic


def _only_successes(text: str) -> bool:
    low = text.lower()
    return any(f"action: {a}" in low for a in _SUCCESS_ACTIONS) and "action: failed" not in low


def _report_type(pm: ParsedMessage) -> str:
    try:
        return str(pm.msg.get_param("report-type", "") or "").strip().lower()
    except Exception:
        return ""


def _other_report_parts(pm: ParsedMessage) -> list[str]:
    """Texts of report parts the parser did not file as message/delivery-status: another type
    (RFC 6533 ``message/global-delivery-status``, ``text/delivery-status``…), one inside an
    attached message (a report forwarded or re-wrapped by a relay), or the report attached as a
    file ("details.txt", octet-stream) whose own fields say what it is."""
    if pm.delivery_status:
        return []
    found: list[str] = []
    for part, _depth, inner in walk(pm.msg):
        ctype = part.get_content_type().lower()
        if ctype in _REPORT_TYPES or "delivery-status" in ctype:
            # Also inside an attached message: a report forwarded or re-wrapped by a relay.
            found.append(_report_part_text(part))
        elif (not inner and not part.is_multipart() and ctype.startswith(("text/", "application/octet-stream"))
              and _is_file(part)):
            head = part_text(part, 64 * 1024)
            low = head[:5000].lower()
            if "final-recipient:" in low and ("reporting-mta:" in low or "action:" in low):
                found.append(head)
        if len(found) >= 5:
            break
    return found


def _is_file(part: Message) -> bool:
    try:
        return bool(part.get_filename()) or str(part.get("Content-Disposition", "")).lower().startswith("attachment")
    except Exception:
        return False


def _report_part_text(part: Message) -> str:
    payload = part.get_payload()
    if isinstance(payload, list):  # message/* types: compat32 parsed each block as a message
        blocks = ["\n".join(f"{k}: {decode_header_value(v)}" for k, v in block.items())
                  for block in payload[:1000] if isinstance(block, Message)]
        return "\n\n".join(blocks)
    return part_text(part, 256 * 1024)


def _dsn_in_text(text: str) -> str:
    """DSN fields left in the body when the MIME structure was lost: from the first per-recipient
    field on (the blocks after it are parsed as RFC 3464 blocks)."""
    low = text[:200_000].lower()
    starts = [i for i in (low.find("\nfinal-recipient:"), low.find("\noriginal-recipient:")) if i >= 0]
    if not starts:
        return ""
    start = min(starts)
    # The per-recipient block ends at the next blank line; keep a few blocks at most.
    return text[start + 1 : start + 1 + 20_000]


_FLUFL_MAX_BYTES = 256 * 1024


def _flufl_bounded(msg: Message) -> bool:
    """flufl.bounce's patterns backtrack on long lines (minutes on one 200 KB line): it only
    reads mail whose lines keep to RFC 5322 §2.1.1's 998 characters, 256 KB in all."""
    total = 0
    for part, _depth, _inner in walk(msg):
        try:
            payload = part.get_payload()
        except Exception:
            return False
        if isinstance(payload, str):
            total += len(payload)
            if total > _FLUFL_MAX_BYTES or any(len(line) > 998 for line in payload.splitlines()):
                return False
    return True


def _flufl(msg: Message) -> tuple[list[str], list[str]]:
    """(temporary, permanent) failures according to flufl.bounce's detectors; never raises."""
    if not _flufl_bounded(msg):
        return [], []
    try:
        from flufl.bounce import _scan

        detectors = list(getattr(_scan, "_DETECTORS", []))
    except Exception:
        return [], []
    for detector in detectors:
        try:
            temporary, permanent = detector().process(msg)
        except Exception:  # a detector choking on odd mail is not our failure; try the next
            _log.debug("flufl.bounce detector %s failed", detector, exc_info=True)
            continue
        if temporary or permanent:
            return _decode_all(temporary), _decode_all(permanent)
    return [], []


def _decode_all(values: object) -> list[str]:
    out: list[str] = []
    for v in list(values)[:MAX_RECIPIENTS] if isinstance(values, set | frozenset | list | tuple) else []:
        text = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        text = text.strip().strip("<>").lower()
        if "@" in text and text not in out:
            out.append(text)
    return out


def _headers_only(text: str) -> Message | None:
    try:
        return email.parser.HeaderParser(policy=email.policy.compat32).parsestr(text)
    except Exception:
        return None


def _returned(pm: ParsedMessage) -> list[Message]:
    """The returned message: message/rfc822, text/rfc822-headers, or RFC 6533 global headers."""
    headers = list(pm.rfc822_headers)
    if not pm.forwarded and not headers:
        for part, _depth, inner in walk(pm.msg):
            if not inner and part.get_content_type().lower() in ("message/global-headers", "text/global-headers"):
                payload = part.get_payload()
                if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                    return [payload[0]]
                headers.append(part_text(part, 256 * 1024))
                break
    return [m for m in [*pm.forwarded, *(_headers_only(h) for h in headers)] if m is not None]


def original_message_id(pm: ParsedMessage) -> str | None:
    """Message-ID of the returned message: message/rfc822, text/rfc822-headers, or inline text."""
    for inner in _returned(pm):
        try:
            value = inner.get("Message-ID")
        except Exception:
            value = None
        ids = message_ids(decode_header_value(str(value))) if value is not None else []
        if ids:
            return ids[0]
    # Non-standard bounces quote the original headers in their text.
    text = "\n".join(_texts(pm))[:100_000]
    match = re.search(r"^[ \t>]{0,8}Message-ID:[ \t]{0,20}(<[^<>\s]{1,500}>)", text, re.I | re.M)
    return match.group(1).strip("<>") if match else None


def _senders_side(pm: ParsedMessage) -> tuple[list[str], list[str]]:
    """(authors, weak): addresses that are no failed recipient. Authors: the report's own.
    Weak: where the report was sent and the returned message's author (normally us, but in
    relayed or list traffic a member's own post can bounce back to that member's address);
    the weak ones are set aside only while the report names other addresses."""
    authors = [a for _n, a in pm.addresses("From", "Sender", "Reply-To", "Return-Path")]
    weak = [a for _n, a in pm.addresses("To", "Cc", "Delivered-To", "X-Original-To", "Envelope-To")]
    for inner in _returned(pm)[:3]:
        for name in ("From", "Sender", "Reply-To", "Return-Path"):
            try:
                value = inner.get(name)
            except Exception:
                value = None
            if value is not None:
                weak.extend(a for _n, a in parse_header_addresses(value))
    return authors, weak


def _texts(pm: ParsedMessage) -> list[str]:
    if any(p.strip() for p in pm.plain):
        return pm.plain
    pm.convert_html()
    if any(h.strip() for h in pm.html):
        return pm.html
    return _lost_structure_texts(pm)


def _lost_structure_texts(pm: ParsedMessage) -> list[str]:
    """Text of a report whose MIME structure is lost: a multipart without parts (boundary
    missing or folded away), or leaf parts with a content type nobody can read."""
    found: list[str] = []
    for part, _depth, inner in walk(pm.msg):
        if inner:
            continue
        try:
            payload = part.get_payload()
            preamble = part.preamble if part.is_multipart() else None
        except Exception:  # noqa: S112 - an unreadable part is skipped, the others still count
            continue
        if isinstance(preamble, str) and preamble.strip():
            found.append(preamble[: ndr.MAX_REPORT_CHARS])
        if isinstance(payload, str) and payload.strip():
            ctype = part.get_content_type().lower()
            if ctype.startswith(("message/", "image/", "audio/", "video/", "application/")):
                continue
            found.append(part_text(part, 256 * 1024) if not part.is_multipart() else payload[:256 * 1024])
        if len(found) >= 5:
            break
    return found


def _challenge_or_vacation(pm: ParsedMessage, report: str) -> bool:
    subject = pm.header("Subject")
    if ndr.is_challenge(subject, report):
        return True
    return ndr.is_vacation_subject(subject) and not _BOUNCE_SUBJECT.search(subject[:300])


def _from_ses(pm: ParsedMessage) -> bool:
    sender = pm.header("From").lower()
    return "amazonses" in sender or "sns.amazonaws.com" in sender


def _dsn_facts(dsn_texts: list[str]) -> tuple[list[str], bool | None, str | None]:
    """(recipients, permanent, Diagnostic-Code) of every RFC 3464 text together."""
    recipients: list[str] = []
    permanent: bool | None = None
    diagnostic: str | None = None
    for text in dsn_texts:
        rcpts, perm, diag = parse_dsn(text)
        recipients.extend(r for r in rcpts if r not in recipients)
        if perm is not None:
            permanent = perm if permanent is None else (permanent or perm)
        diagnostic = diagnostic or diag
    return recipients, permanent, diagnostic


def _reads_as_report(pm: ParsedMessage, report: str, named: list[str], token: str | None) -> bool:
    """A report without RFC 3464 fields: its sender (or null return path) and failure words; or
    the words only a report uses, with an address or at our VERP address. Words alone are a
    person's, and so is a reply or forward ("RE:", "TR:", "Fwd:") quoting a report's words."""
    subject = pm.header("Subject")[:300]
    if _signals_of_report(pm) and ndr.has_ndr_wording(subject + "\n" + report):
        return True
    person = strip_prefixes(subject) != subject.strip()
    return not person and ndr.has_strong_wording(report) and (bool(named) or token is not None)


def _signals_of_report(pm: ParsedMessage) -> bool:
    return looks_like_bounce(pm) or _null_return_path(pm)


def detect_bounce(pm: ParsedMessage, token: str | None) -> Bounce | None:
    """The bounce facts, or None when this is not a bounce (module docstring)."""
    if _report_type(pm) in _NOT_BOUNCE_REPORTS:
        return None  # RFC 8098 read receipt, RFC 5965 feedback report
    texts = _texts(pm)
    # A list of bare addresses an MTA wrote, some as encoded words (SMTPUTF8 ones): decoded first.
    failed_header = [a for _n, a in parse_addresses(" ".join(pm.headers("X-Failed-Recipients")))]
    other_parts = _other_report_parts(pm)
    if not (token or failed_header or pm.delivery_status or other_parts or _signals_of_report(pm)
            or ndr.has_strong_wording("\n".join(texts)[: ndr.MAX_REPORT_CHARS])):
        return None  # nothing of a report: most mail stops here, cheaply
    if _from_ses(pm):
        ses = ndr.ses_notification("\n".join(texts))
        if ses is not None:
            return _ses_bounce(pm, token, *ses)
    report = ndr.report_text(texts)
    dsn_texts = [*pm.delivery_status, *other_parts]
    if not dsn_texts:
        inline = _dsn_in_text("\n" + "\n".join(texts))  # MIME structure lost, fields left in the body
        dsn_texts = [inline] if inline else []
    recipients, permanent, diagnostic = _dsn_facts(dsn_texts)
    if permanent is None and not failed_header and any(_only_successes(t) for t in dsn_texts):
        return None  # a report of successful deliveries only (RFC 3464 Action: delivered/relayed)
    evidence = bool(recipients) or permanent is not None or bool(failed_header)
    if not evidence and _challenge_or_vacation(pm, report):
        return None
    authors, weak = _senders_side(pm)
    parts = [token] if token else []
    named = (ndr.failed_recipients(report, authors + weak, parts)
             or ndr.failed_recipients(report, authors, parts)) if not recipients else []
    words_only = token is None and not evidence and not pm.delivery_status and not other_parts \
        and not _signals_of_report(pm)
    if not evidence and not _reads_as_report(pm, report, named, token):
        # At our VERP address, a report in words we cannot read (its sender or subject say it is
        # one) still names the delivery; mail with only a null return path there may be an
        # auto-reply (analyse.py decides); a person's reply or receipt sent there is no bounce
        # (it would take the contact out of use).
        if token is None or not (_null_return_path(pm) or looks_like_bounce(pm)):
            return None
        if not looks_like_bounce(pm):
            return _verp_only(pm, token)
    recipients = (recipients or [a for a in failed_header if not any(p in a for p in parts)] or named
                  or ndr.envelope_recipients(_returned_text(pm, texts, report), report)
                  or _flufl_named(pm, report, authors))
    if permanent is None:
        permanent = not _delayed(pm.header("Subject") + "\n" + report)
    if permanent and mailbox_full(f"{diagnostic or ''}\n{report}"):
        permanent = False  # a full mailbox is a soft bounce (mailbox_full)
    return Bounce(
        recipients=tuple(recipients[:MAX_RECIPIENTS]),
        permanent=permanent,
        original_message_id=original_message_id(pm),
        verp_token=token,
        diagnostic=_diagnostic(report, recipients, diagnostic),
        words_only=words_only,
    )


def _flufl_named(pm: ParsedMessage, report: str, authors: list[str]) -> list[str]:
    """flufl.bounce's addresses that the report's own text names (flufl also reads the
    returned message, whose To: is not whom we sent this copy to)."""
    temporary, permanent = _flufl(pm.msg)
    folded = report.lower()
    return [a for a in permanent + temporary if a in folded and a not in authors][:MAX_RECIPIENTS]


def _diagnostic(report: str, recipients: list[str], code: str | None) -> str:
    """The report's own words first (staff read them, in French when the server wrote French),
    then the RFC 3464 Diagnostic-Code. Never empty: analyse.py tells a report (a diagnostic)
    from mail that merely reached a VERP address (none)."""
    words = ndr.diagnostic(report, recipients, first_lines=code is None)
    if words and code and code.lower() not in words.lower():
        text = f"{words} ({code})"
    else:
        text = code or words or "rapport de non-remise sans diagnostic"
    return text[:500]


def _returned_text(pm: ParsedMessage, texts: list[str], report: str) -> str:
    """The returned message as text: its attached headers, or what follows the report."""
    parts: list[str] = []
    for inner in _returned(pm)[:3]:
        try:
            parts.extend(f"{k}: {v}" for k, v in inner.items()[:200])
        except Exception:  # noqa: S112 - unreadable returned headers give no envelope
            continue
    whole = "\n".join(texts)
    parts.append(whole[len(report):] if whole.startswith(report) else whole)
    return "\n".join(parts)


def _ses_bounce(pm: ParsedMessage, token: str | None, kind: str, recipients: list[str],
                permanent: bool) -> Bounce | None:
    """Amazon SES reports delivered and complained mail the same way as bounces: only
    ``Bounce`` notifications are bounces."""
    if kind != "Bounce":
        return None
    what = "rebond permanent" if permanent else "rebond temporaire"
    return Bounce(recipients=tuple(recipients), permanent=permanent, original_message_id=original_message_id(pm),
                  verp_token=token, diagnostic=f"notification Amazon SES : {what}")


def _verp_only(pm: ParsedMessage, token: str) -> Bounce:
    """Mail at a VERP return path that reads as no report: the token still names the delivery
    (analyse.py lets an auto-reply there be an auto-reply)."""
    return Bounce(recipients=(), permanent=True, original_message_id=original_message_id(pm), verp_token=token)


# RFC 3463 §3.3: X.2.2 "mailbox full" is a condition that may clear ("persistent transient"),
# and RFC 5321 §4.5.3.1.10 asks clients to treat a 552 for a full mailbox as temporary. Exchange
# still answers it with a final NDR (« 554 5.2.2 mailbox full; QuotaExceededException »).
_MAILBOX_FULL_STATUS = re.compile(r"\b[45]\.2\.2\b")
_MAILBOX_FULL_WORDS = ("mailbox full", "mailbox is full", "quota", "insufficient storage",
                       "boite pleine", "boite aux lettres pleine", "boite de reception pleine",
                       "boite aux lettres est pleine", "espace de stockage insuffisant")
_ADDRESS_STATUS = re.compile(r"\b5\.1\.\d{1,3}\b")


def mailbox_full(text: str) -> bool:
    """A full mailbox (5.2.2, "quota", « boîte pleine »): a soft bounce, whatever its class.
    A report that also says the address is wrong (5.1.x) is not one."""
    folded = ndr.fold(text[: ndr.MAX_REPORT_CHARS])
    if _ADDRESS_STATUS.search(folded):
        return False
    return bool(_MAILBOX_FULL_STATUS.search(folded)) or any(w in folded for w in _MAILBOX_FULL_WORDS)


def _delayed(text: str) -> bool:
    folded = ndr.fold(text[:ndr.MAX_REPORT_CHARS])
    codes = {m.group(1) for m in _STATUS.finditer(folded)}
    if "5" in codes:
        return False
    return "4" in codes or any(w in folded for w in _DELAY_WORDS)
