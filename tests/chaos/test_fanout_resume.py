"""SIGKILL of the daemon in the middle of a large bulletin fan-out, then a restart: every
establishment gets its message, one distinct message each (issue 19: the pipelined fan-out).

The daemon is killed while it fans out (some batches committed and already at the relay, others
composed or being signed in its signing processes); the restarted daemon puts the bulletin back
to ``approved`` (``resume_interrupted_fan_outs``), skips the establishments already queued and
queues the rest. Re-sends of the *same* message (same Message-ID) are only allowed from the
sender's documented duplicate window (dispatch/sender.py: one claimed batch per kill).
"""

from __future__ import annotations

import email
import sqlite3
import time
from collections import defaultdict
from datetime import UTC, datetime
from email import policy
from pathlib import Path

from mailgateway.app import build_app
from mailgateway.bulletins.fanout import approve_bulletin, create_bulletin
from mailgateway.directory import parse_target
from mailgateway.settings import load_settings
from mailgateway.store.engine import transaction
from tests.support.bulletins import fill_directory
from tests.support.chaos import ChaosConfig
from tests.support.dkim import dkimpy_verify
from tests.support.gateway import RunningGateway, wait_until
from tests.support.servers import SmtpSink

COUNT = 1500
SENDER_BATCH = 200


def _prepare(config: ChaosConfig) -> int:
    """The directory and an approved bulletin too large for the approving transaction."""
    app = build_app(load_settings(str(config.path)))
    try:
        now = datetime.now(UTC)
        with transaction(app.factory) as s:
            fill_directory(s, now, COUNT, region="ARA")
            bulletin = create_bulletin(s, app.settings, region="ARA", target=parse_target("category=LBM"),
                                       subject="Vulnérabilité VPN", body="Appliquez les correctifs.", tlp="GREEN",
                                       author="referent-ara@ars.test", now=now)
            s.flush()
            assert approve_bulletin(app.env, s, bulletin.id, "referent-ara@ars.test") == COUNT
            assert bulletin.status == "approved"
            return bulletin.id
    finally:
        app.close()


def _progress(db: Path, bulletin_id: int) -> tuple[str, int]:
    with sqlite3.connect(db, timeout=30) as conn:
        status = conn.execute("SELECT status FROM bulletins WHERE id = ?", (bulletin_id,)).fetchone()[0]
        queued = conn.execute("SELECT count(*) FROM outbound_messages WHERE bulletin_id = ?",
                              (bulletin_id,)).fetchone()[0]
    return str(status), int(queued)


def test_a_fan_out_killed_midway_reaches_each_establishment_once(tmp_path: Path) -> None:
    with SmtpSink() as sink:
        config = ChaosConfig(tmp_path, relay_port=sink.port, extra="[bulletins]\nfanout_commit_every = 50\n")
        bulletin_id = _prepare(config)
        gateway = RunningGateway(config)
        try:
            # Killed once a few batches are committed and before the last one is.
            status, queued = wait_until(lambda: (s := _progress(config.db_path, bulletin_id))[1] >= 200 and s,
                                        timeout=120)
            gateway.kill()
            status, queued = _progress(config.db_path, bulletin_id)
            assert status == "sending" and 200 <= queued < COUNT, (status, queued)
            at_kill = len(sink.messages)
            gateway = RunningGateway(config)
            wait_until(lambda: len({m.rcpt_tos[0] for m in sink.messages}) >= COUNT
                       and _progress(config.db_path, bulletin_id)[0] == "sent", timeout=240)
            time.sleep(1.0)  # a late duplicate would show now
        finally:
            gateway.stop()
        messages = list(sink.messages)
    log = (tmp_path / "daemon.log").read_text(errors="replace")
    assert "signing pool" not in log and "fan-out failed" not in log, log[-4000:]

    assert _progress(config.db_path, bulletin_id) == ("sent", COUNT)
    with sqlite3.connect(config.db_path) as conn:
        assert conn.execute("SELECT count(DISTINCT recipient), count(*) FROM outbound_messages "
                            "WHERE bulletin_id = ?", (bulletin_id,)).fetchone() == (COUNT, COUNT)
        assert conn.execute("SELECT count(*) FROM bulletin_recipients WHERE bulletin_id = ? AND status = 'queued'",
                            (bulletin_id,)).fetchone()[0] == COUNT
    ids: dict[str, set[str]] = defaultdict(set)
    for m in messages:
        ids[m.rcpt_tos[0]].add(str(email.message_from_bytes(m.raw, policy=policy.default)["Message-ID"]))
    assert sorted(ids) == sorted(f"ssi@e{n}.test" for n in range(COUNT))
    assert all(len(v) == 1 for v in ids.values()), "an establishment got two different messages"
    assert len(messages) - COUNT <= SENDER_BATCH, f"{len(messages) - COUNT} re-sends exceed the duplicate window"
    assert 0 < at_kill < COUNT  # the kill really happened mid-way, with mail already at the relay
    for m in messages[:: COUNT // 10]:  # signed (in the signing processes) with the configured key
        assert dkimpy_verify(m.raw, config.dkim_zone)
