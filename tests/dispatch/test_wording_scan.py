"""``has_greeting`` and ``has_closing`` read only the first and the last written lines (issue 19:
a template asks them of a bulletin's body for each of its 40,000 messages): the same answers as
reading every line, for any text."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailgateway.dispatch.wording import _CLOSINGS, _GREETINGS, has_closing, has_greeting


def _lines(text: str) -> list[str]:  # the former whole-text reading, the reference
    return [line.strip().lower() for line in text.split("\n") if line.strip() and not line.strip().startswith("#")]


_PIECES = st.sampled_from(["\n", "\r\n", " ", "\t", "#cible LBM", "# tlp", "Bonjour,", "BONJOUR Madame", "bonjour",
                           "Cordialement,", "Bien à vous", "Jean Dupont", "RSSI", "texte", "x", "\x0b", "Chère équipe"])


@given(st.lists(_PIECES, max_size=20))
def test_first_and_last_lines_answer_as_the_whole_text(pieces: list[str]) -> None:
    text = "".join(pieces)
    lines = _lines(text)
    greeting = bool(lines) and (lines[0].startswith(_GREETINGS) or lines[0] in {g.strip() for g in _GREETINGS})
    assert has_greeting(text) == greeting
    assert has_closing(text) == any(line.startswith(_CLOSINGS) for line in lines[-4:])
