"""A second declaration for the same structure from the same authenticated declarant (a resend, a
correction) is acknowledged with the reference of the case that already holds the first (outside
tester, hospital RSSI: three references for one incident). Nobody else learns of an open case."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import casemail
from tests.support.casegateway import Gateway, make_gateway

EARLIER = "Vous nous aviez déjà adressé une déclaration, toujours en cours (dossier"


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def _declaration(n: int, sender: str = "dsi@chu.test", signed: bool = True) -> bytes:
    raw = casemail.message(sender=sender, to="ssi-ara@ars.test", subject=f"Déclaration d'incident {n}",
                           body=("Numéro FINESS : 690781810\nNom de la structure : Centre hospitalier\n"
                                 "Type d'incident : rançongiciel\nGravité : grave\n"
                                 f"Version {n} de notre déclaration.\n"),
                           message_id=f"<resend-{n}-{sender}>")
    return casemail.sign(raw, casemail.establishment_key()) if signed else raw


def test_a_verified_declarants_resend_names_the_case_that_holds_the_first(gw: Gateway) -> None:
    first = gw.feed(_declaration(1)).case_ref
    second = gw.feed(_declaration(2)).case_ref
    assert first and second and first != second
    plain = casemail.text_of(gw.last("accuse_reception", "dsi@chu.test").raw)
    assert f"{EARLIER} {first})" in plain, plain


def test_nobody_else_learns_that_the_structure_has_a_case_open(gw: Gateway) -> None:
    first = gw.feed(_declaration(1)).case_ref
    gw.feed(_declaration(2, sender="autre@chu.test"))  # signed, another declarant
    gw.feed(_declaration(3, signed=False))  # the first declarant's address, unsigned: anyone
    for to in ("autre@chu.test", "dsi@chu.test"):
        text = casemail.text_of(gw.last("accuse_reception", to).raw)
        assert "déjà adressé" not in text and str(first) not in text, text
