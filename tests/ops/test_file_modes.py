"""``scripts/run`` left the database and the outbox world-readable. The daemon and the run
command create the database, the Maildir outbox and the DKIM key for their owner only (0600 files,
0700 directories), whatever umask they were started with."""

from __future__ import annotations

import os
import signal
import smtplib
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgateway.processes import AHEAD_NAME, ANALYSIS_NAME, HOST_NAME
from tests.support.gateway import DECLARATION, PROJECT_ROOT, GatewayConfig, RunningGateway, wait_until
from tests.support.processes import descendants, named

pytestmark = pytest.mark.slow


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _created_files(*roots: Path) -> dict[str, int]:
    out = {}
    for root in roots:
        out[str(root)] = _mode(root)
        for path in root.rglob("*"):
            out[str(path)] = _mode(path)
    return out


def _private(modes: dict[str, int]) -> dict[str, str]:
    """Paths whose group or others bits are set (expected: none)."""
    return {p: oct(m) for p, m in modes.items() if m & 0o077}


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The umask of an interactive shell, inherited by the processes started here."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _outbox_has_mail(maildir: Path) -> bool:
    new = maildir / "new"
    return new.is_dir() and any(new.iterdir())


def test_the_daemon_creates_database_and_outbox_for_its_owner_only(tmp_path: Path, umask_022: None) -> None:
    state = tmp_path / "state"  # does not exist yet: the daemon creates it for the database
    config = GatewayConfig(tmp_path / "gw", database_url=f"sqlite:///{state / 'db' / 'mailgateway.db'}")
    with RunningGateway(config) as gw:
        gw.send(DECLARATION.encode(), mail_from="dsi@chu-nantes.test")
        wait_until(lambda: _outbox_has_mail(config.maildir), timeout=60)
    modes = _created_files(state, config.maildir)
    assert (state / "db" / "mailgateway.db").exists() and any((config.maildir / "new").iterdir())
    assert _private(modes) == {}
    assert _mode(state / "db" / "mailgateway.db") == 0o600
    assert _mode(config.maildir) == 0o700


def _umask(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Umask:"))
    return int(line.split()[1], 8)


def test_every_process_of_the_daemon_creates_files_for_its_owner_only(tmp_path: Path, umask_022: None) -> None:
    """The processing host and its analysis workers are forks of a fork server started before the
    daemon set its umask (mailgateway/processes.py): each has the daemon's, not the shell's."""
    config = GatewayConfig(tmp_path / "gw")
    with RunningGateway(config) as gw:
        gw.send(DECLARATION.encode(), mail_from="dsi@chu-nantes.test")
        wait_until(lambda: _outbox_has_mail(config.maildir), timeout=60)

        def children() -> list[int] | None:
            found = [named(descendants(gw.proc.pid), n) for n in (HOST_NAME, ANALYSIS_NAME, AHEAD_NAME)]
            return [pid for group in found for pid in group] if all(found) else None

        umasks = {pid: oct(_umask(pid)) for pid in [gw.proc.pid, *wait_until(children, timeout=60)]}
        assert set(umasks.values()) == {"0o77"}, umasks


def _sandbox(root: Path) -> None:
    """A copy of the checkout's run command whose .venv points at this checkout's interpreter:
    scripts/run works relative to its own directory (var/, .venv/), so it runs in ``root``
    without touching the real checkout, and finds its install stamp up to date (no pip)."""
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "run").write_bytes((PROJECT_ROOT / "scripts" / "run").read_bytes())
    (root / "scripts" / "run").chmod(0o755)
    (root / "pyproject.toml").write_bytes((PROJECT_ROOT / "pyproject.toml").read_bytes())
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    entry = bin_dir / "mailgateway"
    entry.write_text(f'#!/bin/sh\nexec {sys.executable} -m mailgateway "$@"\n')
    entry.chmod(0o755)
    digest = subprocess.run(["sha256sum", str(root / "pyproject.toml")], capture_output=True, text=True,
                            check=True).stdout.split()[0]
    (root / ".venv" / ".mailgateway-run-install").write_text(digest + "\n")


def test_scripts_run_creates_key_database_and_outbox_for_the_owner_only(tmp_path: Path, umask_022: None) -> None:
    root = tmp_path / "checkout"
    _sandbox(root)
    var = root / "var"
    # A configuration beside the state, as the embedded default has it (var/...); written with the
    # shell's umask, as an earlier run would have left it: the run command tightens it.
    config = GatewayConfig(var / "conf", database_url=f"sqlite:///{var / 'mailgateway.db'}")
    assert _mode(var) == 0o755
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    env.pop("MAILGATEWAY_CONFIG", None)
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen([str(root / "scripts" / "run"), "-c", str(config.path)], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            try:
                with smtplib.SMTP("127.0.0.1", config.smtp_port, local_hostname="client.test", timeout=2) as s:
                    s.noop()
                return True
            except OSError:
                return False

        wait_until(ready, timeout=60)
        with smtplib.SMTP("127.0.0.1", config.smtp_port, local_hostname="client.test", timeout=30) as s:
            s.sendmail("dsi@chu-nantes.test", ["ssi-pdl@ars.test"], DECLARATION.encode())
        wait_until(lambda: _outbox_has_mail(config.maildir), timeout=60)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    key = var / "dkim" / "mg2026.pem"
    assert key.exists() and (var / "mailgateway.db").exists()
    assert _private(_created_files(var)) == {}
    assert _mode(var) == _mode(var / "dkim") == _mode(config.maildir) == 0o700
    assert _mode(key) == _mode(var / "mailgateway.db") == 0o600
