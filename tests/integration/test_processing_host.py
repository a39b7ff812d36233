"""Processing in its own process, beside the real daemon (issue 19: accepting never waits for it).

* The daemon runs processing in a child process, the processing host, whose own child is the
  analysis worker (a slow message is still killed alone: test_slow_message.py).
* Accepting does not depend on it: with the host frozen (SIGSTOP), SMTP keeps answering 250 and the
  messages wait, ``received``, until it runs again.
* A host killed with SIGKILL (and its worker with it) is restarted by the daemon, and every
  declaration, the one it held included, ends processed once: one case, never two acknowledgements.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from mailgateway.processes import AHEAD_NAME, ANALYSIS_NAME, HOST_NAME
from tests.support.chaos import case_origins, db_tally
from tests.support.gateway import GatewayConfig, RunningGateway, declaration
from tests.support.processes import children, descendants, gone, named, parent
from tests.support.servers import free_port, wait_for


def _hosts(daemon: int) -> list[int]:
    """The daemon's processing hosts (forks of its fork server, mailgateway/processes.py)."""
    return named(descendants(daemon), HOST_NAME)


def _holds_gate(pid: int, lock: Path) -> bool:
    """``pid`` holds the flock of ``lock`` (/proc/locks: FLOCK ADVISORY WRITE pid maj:min:inode).
    A line with « -> » is a request still waiting for the lock, not a holder: a host paused while
    it waits for the gate holds nothing (the daemon writes on), and is killed as silent, later."""
    inode = lock.stat().st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields:
            continue
        if "FLOCK" in fields and str(pid) in fields and any(f.endswith(f":{inode}") for f in fields):
            return True
    return False


def _one(pids: list[int]) -> int | None:
    return pids[0] if len(pids) == 1 else None


def _workers(host: int) -> tuple[int, int] | None:
    """The host's two analysis workers, once both run: the batches' (at the host's priority)
    and the one ahead (nice 19, processing/ahead.py)."""
    batches, ahead = named(children(host), ANALYSIS_NAME), named(children(host), AHEAD_NAME)
    with contextlib.suppress(ProcessLookupError):
        if len(batches) == 1 and len(ahead) == 1 and os.getpriority(os.PRIO_PROCESS, ahead[0]) == 19:
            return batches[0], ahead[0]
    return None


def _statuses(config: GatewayConfig, ids: list[str]) -> dict[str, list[str]]:
    by_mid = db_tally(config.db_path).by_message_id
    return {m: [status for status, _case in by_mid.get(m, [])] for m in ids}


def _received(config: GatewayConfig) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{config.db_path}?mode=ro", uri=True, timeout=30)) as db:
        return int(db.execute("SELECT count(*) FROM inbound_messages WHERE status = 'received'").fetchone()[0])


def _acknowledgements(config: GatewayConfig) -> dict[str, int]:
    """Case reference -> acknowledgements queued for it."""
    with contextlib.closing(sqlite3.connect(f"file:{config.db_path}?mode=ro", uri=True, timeout=30)) as db:
        rows = db.execute("SELECT c.reference, count(o.id) FROM cases c LEFT JOIN outbound_messages o "
                          "ON o.case_id = c.id AND o.kind = 'accuse_reception' GROUP BY c.reference").fetchall()
    return {ref: n for ref, n in rows}


def _warm(gw: RunningGateway, config: GatewayConfig) -> None:
    gw.send(declaration("warm@chu-nantes.test"))
    wait_for(lambda: _statuses(config, ["warm@chu-nantes.test"])["warm@chu-nantes.test"] == ["processed"],
             timeout=60)


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")


def test_hosts_are_forks_of_a_fork_server_that_imported_the_daemon_and_their_worker_a_fork_of_them(
        tmp_path: Path) -> None:
    """Issue 19, the restart: a spawned host imported the whole package (≈2 s) after the daemon had,
    and its spawned worker ≈1.3 s more, before the first acknowledgement could leave. The host is a
    fork of the fork server, which imported the host's modules beside the daemon's own imports,
    and the batches' worker a fork of its host: nothing is left to import. A killed host's
    successor is forked from the same server, and processes."""
    config = GatewayConfig(tmp_path / "gw")
    with RunningGateway(config) as gw:
        _warm(gw, config)
        host = wait_for(lambda: _one(_hosts(gw.proc.pid)), timeout=30)
        server = parent(host)
        assert parent(server) == gw.proc.pid
        assert b"multiprocessing.forkserver" in _cmdline(server) and b"mailgateway.processing.host" in _cmdline(server)
        worker, ahead = wait_for(lambda: _workers(host), timeout=30)
        assert _cmdline(host) == _cmdline(worker) == _cmdline(server)  # forks: no new interpreter
        assert b"spawn_main" in _cmdline(ahead)  # spawned, at nice 19: nothing waits for it
        os.kill(host, signal.SIGKILL)
        restarted = wait_for(lambda: next((p for p in _hosts(gw.proc.pid) if p != host), None), timeout=30)
        assert parent(restarted) == server
        gw.send(declaration("after-restart@chu-nantes.test"))
        wait_for(lambda: _statuses(config, ["after-restart@chu-nantes.test"])["after-restart@chu-nantes.test"]
                 == ["processed"], timeout=60)
        # The fork server killed: its host dies with it, the log says why, and a new server forks the next.
        os.kill(server, signal.SIGKILL)
        wait_for(lambda: "(its exit status lost: the fork server died or was killed)" in gw.log(), timeout=30)
        third = wait_for(lambda: next((p for p in _hosts(gw.proc.pid) if p not in (host, restarted)), None),
                         timeout=60)
        assert parent(third) not in (server, gw.proc.pid)
        gw.send(declaration("new-server@chu-nantes.test"))
        wait_for(lambda: _statuses(config, ["new-server@chu-nantes.test"])["new-server@chu-nantes.test"]
                 == ["processed"], timeout=60)
        assert gw.stop() == 0, gw.log()
    assert "Traceback" not in gw.log_path.read_text()


def test_a_stopped_fork_server_is_replaced_and_holds_neither_processing_nor_the_stop(tmp_path: Path) -> None:
    """An outside tester: the fork server stopped (SIGSTOP) and the host killed, the daemon never
    learnt of the host's death (the server reports it), and at SIGTERM it waited for that report for
    ever (systemd SIGKILLs it only after TimeoutStopSec, 60 s). The kernel now tells of the death
    (a pidfd); a server that does not report it is killed, and the next host comes from a new one."""
    config = GatewayConfig(tmp_path / "gw")
    gw = RunningGateway(config)
    server = None
    try:
        _warm(gw, config)
        host = wait_for(lambda: _one(_hosts(gw.proc.pid)), timeout=30)
        server = parent(host)
        os.kill(server, signal.SIGSTOP)
        os.kill(host, signal.SIGKILL)
        gw.send(declaration("server-stopped@chu-nantes.test"))  # intake goes on: raises unless 250
        wait_for(lambda: _statuses(config, ["server-stopped@chu-nantes.test"])["server-stopped@chu-nantes.test"]
                 == ["processed"], timeout=60)
        restarted = _one(_hosts(gw.proc.pid))
        assert restarted is not None and parent(restarted) != server
        assert f"the fork server ({server}) did not report the exit of processing host {host}" in gw.log()
        assert gw.stop(timeout=40) == 0, gw.log()
    finally:
        if server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server, signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(gw.proc.pid, signal.SIGKILL)
        gw.stop()


def test_smtp_answers_250_while_the_processing_host_is_frozen(tmp_path: Path) -> None:
    config = GatewayConfig(tmp_path / "gw")
    with RunningGateway(config) as gw:
        _warm(gw, config)
        host = wait_for(lambda: _one(_hosts(gw.proc.pid)), timeout=30)
        # Its own children: the analysis workers ([processing] isolation = "process", the default).
        wait_for(lambda: _workers(host), timeout=30)
        # Frozen while idle: not holding the write gate (a host frozen with it is the supervision
        # test's case, test_processing_supervision.py: killed after host_stall_seconds).
        lock = Path(f"{config.db_path}.write-lock")
        os.kill(host, signal.SIGSTOP)
        while _holds_gate(host, lock):
            os.kill(host, signal.SIGCONT)
            time.sleep(0.05)
            os.kill(host, signal.SIGSTOP)
        try:
            ids = [f"frozen-{n}@chu-nantes.test" for n in range(20)]
            for mid in ids:
                gw.send(declaration(mid))  # raises unless 250
            # Stored, and nobody processed them: processing is not in the process that accepts.
            # (The Message-ID column is filled by processing: count the rows instead.)
            assert _received(config) == len(ids)
        finally:
            os.kill(host, signal.SIGCONT)
        wait_for(lambda: _statuses(config, ids) == {m: ["processed"] for m in ids}, timeout=120)
        assert gw.stop() == 0, gw.log()
    assert "Traceback" not in gw.log_path.read_text()


def test_a_killed_processing_host_is_restarted_and_every_declaration_processed_once(tmp_path: Path) -> None:
    config = GatewayConfig(tmp_path / "gw")
    with RunningGateway(config) as gw:
        _warm(gw, config)
        host = wait_for(lambda: _one(_hosts(gw.proc.pid)), timeout=30)
        worker, ahead = wait_for(lambda: _workers(host), timeout=30)
        ids = [f"kill-{n}@chu-nantes.test" for n in range(40)]
        errors: list[BaseException] = []

        def send_all() -> None:
            try:
                for mid in ids:
                    gw.send(declaration(mid))
            except BaseException as exc:  # reported below: every declaration must get its 250
                errors.append(exc)

        sender = threading.Thread(target=send_all)
        sender.start()
        # Kill it while it works: some processed, some not yet.
        wait_for(lambda: sum(s == ["processed"] for s in _statuses(config, ids).values()) >= 3, timeout=60)
        os.kill(host, signal.SIGKILL)
        wait_for(lambda: gone(worker) and gone(ahead), timeout=10)  # the analysis workers die with their host
        restarted = wait_for(lambda: next((p for p in _hosts(gw.proc.pid) if p != host), None),
                             timeout=30)
        sender.join(timeout=120)
        assert not errors, errors
        wait_for(lambda: _statuses(config, ids) == {m: ["processed"] for m in ids}, timeout=180)
        assert _hosts(gw.proc.pid) == [restarted]
        origins = case_origins(config.db_path)
        assert all(len(origins.get(m, [])) == 1 for m in ids), origins
        acks = _acknowledgements(config)
        # At most one (the per-sender acknowledgement cap holds back the rest of a burst).
        assert max(acks[origins[m][0]] for m in ids) == 1, acks
        assert db_tally(config.db_path).inbound_total == len(ids) + 1
        assert gw.stop() == 0, gw.log()
    log = gw.log_path.read_text()
    assert "processing host exited (exit code -9)" in log
    assert log.count("processing host") >= 2


def test_host_thread_processes_in_the_daemons_process(tmp_path: Path) -> None:
    """``[processing] host = "thread"`` (diagnosis): no host; the analysis worker is the daemon's child."""
    config = GatewayConfig(tmp_path / "gw", extra='[processing]\nhost = "thread"\n')
    with RunningGateway(config) as gw:
        _warm(gw, config)
        worker = wait_for(lambda: _one(named(children(gw.proc.pid), ANALYSIS_NAME)), timeout=30)
        assert children(worker) == [] and _hosts(gw.proc.pid) == []
        assert gw.stop() == 0, gw.log()
    assert "processing host" not in gw.log_path.read_text()


def test_a_daemon_killed_alone_leaves_neither_host_nor_worker(tmp_path: Path) -> None:
    """SIGKILL of the daemon process only (not its group): its children must not go on processing."""
    config = GatewayConfig(tmp_path / "gw")
    gw = RunningGateway(config)
    try:
        _warm(gw, config)
        host = wait_for(lambda: _one(_hosts(gw.proc.pid)), timeout=30)
        worker, ahead = wait_for(lambda: _workers(host), timeout=30)
        os.kill(gw.proc.pid, signal.SIGKILL)
        gw.proc.wait(timeout=10)
        wait_for(lambda: gone(host) and gone(worker) and gone(ahead), timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(gw.proc.pid, signal.SIGKILL)  # multiprocessing's resource tracker, if still there
        gw.stop()


def _get(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return str(resp.read().decode())
    except urllib.error.HTTPError as exc:  # /healthz: 503 with the reasons
        return str(exc.read().decode())


# [processing] restart back-off and /healthz bound, short for the test (settings.py validates them).
FAST_RESTART = """
[processing]
host_restart_first_seconds = 0.5
host_restart_max_seconds = 2.0
host_down_unhealthy_seconds = 0.3
"""


def test_a_host_that_cannot_start_is_retried_reported_unhealthy_and_intake_goes_on(tmp_path: Path) -> None:
    """The restarted host cannot build its services (its DKIM key file is gone): the daemon keeps
    trying with back-off, /healthz says processing is down, SMTP still answers 250; once the file
    is back a host starts and the message waiting is processed. The back-off and the /healthz bound
    are shortened (defaults 1 s doubling to 30 s, 10 s: the test waited 41 s for them)."""
    config = GatewayConfig(tmp_path / "gw", metrics_port=free_port(), extra=FAST_RESTART)
    port = config.metrics_port or 0
    with RunningGateway(config) as gw:
        _warm(gw, config)
        host = wait_for(lambda: _one(_hosts(gw.proc.pid)), timeout=30)
        away = config.key_file.with_suffix(".away")
        config.key_file.rename(away)
        try:
            os.kill(host, signal.SIGKILL)
            wait_for(lambda: "processing host down for" in _get(port, "/healthz"), timeout=60, interval=0.1)
            gw.send(declaration("while-down@chu-nantes.test"))  # raises unless 250
            assert _received(config) == 1
            # The restarted host fails (no key file) and the daemon tries again.
            wait_for(lambda: "processing host exited (exit code 1)" in gw.log_path.read_text(), timeout=60,
                     interval=0.1)
        finally:
            away.rename(config.key_file)
        wait_for(lambda: _get(port, "/healthz") == "ok\n", timeout=90, interval=0.5)
        wait_for(lambda: _statuses(config, ["while-down@chu-nantes.test"])["while-down@chu-nantes.test"]
                 == ["processed"], timeout=60)
        restarts = [line for line in _get(port, "/metrics").splitlines()
                    if line.startswith("mailgateway_processing_host_restarts_total ")]
        assert restarts and float(restarts[0].split()[1]) >= 2, restarts
        assert gw.stop() == 0, gw.log()
    log = gw.log_path.read_text()
    assert "processing host exited (exit code 1)" in log
    # Back-off: the first restart after 0.5 s, the next after 1 s (doubled per death).
    assert "restarting it in 0.5 s" in log and "restarting it in 1 s" in log, log[-4000:]
