"""``labels.Table``: searching only the synonyms whose first word is in the text (issue 19)
finds what the whole alternation of every id finds, in the same order."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from mailgateway.mail.labels import Labels, Table, load_labels
from mailgateway.mail.text import match_form

LABELS = load_labels()
TABLES = {name: getattr(LABELS, name) for name in Labels.__dataclass_fields__
          if isinstance(getattr(LABELS, name), Table)}
# Words of every synonym as written (accents, capitals, apostrophes), and a few others.
WORDS = sorted({w for table in TABLES.values() for _ident, p in table.entries
                for w in re.findall(r"[a-z0-9?+]+", p.pattern) if len(w) > 1}
               | {"Rançongiciel", "SOINS", "l'hôpital", "données", "*", "pas", "de", "le", "-", ","})


def whole(table: Table, text: str) -> tuple[str | None, list[str], list[str]]:
    """first, ordered and all by each id's whole alternation, no word filter."""
    form = match_form(text)
    hits = [(m.start(), rank, ident) for rank, (ident, p) in enumerate(table.entries) if (m := p.search(form))]
    by_rank = sorted(hits, key=lambda h: h[1])
    return (by_rank[0][2] if hits else None, [ident for _pos, _rank, ident in sorted(hits)],
            [ident for _pos, _rank, ident in by_rank])


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(TABLES)), st.lists(st.sampled_from(WORDS), max_size=30))
def test_narrowed_searches_find_what_the_whole_alternations_find(name: str, words: list[str]) -> None:
    table = TABLES[name]
    text = " ".join(words)
    assert (table.first(text), table.ordered(text), table.all(text)) == whole(table, text)


def test_a_text_with_part_of_an_ids_first_words_searches_a_narrower_pattern() -> None:
    table = LABELS.impacts
    rank, (_ident, full) = next((r, e) for r, e in enumerate(table.entries) if len(table.firsts[r]) > 1)
    present = sorted(table.firsts[rank])[:1]
    _form, candidates = table._candidates(" ".join(present))
    narrowed = next(p for r, _i, p in candidates if r == rank)
    assert narrowed is not full and len(narrowed.pattern) < len(full.pattern)
