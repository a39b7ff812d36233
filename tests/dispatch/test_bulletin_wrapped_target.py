"""A « #cible » line a mail client wrapped (Outlook's plain text at 76 columns) keeps its clauses
(outside tester, ARS agent: « departement=44,49 » alone on the next line became the bulletin's first
line and the audience grew from two départements to the whole region, without a warning)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from mailgateway.store.engine import transaction
from mailgateway.store.models import Bulletin
from tests.support import casemail
from tests.support.bulletins import fill_directory
from tests.support.casegateway import NOW, Gateway, make_gateway


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    for gateway in make_gateway(sqlite_url):
        with transaction(gateway.app.factory) as s:
            fill_directory(s, NOW, 2, category="LBM", departement="69")
            fill_directory(s, NOW, 2, category="LBM", departement="01", start=10)
        yield gateway


def bulletin(gw: Gateway) -> Bulletin:
    with gw.app.factory() as s:
        row = s.scalars(select(Bulletin).order_by(Bulletin.id.desc())).first()
        assert row is not None
        return row


@pytest.mark.parametrize("written", [
    "#cible categorie=LBM\ndepartement=69\n",
    "#cible categorie=LBM departement=\n69\n",
    "#cible categorie=LBM departement=69,\n73\n",
])
def test_a_wrapped_target_line_keeps_its_clauses(gw: Gateway, written: str) -> None:
    gw.feed(casemail.staff_mail(written + "Une campagne vise les laboratoires.\n", subject="#bulletin Hameçonnage"))
    row = bulletin(gw)
    assert "69" in row.target and "departement" in row.target, row.target
    assert row.body.startswith("Une campagne vise les laboratoires."), row.body
    text = casemail.text_of(gw.last("bulletin_apercu", "agent@ars.test").raw)
    assert "2 établissement(s)" in text or "2 établissements" in text, text


def test_a_line_of_text_after_the_target_stays_in_the_bulletin(gw: Gateway) -> None:
    gw.feed(casemail.staff_mail("#cible categorie=LBM\nDépartement concerné : tous.\nVérifiez vos sauvegardes.\n",
                                subject="#bulletin Sauvegardes"))
    row = bulletin(gw)
    assert row.body.startswith("Département concerné : tous."), row.body
