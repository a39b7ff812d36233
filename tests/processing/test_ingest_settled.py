"""`ingest` beside a running daemon: when the daemon's processing host takes the message first,
`ingest` reports what happened to it (case, quarantine and reason), not « skipped »."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import update

from mailgateway.app import build_app
from mailgateway.cli.commands import _settled
from mailgateway.clock import FixedClock
from mailgateway.intake.accept import accept_in
from mailgateway.processing.runner import Result
from mailgateway.settings import parse_settings
from mailgateway.store.engine import transaction
from mailgateway.store.models import InboundMessage
from tests.support import casemail
from tests.support.casegateway import Gateway, settings_data
from tests.support.db import at_head

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    clock = FixedClock(NOW)
    app = build_app(parse_settings(settings_data(at_head(sqlite_url))), clock=clock)
    try:
        yield Gateway(app, clock)
    finally:
        app.close()


def test_a_declaration_processed_by_another_process_is_reported_with_its_case(gw: Gateway) -> None:
    done = gw.feed(casemail.declaration())
    assert done.status == "processed" and done.case_ref
    settled = _settled(gw.app.factory, Result(done.inbound_id, "skipped"))
    assert (settled.status, settled.kind, settled.case_ref) == ("processed", done.kind, done.case_ref)


def test_a_quarantined_message_is_reported_with_its_reason(gw: Gateway) -> None:
    raw = b"Subject: a\r\nSubject: b\r\nFrom: x@chu.test\r\nTo: ssi-ara@ars.test\r\n\r\nbody\r\n"
    done = gw.feed(raw)
    assert done.status == "quarantined"
    settled = _settled(gw.app.factory, Result(done.inbound_id, "skipped"))
    assert settled.status == "quarantined" and settled.reason == done.reason


def test_a_message_still_received_is_waited_for_then_left_as_is(gw: Gateway) -> None:
    with transaction(gw.app.factory) as session:
        inbound = accept_in(session, casemail.declaration(2), source="cli", now=NOW).inbound_id
    assert _settled(gw.app.factory, Result(inbound, "skipped"), timeout=0.2).status == "skipped"
    with transaction(gw.app.factory) as session:
        session.execute(update(InboundMessage).where(InboundMessage.id == inbound)
                        .values(status="quarantined", reason="r"))
    assert _settled(gw.app.factory, Result(inbound, "skipped"), timeout=0.2).status == "quarantined"
