"""The daemon's child processes: what they are forked from, what they are called, when they die.

* **The processing host is forked from multiprocessing's fork server** (docs/operations.md,
  "Process model"). ``spawn`` started each host as a new interpreter that imported the whole
  package (≈2 s here, more on a loaded machine) after the daemon had done the same: after a crash,
  the first acknowledgement waited for both, one after the other (issue 19). ``start_fork_server``
  is called by ``mailgateway run`` before the daemon's own imports: the fork server, a fresh
  single-threaded interpreter, imports the host's modules beside it, on the other core, and
  each host (the first, and any restart) is then a ``fork(2)`` of it, ready in milliseconds.
  ``fork`` of the daemon itself stays out: it runs threads (the accept writer, the sender) whose
  locks a child would inherit held (POSIX ``fork(2)``); the fork server runs none.
* **Names**: each child sets its kernel name (``comm``, 15 bytes: ``ps``, ``top``, the journal's
  ``_COMM``), so an operator sees which one burns CPU, and tests find it.
* **Parent death**: PR_SET_PDEATHSIG (prctl(2)) kills a child when its parent dies.
* **Before the daemon is ready**, its own process: owner-only files (the umask), and a SIGHUP
  remembered rather than fatal (``defer_reloads``).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.forkserver
import os
import signal
from collections.abc import Sequence
from multiprocessing.context import ForkServerContext

# Kernel names of the daemon's children (at most 15 bytes, prctl(2) PR_SET_NAME).
HOST_NAME = "mgw-processing"
ANALYSIS_NAME = "mgw-analysis"
AHEAD_NAME = "mgw-ahead"

# Everything the daemon and its children create (SQLite database and its WAL, the Maildir outbox,
# reports) holds mail of the agencies: owner only, 0600 files and 0700 directories
# (docs/guarantees.md), whatever umask it was started with (systemd's UMask=, a shell's 022).
OWNER_ONLY_UMASK = 0o077

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15

_reload_deferred = False  # a SIGHUP came before the daemon could reload (defer_reloads)


def owner_only_files() -> None:
    """Files and directories created from now on by this process and its children: owner only."""
    os.umask(OWNER_ONLY_UMASK)


def defer_reloads() -> None:
    """From now until the daemon installs its own handler: a SIGHUP (``kill -HUP``, config
    management's reload) would end the process, the signal's default action, during the imports
    and the start (≈2 s), the SMTP listener's first moments included. It is remembered instead,
    and the daemon reloads once ready (``reload_deferred``)."""

    def remember(_signum: int, _frame: object) -> None:
        global _reload_deferred
        _reload_deferred = True

    signal.signal(signal.SIGHUP, remember)


def reload_deferred() -> bool:
    """A SIGHUP came before the daemon could reload (``defer_reloads``); asked once."""
    global _reload_deferred
    came, _reload_deferred = _reload_deferred, False
    return came


def start_fork_server(preload: Sequence[str]) -> None:
    """Start the fork server now, importing ``preload`` while the caller goes on with its own
    imports. Its processes inherit what this process has *now* (umask, environment, limits,
    niceness), not what it sets later: so the umask is set here, first."""
    owner_only_files()
    multiprocessing.set_forkserver_preload(list(preload))
    multiprocessing.forkserver.ensure_running()


def host_context() -> ForkServerContext:
    """The start method of the processing host: a fork of the fork server (started on first use
    when ``start_fork_server`` was not called: tests, an embedding program)."""
    return multiprocessing.get_context("forkserver")


def fork_server_pid() -> int | None:
    """The fork server's pid, once started (multiprocessing keeps it: CPython 3.8-3.14)."""
    pid = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)
    return pid if isinstance(pid, int) else None


def _prctl(option: int, value: object) -> None:
    """prctl(2) on Linux; nothing elsewhere (no such call)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def name_process(name: str) -> None:
    """Set this process's kernel name (Linux; ignored elsewhere)."""
    _prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]))


def die_with_parent(parent_pid: int | None = None) -> None:
    """Linux: SIGKILL us when our parent dies (a SIGKILLed daemon must not leave a worker busy on
    a poison message). With ``parent_pid``: exit now if the parent already died before prctl
    took effect. Best effort elsewhere: the children also exit when their pipe closes.

    prctl(2): the signal follows the *thread* that started us, so a child is started from a
    long-lived thread (the daemon's processing thread, the host's main thread)."""
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(0)
