"""End to end: a French Exchange non-delivery report shows staff its own diagnostic.

A bulletin goes out through the real sender to a loopback SMTP sink; Exchange's "Remise
impossible" report (empty return path, no RFC 3464 part) comes back to the message's VERP
address and is processed by the real pipeline. The outbox row keeps the report's words, and the
staff task "Contact à corriger" quotes them instead of the bare word "rebond".
"""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailgateway.app import App, build_app
from mailgateway.bulletins.fanout import approve_bulletin, create_bulletin
from mailgateway.bulletins.tracking import permanent_failure_hook
from mailgateway.clock import FixedClock
from mailgateway.dispatch.sender import Sender
from mailgateway.intake.accept import accept_in
from mailgateway.store.engine import transaction
from mailgateway.store.models import Contact, OutboundMessage
from tests.support.bulletins import bulletin_settings, fill_directory
from tests.support.db import at_head
from tests.support.servers import SmtpSink

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
NDR = Path(__file__).resolve().parents[1] / "data" / "bounces" / "exchange-fr-remise-impossible.eml"
WORDS = "L'adresse de messagerie que vous avez entrée est introuvable"


@pytest.fixture
def app(sqlite_url: str, smtp_sink: SmtpSink) -> Iterator[App]:
    application = build_app(bulletin_settings(at_head(sqlite_url), relay_port=smtp_sink.port), clock=FixedClock(NOW))
    with transaction(application.factory) as s:
        fill_directory(s, NOW, 2, roles=("ssi", "rssi"))
    yield application
    application.close()


def _send_bulletin(app: App) -> int:
    with transaction(app.factory) as s:
        bulletin = create_bulletin(s, app.settings, region="ARA", target="category=LBM", subject="Hameçonnage",
                                   body="Texte", tlp="GREEN", author="agent@ars.test", now=NOW)
        approve_bulletin(app.env, s, bulletin.id, "agent@ars.test")
        bulletin_id: int = bulletin.id
    sender = Sender(app.settings, app.factory, app.clock, "test", on_permanent_failure=permanent_failure_hook(app.env))
    asyncio.run(sender.flush(include_backoff=True))
    return bulletin_id


def _exchange_ndr_for(app: App, bulletin_id: int, recipient: str) -> Any:
    with app.factory() as s:
        row = s.scalar(select(OutboundMessage).where(OutboundMessage.recipient == recipient,
                                                     OutboundMessage.bulletin_id == bulletin_id))
        assert row is not None
        verp, mid, row_id = row.mail_from, row.message_id, row.id
    raw = NDR.read_bytes().replace(b"%VERP%", verp.encode()).replace(b"%RCPT%", recipient.encode()).replace(
        b"%MID%", mid.encode())
    with transaction(app.factory) as s:
        inbound = accept_in(s, raw, source="cli", now=NOW).inbound_id
    result = app.processor.process(inbound)
    assert result.kind == "bounce" and result.status == "processed", result
    return row_id


def _staff_tasks(app: App) -> list[str]:
    with app.factory() as s:
        rows = list(s.scalars(select(OutboundMessage).where(OutboundMessage.kind == "contact_a_corriger")))
        raws = [r.raw for r in rows]
    texts = []
    for raw in raws:
        body = email.message_from_bytes(raw, policy=email.policy.default).get_body(("plain",))
        assert body is not None
        texts.append(" ".join(body.get_content().split()))
    return texts


def test_a_french_exchange_ndr_shows_staff_its_diagnostic(app: App) -> None:
    first = _send_bulletin(app)
    row_id = _exchange_ndr_for(app, first, "ssi@e1.test")
    with app.factory() as s:
        row = s.get(OutboundMessage, row_id)
        assert row is not None and row.status == "bounced"
        assert row.last_answer is not None and WORDS in row.last_answer and row.last_answer != "rebond"
    # A second delivery failing the same way takes the contact out of use: staff are told why.
    second = _send_bulletin(app)
    _exchange_ndr_for(app, second, "ssi@e1.test")
    with app.factory() as s:
        contact = s.scalar(select(Contact).where(Contact.address == "ssi@e1.test"))
    assert contact is not None and contact.status == "bouncing"
    tasks = _staff_tasks(app)
    assert len(tasks) == 1
    assert f"Diagnostic du serveur : {WORDS}" in tasks[0]
    assert "RecipientNotFound" in tasks[0]
