"""SMTP intake (aiosmtpd): accept only — store the raw message durably, then answer 250.

The handler never parses the message: routing needs only the envelope. Replies follow RFC 5321
§4.2 and RFC 3463 enhanced codes:

- an envelope address that is not UTF-8 or holds control characters: ``553 5.1.7`` at MAIL,
  ``501 5.1.3`` at RCPT (RFC 3463 §3.2: bad sender / destination address syntax), so it never
  reaches the group commit;
- unknown recipient at RCPT: ``550 5.1.1`` (RFC 3463 §3.2: bad destination mailbox);
- too many recipients: ``452 4.5.3`` (RFC 5321 §4.5.3.1.8);
- too large: ``552 5.3.4`` (RFC 1870 §6.1, RFC 3463 §3.4) at MAIL when the declared ``SIZE=`` is
  over the limit, else as soon as the running DATA size is: nothing past the limit is kept;
- a client sending too fast: ``451 4.7.1`` (try later), except a trusted relay (below);
- too many connections: ``421 4.7.0`` instead of the greeting, then close (RFC 5321 §3.1);
- too many message bytes in memory across all connections: ``451 4.3.1`` at DATA (RFC 3463 §3.3:
  insufficient system storage);
- storage failed: ``451 4.3.0`` — never a 250 for a message that is not stored.

The site's own MX or Postfix hands us everything from one address (often 127.0.0.1): the per-IP
rate limit would turn the burst of replies after a national alert into hours of 451s and MTA
back-off. The ``[intake.smtp] trusted_relays`` (loopback by default) are therefore exempt from it;
what bounds them is what bounds everyone at once and grows with concurrency — the connection cap,
the shared DATA budget and the accept writer's group commit, which answers as fast as the disk
takes a batch. Every other peer keeps the per-IP limit.

A connection silent for ``idle_timeout_seconds`` is closed (also while DATA is flowing, the timer
restarts at each line). The ``queued as`` id is random, logged next to the inbound id: it tells
the client nothing about our database (docs/guarantees.md: sequential ids helped forge bounces).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import secrets
import time
from collections import defaultdict, deque
from collections.abc import Callable
from email._header_value_parser import get_addr_spec, get_angle_addr
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax

from mailgateway.intake.accept import Accepted
from mailgateway.intake.writer import AcceptWriter, EnvelopeError, address_problem
from mailgateway.settings import Settings, SmtpIntakeSettings
from mailgateway.wire import header_block_refusal

# RFC 5322 §3.2.3 dot-atom (atext runs joined by single dots), twice, in angle brackets, followed
# by nothing or by spaces and a parameter (RFC 5321 §4.1.2 Path, then Mail-parameters). Linear:
# a dot or the @ separates each run. Anything else (quotes, comments, literals, tabs) takes the
# stdlib parser.
_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_PLAIN_PATH = re.compile(rf"<({_DOT_ATOM}@{_DOT_ATOM})>(?=\Z| +[^ \t\r\n(])")

log = logging.getLogger("mailgateway.intake.smtp")


def too_big(limit: int) -> str:
    """The 552 5.3.4 answer naming the limit, so the sender (or the person its MTA bounces to)
    knows what to do: RFC 3463 §3.4 gives the code, the text is for people. ASCII only: a reply
    line is ASCII without SMTPUTF8 (RFC 5321 §4.2, RFC 6531 §3.7.4), hence French without accents."""
    mb = limit / 1_000_000
    return (f"552 5.3.4 Message too big: at most {limit} bytes ({mb:.0f} MB) with attachments; "
            f"send large files another way / message trop volumineux : {mb:.0f} Mo au plus")


NO_MEMORY = "451 4.3.1 Insufficient system storage, try again later"
LINE_TOO_LONG = "500 5.5.2 Line too long (RFC 5321 section 4.5.3.1.6) / ligne trop longue (plus de 1000 octets)"


def peer_ip(peer: Any) -> str:
    """The client IP of an aiosmtpd ``session.peer`` ((host, port[, flow, scope]) for TCP)."""
    host = peer[0] if isinstance(peer, tuple) and peer else peer
    return str(host)[:64]


def declared_size(arg: str | None) -> int | None:
    """The ``SIZE=`` parameter of a MAIL command argument (RFC 1870 §3), or None."""
    if not arg:
        return None
    _, _, params = arg.rpartition(">")
    for token in params.split():
        name, eq, value = token.partition("=")
        if eq and name.upper() == "SIZE" and value.isascii() and value.isdigit() and len(value) <= 20:
            return int(value)
    return None


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(relays: tuple[str, ...]) -> tuple[Network, ...]:
    """The ``trusted_relays`` as networks; a bad entry (refused by check-config) trusts nobody."""
    networks: list[Network] = []
    for relay in relays:
        try:
            networks.append(ipaddress.ip_network(relay.strip(), strict=False))
        except (ValueError, TypeError):
            continue
    return tuple(networks)


def is_trusted(ip: str, networks: tuple[Network, ...]) -> bool:
    """Whether the client address ``ip`` lies in one of ``networks`` (IPv4-mapped IPv6 as IPv4)."""
    if not networks:
        return False
    try:
        address = ipaddress.ip_address(ip.strip().strip("[]").partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class DataBudget:
    """Message bytes held in memory by the DATA transfers of one listener (one event loop)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    def has_room(self, wanted: int = 0) -> bool:
        return self.in_use + max(wanted, 1) <= self.limit

    def take(self, n: int) -> bool:
        if self.in_use + n > self.limit:
            return False
        self.in_use += n
        return True

    def give(self, n: int) -> None:
        self.in_use -= n


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
        self.trusted = trusted_networks(self.smtp.trusted_relays)
        self._trusted_seen: dict[str, bool] = {}
        self.accepted = 0
        # Messages handed to the accept writer and not yet answered (the daemon's processor gives
        # them the write lock first: daemon.Daemon.intake_busy).
        self.storing = 0
        self.connections = 0
        self.refused_connections = 0
        self.connections_by_ip: dict[str, int] = {}  # untrusted peers only
        self.budget = DataBudget(self.smtp.max_concurrent_data_bytes or 4 * self.smtp.max_message_bytes)

    def _region_for(self, address: str) -> str | None:
        return self.regions.get(address.lower())

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        if problem := address_problem(address):
            log.debug("MAIL FROM refused from %s: %s", peer_ip(session.peer), problem)
            return f"553 5.1.7 Sender address rejected: {problem}"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if problem := address_problem(address):
            log.debug("RCPT TO refused from %s: %s", peer_ip(session.peer), problem)
            return f"501 5.1.3 Recipient address rejected: {problem}"
        addr = address.strip().lower()
        if self._region_for(addr) is None and not self.bounce_re.match(addr):
            return f"550 5.1.1 <{address}>: Recipient address rejected: unknown mailbox"
        if len(envelope.rcpt_tos) >= self.smtp.max_recipients:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    def _rate_limited(self, peer: Any, cost: int = 1) -> bool:
        """Over the per-minute limit of an untrusted peer. ``cost``: the messages this one
        becomes (one per receiving region, each processed and answered on its own): an outside
        tester's one DATA to eighteen regional mailboxes made eighteen cases and acknowledgements
        for one count."""
        limit = self.smtp.rate_limit_per_minute
        if limit <= 0:
            return False
        cost = max(1, min(cost, limit))
        ip = peer_ip(peer)
        if self._is_trusted(ip):
            return False
        now = time.monotonic()
        if len(self._recent) > 10_000:  # many distinct clients (IPv6): forget the quiet ones
            for quiet in [k for k, q in self._recent.items() if not q or now - q[-1] > 60]:
                del self._recent[quiet]
        recent = self._recent[ip]
        while recent and now - recent[0] > 60:
            recent.popleft()
        if len(recent) + cost > limit:
            return True
        recent.extend([now] * cost)
        return False

    def _is_trusted(self, ip: str) -> bool:
        known = self._trusted_seen.get(ip)
        if known is None:
            if len(self._trusted_seen) > 10_000:  # many distinct clients: start the memo again
                self._trusted_seen.clear()
            known = self._trusted_seen[ip] = is_trusted(ip, self.trusted)
        return known

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # The region is where the mail arrived: each regional envelope recipient is one receiving
        # region, stored and processed on its own (docs/guarantees.md); To/Cc play no part.
        regions = [r for r in (self._region_for(a) for a in envelope.rcpt_tos) if r]
        if self._rate_limited(session.peer, len(regions)):
            return "451 4.7.1 Too many messages from your address, try again later"
        content = envelope.original_content or envelope.content or b""
        # GatewaySMTP hands over bytes: kept as they are (bytes() of bytes is the same object).
        raw = content.encode("utf-8", "surrogateescape") if isinstance(content, str) else bytes(content)
        # One view of a message (docs/guarantees.md): a header block that DKIM and analysis would read
        # differently is refused before it is stored (RFC 3463 5.6.0: bad message content).
        if refusal := header_block_refusal(raw):
            return f"550 5.6.0 {refusal}"
        ip = peer_ip(session.peer)
        self.storing += 1
        try:
            # The writer answers a whole batch's waiters with one wake-up of this loop.
            waiter: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
            future = self.writer.submit(raw, source="smtp", mail_from=envelope.mail_from,
                                        rcpt_tos=list(envelope.rcpt_tos), regions=regions, peer=ip, waiter=waiter)
            accepted = await (asyncio.wrap_future(future) if future.done() else waiter)
        except EnvelopeError as exc:  # checked at MAIL/RCPT already; kept for other callers' paths
            return f"554 5.5.2 Invalid envelope: {exc}"
        except Exception:
            log.exception("SMTP accept failed")
            return "451 4.3.0 Temporary local problem, please try again later"
        finally:
            self.storing -= 1
        self.accepted += 1
        for inbound_id in accepted.fresh:  # a true duplicate for its region is answered 250, not processed
            self.on_accepted(inbound_id)
        # Opaque to the client; the log line ties it to the inbound id for operators.
        queue_id = secrets.token_hex(6).upper()
        if log.isEnabledFor(logging.INFO):
            log.info("SMTP message accepted, queued as %s", queue_id,
                     extra={"inbound_id": accepted.inbound_id, "queue_id": queue_id, "peer": ip,
                            "duplicate": accepted.everywhere_duplicate, "regions": len(accepted.others) + 1})
        return f"250 2.0.0 Ok: queued as {queue_id}"

    async def handle_exception(self, error: Exception) -> str:
        """An unexpected error in a command: no traceback text to the client (aiosmtpd's default
        sends the exception text), one rate-limited log line for us."""
        log.warning("SMTP session error: %s", type(error).__name__, exc_info=error)
        return "451 4.3.0 Temporary local problem, please try again later"


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP with the intake limits: connection cap, early 552, shared DATA memory budget.

    ``smtp_DATA`` replaces aiosmtpd's own: aiosmtpd answers an oversized message only after the
    client has sent all of it and counts nothing across connections.
    """

    def __init__(self, handler: IntakeHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.intake = handler
        self._counted = False
        self._refused = False
        self._ip: str | None = None  # counted in connections_by_ip
        self._declared_size = 0

    # -- connection cap ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None and not self._counted:  # not the STARTTLS re-entry
            intake = self.intake
            ip = peer_ip(transport.get_extra_info("peername"))
            per_ip = intake.smtp.max_connections_per_ip
            counted_ip = per_ip > 0 and not intake._is_trusted(ip)
            if intake.connections >= intake.smtp.max_connections:
                self._refuse(transport, "Too many connections", f"{intake.connections} connections open")
                return
            if counted_ip and intake.connections_by_ip.get(ip, 0) >= per_ip:
                self._refuse(transport, "Too many connections from your address",
                             f"{per_ip} connections open from {ip}")
                return
            intake.connections += 1
            if counted_ip:
                intake.connections_by_ip[ip] = intake.connections_by_ip.get(ip, 0) + 1
                self._ip = ip
            self._counted = True
        super().connection_made(transport)

    def _refuse(self, transport: asyncio.BaseTransport, text: str, why: str) -> None:
        # Refused before any state is built: the descriptor is released at once.
        self._refused = True
        self.intake.refused_connections += 1
        log.debug("connection refused: %s", why)
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(f"421 4.7.0 {self.hostname} {text}, try again later\r\n".encode())
        transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._counted:
            self._counted = False
            self.intake.connections -= 1
            if self._ip is not None:
                left = self.intake.connections_by_ip.get(self._ip, 1) - 1
                if left > 0:
                    self.intake.connections_by_ip[self._ip] = left
                else:
                    self.intake.connections_by_ip.pop(self._ip, None)
                self._ip = None
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        return super().eof_received()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's own (aiosmtpd/smtp.py ``SMTP._getaddr``, 1.4), minus the ``typing.Protocol``
        class it defines — for its type checker — at every call: ≈60 µs, for MAIL FROM and each
        RCPT TO, a tenth of accept's CPU per message (issue 19). Same parser, same answers
        (tests/intake/test_smtp_getaddr.py compares them), except that a path with an encoded
        word is refused rather than decoded."""
        if not arg:
            return "", ""
        if "=?" in arg.partition(">")[0]:
            # The stdlib header parser decodes RFC 2047 encoded words; an SMTP path (RFC 5321
            # §4.1.2) has none: « =?utf-8?q?ssi-ara?=@… » is a local part of its own, not ssi-ara
            # (an outside tester was routed to the region by it). Refused (553), not decoded.
            return None, None
        plain = _PLAIN_PATH.match(arg)
        if plain is not None:
            # ``<local@domain>`` of dot-atoms, then nothing or blanks and parameters: what the
            # stdlib parser answers, without its token tree (≈ 40 µs a path, issue 19).
            addr, rest = plain.group(1), arg[plain.end():].lstrip(" ")
        else:
            try:
                parsed = get_angle_addr(arg) if arg.lstrip().startswith("<") else get_addr_spec(arg)
                addr, rest = parsed[0].addr_spec, parsed[1]
            except Exception:
                # HeaderParseError, and the crashes of the stdlib's parser on some paths (« < » or
                # « " » alone: IndexError, « a@[ »: AttributeError, « <a@[\t »: UnboundLocalError),
                # which aiosmtpd answered 500 with the exception's text: a path it cannot read is a 553.
                return None, None
        localpart = addr.rpartition("@")[0]
        if self.local_part_limit and len(localpart) > self.local_part_limit:
            return None, None
        return addr, rest

    # -- RFC 1870 SIZE -----------------------------------------------------------------------
    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        size = declared_size(arg)
        if size is not None and self.data_size_limit and size > self.data_size_limit:
            # RFC 1870 §6.1: refuse at MAIL, with the enhanced code (aiosmtpd's reply has none).
            await self.push(too_big(self.data_size_limit))
            return
        self._declared_size = size or 0
        await super().smtp_MAIL(arg)

    # -- DATA --------------------------------------------------------------------------------
    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        if not self.intake.budget.has_room(self._declared_size):
            log.debug("DATA refused: %d message bytes in memory", self.intake.budget.in_use)
            await self.push(NO_MEMORY)
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        held = [0]  # bytes taken from the shared budget, given back whatever happens
        try:
            content = await self._receive(held)
            if content is None:
                self._set_post_data_state()  # type: ignore[no-untyped-call]
                return
            self.envelope.content = self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
        finally:
            self.intake.budget.give(held[0])
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def _receive(self, held: list[int]) -> bytes | None:
        """The message up to the lone dot (RFC 5321 §4.5.2), or None once refused (reply sent).

        Past the size limit or the shared budget nothing more is kept: the refusal is pushed at
        once and the rest is read and dropped. A client that goes on sending as much again after
        the refusal is disconnected.
        """
        limit = self.data_size_limit or 0
        lines: list[bytes] = []
        size = 0
        refusal: str | None = None
        partial = False  # the previous chunk did not end a line (longer than the stream limit)
        # The previous line ended with CRLF (or this is the first line). RFC 5321 §4.5.2 and
        # §2.3.8: only CRLF "." CRLF ends the data, and only a line after a CRLF is dot-stuffed.
        # Ending at LF "." CRLF (as lines are split here) let a client smuggle a second message
        # past a relay that forwards bare LFs (SMTP smuggling, found by an outside tester; aiosmtpd
        # 1.4.5 fixed the same in its own reader).
        after_crlf = True
        ended_cr = False  # the previous chunk ended with CR (a long line cut between CR and LF)
        # The idle timer is restarted at most every ``step`` seconds, not at every line (a timer
        # cancelled and scheduled again per line was a tenth of the event loop's time per message):
        # a connection silent for the whole timeout is still closed, at most ``step`` s early.
        clock = self.loop.time
        step = min(1.0, self._timeout_duration / 10)
        restarted = clock()
        while self.transport is not None:
            try:
                # Lines end at LF, as aiosmtpd reads them: mail sent with bare LF line endings
                # (RFC 5321 §2.3.8 forbids them, many scripts send them) is split into lines here
                # and normalised once at accept (mailgateway.wire), not refused as one long line.
                chunk = await self._reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as exc:
                chunk = await self._reader.read(exc.consumed)
            line_start, partial = not partial, not chunk.endswith(b"\n")
            stuffed = line_start and after_crlf and chunk.startswith(b".")
            # A line longer than the stream's limit comes in pieces, its CR and LF may be apart.
            after_crlf = chunk.endswith(b"\r\n") or (chunk == b"\n" and ended_cr)
            ended_cr = chunk.endswith(b"\r")
            if stuffed and chunk == b".\r\n":
                break
            if (now := clock()) - restarted >= step:  # the idle timeout counts from the last line received
                self._reset_timeout()
                restarted = now
            size += len(chunk)
            if refusal is None:
                refusal = self._refusal(size, chunk, whole_line=line_start and not partial)
                if refusal is None:
                    held[0] += len(chunk)
                    lines.append(chunk[1:] if stuffed else chunk)  # the client's doubled dot
                    continue
                self.intake.budget.give(held[0])
                held[0] = 0
                lines.clear()
                if refusal != LINE_TOO_LONG:
                    log.debug("DATA refused: %s", refusal)
                    await self.push(refusal)
            elif limit and size > 2 * limit and self.transport is not None:
                self.transport.close()
                return None
        if self.transport is None:
            return None
        if refusal is not None:
            if refusal == LINE_TOO_LONG:  # answered at the end, as aiosmtpd does
                await self.push(refusal)
            return None
        # One copy of the message, the join; the line endings are left as received (accept
        # normalises them once).
        content = b"".join(lines)
        lines.clear()
        return content

    def _refusal(self, size: int, chunk: bytes, *, whole_line: bool) -> str | None:
        """Why this chunk cannot be kept, or None once its bytes are taken from the budget."""
        if self.data_size_limit and size > self.data_size_limit:
            return too_big(self.data_size_limit)
        if not whole_line:
            return LINE_TOO_LONG
        if not self.intake.budget.take(len(chunk)):
            return NO_MEMORY
        return None


def smtp_factory(settings: Settings, handler: IntakeHandler) -> Callable[[], SMTP]:
    smtp = settings.intake.smtp or SmtpIntakeSettings()

    def factory() -> SMTP:
        return GatewaySMTP(
            handler,
            data_size_limit=smtp.max_message_bytes,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=smtp.server_hostname,
            ident="mailgateway ESMTP",
            timeout=smtp.idle_timeout_seconds,
        )

    return factory


async def start_smtp(settings: Settings, handler: IntakeHandler) -> asyncio.AbstractServer:
    smtp = settings.intake.smtp or SmtpIntakeSettings()
    loop = asyncio.get_running_loop()
    return await loop.create_server(smtp_factory(settings, handler), host=smtp.host, port=smtp.port)
