"""The sender at fan-out rates (issue 19): the envelope given explicitly to the relay, and no state
kept per destination domain unless a per-domain limit asks for it."""

from __future__ import annotations

import asyncio

import pytest
from aiosmtplib import SMTPResponse
from aiosmtplib.protocol import PERIOD_REGEX, SMTPProtocol, normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.clock import FixedClock
from mailgateway.dispatch import outbox
from mailgateway.dispatch.sender import Sender
from mailgateway.dispatch.transport import _plain, _stuffed
from mailgateway.settings import Settings
from mailgateway.store.engine import transaction
from tests.dispatch.test_sender import NOW, make_settings, queue, rows
from tests.support.servers import SmtpSink


def _flush(sender: Sender) -> object:
    return asyncio.run(sender.flush())


def test_each_message_goes_with_its_verp_envelope_and_refusals_are_answers(
        smtp_sink: SmtpSink, sqlite_factory: sessionmaker[Session]) -> None:
    settings = make_settings(smtp_sink, concurrency=1)
    queue(sqlite_factory, settings, ["a@e1.test", "refused@e2.test", "b@e3.test", "later@e4.test"])
    smtp_sink.fail("refused@e2.test", code=550, message="5.1.1 unknown user")
    smtp_sink.fail("later@e4.test", code=452, message="4.2.2 mailbox full", stage="data", times=1)
    sender = Sender(settings, sqlite_factory, FixedClock(NOW), "t", on_permanent_failure=None)
    _flush(sender)
    states = {r.recipient: (r.status, r.last_answer) for r in rows(sqlite_factory)}
    assert states["a@e1.test"][0] == states["b@e3.test"][0] == "sent"
    assert states["refused@e2.test"] == ("failed", "550 5.1.1 unknown user")
    assert states["later@e4.test"][0] == "queued" and "452" in str(states["later@e4.test"][1])
    received = {m.rcpt_tos[0]: m for m in smtp_sink.messages}
    assert set(received) == {"a@e1.test", "b@e3.test"}
    for row in rows(sqlite_factory):
        if row.recipient in received:  # RFC 5321 MAIL FROM: our VERP return path, exactly
            assert received[row.recipient].mail_from == row.mail_from


def test_only_plain_addresses_skip_the_parser() -> None:
    assert _plain("bounces+0f3a@ars.test") and _plain("ssi@e1.test")
    for hostile in ("a@b.test\r\nRCPT TO:<x@y>", "a@b.test>", "<a@b.test", "a b@c.test", "é@b.test", ""):
        assert not _plain(hostile), hostile


def test_no_state_per_domain_without_a_per_domain_limit(smtp_sink: SmtpSink,
                                                        sqlite_factory: sessionmaker[Session]) -> None:
    unlimited = make_settings(smtp_sink)
    queue(sqlite_factory, unlimited, [f"ssi@e{n}.test" for n in range(30)])
    sender = Sender(unlimited, sqlite_factory, FixedClock(NOW), "t", on_permanent_failure=None)
    _flush(sender)
    assert len(smtp_sink.messages) == 30 and sender.throttle.domains == {}
    limited = make_settings(smtp_sink, per_domain_per_hour=1)
    queue(sqlite_factory, limited, ["x@e0.test", "y@e0.test"], prefix="d")
    sender = Sender(limited, sqlite_factory, FixedClock(NOW), "t2", on_permanent_failure=None)
    _flush(sender)
    assert set(sender.throttle.domains) == {"e0.test"}
    assert len(smtp_sink.messages) == 31  # the second one to e0.test waits for the next hour


def test_throttle_forgets_domains_at_rest_but_keeps_those_still_limited() -> None:
    """Per-domain limits set: a domain whose hour window still counts a message is kept (its limit
    must hold), one back at rest is forgotten at the next pass (memory stays flat over fan-outs)."""
    from mailgateway.dispatch.throttle import Throttle

    now = [0.0]
    throttle = Throttle(per_domain_per_second=0.0, per_domain_per_hour=10, clock=lambda: now[0])
    throttle.take("a@chu-one.test")
    throttle.domain_wait("b@chu-two.test")  # looked at, never sent to
    throttle.new_pass()
    assert set(throttle.domains) == {"chu-one.test"}
    now[0] = 3600.0  # the hour has passed: chu-one.test is at rest too
    throttle.new_pass()
    assert throttle.domains == {}
    for _ in range(10):
        throttle.take("a@chu-one.test")
    throttle.new_pass()
    assert throttle.domain_wait("a@chu-one.test") > 0  # the limit survived the pass


def _queue_raw(factory: sessionmaker[Session], settings: Settings, raws: dict[str, bytes]) -> None:
    with transaction(factory) as session:
        for rcpt, raw in raws.items():
            assert outbox.enqueue(session, raw=raw, recipient=rcpt, message_id=f"<{rcpt}>", idempotency_key=rcpt,
                                  kind="test", now=NOW, settings=settings) is not None


def test_data_goes_as_it_is_with_its_periods_doubled_and_odd_line_ends_to_aiosmtplib(
        smtp_sink: SmtpSink, sqlite_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    """The sender writes DATA itself for CRLF mail (issue 19: aiosmtplib's two regular expressions
    per message): a line starting with a period must arrive as it was (RFC 5321 §4.5.2), the end
    of data must not be taken for a lone « . » line, and mail with other line ends still goes
    through aiosmtplib's normalisation."""
    through_aiosmtplib: list[bytes] = []
    original = SMTPProtocol.execute_data_command

    async def spy(self: SMTPProtocol, message: bytes, timeout: float | None = None) -> SMTPResponse:
        through_aiosmtplib.append(message)
        return await original(self, message, timeout)

    monkeypatch.setattr(SMTPProtocol, "execute_data_command", spy)
    settings = make_settings(smtp_sink, concurrency=1)
    crlf = b"Subject: x\r\nTo: a@e1.test\r\n\r\n.hidden\r\n..two\r\n.\r\nnot the end\r\n. \r\n"
    bare_lf = b"Subject: y\nTo: b@e2.test\n\n.dot\nbare\rcr\r\n"
    _queue_raw(sqlite_factory, settings, {"a@e1.test": crlf, "b@e2.test": bare_lf})
    _flush(Sender(settings, sqlite_factory, FixedClock(NOW), "t", on_permanent_failure=None))
    received = {m.rcpt_tos[0]: m.raw for m in smtp_sink.messages}
    assert received["a@e1.test"] == crlf
    assert received["b@e2.test"] == b"Subject: y\r\nTo: b@e2.test\r\n\r\n.dot\r\nbare\r\ncr\r\n"
    assert through_aiosmtplib == [bare_lf]  # the CRLF one never went through it


@given(st.lists(st.sampled_from([b"a", b".", b"..", b"\r\n", b"\n", b"\r", b" ", b"\r\n."]), max_size=12))
def test_stuffing_is_aiosmtplibs_for_crlf_mail(pieces: list[bytes]) -> None:
    raw = b"".join(pieces)
    ours = _stuffed(raw)
    if ours is None:  # not CRLF throughout, or no final CRLF: aiosmtplib's path
        assert raw.count(b"\n") != raw.count(b"\r\n") or raw.count(b"\r") != raw.count(b"\r\n") \
            or not raw.endswith(b"\r\n")
        return
    assert ours == PERIOD_REGEX.sub(b"..", normalize_message_line_endings(raw)) + b".\r\n"
