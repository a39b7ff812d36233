"""``timeline.json_copy``: an event's data is what storing it as JSON and reading it back gives
(issue 19: plain values are copied without the round trip), and a copy."""

from __future__ import annotations

import enum
import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mailgateway.cases.timeline import json_copy


class Kind(enum.IntEnum):
    A = 1


_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8),
                    st.floats(allow_nan=False), st.just(datetime(2026, 12, 6, tzinfo=UTC)), st.just(Kind.A),
                    st.tuples(st.integers()))
_VALUES = st.recursive(_LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=5), inner, max_size=4),
                                                        st.dictionaries(st.integers(), inner, max_size=2)),
                       max_leaves=12)


@settings(max_examples=800, deadline=None)
@given(_VALUES)
def test_the_copy_is_the_json_round_trip(value: Any) -> None:
    expected = json.loads(json.dumps(value, default=str))
    copied = json_copy(value)
    assert copied == expected and json.dumps(copied, sort_keys=True) == json.dumps(expected, sort_keys=True)


def test_the_copy_is_not_the_callers() -> None:
    data: dict[str, Any] = {"a": ["x"], "b": {"c": 1}}
    copied = json_copy(data)
    data["a"].append("y")
    data["b"]["c"] = 2
    assert copied == {"a": ["x"], "b": {"c": 1}}
