"""The timeline is a hash chain: any edited, inserted or deleted event is detected."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import delete, event, select, update
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.cases.lifecycle import InvalidTransition, allowed, check_transition
from mailgateway.cases.timeline import append_event
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


def test_the_events_of_one_flush_are_one_insert_each_row_matched_to_its_event(
        sqlite_factory: sessionmaker[Session]) -> None:
    """Issue 19: SQLite cannot return generated ids in the order of the rows given, so without the
    hash as a sentinel SQLAlchemy wrote each event in a statement of its own (five per declaration).
    One statement now, and every event object still carries the id of its own row."""
    statements: list[str] = []
    engine = sqlite_factory.kw["bind"]

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        with transaction(sqlite_factory) as s:
            case = Case(reference="SSI-ARA-2026-0002", region="ARA", kind="incident", status="RECU", title="t",
                        opened_at=AT, updated_at=AT, fields={}, event_count=0)
            s.add(case)
            s.flush()
            events = [append_event(s, case, type="note", actor="agent@ars.test", at=AT, data={"texte": f"note {i}"})
                      for i in range(5)]
            s.flush()
            ids = {e.id: (e.seq, e.hash) for e in events}
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert sum("INSERT INTO case_events" in st for st in statements) == 1
    with sqlite_factory() as s:
        stored = {row.id: (row.seq, row.hash) for row in s.scalars(select(CaseEvent))}
    assert stored == ids and len(ids) == 5
