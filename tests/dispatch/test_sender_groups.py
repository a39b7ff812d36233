"""One message to several recipients (a staff notification to a region's staff, issue 19): an
outbox row per recipient, one return path and the same bytes for all; the sender signs it once and
delivers it in one mail transaction (one MAIL, a RCPT each, one DATA) to a real relay on loopback
(SQLite; PostgreSQL too where the claim locks rows), and each row keeps its own answer. A bounce at
the shared return path is the named recipient's."""

from __future__ import annotations

import asyncio
import email
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.clock import FixedClock
from mailgateway.dispatch import outbox
from mailgateway.dispatch.sender import Sender
from mailgateway.settings import Settings
from mailgateway.store.engine import transaction
from tests.dispatch.test_sender import NOW, HookSpy, attempts, make_settings, queue, rows
from tests.support.servers import SmtpSink

STAFF = ["agent@ars.test", "referent@ars.test", "chef@ars.test"]


def queue_group(factory: sessionmaker[Session], settings: Settings, recipients: Sequence[str],
                key: str = "notice") -> list[int]:
    """As ``Mailer.send_to_staff`` queues it: the first row's token is everyone's return path."""
    raw = (f"Message-ID: <{key}@ars.test>\r\nSubject: {key}\r\nTo: {', '.join(recipients)}\r\n\r\n"
           f"{key}\r\n").encode()
    ids: list[int] = []
    token: str | None = None
    with transaction(factory) as session:
        for rcpt in recipients:
            row = outbox.enqueue(session, raw=raw, recipient=rcpt, message_id=f"<{key}@ars.test>",
                                 idempotency_key=f"{key}:{rcpt}", kind="notification_equipe", now=NOW,
                                 settings=settings, return_path_token=token)
            assert row is not None
            token = token or row.verp_token
            ids.append(row.id)
    return ids


class CountingSigner:
    def __init__(self) -> None:
        self.signed: list[bytes] = []

    def sign(self, message: bytes) -> bytes:
        self.signed.append(message)
        return b"DKIM-Signature: v=1; test\r\n"


def flush(settings: Settings, factory: sessionmaker[Session], *, hook: HookSpy | None = None,
          signer: CountingSigner | None = None, include_backoff: bool = False) -> object:
    sender = Sender(settings, factory, FixedClock(NOW), "test", on_permanent_failure=hook, signer=signer)
    return asyncio.run(sender.flush(include_backoff=include_backoff))


def test_one_transaction_one_signature_a_row_each(smtp_sink: SmtpSink,
                                                  db_factory: sessionmaker[Session]) -> None:
    settings = make_settings(smtp_sink)
    alone = queue(db_factory, settings, ["ssi@chu.test"])
    ids = queue_group(db_factory, settings, STAFF)
    signer = CountingSigner()
    flush(settings, db_factory, signer=signer)
    assert len(signer.signed) == 2  # the acknowledgement-like row, and the staff message once
    [single] = [m for m in smtp_sink.messages if m.rcpt_tos == ("ssi@chu.test",)]
    [group] = [m for m in smtp_sink.messages if m is not single]
    assert group.rcpt_tos == tuple(STAFF)  # one transaction, a RCPT each, in queue order
    stored = {r.id: r for r in rows(db_factory)}
    assert group.mail_from == stored[ids[0]].mail_from == stored[ids[2]].mail_from != single.mail_from
    assert group.raw.startswith(b"DKIM-Signature:") and group.raw.count(b"DKIM-Signature:") == 1
    assert all(stored[i].status == "sent" and stored[i].attempts == 1 for i in [*alone, *ids])
    assert all(attempts(db_factory, i) == [("sent", 250)] for i in ids)


def test_a_refused_recipient_fails_alone(smtp_sink: SmtpSink, db_factory: sessionmaker[Session]) -> None:
    settings = make_settings(smtp_sink)
    ids = queue_group(db_factory, settings, STAFF)
    smtp_sink.fail("referent@ars.test", code=550, message="5.1.1 User unknown")
    hook = HookSpy()
    flush(settings, db_factory, hook=hook)
    [message] = smtp_sink.messages
    assert message.rcpt_tos == ("agent@ars.test", "chef@ars.test")  # RFC 5321 §3.3: the rest go on
    assert {r.id: r.status for r in rows(db_factory)} == {ids[0]: "sent", ids[1]: "failed", ids[2]: "sent"}
    assert hook.calls == [(ids[1], "failed", "5.1.1 User unknown")]
    assert attempts(db_factory, ids[1]) == [("permanent", 550)]


def test_a_deferred_recipient_is_retried_alone(smtp_sink: SmtpSink, sqlite_factory: sessionmaker[Session]) -> None:
    settings = make_settings(smtp_sink)
    ids = queue_group(sqlite_factory, settings, STAFF)
    smtp_sink.fail("chef@ars.test", code=451, times=1)
    flush(settings, sqlite_factory)
    assert {r.id: r.status for r in rows(sqlite_factory)} == {ids[0]: "sent", ids[1]: "sent", ids[2]: "queued"}
    flush(settings, sqlite_factory, include_backoff=True)
    assert [m.rcpt_tos for m in smtp_sink.messages] == [("agent@ars.test", "referent@ars.test"), ("chef@ars.test",)]
    assert len({m.raw for m in smtp_sink.messages}) == 1  # the same message, signed the same way
    assert attempts(sqlite_factory, ids[2]) == [("temporary", 451), ("sent", 250)]


def test_every_recipient_refused_sends_no_data(smtp_sink: SmtpSink, sqlite_factory: sessionmaker[Session]) -> None:
    settings = make_settings(smtp_sink)
    ids = queue_group(sqlite_factory, settings, STAFF[:2])
    smtp_sink.fail(None, code=451)
    flush(settings, sqlite_factory)
    assert smtp_sink.messages == []
    assert {r.status for r in rows(sqlite_factory)} == {"queued"}
    assert all(attempts(sqlite_factory, i) == [("temporary", 451)] for i in ids)
    smtp_sink.clear_failures()
    flush(settings, sqlite_factory, include_backoff=True)  # the connection was left usable (RSET)
    assert [m.rcpt_tos for m in smtp_sink.messages] == [tuple(STAFF[:2])]


def test_a_refused_message_is_everyones_answer(smtp_sink: SmtpSink, sqlite_factory: sessionmaker[Session]) -> None:
    settings = make_settings(smtp_sink)
    ids = queue_group(sqlite_factory, settings, STAFF)
    smtp_sink.fail(None, code=554, message="5.7.1 Content refused", stage="data", times=1)
    hook = HookSpy()
    flush(settings, sqlite_factory, hook=hook)
    assert {r.status for r in rows(sqlite_factory)} == {"failed"}
    assert sorted(c[0] for c in hook.calls) == ids


def test_without_a_relay_each_recipient_gets_a_file(tmp_path: Path, sqlite_factory: sessionmaker[Session]) -> None:
    settings = make_settings(None, maildir=str(tmp_path / "out"))
    queue_group(sqlite_factory, settings, STAFF[:2])
    flush(settings, sqlite_factory)
    files = sorted((tmp_path / "out" / "new").iterdir())
    delivered = sorted(email.message_from_bytes(f.read_bytes())["Delivered-To"] for f in files)
    assert delivered == sorted(STAFF[:2])
    assert {r.status for r in rows(sqlite_factory)} == {"sent"}


def test_a_bounce_at_the_shared_return_path_is_the_named_recipients(
        smtp_sink: SmtpSink, db_factory: sessionmaker[Session]) -> None:
    settings = make_settings(smtp_sink)
    ids = queue_group(db_factory, settings, STAFF)
    other = queue_group(db_factory, settings, ["autre@ars.test", "agent@ars.test"], key="other")
    flush(settings, db_factory)  # only copies the relay took can come back
    with db_factory() as session:
        first = session.get(outbox.OutboundMessage, ids[0])
        assert first is not None
        token = first.verp_token

        def found(named: list[str], mid: str | None = None, verp: str | None = token) -> tuple[int, ...] | None:
            match = outbox.find_bounced(session, verp, mid, named)
            return tuple(r.id for r in match.rows) if match is not None else None

        assert found(["Referent@ARS.test"]) == (ids[1],)
        assert found(["chef@ars.test", "agent@ars.test"]) == (ids[0], ids[2])  # every one named
        assert found([]) == ()  # a report naming nobody: nobody blamed
        assert found(["autre@ars.test"]) == ()  # never a row of another message
        # By Message-ID (weak evidence) the same way, within that message only.
        assert found(["agent@ars.test"], mid="<other@ars.test>", verp=None) == (other[1],)
        assert found(["nobody@x.test"], verp="0" * 32) is None


def test_copies_deferred_together_are_retried_together(smtp_sink: SmtpSink,
                                                        sqlite_factory: sessionmaker[Session]) -> None:
    settings = make_settings(smtp_sink)
    queue_group(sqlite_factory, settings, STAFF)
    smtp_sink.fail(None, code=451, stage="data", times=2)
    flush(settings, sqlite_factory)
    flush(settings, sqlite_factory, include_backoff=True)  # the second backoff has its jitter
    stored = rows(sqlite_factory)
    assert {r.attempts for r in stored} == {2}
    assert {r.status for r in stored} == {"queued"} and len({r.next_attempt_at for r in stored}) == 1
    flush(settings, sqlite_factory, include_backoff=True)
    assert [m.rcpt_tos for m in smtp_sink.messages] == [tuple(STAFF)]  # one transaction again


def test_a_relay_out_of_reach_defers_every_copy(smtp_sink: SmtpSink, sqlite_factory: sessionmaker[Session],
                                                caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(smtp_sink)
    queue_group(sqlite_factory, settings, STAFF)
    smtp_sink.stop()
    flush(settings, sqlite_factory)
    stored = rows(sqlite_factory)
    assert {r.status for r in stored} == {"queued"}
    assert all("relay unreachable" in (r.last_answer or "") for r in stored)  # the relay's state, said
    assert "unexpected transport failure" not in caplog.text


def test_a_claim_never_cuts_a_message_in_two(smtp_sink: SmtpSink, db_factory: sessionmaker[Session]) -> None:
    # A full claim ending inside a staff message took its other rows in the next claim: the same
    # bytes went out as two transactions (an outside tester: 1 notification in 100 in a burst).
    settings = make_settings(smtp_sink)
    queue(db_factory, settings, ["ssi@chu.test"])
    queue_group(db_factory, settings, STAFF)
    sender = Sender(settings, db_factory, FixedClock(NOW), "test", batch=2)
    asyncio.run(sender.flush())
    groups = [m.rcpt_tos for m in smtp_sink.messages if m.rcpt_tos != ("ssi@chu.test",)]
    assert groups == [tuple(STAFF)]
    assert all(r.status == "sent" for r in rows(db_factory))
