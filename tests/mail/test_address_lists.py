"""``headers.parse_addresses``: its fast path for plain address lists (issue 19) gives what
``email.utils.getaddresses`` gives, and leaves everything else to it."""

from __future__ import annotations

import email.utils

from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailgateway.mail import headers

_CHARS = st.sampled_from(list("aZ09_+-.' <>@\"(),;:\\\t=?é"))
_ENTRY = headers._PLAIN_ENTRY.pattern


def slow(value: str) -> list[tuple[str, str]]:
    """``parse_addresses`` without its fast path."""
    original = headers._plain_addresses
    headers._plain_addresses = lambda value: None  # type: ignore[assignment]
    try:
        return headers.parse_addresses(value)
    finally:
        headers._plain_addresses = original


@settings(max_examples=600, deadline=None)
@given(st.text(_CHARS, max_size=40))
@example("Jeanne Martin <dsi@chu-nantes.test>, SSI  Pays de la Loire <ssi-pdl@ars.test>")
@example("a@b.c,d@e.f")
@example("a@b.c,,d@e.f")
@example("a@b.c,")
@example("<A@B.C>")
@example("O'Neil - 2 <x@y.z>")
def test_the_fast_path_agrees_with_getaddresses(value: str) -> None:
    assert headers.parse_addresses(value) == slow(value)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.from_regex(headers._PLAIN_ENTRY, fullmatch=True), min_size=1, max_size=4),
       st.sampled_from([",", ", ", " ,\t"]))
def test_every_plain_list_agrees_with_getaddresses(entries: list[str], comma: str) -> None:
    value = comma.join(entries)
    assert headers._plain_addresses(value) is not None
    assert headers.parse_addresses(value) == slow(value)
    assert [a for _n, a in headers.parse_addresses(value)] == [
        a.lower() for _n, a in email.utils.getaddresses([value])]
