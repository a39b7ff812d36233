"""``mailgateway run`` as systemd runs it: READY/WATCHDOG/STOPPING on $NOTIFY_SOCKET, graceful
SIGTERM, SIGHUP reload without dropping the SMTP listener, startup failures, metrics over HTTP."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import DECLARATION, PROJECT_ROOT, GatewayConfig, RunningGateway, wait_until
from tests.support.ops import NotifyListener
from tests.support.servers import free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(tmp_path / "notify")
    yield listener
    listener.close()


def _start(config: GatewayConfig, notify: NotifyListener) -> RunningGateway:
    # WATCHDOG_USEC as systemd sets it for WatchdogSec=; short so the test sees several pings.
    return RunningGateway(config, extra_env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"})


def _recipients(config: GatewayConfig) -> set[str]:
    with sqlite3.connect(config.db_path) as db:
        return {r for (r,) in db.execute("select recipient from outbound_messages")}


def _scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return resp.read().decode()


def test_ready_watchdog_metrics_then_sigterm_drains_and_exits_0(tmp_path: Path, notify: NotifyListener) -> None:
    config = GatewayConfig(tmp_path / "gw", metrics_port=free_port())
    gw = _start(config, notify)
    try:
        ready = notify.wait_for("READY=1")
        assert any(line.startswith("STATUS=running: SMTP 127.0.0.1:") for line in notify.messages[ready - 1])
        notify.wait_for("WATCHDOG=1", after=ready, count=2)
        assert config.metrics_port is not None
        assert _scrape(config.metrics_port, "/healthz") == "ok\n"
        gw.send(DECLARATION.encode(), mail_from="dsi@chu-nantes.test")
        processed = 'mailgateway_messages_processed_total{kind="declaration",status="processed"} 1.0'
        text = wait_until(lambda: next((t for t in [_scrape(config.metrics_port or 0)] if processed in t), None))
        assert 'mailgateway_messages_accepted_total{source="smtp"} 1.0' in text
        assert "mailgateway_processing_seconds_count 1.0" in text
        assert "mailgateway_up 1.0" in text
        assert "mailgateway_cases_open 1.0" in text
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(timeout=40) == 0, gw.log()
        notify.wait_for("STOPPING=1", after=ready)
    finally:
        gw.stop()
    log = gw.log_path.read_text()
    assert "Traceback" not in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    about = [line for line in lines if "decl-1@chu-nantes.test" in str(line.get("message_id"))]
    assert about and str(about[-1].get("case_ref")).startswith("SSI-PDL-") and about[-1]["inbound_id"] == 1


def test_sighup_reloads_staff_without_dropping_the_smtp_connection(tmp_path: Path, notify: NotifyListener) -> None:
    config = GatewayConfig(tmp_path / "gw")
    with _start(config, notify) as gw:
        ready = notify.wait_for("READY=1")
        client = smtplib.SMTP("127.0.0.1", config.smtp_port, local_hostname="client.test", timeout=30)
        try:
            client.ehlo()
            config.staff = (*config.staff, ("nouvelle.recrue@ars.test", "PDL", "agent"))
            config.write()
            gw.proc.send_signal(signal.SIGHUP)
            after = notify.wait_for("RELOADING=1", after=ready)
            notify.wait_for("READY=1", after=after)
            # The connection opened before the reload still works: the listener was kept.
            client.sendmail("dsi@chu-nantes.test", ["ssi-pdl@ars.test"], DECLARATION.encode())
        finally:
            client.quit()
        # The new staff member is notified of the new case: the reloaded list is in force.
        wait_until(lambda: "nouvelle.recrue@ars.test" in _recipients(config), timeout=15)
        assert "configuration reloaded" in gw.log()


def test_a_reload_refuses_what_a_start_refuses_and_says_what_waits_for_a_restart(
        tmp_path: Path, notify: NotifyListener) -> None:
    """An outside tester: with the DKIM key file gone, a SIGHUP logged « configuration
    reloaded » (the next restart then failed), and a new SMTP port was ignored without a word."""
    config = GatewayConfig(tmp_path / "gw")
    with _start(config, notify) as gw:
        ready = notify.wait_for("READY=1")
        key = config.key_file.read_bytes()
        config.key_file.unlink()
        gw.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload refused, configuration kept" in gw.log(), timeout=30)
        assert "dkim.keys[0].private_key_file" in gw.log() and "configuration reloaded" not in gw.log()
        config.key_file.write_bytes(key)
        config.smtp_port = free_port()
        config.write()
        gw.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in gw.log(), timeout=30)
        assert "reload: [intake] changed; these take effect at the next restart" in gw.log()
        assert notify.wait_for("READY=1", after=ready)


def test_bad_configuration_exits_2_with_the_key_path(tmp_path: Path) -> None:
    config = GatewayConfig(tmp_path / "gw", extra="[intake.smtp.tls]\nport = 1\n")
    proc = config.cli("run", check=False, timeout=60)
    assert proc.returncode == 2
    assert "intake.smtp.tls" in proc.stderr


def test_smtp_port_in_use_exits_1_with_the_reason(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = GatewayConfig(tmp_path / "gw", smtp_port=busy.getsockname()[1])
        proc = config.cli("run", check=False, timeout=60)
    assert proc.returncode == 1
    assert "démarrage impossible" in proc.stderr and "address already in use" in proc.stderr.lower()


def test_a_second_daemon_on_the_same_sqlite_database_is_refused_and_a_killed_ones_restarts(tmp_path: Path) -> None:
    """SQLite is for one instance (docs/operations.md §7): a second ``run`` on the same database
    file, from another configuration listening elsewhere, started its own watchers, processing
    and sender beside the first (an outside tester). It now exits 1 and says why; the first goes
    on. The claim dies with its holder: after a SIGKILL the restart starts at once."""
    config = GatewayConfig(tmp_path / "gw")
    other = GatewayConfig(tmp_path / "other", database_url=f"sqlite:///{config.db_path}")
    with RunningGateway(config) as gw:
        started = time.monotonic()
        proc = other.cli("run", check=False, timeout=60)
        assert proc.returncode == 1, proc.stderr
        assert "une autre instance de mailgateway utilise déjà cette base" in proc.stderr
        assert time.monotonic() - started < 30
        with pytest.raises(OSError):
            smtplib.SMTP("127.0.0.1", other.smtp_port, timeout=5)  # it never listened
        gw.send(DECLARATION.encode(), mail_from="dsi@chu-nantes.test")  # the first goes on
        gw.kill()
    with RunningGateway(other):  # the dead one's claim is gone with it
        pass


def test_a_database_file_deleted_under_the_daemon_is_refused_unhealthy_and_not_recreated(tmp_path: Path) -> None:
    """An outside tester (ops): the database file deleted while the daemon ran — it went on
    answering 250 into the deleted file, /healthz said ok, and the restart created an empty
    database: what had been accepted was gone. Now 451 (the client keeps its message), 503 and
    database_up 0, and a restart refuses to create a new one while the write-lock file shows
    there was one."""
    import urllib.error

    config = GatewayConfig(tmp_path / "gw", metrics_port=free_port())
    assert config.metrics_port is not None
    with RunningGateway(config) as gw:
        gw.send(DECLARATION.encode(), mail_from="dsi@chu-nantes.test")
        config.db_path.rename(tmp_path / "moved.db")  # as an rm or a copy over it would
        with pytest.raises(smtplib.SMTPDataError) as refused:
            gw.send(DECLARATION.replace("decl-1@", "decl-2@").encode(), mail_from="dsi@chu-nantes.test")
        assert refused.value.smtp_code == 451
        with pytest.raises(urllib.error.HTTPError) as unhealthy:
            _scrape(config.metrics_port, "/healthz")
        assert unhealthy.value.code == 503
        assert "fichier de la base de données supprimé" in unhealthy.value.read().decode()
        assert "mailgateway_database_up 0.0" in _scrape(config.metrics_port)
    assert not config.db_path.exists()
    proc = config.cli("run", check=False, timeout=60)
    assert proc.returncode != 0 and "alors que mailgateway.db.write-lock montre qu'elle a existé" in proc.stderr
    assert not config.db_path.exists()
    config.db_path.touch()  # an empty file in its place is no database either (outside tester)
    proc = config.cli("db", "upgrade", check=False)
    assert proc.returncode == 2 and "base de données vide (0 octet)" in proc.stderr
    assert config.db_path.stat().st_size == 0


def test_metrics_port_in_use_exits_1_and_releases_the_smtp_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = GatewayConfig(tmp_path / "gw", metrics_port=busy.getsockname()[1])
        proc = config.cli("run", check=False, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "address already in use" in proc.stderr.lower()
    with socket.socket() as again:  # the SMTP listener was closed on the way out
        again.bind(("127.0.0.1", config.smtp_port))


def test_a_signing_key_that_does_not_load_exits_2_as_check_config_does(tmp_path: Path) -> None:
    """An empty PEM file: check-config exited 2, run 1 — and systemd's Restart=on-failure started
    it again every 5 s instead of stopping at RestartPreventExitStatus=2 (outside tester)."""
    config = GatewayConfig(tmp_path / "gw")
    config.key_file.write_bytes(b"")
    checked = config.cli("check-config", check=False)
    ran = config.cli("run", check=False, timeout=60)
    assert (checked.returncode, ran.returncode) == (2, 2), ran.stderr
    reason = next(line for line in checked.stderr.splitlines() if line.startswith("dkim.keys[0]:"))
    assert reason in ran.stderr.splitlines()


def test_a_sighup_during_the_start_is_a_reload_once_ready(tmp_path: Path, notify: NotifyListener) -> None:
    """An outside tester: a SIGHUP in the first moments (the imports, the start, the SMTP listener
    already open before the handler) ended the daemon, the signal's default action, with no log
    line. It is remembered, and the daemon reloads the file once ready."""
    config = GatewayConfig(tmp_path / "gw")
    config.write()
    log = open(tmp_path / "daemon.log", "wb")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "NOTIFY_SOCKET": notify.path}
    env.pop("MAILGATEWAY_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "mailgateway", "run", "-c", str(config.path)], cwd=PROJECT_ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        time.sleep(0.5)  # importing: long before "ready"
        config.staff = (*config.staff, ("nouvelle.recrue@ars.test", "PDL", "agent"))
        config.write()
        proc.send_signal(signal.SIGHUP)
        notify.wait_for("READY=1")
        wait_until(lambda: "configuration reloaded" in (tmp_path / "daemon.log").read_text(), timeout=30)
        assert proc.poll() is None
        with smtplib.SMTP("127.0.0.1", config.smtp_port, local_hostname="client.test", timeout=30) as client:
            client.sendmail("dsi@chu-nantes.test", ["ssi-pdl@ars.test"], DECLARATION.encode())
        wait_until(lambda: "nouvelle.recrue@ars.test" in _recipients(config), timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=30) == 0, (tmp_path / "daemon.log").read_text()[-4000:]
        finally:
            log.close()
