"""Automatic replies are capped per recipient per hour and per day, and per case (RFC 3834 §2:
an automatic responder must not answer a storm with a storm; ``[outbound] auto_replies_per_*``).

The three caps are one statement (dispatch/mailer.py ``_caps_statement``, issue 19); each window
and each key is tested alone: the day window is not the hour's, the case cap counts the case's
replies whoever they went to, and replies older than the window count for nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import insert, select

from mailgateway.dispatch.compose import MailSpec
from mailgateway.dispatch.contexts import region_context
from mailgateway.dispatch.mailer import Refusal
from mailgateway.store.engine import transaction
from mailgateway.store.models import AutoReplyLog, Case
from tests.support import casemail
from tests.support.casegateway import Gateway, gateway_from, settings_data
from tests.support.db import at_head

CAPS = {"auto_replies_per_hour": 3, "auto_replies_per_day": 5, "auto_replies_per_case": 4}


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    data = settings_data(at_head(sqlite_url))
    data["outbound"] = {"bounce_domain": "ars.test", **CAPS}
    yield from gateway_from(data)


def _log(gw: Gateway, recipient: str, ago: list[timedelta], case_id: int | None = None) -> None:
    now = gw.clock.now()
    with transaction(gw.app.factory) as s:
        s.execute(insert(AutoReplyLog), [{"recipient": recipient, "case_id": case_id, "at": now - a} for a in ago])


def _reply(gw: Gateway, to: str, case_ref: str | None = None) -> list[Refusal]:
    """One automatic reply to ``to`` (about ``case_ref``); the refusals, empty when it was queued."""
    refusals: list[Refusal] = []
    key = f"test:{to}:{len(_queued(gw))}"
    with transaction(gw.app.factory) as s:
        case = s.scalar(select(Case).where(Case.reference == case_ref)) if case_ref else None
        spec = MailSpec(template="avertissement", to=to, from_address="ssi-ara@ars.test", from_name="ARS",
                        context={**region_context(gw.app.settings, "ARA"), "motif": "essai", "details": []},
                        idempotency_key=key)
        gw.app.mailer.send(s, spec, kind="test", case=case, auto_reply=True, refusals=refusals)
    return refusals


def _queued(gw: Gateway) -> list[str]:
    return [r.recipient for r in gw.outbound("test")]


def test_the_hour_cap_counts_the_last_hour_only(gw: Gateway) -> None:
    _log(gw, "rssi@chu.test", [timedelta(minutes=5), timedelta(minutes=30), timedelta(minutes=70)])
    assert _reply(gw, "rssi@chu.test") == []  # 2 in the last hour: a third is allowed
    [refusal] = _reply(gw, "rssi@chu.test")
    assert refusal.capped and "(par heure)" in refusal.reason


def test_the_day_cap_counts_the_last_day_not_the_last_hour(gw: Gateway) -> None:
    # Five in the last day, none in the last hour: the hour allows it, the day does not.
    _log(gw, "rssi@chu.test", [timedelta(hours=h) for h in (2, 5, 9, 15, 23)])
    [refusal] = _reply(gw, "rssi@chu.test")
    assert refusal.capped and "(par jour)" in refusal.reason
    assert _queued(gw) == []


def test_replies_older_than_a_day_and_to_others_count_for_nothing(gw: Gateway) -> None:
    _log(gw, "rssi@chu.test", [timedelta(hours=25 + h) for h in range(10)])
    _log(gw, "autre@chu.test", [timedelta(minutes=m) for m in range(1, 10)])
    assert _reply(gw, "rssi@chu.test") == [] and _reply(gw, "RSSI@chu.test ") == []
    assert _queued(gw) == ["rssi@chu.test", "rssi@chu.test"]


def test_the_case_cap_counts_every_recipient_of_the_case(gw: Gateway) -> None:
    ref = gw.declare(1)  # its acknowledgement is the case's first automatic reply
    case_id = gw.case(ref).id
    _log(gw, "a@chu.test", [timedelta(minutes=1)], case_id=case_id)
    _log(gw, "b@chu.test", [timedelta(days=3)], case_id=case_id)  # the case cap has no window
    assert _reply(gw, "c@chu.test", ref) == []  # the case's fourth automatic reply
    [refusal] = _reply(gw, "d@chu.test", ref)
    assert refusal.capped and f"pour le dossier {ref}" in refusal.reason
    assert _reply(gw, "d@chu.test") == []  # the same recipient, about no case: allowed


def test_forged_mail_in_a_declarants_name_does_not_use_up_their_acknowledgements(gw: Gateway) -> None:
    """Found by an outside tester: five unsigned declarations with ``From:`` a hospital's address
    were each acknowledged (summary only) and used up the per-recipient cap; the genuine,
    DKIM-signed declaration of that address then got no acknowledgement. Replies to the address
    that authenticated are capped apart from replies to an address anyone could have written."""
    for n in range(1, 6):  # forged: unsigned, From the declarant
        gw.feed(casemail.declaration(n, sender="dsi@chu.test"))
    acks = gw.outbound("accuse_reception", "dsi@chu.test")
    assert len(acks) == CAPS["auto_replies_per_hour"]  # the forgeries are capped among themselves
    genuine = gw.feed(casemail.sign(casemail.declaration(9, sender="dsi@chu.test"), casemail.establishment_key()))
    assert genuine.case_ref
    assert gw.case(genuine.case_ref).acknowledged_at is not None
    assert len(gw.outbound("accuse_reception", "dsi@chu.test")) == len(acks) + 1
    # Still capped among the verified ones: a signer cannot flood its own address either.
    for n in range(10, 10 + CAPS["auto_replies_per_hour"] + 1):
        gw.feed(casemail.sign(casemail.declaration(n, sender="dsi@chu.test"), casemail.establishment_key()))
    assert len(gw.outbound("accuse_reception", "dsi@chu.test")) == len(acks) + CAPS["auto_replies_per_hour"]
