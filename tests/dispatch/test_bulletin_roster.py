"""``bulletin list`` and the per-establishment lists of ``bulletin status ID`` (key
``establishments``: delivered, bounced, not acknowledged...), available at any time."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from mailgateway import cli
from mailgateway.app import App, build_app
from mailgateway.bulletins.tracking import permanent_failure_hook
from mailgateway.clock import FixedClock
from mailgateway.dispatch.sender import Sender
from mailgateway.intake.accept import accept_in
from mailgateway.store.engine import transaction
from mailgateway.store.models import OutboundMessage
from tests.support.bulletins import bulletin_settings, fill_directory, reply
from tests.support.db import at_head
from tests.support.servers import SmtpSink

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


@pytest.fixture
def app(sqlite_url: str, smtp_sink: SmtpSink) -> Iterator[App]:
    application = build_app(bulletin_settings(at_head(sqlite_url), relay_port=smtp_sink.port), clock=FixedClock(NOW))
    with transaction(application.factory) as s:
        fill_directory(s, NOW, 3)  # one ssi contact each: a bounce has no fallback
    yield application
    application.close()


@pytest.fixture
def config(tmp_path: Path, sqlite_url: str, smtp_sink: SmtpSink) -> Path:
    path = tmp_path / "mg.toml"
    path.write_text(
        f'[database]\nurl = "{sqlite_url}"\n[relay]\nhost = "127.0.0.1"\nport = {smtp_sink.port}\n'
        '[authentication]\nnameservers = ["127.0.0.1"]\n'
        '[[regions]]\ncode = "ARA"\nname = "Auvergne-Rhône-Alpes"\naddress = "ssi-ara@ars.test"\n'
        '[[staff]]\naddress = "agent@ars.test"\nregion = "ARA"\n', encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, str]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        code = cli.main([*args, "-c", str(config)])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return code, capsys.readouterr().out


def _send(capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path) -> int:
    body = tmp_path / "b.txt"
    body.write_text("Une campagne d'hameçonnage vise les laboratoires.\n", encoding="utf-8")
    code, out = run(capsys, config, "bulletin", "send", "--region", "ARA", "--target", "all", "--subject",
                    "Hameçonnage", "--body-file", str(body), "--yes", "--json")
    assert code == 0
    return int(json.loads(out)["id"])


def _states(capsys: pytest.CaptureFixture[str], config: Path, bulletin_id: int, *extra: str) -> dict[str, str]:
    code, out = run(capsys, config, "bulletin", "status", str(bulletin_id), "--json", *extra)
    assert code == 0
    return {e["finess"]: e["state"] for e in json.loads(out)["establishments"]}


def test_status_lists_each_establishment_from_the_start_to_the_acknowledgements(
    app: App, config: Path, tmp_path: Path, smtp_sink: SmtpSink, capsys: pytest.CaptureFixture[str]
) -> None:
    smtp_sink.fail("ssi@e1.test", code=550, message="5.1.1 User unknown")
    bulletin_id = _send(capsys, config, tmp_path)
    # Before anything is delivered: every establishment listed, pending.
    assert _states(capsys, config, bulletin_id) == dict.fromkeys(("690000000", "690000001", "690000002"), "pending")
    asyncio.run(Sender(app.settings, app.factory, app.clock, "t",
                       on_permanent_failure=permanent_failure_hook(app.env)).flush(include_backoff=True))
    with app.factory() as s:
        sent = s.scalar(select(OutboundMessage).where(OutboundMessage.recipient == "ssi@e0.test"))
        assert sent is not None
        message_id = sent.message_id
    with transaction(app.factory) as s:
        inbound = accept_in(s, reply("ssi@e0.test", "ssi-ara@ars.test", message_id, "#lu"), source="cli",
                            now=NOW).inbound_id
    app.processor.process(inbound)

    assert _states(capsys, config, bulletin_id) == {
        "690000000": "acknowledged", "690000001": "bounced", "690000002": "delivered"}
    assert _states(capsys, config, bulletin_id, "--state", "unacknowledged") == {
        "690000001": "bounced", "690000002": "delivered"}
    code, out = run(capsys, config, "bulletin", "status", str(bulletin_id), "--json")
    entry = next(e for e in json.loads(out)["establishments"] if e["state"] == "bounced")
    assert entry == {**entry, "finess": "690000001", "name": "Laboratoire numéro 1", "email": "ssi@e1.test"}
    assert "5.1.1" in entry["answer"]

    code, text = run(capsys, config, "bulletin", "status", str(bulletin_id))
    assert code == 0
    assert "Rebonds et échecs (1) :\n  690000001  Laboratoire numéro 1 (69) — ssi@e1.test" in text
    assert "Remis, sans accusé de lecture (1) :\n  690000002  Laboratoire numéro 2" in text
    assert "Accusés de lecture reçus (1) :\n  690000000  Laboratoire numéro 0" in text

    code, out = run(capsys, config, "bulletin", "list", "--json")
    (listed,) = json.loads(out)
    assert listed["id"] == bulletin_id and listed["subject"] == "Hameçonnage" and listed["recipients"] == 3
    assert (listed["acknowledged"], listed["delivered"], listed["bounced"], listed["pending"]) == (1, 1, 1, 0)
    code, text = run(capsys, config, "bulletin", "list")
    header, row = text.splitlines()
    assert header.split()[:3] == ["ID", "ÉTAT", "CRÉÉ"] and row.endswith("Hameçonnage")
    assert re.search(r"\d\d/\d\d/\d{4} à \d\d:\d\d", row), row  # the CLI's own clock: today, Paris time
