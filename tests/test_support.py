"""The test servers themselves: if these break, every integration test lies."""

from __future__ import annotations

import imaplib
import smtplib
import socket
import time

import pytest
from sqlalchemy import create_engine, text

from tests.support.servers import Dovecot, PostgresCluster, SmtpSink, free_port, wait_for

MSG = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: hello\r\n\r\nbody\r\n"


def _send(sink: SmtpSink, to: list[str], raw: bytes = MSG) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", sink.port, local_hostname="client.localhost", timeout=5) as smtp:
        return smtp.sendmail("a@example.test", to, raw)


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_wait_for_returns_value_or_times_out() -> None:
    assert wait_for(lambda: 42, timeout=0.1) == 42
    with pytest.raises(TimeoutError):
        wait_for(lambda: None, timeout=0.05)


def test_sink_records_messages(smtp_sink: SmtpSink) -> None:
    _send(smtp_sink, ["b@example.test", "c@example.test"])
    (msg,) = smtp_sink.wait_for(1)
    assert msg.mail_from == "a@example.test"
    assert msg.rcpt_tos == ("b@example.test", "c@example.test")
    assert msg.raw.endswith(b"body\r\n")
    assert smtp_sink.messages_to("C@example.test") == [msg]
    assert smtp_sink.messages_to("x@example.test") == []


def test_sink_rcpt_failure_is_per_recipient_and_counted(smtp_sink: SmtpSink) -> None:
    smtp_sink.fail("bad@example.test", code=550, message="5.1.1 no such user", times=1)
    refused = _send(smtp_sink, ["ok@example.test", "bad@example.test"])
    assert refused == {"bad@example.test": (550, b"5.1.1 no such user")}
    assert smtp_sink.wait_for(1)[0].rcpt_tos == ("ok@example.test",)
    _send(smtp_sink, ["bad@example.test"])  # times=1: the second attempt passes
    assert len(smtp_sink.wait_for(2)) == 2


def test_sink_data_failure(smtp_sink: SmtpSink) -> None:
    smtp_sink.fail(lambda a: a.endswith("@slow.test"), code=451, stage="data")
    with pytest.raises(smtplib.SMTPDataError) as info:
        _send(smtp_sink, ["x@slow.test"])
    assert info.value.smtp_code == 451
    smtp_sink.clear_failures()
    _send(smtp_sink, ["x@slow.test"])
    assert len(smtp_sink.wait_for(1)) == 1


def test_sink_drops_connection_on_data(smtp_sink: SmtpSink) -> None:
    smtp_sink.drop_connection_on_data(times=1)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        _send(smtp_sink, ["b@example.test"])
    assert smtp_sink.messages == []
    _send(smtp_sink, ["b@example.test"])
    assert len(smtp_sink.wait_for(1)) == 1


def test_sink_outage_and_recovery_on_same_port(smtp_sink: SmtpSink) -> None:
    port = smtp_sink.port
    smtp_sink.stop()
    with pytest.raises(OSError):
        _send(smtp_sink, ["b@example.test"])
    smtp_sink.start()
    assert smtp_sink.port == port
    _send(smtp_sink, ["b@example.test"])
    assert len(smtp_sink.wait_for(1)) == 1


def test_dovecot_delivers_and_serves_idle(shared_dovecot: Dovecot, imap_user: str) -> None:
    client = shared_dovecot.imap(imap_user)
    try:
        client.select_folder("INBOX")
        assert {b"IDLE", b"MOVE", b"UIDPLUS"} <= set(client.capabilities())
        client.idle()
        started = time.monotonic()
        shared_dovecot.deliver(imap_user, MSG)
        responses = client.idle_check(timeout=5)
        client.idle_done()
        assert any(r[1] == b"EXISTS" for r in responses), responses
        assert time.monotonic() - started < 3
        (uid,) = client.search("ALL")
        assert (
            client.fetch([uid], ["BODY.PEEK[]"])[uid][b"BODY[]"].replace(b"\r\n", b"\n").endswith(b"body\n")
        )
    finally:
        client.logout()


def test_dovecot_restart_keeps_mail_and_kill_drops_connections(dovecot: Dovecot) -> None:
    user = dovecot.add_user("ssi-ara@ars.test", "pw")
    dovecot.deliver(user, MSG)
    dovecot.restart()
    client = dovecot.imap(user)
    try:
        assert client.select_folder("INBOX")[b"EXISTS"] == 1
        dovecot.kill()
        assert not dovecot.running
        with pytest.raises((OSError, imaplib.IMAP4.abort)):
            client.noop()
    finally:
        client.shutdown()
    dovecot.start()
    client = dovecot.imap(user)
    try:
        assert client.select_folder("INBOX")[b"EXISTS"] == 1
    finally:
        client.logout()


def test_dovecot_refuses_unknown_recipient(shared_dovecot: Dovecot) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        shared_dovecot.deliver("nobody@ars.test", MSG)


def test_postgres_cluster_databases_are_isolated(pg_cluster: PostgresCluster) -> None:
    first, second = pg_cluster.create_database(), pg_cluster.create_database()
    assert first != second
    engines = [create_engine(first), create_engine(second)]
    try:
        with engines[0].begin() as conn:
            conn.execute(text("CREATE TABLE t (x int)"))
        with engines[1].connect() as conn:
            assert conn.execute(text("SELECT to_regclass('t')")).scalar() is None
    finally:
        for engine in engines:
            engine.dispose()
