"""``commands/handling.py`` by mail, through the real pipeline (tests/support/casegateway.py): what
a staff command mail runs, what it refuses and records, who gets a receipt, and what a reply may
change. The few end-to-end tests of the module's mutation-testing selection (docs/mutation.md);
the rules one by one are in test_handling_mutation.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailgateway.processing import replay
from tests.support import casemail
from tests.support.casegateway import Gateway, make_gateway


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def test_the_same_command_twice_in_a_mail_runs_once(gw: Gateway) -> None:
    ref = gw.declare()
    result = gw.command(ref, "#assigner Referent@ARS.test\n#assigner referent@ars.test\n#assigner moi\n")
    assert result.reason == "2 commandes appliquées sur 3"
    assert [e.type for e in gw.events(ref)].count("assignation") == 2
    assert "[en double] #assigner referent@ars.test — déjà dans ce message (objet ou corps) : exécutée une seule " \
           "fois" in gw.receipt_text()


def test_applied_counts_neither_refused_nor_pending_commands(gw: Gateway) -> None:
    ref = gw.declare()
    result = gw.command(ref, "#qualifier grave\n#clore\n#statut RECU\n")
    assert result.reason == "1 commande appliquée sur 3"
    assert gw.case(ref).status == "QUALIFIE"
    refused = [e for e in gw.events(ref) if e.type == "commande_refusee"]
    assert [(e.actor, e.data) for e in refused] == [
        ("agent@ars.test", {"commande": "#statut RECU",
                            "motif": "passage du statut « qualifié » au statut « reçu » impossible"})]


def test_an_unknown_command_with_a_suggestion_gets_it_and_a_pointer(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#assignr moi\n")
    text = gw.receipt_text()
    assert "[refusée]  #assignr moi — commande inconnue ; vouliez-vous écrire « #assigner moi » ?" in text
    assert "Envoyez « #aide » pour la liste des commandes." in text
    assert "Commandes disponibles" not in text


def test_an_unknown_command_without_a_suggestion_gets_the_whole_list(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#zzzzzzzz\n")
    text = gw.receipt_text()
    assert "[refusée]  #zzzzzzzz — commande inconnue (voir la liste ci-dessous)" in text
    assert "Commandes disponibles" in text and "Envoyez « #aide »" not in text


def test_a_command_that_needs_a_case_refused_without_one(gw: Gateway) -> None:
    gw.declare()
    result = gw.feed(casemail.staff_mail("#note bonjour\n", subject="nouveau"))
    assert result.reason == "0 commande appliquée sur 1"
    assert "[refusée]  #note bonjour — aucun dossier concerné : répondez au message du dossier" in gw.receipt_text()


def test_queries_answered_by_their_digest_get_no_receipt_unless_something_else_ran(gw: Gateway) -> None:
    gw.declare()
    gw.feed(casemail.staff_mail("#ouverts\n", subject="#ouverts"))  # the same query twice: one digest
    assert len(gw.outbound("synthese")) == 1 and not gw.outbound("recu_commandes")
    gw.feed(casemail.staff_mail("", subject="#retards"))  # QUERIES: « ouverts » and « retards »
    assert len(gw.outbound("synthese")) == 2 and not gw.outbound("recu_commandes")
    gw.feed(casemail.staff_mail("#zzzzzzzz\n", subject="#retards"))
    assert len(gw.outbound("synthese")) == 3 and len(gw.outbound("recu_commandes")) == 1


def test_a_status_digest_alone_gets_no_receipt(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#statut\n")
    assert len(gw.outbound("synthese")) == 1 and not gw.outbound("recu_commandes")
    gw.command(ref, "#statut\n#note vu\n")
    assert len(gw.outbound("synthese")) == 2 and len(gw.outbound("recu_commandes")) == 1


def test_an_unsigned_staff_command_is_recorded_refused_and_receipted(gw: Gateway) -> None:
    ref = gw.declare()
    result = gw.command(ref, "#clore\n", signed=False)
    assert result.reason == "message non authentifié : commande ignorée (dkim=none (no signature))"
    refused = [e for e in gw.events(ref) if e.type == "commande_refusee"]
    assert [(e.actor, e.data) for e in refused] == [("agent@ars.test", {
        "commandes": ["#clore"], "motif": "message non authentifié : commande ignorée (dkim=none (no signature))"})]
    types = [e.type for e in gw.events(ref)]
    assert types[types.index("commande_refusee") - 1] == "message_recu"  # the mail is on the timeline
    assert "Aucune n'a été appliquée : ce message n'est pas authentifié" in gw.receipt_text()


def test_a_replayed_command_mail_says_which_message_ran_it(gw: Gateway) -> None:
    ref = gw.declare()
    first = gw.command(ref, "#note une fois\n")
    notification = gw.notification(ref, "agent@ars.test")
    signed = casemail.staff_mail("#note deux\n", in_reply_to=notification.message_id, subject=f"RE: [{ref}] x")
    gw.feed(signed)
    again = gw.feed(b"Received: from relay.test by mx.test; Fri, 27 Nov 2026 10:01:00 +0100\r\n" + signed)
    assert (again.status, again.reason) == ("processed", replay.COMMAND_REPLAYED)
    notes = [e.data["texte"] for e in gw.events(ref) if e.type == "note"]
    assert notes == ["une fois", "deux"]
    refused = [e for e in gw.events(ref) if e.type == "commande_refusee"]
    assert refused and refused[-1].data["commandes"] == ["#note deux"]
    assert isinstance(refused[-1].data["deja_execute_par_message"], int)
    assert "Ce message avait déjà été reçu et ses commandes appliquées le" in gw.receipt_text()
    assert first.status == "processed"


def test_a_query_from_a_stranger_is_refused_silently(gw: Gateway) -> None:
    result = gw.feed(casemail.message(sender="x@example.test", to="ssi-ara@ars.test", subject="#ouverts", body=""))
    assert (result.status, result.reason) == ("processed", "message non authentifié : commande ignorée "
                                                           "(dkim=none (no signature))")
    assert not gw.outbound("recu_commandes")


def test_an_establishments_hash_line_is_a_reply_and_the_commands_are_recorded_ignored(gw: Gateway) -> None:
    ref = gw.declare()
    ack = gw.last("accuse_reception", "dsi@chu.test")
    gw.feed(casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}] Accusé",
                             body="#clore\nC'est réglé.\n", in_reply_to=ack.message_id))
    ignored = [e for e in gw.events(ref) if e.type == "commande_ignoree"]
    assert [(e.actor, e.data["commandes"]) for e in ignored] == [("dsi@chu.test", ["#clore"])]
    assert gw.case(ref).status == "PRIS_EN_COMPTE" and not gw.outbound("recu_commandes")


# --- replies ------------------------------------------------------------------------------


def _establishment_reply(gw: Gateway, ref: str, body: str, *, signed: bool = True) -> None:
    ack = gw.last("accuse_reception", "dsi@chu.test")
    raw = casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}]", body=body,
                           in_reply_to=ack.message_id)
    gw.feed(casemail.sign(raw, casemail.establishment_key()) if signed else raw)


def test_an_unauthenticated_reply_to_a_closed_case_keeps_it_closed_and_says_why(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#clore\n")
    _establishment_reply(gw, ref, "Le problème est revenu.\n", signed=False)
    assert gw.case(ref).status == "CLOS"
    refused = [e for e in gw.events(ref) if e.type == "reouverture_refusee"]
    assert [(e.actor, e.data) for e in refused] == [("dsi@chu.test", {"motif": "réponse non authentifiée"})]


def test_a_reply_to_an_open_case_changes_nothing_and_is_notified_inline(gw: Gateway) -> None:
    ref = gw.declare()
    _establishment_reply(gw, ref, "x" * 4000 + "y\n", signed=False)
    assert gw.case(ref).status == "PRIS_EN_COMPTE"
    assert "reouverture_refusee" not in [e.type for e in gw.events(ref)]
    text = casemail.text_of(gw.last("notification_reponse", "agent@ars.test").raw)
    assert "x" * 4000 in text and "xy" not in text  # MAX_REPLY_INLINE = 4,000 characters inline


def test_a_reply_reopening_a_closed_case_says_who_reopened(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#clore\n")
    _establishment_reply(gw, ref, "Le problème est revenu.\n")
    status = [e for e in gw.events(ref) if e.type == "statut"][-1]
    assert (status.actor, status.data) == ("passerelle", {"de": "CLOS", "vers": "PRIS_EN_COMPTE",
                                                          "motif": "réponse reçue de dsi@chu.test"})


def test_a_reply_to_a_closed_case_in_link_mode_opens_its_follow_up(sqlite_url: str) -> None:
    for gw in make_gateway(sqlite_url, reply_to_closed="link"):
        ref = gw.declare()
        gw.command(ref, "#clore\n")
        ack = gw.last("accuse_reception", "dsi@chu.test")
        result = gw.feed(casemail.sign(casemail.message(
            sender="dsi@chu.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}]", body="Revenu.\n",
            in_reply_to=ack.message_id), casemail.establishment_key()))
        old = gw.case(ref)
        assert result.case_ref is not None
        new = gw.case(result.case_ref)
        assert new.title == f"Suite de {ref} — {old.title}"
        assert new.fields == {"suite_de": ref}
        for name in ("finess", "establishment", "category", "incident_type", "nature", "declarant", "tlp"):
            assert getattr(new, name) == getattr(old, name), name
        assert (new.region, new.kind, old.status) == (old.region, old.kind, "CLOS")
        linked = [e for e in gw.events(result.case_ref) if e.type == "dossier_lie"]
        assert [(e.actor, e.data) for e in linked] == [("passerelle", {"dossier_lie": ref})]


def test_staff_writing_in_a_thread_without_a_command(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "Bien reçu, je regarde.\n")  # written to the gateway: told nothing ran
    assert "Aucune commande n'a été reconnue dans votre message" in gw.receipt_text()
    receipts = len(gw.outbound("recu_commandes"))
    notification = gw.notification(ref, "agent@ars.test")
    gw.feed(casemail.staff_mail("Je vous rappelle.\n", to="ssi-ara@ars.test, dsi@chu.test",
                                in_reply_to=notification.message_id, subject=f"RE: [{ref}] x"))
    assert len(gw.outbound("recu_commandes")) == receipts  # a copy of a conversation: filed only
    gw.feed(casemail.staff_mail("assigner moi\n", to="ssi-ara@ars.test, dsi@chu.test",
                                in_reply_to=notification.message_id, subject=f"RE: [{ref}] y"))
    assert len(gw.outbound("recu_commandes")) == receipts + 1  # a line that looks like a command
    assert "« assigner moi »" in gw.receipt_text()
    gw.feed(casemail.staff_mail("Rien.\n", in_reply_to=notification.message_id, subject=f"RE: [{ref}] z",
                                signed=False))
    assert len(gw.outbound("recu_commandes")) == receipts + 1  # unauthenticated: never answered
    assert not gw.outbound("notification_reponse")


def test_an_agents_mail_nothing_recognised_is_answered_not_quarantined(gw: Gateway) -> None:
    result = gw.feed(casemail.staff_mail("assigner moi\n", subject="une question"))
    assert (result.status, result.reason) == (
        "processed", "message d'un agent sans référence de dossier ni commande reconnue")
    assert "« assigner moi »" in gw.receipt_text()
    other = gw.feed(casemail.staff_mail("assigner moi\n", subject="une question", sender="pdl@ars.test"))
    assert other.status == "quarantined"
    unsigned = gw.feed(casemail.staff_mail("assigner moi\n", subject="une question", signed=False))
    assert unsigned.status == "quarantined"


# --- what the records and the mail say (the mutation run of commands/handling.py) ----------------

SIGNED_OFF = "La passerelle SSI de l'ARS Auvergne-Rhône-Alpes"


def test_a_refused_command_mail_is_recorded_against_its_message_and_answered_as_the_gateway(gw: Gateway) -> None:
    ref = gw.declare()
    line = "#note " + "x" * 600
    result = gw.command(ref, line + "\n", signed=False)
    assert (result.status, result.case_ref) == ("processed", ref)
    [refused] = [e for e in gw.events(ref) if e.type == "commande_refusee"]
    assert refused.inbound_id == result.inbound_id
    assert refused.data["commandes"] == [line[:500]]
    assert gw.receipt_text().rstrip().endswith(SIGNED_OFF)
    sent = [e for e in gw.events(ref) if e.type == "mail_sortant"][-1]
    assert sent.actor == "passerelle"  # an unauthenticated mail: the gateway answers, not the agent


def test_an_establishments_ignored_commands_are_recorded_against_its_message(gw: Gateway) -> None:
    ref = gw.declare()
    ack = gw.last("accuse_reception", "dsi@chu.test")
    result = gw.feed(casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}] Accusé",
                                      body="#clore\nC'est réglé.\n", in_reply_to=ack.message_id))
    [ignored] = [e for e in gw.events(ref) if e.type == "commande_ignoree"]
    assert ignored.inbound_id == result.inbound_id and result.case_ref == ref


def test_staff_in_a_thread_are_answered_in_their_regions_name(gw: Gateway) -> None:
    ref = gw.declare()
    result = gw.command(ref, "Bien reçu.\n")
    assert (result.status, result.case_ref) == ("processed", ref)
    text = gw.receipt_text()
    assert text.rstrip().endswith(SIGNED_OFF)
    assert "Commandes disponibles" in text  # nothing suggested: the whole list
    gw.command(ref, "assigner moi\n")
    text = gw.receipt_text()
    assert "Envoyez « #aide » pour la liste des commandes." in text and "Commandes disponibles" not in text


def test_the_notification_of_a_reply_to_an_open_case(gw: Gateway) -> None:
    ref = gw.declare()
    _establishment_reply(gw, ref, "Nouvelles : restauré.\n\nLe 27/11, SSI a écrit :\n> citation ancienne\n")
    notified = gw.last("notification_reponse", "agent@ars.test")
    assert "rouvert" not in casemail.parse(notified.raw)["Subject"]
    text = casemail.text_of(notified.raw)
    assert "Nouvelles : restauré." in text and "citation ancienne" not in text  # the new text only
    assert "texte tronqué" not in text
    _establishment_reply(gw, ref, "z" * 4001 + "\n")
    assert "[…] (texte tronqué" in casemail.text_of(gw.last("notification_reponse", "agent@ars.test").raw)


def test_staff_are_told_why_a_reply_left_the_case_closed(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#clore\n")
    _establishment_reply(gw, ref, "Revenu.\n", signed=False)
    text = casemail.text_of(gw.last("notification_reponse", "agent@ars.test").raw)
    assert ("Le dossier est clos et le reste : cette réponse n'est pas authentifiée comme venant de "
            "l'établissement (réponse non authentifiée)") in text


def test_a_signed_reply_naming_an_unknown_case_is_quarantined(gw: Gateway) -> None:
    gw.declare()
    raw = casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject="RE: [SSI-ARA-2026-0999] suite",
                           body="Voici la suite.\n")
    result = gw.feed(casemail.sign(raw, casemail.establishment_key()))
    assert (result.status, result.reason) == ("quarantined", "réponse à un dossier inconnu : SSI-ARA-2026-0999")
