"""A quarantined message whose header block is ambiguous cannot be released: processing would put
it back in quarantine at once and staff would be told of it again (outside test: « #quarantaine
liberer 31 » answered « remis en traitement », then a new notice for the same n° 31)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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
