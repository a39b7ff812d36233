"""Real servers on 127.0.0.1 for integration tests: Dovecot (IMAP + LMTP), PostgreSQL, an SMTP sink.

Pytest-independent (the benchmarks use them too); the fixtures live in ``tests/conftest.py``.
Recipe: ``../shared/recipes/mail-stack.md``. Ground rules followed here:

* loopback only, free ports picked by binding ``127.0.0.1:0``;
* service users (``mail``, ``dovecot``, ``dovenull``, ``postgres``) must traverse every parent of a
  state directory, so state lives in a ``mkdtemp`` directory re-moded 0755 (pytest's own tmp dirs
  are 0700);
* readiness is the protocol greeting (``* OK``, ``220``), never merely an open port;
* everything is stopped by the PID we started, never by name; a zombie counts as stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Dovecot",
    "PostgresCluster",
    "ReceivedMessage",
    "ServerUnavailable",
    "SmtpSink",
    "free_port",
    "postgres_bin_dir",
    "stop_pid",
    "wait_for",
]

LOOPBACK = "127.0.0.1"


class ServerUnavailable(RuntimeError):
    """The server's binary (or the privilege it needs) is missing on this machine."""


# --- small helpers ------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (tiny race window; good enough for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; return it, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout} s: {predicate!r}")
        time.sleep(interval)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (state Z) is stopped (recipe ground rules)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return not any(line.startswith("State:") and "Z" in line.split()[1:2] for line in status.splitlines())


def stop_pid(pid: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Signal ``pid`` and wait until it has exited (or is a zombie); SIGKILL after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
        time.sleep(0.02)


def _session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session or process group is ``sid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgrp, session = fields[0], int(fields[2]), int(fields[3])
        if state != "Z" and sid in (pgrp, session):
            found.append(int(entry))
    return found


def _state_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)  # service users must traverse it (recipe: mktemp -d is 0700)
    return path


def _wait_greeting(port: int, expect: bytes, timeout: float, proc: subprocess.Popen[bytes] | None) -> None:
    """Wait for the server's greeting line (``* OK`` / ``220``), not just an open port."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before its greeting")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1) as s:
                if s.recv(512).startswith(expect):
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.02)
    raise TimeoutError(f"no {expect!r} greeting on {LOOPBACK}:{port} within {timeout} s ({last})")


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise ServerUnavailable(f"{what} tests run as root (service users, setuid children)")


# --- Dovecot ------------------------------------------------------------------------------------

_DOVECOT_CONF = """\
# Generated by tests/support/servers.py: loopback only, no TLS, plaintext auth (recipe §1).
protocols = imap lmtp
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
instance_name = mailgw-test-{imap_port}
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
# No delay after a failed login and no per-IP penalty (else wrong-password tests take 2-15 s).
auth_failure_delay = 0
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
default_internal_user = dovecot
default_login_user = dovenull
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {d}/users
  default_fields = uid=mail gid=mail home={d}/mail/%d/%n
}}
# Pitfall: a userdb uid of 0 is refused, so mail is stored as the Debian "mail" user (uid 8).
first_valid_uid = 8
mail_location = maildir:~/Maildir
mailbox_idle_check_interval = {idle_check}
protocol imap {{
  mail_max_userip_connections = 100
}}
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0666
  }}
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp_port}
  }}
}}
protocol lmtp {{
  postmaster_address = postmaster@localhost
}}
{extra}
"""


class Dovecot:
    """A private Dovecot 2.3: IMAP (with IDLE, MOVE, UIDPLUS) and LMTP on free loopback ports.

    ``extra_config`` is appended to the generated config (e.g. to drop a capability).
    """

    def __init__(self, *, idle_check_interval: str = "1s", extra_config: str = "") -> None:
        binary = shutil.which("dovecot", path=os.environ.get("PATH", "") + ":/usr/sbin")
        if binary is None:
            raise ServerUnavailable("dovecot is not installed (apt-get install dovecot-imapd dovecot-lmtpd)")
        _require_root("Dovecot")
        self.binary = binary
        self.doveadm_binary = shutil.which("doveadm", path=os.environ.get("PATH", "") + ":/usr/bin") or "doveadm"
        self.dir = _state_dir("mailgw-dovecot-")
        self.imap_port = free_port()
        self.lmtp_port = free_port()
        self.config = self.dir / "dovecot.conf"
        self.users_file = self.dir / "users"
        self._users: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        mail_root = self.dir / "mail"
        mail_root.mkdir(mode=0o750)
        shutil.chown(mail_root, "mail", "mail")  # Dovecot creates homes under it as "mail"
        self.config.write_text(
            _DOVECOT_CONF.format(
                d=self.dir,
                imap_port=self.imap_port,
                lmtp_port=self.lmtp_port,
                idle_check=idle_check_interval,
                extra=extra_config,
            )
        )
        self._write_users()

    # lifecycle

    def start(self, timeout: float = 10.0) -> Dovecot:
        if self.running:
            return self
        log = open(self.dir / "master.out", "ab")  # handed to the child
        # -F: foreground, so the PID is ours; own session so kill() can take every child at once.
        self._proc = subprocess.Popen(
            [self.binary, "-F", "-c", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        try:
            _wait_greeting(self.imap_port, b"* OK", timeout, self._proc)
            _wait_greeting(self.lmtp_port, b"220", timeout, self._proc)
        except Exception:
            self.kill()
            raise RuntimeError(f"Dovecot did not start:\n{self.log_tail()}") from None
        return self

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self, timeout: float = 10.0) -> None:
        """Orderly shutdown (SIGTERM to the master), then anything left of its process group."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        self._kill_group(proc.pid)

    def kill(self) -> None:
        """Crash: SIGKILL the master and every process of its group (connections drop at once)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self._kill_group(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)

    @staticmethod
    def _kill_group(pgid: int) -> None:
        """SIGKILL every process of the master's session or group, and wait until they are gone.

        A surviving ``imap-login`` of a crashed instance keeps the inherited listening socket and
        greets new clients it can no longer log in: the next instance would then time out
        intermittently. Zombies count as gone."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while True:
            left = _session_members(pgid)
            if not left or time.monotonic() > deadline:
                return
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)

    def restart(self, timeout: float = 10.0) -> None:
        self.stop()
        self.start(timeout)

    def close(self) -> None:
        """Stop and remove the state directory."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # users and mail

    def _write_users(self) -> None:
        lines = "".join(f"{a}:{{PLAIN}}{p}::::::\n" for a, p in self._users.items())
        tmp = self.users_file.with_suffix(".tmp")
        tmp.write_text(lines)
        tmp.chmod(0o644)  # read by the auth process, which runs as "dovecot"
        tmp.replace(self.users_file)

    def add_user(self, address: str, password: str = "secret") -> str:
        """Add a mailbox user (Dovecot re-reads the passwd-file when it changes); returns address."""
        if ":" in address or ":" in password or "\n" in address + password:
            raise ValueError("address and password must not contain ':' or newlines")
        self._users[address] = password
        self._write_users()
        if self.running:
            # Dovecot stats the passwd-file at most once a second: wait until the user is known.
            wait_for(lambda: self._known(address), timeout=5, interval=0.1)
        return address

    def _known(self, address: str) -> bool:
        out = subprocess.run(
            [self.doveadm_binary, "-c", str(self.config), "user", address],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return out.returncode == 0

    def password_file(self, address: str, directory: Path) -> Path:
        """Write the password to ``directory/<address>.pass``: settings read secrets from files."""
        path = directory / f"{address}.pass"
        path.write_text(self._users[address] + "\n")
        return path

    def deliver(self, address: str, raw: bytes, mail_from: str = "sender@example.test") -> None:
        """Deliver ``raw`` into ``address``'s INBOX over LMTP (RFC 2033); raise on refusal."""
        with smtplib.LMTP(LOOPBACK, self.lmtp_port, local_hostname="tests.localhost", timeout=10) as lmtp:
            refused = lmtp.sendmail(mail_from, [address], raw)
        if refused:
            raise RuntimeError(f"LMTP refused {refused}")

    def doveadm(self, *args: str) -> str:
        """Run ``doveadm -c <our config> ARGS`` and return its stdout."""
        out = subprocess.run(
            [self.doveadm_binary, "-c", str(self.config), *args],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return out.stdout.decode()

    def imap(self, address: str) -> Any:
        """A logged-in ``imapclient.IMAPClient`` (plain, loopback; pitfall: ssl=False) for ``address``."""
        from imapclient import IMAPClient

        client = IMAPClient(LOOPBACK, port=self.imap_port, ssl=False, timeout=10)
        client.login(address, self._users[address])
        return client

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for name in ("dovecot.log", "master.out"):
            with contextlib.suppress(OSError):
                parts.extend((self.dir / name).read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(parts)


# --- PostgreSQL ---------------------------------------------------------------------------------


def postgres_bin_dir() -> Path | None:
    """Newest Debian PostgreSQL binaries (``/usr/lib/postgresql/<major>/bin``), or None."""
    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()]
    if not found:
        return None
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)


class PostgresCluster:
    """A throwaway cluster (recipe §4): initdb as ``postgres``, trust auth, fsync off, free port."""

    def __init__(self) -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise ServerUnavailable("PostgreSQL is not installed (apt-get install postgresql)")
        _require_root("PostgreSQL")
        self.bin = bin_dir
        self.dir = _state_dir("mailgw-pg-")
        self.data = self.dir / "data"
        self.port = free_port()
        self._counter = 0
        for sub, mode in (("data", 0o700), ("run", 0o755), ("log", 0o755)):
            path = self.dir / sub
            path.mkdir(mode=mode)
            path.chmod(mode)  # pitfall: data must be 0700 or 0750, whatever the umask
            shutil.chown(path, "postgres", "postgres")
        # Pitfall: initdb refuses to run as root.
        self._as_postgres(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"
        )

    def _as_postgres(self, tool: str, *args: str) -> str:
        out = subprocess.run(
            ["runuser", "-u", "postgres", "--", str(self.bin / tool), *args],
            check=False,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"{tool} failed: {out.stderr.decode(errors='replace')}")
        return out.stdout.decode()

    def start(self) -> PostgresCluster:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir / 'run'} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._as_postgres(
            "pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log" / "postgres.log"), "-w", "-t", "30",
            "-o", options, "start",
        )  # fmt: skip
        return self

    @property
    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        pid = self.pid
        if pid is not None:
            stop_pid(pid, signal.SIGINT, timeout=30)  # SIGINT = "fast" shutdown

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@{LOOPBACK}:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Create a database (a fresh unique name by default) and return its SQLAlchemy URL."""
        if name is None:
            self._counter += 1
            name = f"t{os.getpid()}_{self._counter}"
        # A connection, not `runuser … createdb`: two process starts saved per test database.
        import psycopg  # only the PostgreSQL tests need it

        with contextlib.closing(psycopg.connect(f"postgresql://postgres@{LOOPBACK}:{self.port}/postgres",
                                                autocommit=True)) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self._as_postgres(
            "dropdb", "-h", LOOPBACK, "-p", str(self.port), "-U", "postgres", "--force", "--if-exists", name
        )


# --- SMTP sink (the test relay) -----------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    received_at: float  # time.time()
    peer: str = ""


Matcher = Callable[[str], bool]


@dataclass
class _Failure:
    stage: str  # "rcpt" | "data"
    match: Matcher
    code: int
    message: str
    times: int | None  # None: every time

    def take(self, addresses: list[str]) -> str | None:
        if self.times == 0 or not any(self.match(a) for a in addresses):
            return None
        if self.times is not None:
            self.times -= 1
        return f"{self.code} {self.message}"


@dataclass
class _SinkState:
    lock: threading.Condition = field(default_factory=threading.Condition)
    messages: list[ReceivedMessage] = field(default_factory=list)
    failures: list[_Failure] = field(default_factory=list)
    drops_on_data: int = 0
    connections: int = 0


class _SinkHandler:
    """aiosmtpd hooks: plain ``async def handle_*`` returning the reply (aiosmtpd's handler style)."""

    def __init__(self, state: _SinkState) -> None:
        self.state = state

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        with self.state.lock:
            for failure in self.state.failures:
                if failure.stage == "rcpt" and (answer := failure.take([address])):
                    return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.state.lock:
            if self.state.drops_on_data > 0:
                self.state.drops_on_data -= 1
                server.transport.abort()  # the relay vanishes after the data: no answer at all
                return "421 dropped"
            for failure in self.state.failures:
                if failure.stage == "data" and (answer := failure.take(list(envelope.rcpt_tos))):
                    return answer
            peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
            self.state.messages.append(
                ReceivedMessage(
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    raw=bytes(envelope.original_content or envelope.content),
                    received_at=time.time(),
                    peer=peer,
                )
            )
            self.state.lock.notify_all()
        return "250 2.0.0 Message accepted for delivery"


class SmtpSink:
    """An SMTP server on 127.0.0.1 (aiosmtpd, own thread) recording what it receives.

    Failure injection: ``fail()`` answers RCPT or DATA with a chosen code, ``drop_connection_on_data``
    closes the connection instead of answering, ``stop()``/``start()`` simulate an outage on the
    same port.
    """

    def __init__(self, port: int | None = None, server_hostname: str = "sink.localhost",
                 size_limit: int = 0) -> None:
        """``size_limit``: advertised as EHLO ``SIZE`` and enforced like Postfix's
        message_size_limit (552 at MAIL FROM for a declared SIZE over it, 552 after DATA otherwise);
        0: no limit."""
        self.port = port or free_port()
        self.server_hostname = server_hostname
        self.size_limit = size_limit
        self._state = _SinkState()
        self._controller: Any = None

    def start(self) -> SmtpSink:
        from aiosmtpd.controller import Controller

        if self._controller is not None:
            return self
        # Pitfall: port=0 fails aiosmtpd's self-check; the port is chosen beforehand.
        # server_hostname avoids socket.getfqdn() (a real DNS lookup).
        class TrackingController(Controller):  # type: ignore[misc]
            """Remembers its sessions, so ``stop`` can close the connections a client keeps open
            (aiosmtpd's ``stop`` leaves them to the garbage collector: a ResourceWarning, an error
            here, in whichever later test collects them)."""

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                self.sessions: list[Any] = []

            def factory(self) -> Any:
                smtp = super().factory()
                self.sessions.append(smtp)
                return smtp

        controller = TrackingController(
            _SinkHandler(self._state),
            hostname=LOOPBACK,
            port=self.port,
            server_hostname=self.server_hostname,
            ready_timeout=10,
            data_size_limit=self.size_limit,
            decode_data=False,
        )
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            async def close_sessions() -> None:
                for smtp in controller.sessions:
                    transport = getattr(smtp, "transport", None)
                    if transport is not None and not transport.is_closing():
                        transport.abort()
                for _ in range(3):  # let connection_lost run: it closes the sockets
                    await asyncio.sleep(0)

            try:
                asyncio.run_coroutine_threadsafe(close_sessions(), controller.loop).result(timeout=5)
            except Exception:
                pass  # the loop is already gone: nothing left to close
            controller.stop()

    @property
    def running(self) -> bool:
        return self._controller is not None

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # what was received

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._state.lock:
            return list(self._state.messages)

    def messages_to(self, address: str) -> list[ReceivedMessage]:
        wanted = address.lower()
        return [m for m in self.messages if wanted in (r.lower() for r in m.rcpt_tos)]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedMessage]:
        """Block until at least ``count`` messages were received; return them (TimeoutError if not)."""
        with self._state.lock:
            if not self._state.lock.wait_for(lambda: len(self._state.messages) >= count, timeout):
                got = len(self._state.messages)
                raise TimeoutError(f"sink received {got} of {count} messages within {timeout} s")
            return list(self._state.messages)

    def clear(self) -> None:
        with self._state.lock:
            self._state.messages.clear()

    # failure injection

    def fail(
        self,
        match: str | Matcher | None = None,
        *,
        code: int = 451,
        message: str = "4.3.0 Temporary failure (injected)",
        times: int | None = None,
        stage: str = "rcpt",
    ) -> None:
        """Answer ``code message`` at RCPT (per recipient) or DATA (any matching recipient).

        ``match``: an address (case-insensitive), a predicate on the address, or None for all;
        ``times``: how many answers to fail, None for every one until ``clear_failures()``.
        """
        if stage not in ("rcpt", "data"):
            raise ValueError("stage must be 'rcpt' or 'data'")
        if match is None:
            matcher: Matcher = lambda _a: True  # noqa: E731
        elif isinstance(match, str):
            wanted = match.lower()
            matcher = lambda a: a.lower() == wanted  # noqa: E731
        else:
            matcher = match
        with self._state.lock:
            self._state.failures.append(_Failure(stage, matcher, code, message, times))

    def drop_connection_on_data(self, times: int = 1) -> None:
        """Close the connection after the next ``times`` DATA payloads, without answering."""
        with self._state.lock:
            self._state.drops_on_data += times

    def clear_failures(self) -> None:
        with self._state.lock:
            self._state.failures.clear()
            self._state.drops_on_data = 0
