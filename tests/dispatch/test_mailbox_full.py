"""A relay's « 552 5.2.2 mailbox full » is retried, not a permanent failure (RFC 3463 §3.3: X.2.2
serves persistent transient errors): an establishment whose SSI mailbox is full gets the mail
once it is emptied, and its contact is never counted as refusing (outside test, hospital RSSI)."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from mailgateway.app import build_app
from mailgateway.clock import FixedClock
from mailgateway.dispatch.sender import Sender
from mailgateway.intake.accept import accept_in
from mailgateway.settings import parse_settings
from mailgateway.store.engine import transaction
from mailgateway.store.models import OutboundMessage
from tests.support import casemail
from tests.support.casegateway import NOW, settings_data
from tests.support.db import at_head
from tests.support.servers import SmtpSink


def test_a_full_mailbox_is_retried_and_a_user_unknown_is_not(sqlite_url: str, smtp_sink: SmtpSink) -> None:
    data = {**settings_data(at_head(sqlite_url)), "relay": {"host": "127.0.0.1", "port": smtp_sink.port}}
    app = build_app(parse_settings(data), clock=FixedClock(NOW))
    try:
        smtp_sink.fail("dsi@chu.test", code=552, message="5.2.2 Mailbox full")
        smtp_sink.fail("rssi@clinique.test", code=550, message="5.1.1 User unknown")
        with transaction(app.factory) as s:
            first = accept_in(s, casemail.declaration(1), source="cli", now=NOW).inbound_id
            second = accept_in(s, casemail.declaration(2, sender="rssi@clinique.test", finess="690781811"),
                               source="cli", now=NOW).inbound_id
        app.processor.process(first)
        app.processor.process(second)
        asyncio.run(Sender(app.settings, app.factory, app.clock, "t").flush(include_backoff=True))
        with app.factory() as s:
            acks = {r.recipient: r.status for r in s.scalars(select(OutboundMessage)
                                                             .where(OutboundMessage.kind == "accuse_reception"))}
    finally:
        app.close()
    assert acks["dsi@chu.test"] == "queued"  # tried again later
    assert acks["rssi@clinique.test"] == "failed"
