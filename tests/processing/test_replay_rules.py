"""The documented rules of the replay guard (processing/replay.py, docs/guarantees.md "once only"):
keys per region, the Message-ID key, and the window of a command's Date — 7 days back
(``[authentication] max_command_age_days``), at most one day ahead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.intake.accept import accept_in
from mailgateway.mail.facts import MessageFacts, SenderVerdict
from mailgateway.processing import replay
from mailgateway.settings import AuthenticationSettings
from mailgateway.store.engine import transaction
from mailgateway.store.models import ReplayKey

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)  # 10:00 in Paris
SIG = "dkim:ars.test:" + "ab" * 32
DAY = timedelta(days=1)


def facts(signature: str | None = SIG, message_id: str | None = "<Cmd-1@Ars.Test>",
          signed: frozenset[str] = frozenset()) -> MessageFacts:
    verdict = SenderVerdict(address="agent@ars.test", authenticated=True, method="dkim", signature_key=signature,
                            signed_headers=signed)
    return MessageFacts(kind="command", sender=verdict, message_id=message_id)


def inbound(session: Session, n: int) -> int:
    return accept_in(session, f"message {n}".encode(), source="cli", now=NOW).inbound_id


def dated(when: datetime | str | None, *, twice: bool = False) -> bytes:
    head = "From: agent@ars.test\r\nTo: ssi-ara@ars.test\r\nSubject: RE: x\r\n"
    if when is not None:
        value = when if isinstance(when, str) else when.strftime("%a, %d %b %Y %H:%M:%S %z")
        head += f"Date: {value}\r\n" * (2 if twice else 1)
    return (head + "\r\n#clore\r\n").encode()


# --- keys -----------------------------------------------------------------------------------------


def test_keys_are_scoped_by_region_upper_cased() -> None:
    assert replay.keys_of(facts(), "ara") == [f"ARA|{SIG}", "ARA|mid:cmd-1@ars.test"]
    assert replay.keys_of(facts(), "PDL") == [f"PDL|{SIG}", "PDL|mid:cmd-1@ars.test"]
    assert replay.keys_of(facts(), None) == [SIG, "mid:cmd-1@ars.test"]
    assert replay.keys_of(facts(), "") == [SIG, "mid:cmd-1@ars.test"]


@pytest.mark.parametrize(("message_id", "expected"), [
    ("<Cmd-1@Ars.Test>", "mid:cmd-1@ars.test"),
    ("<Xavier.X@ars.test>", "mid:xavier.x@ars.test"),
    ("Cmd-1@Ars.Test", "mid:cmd-1@ars.test"),
    ("  < cmd-1@ars.test >  ", "mid:cmd-1@ars.test"),
    ("<>", None),
    ("< >", None),
    ("", None),
    ("   ", None),
    (None, None),
])
def test_message_id_key(message_id: str | None, expected: str | None) -> None:
    assert replay.message_id_key(message_id) == expected
    scoped = replay.message_id_key(message_id, "ara")
    assert scoped == (None if expected is None else f"ARA|{expected}")


def test_a_key_that_fits_the_column_is_kept_and_one_character_more_is_hashed() -> None:
    fits = "x" * (255 - len("mid:"))
    assert replay.message_id_key(fits) == f"mid:{fits}"
    over = replay.message_id_key(fits + "y")
    assert over is not None and over.startswith("mid:sha256:") and len(over) == len("mid:sha256:") + 64


def test_a_hashed_key_keeps_its_region_readable_and_differs_per_region() -> None:
    long_id = "<" + "a" * 400 + "@ars.test>"
    ara, pdl = replay.message_id_key(long_id, "ARA"), replay.message_id_key(long_id, "PDL")
    assert ara is not None and ara.startswith("ARA|mid:sha256:")
    assert pdl is not None and pdl.startswith("PDL|mid:sha256:")
    assert ara.rpartition(":")[2] != pdl.rpartition(":")[2]
    signature = replay.keys_of(facts(signature="dkim:ars.test:" + "d" * 300, message_id=None), "ARA")
    assert signature[0].startswith("ARA|dkim:sha256:") and len(signature[0]) <= 255


def test_a_message_id_with_undecodable_bytes_still_makes_a_bounded_key() -> None:
    # Header bytes that are not UTF-8 reach us as surrogate escapes; the key must not crash.
    key = replay.message_id_key("<" + "\udcff" * 300 + "@ars.test>")
    assert key is not None and key.startswith("mid:sha256:")
    assert key != replay.message_id_key("<" + "\udcfe" * 300 + "@ars.test>")


def test_a_message_id_equal_to_the_signature_key_is_listed_once() -> None:
    assert replay.keys_of(facts(signature="mid:x@ars.test", message_id="<x@ars.test>")) == ["mid:x@ars.test"]


def test_the_same_message_acts_once_per_region(sqlite_factory: Any) -> None:
    """One alert sent to ssi-ara and ssi-pdl is two deliveries, not a replay; a second copy to
    the same region is."""
    factory: sessionmaker[Session] = sqlite_factory
    with transaction(factory) as s:
        first, second, third = (inbound(s, n) for n in range(3))
        assert replay.claim(s, facts(), first, NOW, "ARA") is None
        assert replay.claim(s, facts(), second, NOW, "PDL") is None
        found = replay.claim(s, facts(message_id="<other@ars.test>"), third, NOW, "ara")
        assert found is not None and found.inbound_id == first
    with factory() as s:
        keys = {r.key: r.inbound_id for r in s.scalars(select(ReplayKey))}
    assert keys == {f"ARA|{SIG}": first, "ARA|mid:cmd-1@ars.test": first,
                    f"PDL|{SIG}": second, "PDL|mid:cmd-1@ars.test": second}


def test_recorded_names_the_earliest_message(sqlite_factory: Any) -> None:
    factory: sessionmaker[Session] = sqlite_factory
    with transaction(factory) as s:
        first, second = inbound(s, 1), inbound(s, 2)
        # The earliest message's key sorts last: the order is the messages', not the keys'.
        s.add(ReplayKey(key="mid:a", inbound_id=second, at=NOW))
        s.add(ReplayKey(key="mid:z", inbound_id=first, at=NOW + DAY))
        s.flush()
        found = replay.recorded(s, ["mid:a", "mid:z"])
        assert found is not None and found.inbound_id == first
        assert replay.recorded(s, []) is None
        assert replay.recorded(s, ["mid:c"]) is None


def test_a_rerun_records_the_keys_it_was_missing(sqlite_factory: Any) -> None:
    factory: sessionmaker[Session] = sqlite_factory
    with transaction(factory) as s:
        first = inbound(s, 1)
        assert replay.claim(s, facts(message_id=None), first, NOW, "ARA") is None
        assert replay.claim(s, facts(), first, NOW, "ARA") is None
    with factory() as s:
        rows = {(r.key, r.inbound_id, r.at.replace(tzinfo=UTC)) for r in s.scalars(select(ReplayKey))}
    assert rows == {(f"ARA|{SIG}", first, NOW), ("ARA|mid:cmd-1@ars.test", first, NOW)}


def test_what_staff_are_told_about_a_replay() -> None:
    first = ReplayKey(key="mid:x", inbound_id=1, at=NOW)
    assert replay.first_applied_fr(first) == "27/11/2026 à 10:00"  # Europe/Paris (UTC+1 in November)
    assert replay.already_applied(first) == (
        "ce message avait déjà été reçu et ses commandes appliquées le 27/11/2026 à 10:00. "
        "Rien n'a été appliqué une seconde fois : vous n'avez rien à faire.")
    summer = ReplayKey(key="mid:y", inbound_id=2, at=datetime(2026, 7, 1, 9, 0, tzinfo=UTC))
    assert replay.first_applied_fr(summer) == "01/07/2026 à 11:00"  # UTC+2
    assert replay.first_applied_fr(ReplayKey(key="mid:z", inbound_id=3, at=datetime(2026, 7, 1, 9, 0))) == \
        "01/07/2026 à 11:00"  # a naive time from the database is UTC


# --- the Date window of commands -------------------------------------------------------------------


def test_the_documented_window() -> None:
    assert AuthenticationSettings().max_command_age_days == 7
    assert replay.MAX_FUTURE == DAY


@pytest.mark.parametrize(("offset", "accepted"), [
    (timedelta(0), True),
    (-7 * DAY, True),  # exactly the limit: still recent
    (-7 * DAY - timedelta(seconds=1), False),
    (-30 * DAY, False),
    (DAY, True),  # exactly one day ahead: clock drift
    (DAY + timedelta(seconds=1), False),
    (400 * DAY, False),
])
def test_command_date_window_at_its_edges(offset: timedelta, accepted: bool) -> None:
    when = (NOW + offset).astimezone(UTC)
    refusal = replay.command_date_refusal(dated(when), facts(), NOW, 7)
    assert (refusal is None) is accepted, refusal


def test_the_refusals_say_why_in_french_with_the_paris_date() -> None:
    old = replay.command_date_refusal(dated(NOW - 10 * DAY), facts(), NOW, 7)
    assert old == ("commande trop ancienne : message daté du 17/11/2026 à 10:00, plus de 7 jour(s) "
                   "avant sa réception : commande refusée")
    future = replay.command_date_refusal(dated(NOW + 2 * DAY), facts(), NOW, 7)
    assert future == "message daté dans le futur (29/11/2026 à 10:00) : commande refusée"
    half = replay.command_date_refusal(dated(NOW - DAY), facts(), NOW, 0.5)
    assert half is not None and "plus de 0.5 jour(s)" in half


@pytest.mark.parametrize(("raw", "reason"), [
    (dated(None), "en-tête Date absent : une commande doit être datée : commande refusée"),
    (dated(NOW, twice=True), "plusieurs en-têtes Date (RFC 5322 §3.6) : commande refusée"),
    (dated("pas une date"), "en-tête Date illisible (RFC 5322 §3.3) : commande refusée"),
    (dated("Fri, 99 Nov 2026 10:00:00 +0100"), "en-tête Date illisible (RFC 5322 §3.3) : commande refusée"),
])
def test_undated_and_unreadable_commands_are_refused(raw: bytes, reason: str) -> None:
    assert replay.command_date_refusal(raw, facts(), NOW, 7) == reason


def test_sent_at_reads_the_zone_and_treats_minus_zero_as_utc() -> None:
    assert replay.sent_at(dated("Fri, 27 Nov 2026 10:00:00 +0100")) == (NOW, None)
    when, problem = replay.sent_at(dated("Fri, 27 Nov 2026 09:00:00 -0000"))
    assert problem is None and when == NOW and when.tzinfo is not None


def test_the_age_is_measured_from_reception_not_processing() -> None:
    # A backlog after an outage: received a week ago, processed now; the command is fresh.
    received = NOW - 10 * DAY
    assert replay.command_date_refusal(dated(received), facts(), received, 7) is None


def test_a_date_outside_the_signature_is_refused_only_when_the_signature_is_known() -> None:
    raw = dated(NOW)
    assert replay.command_date_refusal(raw, facts(signed=frozenset({"from", "date"})), NOW, 7) is None
    assert replay.command_date_refusal(raw, facts(signed=frozenset({"from"})), NOW, 7) == (
        "la date du message n'est pas couverte par sa signature DKIM : commande refusée")
    # A DMARC pass relayed by a trusted authserv-id says nothing of what was signed.
    assert replay.command_date_refusal(raw, facts(signed=frozenset()), NOW, 7) is None
