"""``scheduler run-due --now T`` through the real command line: the jobs decide what is due at T,
but what they send is queued for now, with today's Date header (a reminder computed for
"now + 7 days" does not wait in the outbox until that date) and recorded on the timeline now; T
with an offset or without one is stored as the instant it names, so ``cases verify`` finds every
case as the gateway wrote it."""

from __future__ import annotations

import email
from datetime import UTC, datetime, timedelta
from email import policy
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from mailgateway.clock import PARIS, aware
from mailgateway.store.models import CaseEvent, OutboundMessage
from tests.scheduler.test_scheduler import write_config
from tests.support.scheduling import make_gateway


@pytest.mark.parametrize("with_offset", [True, False], ids=["offset", "paris-wall-clock"])
def test_a_reminder_due_at_t_is_queued_now_and_t_is_stored_as_that_instant(
        tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str], with_offset: bool) -> None:
    from mailgateway.cli import main

    opened = datetime.now(UTC).replace(microsecond=0)
    gw = make_gateway(sqlite_url)
    try:
        ref = gw.declare(at=opened, sender="no-reply@portail.test")
    finally:
        gw.app.close()
    config = str(write_config(tmp_path, sqlite_url))
    decided = (opened + timedelta(days=7)).astimezone(PARIS).replace(hour=14, minute=0, second=0)
    now_arg = decided.isoformat() if with_offset else decided.replace(tzinfo=None).isoformat()

    before = datetime.now(UTC).replace(microsecond=0)
    assert main(["scheduler", "run-due", "-c", config, "--now", now_arg]) == 0
    after = datetime.now(UTC) + timedelta(seconds=1)
    assert "1 rappel envoyé (1 message)" in capsys.readouterr().out.splitlines()

    gw = make_gateway(sqlite_url)
    try:
        with gw.app.factory() as s:
            reminder = s.scalars(select(OutboundMessage).where(OutboundMessage.kind == "rappel")).one()
            events = {e.type: e for e in s.scalars(select(CaseEvent))}
    finally:
        gw.app.close()
    # Sent when asked: due now, dated now — not at T, a week ahead.
    assert before <= aware(reminder.next_attempt_at) <= after
    assert before <= aware(reminder.created_at) <= after
    date = parsedate_to_datetime(str(email.message_from_bytes(reminder.raw, policy=policy.default)["Date"]))
    assert before - timedelta(seconds=1) <= date <= after
    # On the timeline when it was sent, like its mail: an event at T, a week ahead, sorted after
    # everything people did in between (an outside tester).
    assert before <= aware(events["rappel"].at) <= after
    # Decided at T: the event says for which instant, the very one (not an hour off).
    assert datetime.fromisoformat(events["rappel"].data["decide_pour"]) == decided.astimezone(UTC)
    # Nothing looks altered afterwards.
    assert main(["cases", "verify", "-c", config, ref]) == 0, capsys.readouterr().out
    assert main(["cases", "verify", "-c", config]) == 0, capsys.readouterr().out
