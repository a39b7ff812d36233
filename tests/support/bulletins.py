"""Helpers for the bulletin tests: a directory filled in bulk, settings, DSNs, replies."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from mailgateway.settings import Settings, parse_settings
from mailgateway.store.models import Contact, Establishment


def bulletin_settings(url: str, *, relay_port: int | None = None, **extra: Any) -> Settings:
    data: dict[str, Any] = {
        "database": {"url": url},
        "regions": [{"code": "ARA", "name": "Auvergne-Rhône-Alpes", "address": "ssi-ara@ars.test"}],
        "staff": [{"address": "agent@ars.test", "region": "ARA"}],
        "authentication": {"nameservers": ["127.0.0.1"], "dns_timeout_seconds": 0.1},
        "relay": {"retry_base_seconds": 1.0, "retry_max_seconds": 2.0},
        **extra,
    }
    if relay_port is not None:
        data["relay"] = {**data["relay"], "host": "127.0.0.1", "port": relay_port}
    return parse_settings(data)


def finess(n: int, departement: str = "69") -> str:
    return f"{departement}{n:07d}"


def fill_directory(session: Session, now: datetime, count: int, *, departement: str = "69",
                   category: str = "LBM", start: int = 0, roles: Iterable[str] = ("ssi",),
                   region: str = "ARA") -> list[str]:
    """``count`` establishments, each with one contact per role (``<role>@e<n>.test``)."""
    numbers = list(range(start, start + count))
    session.execute(insert(Establishment), [
        {"finess": finess(n, departement), "name": f"Laboratoire numéro {n}", "category": category,
         "departement": departement, "region": region, "source": "finess", "updated_at": now}
        for n in numbers])
    for role in roles:
        session.execute(insert(Contact), [
            {"finess": finess(n, departement), "address": f"{role}@e{n}.test", "role": role, "status": "active",
             "bounce_score": 0.0, "created_at": now, "updated_at": now}
            for n in numbers])
    return [finess(n, departement) for n in numbers]


def dsn(to: str, original_recipient: str, original_message_id: str, status: str = "5.1.1") -> bytes:
    """An RFC 3464 delivery status notification as a receiving MTA would send it."""
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.e1.test>\r\n"
        f"To: {to}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn-1@mx.e1.test>\r\nDate: Fri, 27 Nov 2026 10:00:00 +0100\r\nAuto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.e1.test\r\n\r\n"
        f"Final-Recipient: rfc822; {original_recipient}\r\nAction: failed\r\nStatus: {status}\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: ssi-ara@ars.test\r\nTo: {original_recipient}\r\nMessage-ID: {original_message_id}\r\n"
        "Subject: Bulletin\r\n--B--\r\n"
    ).encode()


def reply(sender: str, to: str, in_reply_to: str, body: str, subject: str = "RE: Bulletin",
          message_id: str = "<r1@e.test>") -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {message_id}\r\n"
        f"In-Reply-To: {in_reply_to}\r\nReferences: {in_reply_to}\r\nDate: Fri, 27 Nov 2026 11:00:00 +0100\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        f"{body}\r\n"
    ).encode()
