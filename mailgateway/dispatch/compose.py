"""Build final outbound bytes: rendered templates + headers through the header API + DKIM.

Every header value goes through ``email.headerregistry`` (policy.default), which refuses CR/LF,
so text taken from inbound mail (subjects, names, Message-IDs) can never inject a header or a
recipient. Our mail is marked as automatic (RFC 3834 §5: ``Auto-Submitted``), asks Exchange not to
answer it (``X-Auto-Response-Suppress``) and carries our loop header, so other robots and other
gateways do not answer it and we recognise it if it comes back.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.utils import format_datetime
from typing import Any, Protocol

from mailgateway.clock import PARIS, Clock
from mailgateway.dispatch.render import Renderer
from mailgateway.errors import PolicyRefusal

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


def stable_message_id(idempotency_key: str, domain: str) -> str:
    """The same logical mail always has the same Message-ID (at-least-once delivery, DESIGN §8)."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
    return f"<mg.{digest}@{domain}>"


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


def _address(addr: str, name: str = "") -> Address:
    try:
        return Address(display_name=name, addr_spec=addr)
    except (ValueError, IndexError) as exc:
        raise PolicyRefusal(f"adresse invalide : {addr!r}") from exc


def _attach_original(msg: EmailMessage, att: Attachment, verbatim: dict[bytes, bytes]) -> None:
    if att.content_type == "message/rfc822":
        # Keep the original bytes: attach them verbatim as message/rfc822 when they are safe
        # 8bit content (RFC 2046 §5.2.1 forbids base64 on message/rfc822), else as a file. The
        # email package would re-serialise (and can fail on real mail), so a placeholder is
        # swapped for the original bytes after generation.
        lines = att.raw.splitlines()
        if b"\0" not in att.raw and all(len(line) <= 998 for line in lines):
            token = f"MAILGATEWAY-ORIGINAL-{len(verbatim)}-{hashlib.sha256(att.raw).hexdigest()}"
            part = MIMEPart(policy=policy.SMTP)
            part["Content-Type"] = "message/rfc822"
            part["Content-Disposition"] = f'attachment; filename="{att.filename}"'
            part["Content-Transfer-Encoding"] = "8bit" if any(b > 127 for b in att.raw) else "7bit"
            part.set_payload(token)
            msg.attach(part)  # type: ignore[arg-type]  # typeshed: attach() takes the part's base type
            verbatim[token.encode()] = b"\r\n".join(lines)
            return
        msg.add_attachment(att.raw, maintype="application", subtype="octet-stream", filename=att.filename)
        return
    maintype, _, subtype = att.content_type.partition("/")
    msg.add_attachment(att.raw, maintype=maintype, subtype=subtype or "octet-stream", filename=att.filename)


class Composer:
    def __init__(
        self,
        renderer: Renderer,
        signer: Signer | None,
        clock: Clock,
        domain: str,
        loop_token: str,
    ) -> None:
        self.renderer = renderer
        self.signer = signer
        self.clock = clock
        self.domain = domain
        self.loop_token = loop_token

    def compose(self, spec: MailSpec) -> Composed:
        rendered = self.renderer.render(spec.template, spec.context)
        subject = rendered.subject
        if spec.tlp and f"TLP:{spec.tlp}" not in subject:
            subject = f"[TLP:{spec.tlp}] {subject}"
        msg = EmailMessage(policy=policy.default)
        message_id = stable_message_id(spec.idempotency_key, self.domain)
        msg["From"] = _address(spec.from_address, spec.from_name)
        msg["To"] = _address(spec.to)
        if spec.reply_to:
            msg["Reply-To"] = _address(spec.reply_to)
        msg["Subject"] = subject
        msg["Date"] = format_datetime(self.clock.now().astimezone(PARIS))
        msg["Message-ID"] = message_id
        parents = clean_message_ids([spec.in_reply_to])
        refs = clean_message_ids(list(spec.references))
        if parents:
            msg["In-Reply-To"] = parents[0]
            # RFC 5322 §3.6.4: References = parent's References + parent's Message-ID.
            chain = [*[r for r in refs if r != parents[0]][-20:], parents[0]]
            msg["References"] = " ".join(chain)
        msg["Auto-Submitted"] = spec.auto_submitted
        msg["X-Auto-Response-Suppress"] = "All"
        msg[LOOP_HEADER] = self.loop_token
        for name, value in spec.extra_headers.items():
            msg[name] = value
        msg.set_content(rendered.text, cte="quoted-printable")
        if rendered.html is not None:
            msg.add_alternative(rendered.html, subtype="html", cte="quoted-printable")
            html_part = msg.get_body(("html",))
            for image in spec.inline_images:
                assert html_part is not None  # just added above
                # The HTML part becomes multipart/related (HTML + images); the text part stays
                # the fallback alternative (RFC 2046 §5.1.4, RFC 2387, RFC 2392 cid: URLs).
                html_part.add_related(image.data, maintype="image", subtype=image.subtype, cid=f"<{image.cid}>",
                                      disposition="inline", filename=image.filename or f"{image.cid}.{image.subtype}")
        verbatim: dict[bytes, bytes] = {}
        if spec.attachments:
            msg.make_mixed()
            for att in spec.attachments:
                _attach_original(msg, att, verbatim)
        raw = msg.as_bytes(policy=policy.SMTP)
        for token, original in verbatim.items():
            raw = raw.replace(token, original, 1)
        if self.signer is not None:
            raw = self.signer.sign(raw) + raw
        return Composed(raw=raw, message_id=message_id, subject=subject)
