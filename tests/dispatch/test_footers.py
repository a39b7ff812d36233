"""What each mail says of itself (outside testers, RSSI and ARS agent): the acknowledgement says
it was sent automatically in both its alternatives; an agent's #repondre does not claim to be."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import casemail
from tests.support.casegateway import Gateway, make_gateway

AUTOMATIC = "Ce message a été émis automatiquement par la passerelle de la boîte fonctionnelle ssi-ara@ars.test."


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def _parts(raw: bytes) -> tuple[str, str]:
    msg = casemail.parse(raw)
    plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert plain is not None and html is not None
    return plain.get_content(), html.get_content()


def test_the_acknowledgement_says_it_is_automatic_in_text_and_html(gw: Gateway) -> None:
    gw.declare()
    plain, html = _parts(gw.last("accuse_reception", "dsi@chu.test").raw)
    assert AUTOMATIC in plain and AUTOMATIC in html


def test_an_agents_answer_does_not_claim_to_be_automatic(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#repondre Merci de nous envoyer la liste des postes touchés.\n")
    plain, html = _parts(gw.last("reponse", "dsi@chu.test").raw)
    assert "émis automatiquement" not in plain and "émis automatiquement" not in html
    assert "rédigé par un agent de l'ARS" in html
