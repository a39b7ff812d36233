"""The fast paths for plain addresses (issue 19) give what the stdlib gives and leave everything
else to it: ``auth._parse_from`` (the author authentication aligns with) against its two
parsers, ``headers.parse_addresses`` (every address list analysis reads) against
``email.utils.getaddresses``."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgateway.mail import auth, headers

# The fast paths' alphabet and the characters that must send a value to the slow paths.
_CHARS = st.sampled_from(list("aZ09_+-.' <>@\"(),;:\\\t=?é"))
VALUES = ["Jeanne Martin <dsi@chu-nantes.test>", "dsi@CHU-Nantes.test", "a@b.c <d@e.f>", "<a@b.c>",
          "J. Dupont <a@b.c>", "'-' <a+b@c-d.e>", "a@b", "a..b@c.d", "a@-b.c", "O'Neil - 2 <x@y.z>",
          "Jeanne Martin <dsi@chu-nantes.test>, SSI  Pays de la Loire <ssi-pdl@ars.test>", "a@b.c,d@e.f",
          "a@b.c,,d@e.f", "a@b.c,", "<A@B.C>", "", " \t"]


def slow_list(value: str) -> list[tuple[str, str]]:
    """``parse_addresses`` without its fast path."""
    original = headers._plain_addresses
    headers._plain_addresses = lambda value: None  # type: ignore[assignment]
    try:
        return headers.parse_addresses(value)
    finally:
        headers._plain_addresses = original


def agree(value: str) -> None:
    assert auth._parse_from([value]) == auth._parse_from_slowly(value)
    assert headers.parse_addresses(value) == slow_list(value)


@pytest.mark.parametrize("value", VALUES)
def test_chosen_values_read_alike_both_ways(value: str) -> None:
    agree(value)


@settings(max_examples=600, deadline=None)
@given(st.text(_CHARS, max_size=40))
def test_random_values_read_alike_both_ways(value: str) -> None:
    agree(value)


@settings(max_examples=600, deadline=None)
@given(st.from_regex(auth._PLAIN_FROM, fullmatch=True))
def test_every_from_of_the_fast_path_agrees_with_the_two_parsers(value: str) -> None:
    assert auth._parse_from([value]) == auth._parse_from_slowly(value)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.from_regex(headers._PLAIN_ENTRY, fullmatch=True), min_size=1, max_size=4),
       st.sampled_from([",", ", ", " ,\t"]))
def test_every_plain_list_agrees_with_getaddresses(entries: list[str], comma: str) -> None:
    value = comma.join(entries)
    assert headers._plain_addresses(value) is not None
    assert headers.parse_addresses(value) == slow_list(value)
    assert [a for _n, a in headers.parse_addresses(value)] == [
        a.lower() for _n, a in email.utils.getaddresses([value])]


def test_plain_from_fields_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark's and most establishments' From: no stdlib parser involved."""
    monkeypatch.setattr(auth, "_parse_from_slowly", lambda value: (_ for _ in ()).throw(AssertionError(value)))
    assert auth._parse_from(["Jeanne Martin <DSI@CHU-nantes.test>"]) == ("DSI@chu-nantes.test", "chu-nantes.test")
    assert auth._parse_from(["rssi-7@etab-7.test"]) == ("rssi-7@etab-7.test", "etab-7.test")
