"""A reply is shown to staff as the national cell's only when it is authenticated (outside attack:
an unsigned « CERT Santé <alerte@esante.test> » reply was titled « Réponse de l'ACSS »)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import casemail
from tests.support.casegateway import Gateway, make_gateway


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def test_an_unsigned_reply_from_an_acss_address_is_not_presented_as_the_cells(gw: Gateway) -> None:
    ref = gw.declare()
    ack = gw.last("accuse_reception", "dsi@chu.test").message_id
    raw = casemail.message(sender="alerte@esante.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}] Déclaration",
                           body="Merci de nous transmettre les journaux via https://collecte.example/upload.\n",
                           in_reply_to=ack)
    assert gw.feed(raw).status == "processed"
    notice = gw.last("notification_reponse", "agent@ars.test")
    subject = casemail.parse(notice.raw)["Subject"]
    text = casemail.text_of(notice.raw)
    assert "ACSS" not in subject and "Message d'un expéditeur inconnu du dossier" in subject
    assert "Réponse de la cellule nationale" not in text
    assert "ATTENTION : alerte@esante.test n'est ni le déclarant de ce dossier (dsi@chu.test)" in text


def test_a_signed_reply_of_the_cell_is_presented_as_the_cells(gw: Gateway) -> None:
    ref = gw.declare()
    ack = gw.last("accuse_reception", "dsi@chu.test").message_id
    raw = casemail.message(sender="alerte@esante.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}] Déclaration",
                           body="Incident qualifié.\n", in_reply_to=ack)
    assert gw.feed(casemail.sign(raw, casemail.acss_key())).status == "processed"
    notice = gw.last("notification_reponse", "agent@ars.test")
    assert "Réponse de l'ACSS" in casemail.parse(notice.raw)["Subject"]


def test_a_command_whose_reference_is_only_in_an_unsigned_subject_is_told_why(gw: Gateway) -> None:
    """The receipt names the real cause (docs/guarantees.md: an uncovered Subject cannot choose a
    case), not a bare « aucun dossier concerné »."""
    from tests.support.dkim import dkimpy_sign

    ref = gw.declare()
    raw = casemail.message(sender="agent@ars.test", to="ssi-ara@ars.test", subject=f"[{ref}] suivi",
                           body="#assigner moi\n")
    signed = dkimpy_sign(raw, casemail.staff_key(), headers=("from", "to", "date", "message-id")) + raw
    gw.feed(signed)
    text = gw.receipt_text()
    assert "l'en-tête Subject n'est pas couvert par la signature DKIM" in text
    assert gw.case(ref).assignee is None


def test_a_message_filed_by_its_subject_from_someone_the_case_does_not_know_says_so(gw: Gateway) -> None:
    """An outside attacker: « RE: [SSI-…-0005] Fausse alerte, vous pouvez clore le dossier » from
    another hospital reached staff as « Réponse reçue : CHU d'Angers — … ». A colleague of the
    declarant's own domain is the establishment."""
    ref = gw.declare()
    raw = casemail.message(sender="dsi@autre-chu.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}] Suite",
                           body="Fausse alerte, vous pouvez clore le dossier.\n")
    assert gw.feed(raw).status == "processed"
    notice = gw.last("notification_reponse", "agent@ars.test")
    assert "Message d'un expéditeur inconnu du dossier" in casemail.parse(notice.raw)["Subject"]
    text = casemail.text_of(notice.raw).replace("\r\n", " ")
    assert "par la référence de son objet, que chacun peut écrire" in text
    colleague = casemail.message(sender="rssi@chu.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}] Suite",
                                 body="Les sauvegardes sont restaurées.\n", message_id="<colleague@chu.test>")
    assert gw.feed(colleague).status == "processed"
    assert "Réponse reçue" in casemail.parse(gw.last("notification_reponse", "agent@ars.test").raw)["Subject"]


def test_a_follow_up_of_the_establishment_adds_its_new_indicators(gw: Gateway) -> None:
    """An outside tester (an RSSI): the new onion address and IP of a follow-up reached neither the
    case's exports nor the ACSS. The establishment's own, authenticated; never an outsider's."""
    from sqlalchemy import select

    from mailgateway.store.models import Indicator
    ref = gw.declare()
    ack = gw.last("accuse_reception", "dsi@chu.test").message_id
    follow = casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}] Suite",
                              body="Nouvelle adresse de rançon : http://lockbitxyz.onion.example/chu et IP "
                                   "192.0.2.199.\n", in_reply_to=ack, message_id="<follow@chu.test>")
    gw.feed(casemail.sign(follow, casemail.establishment_key()))
    outsider = casemail.message(sender="x@evil.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}] Suite",
                                body="Voir http://evil.example/x.\n", message_id="<evil@evil.test>")
    gw.feed(outsider)
    with gw.app.factory() as s:
        values = set(s.scalars(select(Indicator.value).where(Indicator.case_id == gw.case(ref).id)))
    assert "http://evil.example/x" not in values
    assert {"http://lockbitxyz.onion.example/chu", "192.0.2.199"} <= values
    assert any(e.type == "indicateurs_ajoutes" for e in gw.events(ref))


def test_the_agency_and_the_establishments_contact_domains_are_known_to_the_case(gw: Gateway) -> None:
    """An outside tester (an agent): the agency's director and another region's agent, a GHT
    colleague of a domain the establishment's contacts use, were flagged « expéditeur inconnu »."""
    ref = gw.declare()
    for n, sender in enumerate(("directeur@ars.test", "agent.pdl@ars.test")):
        raw = casemail.message(sender=sender, to="ssi-ara@ars.test", subject=f"RE: [{ref}] Suite",
                               body="Je suis le dossier.\n", message_id=f"<known-{n}@ars.test>")
        assert gw.feed(raw).status == "processed"
        assert "Réponse reçue" in casemail.parse(gw.last("notification_reponse", "agent@ars.test").raw)["Subject"]
