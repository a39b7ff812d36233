"""Build final outbound bytes: rendered templates + headers + DKIM.

Headers are written by ``dispatch/mime.py``, which makes every value one line before encoding it,
checks addresses against a strict addr-spec and keeps only well-formed Message-IDs, so text taken
from inbound mail (subjects, names, Message-IDs) can never inject a header or a recipient.
Our mail is marked as automatic (RFC 3834 §5: ``Auto-Submitted``), asks Exchange not to
answer it (``X-Auto-Response-Suppress``) and carries our loop header, so other robots and other
gateways do not answer it and we recognise it if it comes back.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import format_datetime
from functools import lru_cache
from typing import Any, Protocol

from mailgateway.clock import PARIS, Clock
from mailgateway.dispatch import mime
from mailgateway.dispatch.render import Renderer

LOOP_HEADER = "X-Mailgateway-Loop"
_MSGID_RE = re.compile(r"<[^<>\s]+@[^<>\s]+>")


class Signer(Protocol):
    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True)
class Attachment:
    raw: bytes
    filename: str
    # "message/rfc822" for an original message, else a MIME type.
    content_type: str = "message/rfc822"


@dataclass(frozen=True)
class InlineImage:
    """A picture shown inside the HTML body (``<img src="cid:...">``), RFC 2387 multipart/related."""

    cid: str  # Content-ID without angle brackets
    data: bytes
    subtype: str = "png"
    filename: str = ""


@dataclass(frozen=True)
class Composed:
    raw: bytes
    message_id: str  # with angle brackets
    subject: str


@dataclass(frozen=True)
class MailSpec:
    template: str
    context: Mapping[str, Any]
    to: str
    from_address: str
    from_name: str
    idempotency_key: str
    reply_to: str | None = None
    in_reply_to: str | None = None
    references: Sequence[str] = ()
    # RFC 3834 §5: "auto-replied" for answers to a message, "auto-generated" otherwise.
    auto_submitted: str = "auto-replied"
    attachments: Sequence[Attachment] = ()
    tlp: str | None = None
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    # Pictures referenced by the HTML body as cid:...; ignored when the mail has no HTML part.
    inline_images: Sequence[InlineImage] = ()
    # One message to several people (a staff notification to a region's staff): all of them in
    # To, ``to`` among them; empty: ``to`` alone.
    to_all: Sequence[str] = ()


# Bits of HMAC output kept in a Message-ID: far beyond guessing (RFC 5322 §3.6.4 asks only for
# uniqueness; we also need unpredictability, see stable_message_id).
MESSAGE_ID_BITS = 160


def stable_message_id(idempotency_key: str, domain: str, secret: bytes) -> str:
    """The same logical mail always has the same Message-ID (at-least-once delivery, docs/guarantees.md),
    and nobody outside can compute it.

    Our Message-IDs are credentials of a sort: a DSN naming one is attributed to the outbox row
    (bounce scoring) and a reply naming one is threaded into its case or bulletin. They used to be
    ``sha256(key)`` of guessable keys (``bulletin:<id>:<FINESS>``), so anyone could forge bounces
    or thread into any case. Now: HMAC-SHA256 under the installation secret
    (store/installation.py), 160 bits, base32 (case-insensitive, RFC 4648 §6).
    """
    if len(secret) < 16:
        raise ValueError("the Message-ID secret must have at least 128 bits")
    mac = hmac.new(secret, b"message-id\x00" + idempotency_key.encode(), hashlib.sha256).digest()
    token = base64.b32encode(mac[: MESSAGE_ID_BITS // 8]).decode("ascii").lower()
    return f"<mg.{token}@{domain}>"


def clean_message_ids(values: Sequence[str | None]) -> list[str]:
    """Keep only well-formed ``<id@host>`` tokens from untrusted header values."""
    found: list[str] = []
    for value in values:
        text = value or ""
        if "<" not in text:
            # Analysis hands Message-IDs without their angle brackets.
            text = " ".join(f"<{t}>" for t in text.split())
        for token in _MSGID_RE.findall(text):
            if token not in found and len(token) <= 250:
                found.append(token)
    return found


# Message-IDs kept in References: the first (the thread's root) and the last ones, the parent
# last. RFC 5322 §3.6.4 lets a long chain be trimmed; RFC 5537 §3.4.4 (and mail clients: Thunderbird,
# mutt) keep the first and the most recent, which is all threading needs. A case with 20+ messages
# no longer hands the declarant a header listing every internal mail of the case.
REFERENCES_FIRST = 1
REFERENCES_LAST = 4


def bounded_references(chain: Sequence[str]) -> list[str]:
    """``chain`` (oldest first, the parent last) trimmed to its first and last few Message-IDs."""
    ids = list(dict.fromkeys(chain))  # once each, order kept
    if len(ids) <= REFERENCES_FIRST + REFERENCES_LAST:
        return ids
    return [*ids[:REFERENCES_FIRST], *ids[-REFERENCES_LAST:]]


@lru_cache(maxsize=16)
def _shared_part(data: bytes, content_type: str, disposition: str, filename: str, cid: str | None = None) -> mime.Part:
    """A bulletin's pictures (the agency's logo…) and indicator files (STIX, MISP, CSV) are the
    same in each of its 40,000 messages: base64-encoded once (issue 19: the files were 7 % of a
    signing process). Keyed by the bytes themselves (hashed once per object, then compared);
    parts are never changed once made, so sharing one between messages is safe."""
    return mime.binary_part(data, content_type, disposition=disposition, filename=filename, content_id=cid)


# Composer.compose's cache of recipient-independent bodies, for one batch of identical mail.
SharedBodies = dict[tuple[str, int, int, int, str | None], tuple[str, "mime.Part"]]


class Composer:
    def __init__(
        self,
        renderer: Renderer,
        signer: Signer | None,
        clock: Clock,
        domain: str,
        loop_token: str,
        *,
        id_secret: bytes | None = None,
    ) -> None:
        self.renderer = renderer
        self.signer = signer
        self.clock = clock
        self.domain = domain
        self.loop_token = loop_token
        # The daemon and the CLI pass the installation secret (app.build_app), shared by every
        # instance. Without one (template checks, benchmarks) a random per-process key keeps the
        # identifiers unguessable; they are then stable only within this process.
        self.id_secret = id_secret if id_secret is not None else secrets.token_bytes(32)

    def message_id(self, idempotency_key: str) -> str:
        return stable_message_id(idempotency_key, self.domain, self.id_secret)

    def compose(self, spec: MailSpec, bodies: SharedBodies | None = None, *, sign: bool = True) -> Composed:
        """``bodies``: the same mail to several people (staff notifications) is rendered and
        encoded once — the template, its parts and attachments — and only headers and the DKIM
        signature are made per recipient. Keyed by the identity of the spec's context and parts:
        the caller keeps them alive and unchanged for the dict's life (one ``send_to_staff``).
        ``sign=False``: without the DKIM-Signature, which the sender adds (``dispatch/sender.py``)."""
        key = (spec.template, id(spec.context), id(spec.attachments), id(spec.inline_images), spec.tlp)
        shared = bodies.get(key) if bodies is not None else None
        if shared is None:
            shared = self._body(spec)
            if bodies is not None:
                bodies[key] = shared
        subject, body = shared
        message_id = self.message_id(spec.idempotency_key)
        head = [
            mime.address_header("From", spec.from_address, spec.from_name),
            mime.address_list_header("To", spec.to_all) if spec.to_all else mime.address_header("To", spec.to),
        ]
        if spec.reply_to:
            head.append(mime.address_header("Reply-To", spec.reply_to))
        head += [
            mime.header("Subject", subject),
            mime.raw_header("Date", format_datetime(self.clock.now().astimezone(PARIS))),
            mime.raw_header("Message-ID", message_id),
        ]
        parents = clean_message_ids([spec.in_reply_to])
        refs = clean_message_ids(list(spec.references))
        if parents:
            head.append(mime.raw_header("In-Reply-To", parents[0]))
            # RFC 5322 §3.6.4: References = parent's References + parent's Message-ID.
            chain = bounded_references([*[r for r in refs if r != parents[0]], parents[0]])
            head.append(mime.raw_header("References", " ".join(chain)))
        head += [
            mime.raw_header("Auto-Submitted", spec.auto_submitted),
            mime.raw_header("X-Auto-Response-Suppress", "All"),
            mime.header(LOOP_HEADER, self.loop_token),
        ]
        head += [mime.header(name, value) for name, value in spec.extra_headers.items()]
        raw = mime.serialise(body, head)
        if sign and self.signer is not None:
            raw = self.signer.sign(raw) + raw
        return Composed(raw=raw, message_id=message_id, subject=subject)

    def _body(self, spec: MailSpec) -> tuple[str, mime.Part]:
        """The subject and the MIME body of ``spec``: what does not depend on the recipient."""
        rendered = self.renderer.render(spec.template, spec.context)
        subject = rendered.subject
        if spec.tlp and f"TLP:{spec.tlp}" not in subject:
            subject = f"[TLP:{spec.tlp}] {subject}"
        body: mime.Part = mime.text_part(rendered.text)
        if rendered.html is not None:
            html: mime.Part = mime.text_part(rendered.html, "html")
            if spec.inline_images:
                # The HTML part becomes multipart/related (HTML + images); the text part stays
                # the fallback alternative (RFC 2046 §5.1.4, RFC 2387, RFC 2392 cid: URLs).
                images = [_shared_part(i.data, f"image/{i.subtype}", "inline",
                                       i.filename or f"{i.cid}.{i.subtype}", i.cid) for i in spec.inline_images]
                html = mime.multipart("related", [html, *images])
            body = mime.multipart("alternative", [body, html])
        if spec.attachments:
            attached = [
                mime.message_part(a.raw, a.filename) if a.content_type == "message/rfc822"
                else _shared_part(a.raw, a.content_type, "attachment", a.filename)
                for a in spec.attachments
            ]
            body = mime.multipart("mixed", [body, *attached])
        return subject, body
