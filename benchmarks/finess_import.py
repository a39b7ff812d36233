"""FINESS import benchmark: 100,000 synthetic ``structureet`` lines into SQLite.

Prints the first import, the idempotent re-import (nothing written) and a re-import where 1 % of
the lines changed, in lines/s, plus a streamed recipient selection over 40,000 contacts and the
memory it takes. Run: ``.venv/bin/python benchmarks/finess_import.py [--lines N]``.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import insert, select

from mailgateway.directory import count_recipients, import_finess, parse_target, select_recipients
from mailgateway.directory.regions import regions
from mailgateway.store.engine import make_engine, make_sessionmaker, transaction, upgrade
from mailgateway.store.models import Contact, Establishment

NOW = datetime(2026, 11, 30, tzinfo=UTC)
CATEGORIES = [("355", "1102"), ("101", "1101"), ("611", "2204"), ("500", "4401"), ("183", "4101"), ("146", "1203")]


def synthetic_extraction(path: Path, n: int, *, seed: int = 1, renamed: float = 0.0) -> None:
    rng = random.Random(seed)
    deps = [d for r in regions().values() for d in r.departements]
    lines = [f"finess;etalab;{n};2026-05-12"]
    for i in range(n):
        dep = deps[i % len(deps)]
        prefix = {"9A": "9701", "9B": "9702", "9C": "9703", "9D": "9704", "9F": "9805"}.get(dep, dep)
        finess = f"{prefix}{i:0{9 - len(prefix)}d}"[:9]
        categetab, agr = CATEGORIES[rng.randrange(len(CATEGORIES))]
        name = f"Établissement n°{i} de Mâcon-sur-Saône"
        if rng.random() < renamed:
            name += " (renommé)"
        fields = ["structureet", finess, "", name[:38].upper(), name, "", "", "1", "R", "DE LA PAIX", "", "",
                  "123", dep, "LIBDEP", "71000 MÂCON", "", "", categetab, "lib", agr, "lib", "", "", "03",
                  "ARS", "1", "lib", "1979-02-13", "1979-02-13", "2024-04-22", ""]  # fmt: skip
        lines.append(";".join(fields))
        if i % 10 == 0:
            lines.append(f"geolocalisation;{finess};845934.4;6568912.1;1,ATLASANTE;2024-04-22")
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))


def timed_import(url: str, path: Path) -> tuple[float, str]:
    factory = make_sessionmaker(make_engine(url))
    start = time.perf_counter()
    with transaction(factory) as session:
        report = import_finess(session, path, NOW)
    elapsed = time.perf_counter() - start
    return elapsed, f"added {report.added}, changed {report.changed}, unchanged {report.unchanged}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=100_000)
    args = parser.parse_args()
    n = args.lines
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        upgrade(url)
        src = Path(tmp) / "finess.csv"
        synthetic_extraction(src, n)
        for label, path in (("first import", src), ("idempotent re-import", src)):
            elapsed, outcome = timed_import(url, path)
            print(f"{label:<24} {n:>7} lines {elapsed:6.2f} s {n / elapsed:>9,.0f} lines/s  ({outcome})")
        changed = Path(tmp) / "finess-changed.csv"
        synthetic_extraction(changed, n, renamed=0.01)
        elapsed, outcome = timed_import(url, changed)
        print(f"{'re-import, 1 % changed':<24} {n:>7} lines {elapsed:6.2f} s {n / elapsed:>9,.0f} lines/s  ({outcome})")

        # Fan-out selection: 40,000 ssi contacts across every region's establishments.
        factory = make_sessionmaker(make_engine(url))
        with transaction(factory) as session:
            every = list(session.scalars(select(Establishment.finess)))
            finess = random.Random(2).sample(every, min(40_000, len(every)))
            rows = [{"finess": f, "address": f"ssi@{f}.example", "role": "ssi", "created_at": NOW,
                     "updated_at": NOW} for f in finess]  # fmt: skip
            session.execute(insert(Contact), rows)
        target = parse_target("all")
        with factory() as session:
            for region in ("ARA", "IDF"):
                tracemalloc.start()
                start = time.perf_counter()
                count = sum(1 for _ in select_recipients(session, region, target))
                elapsed = time.perf_counter() - start
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                assert count == count_recipients(session, region, target)
                print(f"select_recipients {region:<6} {count:>7} rows {elapsed:6.2f} s  peak Python memory "
                      f"{peak / 1e6:5.1f} MB")  # fmt: skip
            tracemalloc.start()
            everything = sum(1 for r in regions() for _ in select_recipients(session, r, target))
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            print(f"select_recipients all regions {everything:>7} rows, peak Python memory {peak / 1e6:5.1f} MB")


if __name__ == "__main__":
    main()
