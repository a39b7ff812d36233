"""Replies to establishments carry a bounded References chain: the thread's first Message-ID and
the last few, the parent last (RFC 5322 §3.6.4 as mail clients trim it), not every internal mail."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailgateway.dispatch.compose import bounded_references
from tests.support import casemail
from tests.support.casegateway import Gateway, make_gateway


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def test_a_reply_in_a_long_case_names_the_first_and_the_last_messages_only(gw: Gateway) -> None:
    ref = gw.declare()
    acknowledgement = gw.last("accuse_reception", "dsi@chu.test")
    for n in range(12):  # staff notes: internal, never named to the declarant (cases/service.thread_ids)
        gw.clock.advance(minutes=1)
        gw.command(ref, f"#note point {n}\n")
    for n in range(1, 9):  # the declarant's own messages: a long thread in their mailbox
        gw.clock.advance(minutes=1)
        reply = casemail.sign(casemail.message(
            sender="dsi@chu.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}] Accusé de réception",
            body=f"Point {n} : les serveurs sont isolés.\n", in_reply_to=acknowledgement.message_id,
            message_id=f"<reply-{n}@chu.test>"), casemail.establishment_key())
        assert gw.feed(reply).case_ref == ref
    gw.clock.advance(minutes=1)
    gw.command(ref, "#repondre Nous revenons vers vous.\n")
    msg = casemail.parse(gw.last("reponse", "dsi@chu.test").raw)
    references = msg["References"].split()
    assert len(references) == 5, references
    assert references[0] == "<decl-1@chu.test>"  # the declaration: the thread's root
    assert references[-1] == msg["In-Reply-To"] == "<reply-8@chu.test>"  # the message answered, last
    assert all(r.endswith("@chu.test>") or r == acknowledgement.message_id for r in references)
    assert len(set(references)) == len(references)


def test_bounded_references_keeps_short_chains_whole_and_trims_long_ones() -> None:
    assert bounded_references(["<a@x>", "<b@x>"]) == ["<a@x>", "<b@x>"]
    chain = [f"<m{n}@x>" for n in range(25)]
    assert bounded_references(chain) == ["<m0@x>", "<m21@x>", "<m22@x>", "<m23@x>", "<m24@x>"]
    assert bounded_references(["<a@x>", "<a@x>", "<b@x>"]) == ["<a@x>", "<b@x>"]
