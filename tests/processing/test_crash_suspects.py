"""A message in flight when a try ended without a result is tried alone next (issue 19, the chaos
test under load): a batch's tries are counted in one commit, so a daemon killed during a batch
charges all of it; three kills during a burst used to quarantine the same 25 innocent
declarations. The next try of each such message is its own: a poison message still runs out of
attempts, its neighbours do not."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select, update

from mailgateway.processing.runner import BATCH_SIZE, Processor
from mailgateway.store.engine import reading, transaction
from mailgateway.store.models import InboundMessage
from tests.processing.test_priority_order import _declarations
from tests.support.casegateway import Gateway, make_gateway


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


class Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs, nothing catches it."""


def _tried(gw: Gateway, ids: list[int], attempts: int) -> None:
    with transaction(gw.app.factory) as s:
        s.execute(update(InboundMessage).where(InboundMessage.id.in_(ids)).values(attempts=attempts))


def _rows(gw: Gateway, ids: list[int]) -> dict[int, tuple[str, int]]:
    with reading(gw.app.factory) as s:
        rows = s.execute(select(InboundMessage.id, InboundMessage.status, InboundMessage.attempts)
                         .where(InboundMessage.id.in_(ids)))
        return {row.id: (row.status, row.attempts) for row in rows}


def _record_batches(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    batches: list[list[int]] = []
    original = Processor.process_batch

    def recording(self: Processor, inbound_ids: list[int], **kw: bool) -> object:
        batches.append(list(inbound_ids))
        return original(self, inbound_ids, **kw)

    monkeypatch.setattr(Processor, "process_batch", recording)
    return batches


def test_messages_tried_before_are_tried_one_by_one_in_order_then_batches_resume(
        gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = _declarations(gw, range(1, 36))
    _tried(gw, ids[:BATCH_SIZE], 1)  # the batch in flight when the daemon was killed
    batches = _record_batches(gw, monkeypatch)

    results = gw.app.processor.process_pending()

    assert [r.inbound_id for r in results] == ids  # first come, first served, as before
    assert all(r.status == "processed" for r in results)
    assert batches == [[i] for i in ids[:BATCH_SIZE]] + [ids[BATCH_SIZE:]]


def test_a_batch_stops_before_its_first_suspect(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = _declarations(gw, range(1, 11))
    _tried(gw, [ids[4]], 1)
    batches = _record_batches(gw, monkeypatch)

    gw.app.processor.process_pending()

    assert batches == [ids[:4], [ids[4]], ids[5:]]


def test_a_kill_during_a_suspects_try_charges_that_message_only(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    limit = gw.app.settings.processing.max_attempts
    ids = _declarations(gw, range(1, 31))
    _tried(gw, ids[:BATCH_SIZE], limit - 1)  # a batch charged by every earlier kill but one
    original = Processor._count_attempts
    kills: list[list[int]] = []

    def killed_after_counting(self: Processor, inbound_ids: list[int], may_defer: bool) -> object:
        counted = original(self, inbound_ids, may_defer)
        if not kills:
            kills.append(list(inbound_ids))
            raise Killed
        return counted

    monkeypatch.setattr(Processor, "_count_attempts", killed_after_counting)
    with pytest.raises(Killed):
        gw.app.processor.process_pending()
    assert kills == [[ids[0]]]
    rows = _rows(gw, ids)
    assert rows[ids[0]] == ("received", limit)
    assert all(rows[i] == ("received", limit - 1) for i in ids[1:BATCH_SIZE])

    results = {r.inbound_id: r for r in gw.app.processor.process_pending()}

    assert results[ids[0]].status == "quarantined"  # its tries are used up: it may be the poison
    assert all(results[i].status == "processed" for i in ids[1:])
