"""``mailgateway status`` from a freshly migrated SQLite database."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.cli.status import run as cli
from mailgateway.clock import FixedClock
from mailgateway.settings import Settings, parse_settings
from mailgateway.status import snapshot
from tests.support.ops import NOW, populate


def _settings(url: str) -> Settings:
    return parse_settings({"database": {"url": url},
                           "regions": [{"code": "ARA", "name": "ARA", "address": "ssi-ara@ars.test"}]})


def test_snapshot_counts_what_the_database_holds(factory: sessionmaker[Session]) -> None:
    populate(factory)
    with factory() as session:
        snap = snapshot(session, NOW)
    assert snap.inbound == {"processed": {"declaration": 2, "reply": 1}, "quarantined": {"unknown": 1},
                            "received": {"-": 2}}
    assert snap.inbound_backlog == 2 and snap.quarantined == 1
    assert snap.outbox == {"queued": 2, "sending": 1} and snap.outbox_depth == 3
    assert snap.outbox_oldest_age_seconds == 600.0
    assert snap.cases_open == 2 and snap.cases_open_by_region == {"ARA": 1, "PDL": 1}
    assert [(m.mailbox, m.connected) for m in snap.mailboxes] == [("ARA:INBOX", True), ("PDL:INBOX", False)]
    (problem,) = snap.problems(grace_seconds=300)
    assert "PDL:INBOX" in problem and "connection refused" in problem


def test_status_json_on_a_fresh_database_is_all_zero_and_exits_0(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli(argparse.Namespace(json=True), _settings(db_url), clock=FixedClock(NOW))
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["inbound"] == {} and out["quarantined"] == 0 and out["cases_open"] == 0
    assert out["outbox"] == {"depth": 0, "by_status": {"queued": 0, "sending": 0}, "oldest_age_seconds": None}
    assert out["mailboxes"] == [] and out["problems"] == []
    assert out["schema"]["revision"] == out["schema"]["head"]


def test_status_text_shows_counts_and_exits_1_on_an_unreachable_mailbox(
    db_url: str, factory: sessionmaker[Session], capsys: pytest.CaptureFixture[str]
) -> None:
    populate(factory)
    code = cli(argparse.Namespace(json=False), _settings(db_url), clock=FixedClock(NOW))
    text = capsys.readouterr().out
    assert code == 1
    assert "en quarantaine : 1" in text
    assert "File sortante : 3 message(s)" in text and "plus ancien : 10 min" in text
    assert "Dossiers ouverts : 2 (ARA 1, PDL 1)" in text
    assert "PDL:INBOX" in text and "PROBLÈME" in text


def test_status_refuses_a_missing_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli(argparse.Namespace(json=False), _settings(f"sqlite:///{tmp_path / 'none.db'}"))
    assert code == 2
    assert "base de données absente" in capsys.readouterr().err
