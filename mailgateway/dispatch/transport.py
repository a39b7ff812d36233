"""Transports: the relay (SMTP through aiosmtplib, pooled connections) or a local Maildir.

Relay errors are translated at this boundary (RFC 5321 §4.2.1): 5yz -> PermanentDeliveryError,
4yz, timeouts, refused or dropped connections -> TemporaryDeliveryError.

The relay's advertised message size limit (EHLO ``SIZE``, RFC 1870) is remembered on each new
connection (``RelayPool.advertised``; the sender records it in ``relay_limits`` for the processes that
compose mail). A message over it is refused here, as the relay would (552 5.3.4), without
pushing megabytes to hear the same answer.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import aiosmtplib

from mailgateway.dispatch.relaylimits import parse_size, relay_key
from mailgateway.errors import DeliveryError, PermanentDeliveryError, TemporaryDeliveryError
from mailgateway.settings import RelaySettings


class Transport(Protocol):
    async def send_many(self, mail_from: str, recipients: Sequence[str], raw: bytes,
                        ) -> list[str | DeliveryError]:
        """Deliver the same bytes to one recipient or several, in one mail transaction where the
        transport can; one answer text or DeliveryError per recipient, in order."""
        ...

    async def close(self) -> None: ...


class MaildirTransport:
    """The embedded default without a relay: one file per message in ``<maildir>/new``.

    Return-Path and Delivered-To lines are prepended, as a local delivery agent would (RFC 5321
    §4.4), so an operator sees the envelope; the message itself is the outbox's final bytes.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    async def send(self, mail_from: str, recipient: str, raw: bytes) -> str:
        return await asyncio.to_thread(self._write, mail_from, recipient, raw)

    async def send_many(self, mail_from: str, recipients: Sequence[str], raw: bytes,
                        ) -> list[str | DeliveryError]:
        """A file per recipient: each carries its own Delivered-To line."""
        return [await self.send(mail_from, recipient, raw) for recipient in recipients]

    def _write(self, mail_from: str, recipient: str, raw: bytes) -> str:
        for sub in ("tmp", "new", "cur"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        name = f"{time.time():.6f}.{uuid.uuid4().hex}.{socket.gethostname()}"
        tmp = self.root / "tmp" / name
        data = f"Return-Path: <{mail_from}>\r\nDelivered-To: {recipient}\r\n".encode() + raw
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, self.root / "new" / name)  # maildir(5): atomic move from tmp to new
        return f"250 stored in maildir as {name}"

    async def close(self) -> None:
        return None


IDLE_CHECK_SECONDS = 10.0


def _plain(address: str) -> bool:
    """An addr-spec that can go on a MAIL/RCPT line as it is: printable ASCII, no blank, no angle
    bracket (so no CR/LF either: no command injection, RFC 5321 §4.1.2). Our VERP return paths and
    directory addresses always are; anything else takes aiosmtplib's parsing path."""
    return 0 < len(address) <= 512 and address.isascii() and address.isprintable() and not any(
        c in address for c in " <>")


async def _envelope(client: aiosmtplib.SMTP, mail_from: str, recipients: Sequence[str], raw: bytes,
                    ) -> list[str | aiosmtplib.SMTPRecipientRefused]:
    """One mail transaction with the envelope given explicitly (RFC 5321 §3.3: MAIL, a RCPT per
    recipient, DATA): the answer to DATA for each recipient accepted, the refusal of each other.

    ``SMTP.sendmail`` parses each address with ``email.utils`` twice per message (0.45 ms of the
    sender's CPU per message at fan-out rates, benchmarks/README.md): our envelope addresses are
    already plain addr-specs (``_plain``). Same answers, same exceptions as ``sendmail`` (nobody
    accepted: ``SMTPRecipientsRefused``, no DATA), and the same RSET after a refusal (RFC 5321
    §4.1.1.5: the session is left without a transaction)."""
    options = [b"SIZE=%d" % len(raw)] if client.supports_extension("size") else []
    try:
        answer = await client.execute_command(b"MAIL", b"FROM:<" + mail_from.encode("ascii") + b">", *options)
        if answer.code != 250:
            raise aiosmtplib.SMTPSenderRefused(answer.code, answer.message, mail_from)
        refused: dict[int, aiosmtplib.SMTPRecipientRefused] = {}
        for i, recipient in enumerate(recipients):
            answer = await client.execute_command(b"RCPT", b"TO:<" + recipient.encode("ascii") + b">")
            if answer.code not in (250, 251):
                refused[i] = aiosmtplib.SMTPRecipientRefused(answer.code, answer.message, recipient)
        if len(refused) == len(recipients):  # RFC 5321 §3.3: the transaction goes on with those accepted
            raise aiosmtplib.SMTPRecipientsRefused(list(refused.values()))
        message = (await _data(client, raw)).message
        return [refused.get(i, message) for i in range(len(recipients))]
    except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
        try:
            await client.rset()
        except (ConnectionError, aiosmtplib.SMTPException):
            pass
        raise


def _stuffed(raw: bytes) -> bytes | None:
    """``raw`` as DATA carries it (RFC 5321 §4.5.2: a line starting with a period gets another;
    §4.1.1.4: the final CRLF.CRLF), when its line ends are all CRLF already; None otherwise.

    aiosmtplib gets there with two regular expressions over the whole message (line ends,
    then periods): ≈ 80 µs for a 6 KB bulletin, a tenth of the sender's CPU per message at
    fan-out rates (issue 19). Our outbox holds CRLF mail (dispatch/mime.py), so counting line
    ends and one replace give the same bytes; anything else is left to aiosmtplib."""
    lf = raw.count(b"\n")
    if not raw.endswith(b"\r\n") or lf != raw.count(b"\r") or lf != raw.count(b"\r\n"):
        return None
    return (b"." if raw.startswith(b".") else b"") + raw.replace(b"\r\n.", b"\r\n..") + b".\r\n"


async def _data(client: aiosmtplib.SMTP, raw: bytes) -> aiosmtplib.SMTPResponse:
    """``client.data(raw)``: the same commands, answers and exceptions, without aiosmtplib's
    normalisation when ``_stuffed`` gives the bytes. It drives the protocol as
    ``SMTPProtocol.execute_data_command`` does (aiosmtplib 3–5: the command lock, the pending-reply
    flag, ``write``, ``read_response``); a protocol without them gets ``client.data``."""
    protocol = client.protocol
    stuffed = _stuffed(raw)
    lock = getattr(protocol, "_command_lock", None)
    if stuffed is None or lock is None or not hasattr(protocol, "_response_pending"):
        return await client.data(raw)
    assert protocol is not None
    try:
        async with lock:
            protocol._response_pending = True
            protocol.write(b"DATA\r\n")
            start = await protocol.read_response(timeout=client.timeout)
            if start.code != 354:  # RFC 5321 §4.1.1.4: 354, then the content
                raise aiosmtplib.SMTPDataError(start.code, start.message)
            protocol._response_pending = True
            protocol.write(stuffed)
            answer = await protocol.read_response(timeout=client.timeout)
            if answer.code != 250:
                raise aiosmtplib.SMTPDataError(answer.code, answer.message)
            return answer
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        client.close()  # as ``SMTP.data``: a dropped or stuck connection is not reused
        raise


class RelayPool:
    """A pool of persistent SMTP connections to the relay, several messages per connection."""

    def __init__(self, relay: RelaySettings) -> None:
        self.relay = relay
        # (connection, messages sent on it, time.monotonic() of its last use)
        self._idle: list[tuple[aiosmtplib.SMTP, int, float]] = []
        self._tls_context: ssl.SSLContext | None = None
        self._password = (Path(relay.password_file).read_text().strip() if relay.password_file else None)
        self.key = relay_key(relay)
        # (seen, limit): the SIZE of the last EHLO answer; limit None = no limit advertised.
        self.advertised: tuple[bool, int | None] = (False, None)

    async def _connect(self) -> aiosmtplib.SMTP:
        assert self.relay.host is not None
        if self._tls_context is None and (self.relay.tls or self.relay.starttls):
            self._tls_context = ssl.create_default_context()  # verified certificates (RFC 8314 §4.1)
        client = aiosmtplib.SMTP(
            hostname=self.relay.host, port=self.relay.port, timeout=self.relay.timeout_seconds,
            local_hostname=self.relay.local_hostname, use_tls=self.relay.tls,
            # False, not None: aiosmtplib's None means "opportunistic", a silent downgrade.
            start_tls=self.relay.starttls, tls_context=self._tls_context,
        )
        try:
            await client.connect()
            if self.relay.username and self._password is not None:
                await client.login(self.relay.username, self._password)
            if client.is_ehlo_or_helo_needed:
                # sendmail would say EHLO anyway; its SIZE is wanted first. A HELO-only relay
                # (RFC 5321 §3.2) advertises nothing: no limit known.
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()
            self.advertised = (True, parse_size(client.esmtp_extensions.get("size")))
        except aiosmtplib.SMTPResponseException as exc:
            raise self._translate(exc.code, exc.message) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise TemporaryDeliveryError(f"relay unreachable: {type(exc).__name__}: {exc}") from exc
        return client

    @staticmethod
    def _translate(code: int, message: str, recipients: list[str] | None = None) -> DeliveryError:
        if 500 <= code < 600:
            return PermanentDeliveryError(message, code, recipients or [])
        return TemporaryDeliveryError(message, code, recipients or [])

    async def _checkout(self) -> tuple[aiosmtplib.SMTP, int]:
        """An idle connection, or a new one. A connection idle for a while is checked with NOOP
        first: relays close idle clients (RFC 5321 §4.5.3.2.7), and a send failing on a stale
        connection would count as a failed attempt for a message never offered."""
        while self._idle:
            client, used, last = self._idle.pop()
            if time.monotonic() - last < IDLE_CHECK_SECONDS:
                return client, used
            try:
                await client.noop()
                return client, used
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()
        return await self._connect(), 0

    async def probe(self) -> None:
        """Connect once (EHLO) to learn the relay's SIZE before any mail is composed for it; the
        connection stays in the pool. Raises a DeliveryError when the relay cannot be reached."""
        client, used = await self._checkout()
        self._idle.append((client, used, time.monotonic()))

    def _too_large(self, size: int, recipients: Sequence[str]) -> PermanentDeliveryError | None:
        seen, limit = self.advertised
        if not seen or limit is None or size <= limit:
            return None
        return PermanentDeliveryError(
            f"5.3.4 message size {size} exceeds the relay's advertised SIZE {limit} (RFC 1870), not sent",
            552, list(recipients))

    async def send(self, mail_from: str, recipient: str, raw: bytes) -> str:
        [answer] = await self.send_many(mail_from, [recipient], raw)
        if isinstance(answer, DeliveryError):
            raise answer
        return answer

    async def send_many(self, mail_from: str, recipients: Sequence[str], raw: bytes,
                        ) -> list[str | DeliveryError]:
        """One mail transaction for one recipient or several (RFC 5321 §3.3: one MAIL, a RCPT each,
        one DATA): the same message to every staff member of a region is written and read once
        (issue 19). A refused RCPT is that recipient's answer alone; MAIL's or DATA's, a size
        over the relay's, a relay out of reach or a dropped connection is everyone's."""
        try:
            return await self._transaction(mail_from, list(recipients), raw)
        except DeliveryError as exc:
            return [exc] * len(recipients)

    async def _transaction(self, mail_from: str, recipients: list[str], raw: bytes) -> list[str | DeliveryError]:
        if (refusal := self._too_large(len(raw), recipients)) is not None:
            raise refusal
        client, used = await self._checkout()
        if (refusal := self._too_large(len(raw), recipients)) is not None:  # a new connection said less
            self._idle.append((client, used, time.monotonic()))
            raise refusal
        keep = False
        try:
            answers: list[str | DeliveryError] = []
            if all(_plain(a) for a in (mail_from, *recipients)):
                for recipient, answer in zip(recipients, await _envelope(client, mail_from, recipients, raw),
                                             strict=True):
                    answers.append(answer if isinstance(answer, str)
                                   else self._translate(answer.code, answer.message, [recipient]))
            else:
                errors, message = await client.sendmail(mail_from, recipients, raw)
                for recipient in recipients:
                    error = errors.get(recipient)
                    answers.append(message if error is None else self._translate(error.code, error.message,
                                                                                 [recipient]))
            keep = used + 1 < self.relay.messages_per_connection
            return answers
        except aiosmtplib.SMTPRecipientsRefused as exc:
            by_recipient = {e.recipient: e for e in exc.recipients}
            return [self._translate(e.code, e.message, [r]) if (e := by_recipient.get(r)) is not None
                    else self._translate(550, str(exc), [r]) for r in recipients]
        except aiosmtplib.SMTPResponseException as exc:
            raise self._translate(exc.code, exc.message, recipients) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            client.close()  # dropped or stuck: no polite QUIT that would wait for the timeout
            raise TemporaryDeliveryError(f"{type(exc).__name__}: {exc}", None, recipients) from exc
        finally:
            if keep and client.is_connected:
                self._idle.append((client, used + 1, time.monotonic()))
            else:
                await self._quietly_close(client)

    @staticmethod
    async def _quietly_close(client: aiosmtplib.SMTP) -> None:
        try:
            if client.is_connected:
                await client.quit()
        except Exception:
            client.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for client, _used, _last in idle:
            await self._quietly_close(client)
