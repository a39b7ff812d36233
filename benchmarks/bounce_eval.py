"""Bounce detection measured on labelled real mail: ours (``mail.analyse``) beside flufl.bounce.

Usage::

    .venv/bin/python benchmarks/bounce_eval.py CORPUS_DIR EXPECTATIONS.tsv [--split held|tune|all]
                                               [--show-errors] [--json]

``CORPUS_DIR`` is a local directory of messages (the shared corpus, or any folder of .eml
files); nothing is fetched. ``EXPECTATIONS.tsv`` has one line per message, tab-separated::

    <path relative to CORPUS_DIR>  <split: tune|held>  <bounce|not>  <addr1,addr2,... or ->

The addresses are the recipients we sent to (RFC 3464 Original-Recipient when the report gives
one), lower case. Figures printed for each detector:

* detection recall / precision: messages called bounces against ``bounce`` labels;
* address recall: labelled addresses reported, over all labelled addresses of the bounces;
* invented: reported addresses that are not labelled (for any message, bounce or not).

flufl.bounce has no separate detection: a message is "detected" when it returns an address.
The test ``tests/mail/test_bounce_corpus.py`` asserts the project's targets on the held-out half.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailgateway.mail.analyse import analyse  # noqa: E402
from mailgateway.mail.context import AnalysisContext  # noqa: E402

CTX = AnalysisContext(
    region_addresses={"ssi-ara@ars-sante.test": "ARA"},
    own_addresses=frozenset({"ssi-ara@ars-sante.test", "bounces@ars-sante.test"}),
    bounce_domain="ars-sante.test",
    loop_token="mailgateway:ars-sante.test",
    acss_domains=("esante.gouv.fr",),
    default_region="ARA",
)


@dataclass(frozen=True)
class Expectation:
    path: str
    split: str
    bounce: bool
    recipients: frozenset[str]


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    addresses: int = 0
    found: int = 0
    invented: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def address_recall(self) -> float:
        return self.found / self.addresses if self.addresses else 1.0

    def as_dict(self) -> dict[str, float | int]:
        return {"recall": round(self.recall, 4), "precision": round(self.precision, 4),
                "address_recall": round(self.address_recall, 4), "invented": self.invented,
                "tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn}


def load_expectations(path: Path) -> list[Expectation]:
    out: list[Expectation] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, split, kind, addresses = line.split("\t")
        recipients = frozenset(a.strip().lower() for a in addresses.split(",") if a.strip() and a.strip() != "-")
        out.append(Expectation(name, split, kind == "bounce", recipients))
    return out


Detector = Callable[[bytes], tuple[bool, set[str]]]


def ours(raw: bytes) -> tuple[bool, set[str]]:
    facts = analyse(raw, CTX)
    if facts.kind != "bounce" or facts.bounce is None:
        return False, set()
    return True, set(facts.bounce.recipients)


def flufl(raw: bytes) -> tuple[bool, set[str]]:
    from flufl.bounce import scan_message

    try:
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        found = scan_message(msg)
    except Exception:
        return False, set()
    addresses = {(a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a)).strip("<>").lower()
                 for a in found}
    return bool(addresses), addresses


def evaluate(corpus: Path, expectations: Iterable[Expectation], detector: Detector) -> Score:
    score = Score()
    for exp in expectations:
        raw = (corpus / exp.path).read_bytes()
        detected, addresses = detector(raw)
        if exp.bounce:
            score.addresses += len(exp.recipients)
            score.found += len(exp.recipients & addresses)
            if detected:
                score.tp += 1
            else:
                score.fn += 1
                score.errors.append(f"missed     {exp.path}")
            missing = exp.recipients - addresses
            if detected and missing:
                score.errors.append(f"address    {exp.path}: missing {sorted(missing)} got {sorted(addresses)}")
        elif detected:
            score.fp += 1
            score.errors.append(f"false      {exp.path}")
        else:
            score.tn += 1
        invented = addresses - exp.recipients
        score.invented += len(invented)
        if invented:
            score.errors.append(f"invented   {exp.path}: {sorted(invented)}")
    return score


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("corpus", type=Path)
    parser.add_argument("expectations", type=Path)
    parser.add_argument("--split", choices=("held", "tune", "all"), default="held")
    parser.add_argument("--show-errors", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    expectations = [e for e in load_expectations(args.expectations) if args.split in ("all", e.split)]
    results = {name: evaluate(args.corpus, expectations, det) for name, det in (("ours", ours), ("flufl", flufl))}
    bounces = sum(e.bounce for e in expectations)
    if args.json:
        print(json.dumps({"messages": len(expectations), "bounces": bounces,
                          **{k: v.as_dict() for k, v in results.items()}}, indent=2))
    else:
        print(f"{len(expectations)} messages ({bounces} bounces), split={args.split}")
        print(f"{'':8}{'recall':>8}{'precision':>11}{'addr.recall':>13}{'invented':>10}")
        for name, s in results.items():
            print(f"{name:8}{s.recall:8.3f}{s.precision:11.3f}{s.address_recall:13.3f}{s.invented:10d}")
    if args.show_errors:
        for name, s in results.items():
            print(f"\n--- {name}")
            print("\n".join(s.errors))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
