"""Case references: per region and year, never reused, safe under concurrent processes."""

from __future__ import annotations

import multiprocessing

from sqlalchemy.orm import Session, sessionmaker

from mailgateway.cases.reference import REFERENCE_RE, format_reference, next_reference
from mailgateway.store.engine import make_engine, make_sessionmaker, transaction


def test_format_matches_the_contract() -> None:
    assert format_reference("ARA", 2026, 42) == "SSI-ARA-2026-0042"
    assert REFERENCE_RE.match("SSI-PACA-2026-10000")


def test_sequence_is_per_region_and_year(db_factory: sessionmaker[Session]) -> None:
    factory = db_factory
    with transaction(factory) as s:
        refs = [next_reference(s, "ARA", 2026), next_reference(s, "ARA", 2026),
                next_reference(s, "PDL", 2026), next_reference(s, "ARA", 2027)]
    assert refs == ["SSI-ARA-2026-0001", "SSI-ARA-2026-0002", "SSI-PDL-2026-0001", "SSI-ARA-2027-0001"]


def test_committed_numbers_are_never_reused(db_factory: sessionmaker[Session]) -> None:
    factory = db_factory
    with transaction(factory) as s:
        assert next_reference(s, "ARA", 2026) == "SSI-ARA-2026-0001"
    with transaction(factory) as s:
        assert next_reference(s, "ARA", 2026) == "SSI-ARA-2026-0002"


def _take(url: str, count: int, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    engine = make_engine(url)
    factory = make_sessionmaker(engine)
    got = []
    for _ in range(count):
        with transaction(factory) as s:
            got.append(next_reference(s, "ARA", 2026))
    engine.dispose()
    queue.put(got)


def test_concurrent_processes_never_get_the_same_reference(db_url: str, db_factory: object) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_take, args=(db_url, 25, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    refs = [r for _ in procs for r in queue.get(timeout=60)]
    for p in procs:
        p.join(timeout=60)
    assert len(refs) == 100 and len(set(refs)) == 100
