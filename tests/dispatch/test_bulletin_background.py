"""Large approvals are queued by the daemon in committed chunks, never in the approving transaction."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from mailgateway.app import App, build_app
from mailgateway.bulletins.fanout import (
    approve_bulletin,
    create_bulletin,
    fan_out_approved,
    resume_interrupted_fan_outs,
)
from mailgateway.clock import FixedClock
from mailgateway.directory import parse_target
from mailgateway.dispatch.liveness import this_process
from mailgateway.store.engine import transaction
from mailgateway.store.models import Bulletin, OutboundMessage
from tests.support.bulletins import bulletin_settings, fill_directory
from tests.support.db import at_head

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


@pytest.fixture
def app(sqlite_url: str) -> Iterator[App]:
    settings = bulletin_settings(at_head(sqlite_url), bulletins={"inline_fanout_limit": 5})
    application = build_app(settings, clock=FixedClock(NOW))
    with transaction(application.factory) as s:
        fill_directory(s, NOW, 12)
    yield application
    application.close()


def _draft(app: App) -> int:
    with transaction(app.factory) as s:
        bulletin = create_bulletin(s, app.settings, region="ARA", target=parse_target("category=LBM"),
                                   subject="Hameçonnage", body="Texte", tlp="CLEAR", author="agent@ars.test", now=NOW)
        s.flush()
        return bulletin.id


def _queued(app: App) -> int:
    with app.factory() as s:
        return int(s.scalar(select(func.count()).select_from(OutboundMessage)) or 0)


def test_a_large_approval_is_left_to_the_daemon_then_queued_once(app: App) -> None:
    bulletin_id = _draft(app)
    with transaction(app.factory) as s:
        planned = approve_bulletin(app.env, s, bulletin_id, "agent@ars.test")
    assert planned == 12 and _queued(app) == 0  # nothing in the approving transaction
    assert fan_out_approved(app.env, app.factory) == 12
    assert fan_out_approved(app.env, app.factory) == 0
    assert _queued(app) == 12
    with app.factory() as s:
        assert s.get(Bulletin, bulletin_id).status == "sent"  # type: ignore[union-attr]


def test_an_interrupted_fan_out_resumes_without_duplicates(app: App) -> None:
    bulletin_id = _draft(app)
    with transaction(app.factory) as s:
        approve_bulletin(app.env, s, bulletin_id, "agent@ars.test")
    fan_out_approved(app.env, app.factory)
    with transaction(app.factory) as s:  # as if the daemon had stopped mid-way
        s.get(Bulletin, bulletin_id).status = "sending"  # type: ignore[union-attr]
    assert resume_interrupted_fan_outs(app.factory) == 1
    fan_out_approved(app.env, app.factory)
    assert _queued(app) == 12
    with app.factory() as s:
        assert s.get(Bulletin, bulletin_id).status == "sent"  # type: ignore[union-attr]


def _sending(app: App, owner: str | None) -> int:
    bulletin_id = _draft(app)
    with transaction(app.factory) as s:
        bulletin = s.get(Bulletin, bulletin_id)
        assert bulletin is not None
        bulletin.status, bulletin.fan_out_owner = "sending", owner
    return bulletin_id


def _status(app: App, bulletin_id: int) -> str:
    with app.factory() as s:
        bulletin = s.get(Bulletin, bulletin_id)
        assert bulletin is not None
        return bulletin.status


def test_a_starting_daemon_resumes_only_the_fan_outs_of_dead_processes(app: App) -> None:
    """An outside tester restarted the daemon while ``bulletin send --yes`` fanned out: the daemon
    put the bulletin back to ``approved`` and fanned it out a second time beside the live CLI."""
    import subprocess
    import sys

    live_cli = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead_cli = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_cli.wait()
    try:
        host = this_process().rpartition(":")[0]
        me = f"{host}:{os.getpid()}"
        kept = _sending(app, f"{host}:{live_cli.pid}")
        crashed = _sending(app, f"{host}:{dead_cli.pid}")
        previous = _sending(app, me)  # the daemon's own id, seen at its start: a previous process's
        legacy = _sending(app, None)  # before revision 0009
        assert resume_interrupted_fan_outs(app.factory, me) == 3
        assert [_status(app, b) for b in (kept, crashed, previous, legacy)] == [
            "sending", "approved", "approved", "approved"]
        # Later looks (a CLI killed meanwhile) leave our own running fan-out alone.
        mine = _sending(app, me)
        live_cli.kill()
        live_cli.wait()
        assert resume_interrupted_fan_outs(app.factory, me, at_start=False) == 1
        assert [_status(app, b) for b in (kept, mine)] == ["approved", "sending"]
    finally:
        live_cli.kill()
        live_cli.wait()


def test_a_claimed_fan_out_names_its_owner(app: App) -> None:
    bulletin_id = _draft(app)
    with transaction(app.factory) as s:
        approve_bulletin(app.env, s, bulletin_id, "agent@ars.test")
        s.flush()
    with transaction(app.factory) as s:
        assert s.get(Bulletin, bulletin_id).fan_out_owner is None  # type: ignore[union-attr]
    assert fan_out_approved(app.env, app.factory) == 12
    with transaction(app.factory) as s:
        assert s.get(Bulletin, bulletin_id).fan_out_owner == this_process()  # type: ignore[union-attr]


def test_looking_for_approved_bulletins_never_waits_for_the_write_lock(app: App) -> None:
    """The daemon looks every 2 s: a look that took SQLite's write lock (BEGIN IMMEDIATE) waited
    behind processing in SQLite's busy handler and took the lock from it (issue 19)."""
    import sqlite3
    import threading

    path = app.settings.database.url.split("///", 1)[1]
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process's write transaction, held
    found: list[int] = []
    try:
        look = threading.Thread(target=lambda: found.append(fan_out_approved(app.env, app.factory)), daemon=True)
        look.start()
        look.join(10)  # the busy timeout is 30 s
        assert found == [0]
    finally:
        writer.execute("ROLLBACK")
        writer.close()
