"""Bounces: RFC 3464 delivery status notifications first, flufl.bounce for the rest, VERP.

* RFC 3464 §2.3: per-recipient fields Final-Recipient / Original-Recipient, Action
  (failed, delayed, delivered, relayed, expanded), Status (RFC 3463: 5.x.x permanent, 4.x.x
  transient), Diagnostic-Code.
* RFC 6522 multipart/report carries the returned message as message/rfc822 or only its headers
  as text/rfc822-headers: that is where the original Message-ID is.
* flufl.bounce (Mailman's detectors) understands the non-standard formats of old MTAs.
* VERP: our return path is ``<bounce_local_part>+<token>@<bounce_domain>``; a bounce addressed
  there names the outbound message without any parsing.
"""

from __future__ import annotations

import email.parser
import email.policy
import logging
import re
from email.message import Message

from mailgateway.mail.facts import Bounce
from mailgateway.mail.headers import decode_header_value, message_ids, parse_addresses
from mailgateway.mail.parse import ParsedMessage

_STATUS = re.compile(r"\b([245])\.\d{1,3}\.\d{1,3}\b")
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (status|failure|has failed|notification)|failure notice|"
    r"returned mail|mail delivery (failed|failure|system)|non remis|non distribu|"
    r"[ée]chec de (la )?(remise|distribution)|nondeliverable|delivery problem|could not be delivered|"
    r"rejected|unzustellbar|returned to sender|mail system error|warning: could not send|"
    r"delayed mail|message not delivered|delivery failure",
    re.I,
)
_BOUNCE_SENDER = re.compile(
    r"^(mailer-daemon|postmaster|mail-daemon|mailerdaemon|mdaemon|"
    r"mail delivery (system|subsystem)|bounce|bounces)(@|$)",
    re.I,
)
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
    """Cheap signals that justify running the (slower) heuristic detectors."""
    sender = pm.from_address()
    if sender and _BOUNCE_SENDER.match(sender[1] or sender[0]):
        return True
    if sender and _BOUNCE_SENDER.match(sender[0]):
        return True
    return bool(_BOUNCE_SUBJECT.search(pm.header("Subject")[:300]))


def parse_dsn(text: str) -> tuple[list[str], bool | None, str | None]:
    """(recipients, permanent, diagnostic) from the text of a message/delivery-status part."""
    recipients: list[str] = []
    permanent: bool | None = None
    diagnostic: str | None = None
    # RFC 3464 §2.1: blocks separated by blank lines; the first is per-message.
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\r", "\n"))[: MAX_RECIPIENTS + 1]:
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            name, sep, value = line.partition(":")
            if sep and name.strip() and " " not in name.strip():
                fields.setdefault(name.strip().lower(), value.strip())
        rcpt = fields.get("final-recipient") or fields.get("original-recipient")
        if not rcpt:
            continue
        action = fields.get("action", "").lower()
        status = fields.get("status", "")
        if action in ("delivered", "relayed", "expanded"):
            continue
        address = rcpt.partition(";")[2].strip() if ";" in rcpt else rcpt.strip()
        address = address.strip("<>").strip().lower()
        if address and address not in recipients:
            recipients.append(address)
        match = _STATUS.search(status)
        is_permanent = action == "failed" and not (match and match.group(1) == "4")
        if match and match.group(1) == "5":
            is_permanent = True
        if action == "delayed":
            is_permanent = False
        permanent = is_permanent if permanent is None else (permanent or is_permanent)
        if diagnostic is None and fields.get("diagnostic-code"):
            diagnostic = fields["diagnostic-code"][:500]
    return recipients, permanent, diagnostic


def _flufl(msg: Message) -> tuple[list[str], list[str]]:
    """(temporary, permanent) failures according to flufl.bounce's detectors; never raises."""
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


def original_message_id(pm: ParsedMessage) -> str | None:
    """Message-ID of the returned message: message/rfc822, text/rfc822-headers, or inline text."""
    returned = [*pm.forwarded, *(_headers_only(h) for h in pm.rfc822_headers)]
    for inner in returned:
        try:
            value = inner.get("Message-ID") if inner is not None else None
        except Exception:
            value = None
        ids = message_ids(decode_header_value(value)) if value is not None else []
        if ids:
            return ids[0]
    # Non-standard bounces quote the original headers in their text.
    match = re.search(r"^\s*Message-ID:\s*(<[^<>\s]+>)", pm.text()[:100_000], re.I | re.M)
    return match.group(1).strip("<>") if match else None


def detect_bounce(pm: ParsedMessage, token: str | None) -> Bounce | None:
    """The bounce facts, or None when this is not a bounce."""
    recipients: list[str] = []
    permanent: bool | None = None
    diagnostic: str | None = None
    is_report = any(pm.delivery_status)
    for text in pm.delivery_status:
        rcpts, perm, diag = parse_dsn(text)
        recipients.extend(r for r in rcpts if r not in recipients)
        if perm is not None:
            permanent = perm if permanent is None else (permanent or perm)
        diagnostic = diagnostic or diag
    if is_report and not recipients and permanent is None:
        permanent = False  # a report that names no failed recipient ("Action: delivered")
    if not recipients and (is_report or token or looks_like_bounce(pm)):
        temporary, perm_list = _flufl(pm.msg)
        recipients = perm_list + [t for t in temporary if t not in perm_list]
        if recipients:
            permanent = bool(perm_list)
            is_report = True
    if not is_report and not recipients:
        if token is None:
            return None
    if not recipients:
        # A VERP bounce we could not parse still names the recipient through the token.
        recipients = [a for _n, a in parse_addresses(pm.header("X-Failed-Recipients"))]
    return Bounce(
        recipients=tuple(recipients[:MAX_RECIPIENTS]),
        permanent=True if permanent is None else permanent,
        original_message_id=original_message_id(pm),
        verp_token=token,
        diagnostic=diagnostic,
    )
