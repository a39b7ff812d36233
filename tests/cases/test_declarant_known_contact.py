"""A declaration that names no establishment, from an authenticated address the directory holds
as one establishment's contact, is that establishment's (handlers ``_establishment``; an outside
tester: three « CH de Laval » cases from its RSSI's known address had no FINESS, and were never
flagged as possible duplicates). An unauthenticated From proves nothing and names nobody."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from mailgateway.directory.addresses import normalise_address
from mailgateway.directory.establishments import finess_of_contact
from mailgateway.store.models import Contact, Establishment
from tests.support import casemail
from tests.support.casegateway import Gateway, make_gateway

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
LAVAL = "530000371"


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    for gateway in make_gateway(sqlite_url):
        with gateway.app.factory() as s, s.begin():
            s.add(Establishment(finess=LAVAL, name="CH de Laval", category="CH", departement="53", region="ARA",
                                source="finess", updated_at=NOW))
            s.flush()
            s.add(Contact(finess=LAVAL, address="rssi@chu.test", role="rssi", status="active", bounce_score=0.0,
                          created_at=NOW, updated_at=NOW))
        yield gateway


def without_finess(n: int) -> bytes:
    return casemail.message(sender="rssi@chu.test", to="ssi-ara@ars.test", subject=f"Compromission de compte {n}",
                            body="Bonjour,\n\nUn compte de messagerie a été compromis ce matin, des courriels "
                                 "d'hameçonnage partent de notre domaine.\n",
                            message_id=f"<laval-{n}@chu.test>")


def test_a_known_contacts_signed_declaration_gets_its_establishment(gw: Gateway) -> None:
    first = gw.feed(casemail.sign(without_finess(1), casemail.establishment_key()))
    second = gw.feed(casemail.sign(without_finess(2), casemail.establishment_key()))
    assert first.case_ref and second.case_ref
    assert gw.case(first.case_ref).finess == LAVAL and gw.case(second.case_ref).finess == LAVAL
    notice = casemail.text_of(gw.last("notification_equipe", "agent@ars.test").raw)
    assert "Annuaire FINESS : CH de Laval" in notice
    assert f"DOUBLON POSSIBLE du dossier ouvert {first.case_ref}" in notice


def test_the_directory_names_the_establishment_not_words_of_the_text(gw: Gateway) -> None:
    raw = casemail.message(sender="rssi@chu.test", to="ssi-ara@ars.test", subject="Rançongiciel",
                           body="Bonjour,\n\nUn poste du laboratoire et l'EHPAD voisin sont chiffrés.\n",
                           message_id="<laval-lab@chu.test>")
    result = gw.feed(casemail.sign(raw, casemail.establishment_key()))
    assert result.case_ref
    case = gw.case(result.case_ref)
    assert (case.finess, case.establishment, case.category) == (LAVAL, "CH de Laval", "CH")


def test_an_unauthenticated_from_names_no_establishment(gw: Gateway) -> None:
    result = gw.feed(without_finess(3))
    assert result.case_ref and gw.case(result.case_ref).finess is None


def test_a_mailbox_two_establishments_share_names_neither(gw: Gateway) -> None:
    with gw.app.factory() as s, s.begin():
        s.add(Establishment(finess="690781810", name="CHU", category="CH", departement="69", region="ARA",
                            source="finess", updated_at=NOW))
        s.flush()
        s.add(Contact(finess="690781810", address="rssi@chu.test", role="rssi", status="active", bounce_score=0.0,
                      created_at=NOW, updated_at=NOW))
    result = gw.feed(casemail.sign(without_finess(4), casemail.establishment_key()))
    assert result.case_ref and gw.case(result.case_ref).finess is None


def test_the_address_is_looked_up_in_the_form_imports_store(gw: Gateway) -> None:
    """Contacts are stored by ``normalise_address``: the sender's address is put in that form
    before the look-up, however it was written (case, blanks)."""
    with gw.app.factory() as s, s.begin():
        s.add(Contact(finess=LAVAL, address=normalise_address("RSSI@Hôpital.test") or "", role="rssi", status="active",
                      bounce_score=0.0, created_at=NOW, updated_at=NOW))
    with gw.app.factory() as s:
        assert finess_of_contact(s, "RSSI@Hôpital.test") == LAVAL
        assert finess_of_contact(s, " Rssi@Chu.Test ") == LAVAL
