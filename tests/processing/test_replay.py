"""The replay guard (processing/replay.py): keys, claims, and the date of command mail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.intake.accept import accept_in
from mailgateway.mail.facts import MessageFacts, SenderVerdict
from mailgateway.processing import replay
from mailgateway.store.engine import transaction
from mailgateway.store.models import ReplayKey

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
SIG = "dkim:ars.test:" + "ab" * 32


def facts(signature: str | None = SIG, message_id: str | None = "<Cmd-1@Ars.Test>",
          signed: frozenset[str] = frozenset()) -> MessageFacts:
    verdict = SenderVerdict(address="agent@ars.test", authenticated=True, method="dkim", signature_key=signature,
                            signed_headers=signed)
    return MessageFacts(kind="command", sender=verdict, message_id=message_id)


def inbound(session: Session, n: int) -> int:
    return accept_in(session, f"message {n}".encode(), source="cli", now=NOW).inbound_id


def mail(date: str | None) -> bytes:
    head = "From: agent@ars.test\r\nTo: ssi-ara@ars.test\r\nSubject: RE: x\r\n"
    if date is not None:
        head += f"Date: {date}\r\n"
    return (head + "\r\n#clore\r\nDate: Fri, 27 Nov 2026 10:00:00 +0100\r\n").encode()


# --- keys ---------------------------------------------------------------------------------------


def test_keys_are_the_signature_then_the_message_id_lower_cased_without_brackets() -> None:
    assert replay.keys_of(facts()) == [SIG, "mid:cmd-1@ars.test"]
    assert replay.keys_of(facts(message_id=None)) == [SIG]
    assert replay.keys_of(facts(message_id=" <> ")) == [SIG]
    assert replay.keys_of(facts(signature=None)) == ["mid:cmd-1@ars.test"]
    assert replay.keys_of(facts(signature=None, message_id=None)) == []


def test_a_key_longer_than_the_column_is_hashed_with_its_prefix() -> None:
    keys = replay.keys_of(facts(signature="dkim:" + "d" * 300 + ":x", message_id="<" + "a" * 990 + "@x>"))
    assert all(len(k) <= 255 for k in keys)
    assert keys[0].startswith("dkim:sha256:") and keys[1].startswith("mid:sha256:")
    assert keys != replay.keys_of(facts(signature="dkim:" + "d" * 300 + ":y", message_id="<" + "a" * 990 + "@y>"))


# --- claims -------------------------------------------------------------------------------------


def test_the_first_message_claims_and_any_key_in_common_makes_a_replay(sqlite_factory: Any) -> None:
    factory: sessionmaker[Session] = sqlite_factory
    with transaction(factory) as s:
        first, second, third, fourth = (inbound(s, n) for n in range(4))
        assert replay.claim(s, facts(), first, NOW) is None
        # The same signature (one more Received: line changes the bytes, not b=), another Message-ID.
        found = replay.claim(s, facts(message_id="<other@ars.test>"), second, NOW)
        assert found is not None and found.inbound_id == first
        # The same Message-ID (case aside), another signature.
        found = replay.claim(s, facts(signature="dkim:ars.test:" + "cd" * 32, message_id="<CMD-1@ars.test>"),
                             third, NOW)
        assert found is not None and found.inbound_id == first
        # Nothing in common: its own claim.
        assert replay.claim(s, facts(signature=None, message_id="<new@ars.test>"), fourth, NOW) is None
        # Claiming again for the same message (a re-run) is not a replay.
        assert replay.claim(s, facts(), first, NOW) is None
    with factory() as s:
        rows = {(r.key, r.inbound_id) for r in s.scalars(select(ReplayKey))}
    assert rows == {(SIG, first), ("mid:cmd-1@ars.test", first), ("mid:new@ars.test", fourth)}


def test_keys_roll_back_with_the_transaction_that_acts(sqlite_factory: Any) -> None:
    """A crash before the commit leaves no key: the message is re-run, once."""
    factory: sessionmaker[Session] = sqlite_factory
    with transaction(factory) as s:
        first = inbound(s, 1)
    with pytest.raises(RuntimeError), transaction(factory) as s:
        assert replay.claim(s, facts(), first, NOW) is None
        raise RuntimeError("crash before commit")
    with transaction(factory) as s:
        assert s.scalar(select(func.count()).select_from(ReplayKey)) == 0
        assert replay.claim(s, facts(), first, NOW) is None


def test_a_concurrent_copy_that_won_the_insert_is_a_replay_not_an_error(sqlite_factory: Any,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    factory: sessionmaker[Session] = sqlite_factory
    with transaction(factory) as s:
        first, second = inbound(s, 1), inbound(s, 2)
        assert replay.claim(s, facts(), first, NOW) is None
    real = replay._owners
    calls: list[int] = []

    def blind_once(session: Session, keys: Any) -> list[tuple[str, int]]:
        calls.append(1)
        return [] if len(calls) == 1 else real(session, keys)  # the check ran before the other commit

    monkeypatch.setattr(replay, "_owners", blind_once)
    with transaction(factory) as s:
        found = replay.claim(s, facts(), second, NOW)
        assert found is not None and found.inbound_id == first
        s.flush()  # the insert did nothing (ON CONFLICT): the transaction is still usable
        assert {k.inbound_id for k in s.scalars(select(ReplayKey))} == {first}


def test_a_message_without_keys_claims_nothing(sqlite_factory: Any) -> None:
    factory: sessionmaker[Session] = sqlite_factory
    with transaction(factory) as s:
        first = inbound(s, 1)
        assert replay.claim(s, facts(signature=None, message_id=None), first, NOW) is None
        assert s.scalar(select(func.count()).select_from(ReplayKey)) == 0


# --- dates of commands --------------------------------------------------------------------------


@pytest.mark.parametrize(("date", "expected"), [
    ("Fri, 27 Nov 2026 10:00:00 +0100", None),
    ("Fri, 20 Nov 2026 10:30:00 +0100", None),  # 6 days 23.5 hours
    ("Thu, 19 Nov 2026 10:00:00 +0100", "commande trop ancienne"),
    ("Fri, 27 Nov 2025 10:00:00 +0100", "commande trop ancienne"),
    ("Sat, 28 Nov 2026 09:00:00 +0100", None),  # clocks drift: less than a day ahead
    ("Sun, 29 Nov 2026 10:00:00 +0100", "daté dans le futur"),
    ("Fri, 27 Nov 2026 09:00:00 -0000", None),  # RFC 5322 §3.3: UTC, local zone unknown
    ("hier après-midi", "en-tête Date illisible"),
    ("", "en-tête Date illisible"),
    (None, "en-tête Date absent"),
])
def test_command_dates(date: str | None, expected: str | None) -> None:
    refusal = replay.command_date_refusal(mail(date), facts(), NOW, 7)
    if expected is None:
        assert refusal is None
    else:
        assert refusal is not None and expected in refusal and refusal.endswith("commande refusée")


def test_the_date_of_the_body_is_not_the_date_of_the_message() -> None:
    """Only the header block is read: a Date line in the body dates nothing."""
    assert "absent" in (replay.command_date_refusal(mail(None), facts(), NOW, 7) or "")


def test_a_date_outside_the_signature_is_refused_when_the_signature_says_what_it_covers() -> None:
    covered = facts(signed=frozenset({"from", "subject", "date"}))
    uncovered = facts(signed=frozenset({"from", "subject"}))
    date = "Fri, 27 Nov 2026 10:00:00 +0100"
    assert replay.command_date_refusal(mail(date), covered, NOW, 7) is None
    assert "pas couverte par sa signature" in (replay.command_date_refusal(mail(date), uncovered, NOW, 7) or "")


def test_the_age_is_configurable() -> None:
    date = "Wed, 25 Nov 2026 10:00:00 +0100"
    assert replay.command_date_refusal(mail(date), facts(), NOW, 7) is None
    assert "trop ancienne" in (replay.command_date_refusal(mail(date), facts(), NOW, 1) or "")
    assert replay.command_date_refusal(mail(date), facts(), NOW + timedelta(days=-1), 1) is None
