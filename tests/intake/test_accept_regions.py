"""Deduplication is per receiving region (docs/guarantees.md, "The region is where the mail arrived"):
the same bytes are one message per region, and a message without arrival information (``ingest``)
is a duplicate of the bytes stored for any region. One writer item with several regions (one SMTP
transaction to several regional mailboxes) is one row per region, answered once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.clock import FixedClock
from mailgateway.intake.accept import accept_in
from mailgateway.intake.writer import AcceptWriter
from mailgateway.store.engine import transaction
from mailgateway.store.models import InboundMessage
from tests.support.db import migrated

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
RAW = b"From: alerte@esante.test\r\nSubject: alerte\r\n\r\nCERTFR-2026-ALE-001\r\n"


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with migrated(f"sqlite:///{tmp_path / 'accept.db'}") as f:
        yield f


def test_the_same_bytes_are_one_message_per_region(factory: sessionmaker[Session]) -> None:
    with transaction(factory) as s:
        pdl = accept_in(s, RAW, source="smtp", now=NOW, region="PDL")
        ara = accept_in(s, RAW, source="smtp", now=NOW, region="ARA")
        again = accept_in(s, RAW, source="imap", now=NOW, region="PDL", source_key="imap:PDL:INBOX:1:7")
        ingested = accept_in(s, RAW, source="cli", now=NOW)
    assert not pdl.duplicate and not ara.duplicate and ara.inbound_id != pdl.inbound_id
    assert again.duplicate and again.inbound_id == pdl.inbound_id
    assert ingested.duplicate and ingested.inbound_id == pdl.inbound_id


def test_an_ingested_message_routed_to_a_region_is_that_regions_copy(factory: sessionmaker[Session]) -> None:
    with transaction(factory) as s:
        ingested = accept_in(s, RAW, source="cli", now=NOW)
        row = s.get(InboundMessage, ingested.inbound_id)
        assert row is not None
        row.region = "PDL"  # what the runner records once processed
        assert accept_in(s, RAW, source="smtp", now=NOW, region="PDL").duplicate
        assert not accept_in(s, RAW, source="smtp", now=NOW, region="ARA").duplicate


def test_one_transaction_to_several_regions_is_one_row_each(factory: sessionmaker[Session]) -> None:
    writer = AcceptWriter(factory, FixedClock(NOW))
    writer.start()
    try:
        first = writer.submit(RAW, source="smtp", mail_from="alerte@esante.test", peer="127.0.0.1",
                              rcpt_tos=["ssi-pdl@ars.test", "ssi-ara@ars.test"], regions=["PDL", "ARA"]
                              ).result(timeout=30)
        resend = writer.submit(RAW, source="smtp", mail_from="alerte@esante.test", peer="127.0.0.1",
                               rcpt_tos=["ssi-ara@ars.test", "ssi-bre@ars.test"], regions=["ARA", "BRE"]
                               ).result(timeout=30)
        again = writer.submit(RAW, source="smtp", mail_from="alerte@esante.test", peer="127.0.0.1",
                              rcpt_tos=["ssi-ara@ars.test"], regions=["ARA"]).result(timeout=30)
    finally:
        writer.stop()
    assert len(first.fresh) == 2 and not first.everywhere_duplicate
    assert resend.duplicate and len(resend.fresh) == 1 and not resend.everywhere_duplicate  # BRE is new
    assert again.everywhere_duplicate and again.fresh == []
    with factory() as s:
        rows = list(s.execute(select(InboundMessage.region, InboundMessage.dedup_key).order_by(InboundMessage.id)))
    assert [r.region for r in rows] == ["PDL", "ARA", "BRE"]
    assert len({r.dedup_key for r in rows}) == 3
