"""Mail of the case process for tests: declarations, staff commands (DKIM-signed or not), replies.

``staff_mail`` signs with ``tests.support.dkim.rsa_key()`` (domain ``ars.test``, selector ``rsa``)
through mailgateway's own ``DkimSigner``; put ``STAFF_KEYS`` in ``[authentication.static_keys]``.
"""

from __future__ import annotations

import email
import itertools
from collections.abc import Sequence
from datetime import datetime
from email import policy
from email.header import Header
from email.message import EmailMessage
from email.utils import format_datetime

from tests.support.dkim import GeneratedKey, rsa_key, signer, zone

_numbers = itertools.count(1)


def staff_key() -> GeneratedKey:
    return rsa_key("rsa", "ars.test")


def forger_key() -> GeneratedKey:
    """A key for ars.test that is *not* published: its signatures must fail."""
    return rsa_key("rsa", "ars.test", bits=1024)


def staff_keys() -> dict[str, str]:
    return zone(staff_key())


def acss_key() -> GeneratedKey:
    """The DKIM key of the national cell's domain ``esante.test`` (published by ``casegateway``)."""
    return rsa_key("rsa", "esante.test")


def establishment_key() -> GeneratedKey:
    """The DKIM key of the establishments' domain ``chu.test`` (published by ``casegateway``)."""
    return rsa_key("rsa", "chu.test")


# The Date of test mail: the FixedClock of tests.support.casegateway. A real daemon runs on the
# wall clock and refuses commands older than [authentication] max_command_age_days: pass ``date``.
DATE = "Fri, 27 Nov 2026 10:00:00 +0100"


def message(*, sender: str, to: str, subject: str, body: str, in_reply_to: str | None = None,
            references: Sequence[str] = (), message_id: str | None = None,
            date: datetime | None = None) -> bytes:
    n = next(_numbers)
    domain = sender.rpartition("@")[2]
    lines = [
        f"From: {sender}",
        f"To: {to}",
        f"Subject: {Header(subject, 'utf-8').encode()}",
        f"Message-ID: {message_id or f'<m{n}.test@{domain}>'}",
        f"Date: {format_datetime(date) if date is not None else DATE}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
    ]
    if in_reply_to:
        lines.append(f"In-Reply-To: {in_reply_to}")
        lines.append(f"References: {' '.join([*references, in_reply_to])}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body.replace("\n", "\r\n")).encode("utf-8")


def sign(raw: bytes, key: GeneratedKey | None = None) -> bytes:
    key = key or staff_key()
    return signer(key).sign(raw) + raw


def staff_mail(body: str, *, sender: str = "agent@ars.test", to: str = "ssi-ara@ars.test",
               subject: str = "Re: dossier", in_reply_to: str | None = None, references: Sequence[str] = (),
               signed: bool = True, key: GeneratedKey | None = None, date: datetime | None = None,
               message_id: str | None = None) -> bytes:
    raw = message(sender=sender, to=to, subject=subject, body=body, in_reply_to=in_reply_to, references=references,
                  date=date, message_id=message_id)
    return sign(raw, key) if signed else raw


def declaration(n: int = 1, *, finess: str = "690781810", sender: str = "dsi@chu.test",
                to: str = "ssi-ara@ars.test") -> bytes:
    body = (f"Bonjour,\n\nNuméro FINESS : {finess}\nNom de la structure : Centre hospitalier\n"
            "Type d'incident : rançongiciel\nGravité : grave\n"
            f"Serveurs chiffrés depuis ce matin, incident numéro {n}.\n")
    return message(sender=sender, to=to, subject=f"Déclaration d'incident {n}", body=body,
                   message_id=f"<decl-{n}@chu.test>")


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def text_of(raw: bytes) -> str:
    msg = parse(raw)
    body = msg.get_body(("plain",))
    assert body is not None
    return str(body.get_content())
