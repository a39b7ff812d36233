"""Once only for declarations (processing/replay.py, docs/guarantees.md "once only").

Found by an outside tester: one genuinely signed declaration, sent again with an unsigned
``Received:`` line in front or an ``X-Nonce:`` header added, opened a new case, acknowledged the
declarant and notified every staff member each time (its domain being known, no cap applied).
A relay retrying after a lost ``250`` does the same to an honest declaration.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from mailgateway.store.models import Case
from tests.support import casemail
from tests.support.casegateway import Gateway, gateway_from, make_gateway, settings_data
from tests.support.db import at_head
from tests.support.dkim import dkimpy_sign, rsa_key, zone

ARA_STAFF = ("agent@ars.test", "referent@ars.test")


@pytest.fixture
def gw(db_url: str) -> Iterator[Gateway]:
    yield from make_gateway(db_url)


def cases(gw: Gateway) -> int:
    with gw.app.factory() as s:
        return int(s.scalar(select(func.count()).select_from(Case)) or 0)


def relayed(raw: bytes, n: int) -> bytes:
    return f"Received: from relay{n}.chu.test by mx.ars.test; Fri, 27 Nov 2026 09:0{n}:00 +0100\r\n".encode() + raw


def test_a_signed_declaration_replayed_behind_other_headers_acts_once(gw: Gateway) -> None:
    signed = casemail.sign(casemail.declaration(1), casemail.establishment_key())
    first = gw.feed(signed)
    assert first.status == "processed" and first.case_ref
    for n, copy in enumerate([relayed(signed, 1), signed.replace(b"\r\n\r\n", b"\r\nX-Nonce: 42\r\n\r\n", 1),
                              relayed(relayed(signed, 2), 3)]):
        again = gw.feed(copy)
        assert (again.status, again.case_ref) == ("processed", first.case_ref), n
    assert cases(gw) == 1
    assert len(gw.outbound("accuse_reception")) == 1
    assert len(gw.outbound("notification_equipe")) == len(ARA_STAFF)
    replays = [e for e in gw.events(first.case_ref) if e.type == "declaration_rejouee"]
    assert len(replays) == 3 and all(e.data and "message rejoué" in e.data["motif"] for e in replays)


def test_a_relay_retry_of_an_unsigned_declaration_acts_once(gw: Gateway) -> None:
    raw = casemail.declaration(2)
    first = gw.feed(raw)
    assert gw.feed(relayed(raw, 1)).case_ref == first.case_ref
    assert cases(gw) == 1 and len(gw.outbound("accuse_reception")) == 1


def test_same_message_id_with_another_body_or_from_is_another_declaration(gw: Gateway) -> None:
    raw = casemail.declaration(3)
    gw.feed(raw)
    gw.feed(raw.replace(b"incident num\xc3\xa9ro 3", b"incident num\xc3\xa9ro 33"))  # same Message-ID, new text
    gw.feed(raw.replace(b"From: dsi@chu.test", b"From: autre@chu.test"))  # a forged copy from elsewhere
    assert cases(gw) == 3


def test_the_same_declaration_to_two_regions_opens_a_case_in_each(gw: Gateway) -> None:
    signed = casemail.sign(casemail.declaration(4, to="ssi-ara@ars.test"), casemail.establishment_key())
    gw.feed(signed)
    # To is signed: this copy is unauthenticated, with the same From, Message-ID and body: keys are
    # per region, so it is the PDL mailbox's first declaration, not a replay.
    gw.feed(signed.replace(b"To: ssi-ara@ars.test", b"To: ssi-pdl@ars.test"))
    assert cases(gw) == 2


def test_a_forged_copy_sent_first_does_not_swallow_the_genuine_signed_declaration(gw: Gateway) -> None:
    """Outside tester: an unsigned copy with the genuine From, Message-ID and body, sent first,
    made the genuine signed declaration a « replay » — no acknowledgement, staff never told."""
    genuine = casemail.sign(casemail.declaration(5), casemail.establishment_key())
    forged = casemail.declaration(5).replace(b"Subject: =?utf-8?q?D=C3=A9claration_d=27incident_5?=",
                                             b"Subject: Test - RAS")
    assert forged != casemail.declaration(5)
    first = gw.feed(forged)
    second = gw.feed(genuine)
    assert second.case_ref and second.case_ref != first.case_ref  # its own case
    assert [e for e in gw.events(second.case_ref) if e.type == "declaration_rejouee"] == []
    assert len(gw.outbound("notification_equipe")) == 2 * len(ARA_STAFF)  # staff told of both
    # And the other way round: an unsigned copy after the genuine one is its replay.
    again = gw.feed(relayed(forged.replace(b"Subject: Test - RAS", b"Subject: autre"), 1))
    assert again.case_ref in (first.case_ref, second.case_ref) and cases(gw) == 2


def test_a_double_signed_declaration_replayed_under_its_other_signature_acts_once(db_url: str) -> None:
    """Outside tester: a declaration signed twice (RSA + another key, a rotation), replayed with
    the first signature removed and a CRLF added after the body (which neither signature covers):
    the other signature was accepted, a new signature key, a new case."""
    second_key = rsa_key("rsa2026b", "chu.test")
    data = settings_data(at_head(db_url))
    data["authentication"]["static_keys"] = {**data["authentication"]["static_keys"], **zone(second_key)}
    for gw in gateway_from(data):
        once = casemail.sign(casemail.declaration(6), casemail.establishment_key())
        twice = casemail.sign(once, second_key)  # the newest signature on top
        first = gw.feed(twice)
        top, _, rest = twice.partition(b"DKIM-Signature:")
        without_top = b"DKIM-Signature:" + rest.split(b"DKIM-Signature:", 1)[1]  # the other one only
        assert without_top.count(b"DKIM-Signature:") == 1 and top == b""
        again = gw.feed(without_top + b"\r\n\r\n")
        assert again.case_ref == first.case_ref and cases(gw) == 1
        assert len(gw.outbound("accuse_reception")) == 1


def test_a_copy_verified_under_a_signature_not_covering_message_id_acts_once(db_url: str) -> None:
    """Outside tester (t51): two signatures, neither covering Message-ID; the copy stripped of the
    accepted one and given a new Message-ID verified under the other — a new signature key, a new
    Message-ID: a second case and a second staff notification. Every aligned signature of the
    first message is recorded now."""
    second_key = rsa_key("rsa2026b", "chu.test")
    data = settings_data(at_head(db_url))
    data["authentication"]["static_keys"] = {**data["authentication"]["static_keys"], **zone(second_key)}
    for gw in gateway_from(data):
        raw = casemail.declaration(7)
        lower = dkimpy_sign(raw, second_key, ("from", "to", "subject", "date"))
        both = dkimpy_sign(lower + raw, casemail.establishment_key(), ("from", "to", "subject")) + lower + raw
        first = gw.feed(both)
        assert first.status == "processed" and cases(gw) == 1
        copy = (lower + raw).replace(b"Message-ID: <decl-7@chu.test>", b"Message-ID: <other-7@chu.test>")
        assert copy != lower + raw
        again = gw.feed(copy)
        assert again.case_ref == first.case_ref and cases(gw) == 1
        assert len(gw.outbound("accuse_reception")) == 1
