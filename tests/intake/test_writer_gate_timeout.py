"""The accept writer waits a bounded time for the write gate (docs/guarantees.md: accepting never
waits for processing). Another process holding the gate (a paused or wedged processing host) gets
the batch's sessions a 451 after ``gate_timeout`` — and a message answered 451 is never stored,
not even once the holder lets go."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.clock import SystemClock
from mailgateway.intake.writer import GATE_TIMEOUT_SECONDS, AcceptWriter
from mailgateway.store.engine import GateTimeout, reading
from mailgateway.store.models import InboundMessage
from tests.store.test_write_gate import _holder
from tests.support.db import migrated


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with migrated(f"sqlite:///{tmp_path / 'writer.db'}") as f:
        yield f


def _count(factory: sessionmaker[Session]) -> int:
    with reading(factory) as s:
        return int(s.scalar(select(func.count()).select_from(InboundMessage)) or 0)


def test_a_batch_refused_for_a_held_gate_is_never_stored(factory: sessionmaker[Session], tmp_path: Path) -> None:
    assert 1.0 <= GATE_TIMEOUT_SECONDS <= 10.0  # below the clients' patience (writer.py)
    holder = _holder(str(factory.kw["bind"].url), 2.0)
    writer = AcceptWriter(factory, SystemClock(), gate_timeout=0.5)
    writer.start()
    try:
        asked = time.monotonic()
        refused = [writer.submit(f"Subject: {n}\r\n\r\nheld\r\n".encode(), source="smtp", mail_from="dsi@chu.test",
                                 rcpt_tos=["ssi-pdl@ars.test"], region="PDL") for n in range(3)]
        for future in refused:
            assert isinstance(future.exception(timeout=10), GateTimeout)
        assert time.monotonic() - asked < 1.5
        holder.communicate(timeout=30)  # the holder lets go
        time.sleep(0.3)
        assert _count(factory) == 0
        later = writer.submit(b"Subject: later\r\n\r\nfree\r\n", source="smtp", mail_from="dsi@chu.test",
                              rcpt_tos=["ssi-pdl@ars.test"], region="PDL")
        assert not later.result(timeout=10).duplicate
    finally:
        writer.stop()
    assert _count(factory) == 1, "a message answered 451 was stored"
