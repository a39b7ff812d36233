"""The References of our answers run oldest first, the parent last (RFC 5322 §3.6.4): an ARS
agent's Thunderbird reply to a staff notification (References: <declaration> <notification>,
In-Reply-To: <notification>) got a receipt listing the notification before the declaration
(found by an outside tester): the Message-IDs were taken in the order used to find the case."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import casemail
from tests.support.casegateway import Gateway, make_gateway


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def test_a_receipt_lists_the_thread_oldest_first(gw: Gateway) -> None:
    ref = str(gw.feed(casemail.sign(casemail.declaration(1), casemail.establishment_key())).case_ref)
    notification = gw.notification(ref, "agent@ars.test").message_id
    reply = casemail.staff_mail("#gravite critique\n", subject=f"Re: [{ref}] Nouvelle déclaration",
                                in_reply_to=notification, references=["<decl-1@chu.test>", notification],
                                message_id="<reply-1@ars.test>")
    assert gw.feed(reply).status == "processed"
    receipt = casemail.parse(gw.last("recu_commandes", "agent@ars.test").raw)
    assert receipt["In-Reply-To"] == "<reply-1@ars.test>"
    assert str(receipt["References"]).split() == ["<decl-1@chu.test>", notification, "<reply-1@ars.test>"]
