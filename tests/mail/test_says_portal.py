"""``declaration.says_portal``: its shortcut (issue 19: no « signalement » in the folded text, no
portal) gives what the match form alone gives."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgateway.mail.declaration import PORTAL_WORDS, says_portal
from mailgateway.mail.text import match_form

_PIECES = ["portail", "de", "SIGNALEMENT", "Signalements", "signa", "lement", "signale-ment", "social", "Santé",
           "sante", "gouv", "-", ".", " ", "\n", "é", "x", "ſ", "Ｓ", "signalement"]


def by_match_form(text: str) -> bool:
    return any(words in match_form(text[:2300]) for words in PORTAL_WORDS)


@settings(max_examples=800, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=12).map(" ".join))
def test_the_shortcut_changes_nothing(text: str) -> None:
    assert says_portal(text) == by_match_form(text)


@pytest.mark.parametrize("text", ["Portail de SIGNALEMENTS des événements sanitaires",
                                  "signalement.social-santé.gouv.fr", "rien à voir"])
def test_chosen_texts_read_alike(text: str) -> None:
    assert says_portal(text) == by_match_form(text)


def test_a_portal_notification_is_recognised() -> None:
    assert says_portal("Objet : Déclaration sur le Portail de signalement des événements sanitaires")
    assert not says_portal("Déclaration d'incident : rançongiciel au centre hospitalier")
