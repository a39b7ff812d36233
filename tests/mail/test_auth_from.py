"""``auth._parse_from``: its fast path for plain From fields (issue 19) gives exactly what the two
stdlib parsers agree on, and leaves everything else to them."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailgateway.mail import auth

# The fast path's alphabet and the characters that must send a value to the slow path.
_CHARS = st.sampled_from(list("aZ09_+-.' <>@\"(),;:\\[]\t=?é"))


@settings(max_examples=600, deadline=None)
@given(st.text(_CHARS, max_size=40))
@example("Jeanne Martin <dsi@chu-nantes.test>")
@example("dsi@CHU-Nantes.test")
@example("a@b.c <d@e.f>")
@example("<a@b.c>")
@example("J. Dupont <a@b.c>")
@example("'-' <a+b@c-d.e>")
@example("a@b")
@example("a..b@c.d")
@example("a@-b.c")
def test_the_fast_path_agrees_with_the_two_parsers(value: str) -> None:
    assert auth._parse_from([value]) == auth._parse_from_slowly(value)


def test_plain_from_fields_take_the_fast_path(monkeypatch: object) -> None:
    """The benchmark's and most establishments' From: no stdlib parser involved."""
    import pytest

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    monkeypatch.setattr(auth, "_parse_from_slowly", lambda value: (_ for _ in ()).throw(AssertionError(value)))
    assert auth._parse_from(["Jeanne Martin <DSI@CHU-nantes.test>"]) == ("DSI@chu-nantes.test", "chu-nantes.test")
    assert auth._parse_from(["rssi-7@etab-7.test"]) == ("rssi-7@etab-7.test", "etab-7.test")


@settings(max_examples=600, deadline=None)
@given(st.from_regex(auth._PLAIN_FROM, fullmatch=True))
def test_every_value_of_the_fast_path_agrees_with_the_two_parsers(value: str) -> None:
    assert auth._parse_from([value]) == auth._parse_from_slowly(value)
