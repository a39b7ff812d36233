"""Intake hardening, against the real daemon's SMTP listener: a bad envelope gets its own
5xx and never fails its neighbours, the client IP is recorded, ``queued as`` is opaque, sizes are
refused early, connections and in-memory DATA bytes are capped, a flood of idle or bad clients
neither exhausts descriptors nor fills the log."""

from __future__ import annotations

import itertools
import json
import os
import re
import smtplib
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.gateway import GatewayConfig, RunningGateway, wait_until

pytestmark = pytest.mark.slow

PDL = "ssi-pdl@ars.test"


_SENT = itertools.count()  # the module's tests share a daemon: a Message-ID sent twice is one message


def _message(n: int, size: int = 0) -> bytes:
    body = b"".join(b"ligne %06d de remplissage ..................................................\r\n" % i
                    for i in range(size // 72 + 1)) if size else b"Bonjour.\r\n"
    return (b"From: Etablissement <dsi@chu.test>\r\nTo: " + PDL.encode() + b"\r\nSubject: message %d\r\n"
            b"Message-ID: <m%d.%d@chu.test>\r\nDate: Fri, 27 Nov 2026 09:12:00 +0100\r\n\r\n"
            % (n, n, next(_SENT))) + body


def _config(directory: Path, **smtp: object) -> GatewayConfig:
    """GatewayConfig with more [intake.smtp] keys (its writer knows only the common ones)."""
    config = GatewayConfig(directory)
    text = config.path.read_text()
    for key, value in smtp.items():
        if key == "max_message_bytes":
            text = text.replace("max_message_bytes = 1048576", f"max_message_bytes = {value}")
        else:
            anchor = 'server_hostname = "gateway.test"'
            text = text.replace(anchor, f"{anchor}\n{key} = {value}")
    config.path.write_text(text)
    return config


class Client:
    """A raw SMTP client: bytes exactly as given (smtplib cannot send a non-UTF-8 MAIL FROM)."""

    def __init__(self, port: int, timeout: float = 30) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("connection closed by the server")
            lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
            if line[3:4] != b"-":
                return int(lines[-1][:3]), "\n".join(lines)

    def cmd(self, line: bytes) -> tuple[int, str]:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def greet(self) -> Client:
        assert self.reply()[0] == 220
        assert self.cmd(b"EHLO client.test")[0] == 250
        return self

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _send(port: int, raw: bytes, mail_from: str = "dsi@chu.test") -> tuple[int, str]:
    """The DATA reply (code, text) of one transaction."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=60) as s:
        s.ehlo()
        s.mail(mail_from)
        code, text = s.rcpt(PDL)
        if code != 250:
            return code, text.decode()
        code, text = s.data(raw)
        return code, text.decode()


def _inbound(config: GatewayConfig, after: int = 0) -> list[tuple[int, str | None, str | None]]:
    with sqlite3.connect(config.db_path) as db:
        return list(db.execute("select id, mail_from, peer from inbound_messages where id > ? order by id", (after,)))


def _raws(config: GatewayConfig, after: int) -> list[bytes]:
    with sqlite3.connect(config.db_path) as db:
        return [raw for (raw,) in db.execute("select raw from inbound_messages where id > ? order by id", (after,))]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """One daemon for the module's single-session tests (a start costs ≈2 s of CPU): each looks
    only at the rows stored after it began (``_inbound(config, after=_last_id(config))``)."""
    with RunningGateway(GatewayConfig(tmp_path_factory.mktemp("hardening") / "gw")) as gw:
        yield gw


def _last_id(config: GatewayConfig) -> int:
    with sqlite3.connect(config.db_path) as db:
        return int(db.execute("select coalesce(max(id), 0) from inbound_messages").fetchone()[0])


def _bad_sender(port: int) -> tuple[int, str]:
    client = Client(port).greet()
    try:
        return client.cmd(b"MAIL FROM:<caf\xe9-\xff@chu.test>")
    finally:
        client.close()


def test_non_utf8_mail_from_gets_553_and_its_60_neighbours_are_accepted(gateway: RunningGateway) -> None:
    """One non-UTF-8 MAIL FROM failed the whole group commit (59 of 60 honest messages
    got 451) and the bad sender never got a 5xx."""
    port = gateway.config.smtp_port
    before = _last_id(gateway.config)
    with ThreadPoolExecutor(max_workers=32) as pool:
        honest = [pool.submit(_send, port, _message(n)) for n in range(60)]
        bad = [pool.submit(_bad_sender, port) for _ in range(5)]
        answers = [f.result(timeout=120) for f in honest]
        refusals = [f.result(timeout=120) for f in bad]
    assert [code for code, _ in answers] == [250] * 60, answers
    for code, text in refusals:
        assert code == 553 and "5.1.7" in text, text
    rows = _inbound(gateway.config, after=before)
    assert len(rows) == 60
    # The SMTP client IP is recorded (H1 trusts Authentication-Results only from trusted relays).
    assert {peer for _, _, peer in rows} == {"127.0.0.1"}


def test_bad_recipient_bytes_get_501_and_the_session_goes_on(gateway: RunningGateway) -> None:
    client = Client(gateway.config.smtp_port).greet()
    try:
        assert client.cmd(b"MAIL FROM:<dsi@chu.test>")[0] == 250
        code, text = client.cmd(b"RCPT TO:<ssi-pdl\x01@ars.test>")
        assert code == 501 and "5.1.3" in text, text
        code, text = client.cmd(b"RCPT TO:<ssi-pdl\xc3(@ars.test>")
        assert code == 501 and "5.1.3" in text, text
        # An encoded word is a local part of its own in SMTP, never decoded into our address.
        code, text = client.cmd(b"RCPT TO:<=?utf-8?q?ssi-pdl?=@ars.test>")
        assert code == 553, text
        assert client.cmd(b"RCPT TO:<" + PDL.encode() + b">")[0] == 250
        assert client.cmd(b"DATA")[0] == 354
        client.sock.sendall(_message(1) + b".\r\n")
        assert client.reply()[0] == 250
    finally:
        client.close()


def test_queued_as_is_opaque_and_logged_beside_the_inbound_id(gateway: RunningGateway) -> None:
    """``queued as N`` revealed the sequential inbound ids used to forge bounces."""
    before = _last_id(gateway.config)
    ids = []
    for n in range(3):
        code, text = _send(gateway.config.smtp_port, _message(n))
        assert code == 250
        match = re.fullmatch(r"2\.0\.0 Ok: queued as ([0-9A-Z]+)", text)
        assert match, text
        ids.append(match.group(1))
    assert len(set(ids)) == 3 and all(len(i) >= 12 for i in ids)
    assert not any(i in {str(before + n) for n in (1, 2, 3)} for i in ids)
    logged = {}
    for line in gateway.log_path.read_text().splitlines():
        if line.startswith("{") and "queue_id" in line:
            record = json.loads(line)
            logged[record["queue_id"]] = record["inbound_id"]
    assert [logged.get(i) for i in ids] == [before + 1, before + 2, before + 3]


def test_declared_size_over_the_limit_gets_552_5_3_4_at_mail(gateway: RunningGateway) -> None:
    client = Client(gateway.config.smtp_port).greet()
    try:
        code, text = client.cmd(b"MAIL FROM:<dsi@chu.test> SIZE=1048577")
        assert code == 552 and "5.3.4" in text, text
        assert client.cmd(b"MAIL FROM:<dsi@chu.test> SIZE=1048576")[0] == 250
    finally:
        client.close()


def test_bare_lf_message_of_many_lines_is_accepted_and_stored_with_crlf(gateway: RunningGateway) -> None:
    """A script sending bare LF line endings (RFC 5321 §2.3.8 forbids them; real senders do it) must
    not be refused as one "line too long": lines end at LF, and accept normalises them to CRLF."""
    raw = _message(7, size=4_000).replace(b"\r\n", b"\n")
    assert b"\r" not in raw and len(raw) > 3_000
    before = _last_id(gateway.config)
    client = Client(gateway.config.smtp_port).greet()
    try:
        assert client.cmd(b"MAIL FROM:<dsi@chu.test>")[0] == 250
        assert client.cmd(b"RCPT TO:<" + PDL.encode() + b">")[0] == 250
        assert client.cmd(b"DATA")[0] == 354
        # The end of data is CRLF "." CRLF, whatever the lines before (RFC 5321 §4.5.2; a dot
        # after a bare LF does not end it: SMTP smuggling, below).
        client.sock.sendall(raw[:-1] + b"\r\n.\r\n")
        code, text = client.reply()
        assert code == 250, text
    finally:
        client.close()
    assert _raws(gateway.config, before) == [raw.replace(b"\n", b"\r\n")]


def test_a_dot_after_a_bare_lf_neither_ends_the_data_nor_smuggles_a_second_message(
        gateway: RunningGateway) -> None:
    """SMTP smuggling (found by an outside tester): « LF . CRLF » inside DATA ended the message
    here, and what followed was read as new commands — a second message, with headers (a forged
    Authentication-Results) its sender's MTA never saw. Only CRLF "." CRLF ends the data (RFC 5321
    §4.5.2, §2.3.8); the dot of « LF . LF » is text, not dot-stuffing."""
    smuggled = (b"MAIL FROM:<agent@ars.test>\r\nRCPT TO:<" + PDL.encode() + b">\r\nDATA\r\n"
                b"From: agent@ars.test\r\nSubject: smuggled\r\n\r\n#clore\r\n")
    head = _message(8).replace(b"Bonjour.\r\n", b"")
    before = _last_id(gateway.config)
    client = Client(gateway.config.smtp_port).greet()
    try:
        assert client.cmd(b"MAIL FROM:<dsi@chu.test>")[0] == 250
        assert client.cmd(b"RCPT TO:<" + PDL.encode() + b">")[0] == 250
        assert client.cmd(b"DATA")[0] == 354
        client.sock.sendall(head + b"fin\n.\r\n" + smuggled + b"a\n.\nb\r\n.\r\n")
        code, text = client.reply()
        assert code == 250, text
        assert client.cmd(b"NOOP")[0] == 250  # one reply for one message: nothing else pending
    finally:
        client.close()
    stored = _raws(gateway.config, before)
    assert len(stored) == 1
    assert b"fin\r\n.\r\nMAIL FROM:<agent@ars.test>" in stored[0] and b"a\r\n.\r\nb\r\n" in stored[0]


@pytest.mark.parametrize("length", [1500, 4095, 70_000])
def test_a_line_too_long_just_before_the_end_of_data_is_answered_at_once(gateway: RunningGateway,
                                                                         length: int) -> None:
    """A line over the limit comes in pieces, its CR and LF possibly apart: the end of data right
    after it is still seen, the refusal comes at once and the session goes on (found by an outside
    tester: no answer, and the next command swallowed as data)."""
    client = Client(gateway.config.smtp_port, timeout=10).greet()
    try:
        assert client.cmd(b"MAIL FROM:<dsi@chu.test>")[0] == 250
        assert client.cmd(b"RCPT TO:<" + PDL.encode() + b">")[0] == 250
        assert client.cmd(b"DATA")[0] == 354
        client.sock.sendall(b"Subject: long\r\n\r\n" + b"x" * length + b"\r\n.\r\n")
        code, text = client.reply()
        assert code == 500 and "too long" in text.lower(), text
        assert client.cmd(b"NOOP")[0] == 250
    finally:
        client.close()


def test_running_size_over_the_limit_gets_552_5_3_4_before_the_end_of_data(gateway: RunningGateway) -> None:
    """The refusal comes as soon as the limit is passed (the client may stop sending), and the
    session is usable afterwards."""
    before = _last_id(gateway.config)
    client = Client(gateway.config.smtp_port).greet()
    try:
        assert client.cmd(b"MAIL FROM:<dsi@chu.test>")[0] == 250
        assert client.cmd(b"RCPT TO:<" + PDL.encode() + b">")[0] == 250
        assert client.cmd(b"DATA")[0] == 354
        client.sock.sendall(_message(1, size=1_200_000))  # over 1 MiB, no final dot yet
        code, text = client.reply()
        assert code == 552 and "5.3.4" in text, text
        client.sock.sendall(b"more\r\n.\r\n")
        assert client.cmd(b"NOOP")[0] == 250
    finally:
        client.close()
    assert _inbound(gateway.config, after=before) == []


def _refused_past(config: GatewayConfig, held_count: int) -> str:
    """Hold ``held_count`` connections; the next one gets 421 4.7.0 and is closed by the server;
    once one held connection closes, a new client is greeted again. The 421's text."""
    with ExitStack() as stack:
        held = [Client(config.smtp_port).greet() for _ in range(held_count)]
        for client in held:
            stack.callback(client.close)
        over = Client(config.smtp_port)
        code, text = over.reply()
        assert code == 421 and "4.7.0" in text, text
        assert over.file.readline() == b""  # closed by the server
        over.close()
        held.pop().close()

        def greeted() -> bool:
            client = Client(config.smtp_port)
            try:
                return client.reply()[0] == 220
            finally:
                client.close()

        wait_until(greeted, timeout=30)
    return text


def test_connections_beyond_the_cap_get_421_and_are_closed(tmp_path: Path) -> None:
    config = _config(tmp_path / "gw", max_connections=5)
    with RunningGateway(config):
        _refused_past(config, 5)


def test_one_address_cannot_hold_every_connection_but_a_trusted_relay_may(tmp_path: Path) -> None:
    """Found by an outside tester: 105 sockets from one IP, kept alive with NOOP, held every slot
    and every other client got 421 for as long as they stayed open. Per client IP: at most
    ``max_connections_per_ip``; the site's relays (``trusted_relays``) are exempt."""
    config = _config(tmp_path / "gw", max_connections=50, max_connections_per_ip=3, trusted_relays='["192.0.2.1"]')
    with RunningGateway(config):
        assert "from your address" in _refused_past(config, 3)
    trusted = _config(tmp_path / "trusted", max_connections=50, max_connections_per_ip=3)
    with RunningGateway(trusted), ExitStack() as stack:
        for _ in range(6):  # loopback is a trusted relay by default: no per-address cap
            client = Client(trusted.smtp_port).greet()
            stack.callback(client.close)


def test_in_memory_data_bytes_are_shared_and_capped(tmp_path: Path) -> None:
    """Two clients together may not hold more than max_concurrent_data_bytes: the second gets
    451 4.3.1 (try later) and succeeds once the first is done."""
    config = _config(tmp_path / "gw", max_message_bytes=65536, max_concurrent_data_bytes=65536)
    with RunningGateway(config):
        first = Client(config.smtp_port).greet()
        second = Client(config.smtp_port).greet()
        try:
            for client in (first, second):
                assert client.cmd(b"MAIL FROM:<dsi@chu.test>")[0] == 250
                assert client.cmd(b"RCPT TO:<" + PDL.encode() + b">")[0] == 250
            assert first.cmd(b"DATA")[0] == 354
            big = _message(1, size=50_000)
            first.sock.sendall(big)  # held in memory until the final dot
            assert second.cmd(b"DATA")[0] == 354
            second.sock.sendall(_message(2, size=20_000))
            code, text = second.reply()
            assert code == 451 and "4.3.1" in text, text
            second.sock.sendall(b".\r\n")
            first.sock.sendall(b".\r\n")
            assert first.reply()[0] == 250
            # Declared with SIZE while nothing is held: accepted.
            assert second.cmd(b"MAIL FROM:<dsi@chu.test> SIZE=30000")[0] == 250
            assert second.cmd(b"RCPT TO:<" + PDL.encode() + b">")[0] == 250
            assert second.cmd(b"DATA")[0] == 354
            second.sock.sendall(_message(2, size=20_000) + b".\r\n")
            assert second.reply()[0] == 250
        finally:
            first.close()
            second.close()
        assert len(_inbound(config)) == 2


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_thousand_idle_connections_do_not_exhaust_descriptors(tmp_path: Path) -> None:
    """~1,000 idle connections exhausted the daemon's descriptors. With 512 of them
    (prlimit), the cap keeps the daemon below the limit (connections over it are answered 421 and
    closed at once; a few hundred are open for an instant while asyncio accepts in batches of
    100); once the idle ones time out, an honest client is served again."""
    config = _config(tmp_path / "gw", max_connections=50, idle_timeout_seconds=3.0)
    with RunningGateway(config) as gw:
        pid = gw.proc.pid
        subprocess.run(["prlimit", "--pid", str(pid), "--nofile=512:512"], check=True)
        socks: list[socket.socket] = []
        try:
            for _ in range(1000):
                try:
                    socks.append(socket.create_connection(("127.0.0.1", config.smtp_port), timeout=5))
                except OSError:
                    pass  # the listen backlog is full: the kernel drops the SYN, as it would
            assert len(socks) > 600
            assert _open_fds(pid) < 512
            code, text = wait_until(lambda: _try_send(config.smtp_port), timeout=90)
            assert code == 250, text
        finally:
            for s in socks:
                s.close()
        log = gw.log()
    assert "Too many open files" not in log
    assert len(_inbound(config)) == 1


def _try_send(port: int) -> tuple[int, str] | None:
    try:
        return _send(port, _message(7))
    except (OSError, smtplib.SMTPException):
        return None


def test_a_flood_of_bad_clients_does_not_fill_the_log(tmp_path: Path) -> None:
    """~1,000 bad connections made the log grow 70 MB in 35 s."""
    with RunningGateway(GatewayConfig(tmp_path / "gw")) as gateway:  # its own: only its log lines
        _flood(gateway)


def _flood(gateway: RunningGateway) -> None:
    port = gateway.config.smtp_port
    before = gateway.log_path.stat().st_size

    def bad_client(n: int) -> None:
        try:
            client = Client(port).greet()
        except (OSError, AssertionError):
            return
        try:
            for line in (b"FOO bar", b"MAIL FROM:<\xff\xfe@x.test>", b"RCPT TO:<x@y>", b"\x80\x81 garbage",
                         b"MAIL FROM:<a@b.test>", b"RCPT TO:<nobody@ars.test>", b"DATA"):
                client.cmd(line)
        except OSError:
            pass
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=50) as pool:
        list(pool.map(bad_client, range(1000)))
    assert _send(port, _message(1))[0] == 250  # still serving
    time.sleep(0.5)
    grown = gateway.log_path.stat().st_size - before
    assert grown < 64 * 1024, grown


def test_every_fixed_smtp_reply_is_us_ascii() -> None:
    """RFC 5321 §4.2: reply text is US-ASCII (a '§' reached clients in a "line too long" reply)."""
    from mailgateway.intake import smtp

    replies = [v for k, v in vars(smtp).items() if k.isupper() and isinstance(v, str) and v[:3].isdigit()]
    assert replies and all(r.isascii() for r in replies), replies
