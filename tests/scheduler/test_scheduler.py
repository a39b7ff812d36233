"""The schedule: run-due at chosen instants, APScheduler persistence, one run across instances."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import create_engine

from mailgateway import scheduler
from mailgateway.jobs import deadlines, digest
from mailgateway.settings import SchedulerSettings
from mailgateway.store.models import JobRun, OutboundMessage, Reminder
from tests.support.scheduling import NOW, Gateway, make_gateway


def write_config(tmp_path: Path, url: str) -> Path:
    config = tmp_path / "mg.toml"
    config.write_text(f'''
[database]
url = "{url}"
[[regions]]
code = "ARA"
name = "Auvergne-Rhône-Alpes"
address = "ssi-ara@ars.test"
[[staff]]
address = "agent@ars.test"
region = "ARA"
[authentication]
nameservers = ["127.0.0.1"]
dns_timeout_seconds = 0.1
''')
    return config


def test_run_due_runs_what_is_due_at_that_instant(gw: Gateway, tmp_path: Path, sqlite_url: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from mailgateway.cli import main

    gw.declare(sender="no-reply@portail.test")
    config = str(write_config(tmp_path, sqlite_url))
    assert main(["scheduler", "run-due", "-c", config, "--now", "2026-12-01T14:00:00+01:00"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "1 rappel envoyé (1 message)"
    assert not any("synthèse" in line for line in out)  # 14:00 is not the digest's hour
    assert main(["scheduler", "run-due", "-c", config, "--now", "2026-12-02T08:00"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "synthèse quotidienne : envoyée à 1 destinataire" in out and "0 rappel envoyé (0 message)" in out
    assert main(["scheduler", "run-due", "-c", config, "--now", "2026-12-02T08:30"]) == 0
    assert "synthèse quotidienne déjà envoyée aujourd'hui" in capsys.readouterr().out
    assert main(["scheduler", "run-due", "-c", config, "--now", "hier"]) == 2


def test_due_rules_follow_the_paris_clock() -> None:
    sc = SchedulerSettings()
    monday_0810 = datetime(2026, 12, 7, 7, 10, tzinfo=UTC)
    due = {job.name for job in scheduler.JOBS if job.due(sc, monday_0810)}
    assert due == {"deadlines", "housekeeping", "bulletins", "digest", "quarantine_summary", "weekly_report",
                   "quarantine_notices"}
    tuesday_0300 = datetime(2026, 12, 8, 2, 0, tzinfo=UTC)
    assert {job.name for job in scheduler.JOBS if job.due(sc, tuesday_0300)} == {
        "deadlines", "housekeeping", "bulletins", "retention", "quarantine_notices"}
    summer = datetime(2026, 7, 6, 6, 0, tzinfo=UTC)  # 08:00 CEST, a Monday
    assert scheduler.BY_NAME["weekly_report"].due(sc, summer)
    assert not scheduler.BY_NAME["digest"].due(sc, summer - timedelta(minutes=1))


def test_list_shows_each_job_and_its_next_run(gw: Gateway) -> None:
    text = scheduler.format_list(gw.app, NOW)
    assert "digest               chaque jour à 8 h" in text
    assert "02/12/2026 08:00" in text  # next digest after Tuesday 09:00
    assert "weekly_report        chaque lundi à 8 h 10" in text and "07/12/2026 08:10" in text


def test_the_job_store_keeps_the_schedule_across_restarts(sqlite_url: str) -> None:
    gw = make_gateway(sqlite_url)
    sc = gw.app.settings.scheduler
    try:
        first = scheduler.build_scheduler(gw.app.engine, sc)
        first.start(paused=True)
        assert sorted(scheduler.sync_jobs(first, sc)) == sorted(j.name for j in scheduler.JOBS)
        planned = {job.id: job.next_run_time for job in first.get_jobs()}
        first.shutdown()
    finally:
        gw.app.close()
    restarted = make_gateway(sqlite_url)  # a new process: new engine, new scheduler
    try:
        second = scheduler.build_scheduler(restarted.app.engine, sc)
        second.start(paused=True)
        assert {job.id: job.next_run_time for job in second.get_jobs()} == planned
        assert scheduler.sync_jobs(second, sc) == []  # nothing rewritten: no run skipped or repeated
        changed = SchedulerSettings(digest_hour=7)
        assert scheduler.sync_jobs(second, changed) == ["digest"]
        second.shutdown()
    finally:
        restarted.app.close()


async def test_the_daemon_extension_fires_jobs_in_the_background(sqlite_url: str) -> None:
    gw = make_gateway(sqlite_url)
    gw.declare(sender="no-reply@portail.test")
    gw.clock.at = NOW + timedelta(hours=1)
    runs: list[tuple[str, str]] = []
    daemon: Any = SimpleNamespace(settings=gw.app.settings, engine=gw.app.engine, wake_sender=lambda: None,
                                  job_ran=lambda job, outcome: runs.append((job, outcome)))
    ext = scheduler.SchedulerExtension(lambda: gw.app)
    await ext.start(daemon)
    try:
        assert ext.scheduler is not None and ext.scheduler.running
        job = ext.scheduler.get_job("deadlines")
        assert job is not None
        job.modify(next_run_time=datetime.now(UTC))
        for _ in range(100):
            if gw.count(Reminder):
                break
            time.sleep(0.05)
        assert gw.count(Reminder) == 1
    finally:
        await ext.stop(daemon)
        gw.app.close()
    assert ("deadlines", "ok") in runs
    assert not ext.scheduler.running


def _race(apps: list[Gateway], job: Any, at: datetime) -> list[Any]:
    barrier = threading.Barrier(len(apps))
    results: list[Any] = [None] * len(apps)

    def one(i: int) -> None:
        barrier.wait()
        results[i] = job.run(apps[i].app, at)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(apps))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_two_instances_on_postgresql_fire_each_job_once(pg_url: str) -> None:
    first, second = make_gateway(pg_url), make_gateway(pg_url)
    try:
        first.declare(sender="no-reply@portail.test")
        first.declare(at=NOW + timedelta(minutes=1), sender="no-reply@portail.test")
        for minutes in (61, 61, 62, 121, 121):
            _race([first, second], deadlines, NOW + timedelta(minutes=minutes))
        assert first.count(Reminder) == 4  # 2 cases x (reminder, escalation)
        assert first.count(OutboundMessage, OutboundMessage.kind == "rappel") == 2 * 2 + 2
        digests = _race([first, second], digest, NOW + timedelta(days=1))
        assert sorted(o.skipped for o in digests) == [False, True]
        assert first.count(JobRun, JobRun.job == "digest") == 1
        assert first.count(OutboundMessage, OutboundMessage.kind == "synthese") == 2
    finally:
        first.app.close()
        second.app.close()


def test_the_advisory_lock_keeps_a_second_instance_out_while_the_first_runs(pg_url: str) -> None:
    from mailgateway.jobs.base import try_job_lock
    from mailgateway.store.engine import make_sessionmaker, transaction

    gw = make_gateway(pg_url)
    other = create_engine(pg_url)
    try:
        with transaction(gw.app.factory) as s:
            assert try_job_lock(s, "deadlines")
            with transaction(make_sessionmaker(other)) as s2:
                assert not try_job_lock(s2, "deadlines")
                assert try_job_lock(s2, "digest")
        with transaction(make_sessionmaker(other)) as s2:  # released at commit
            assert try_job_lock(s2, "deadlines")
    finally:
        other.dispose()
        gw.app.close()
