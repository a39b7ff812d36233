"""Staff commands by mail: authenticated staff of the case's region only, a receipt for every
command mail, every change on the timeline with the sender as actor."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailgateway.processing.runner import Result
from tests.support import casemail
from tests.support.casegateway import Gateway, make_gateway


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def test_assign_me_and_qualify_grave_apply_and_are_receipted(gw: Gateway) -> None:
    ref = gw.declare()
    result = gw.command(ref, "#assigner moi\n#qualifier grave\n")
    assert result.status == "processed"
    case = gw.case(ref)
    assert case.assignee == "agent@ars.test"
    assert (case.severity, case.status) == ("GRAVE", "QUALIFIE")
    types = [(e.type, e.actor) for e in gw.events(ref)]
    assert ("assignation", "agent@ars.test") in types
    assert ("qualification", "agent@ars.test") in types
    assert ("statut", "agent@ars.test") in types
    receipt = gw.last("recu_commandes", "agent@ars.test")
    text = casemail.text_of(receipt.raw)
    assert "[appliquée] #assigner moi" in text and "[appliquée] #qualifier grave" in text
    msg = casemail.parse(receipt.raw)
    assert f"[{ref}]" in msg["Subject"]


def test_accents_case_and_synonyms_are_understood(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#Attribuer MOI\n#Qualifié Sans Suite\n#Statut en accompagnement\n")
    case = gw.case(ref)
    assert case.assignee == "agent@ars.test"
    assert (case.severity, case.status) == ("SANS_SUITE", "ACCOMPAGNEMENT")


def test_an_impossible_status_change_is_refused_with_its_reason(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#statut RESOLU\n#statut inexistant\n")
    assert gw.case(ref).status == "PRIS_EN_COMPTE"
    text = gw.receipt_text()
    assert "[refusée]  #statut RESOLU — passage du statut « pris en compte » au statut « résolu » impossible" in text
    assert "statut inconnu" in text
    assert [e.type for e in gw.events(ref)].count("commande_refusee") == 2


def test_unsigned_command_from_a_staff_address_changes_nothing_and_says_why(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#clore fausse alerte\n#repondre voir http://phish.test/x\n", signed=False,
               subject=f"RE: [{ref}] Gagnez un iPhone http://phish.test/y")
    assert gw.case(ref).status == "PRIS_EN_COMPTE"
    text = gw.receipt_text()
    assert "Aucune n'a été appliquée : ce message n'est pas authentifié" in text
    # What was attempted in the agent's name, and what to do (an outside tester, an agent: the
    # receipt said « dkim=none (no signature) » and nothing of the forged « #clore fausse alerte »).
    assert "il ne porte pas la signature DKIM de votre domaine" in text
    assert "Commandes reçues (non appliquées) :\n  #clore fausse alerte" in text.replace("\r\n", "\n")
    assert "quelqu'un utilise peut-être votre adresse" in text
    assert "http://phish.test" not in text and "hxxp://phish[.]test/x" in text  # a link stays text
    assert casemail.parse(gw.last("recu_commandes", "agent@ars.test").raw)["Subject"] == (
        f"[{ref}] Commandes non appliquées : message non authentifié à votre nom")
    assert "commande_refusee" in [e.type for e in gw.events(ref)]


def test_a_command_signed_with_an_unpublished_key_is_refused(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#qualifier grave\n", key=casemail.forger_key())
    assert gw.case(ref).severity == "NON_QUALIFIE"
    assert "ce message n'est pas authentifié — sa signature DKIM ne correspond pas" in gw.receipt_text()


def test_staff_of_another_region_cannot_command(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#assigner moi\n", sender="pdl@ars.test")
    assert gw.case(ref).assignee is None
    assert "ne fait pas partie des agents SSI de la région ARA" in gw.receipt_text("pdl@ars.test")


def test_an_establishment_writing_a_command_line_is_just_replying(gw: Gateway) -> None:
    ref = gw.declare()
    ack = gw.last("accuse_reception", "dsi@chu.test")
    gw.feed(casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}] Accusé",
                             body="#clore\nC'est réglé de notre côté.\n", in_reply_to=ack.message_id))
    assert gw.case(ref).status == "PRIS_EN_COMPTE"
    assert not gw.outbound("recu_commandes")  # nobody to tell: not staff
    assert "commande_ignoree" in [e.type for e in gw.events(ref)]
    assert len(gw.outbound("notification_reponse")) == 2  # the region's two staff members


def test_unknown_command_gets_a_receipt_listing_the_valid_ones(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#frobnicate\n")
    text = gw.receipt_text()
    assert "[refusée]  #frobnicate — commande inconnue" in text
    assert "#assigner <adresse|moi>" in text and "#transmettre-acss" in text


def test_note_is_appended_to_the_timeline(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#note Appelé le RSSI, sauvegardes intactes.\n")
    note = next(e for e in gw.events(ref) if e.type == "note")
    assert note.actor == "agent@ars.test" and note.data["texte"] == "Appelé le RSSI, sauvegardes intactes."


def test_assigning_someone_outside_the_region_staff_is_refused(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#assigner pdl@ars.test\n#assigner referent@ars.test\n")
    assert gw.case(ref).assignee == "referent@ars.test"
    assert "pdl@ars.test ne fait pas partie des agents SSI de la région ARA" in gw.receipt_text()


def test_transmission_to_acss_attaches_the_original_and_the_answer_threads_back(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#assigner moi\n#transmettre-acss Structure sensible.\n")
    assert gw.case(ref).status == "EN_QUALIFICATION"
    row = gw.last("transmission_acss", "acss@esante.test")
    msg = casemail.parse(row.raw)
    assert f"[{ref}]" in msg["Subject"] and msg["Reply-To"] == "ssi-ara@ars.test"
    attached = [p for p in msg.iter_attachments() if p.get_content_type() == "message/rfc822"]
    assert len(attached) == 1
    assert casemail.declaration(1).replace(b"\r\n", b"\n").strip() in row.raw.replace(b"\r\n", b"\n")
    assert "Structure sensible." in casemail.text_of(row.raw)
    # The national cell answers in the thread: attached to the case, the assignee is told.
    answer = casemail.message(sender="analyste@esante.test", to="ssi-ara@ars.test", subject="RE: transmission",
                              body="Incident qualifié, nous contactons l'établissement.\n",
                              in_reply_to=row.message_id)
    result = gw.feed(casemail.sign(answer, casemail.acss_key()))  # the cell signs its mail
    assert (result.kind, result.case_ref) == ("reply", ref)
    notified = gw.last("notification_reponse")
    assert notified.recipient == "agent@ars.test"
    assert "Réponse de l'ACSS" in casemail.parse(notified.raw)["Subject"]


def test_tlp_red_case_is_never_sent_to_acss(gw: Gateway) -> None:
    ref = gw.declare()
    from sqlalchemy import select

    from mailgateway.store.engine import transaction
    from mailgateway.store.models import Case

    with transaction(gw.app.factory) as s:
        s.scalars(select(Case).where(Case.reference == ref)).one().tlp = "RED"
    gw.command(ref, "#transmettre-acss\n")
    assert not gw.outbound("transmission_acss")
    assert gw.case(ref).status == "PRIS_EN_COMPTE"
    assert "[refusée]  #transmettre-acss" in gw.receipt_text()
    refused = [e for e in gw.events(ref) if e.type == "envoi_refuse"]
    assert refused and "TLP:RED" in refused[0].data["motif"]


@pytest.mark.parametrize(("command", "kind", "subject_word"), [
    ("#demander-info Combien de postes sont touchés ?", "demande_info", "Demande d'informations"),
    ("#repondre Merci, nous suivons le dossier.", "reponse", "Réponse"),
])
def test_mail_to_the_declarant_is_threaded_and_tagged(gw: Gateway, command: str, kind: str,
                                                      subject_word: str) -> None:
    ref = gw.declare()
    gw.command(ref, command + "\n")
    row = gw.last(kind, "dsi@chu.test")
    msg = casemail.parse(row.raw)
    assert msg["Subject"].startswith(f"[{ref}]") and subject_word in msg["Subject"]
    assert msg["In-Reply-To"] == "<decl-1@chu.test>"
    ack = gw.last("accuse_reception", "dsi@chu.test")
    assert "<decl-1@chu.test>" in msg["References"] and ack.message_id in msg["References"]
    assert command.split(" ", 1)[1] in casemail.text_of(row.raw)
    # The establishment's answer comes back to the case and to the staff.
    result = gw.feed(casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject=f"RE: {msg['Subject']}",
                                      body="Douze postes.\n", in_reply_to=row.message_id))
    assert (result.kind, result.case_ref) == ("reply", ref)
    assert gw.outbound("notification_reponse")


def test_a_command_mail_without_text_is_refused(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#demander-info\n")
    assert not gw.outbound("demande_info")
    assert "texte manquant" in gw.receipt_text()


def test_a_reply_whose_subject_names_another_case_applies_no_command(gw: Gateway) -> None:
    """Found by an outside tester: a Thunderbird reply to 0001's notification re-tagged by hand
    « [0002] » ran its #repondre on 0001 (the thread wins) and mailed 0001's declarant text meant
    for 0002's. Now nothing is applied, and the receipt says why; the same reply unedited works."""
    first = gw.declare(1)
    second = gw.declare(2, finess="690000013", sender="rssi@clinique.test")
    before = len(gw.outbound("reponse"))
    result = gw.command(first, "#repondre Les patients concernés ont été prévenus.\n#qualifier grave\n",
                        subject=f"Re: [{second}] Nouvelle déclaration")
    assert result.status == "processed"
    assert len(gw.outbound("reponse")) == before
    assert gw.case(first).severity == "NON_QUALIFIE" and gw.case(second).severity == "NON_QUALIFIE"
    text = casemail.text_of(gw.last("recu_commandes", "agent@ars.test").raw)
    assert "Aucune commande n'a été appliquée" in text and f"son objet désigne le dossier {second}" in text, text
    assert "[appliquée]" not in text
    assert "commande_refusee" in [e.type for e in gw.events(first)]
    gw.command(first, "#qualifier grave\n", subject=f"Re: [{first}] Nouvelle déclaration")
    assert gw.case(first).severity == "GRAVE"


def test_a_command_beginning_the_subject_ends_at_the_case_tag(gw: Gateway) -> None:
    """Found by an outside tester: « RE: #qualifier significatif [SSI-…] … » was refused (the tag
    and our subject read as the severity)."""
    ref = gw.declare()
    ours = str(casemail.parse(gw.notification(ref, "agent@ars.test").raw)["Subject"])
    assert ours.startswith(f"[{ref}]")
    gw.command(ref, "#note vu\n", subject=f"RE: #qualifier significatif {ours}")
    assert gw.case(ref).severity == "SIGNIFICATIF"
    # Our Subject not kept after the command: it may not be the agent's (outside attacker).
    gw.command(ref, "#note vu\n", subject=f"RE: #qualifier grave [{ref}] Autre chose")
    assert gw.case(ref).severity == "SIGNIFICATIF"


def test_a_command_a_declarant_put_in_our_subject_never_runs(gw: Gateway) -> None:
    """Found by an outside tester: a structure named « CHU Angers #clore » put « #clore » in the
    staff notification's subject, and an agent's plain reply (« #assigner moi ») closed the case."""
    body = ("Numéro FINESS : 690781810\nNom de la structure : CHU Angers #clore\n"
            "Type d'incident : hameçonnage\nGravité : faible\n")
    ref = gw.feed(casemail.message(sender="rssi@chu.test", to="ssi-ara@ars.test", subject="Déclaration #clore",
                                   body=body)).case_ref
    assert ref
    subject = str(casemail.parse(gw.notification(ref, "agent@ars.test").raw)["Subject"])
    assert "#clore" in subject  # the declarant's words, shown as written
    gw.command(ref, "#assigner moi\n", subject=f"Re: {subject}")
    case = gw.case(ref)
    assert case.assignee == "agent@ars.test" and case.status != "CLOS"
    assert "#clore" not in casemail.text_of(gw.last("recu_commandes", "agent@ars.test").raw)


def test_a_command_under_the_signature_is_reported_even_when_others_ran(gw: Gateway) -> None:
    """Found by an outside tester: « #note » above « -- » ran, « #transmettre-acss » below it was
    never sent to the ACSS, and the receipt listed the note only."""
    ref = gw.declare()
    gw.command(ref, "#note vu avec le DSI\n\n-- \nJean Dupont\n#transmettre-acss\n")
    text = casemail.text_of(gw.last("recu_commandes", "agent@ars.test").raw)
    assert "[appliquée] #note vu avec le DSI" in text, text
    assert "[refusée]  #transmettre-acss — non exécutée : sous la ligne de signature" in text, text
    assert not gw.outbound("transmission_acss")


def test_a_question_to_the_declarant_of_a_closed_case_is_refused(gw: Gateway) -> None:
    """An outside tester: « #clore » then « #demander-info » in one mail closed the case and asked
    the declarant a question in the same second. The question is refused and the receipt says
    what to do; an answer (« #repondre ») after a closure still goes."""
    ref = gw.declare()
    gw.command(ref, "#qualifier significatif\n#clore incident traité\n#demander-info Pouvez-vous préciser ?\n"
                    "#repondre Merci, nous clôturons le dossier.\n")
    assert gw.case(ref).status == "CLOS"
    assert not gw.outbound("demande_info") and gw.outbound("reponse")
    receipt = gw.receipt_text()
    assert "dossier clos : une demande d'informations n'a plus d'objet" in receipt and "#rouvrir" in receipt


def _outsiders_mail_on(gw: Gateway, ref: str, subject: str) -> str:
    """An outsider's unsigned mail threaded under the declaration (filed on its case): its
    Message-ID, what an agent's reply to it names."""
    mid = "<outsider-1@evil.test>"
    result = gw.feed(casemail.message(sender="x@evil.test", to="ssi-ara@ars.test", subject=subject,
                                      body="Bonjour, incident résolu de notre côté.\n",
                                      in_reply_to="<decl-1@chu.test>", message_id=mid))
    assert result.case_ref == ref, result
    return mid


def test_a_command_beginning_the_subject_an_agent_answers_is_not_the_agents(gw: Gateway) -> None:
    """An outside attacker: a mail filed on a hospital's case, Subject « #clore incident résolu
    [REF] »; an agent's plain « RE: » to it (« Bien noté ») closed the case and mailed the hospital
    the outsider's motif. The agent did not write that command: refused, and the receipt says why."""
    ref = gw.declare()
    subject = f"#clore incident résolu [{ref}]"
    mid = _outsiders_mail_on(gw, ref, subject)
    gw.feed(casemail.staff_mail("Bien noté, je regarde.\n#note vu\n", in_reply_to=mid, subject=f"RE: {subject}"))
    assert gw.case(ref).status != "CLOS"
    assert not gw.outbound("cloture_declarant")
    text = casemail.text_of(gw.last("recu_commandes", "agent@ars.test").raw)
    assert "#clore incident résolu — non exécutée : en tête de l'objet d'une réponse" in text, text
    assert "[appliquée] #note vu" in text, text
    # The agent's own subject command, in front of our notification's Subject, still runs.
    ours = str(casemail.parse(gw.notification(ref, "agent@ars.test").raw)["Subject"])
    gw.command(ref, "Merci.\n", subject=f"RE: #qualifier grave {ours}")
    assert gw.case(ref).severity == "GRAVE"


def test_a_command_beginning_a_forwards_subject_is_the_forwarded_messages(gw: Gateway) -> None:
    """An outside attacker: an agent's « TR: » of that mail to a colleague, the SSI address in
    copy, « Pour info », moved the case to another region and told the hospital."""
    ref = gw.declare()
    gw.feed(casemail.staff_mail("Pour info.\n", subject=f"TR: #transferer PDL [{ref}]",
                                in_reply_to=gw.notification(ref, "agent@ars.test").message_id))
    assert gw.case(ref).region == "ARA"
    text = casemail.text_of(gw.last("recu_commandes", "agent@ars.test").raw)
    assert "non exécutée : en tête de l'objet d'une réponse ou d'un transfert" in text, text


def test_a_declaration_whose_subject_begins_with_a_hash_is_a_declaration(gw: Gateway) -> None:
    """An outside attacker: a hospital's signed declarations « #URGENT Déclaration d'incident »,
    « #aide rançongiciel en cours » were read as the hospital's commands, refused, and nobody was
    told: no case, no acknowledgement, no notification."""
    body = ("Bonjour,\n\nNuméro FINESS : 690781810\nNom de la structure : Centre hospitalier\n"
            "Type d'incident : rançongiciel\nGravité : grave\nServeurs chiffrés depuis ce matin.\n")
    for n, subject in enumerate(("#URGENT Déclaration d'incident : rançongiciel", "#aide rançongiciel en cours")):
        raw = casemail.sign(casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject=subject,
                                             body=body, message_id=f"<hash-{n}@chu.test>"),
                            casemail.establishment_key())
        result = gw.feed(raw)
        assert result.status == "processed" and result.case_ref, result
    assert len(gw.outbound("notification_equipe", "agent@ars.test")) >= 2


def test_an_answer_to_someone_elses_reply_is_not_mailed_to_the_declarant(gw: Gateway) -> None:
    """An outside tester (an agent): a merged case's declarant asked a question on the surviving
    case; the agent's « #repondre Oui, coupez le VPN du CH d'Angers » answered that « Réponse
    reçue » and went to the other hospital's declarant. Now refused, saying to whom it would have
    gone; the same answer to the declarant's own reply is sent."""
    ref = gw.declare()

    def reply_from(sender: str, n: int) -> str:
        result = gw.feed(casemail.message(sender=sender, to="ssi-ara@ars.test", subject=f"RE: [{ref}] question",
                                          body="Faut-il couper le VPN ?\n", in_reply_to="<decl-1@chu.test>",
                                          message_id=f"<question-{n}@chu.test>"))
        assert result.case_ref == ref, result
        notice = gw.outbound("notification_reponse", "agent@ars.test")[-1]
        return notice.message_id

    notice = reply_from("autre@angers.test", 1)
    before = len(gw.outbound("reponse"))
    gw.feed(casemail.staff_mail("#repondre Oui, coupez le VPN.\n", in_reply_to=notice, subject=f"RE: [{ref}] question"))
    assert len(gw.outbound("reponse")) == before
    text = casemail.text_of(gw.last("recu_commandes", "agent@ars.test").raw)
    assert "non envoyée : le message auquel vous répondez est de autre@angers.test" in text, text
    notice = reply_from("dsi@chu.test", 2)
    gw.feed(casemail.staff_mail("#repondre Oui, coupez le VPN.\n", in_reply_to=notice, subject=f"RE: [{ref}] question"))
    assert len(gw.outbound("reponse")) == before + 1


def test_a_mail_naming_its_case_in_its_text_is_a_reply_from_the_cases_people(gw: Gateway) -> None:
    """An outside tester (an RSSI): « Concernant le dossier SSI-…-0005 : exfiltration constatée »,
    sent as a new mail (no reference in the subject, no thread), opened a second case with a second
    acknowledgement and reference; a neutral one went to quarantine. From the declarant it is a
    reply to that case; from a stranger it is read as before."""
    ref = gw.declare()
    before = len(gw.outbound("accuse_reception"))

    def mail(sender: str, n: int, text: str) -> Result:
        return gw.feed(casemail.message(sender=sender, to="ssi-ara@ars.test", subject="Point de situation",
                                        body=f"Bonjour,\n\nConcernant le dossier {ref} : {text}\n\nCordialement,\n",
                                        message_id=f"<update-{n}@x.test>"))

    neutral = mail("dsi@chu.test", 1, "les sauvegardes sont restaurées, merci.")
    assert neutral.status == "processed" and neutral.case_ref == ref, neutral
    update = mail("dsi@chu.test", 2, "une exfiltration de données est constatée, rançongiciel confirmé.")
    assert update.case_ref == ref, update
    assert len(gw.outbound("accuse_reception")) == before
    assert len([r for r in gw.outbound("notification_reponse", "agent@ars.test") if r.case_id == gw.case(ref).id]) == 2
    stranger = mail("x@evil.test", 3, "rançongiciel confirmé, nos serveurs sont chiffrés.")
    assert stranger.case_ref != ref


def test_a_subject_command_in_answer_to_a_mail_never_received_here_is_not_run(gw: Gateway) -> None:
    """An outside attacker: the outsider's « #clore incident résolu [REF] » sent to the agent's own
    mailbox only (the SSI address in Cc, not in the envelope); the agent's reply-all closed the
    case: the gateway could not know whose Subject it was."""
    ref = gw.declare()
    gw.feed(casemail.staff_mail("Bien noté.\n", in_reply_to="<never-seen@evil.test>",
                                subject=f"RE: #clore incident résolu [{ref}]"))
    assert gw.case(ref).status != "CLOS"
    text = casemail.text_of(gw.last("recu_commandes", "agent@ars.test").raw)
    assert "non exécutée : en tête de l'objet d'une réponse" in text, text


def test_made_up_references_do_not_hide_the_mail_answered(gw: Gateway) -> None:
    """An outside attacker: the outsider's mail (received) carried 55 made-up References in the
    agency's domain; the agent's reply kept them, and the mail it answered fell out of the look-up."""
    ref = gw.declare()
    subject = f"#qualifier sans-suite [{ref}]"
    padding = [f"<pad-{n}@ars.test>" for n in range(55)]
    mid = "<outsider-2@evil.test>"
    filed = gw.feed(casemail.message(sender="x@evil.test", to="ssi-ara@ars.test", subject=subject,
                                     body="Bonjour, rien à signaler.\n", in_reply_to="<decl-1@chu.test>",
                                     references=["<decl-1@chu.test>", *padding], message_id=mid))
    assert filed.case_ref == ref
    gw.feed(casemail.staff_mail("Vu.\n", in_reply_to=mid, references=["<decl-1@chu.test>", *padding, mid],
                                subject=f"RE: {subject}"))
    assert gw.case(ref).severity == "NON_QUALIFIE"


def test_a_danish_forward_prefix_is_a_forward(gw: Gateway) -> None:
    """An outside attacker: « VS: #clore doublon [REF] » (Danish, Norwegian) closed the case."""
    ref = gw.declare()
    gw.feed(casemail.staff_mail("Til orientering.\n", subject=f"VS: #clore doublon [{ref}]"))
    assert gw.case(ref).status != "CLOS"


def test_a_subject_command_in_answer_to_a_reused_message_id_is_not_run(gw: Gateway) -> None:
    """An outside attacker: the mail sent to the agent alone took the genuine declaration's
    Message-ID (known here), Subject « #clore doublon [REF] »; the agent's reply-all closed the case.
    A reply prefix with no thread at all is no better."""
    ref = gw.declare()
    gw.feed(casemail.staff_mail("Bien noté.\n", in_reply_to="<decl-1@chu.test>", subject=f"RE: #clore doublon [{ref}]"))
    gw.feed(casemail.staff_mail("Bien noté.\n", subject=f"RE: #clore doublon [{ref}]"))
    assert gw.case(ref).status != "CLOS"


def test_a_new_declaration_naming_an_old_case_opens_its_own(gw: Gateway) -> None:
    """An outside attacker: a hospital's full declaration « Nouvel incident, distinct de celui du
    dossier SSI-… » vanished into the old case: no case, no acknowledgement, no reference."""
    ref = gw.declare()
    for n, body in enumerate((
            f"Nouvel incident, distinct de celui du dossier {ref} : un rançongiciel a chiffré le serveur RH.\n",
            f"Numéro FINESS : 690781810\nType d'incident : hameçonnage\nGravité : grave\nRappel : dossier {ref}.\n")):
        result = gw.feed(casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test",
                                          subject="Déclaration d'incident de sécurité", body=body,
                                          message_id=f"<new-{n}@chu.test>"))
        assert result.case_ref and result.case_ref != ref, result


def test_a_bare_subject_command_gives_way_to_the_bodys_that_says_more(gw: Gateway) -> None:
    """An outside tester (an agent, Outlook): « RE: #clore [REF] … » above « #clore <motif> » in
    the body closed the case bare, refused the body's as « déjà clos », and the establishment's
    closure mail had no motif. The body's runs; the Subject's is « [en double] »."""
    ref = gw.declare()
    ours = str(casemail.parse(gw.notification(ref, "agent@ars.test").raw)["Subject"])
    gw.command(ref, "#clore Compte réinitialisé, MFA déployée. Incident maîtrisé.\n", subject=f"RE: #clore {ours}")
    assert gw.case(ref).status == "CLOS"
    text = gw.receipt_text()
    assert "[appliquée] #clore Compte réinitialisé, MFA déployée. Incident maîtrisé." in text, text
    assert "[en double] #clore —" in text and "[refusée]" not in text, text
    closed = [e.data for e in gw.events(ref) if e.type == "statut" and e.data["vers"] == "CLOS"]
    assert closed == [{"de": "PRIS_EN_COMPTE", "vers": "CLOS",
                       "motif": "Compte réinitialisé, MFA déployée. Incident maîtrisé."}]


def test_the_agents_card_is_not_part_of_a_command_text(gw: Gateway) -> None:
    """An outside tester (an agent): a signature Outlook did not mark (pasted, Outlook for Mac, a
    template's) — « Claire Dubois / Référente SSI / … / Tél. : … » under a #clore motif — was mailed
    to the establishment, and recorded in #note texts."""
    ref = gw.declare()
    notification = gw.notification(ref, "agent@ars.test").message_id

    def command(body: str) -> None:
        raw = casemail.staff_mail(body, in_reply_to=notification, subject=f"RE: [{ref}] Nouvelle déclaration",
                                  signed=False)
        raw = raw.replace(b"From: agent@ars.test", b'From: "Dupont, Agent (ARS-ARA/DSP)" <agent@ars.test>', 1)
        gw.feed(casemail.sign(raw))

    card = ("\n\nAgent Dupont\nRéférente sécurité des systèmes d'information\n"
            "Direction de la santé publique – ARS Auvergne-Rhône-Alpes\nTél. : 04 72 34 74 00\n")
    command("#note Appel du RSSI : sauvegardes intactes." + card)
    # A letter the agent signs off keeps its signature: « Cordialement, » then nothing signed it.
    command("#demander-info Pouvez-vous préciser le nombre de postes ?\nCordialement,\n\nAgent Dupont\n"
            "Référente SSI\n")
    assert "Agent Dupont" in casemail.text_of(gw.last("demande_info").raw)
    command("#clore Second compte réinitialisé, plus d'envois depuis 48 h." + card)
    notes = [e.data for e in gw.events(ref) if e.type == "note"]
    assert notes and all("Tél." not in str(n) and "Agent Dupont" not in str(n) for n in notes), notes
    closed = [e.data for e in gw.events(ref) if e.type == "statut" and e.data["vers"] == "CLOS"]
    assert [c["motif"] for c in closed] == ["Second compte réinitialisé, plus d'envois depuis 48 h."]
    # Not a card (an outside tester: text the agent meant to send was cut): someone sharing only a
    # first name with the agent, « ARS … », and the agent's card announced by « : ».
    for text, kept in (("Rappeler le RSSI :\n\nAgent Martin\nCH Annecy\nTél. : 04 50 00 00 00", "Agent Martin"),
                       ("Point focal régional\n\nARS Auvergne-Rhône-Alpes\nAstreinte : 04 72 00 00 00", "Astreinte"),
                       ("Vous pouvez me joindre directement :\n\nAgent Dupont\nTél. : 04 72 34 74 01",
                        "04 72 34 74 01")):
        command(f"#note {text}\n")
        assert kept in str([e.data for e in gw.events(ref) if e.type == "note"][-1]), text
