"""Prometheus metrics and health endpoint on ``[metrics] host:port`` (docs/operations.md: observability).

* ``GET /metrics``: the Prometheus text exposition format (OpenMetrics when the scraper asks for
  it), every name prefixed ``mailgateway_``.
* ``GET /healthz``: ``200 ok`` or ``503`` with one reason per line when a health check fails
  (database unreachable, an IMAP mailbox unreachable for longer than
  ``[metrics] mailbox_unhealthy_after_seconds``).

Design: a :class:`Metrics` object owned by the daemon, with its own ``CollectorRegistry`` (no
process-global registry: tests and several daemons in one process do not share counters).
Event counters (accepted, processed, deliveries, scheduler runs) are incremented by hooks; the
state gauges (outbox depth and oldest age, backlog, quarantine, open cases, mailboxes) are read
from the database at scrape time through :func:`mailgateway.status.snapshot`, so they are true
across several instances and after a restart, and agree with ``mailgateway status``.

The HTTP server is the standard library's threading server in a daemon thread, not the event
loop: a scrape runs blocking database queries, which must never stall SMTP intake; and a
``/healthz`` that answers while the event loop is stuck is fine because the systemd watchdog,
fed from the loop, catches that case.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from mailgateway import __version__
from mailgateway.clock import Clock, SystemClock, aware
from mailgateway.directory.staff import all_staff
from mailgateway.interfaces import DaemonContext, MailboxHealthView
from mailgateway.settings import Settings
from mailgateway.status import DEFAULT_MAILBOX_GRACE, MailboxView, read_mailboxes, snapshot
from mailgateway.store.engine import DatabaseFileWatch, reading

if TYPE_CHECKING:
    from mailgateway.processing.runner import Result

__all__ = ["HealthCheck", "Metrics", "MetricsServer"]

log = logging.getLogger("mailgateway.metrics")

NAMESPACE = "mailgateway"
# A check returns None when healthy, else the reason(s) shown by /healthz.
HealthCheck = Callable[[], str | Sequence[str] | None]
MailboxSource = Callable[[], Sequence[MailboxView]]

# Processing of one message: parse + DKIM (DNS) + one transaction; seconds.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, clock: Clock | None = None,
                 mailbox_grace_seconds: float = DEFAULT_MAILBOX_GRACE) -> None:
        self.clock = clock or SystemClock()
        self.mailbox_grace_seconds = mailbox_grace_seconds
        self.started_at = self.clock.now()
        self.registry = CollectorRegistry()
        r, ns = self.registry, NAMESPACE
        Info("build", "mailgateway version", namespace=ns, registry=r).info({"version": __version__})
        self.accepted_total = Counter("messages_accepted", "Messages durably accepted, by source",
                                      ["source"], namespace=ns, registry=r)
        self.processed_total = Counter("messages_processed", "Messages processed, by kind and outcome",
                                       ["kind", "status"], namespace=ns, registry=r)
        self.quarantined_total = Counter("messages_quarantined", "Messages quarantined, by kind",
                                         ["kind"], namespace=ns, registry=r)
        self.processing_seconds = Histogram("processing_seconds", "Time to process one message",
                                            namespace=ns, registry=r, buckets=_LATENCY_BUCKETS)
        # Deliveries are counted by the sender (``Sender.stats``) and read at scrape time, plus
        # what ``delivery()`` reports; emitted by the state collector.
        self._deliveries: collections.Counter[str] = collections.Counter()
        self._delivery_sources: list[Callable[[], Mapping[str, int]]] = []
        self._lock = threading.Lock()
        self.scheduler_runs_total = Counter("scheduler_runs", "Scheduled job runs, by job and outcome",
                                            ["job", "outcome"], namespace=ns, registry=r)
        self.reloads_total = Counter("reloads", "Configuration reloads (SIGHUP)", namespace=ns, registry=r)
        self.up = Gauge("up", "1 while the daemon runs", namespace=ns, registry=r)
        # The processing host (processing/host.py) died and was started again (issue 19).
        self.processing_host_restarts_total = Counter(
            "processing_host_restarts", "Processing host processes that died and were restarted",
            namespace=ns, registry=r)
        # Seconds processing made no progress while a message was due (daemon.py; 0 when fine).
        self.processing_stalled_seconds = Gauge(
            "processing_stalled_seconds", "Seconds without processing progress while a message is due",
            namespace=ns, registry=r)
        self._checks: dict[str, HealthCheck] = {}
        self._factory: sessionmaker[Session] | None = None
        self._watch: DatabaseFileWatch | None = None
        self._mailboxes: MailboxSource | None = None
        self._server: MetricsServer | None = None
        # Who the staff are and the failure window (``staff_mail_failed``); set by the daemon.
        self._settings: Settings | None = None
        self.registry.register(_StateCollector(self))

    # -- event hooks (called from any thread) ---------------------------------------------------
    def accepted(self, source: str) -> None:
        self.accepted_total.labels(source).inc()

    def on_processed(self, result: Result) -> None:
        """Processor hook (``Processor.on_result``): one call per message handled."""
        if result.status == "skipped":
            return
        kind = result.kind or "unknown"
        self.processed_total.labels(kind, result.status).inc()
        if result.status == "quarantined":
            self.quarantined_total.labels(kind).inc()
        seconds = getattr(result, "seconds", None)
        if isinstance(seconds, int | float) and seconds > 0:
            self.processing_seconds.observe(seconds)

    def processing_host_exited(self) -> None:
        """The processing host died (it is restarted): ``processing_host_restarts_total``."""
        self.processing_host_restarts_total.inc()

    def delivery(self, outcome: str, count: int = 1) -> None:
        """``sent``, ``temporary``, ``permanent``, ``expired`` or ``refused``."""
        with self._lock:
            self._deliveries[outcome] += count

    def attach_delivery_counts(self, source: Callable[[], Mapping[str, int]]) -> None:
        """A running count of delivery attempts by outcome (the sender's ``stats``)."""
        self._delivery_sources.append(source)

    def delivery_counts(self) -> dict[str, int]:
        with self._lock:
            total = collections.Counter(self._deliveries)
        for source in self._delivery_sources:
            total.update(dict(source()))
        return dict(total)

    def scheduler_run(self, job: str, outcome: str = "ok") -> None:
        self.scheduler_runs_total.labels(job, outcome).inc()

    # -- sources and health ---------------------------------------------------------------------
    def attach_database(self, factory: sessionmaker[Session]) -> None:
        """Read state gauges from this database and check it in /healthz."""
        self._factory = factory
        self._watch = DatabaseFileWatch(factory.kw["bind"])
        self.add_health_check("database", self._check_database)
        self.add_health_check("mailboxes", self._check_mailboxes)

    def attach_settings(self, settings: Settings) -> None:
        """The configuration the state gauges need (staff list, ``staff_failure_window_hours``)."""
        self._settings = settings

    def attach_mailboxes(self, source: MailboxSource) -> None:
        """Live mailbox state (the IMAP watchers of this process) instead of the database's."""
        self._mailboxes = source

    def add_health_check(self, name: str, check: HealthCheck) -> None:
        self._checks[name] = check

    def health(self) -> list[str]:
        """Reasons the gateway is unhealthy; empty when healthy. A failing check is a reason."""
        problems: list[str] = []
        for name, check in list(self._checks.items()):
            try:
                outcome = check()
            except Exception as exc:
                outcome = f"{name}: {type(exc).__name__}: {exc}"
            if isinstance(outcome, str):
                problems.append(outcome)
            elif outcome:
                problems.extend(outcome)
        return problems

    def _check_database(self) -> str | None:
        assert self._factory is not None
        lost = self._watch.problem() if self._watch is not None else None
        if lost is not None:  # reads still succeed, from the deleted file (outside tester)
            return lost
        try:
            with reading(self._factory) as session:
                session.execute(text("SELECT 1"))
        except Exception as exc:
            return f"base de données injoignable : {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        return None

    def mailboxes(self) -> Sequence[MailboxView]:
        if self._mailboxes is not None:
            return self._mailboxes()
        if self._factory is None:
            return ()
        with reading(self._factory) as session:
            return read_mailboxes(session)

    def _check_mailboxes(self) -> list[str]:
        now = self.clock.now()
        # Count silence from our own start at the earliest: a mailbox that is still connecting a
        # minute after startup is not yet "unreachable for too long".
        views = [_floor_contact(m, self.started_at) for m in self.mailboxes()]
        return [p for m in views if (p := m.problem(now, self.mailbox_grace_seconds))]

    def render(self, accept: str = "") -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    # -- daemon extension (``interfaces.Extension``) -------------------------------------------
    async def start(self, ctx: DaemonContext) -> None:
        self.attach_database(ctx.factory)
        self.attach_settings(ctx.settings)
        if ctx.mailbox_health() is not None:
            self.attach_mailboxes(lambda: [_live_view(h) for h in ctx.mailbox_health() or ()])
        stats = ctx.delivery_counts()
        if stats is not None:
            self.attach_delivery_counts(lambda: stats)
        settings = ctx.settings.metrics
        if settings is not None:
            self.mailbox_grace_seconds = settings.mailbox_unhealthy_after_seconds
            self._server = MetricsServer(self, settings.host, settings.port)
            self._server.start()
            log.info("metrics on http://%s:%s/metrics", settings.host, self._server.port)
        self.up.set(1)

    async def stop(self, ctx: DaemonContext) -> None:
        self.up.set(0)
        if self._server is not None:
            self._server.stop()
            self._server = None

    def reload(self, ctx: DaemonContext) -> None:
        self.reloads_total.inc()
        self.attach_settings(ctx.settings)
        if ctx.settings.metrics is not None:
            self.mailbox_grace_seconds = ctx.settings.metrics.mailbox_unhealthy_after_seconds

    @property
    def server(self) -> MetricsServer | None:
        return self._server


def _live_view(health: MailboxHealthView) -> MailboxView:
    """``intake.imap.MailboxHealth`` -> the view shared with ``mailgateway status``."""
    return MailboxView(f"{health.region}:{health.folder}", health.state, health.last_contact_at,
                       health.last_message_at, health.last_error)


def _floor_contact(view: MailboxView, floor: datetime) -> MailboxView:
    last = aware(view.last_contact_at) if view.last_contact_at is not None else None
    return replace(view, last_contact_at=floor) if last is None or last < floor else view


class _StateCollector(Collector):
    """State gauges read at scrape time (database + live mailboxes)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return ()  # dynamic: nothing to check for duplicates at registration

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        deliveries = CounterMetricFamily(f"{NAMESPACE}_deliveries", "Delivery attempts to the relay, by outcome",
                                         labels=["outcome"])
        for outcome, n in sorted(m.delivery_counts().items()):
            deliveries.add_metric([outcome], n)
        yield deliveries
        if m._factory is None:
            return
        up = GaugeMetricFamily(f"{NAMESPACE}_database_up",
                               "1 when the last database read succeeded (0: failed, or the file was deleted or "
                               "replaced under the daemon)")
        now = m.clock.now()
        if m._watch is not None and m._watch.problem() is not None:
            up.add_metric([], 0)
            yield up
            return
        try:
            with reading(m._factory) as session:
                settings = m._settings
                staff = all_staff(settings, session) if settings is not None else set()
                since = now - timedelta(hours=settings.outbound.staff_failure_window_hours) if settings else None
                snap = snapshot(session, now, full=False, staff=staff, failures_since=since)
        except Exception as exc:
            log.warning("metrics: database read failed: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield _gauge("inbound_backlog", "Accepted messages not yet processed", snap.inbound_backlog)
        yield _gauge("inbound_quarantined", "Messages in quarantine", snap.quarantined)
        depth = GaugeMetricFamily(f"{NAMESPACE}_outbox_depth", "Outbound messages waiting, by status",
                                  labels=["status"])
        for status, n in snap.outbox.items():
            depth.add_metric([status], n)
        yield depth
        yield _gauge("outbox_oldest_age_seconds", "Age of the oldest outbound message waiting",
                     snap.outbox_oldest_age_seconds or 0.0)
        yield _gauge("staff_notices_deferred", "Staff notifications put off behind a backlog (processing/later.py)",
                     snap.staff_notices_deferred)
        yield _gauge("staff_notices_deferred_oldest_age_seconds", "Age of the oldest deferred staff notification",
                     snap.staff_notices_oldest_age_seconds or 0.0)
        yield _gauge("cases_open", "Open cases", snap.cases_open)
        yield _gauge("staff_mail_failed", "Mail to staff refused for good or expired within "
                     "[outbound] staff_failure_window_hours", snap.staff_failed)
        try:
            views = m.mailboxes() if m._mailboxes is not None else snap.mailboxes
        except Exception as exc:
            log.warning("metrics: mailbox state unavailable: %s", exc)
            views = ()
        connected = GaugeMetricFamily(f"{NAMESPACE}_imap_connected",
                                      "1 when the IMAP mailbox is connected (IDLE, polling or syncing)",
                                      labels=["mailbox"])
        state = GaugeMetricFamily(f"{NAMESPACE}_imap_state", "IMAP watcher state (1 for the current one)",
                                  labels=["mailbox", "state"])
        age = GaugeMetricFamily(f"{NAMESPACE}_imap_last_contact_age_seconds",
                                "Seconds since the IMAP server last answered", labels=["mailbox"])
        for view in views:
            connected.add_metric([view.mailbox], 1 if view.connected else 0)
            state.add_metric([view.mailbox, view.state], 1)
            if view.last_contact_at is not None:
                age.add_metric([view.mailbox], max(0.0, (now - aware(view.last_contact_at)).total_seconds()))
        yield connected
        yield state
        yield age


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{NAMESPACE}_{name}", doc, value=value)


class MetricsServer:
    """``GET /metrics`` and ``GET /healthz`` on a threading HTTP server (port 0: any free port)."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind now (a port in use is a startup failure, raised here) and serve in a thread."""
        handler = type("Handler", (_Handler,), {"metrics": self.metrics})
        httpd = ThreadingHTTPServer((self.host, self.port), handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="metrics-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None


class _Handler(BaseHTTPRequestHandler):
    metrics: Metrics
    server_version = f"mailgateway/{__version__}"
    # A scraper that stops reading must not hold a thread forever.
    timeout = 30

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, content_type = self.metrics.render(self.headers.get("Accept", ""))
            self._reply(200, body, content_type)
        elif path == "/healthz":
            problems = self.metrics.health()
            if problems:
                self._reply(503, ("\n".join(problems) + "\n").encode())
            else:
                self._reply(200, b"ok\n")
        else:
            self._reply(404, b"not found: try /metrics or /healthz\n")

    def _reply(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics http: " + format, *args)
