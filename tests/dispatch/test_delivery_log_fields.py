"""A delivery refused by the relay is logged with its structured fields (docs/operations.md,
« Logs »): outbound id, recipient and case reference, selectable with jq in the journal."""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy import select

from mailgateway.app import build_app
from mailgateway.bulletins.tracking import permanent_failure_hook
from mailgateway.clock import FixedClock
from mailgateway.dispatch.compose import MailSpec
from mailgateway.dispatch.sender import Sender
from mailgateway.intake.accept import accept_in
from mailgateway.settings import parse_settings
from mailgateway.store.engine import transaction
from mailgateway.store.models import Case
from tests.support import casemail
from tests.support.casegateway import NOW, settings_data
from tests.support.db import at_head
from tests.support.servers import SmtpSink


def test_a_refused_delivery_line_names_the_outbound_the_recipient_and_the_case(
    sqlite_url: str, smtp_sink: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    data = {**settings_data(at_head(sqlite_url)), "relay": {"host": "127.0.0.1", "port": smtp_sink.port}}
    app = build_app(parse_settings(data), clock=FixedClock(NOW))
    try:
        smtp_sink.fail("dsi@chu.test", code=550, message="5.1.1 User unknown")
        with transaction(app.factory) as s:
            inbound = accept_in(s, casemail.declaration(1), source="cli", now=NOW).inbound_id
        ref = app.processor.process(inbound).case_ref
        assert ref
        sender = Sender(app.settings, app.factory, app.clock, "t", on_permanent_failure=permanent_failure_hook(app.env))
        with caplog.at_level(logging.WARNING, logger="mailgateway.sender"):
            asyncio.run(sender.flush(include_backoff=True))
    finally:
        app.close()
    (record,) = [r for r in caplog.records if r.name == "mailgateway.sender" and "dsi@chu.test" in r.getMessage()]
    fields = vars(record)
    assert fields["recipient"] == "dsi@chu.test"
    assert fields["case_ref"] == ref
    assert isinstance(fields["outbound_id"], int)
    assert fields["delivery"] == "permanent" and fields["code"] == 550


def test_a_mail_the_gateway_refuses_to_send_is_logged_with_its_fields(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A mail the gateway will not send (here to a no-reply address) is in the case timeline and,
    for the operator's jq, one log line with recipient, case reference and ``delivery`` = ``refused``."""
    app = build_app(parse_settings(settings_data(at_head(sqlite_url))), clock=FixedClock(NOW))
    try:
        with transaction(app.factory) as s:
            inbound = accept_in(s, casemail.declaration(1), source="cli", now=NOW).inbound_id
        ref = app.processor.process(inbound).case_ref
        with transaction(app.factory) as s, caplog.at_level(logging.INFO, logger="mailgateway.mailer"):
            case = s.scalar(select(Case).where(Case.reference == ref))
            spec = MailSpec(template="reponse", context={}, to="no-reply@chu.test",
                            from_address="ssi-ara@ars.test", from_name="ARS",
                            idempotency_key="t1")
            assert app.env.mailer.send(s, spec, kind="reponse", case=case) is None
    finally:
        app.close()
    (record,) = [r for r in caplog.records if r.name == "mailgateway.mailer"]
    fields = vars(record)
    assert fields["recipient"] == "no-reply@chu.test" and fields["case_ref"] == ref
    assert fields["delivery"] == "refused" and fields["kind"] == "reponse"
