"""``cases list`` over 100,000 cases in SQLite (README, "Benchmarks": ≤ 100 ms).

Bulk-inserts ``--cases`` synthetic cases (five years, 13 regions, 85 % closed, the rest spread over
the open incident statuses) with Core ``insert`` executemany, then times the view behind the CLI,
``mailgateway.cases.views.list_cases``, in a read-only session as ``cases list`` runs it: the
default listing (newest 1,000), ``--status`` on an open status, ``--status`` + ``--region``, and
the query plan of each. Median of ``--repeat`` runs, after one warm-up run.

Run: ``.venv/bin/python benchmarks/cases_list.py [--cases 100000] [--repeat 7]``.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, text

from mailgateway.cases.views import list_cases
from mailgateway.store.engine import make_engine, make_sessionmaker, reading, transaction, upgrade
from mailgateway.store.models import Case

REGIONS = ["ARA", "BFC", "BRE", "CVL", "COR", "GES", "HDF", "IDF", "NOR", "NAQ", "OCC", "PDL", "PAC"]
OPEN = ["RECU", "PRIS_EN_COMPTE", "EN_QUALIFICATION", "QUALIFIE", "ACCOMPAGNEMENT", "SUIVI", "RESOLU"]
START = datetime(2022, 1, 1, tzinfo=UTC)


def populate(factory: Any, count: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    counters: dict[tuple[str, int], int] = {}
    rows = []
    for i in range(count):
        opened = START + timedelta(seconds=i * (5 * 365 * 86400 // count))
        region = rng.choice(REGIONS)
        n = counters[(region, opened.year)] = counters.get((region, opened.year), 0) + 1
        status = "CLOS" if rng.random() < 0.85 else rng.choice(OPEN)
        rows.append({
            "reference": f"SSI-{region}-{opened.year}-{n:04d}", "region": region, "kind": "incident",
            "status": status, "severity": rng.choice(["NON_QUALIFIE", "MINEUR", "GRAVE"]),
            "title": f"Déclaration d'incident n° {i} : rançongiciel au centre hospitalier",
            "finess": f"{440000000 + i % 5000}", "establishment": f"Centre hospitalier {i % 5000}",
            "declarant": f"rssi-{i % 5000}@ch.test", "fields": {"impacts": ["sécurité des soins"]},
            "opened_at": opened, "updated_at": opened, "event_count": 1,
            "closed_at": opened + timedelta(days=20) if status == "CLOS" else None,
        })
    with transaction(factory) as session:
        for k in range(0, count, 10_000):
            session.execute(insert(Case), rows[k:k + 10_000])


def timed(factory: Any, repeat: int, **kwargs: Any) -> tuple[float, int]:
    runs = []
    found = 0
    for _ in range(repeat + 1):
        started = time.perf_counter()
        with reading(factory) as session:
            found = len(list_cases(session, **kwargs))
        runs.append(time.perf_counter() - started)
    return statistics.median(runs[1:]), found


def plan(factory: Any, where: str) -> str:
    with reading(factory) as session:
        rows = session.execute(text(
            f"EXPLAIN QUERY PLAN SELECT * FROM cases {where} ORDER BY opened_at DESC, id DESC LIMIT 1000")).all()
    return "; ".join(r[-1] for r in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-cases-"))
    url = f"sqlite:///{workdir / 'cases.db'}"
    try:
        upgrade(url)
        engine = make_engine(url)
        factory = make_sessionmaker(engine)
        started = time.perf_counter()
        populate(factory, args.cases)
        print(f"cases list, {args.cases} cases in SQLite (inserted in {time.perf_counter() - started:.1f} s), "
              f"median of {args.repeat}")
        worst = 0.0
        for label, kwargs, where in [
            ("cases list (newest 1000)", {}, ""),
            ("cases list --status SUIVI", {"status": "SUIVI"}, "WHERE status = 'SUIVI'"),
            ("cases list --status SUIVI --region PDL", {"status": "SUIVI", "region": "PDL"},
             "WHERE status = 'SUIVI' AND region = 'PDL'"),
            ("cases list --status CLOS", {"status": "CLOS"}, "WHERE status = 'CLOS'"),
        ]:
            seconds, found = timed(factory, args.repeat, **kwargs)
            worst = max(worst, seconds)
            print(f"  {label:<40} {seconds * 1000:7.1f} ms  {found:5d} rows   plan: {plan(factory, where)}")
        print(f"  worst {worst * 1000:.1f} ms (target ≤ 100 ms): {'ok' if worst <= 0.1 else 'MISSED'}")
        engine.dispose()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
