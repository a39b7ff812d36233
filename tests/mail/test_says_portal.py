"""``declaration.says_portal``: its shortcut (issue 19: no « signalement » in the folded text, no
portal) gives what the match form alone gives."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgateway.mail.declaration import _PORTAL_DOWN, _PORTAL_SENTENCE, PORTAL_WORDS, says_portal
from mailgateway.mail.text import match_form

_PIECES = ["portail", "de", "SIGNALEMENT", "Signalements", "signa", "lement", "signale-ment", "social", "Santé",
           "sante", "gouv", "-", ".", " ", "\n", "é", "x", "ſ", "Ｓ", "signalement"]


def by_match_form(text: str) -> bool:
    forms = [match_form(sentence) for sentence in _PORTAL_SENTENCE.split(text[:2300])]
    return any(any(w in form for w in PORTAL_WORDS) and not any(d in form for d in _PORTAL_DOWN) for form in forms)


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


@pytest.mark.parametrize("text", [
    "Le portail de signalement étant inaccessible, je vous transmets notre déclaration par courriel.",
    "Nous n'arrivons pas à nous connecter au portail de signalement depuis ce matin.",
    "Portail de signalement en maintenance : déclaration par mail.",
])
def test_a_mail_saying_the_portal_is_down_is_no_portal_notification(text: str) -> None:
    """An outside tester (an RSSI): the acknowledgement said « reçue par l'intermédiaire du portail
    de signalement » and dropped the reminder to declare there — when the portal was down."""
    assert not says_portal(text)
    deposited = "Une déclaration a été déposée sur le portail de signalement. Impossible d'accéder au DPI."
    assert says_portal(f"{text}\n{deposited}")
