"""Staff commands by mail: authenticated staff of the case's region only, a receipt for every
command mail, every change on the timeline with the sender as actor."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import casemail
from tests.support.casegateway import Gateway, make_gateway


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def test_assign_me_and_qualify_grave_apply_and_are_receipted(gw: Gateway) -> None:
    ref = gw.declare()
    result = gw.command(ref, "#assigner moi\n#qualifier grave\n")
    assert result.status == "processed"
    case = gw.case(ref)
    assert case.assignee == "agent@ars.test"
    assert (case.severity, case.status) == ("GRAVE", "QUALIFIE")
    types = [(e.type, e.actor) for e in gw.events(ref)]
    assert ("assignation", "agent@ars.test") in types
    assert ("qualification", "agent@ars.test") in types
    assert ("statut", "agent@ars.test") in types
    receipt = gw.last("recu_commandes", "agent@ars.test")
    text = casemail.text_of(receipt.raw)
    assert "[appliquée] #assigner moi" in text and "[appliquée] #qualifier grave" in text
    msg = casemail.parse(receipt.raw)
    assert f"[{ref}]" in msg["Subject"]
