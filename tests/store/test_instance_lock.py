"""One daemon per SQLite database (store/engine.py ``hold_instance``), whatever path names it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailgateway.store.engine import InstanceRunning, hold_instance
from tests.support.gateway import PROJECT_ROOT

HOLDER = ("import sys, time; from mailgateway.store.engine import hold_instance; "
          "hold_instance(sys.argv[1]); print('held', flush=True); time.sleep(60)")


def test_the_database_reached_through_a_symlink_is_the_same_database(tmp_path: Path) -> None:
    """An outside tester ran two daemons on one file, the second through a symlink to it."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "mailgateway.db").touch()
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "mailgateway.db").symlink_to(real / "mailgateway.db")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, f"sqlite:///{real}/mailgateway.db"],
                              cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(InstanceRunning, match="une autre instance de mailgateway utilise déjà cette base"):
            hold_instance(f"sqlite:///{tmp_path}/link/mailgateway.db", wait_seconds=0.3)
        assert time.monotonic() - started < 10
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    # Its holder gone, the claim is free (the kernel released it with the process).
    fd = hold_instance(f"sqlite:///{tmp_path}/link/mailgateway.db", wait_seconds=0.3)
    assert fd is not None
    os.close(fd)


def test_another_database_or_a_missing_directory_holds_nothing(tmp_path: Path) -> None:
    assert hold_instance("postgresql+psycopg://x@127.0.0.1/db") is None
    assert hold_instance(f"sqlite:///{tmp_path}/missing/mailgateway.db") is None
