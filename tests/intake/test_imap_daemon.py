"""IMAP intake through the real daemon: mail delivered into Dovecot is acknowledged at the relay."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import GatewayConfig, RunningGateway, declaration
from tests.support.servers import Dovecot, SmtpSink, wait_for


@pytest.fixture
def gateway(tmp_path: Path, dovecot: Dovecot, smtp_sink: SmtpSink) -> Iterator[RunningGateway]:
    user = dovecot.add_user("ssi-pdl@ars.test", "s3cret")
    imap = {"host": "127.0.0.1", "port": dovecot.imap_port, "tls": False, "username": user,
            "password_file": str(dovecot.password_file(user, tmp_path))}  # fmt: skip
    config = GatewayConfig(tmp_path / "gw", relay_port=smtp_sink.port, imap={"PDL": imap})
    with RunningGateway(config) as gw:
        yield gw


def test_declaration_in_the_mailbox_is_acknowledged_and_moved(
    gateway: RunningGateway, dovecot: Dovecot, smtp_sink: SmtpSink
) -> None:
    wait_for(lambda: "idle" in gateway.config.cli("status", "--json", check=False).stdout, timeout=15)
    started = time.monotonic()
    dovecot.deliver("ssi-pdl@ars.test", declaration("imap-decl-1@chu-nantes.test"), mail_from="dsi@chu-nantes.test")
    wait_for(lambda: smtp_sink.messages_to("dsi@chu-nantes.test"), timeout=10)
    assert time.monotonic() - started < 5
    client = dovecot.imap("ssi-pdl@ars.test")
    try:
        assert client.select_folder("INBOX")[b"EXISTS"] == 0
        assert client.select_folder("Traité")[b"EXISTS"] == 1
    finally:
        client.logout()
    assert len(gateway.config.cli_json("cases", "list")) == 1


def test_a_quarantined_message_ends_in_the_quarantine_folder_where_staff_see_it(
    gateway: RunningGateway, dovecot: Dovecot
) -> None:
    wait_for(lambda: "idle" in gateway.config.cli("status", "--json", check=False).stdout, timeout=15)
    newsletter = (b"From: news@vendor.test\r\nTo: ssi-pdl@ars.test\r\nSubject: Our spring offers\r\n"
                  b"Message-ID: <offers-1@vendor.test>\r\nDate: Fri, 27 Nov 2026 09:00:00 +0100\r\n\r\n"
                  b"Buy our products, unrelated to any incident.\r\n")
    dovecot.deliver("ssi-pdl@ars.test", newsletter, mail_from="news@vendor.test")
    client = dovecot.imap("ssi-pdl@ars.test")

    def in_quarantine() -> bool:
        return client.folder_exists("Quarantaine") and client.select_folder("Quarantaine")[b"EXISTS"] == 1

    try:
        wait_for(in_quarantine, timeout=20)
        assert client.select_folder("Traité")[b"EXISTS"] == 0
        assert client.select_folder("INBOX")[b"EXISTS"] == 0  # moved, never deleted
    finally:
        client.logout()
