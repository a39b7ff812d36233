"""SMTP intake (aiosmtpd): accept only — store the raw message durably, then answer 250.

The handler never parses the message: routing needs only the envelope. Replies follow RFC 5321
§4.2 and RFC 3463 enhanced codes:

- unknown recipient at RCPT: ``550 5.1.1`` (RFC 3463 §3.2: bad destination mailbox);
- too many recipients: ``452 4.5.3`` (RFC 5321 §4.5.3.1.8);
- too large: ``552 5.3.4`` (aiosmtpd's ``data_size_limit``, RFC 1870);
- a client sending too fast: ``451 4.7.1`` (try later);
- storage failed: ``451 4.3.0`` — never a 250 for a message that is not stored.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailgateway.intake.writer import AcceptWriter
from mailgateway.settings import Settings, SmtpIntakeSettings

log = logging.getLogger("mailgateway.intake.smtp")


class IntakeHandler:
    def __init__(self, settings: Settings, writer: AcceptWriter, on_accepted: Callable[[int], None]) -> None:
        self.settings = settings
        self.smtp: SmtpIntakeSettings = settings.intake.smtp or SmtpIntakeSettings()
        self.writer = writer
        self.on_accepted = on_accepted
        self.regions = {r.address.lower(): r.code for r in settings.regions}
        domain = re.escape(settings.bounce_domain.lower())
        local = re.escape(settings.outbound.bounce_local_part.lower())
        # VERP return paths of our outbound mail (bounces+<token>@domain) also land here.
        self.bounce_re = re.compile(rf"^{local}(\+[a-z0-9_-]+)?@{domain}$")
        self._recent: dict[str, deque[float]] = defaultdict(deque)
        self.accepted = 0

    def _region_for(self, address: str) -> str | None:
        return self.regions.get(address.lower())

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        addr = address.strip().lower()
        if self._region_for(addr) is None and not self.bounce_re.match(addr):
            return f"550 5.1.1 <{address}>: Recipient address rejected: unknown mailbox"
        if len(envelope.rcpt_tos) >= self.smtp.max_recipients:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    def _rate_limited(self, peer: Any) -> bool:
        limit = self.smtp.rate_limit_per_minute
        if limit <= 0:
            return False
        ip = peer[0] if isinstance(peer, tuple) and peer else str(peer)
        now = time.monotonic()
        recent = self._recent[ip]
        while recent and now - recent[0] > 60:
            recent.popleft()
        if len(recent) >= limit:
            return True
        recent.append(now)
        return False

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self._rate_limited(session.peer):
            return "451 4.7.1 Too many messages from your address, try again later"
        content = envelope.original_content or envelope.content or b""
        raw = content.encode("utf-8", "surrogateescape") if isinstance(content, str) else bytes(content)
        region = next((r for r in (self._region_for(a) for a in envelope.rcpt_tos) if r), None)
        try:
            future = self.writer.submit(raw, source="smtp", mail_from=envelope.mail_from,
                                        rcpt_tos=list(envelope.rcpt_tos), region=region)
            accepted = await asyncio.wrap_future(future)
        except Exception:
            log.exception("SMTP accept failed")
            return "451 4.3.0 Temporary local problem, please try again later"
        self.accepted += 1
        if not accepted.duplicate:
            self.on_accepted(accepted.inbound_id)
        return f"250 2.0.0 Ok: queued as {accepted.inbound_id}"


def smtp_factory(settings: Settings, handler: IntakeHandler) -> Callable[[], SMTP]:
    smtp = settings.intake.smtp or SmtpIntakeSettings()

    def factory() -> SMTP:
        return SMTP(
            handler,
            data_size_limit=smtp.max_message_bytes,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=smtp.server_hostname,
            ident="mailgateway ESMTP",
        )

    return factory


async def start_smtp(settings: Settings, handler: IntakeHandler) -> asyncio.AbstractServer:
    smtp = settings.intake.smtp or SmtpIntakeSettings()
    loop = asyncio.get_running_loop()
    return await loop.create_server(smtp_factory(settings, handler), host=smtp.host, port=smtp.port)
