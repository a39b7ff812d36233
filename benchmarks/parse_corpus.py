"""Throughput of ``mail.analyse`` over the whole shared corpus (target: ≥ 300 messages/s, 0 crashes).

Usage: ``.venv/bin/python benchmarks/parse_corpus.py [CORPUS_DIR] [--json]``

Prints messages/s, the count per kind, the crash count (an exception escaping ``analyse``: must
be 0) and the slowest messages. Also prints, side by side, the bare stdlib parse rate
(``email.message_from_bytes`` with compat32) as the ratio's reference.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailgateway.mail.analyse import analyse  # noqa: E402
from mailgateway.mail.context import AnalysisContext  # noqa: E402
from mailgateway.mail.corpus import iter_corpus  # noqa: E402

CTX = AnalysisContext(
    region_addresses={"ssi-ara@ars-sante.test": "ARA"},
    own_addresses=frozenset({"ssi-ara@ars-sante.test", "bounces@ars-sante.test"}),
    bounce_domain="ars-sante.test",
    loop_token="mailgateway:ars-sante.test",
    acss_domains=("esante.gouv.fr",),
    default_region="ARA",
)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("corpus", nargs="?", default=str(ROOT.parent / "shared" / "corpus"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    root = Path(args.corpus)
    if not root.is_dir():
        print(f"corpus not found: {root}", file=sys.stderr)
        return 2
    items = list(iter_corpus(root))
    kinds: Counter[str] = Counter()
    crashes: list[str] = []
    slowest: list[tuple[float, str]] = []
    start = time.perf_counter()
    for name, raw, _features in items:
        t0 = time.perf_counter()
        try:
            facts = analyse(raw, CTX)
            kinds[facts.kind] += 1
        except Exception as exc:  # must never happen: analyse is total
            crashes.append(f"{name}: {type(exc).__name__}: {exc}")
        slowest.append((time.perf_counter() - t0, name))
    elapsed = time.perf_counter() - start
    t0 = time.perf_counter()
    for _name, raw, _features in items:
        email.message_from_bytes(raw, policy=email.policy.compat32)
    bare = time.perf_counter() - t0
    slowest.sort(reverse=True)
    rate = len(items) / elapsed
    result = {
        "messages": len(items),
        "seconds": round(elapsed, 3),
        "messages_per_second": round(rate, 1),
        "bare_stdlib_parse_per_second": round(len(items) / bare, 1),
        "ratio_to_bare_parse": round(bare / elapsed, 3),
        "kinds": dict(sorted(kinds.items())),
        "crashes": len(crashes),
        "slowest": [{"item": n, "seconds": round(s, 3)} for s, n in slowest[:5]],
        "target_met": rate >= 300 and not crashes,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{len(items)} messages in {elapsed:.2f} s: {rate:.0f} msg/s (target ≥ 300)")
        print(f"bare stdlib compat32 parse: {len(items) / bare:.0f} msg/s; analyse/bare = {bare / elapsed:.2f}")
        print("per kind: " + ", ".join(f"{k}={v}" for k, v in sorted(kinds.items())))
        print(f"crashes: {len(crashes)}")
        for line in crashes[:20]:
            print("  " + line)
        print("slowest: " + ", ".join(f"{n} {s * 1000:.0f} ms" for s, n in slowest[:5]))
    return 0 if not crashes else 1


if __name__ == "__main__":
    sys.exit(main())
