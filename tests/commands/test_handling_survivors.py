"""``commands/handling.py`` by mail, for the survivors of its mutation run (docs/mutation.md,
"commands/handling.py"): the automatic-reply caps on the receipts that change nothing, the case
those receipts name, mail without a From address, replies without new text, the 4,000-character
inline bound, the record of a refused command and what a receipt says of each command."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from mailgateway.app import build_app
from mailgateway.clock import FixedClock
from mailgateway.settings import parse_settings
from mailgateway.store.engine import transaction
from mailgateway.store.models import Case
from tests.support import casemail
from tests.support.bulletins import fill_directory
from tests.support.casegateway import NOW, Gateway, make_gateway, settings_data
from tests.support.db import at_head


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def capped_gateway(url: str, **outbound: Any) -> Iterator[Gateway]:
    """The gateway of tests/support/casegateway.py with small [outbound] automatic-reply caps."""
    data = settings_data(at_head(url))
    data["outbound"] = outbound
    clock = FixedClock(NOW)
    app = build_app(parse_settings(data), clock=clock)
    try:
        yield Gateway(app, clock)
    finally:
        app.close()


@pytest.fixture
def one_an_hour(sqlite_url: str) -> Iterator[Gateway]:
    # mailer.py: a recipient gets at most auto_replies_per_hour automatic replies an hour.
    yield from capped_gateway(sqlite_url, auto_replies_per_hour=1)


def _cap_refusals(gw: Gateway, ref: str) -> list[str]:
    """The receipts the caps kept from being sent (mailer.py journals each refusal on the case)."""
    return [e.data["motif"] for e in gw.events(ref)
            if e.type == "envoi_refuse" and e.data.get("type") == "recu_commandes"]


def _without_from(raw: bytes) -> bytes:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.startswith(b"From:")]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# --- automatic-reply caps ----------------------------------------------------------------------


def test_receipts_of_staff_mail_nothing_understood_count_against_the_caps(one_an_hour: Gateway) -> None:
    gw = one_an_hour
    ref = gw.declare()
    gw.command(ref, "Bien reçu.\n")
    gw.command(ref, "Je regarde.\n")
    assert len(gw.outbound("recu_commandes", "agent@ars.test")) == 1
    assert _cap_refusals(gw, ref) == ["plafond de réponses automatiques atteint pour agent@ars.test (par heure)"]


def test_receipts_of_an_agents_mail_without_reference_count_against_the_caps(one_an_hour: Gateway) -> None:
    gw = one_an_hour
    first = gw.feed(casemail.staff_mail("assigner moi\n", subject="une question"))
    second = gw.feed(casemail.staff_mail("assigner moi\n", subject="une autre question"))
    assert (first.status, second.status) == ("processed", "processed")
    assert len(gw.outbound("recu_commandes", "agent@ars.test")) == 1


def test_receipts_of_refused_command_mail_count_against_the_caps(one_an_hour: Gateway) -> None:
    gw = one_an_hour
    ref = gw.declare()
    gw.command(ref, "#clore\n", signed=False)
    gw.command(ref, "#note encore\n", signed=False)
    assert len(gw.outbound("recu_commandes", "agent@ars.test")) == 1
    assert _cap_refusals(gw, ref) == ["plafond de réponses automatiques atteint pour agent@ars.test (par heure)"]


def test_receipts_of_applied_commands_are_not_capped(one_an_hour: Gateway) -> None:
    gw = one_an_hour
    ref = gw.declare()
    gw.command(ref, "#note un\n")
    gw.command(ref, "#note deux\n")
    assert len(gw.outbound("recu_commandes", "agent@ars.test")) == 2 and not _cap_refusals(gw, ref)


# --- the case named in the receipts that change nothing ----------------------------------------


def test_a_receipt_of_nothing_understood_names_the_case(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "Bien reçu.\n")
    receipt = gw.last("recu_commandes", "agent@ars.test")
    assert receipt.case_id == gw.case(ref).id
    assert casemail.parse(receipt.raw)["Subject"].startswith(f"[{ref}] ")
    assert f"rien n'a été modifié (le message est rattaché au dossier {ref})." in gw.receipt_text()


def test_a_receipt_of_a_refused_command_mail_names_the_case(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#clore\n", signed=False)
    receipt = gw.last("recu_commandes", "agent@ars.test")
    assert receipt.case_id == gw.case(ref).id
    assert casemail.parse(receipt.raw)["Subject"].startswith(f"[{ref}] ")


def test_an_agents_mail_without_reference_is_answered_about_no_case(gw: Gateway) -> None:
    gw.feed(casemail.staff_mail("Bonjour, une question.\n", subject="une question"))
    receipt = gw.last("recu_commandes", "agent@ars.test")
    assert receipt.case_id is None
    text = gw.receipt_text()
    assert "rien n'a été modifié." in text and "rattaché" not in text
    assert "Commandes disponibles" in text  # nothing suggested: the whole list


# --- an establishment's "#..." line in a reply that opens a follow-up case ----------------------


def test_an_establishments_ignored_commands_go_to_the_follow_up_case_it_opened(sqlite_url: str) -> None:
    for gw in make_gateway(sqlite_url, reply_to_closed="link"):
        ref = gw.declare()
        gw.command(ref, "#clore\n")
        ack = gw.last("accuse_reception", "dsi@chu.test")
        result = gw.feed(casemail.sign(casemail.message(
            sender="dsi@chu.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}]", body="#rouvrir\nRevenu.\n",
            in_reply_to=ack.message_id), casemail.establishment_key()))
        assert result.case_ref is not None and result.case_ref != ref
        ignored = [e for e in gw.events(result.case_ref) if e.type == "commande_ignoree"]
        assert [(e.actor, e.data["commandes"], e.inbound_id) for e in ignored] == [
            ("dsi@chu.test", ["#rouvrir"], result.inbound_id)]
        assert "commande_ignoree" not in [e.type for e in gw.events(ref)]


# --- mail without a From address ----------------------------------------------------------------


def test_a_command_mail_without_from_is_a_reply_of_nobody(gw: Gateway) -> None:
    ref = gw.declare()
    ack = gw.last("accuse_reception", "dsi@chu.test")
    raw = _without_from(casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}]",
                                         body="#clore\nRéglé.\n", in_reply_to=ack.message_id))
    result = gw.feed(raw)
    assert (result.status, result.case_ref) == ("processed", ref)
    ignored = [e for e in gw.events(ref) if e.type == "commande_ignoree"]
    assert [(e.actor, e.data["commandes"]) for e in ignored] == [("inconnu", ["#clore"])]
    assert gw.case(ref).status == "PRIS_EN_COMPTE" and not gw.outbound("recu_commandes")
    text = casemail.text_of(gw.last("notification_reponse", "agent@ars.test").raw)
    assert "Réponse reçue de inconnu le" in text


def test_a_reply_without_from_to_a_closed_case_is_refused_for_nobody(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#clore\n")
    ack = gw.last("accuse_reception", "dsi@chu.test")
    gw.feed(_without_from(casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}]",
                                           body="Revenu.\n", in_reply_to=ack.message_id)))
    assert gw.case(ref).status == "CLOS"
    refused = [e for e in gw.events(ref) if e.type == "reouverture_refusee"]
    assert [(e.actor, e.data) for e in refused] == [("inconnu", {"motif": "réponse non authentifiée"})]
    text = casemail.text_of(gw.last("notification_reponse", "agent@ars.test").raw)
    assert "Réponse reçue de inconnu le" in text


# --- the text of a reply shown inline -----------------------------------------------------------


def _reply(gw: Gateway, ref: str, body: str) -> str:
    ack = gw.last("accuse_reception", "dsi@chu.test")
    gw.feed(casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}]", body=body,
                             in_reply_to=ack.message_id))
    return casemail.text_of(gw.last("notification_reponse", "agent@ars.test").raw)


def test_a_reply_of_only_quoted_text_shows_the_quote(gw: Gateway) -> None:
    ref = gw.declare()
    text = _reply(gw, ref, "> Le 27/11, SSI a écrit :\n> ancienne citation\n")
    assert "----- Texte de la réponse -----" in text and "ancienne citation" in text


def test_an_empty_reply_shows_no_text(gw: Gateway) -> None:
    ref = gw.declare()
    text = _reply(gw, ref, "")
    assert "----- Texte de la réponse -----" not in text and "XXXX" not in text


def test_a_reply_of_exactly_4000_characters_is_not_said_truncated(gw: Gateway) -> None:
    ref = gw.declare()
    text = _reply(gw, ref, "x" * 4000 + "\n")
    assert "x" * 4000 in text and "texte tronqué" not in text
    text = _reply(gw, ref, "y" * 4001 + "\n")
    assert "y" * 4000 in text and "y" * 4001 not in text and "[…] (texte tronqué" in text


# --- the record of a refused command ------------------------------------------------------------


def test_a_refused_command_is_recorded_cut_at_500_characters_against_its_message(gw: Gateway) -> None:
    ref = gw.declare()
    line = "#statut " + "Z" * 700
    result = gw.command(ref, line + "\n")
    [refused] = [e for e in gw.events(ref) if e.type == "commande_refusee"]
    assert (refused.actor, refused.inbound_id) == ("agent@ars.test", result.inbound_id)
    assert refused.data["commande"] == line[:500] and len(refused.data["commande"]) == 500
    assert refused.data["motif"] and refused.data["motif"] in gw.receipt_text()


# --- what the receipt says of each command ------------------------------------------------------


def test_the_receipt_says_applied_pending_and_refused(gw: Gateway) -> None:
    ref = gw.declare()
    result = gw.command(ref, "#qualifier grave\n#clore\n#statut RECU\n")
    assert result.reason == "1 commande appliquée sur 3"
    text = gw.receipt_text().replace("\r\n", "\n")
    assert "[appliquée] #qualifier grave — " in text
    assert "[en attente de confirmation] #clore — " in text
    assert "[refusée]  #statut RECU — passage du statut" in text
    assert "#confirmer " in text


def test_the_receipt_quotes_the_text_a_command_carries(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#note vu avec le RSSI\n#assigner moi\n")
    text = gw.receipt_text().replace("\r\n", "\n")
    assert "[appliquée] #note vu avec le RSSI — note ajoutée à la chronologie" in text
    assert "    Texte de la commande (1 ligne) :\n    | vu avec le RSSI\n" in text
    assert text.count("Texte de la commande") == 1  # « #assigner » carries no text
    assert "Aperçu de la diffusion" not in text
    gw.command(ref, "#note appelé le DSI\nsauvegardes intactes\n")
    assert "    Texte de la commande (2 lignes) :\n" in gw.receipt_text().replace("\r\n", "\n")


def test_a_status_digest_with_another_command_is_applied_in_the_receipt(gw: Gateway) -> None:
    ref = gw.declare()
    result = gw.command(ref, "#statut\n#note vu\n")
    assert result.reason == "2 commandes appliquées sur 2"
    text = gw.receipt_text()
    assert "[appliquée] #statut" in text and "[appliquée] #note vu" in text
    assert len(gw.outbound("synthese")) == 1


def test_a_status_change_beside_a_query_still_gets_a_receipt(gw: Gateway) -> None:
    ref = gw.declare()
    result = gw.command(ref, "#statut EN_QUALIFICATION\n#ouverts\n")
    assert result.reason == "2 commandes appliquées sur 2"
    assert gw.case(ref).status == "EN_QUALIFICATION"
    assert len(gw.outbound("synthese")) == 1  # the digest of « #ouverts »
    assert "[appliquée] #statut EN_QUALIFICATION" in gw.receipt_text()  # a change is no query


def test_the_receipt_of_a_broadcast_shows_its_preview_before_the_token(sqlite_url: str) -> None:
    # The alert as tests/dispatch/test_alert_diffuser_preview.py makes it (an authentic ACSS
    # alert to broadcast to the LBM of the directory), here for the selection of the mutation run.
    for gw in capped_gateway(sqlite_url):
        with transaction(gw.app.factory) as s:
            fill_directory(s, NOW, 2, category="LBM")
        ref = gw.declare(7)
        with transaction(gw.app.factory) as s:
            case = s.scalars(select(Case).where(Case.reference == ref)).one()
            case.kind, case.status, case.tlp = "alert", "A_DIFFUSER", "CLEAR"
            case.fields = {"alert": {"authentic": True, "title": "Vulnérabilité critique", "targets": ["LBM"],
                                     "tlp": "CLEAR", "reference": "CERTFR-2026-ALE-002", "cves": []}}
        result = gw.command(ref, "#diffuser\n")
        assert result.reason == "0 commande appliquée sur 1"  # pending: not counted
        text = gw.receipt_text().replace("\r\n", "\n")
        assert "[en attente de confirmation] #diffuser — " in text
        assert "    Aperçu de la diffusion (alerte TLP:CLEAR) :\n    2 établissements ciblés" in text
        assert text.index("Aperçu de la diffusion") < text.index("#confirmer ")


def test_an_authenticated_stranger_nothing_recognised_is_quarantined_not_answered(gw: Gateway) -> None:
    raw = casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject="une question",
                           body="assigner moi\n")
    result = gw.feed(casemail.sign(raw, casemail.establishment_key()))  # aligned DKIM, not staff
    assert result.status == "quarantined"
    assert not gw.outbound("recu_commandes")
