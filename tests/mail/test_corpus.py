"""Every message of the shared real-world corpus gives one valid object, never an exception,
within a per-message time bound (shared/corpus/README.md; never copied into the project)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mailgateway.mail.analyse import analyse
from mailgateway.mail.context import AnalysisContext
from mailgateway.mail.corpus import iter_corpus
from mailgateway.mail.mbox import split_mbox
from tests.support.schema import schema_problems

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
# The slowest stdlib parse of the corpus takes ~3 s on this machine (README); keep a margin.
PER_MESSAGE_SECONDS = 10.0
CTX = AnalysisContext(
    region_addresses={"ssi-ara@ars-sante.test": "ARA"},
    own_addresses=frozenset({"ssi-ara@ars-sante.test"}),
    bounce_domain="ars-sante.test",
    loop_token="mailgateway:ars-sante.test",
    acss_domains=("esante.gouv.fr",),
)


def _corpus() -> Path:
    if not CORPUS.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"corpus missing at {CORPUS} (required under CI=true)")
        pytest.skip(f"corpus not found at {CORPUS}: robustness tests need ../shared/corpus")
    return CORPUS


def test_analyse_gives_a_valid_object_for_every_corpus_message() -> None:
    root = _corpus()
    failures: list[str] = []
    count = 0
    kinds: set[str] = set()
    for name, raw, features in iter_corpus(root):
        count += 1
        start = time.perf_counter()
        try:
            facts = analyse(raw, CTX)
        except Exception as exc:  # the contract is total: record, then fail below
            failures.append(f"{name}: raised {type(exc).__name__}: {exc}")
            continue
        elapsed = time.perf_counter() - start
        if elapsed > PER_MESSAGE_SECONDS:
            failures.append(f"{name}: took {elapsed:.1f} s")
        problems = schema_problems(facts.to_json(file=name))
        if problems:
            failures.append(f"{name}: {problems}")
        if "not-mime" in features and facts.kind != "unknown":
            failures.append(f"{name}: non-MIME item classified {facts.kind}")
        kinds.add(facts.kind)
    assert count >= 2300, f"only {count} corpus messages found"
    assert not failures, "\n".join(failures[:30])
    assert {"bounce", "auto_reply", "unknown"} <= kinds


def test_corpus_dsns_are_mostly_recognised_as_bounces() -> None:
    root = _corpus()
    dsn = [(n, r) for n, r, f in iter_corpus(root) if "dsn" in f.split(",")]
    bounces = sum(1 for _n, raw in dsn if analyse(raw, CTX).kind == "bounce")
    assert bounces >= 0.95 * len(dsn), f"{bounces}/{len(dsn)} DSNs recognised"


def test_unmunged_mbox_yields_both_messages() -> None:
    path = _corpus() / "mimekit/UnitTests/TestData/mbox/unmunged.mbox.txt"
    messages = split_mbox(path.read_bytes())
    assert len(messages) == 2
    assert all(m.startswith(b"From: Jeffrey Stedfast") for m in messages)
