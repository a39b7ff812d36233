"""The real daemon behind a relay that advertises and enforces a small SIZE (issue 17).

The daemon asks the relay for its SIZE when it starts (one EHLO), so the very first declaration
too large for it is summarised in the staff notifications instead of being refused for good; the
hospital's acknowledgement and both notifications arrive over SMTP; ``cases original`` returns
the original byte for byte, ``status`` is well and ``/metrics`` shows no lost staff mail.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import pytest

from tests.support import casemail
from tests.support.gateway import GatewayConfig, RunningGateway, wait_until
from tests.support.servers import SmtpSink, free_port

SIZE = 300_000
STAFF, REFERENT, DECLARANT = "agent@ars.test", "referent@ars.test", "dsi@chu-nantes.test"


@pytest.fixture
def relay() -> Iterator[SmtpSink]:
    sink = SmtpSink(size_limit=SIZE).start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture
def gateway(tmp_path: Path, relay: SmtpSink) -> Iterator[RunningGateway]:
    config = GatewayConfig(tmp_path / "gw", relay_port=relay.port, metrics_port=free_port(),
                           extra="[outbound]\nstaff_attachment_max_bytes = 30000000\n")
    with RunningGateway(config) as gw:
        yield gw


def declaration(payload: bytes) -> bytes:
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = DECLARANT
    msg["To"] = "ssi-pdl@ars.test"
    msg["Subject"] = "Déclaration d'incident de sécurité"
    msg["Message-ID"] = "<gros-1@chu-nantes.test>"
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg.set_content("Bonjour,\n\nNuméro FINESS : 440000289\nNom de la structure : CHU de Nantes\n"
                    "Type d'incident : rançongiciel\nGravité : grave\nJournal joint.\n")
    msg.add_attachment(payload, maintype="application", subtype="octet-stream", filename="journal.bin")
    return msg.as_bytes()


def learnt_size(db: Path, port: int) -> int | None:
    with sqlite3.connect(db) as conn:
        try:
            row = conn.execute("SELECT size_bytes FROM relay_limits WHERE relay = ?", (f"127.0.0.1:{port}",)).fetchone()
        except sqlite3.OperationalError:
            return None
    return row[0] if row else None


def test_the_daemon_learns_the_relay_size_before_the_first_declaration(
        gateway: RunningGateway, relay: SmtpSink, tmp_path: Path) -> None:
    assert wait_until(lambda: learnt_size(gateway.config.db_path, relay.port), timeout=15) == SIZE
    payload = os.urandom(250_000)
    raw = declaration(payload)
    assert len(raw) > SIZE
    gateway.send(raw, mail_from=DECLARANT)

    def delivered(address: str) -> list[EmailMessage]:
        return [casemail.parse(m.raw) for m in relay.messages_to(address)]

    wait_until(lambda: len(delivered(STAFF)) >= 1 and len(delivered(REFERENT)) >= 1
               and len(delivered(DECLARANT)) >= 1, timeout=30)
    for notice in (delivered(STAFF)[0], delivered(REFERENT)[0]):
        assert list(notice.iter_attachments()) == []
        body = notice.get_body(("plain",))
        assert body is not None
        text = str(body.get_content())
        assert "journal.bin" in text and hashlib.sha256(payload).hexdigest() in text

    ref = str(delivered(STAFF)[0]["Subject"]).split("[", 1)[1].split("]", 1)[0]
    out = tmp_path / "original.eml"
    gateway.config.cli("cases", "original", ref, "--output", str(out))
    assert out.read_bytes() == raw
    assert gateway.config.cli("status", check=False).returncode == 0
    port = gateway.config.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    assert "mailgateway_staff_mail_failed 0.0" in metrics
