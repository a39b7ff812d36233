"""Facts extracted from one inbound message: the shape of ``parse --json`` (README, "Command line": a contract).

These are plain frozen dataclasses produced by pure functions (``mail.analyse``) and consumed by
processing. ``MessageFacts.to_json()`` gives the contract object; keys are always present.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KINDS = ("declaration", "alert", "reply", "command", "bounce", "auto_reply", "loop", "unknown")
INDICATOR_TYPES = ("url", "domain", "ip", "email", "hash", "phone", "cve")


@dataclass(frozen=True)
class SenderVerdict:
    """Who sent the message and whether that is proven (docs/guarantees.md: a From header proves nothing)."""

    address: str | None = None
    domain: str | None = None
    authenticated: bool = False
    # "dkim" (our own verification) or "authentication-results" (a trusted authserv-id said so).
    method: str | None = None
    # Signing domain (d=) or header.d/header.from of the trusted result, when there is one.
    auth_domain: str | None = None
    # Human-readable reason, recorded on the timeline ("dkim=pass d=chu.fr aligned", "no signature").
    detail: str = ""
    # Lower-cased header field names covered by the accepted signature (its h= tag), empty when the
    # method gives no such knowledge. Steering headers (Subject, In-Reply-To, References) are acted
    # on only when covered (RFC 6376 §8.15).
    signed_headers: frozenset[str] = frozenset()
    # "dkim:<d>:<sha256 of b=>" of the accepted signature: a command or alert runs at most once per
    # signature (replays with an extra Received: line carry the same one).
    signature_key: str | None = None
    # The same for the message's other aligned signatures (not verified): a copy of it accepted
    # under one of them is the same message (processing/replay.py).
    other_signature_keys: tuple[str, ...] = ()
    # Not authenticated, and an aligned signature could not be checked because its key lookup
    # failed temporarily (dkim=temperror: DNS timeout, SERVFAIL): trying again later may
    # authenticate it. The daemon's sweep defers such a message (processing/runner.py).
    temporary: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "authenticated": self.authenticated,
            "method": self.method,
            "domain": self.domain,
        }


@dataclass(frozen=True)
class Declaration:
    finess: str | None = None
    structure: str | None = None
    category: str | None = None
    incident_type: str | None = None
    nature: str | None = None
    severity: str | None = None
    detected_at: str | None = None  # ISO 8601 with offset, Europe/Paris when not stated
    # The declarant's words when ``detected_at`` is an estimate of them: a relative day (« cette
    # nuit », « hier soir vers 23h ») or a date without a time (mail/dates.py parse_detection).
    detected_at_as_written: str | None = None
    impacts: tuple[str, ...] = ()
    summary: str | None = None
    measures: str | None = None
    declarant: str | None = None  # the person who declared (never a no-reply address)
    declarant_name: str | None = None
    departement: str | None = None
    # A forwarded declaration (message/rfc822 or inline "Message transféré"): the author of the
    # forwarded message. Recorded on the case for staff; never answered (the declarant is the
    # person who wrote to the agency: a forwarded phishing mail must not get our reply).
    forwarded_author: str | None = None
    # The legal entity's FINESS (EJ, juridique) when the mail gives one besides the
    # establishment's (ET, géographique), which is ``finess``.
    finess_ej: str | None = None
    # Other valid FINESS numbers of the text, for the directory to tell ET from EJ (not in JSON).
    finess_others: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "finess": self.finess,
            "structure": self.structure,
            "category": self.category,
            "incident_type": self.incident_type,
            "nature": self.nature,
            "severity": self.severity,
            "detected_at": self.detected_at,
            "detected_at_as_written": self.detected_at_as_written,
            "impacts": list(self.impacts),
            "summary": self.summary,
            "measures": self.measures,
            "declarant": self.declarant,
            "forwarded_author": self.forwarded_author,
            "finess_ej": self.finess_ej,
        }


@dataclass(frozen=True)
class Alert:
    reference: str | None = None
    title: str | None = None
    tlp: str | None = None  # the label relay obeys (mail/tlp.py: fails closed to AMBER+STRICT)
    targets: tuple[str, ...] = ()
    cves: tuple[str, ...] = ()
    authentic: bool = False
    tlp_marking: str | None = None  # the marking(s) as written, for staff; None: no marking at all
    tlp_known: bool = False  # every marking was a TLP label

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "title": self.title,
            "tlp": self.tlp,
            "targets": list(self.targets),
            "cves": list(self.cves),
            "authentic": self.authentic,
            "tlp_marking": self.tlp_marking,
            "tlp_known": self.tlp_known,
        }


@dataclass(frozen=True)
class Command:
    name: str
    args: tuple[str, ...] = ()
    accepted: bool = False
    reason: str | None = None
    line: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "args": list(self.args), "accepted": self.accepted, "reason": self.reason}


@dataclass(frozen=True)
class Bounce:
    recipients: tuple[str, ...] = ()
    permanent: bool = True
    original_message_id: str | None = None
    # The VERP token of our return path when the bounce came back to bounces+<token>@...
    verp_token: str | None = None
    diagnostic: str | None = None
    # Found by a report's wording and an address alone: no RFC 3464 part, no VERP token, no
    # X-Failed-Recipients, no report's sender, subject or null return path. A person quoting a
    # mail log reads the same (analyse.py then keeps a declaration or a case reply for what it is).
    words_only: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "recipients": list(self.recipients),
            "permanent": self.permanent,
            "original_message_id": self.original_message_id,
        }


@dataclass(frozen=True)
class Indicator:
    type: str
    value: str

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "value": self.value}


@dataclass(frozen=True)
class MessageFacts:
    kind: str = "unknown"
    region: str | None = None
    case_ref: str | None = None
    sender: SenderVerdict = field(default_factory=SenderVerdict)
    declaration: Declaration | None = None
    alert: Alert | None = None
    commands: tuple[Command, ...] = ()
    bounce: Bounce | None = None
    indicators: tuple[Indicator, ...] = ()
    quarantine_reason: str | None = None
    # Beyond the contract, for processing:
    message_id: str | None = None
    in_reply_to: tuple[str, ...] = ()  # In-Reply-To then References, our own first
    subject: str = ""
    reply_to: str | None = None
    new_text: str = ""  # the reply's new text, quotes and signature removed
    body_text: str = ""  # whole plain text (HTML converted), bounded in size
    recipients: tuple[str, ...] = ()  # To/Cc addresses
    is_bulletin_request: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # The same Message-IDs in thread order (References as written, then In-Reply-To: the parent
    # last), for the References of our answer (RFC 5322 §3.6.4); ``in_reply_to`` is ordered for
    # finding the case. Empty: answer with ``in_reply_to``.
    thread_chain: tuple[str, ...] = ()
    # Every Message-ID the message names (In-Reply-To, References; covered by a signature or
    # not), for processing only: a message analysed before another one it names was processed
    # was analysed against a database without that one's case, and is analysed again
    # (processing/runner.py ``BatchRun``).
    named_ids: tuple[str, ...] = ()

    def answer_references(self) -> list[str]:
        """The References of a mail answering this one, before its own Message-ID (the composer
        appends it as the parent): the thread oldest first."""
        return list(self.thread_chain or self.in_reply_to)

    def _declaration_json(self) -> dict[str, Any] | None:
        """The declaration, and who passed it on: an agency colleague who forwarded it (the
        declarant is the forwarded mail's author, acknowledged; the colleague is recorded, as on
        the case, ``fields.declaration.transmis_par``), else null."""
        if self.declaration is None:
            return None
        return {**self.declaration.to_json(), "transmis_par": self.extra.get("transmis_par")}

    def to_json(self, file: str | None = None) -> dict[str, Any]:
        return {
            "file": file,
            "kind": self.kind,
            "region": self.region,
            "case_ref": self.case_ref,
            "sender": self.sender.to_json(),
            "declaration": self._declaration_json(),
            "alert": self.alert.to_json() if self.alert else None,
            "commands": [c.to_json() for c in self.commands],
            "bounce": self.bounce.to_json() if self.bounce else None,
            "indicators": [i.to_json() for i in self.indicators],
            "quarantine_reason": self.quarantine_reason,
        }
