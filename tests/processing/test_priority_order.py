"""Staff commands jump the queue (issue 19): during a burst of declarations a staff command is
processed in the next batch of the sweep, the declarations keep their order among themselves,
and a flood of (forgeable) priority mail never stops first-come mail."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailgateway.intake.accept import accept_in
from mailgateway.intake.priority import PriorityRule
from mailgateway.processing.runner import BATCH_SIZE, FIFO_SHARE, Result, due_query
from mailgateway.store.engine import transaction
from tests.support import casemail
from tests.support.casegateway import Gateway, make_gateway


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def _accept(gw: Gateway, raw: bytes, mail_from: str) -> int:
    """As the daemon accepts it: the priority decided from the envelope and the From."""
    rule = PriorityRule.of_settings(gw.app.settings)
    with transaction(gw.app.factory) as s:
        return accept_in(s, raw, source="smtp", now=gw.clock.now(), mail_from=mail_from,
                         rcpt_tos=["ssi-ara@ars.test"], region="ARA", rule=rule).inbound_id


def _declarations(gw: Gateway, numbers: range) -> list[int]:
    return [_accept(gw, casemail.declaration(n), "dsi@chu.test") for n in numbers]


def _command(gw: Gateway, ref: str) -> int:
    notification = gw.notification(ref, "agent@ars.test")
    raw = casemail.staff_mail("#qualifier significatif\n", in_reply_to=notification.message_id,
                              subject=f"RE: [{ref}] Nouvelle déclaration")
    return _accept(gw, raw, "agent@ars.test")


def test_a_staff_command_queued_behind_100_declarations_is_processed_in_the_first_batch(gw: Gateway) -> None:
    ref = gw.declare(1000)
    declarations = _declarations(gw, range(1, 101))
    command = _command(gw, ref)
    assert gw.app.processor.pending(3) == [command, *declarations[:2]]

    results = gw.app.processor.process_pending(25)

    assert [r.inbound_id for r in results] == [command, *declarations[:24]]  # FIFO among declarations
    assert results[0].status == "processed" and results[0].case_ref == ref
    assert "significatif" in gw.receipt_text()  # the agent's receipt is queued for the relay
    assert gw.app.processor.pending(1) == [declarations[24]]


def test_a_command_arriving_during_a_sweep_is_in_the_next_batch(gw: Gateway) -> None:
    ref = gw.declare(1000)
    declarations = _declarations(gw, range(1, 61))
    arrived: list[int] = []

    def after(result: Result) -> None:  # the agent's mail is accepted while the first batch is processed
        if not arrived:
            arrived.append(_command(gw, ref))

    gw.app.processor.on_result = after
    ids = [r.inbound_id for r in gw.app.processor.process_pending()]

    assert ids[:BATCH_SIZE] == declarations[:BATCH_SIZE]
    assert ids[BATCH_SIZE] == arrived[0]  # not after the 35 declarations still queued
    assert ids[BATCH_SIZE + 1:] == declarations[BATCH_SIZE:]


def test_a_flood_of_priority_mail_leaves_room_for_declarations_in_every_batch(gw: Gateway) -> None:
    # Anyone can claim a staff envelope: priority orders, it must not starve the declarations.
    forged = [_accept(gw, casemail.staff_mail(f"#note {n}\n", signed=False), "agent@ars.test") for n in range(30)]
    declarations = _declarations(gw, range(1, 11))

    ids = [r.inbound_id for r in gw.app.processor.process_pending(2 * BATCH_SIZE)]

    first = ids[:BATCH_SIZE]
    assert first == forged[:BATCH_SIZE - FIFO_SHARE] + declarations[:FIFO_SHARE]
    assert sorted(ids) == sorted(forged + declarations)


@pytest.mark.parametrize("urgent", [True, False])
def test_the_queue_is_read_in_index_order_without_sorting(gw: Gateway, urgent: bool) -> None:
    """SQLite walks ix_inbound_pending: no sort of the whole backlog for each sweep."""
    stmt = due_query(gw.clock.now(), urgent=urgent).limit(25)
    with gw.app.factory() as s:
        compiled = stmt.compile(s.get_bind())
        params = tuple(str(compiled.params[k]) for k in compiled.positiontup or ())
        rows = s.connection().exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", params)
        plan = " ".join(str(row[-1]) for row in rows)
    assert "ix_inbound_pending" in plan
    if urgent:  # the few priority rows are sorted by id within their priority, not the backlog
        assert "TEMP B-TREE FOR ORDER BY" not in plan, plan
    else:
        assert "TEMP B-TREE" not in plan, plan
