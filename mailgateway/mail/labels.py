"""The label and synonym tables (mailgateway/data/labels.toml) as compiled matchers.

The tables are data so that a site can add its own wording (``[labels]`` in the configuration,
passed as ``AnalysisContext.extra_*``) without a code change (STYLE: "data is data").
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from mailgateway.mail.text import fold, match_form


@lru_cache(maxsize=1)
def _raw_tables() -> dict[str, Any]:
    data = resources.files("mailgateway").joinpath("data/labels.toml").read_bytes()
    return tomllib.loads(data.decode("utf-8"))


def _phrase_pattern(phrase: str) -> str:
    """A synonym in match form as a regex: '*' = up to three words; word boundaries around."""
    out = ""
    wildcard = False
    for token in phrase.split():
        if token == "*":  # noqa: S105 - the wildcard word, not a secret
            wildcard = True
            continue
        for word in match_form(token).split():
            if out:
                out += " " + (r"(?:\S+ ){0,3}" if wildcard else "")
            out += re.escape(word)
            wildcard = False
    if not out:
        return r"(?!x)x"
    return r"(?:^| )" + out + r"(?= |$)"


@lru_cache(maxsize=64)
def _tokens(form: str) -> frozenset[str]:
    return frozenset(form.split())


@dataclass(frozen=True)
class Table:
    """Enumeration id -> compiled alternation of its synonyms, in table order.

    ``firsts`` holds, per id, the first word of each synonym: a text without any of them cannot
    match, which skips most regex searches (the ≥ 300 msg/s target).
    """

    entries: tuple[tuple[str, re.Pattern[str]], ...]
    exact: Mapping[str, str] = field(default_factory=dict)
    firsts: tuple[frozenset[str], ...] = ()
    # The exact labels by length (``lookup_near`` compares a label with those of its length ± 1 only).
    by_length: Mapping[int, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    # Per id, the branches of its alternation in order, as (first word, regex source): ``_narrowed``'s material.
    branches: tuple[tuple[tuple[str, str], ...], ...] = ()
    _narrowed_cache: dict[tuple[int, frozenset[str]], re.Pattern[str]] = field(
        default_factory=dict, compare=False, repr=False)

    def _candidates(self, text: str) -> tuple[str, list[tuple[int, str, re.Pattern[str]]]]:
        form = match_form(text)
        tokens = _tokens(form)
        out = []
        for rank, ((ident, pattern), firsts) in enumerate(zip(self.entries, self.firsts, strict=True)):
            present = firsts & tokens
            if present:
                out.append((rank, ident, pattern if len(present) == len(firsts) else self._narrowed(rank, present)))
        return form, out

    def _narrowed(self, rank: int, present: frozenset[str]) -> re.Pattern[str]:
        """The alternation of entry ``rank`` reduced to its synonyms whose first word is in the text
        (issue 19: a search of a long alternation cost ≈ 30 µs, five of them per declaration).
        A synonym matches only where its first word is a word of the text, and dropping branches
        that can match nowhere leaves the first match and its branch unchanged: the same results,
        in the same order of preference. Remembered per set of first words (bounded)."""
        key = (rank, present)
        found = self._narrowed_cache.get(key)
        if found is None:
            if len(self._narrowed_cache) >= _NARROWED_KEPT:
                self._narrowed_cache.clear()
            source = "|".join(regex for first, regex in self.branches[rank] if first in present)
            found = self._narrowed_cache[key] = re.compile(source)
        return found

    def first(self, text: str) -> str | None:
        """The first id (in table order) one of whose synonyms occurs in ``text``."""
        form, candidates = self._candidates(text)
        for _rank, ident, pattern in candidates:
            if pattern.search(form):
                return ident
        return None

    def ordered(self, text: str) -> list[str]:
        """Every id found, in order of first occurrence in ``text``."""
        form, candidates = self._candidates(text)
        hits = [(m.start(), rank, ident) for rank, ident, p in candidates if (m := p.search(form))]
        return [ident for _pos, _rank, ident in sorted(hits)]

    def all(self, text: str) -> list[str]:
        form, candidates = self._candidates(text)
        return [ident for _rank, ident, pattern in candidates if pattern.search(form)]

    def kept(self, text: str, keep: Callable[[str, int], bool]) -> list[str]:
        """Every id, in table order, one of whose synonyms occurs in ``text`` at a place
        ``keep(form, start)`` accepts (``form``: the text in match form)."""
        form, candidates = self._candidates(text)
        return [ident for _rank, ident, pattern in candidates
                if any(keep(form, m.start()) for m in pattern.finditer(form))]

    def lookup(self, label: str) -> str | None:
        """Exact label match (labels of "Champ : valeur" lines)."""
        return self.exact.get(match_form(label))

    def lookup_near(self, label: str) -> str | None:
        """``lookup``, or a known label one typing error away: one word of at least
        ``MIN_NEAR_WORD`` letters one letter off (added, missing, wrong or two swapped), the other
        words exact — « Gravitée », « Etablisement » (found by an outside tester: the ACSS was told
        « non qualifiée » for a declaration written « Gravitée : grave »). Linear in the table."""
        form = match_form(label)
        found = self.exact.get(form)
        if found is not None or not form:
            return found
        words = form.split()
        near = (pair for size in (len(form) - 1, len(form), len(form) + 1) for pair in self.by_length.get(size, ()))
        for known, ident in near:
            other = known.split()
            if len(other) != len(words):
                continue
            differing = [(a, b) for a, b in zip(words, other, strict=True) if a != b]
            if len(differing) == 1 and min(len(w) for w in differing[0]) >= MIN_NEAR_WORD \
                    and _one_edit(*differing[0]):
                return ident
        return None


MIN_NEAR_WORD = 6


def _one_edit(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` (different) are one insertion, deletion, substitution or swap of
    two neighbours apart (Damerau-Levenshtein distance 1). Linear."""
    if abs(len(a) - len(b)) > 1:
        return False
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    if len(a) == len(b):
        if a[i + 1:] == b[i + 1:]:
            return True  # one substitution
        return a[i:i + 2] == b[i:i + 2][::-1] and a[i + 2:] == b[i + 2:]  # one swap
    longer, shorter = (a, b) if len(a) > len(b) else (b, a)
    return longer[i + 1:] == shorter[i:]


def _table(base: Mapping[str, Sequence[str]], extra: Mapping[str, Sequence[str]] | None = None) -> Table:
    merged: dict[str, list[str]] = {k: list(v) for k, v in base.items()}
    for key, values in (extra or {}).items():
        merged.setdefault(key, [])
        # Site wording first: a site's label is meant to win.
        merged[key] = list(values) + merged[key]
    entries: list[tuple[str, re.Pattern[str]]] = []
    firsts: list[frozenset[str]] = []
    branches: list[tuple[tuple[str, str], ...]] = []
    exact: dict[str, str] = {}
    for key, synonyms in merged.items():
        # Longest synonym first so "non malveillant" wins over "malveillant" at one position.
        ordered = sorted({s for s in synonyms if s.strip()}, key=len, reverse=True)
        if not ordered:
            continue
        pattern = re.compile("|".join(_phrase_pattern(s) for s in ordered))
        entries.append((key, pattern))
        firsts.append(frozenset(w for syn in ordered for w in _first_word(syn)))
        branches.append(tuple((first, _phrase_pattern(s)) for s in ordered for first in _first_word(s)))
        for s in ordered:
            exact.setdefault(match_form(s), key)
    by_length: dict[int, list[tuple[str, str]]] = {}
    for known, ident in exact.items():
        by_length.setdefault(len(known), []).append((known, ident))
    return Table(tuple(entries), exact, tuple(firsts), {n: tuple(pairs) for n, pairs in by_length.items()},
                 tuple(branches))


def _first_word(synonym: str) -> list[str]:
    """The first word of a synonym in match form (none: it matches nothing)."""
    return match_form(synonym.replace("*", " ")).split()[:1]


# Narrowed alternations kept per table before the cache starts again.
_NARROWED_KEPT = 4096


@dataclass(frozen=True)
class CommandSpec:
    name: str
    args: str  # "words" | "text" | "raw" | "none"


@dataclass(frozen=True)
class Labels:
    fields: Table
    incident_types: Table
    categories: Table
    severities: Table
    natures: Table
    impacts: Table
    tlp: Table
    malicious: frozenset[str]
    finess_categories: Mapping[str, str]
    declaration_keywords: Table
    weak_types: frozenset[str]
    alert_keywords: Table
    alert_issuers: Table
    auto_reply_subjects: tuple[str, ...]
    commands: Mapping[str, CommandSpec]  # normalised spelling -> spec
    noise_domains: tuple[str, ...]
    # Targeted structure categories named in an alert's prose ([alert_targets]).
    alert_targets: Table = field(default_factory=lambda: _table({}))
    # Courtesy phrases in match form, longest first ([courtesy]), and the length bound.
    courtesy_phrases: tuple[str, ...] = ()
    courtesy_max_chars: int = 200
    # A clause holding one anchor and otherwise only courtesy words is a courtesy (mail/courtesy.py).
    courtesy_anchors: frozenset[str] = frozenset()
    courtesy_words: frozenset[str] = frozenset()
    courtesy_max_clause_words: int = 14


def _freeze(mapping: Mapping[str, Sequence[str]] | None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple(sorted((k, tuple(v)) for k, v in (mapping or {}).items()))


def load_labels(
    extra_fields: Mapping[str, Sequence[str]] | None = None,
    extra_incident_types: Mapping[str, Sequence[str]] | None = None,
    extra_categories: Mapping[str, Sequence[str]] | None = None,
    extra_severities: Mapping[str, Sequence[str]] | None = None,
    extra_alert_targets: Mapping[str, Sequence[str]] | None = None,
    extra_courtesy: Sequence[str] = (),
) -> Labels:
    """The bundled tables extended by a site's additions (cached per distinct additions)."""
    return _load(_freeze(extra_fields), _freeze(extra_incident_types), _freeze(extra_categories),
                 _freeze(extra_severities), _freeze(extra_alert_targets), tuple(extra_courtesy))


@lru_cache(maxsize=16)
def _load(
    extra_fields: tuple[tuple[str, tuple[str, ...]], ...],
    extra_types: tuple[tuple[str, tuple[str, ...]], ...],
    extra_categories: tuple[tuple[str, tuple[str, ...]], ...],
    extra_severities: tuple[tuple[str, tuple[str, ...]], ...] = (),
    extra_alert_targets: tuple[tuple[str, tuple[str, ...]], ...] = (),
    extra_courtesy: tuple[str, ...] = (),
) -> Labels:
    raw = _raw_tables()
    commands: dict[str, CommandSpec] = {}
    for name, spec in raw["commands"].items():
        cmd = CommandSpec(name=name, args=str(spec.get("args", "words")))
        for spelling in [name, *spec.get("synonyms", [])]:
            commands.setdefault(command_key(spelling), cmd)
    finess_categories = {code: cat for cat, codes in raw["finess_categories"].items() for code in codes}
    return Labels(
        fields=_table(raw["fields"], dict(extra_fields)),
        incident_types=_table(raw["incident_types"], dict(extra_types)),
        categories=_table(raw["categories"], dict(extra_categories)),
        severities=_table(raw["severities"], dict(extra_severities)),
        natures=_table(raw["natures"]),
        impacts=_table(raw["impacts"]),
        tlp=_table(raw["tlp"]),
        malicious=frozenset(raw["malicious"]["types"]),
        finess_categories=finess_categories,
        declaration_keywords=_table({"DECLARATION": raw["declaration"]["keywords"]}),
        weak_types=frozenset(raw["declaration"]["weak_types"]),
        alert_keywords=_table({"ALERT": raw["alert"]["keywords"]}),
        alert_issuers=_table({"ISSUER": raw["alert"]["issuers"]}),
        auto_reply_subjects=tuple(match_form(s) for s in raw["auto_reply"]["subjects"]),
        commands=commands,
        noise_domains=tuple(raw["indicators"]["noise_domains"]),
        alert_targets=_table(raw["alert_targets"], dict(extra_alert_targets)),
        courtesy_phrases=tuple(sorted({match_form(p) for p in [*raw["courtesy"]["phrases"], *extra_courtesy]} - {""},
                                      key=len, reverse=True)),
        courtesy_max_chars=int(raw["courtesy"]["max_chars"]),
        courtesy_anchors=frozenset(match_form(w) for w in raw["courtesy"].get("anchors", [])) - {""},
        courtesy_words=frozenset(match_form(w) for w in raw["courtesy"].get("words", [])) - {""},
        courtesy_max_clause_words=int(raw["courtesy"].get("max_clause_words", 14)),
    )


def command_key(spelling: str) -> str:
    """Command spellings compare without accents, case, or '-', '_' and space differences."""
    return re.sub(r"[\s_\-]+", "", fold(spelling).strip().lstrip("#"))
