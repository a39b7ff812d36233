"""The timeline is a hash chain: any edited, inserted or deleted event is detected."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.cases.lifecycle import InvalidTransition, allowed, check_transition
from mailgateway.cases.timeline import append_event, savepoint
from mailgateway.cases.verify import verify_chain
from mailgateway.store.engine import transaction
from mailgateway.store.models import Case, CaseEvent

AT = datetime(2026, 11, 27, 8, 30, tzinfo=UTC)


def _case_with_events(factory: sessionmaker[Session], n: int = 4) -> tuple[object, int]:
    with transaction(factory) as s:
        case = Case(reference="SSI-ARA-2026-0001", region="ARA", kind="incident", status="RECU", title="t",
                    opened_at=AT, updated_at=AT, fields={}, event_count=0)
        s.add(case)
        s.flush()
        for i in range(n):
            append_event(s, case, type="note", actor="agent@ars.test", at=AT, data={"texte": f"note {i}"})
        case_id = case.id
    return factory, case_id


def _verify(factory: object, case_id: int) -> object:
    with factory() as s:  # type: ignore[operator]
        return verify_chain(s, s.get(Case, case_id))


def test_intact_chain_verifies(sqlite_factory: sessionmaker[Session]) -> None:
    factory, case_id = _case_with_events(sqlite_factory)
    assert _verify(factory, case_id) is None


def test_edited_event_is_named(sqlite_factory: sessionmaker[Session]) -> None:
    factory, case_id = _case_with_events(sqlite_factory)
    with transaction(factory) as s:  # type: ignore[arg-type]
        s.execute(update(CaseEvent).where(CaseEvent.seq == 2).values(data={"texte": "falsifié"}))
    broken = _verify(factory, case_id)
    assert broken is not None and broken.seq == 2  # type: ignore[attr-defined]


def test_deleted_event_is_detected(sqlite_factory: sessionmaker[Session]) -> None:
    factory, case_id = _case_with_events(sqlite_factory)
    with transaction(factory) as s:  # type: ignore[arg-type]
        s.execute(delete(CaseEvent).where(CaseEvent.seq == 3))
    broken = _verify(factory, case_id)
    assert broken is not None and broken.seq == 3  # type: ignore[attr-defined]


def test_deleted_last_event_is_detected(sqlite_factory: sessionmaker[Session]) -> None:
    factory, case_id = _case_with_events(sqlite_factory)
    with transaction(factory) as s:  # type: ignore[arg-type]
        s.execute(delete(CaseEvent).where(CaseEvent.seq == 4))
    assert _verify(factory, case_id) is not None


def test_transition_table() -> None:
    assert allowed("incident", "RECU", "PRIS_EN_COMPTE")
    assert not allowed("incident", "CLOS", "RESOLU")
    assert allowed("alert", "A_DIFFUSER", "DIFFUSEE")
    with pytest.raises(InvalidTransition):
        check_transition("alert", "DIFFUSEE", "A_DIFFUSER")


def test_the_events_of_one_flush_are_one_insert_and_the_case_one_update(
        sqlite_factory: sessionmaker[Session]) -> None:
    """Issue 19: the events of a flush are one INSERT of many rows (``executemany``), and the
    case's new head and count one UPDATE, both by statement on the driver (no unit of work);
    every row is the event it was made from. SQLite's own trace lists what it ran."""
    statements: list[str] = []
    with transaction(sqlite_factory) as s:
        case = Case(reference="SSI-ARA-2026-0002", region="ARA", kind="incident", status="RECU", title="t",
                    opened_at=AT, updated_at=AT, fields={}, event_count=0)
        s.add(case)
        s.flush()
        events = [append_event(s, case, type="note", actor="agent@ars.test", at=AT, data={"texte": f"note {i}"})
                  for i in range(5)]
        driver = s.connection().connection.driver_connection
        driver.set_trace_callback(statements.append)
        try:
            s.flush()
        finally:
            driver.set_trace_callback(None)
        flushed = list(statements)
        made = {(e.seq, e.hash, e.prev_hash, e.data["texte"]) for e in events}
        assert case not in s.dirty
    assert [st.split(" SET")[0].split(" (")[0] for st in flushed] == ["INSERT INTO case_events"] * 5 + [
        "UPDATE cases"]
    with sqlite_factory() as s:
        stored = {(row.seq, row.hash, row.prev_hash, row.data["texte"]) for row in s.scalars(select(CaseEvent))}
        head = s.scalar(select(Case))
        assert head is not None and head.event_count == 5 and head.last_event_hash == max(made)[1]
        assert verify_chain(s, head) is None
    assert stored == made and len(made) == 5


@pytest.mark.parametrize("flushed", [True, False], ids=["flushed", "pending"])
def test_a_savepoint_rolled_back_takes_its_events_and_the_case_head_with_it(
        sqlite_factory: sessionmaker[Session], flushed: bool) -> None:
    """The events and the case's new head are written by statement (issue 19): when one message of
    a batch fails, its savepoint's events must be gone — written or still pending — and the case
    reloaded, so the next message's event continues the stored chain, not the failed one's."""
    factory, case_id = _case_with_events(sqlite_factory, 2)
    with transaction(factory) as s:
        case = s.get(Case, case_id)
        assert case is not None
        with pytest.raises(RuntimeError), savepoint(s):
            append_event(s, case, type="note", actor="agent@ars.test", at=AT, data={"texte": "échoue"})
            case.title = "changé par le message qui échoue"
            if flushed:
                s.flush()
            raise RuntimeError("poison")
        with savepoint(s):
            append_event(s, case, type="note", actor="agent@ars.test", at=AT, data={"texte": "suivant"})
    with factory() as s:
        texts = [e.data["texte"] for e in s.scalars(select(CaseEvent).order_by(CaseEvent.seq))]
        stored = s.get(Case, case_id)
        assert stored is not None and stored.event_count == 3 and stored.title == "t"
    assert texts == ["note 0", "note 1", "suivant"]
    assert _verify(factory, case_id) is None
