"""A real mailgateway for tests: a generated configuration, DKIM keys, and the daemon as a process.

``GatewayConfig`` writes a TOML file (only keys of README, "Configuration" and their documented extensions) into a
temporary directory; ``RunningGateway`` starts ``python -m mailgateway run`` on it and waits until
the SMTP intake answers. ``cli()`` runs any other command against the same configuration.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.servers import free_port, wait_for

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# A declaration as an establishment's RSSI would mail it to the PDL mailbox of GatewayConfig.
DECLARATION = """\
From: Jeanne Martin <dsi@chu-nantes.test>
To: SSI Pays de la Loire <ssi-pdl@ars.test>
Subject: Déclaration d'incident : rançongiciel au centre hospitalier
Message-ID: <decl-1@chu-nantes.test>
Date: Fri, 27 Nov 2026 09:12:00 +0100
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Bonjour,

Numéro FINESS : 440000289
Nom de la structure : CHU de Nantes
Type d'incident : Rançongiciel
Date de détection : 27/11/2026 à 08h30
Gravité : grave
Impacts : sécurité des soins, données de santé

Des postes sont chiffrés depuis ce matin, une demande de rançon s'affiche.

Jeanne Martin, RSSI
"""


def declaration(message_id: str = "decl-1@chu-nantes.test") -> bytes:
    """DECLARATION with another Message-ID (a distinct message for content-hash dedup)."""
    return DECLARATION.replace("<decl-1@chu-nantes.test>", f"<{message_id}>").encode()


@functools.cache
def _signing_key() -> tuple[bytes, str]:
    """One RSA-2048 key a test process (a key costs ≈65 ms to make; a run makes ≈100 configs)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}"


def generate_rsa_key(path: Path) -> str:
    """Write a PKCS#1 RSA-2048 key; return the DKIM TXT value publishing its public half."""
    pem, record = _signing_key()
    path.write_bytes(pem)
    return record


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


@dataclass
class GatewayConfig:
    directory: Path
    relay_port: int | None = None
    smtp_port: int = field(default_factory=free_port)
    domain: str = "ars.test"
    regions: Sequence[tuple[str, str, str]] = (("PDL", "Pays de la Loire", "ssi-pdl@ars.test"),
                                               ("ARA", "Auvergne-Rhône-Alpes", "ssi-ara@ars.test"))
    staff: Sequence[tuple[str, str, str]] = (("referent@ars.test", "PDL", "referent"),
                                             ("agent@ars.test", "PDL", "agent"),
                                             ("referent-ara@ars.test", "ARA", "referent"))
    static_keys: dict[str, str] = field(default_factory=dict)
    acss_domains: Sequence[str] = ("esante.test",)
    acss_address: str = "acss@esante.test"
    extra: str = ""
    imap: dict[str, dict[str, Any]] = field(default_factory=dict)  # region code -> imap table
    metrics_port: int | None = None
    selector: str = "mg"
    # None: SQLite in ``directory``; else this URL (PostgreSQL: run ``db upgrade`` first).
    database_url: str | None = None
    instances: int = 1  # [database] instances (more than 1 needs PostgreSQL)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key_file = self.directory / "dkim.pem"
        if not self.key_file.exists():
            self.dkim_record = generate_rsa_key(self.key_file)
            (self.directory / "dkim.txt").write_text(self.dkim_record)
        else:
            self.dkim_record = (self.directory / "dkim.txt").read_text()
        self.path = self.directory / "mailgateway.toml"
        self.db_path = self.directory / "mailgateway.db"
        self.maildir = self.directory / "outbox"
        self.write()

    @property
    def dkim_zone(self) -> dict[str, str]:
        return {f"{self.selector}._domainkey.{self.domain}": self.dkim_record}

    def write(self) -> Path:
        lines = [
            "[database]", f"url = {_toml_value(self.database_url or f'sqlite:///{self.db_path}')}",
            f"instances = {self.instances}", "",
            "[intake.smtp]", 'host = "127.0.0.1"', f"port = {self.smtp_port}", "max_message_bytes = 1048576",
            'server_hostname = "gateway.test"', "",
            "[relay]", f'maildir = "{self.maildir}"', 'local_hostname = "gateway.test"',
            "retry_base_seconds = 1.0", "retry_max_seconds = 2.0",
        ]
        if self.relay_port is not None:
            lines += ['host = "127.0.0.1"', f"port = {self.relay_port}"]
        lines += ["", "[dkim]", f'domain = "{self.domain}"', "[[dkim.keys]]", f'selector = "{self.selector}"',
                  'algorithm = "rsa-sha256"', f'private_key_file = "{self.key_file}"', ""]
        lines += ["[authentication]", "trusted_authserv_ids = []",
                  f"acss_domains = {_toml_value(list(self.acss_domains))}", "nameservers = [\"127.0.0.1\"]",
                  "dns_timeout_seconds = 0.2", "[authentication.static_keys]"]
        for name, value in self.static_keys.items():
            lines.append(f"{_toml_value(name)} = {_toml_value(value)}")
        lines.append("")
        for code, name, address in self.regions:
            lines += ["[[regions]]", f'code = "{code}"', f"name = {_toml_value(name)}", f'address = "{address}"']
            if code in self.imap:
                lines.append("[regions.imap]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in self.imap[code].items()]
            lines.append("")
        for address, region, role in self.staff:
            lines += ["[[staff]]", f'address = "{address}"', f'region = "{region}"', f'role = "{role}"', ""]
        lines += ["[acss]", f'address = "{self.acss_address}"', ""]
        if self.metrics_port:
            lines += ["[metrics]", 'host = "127.0.0.1"', f"port = {self.metrics_port}", ""]
        lines += ["[logging]", 'format = "json"', "", self.extra]
        self.path.write_text("\n".join(lines), encoding="utf-8")
        return self.path

    def cli(self, *args: str, input: bytes | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "mailgateway", *args, "-c", str(self.path)] if args and args[0] != "-c"
            else [sys.executable, "-m", "mailgateway", *args],
            input=input.decode("utf-8", "surrogateescape") if input is not None else None,
            capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=timeout, env=_env(),
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"mailgateway {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
        return proc

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    env.pop("MAILGATEWAY_CONFIG", None)
    return env


class RunningGateway:
    """``mailgateway run`` as a child process; stop() sends SIGTERM and waits for exit 0."""

    def __init__(self, config: GatewayConfig, extra_env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = config.directory / "daemon.log"
        env = _env()
        env.update(extra_env or {})
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailgateway", "run", "-c", str(config.path)],
            cwd=PROJECT_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for(self._smtp_ready, timeout=30)
        except Exception:
            self.stop()
            raise AssertionError(f"gateway did not start:\n{self.log()}") from None

    def _smtp_ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"gateway exited {self.proc.returncode}:\n{self.log()}")
        try:
            with smtplib.SMTP("127.0.0.1", self.config.smtp_port, local_hostname="client.test", timeout=2) as s:
                s.noop()
            return True
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-8000:]

    def send(self, raw: bytes, to: Sequence[str] = ("ssi-pdl@ars.test",), mail_from: str = "dsi@chu.test") -> None:
        with smtplib.SMTP("127.0.0.1", self.config.smtp_port, local_hostname="client.test", timeout=30) as s:
            s.sendmail(mail_from, list(to), raw)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> RunningGateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)
