"""The sender at fan-out rates (issue 19): the envelope given explicitly to the relay, and no state
kept per destination domain unless a per-domain limit asks for it."""

from __future__ import annotations

import asyncio

from sqlalchemy.orm import Session, sessionmaker

from mailgateway.clock import FixedClock
from mailgateway.dispatch.sender import Sender
from mailgateway.dispatch.transport import _plain
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
