"""A quarantined message whose header block is ambiguous cannot be released: processing would put
it back in quarantine at once and staff would be told of it again (outside test: « #quarantaine
liberer 31 » answered « remis en traitement », then a new notice for the same n° 31)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailgateway.mail.analyse import UNRECOGNISED
from mailgateway.processing.quarantine import QuarantineError, release
from mailgateway.store.engine import transaction
from tests.support import casemail
from tests.support.casegateway import NOW, Gateway, make_gateway


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def test_an_ambiguous_message_stays_in_quarantine_with_the_reason(gw: Gateway) -> None:
    second_from = b"From: dsi@chu.test\r\nFrom: agent@ars.test\r\n"
    raw = casemail.declaration(1).replace(b"From: dsi@chu.test\r\n", second_from, 1)
    result = gw.feed(raw)
    assert result.status == "quarantined"
    with transaction(gw.app.factory) as s, pytest.raises(QuarantineError, match="ne peut pas être retraité"):
        release(s, result.inbound_id, actor="agent@ars.test", now=NOW)


def test_an_ordinary_quarantined_message_is_released(gw: Gateway) -> None:
    raw = casemail.message(sender="x@ailleurs.test", to="ssi-ara@ars.test", subject="Bonjour", body="Rien.\n")
    result = gw.feed(raw)
    assert result.status == "quarantined"
    with transaction(gw.app.factory) as s:
        release(s, result.inbound_id, actor="agent@ars.test", now=NOW)


def test_a_released_unrecognised_message_becomes_a_declaration_to_qualify(gw: Gateway) -> None:
    """An outside tester (a hospital's RSSI): a form attached under an empty body was quarantined
    as « message non reconnu »; « #quarantaine liberer N » analysed it again, found nothing again
    and put it back in quarantine: the declarant never had an answer and staff could not open a
    case from it. Released by staff, what is nothing else is a declaration to qualify."""
    raw = casemail.message(sender="cadre@chu-nantes.test", to="ssi-ara@ars.test", subject="Urgent",
                           body="Merci de nous rappeler au plus vite.\n")
    result = gw.feed(raw)
    assert (result.status, result.kind) == ("quarantined", "unknown")
    with transaction(gw.app.factory) as s:
        release(s, result.inbound_id, actor="agent@ars.test", now=NOW)
    again = gw.app.processor.process(result.inbound_id)
    assert again.status == "processed" and again.case_ref, again
    case = gw.case(again.case_ref)
    assert (case.kind, case.declarant) == ("incident", "cadre@chu-nantes.test")
    assert gw.last("accuse_reception", "cadre@chu-nantes.test")


def test_a_release_changes_nothing_for_what_was_quarantined_for_another_reason(gw: Gateway) -> None:
    """Only « message non reconnu » becomes a declaration: a message unreadable, over budget or
    in error keeps its reason (and its quarantine) when released."""
    raw = b"\r\n\r\n"
    result = gw.feed(raw)
    assert result.status == "quarantined" and result.reason != UNRECOGNISED
    with transaction(gw.app.factory) as s:
        release(s, result.inbound_id, actor="agent@ars.test", now=NOW)
    assert gw.app.processor.process(result.inbound_id).status == "quarantined"


def test_an_unrecognised_message_never_released_stays_unrecognised(gw: Gateway) -> None:
    raw = casemail.message(sender="cadre@chu-nantes.test", to="ssi-ara@ars.test", subject="Urgent",
                           body="Merci de nous rappeler au plus vite.\n")
    result = gw.feed(raw)
    assert (result.status, result.reason) == ("quarantined", UNRECOGNISED)
    assert not gw.outbound("accuse_reception")
