"""Prometheus metrics scraped over HTTP on 127.0.0.1, and /healthz."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.clock import FixedClock
from mailgateway.metrics import Metrics, MetricsServer
from mailgateway.processing.runner import Result
from mailgateway.store.engine import make_engine, make_sessionmaker, transaction
from tests.support.ops import NOW, populate


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


@pytest.fixture
def served(clock: FixedClock, factory: sessionmaker[Session]) -> Iterator[tuple[Metrics, str]]:
    metrics = Metrics(clock=clock, mailbox_grace_seconds=300)
    metrics.attach_database(factory)
    server = MetricsServer(metrics, "127.0.0.1", 0)
    server.start()
    yield metrics, f"http://127.0.0.1:{server.port}"
    server.stop()


def _get(url: str, timeout: float = 5) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_scrape_exposes_counters_and_database_gauges(served: tuple[Metrics, str],
                                                     factory: sessionmaker[Session]) -> None:
    metrics, base = served
    populate(factory)
    metrics.accepted("smtp")
    metrics.accepted("imap")
    metrics.accepted("smtp")
    metrics.on_processed(Result(1, "processed", "declaration", "SSI-ARA-2026-0001"))
    metrics.on_processed(Result(2, "quarantined", "unknown", reason="x"))
    metrics.on_processed(Result(3, "skipped"))
    metrics.processing_seconds.observe(0.02)
    metrics.delivery("sent", 2)
    metrics.delivery("temporary")
    metrics.scheduler_run("reminders")

    status, content_type, text = _get(base + "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(text)}
    assert all(name.startswith("mailgateway_") for name in names), names
    got = _samples(text)
    assert got[("mailgateway_messages_accepted_total", (("source", "smtp"),))] == 2
    assert got[("mailgateway_messages_accepted_total", (("source", "imap"),))] == 1
    assert got[("mailgateway_messages_processed_total", (("kind", "declaration"), ("status", "processed")))] == 1
    assert got[("mailgateway_messages_quarantined_total", (("kind", "unknown"),))] == 1
    assert ("mailgateway_messages_processed_total", (("kind", "unknown"), ("status", "skipped"))) not in got
    assert got[("mailgateway_processing_seconds_count", ())] == 1
    assert got[("mailgateway_deliveries_total", (("outcome", "sent"),))] == 2
    assert got[("mailgateway_scheduler_runs_total", (("job", "reminders"), ("outcome", "ok")))] == 1
    assert got[("mailgateway_database_up", ())] == 1
    assert got[("mailgateway_outbox_depth", (("status", "queued"),))] == 2
    assert got[("mailgateway_outbox_depth", (("status", "sending"),))] == 1
    assert got[("mailgateway_outbox_oldest_age_seconds", ())] == 600
    assert got[("mailgateway_inbound_backlog", ())] == 2
    assert got[("mailgateway_inbound_quarantined", ())] == 1
    assert got[("mailgateway_cases_open", ())] == 2
    assert got[("mailgateway_imap_connected", (("mailbox", "ARA:INBOX"),))] == 1
    assert got[("mailgateway_imap_connected", (("mailbox", "PDL:INBOX"),))] == 0
    assert got[("mailgateway_imap_state", (("mailbox", "PDL:INBOX"), ("state", "error")))] == 1
    assert got[("mailgateway_imap_last_contact_age_seconds", (("mailbox", "PDL:INBOX"),))] == 3600
    assert got[("mailgateway_build_info", (("version", __import__("mailgateway").__version__),))] == 1


def test_openmetrics_is_served_when_asked(served: tuple[Metrics, str]) -> None:
    _metrics, base = served
    req = urllib.request.Request(base + "/metrics", headers={"Accept": "application/openmetrics-text"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert resp.read().decode().rstrip().endswith("# EOF")


def test_healthz_200_then_503_with_the_failing_check_reason(served: tuple[Metrics, str]) -> None:
    metrics, base = served
    assert _get(base + "/healthz")[::2] == (200, "ok\n")
    metrics.add_health_check("relay", lambda: "relais injoignable depuis 12 min")
    status, _ct, body = _get(base + "/healthz")
    assert status == 503 and body == "relais injoignable depuis 12 min\n"


def test_healthz_fails_when_a_mailbox_is_unreachable_for_too_long(
    served: tuple[Metrics, str], factory: sessionmaker[Session], clock: FixedClock
) -> None:
    _metrics, base = served
    populate(factory)  # PDL:INBOX in error, last contact an hour before NOW (= the daemon's start)
    assert _get(base + "/healthz")[0] == 200  # within the grace period after our start
    clock.advance(seconds=301)
    status, _ct, body = _get(base + "/healthz")
    assert status == 503
    assert "PDL:INBOX" in body and "connection refused" in body and "ARA:INBOX" not in body


def test_healthz_fails_when_the_database_is_unreachable(clock: FixedClock, tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()  # a directory is not a database: every connection fails
    engine = make_engine(f"sqlite:///{tmp_path / 'db'}")
    metrics = Metrics(clock=clock)
    metrics.attach_database(make_sessionmaker(engine))
    server = MetricsServer(metrics, "127.0.0.1", 0)
    server.start()
    try:
        status, _ct, body = _get(f"http://127.0.0.1:{server.port}/healthz")
        assert status == 503 and "base de données injoignable" in body
        status, _ct, text = _get(f"http://127.0.0.1:{server.port}/metrics")
        assert status == 200 and _samples(text)[("mailgateway_database_up", ())] == 0
    finally:
        server.stop()
        engine.dispose()


def test_unknown_path_is_404(served: tuple[Metrics, str]) -> None:
    assert _get(served[1] + "/")[0] == 404


def test_two_metrics_objects_do_not_share_counters(clock: FixedClock) -> None:
    a, b = Metrics(clock=clock), Metrics(clock=clock)
    a.accepted("smtp")
    assert 'mailgateway_messages_accepted_total{source="smtp"} 1.0' in a.render()[0].decode()
    assert 'source="smtp"' not in b.render()[0].decode()


def test_binding_a_port_in_use_fails_at_start(clock: FixedClock) -> None:
    first = MetricsServer(Metrics(clock=clock), "127.0.0.1", 0)
    first.start()
    try:
        with pytest.raises(OSError):
            MetricsServer(Metrics(clock=clock), "127.0.0.1", first.port).start()
    finally:
        first.stop()


def test_clock_moves_ages(served: tuple[Metrics, str], factory: sessionmaker[Session], clock: FixedClock) -> None:
    _metrics, base = served
    populate(factory)
    clock.at = clock.at + timedelta(minutes=5)
    assert _samples(_get(base + "/metrics")[2])[("mailgateway_outbox_oldest_age_seconds", ())] == 900


def test_scrape_and_healthz_do_not_wait_for_the_writer(served: tuple[Metrics, str],
                                                       factory: sessionmaker[Session]) -> None:
    """SQLite: a scrape must not take the write lock the intake writer holds (BEGIN IMMEDIATE)."""
    _metrics, base = served
    with transaction(factory) as writer:
        writer.execute(text("UPDATE mailbox_states SET state = state"))  # the write lock is held
        assert _get(base + "/healthz")[0] == 200
        assert _samples(_get(base + "/metrics")[2])[("mailgateway_database_up", ())] == 1
