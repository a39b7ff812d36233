"""Iterate over a folder of real-world messages (shared/corpus layout), mbox files split.

Used by the corpus robustness tests and ``benchmarks/parse_corpus.py``; the corpus itself is
never copied into the project (its licences are mixed).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from mailgateway.mail.mbox import looks_like_mbox, split_mbox

_NOT_MESSAGES = {"MANIFEST.tsv", "SOURCES.tsv", "README.md", "COPYING"}


def _manifest_mboxes(root: Path) -> set[str]:
    """Files the manifest numbers as ``path#N``: those are mbox files."""
    manifest = root / "MANIFEST.tsv"
    found: set[str] = set()
    if not manifest.is_file():
        return found
    with manifest.open(encoding="utf-8", newline="") as fh:
        for row in csv.reader(fh, delimiter="\t"):
            if row and "#" in row[0]:
                found.add(row[0].rsplit("#", 1)[0])
    return found


def iter_corpus(root: Path) -> Iterator[tuple[str, bytes, str]]:
    """(item name, message bytes, features) for every message; mbox files split."""
    mboxes = _manifest_mboxes(root)
    features: dict[str, str] = {}
    manifest = root / "MANIFEST.tsv"
    if manifest.is_file():
        with manifest.open(encoding="utf-8", newline="") as fh:
            for row in csv.reader(fh, delimiter="\t"):
                if len(row) >= 4:
                    features[row[0]] = row[3]
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if (path.name in _NOT_MESSAGES and path.parent == root) or path.name == "COPYING":
            continue
        rel = path.relative_to(root).as_posix()
        data = path.read_bytes()
        if rel in mboxes or (path.suffix in (".mbox",) and looks_like_mbox(data)):
            for n, message in enumerate(split_mbox(data), start=1):
                yield f"{rel}#{n}", message, features.get(f"{rel}#{n}", "")
        else:
            yield rel, data, features.get(rel, "")
