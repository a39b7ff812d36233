"""The idle timeout during DATA (intake/smtp.py): the timer counts from the last line received, but is
re-armed at most every tenth of the timeout (at most once a second) instead of at every line — a
timer cancelled and scheduled per line was a tenth of the event loop's time per message. A slow but
steady sender keeps its connection; a sender silent for the whole timeout mid-DATA is disconnected."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.intake.test_accept_batch import running_intake

TIMEOUT = 1.0


def _reply(sock: socket.socket) -> bytes:
    """One SMTP reply, multi-line ones whole (the last line has a space after its code)."""
    data = b""
    while not (data.endswith(b"\r\n") and data.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1][3:4] == b" "):
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    return data


def _open_data(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    _reply(sock)  # greeting
    for command in (b"EHLO relay.test", b"MAIL FROM:<dsi@chu.test>", b"RCPT TO:<ssi-pdl@ars.test>", b"DATA"):
        sock.sendall(command + b"\r\n")
        assert _reply(sock)[:1] in (b"2", b"3")
    return sock


def test_a_slow_steady_sender_keeps_its_connection_through_data(tmp_path: Path) -> None:
    with running_intake(tmp_path / "gw", f"idle_timeout_seconds = {TIMEOUT}") as intake:
        intake.writer.start()
        sock = _open_data(intake.port)
        try:
            sock.sendall(b"Subject: lent\r\nMessage-ID: <slow@chu.test>\r\n\r\n")
            for n in range(8):  # 2.4 s in all, a line every 0.3 s: never silent for the timeout
                time.sleep(0.3)
                sock.sendall(b"ligne %d\r\n" % n)
            sock.sendall(b".\r\n")
            assert _reply(sock).startswith(b"250 "), "closed while lines were flowing"
        finally:
            sock.close()


def test_a_sender_silent_for_the_timeout_during_data_is_disconnected(tmp_path: Path) -> None:
    with running_intake(tmp_path / "gw", f"idle_timeout_seconds = {TIMEOUT}") as intake:
        intake.writer.start()
        sock = _open_data(intake.port)
        try:
            sock.sendall(b"Subject: muet\r\n\r\ndebut\r\n")
            started = time.monotonic()
            sock.settimeout(10)
            rest = b""
            while chunk := sock.recv(4096):  # the server closes: recv returns b""
                rest += chunk
            waited = time.monotonic() - started
        finally:
            sock.close()
        assert TIMEOUT * 0.85 <= waited < TIMEOUT + 3, waited
        assert b"250 " not in rest and intake.handler.accepted == 0
