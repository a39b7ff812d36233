"""Staff commands: parsing, normalisation, quotes ignored, acceptance only from authenticated staff."""

from __future__ import annotations

import pytest

from mailgateway.mail.commands import REASON_ONE_PER_LINE, REASON_UNKNOWN, authorise, parse_command_line, parse_commands
from mailgateway.mail.facts import SenderVerdict
from mailgateway.mail.labels import Labels
from mailgateway.mail.text import new_text

STAFF = {"referent.ssi@ars-sante.test": frozenset({"ARA"})}


def test_accents_case_and_synonyms_are_normalised(labels: Labels) -> None:
    cmd = parse_command_line("#clôturer", labels)
    assert cmd is not None and cmd.name == "clore"
    cmd = parse_command_line("#Qualifier Grave", labels)
    assert cmd is not None and (cmd.name, cmd.args) == ("qualifier", ("grave",))
    cmd = parse_command_line("#Transmettre ACSS", labels)
    assert cmd is not None and cmd.name == "transmettre-acss"


def test_commands_that_send_mail_out_answer_only_to_their_own_name(labels: Labels) -> None:
    """An outside tester (an ARS agent): « #info le RSSI a rappelé, ne pas divulguer » mailed those
    internal words to the hospital (a synonym of #demander-info), and « #escalader niveau 2 » sent
    the declaration to the national cell at once (a synonym of #transmettre-acss). A loose word is
    now an unknown command: refused with the list, nothing sent."""
    for line in ["#info le RSSI a rappelé, ne pas divulguer", "#infos x", "#question x", "#demander x",
                 "#escalader niveau 2", "#transmettre à l'équipe", "#acss", "#Escalader"]:
        cmd = parse_command_line(line, labels)
        assert cmd is not None and cmd.reason == REASON_UNKNOWN, line
    for line, name in [("#Demander info merci de préciser", "demander-info"), ("#demander-infos x", "demander-info"),
                       ("#demande-info x", "demander-info"), ("#demander infos x", "demander-info"),
                       ("#transmettre acss urgent", "transmettre-acss"), ("#transmettre-cert x", "transmettre-acss"),
                       ("#transmettre_acss", "transmettre-acss")]:
        cmd = parse_command_line(line, labels)
        assert cmd is not None and cmd.reason is None and cmd.name == name, line


def test_free_text_arguments_are_kept_as_written(labels: Labels) -> None:
    cmd = parse_command_line("#note Appel du DSI à 15h10 : MFA activée.", labels)
    assert cmd is not None and cmd.args == ("Appel du DSI à 15h10 : MFA activée.",)


def test_a_colon_after_the_command_is_typography_not_argument(labels: Labels) -> None:
    """An outside tester: « #repondre : Madame, … » sent the declarant a mail beginning « : Madame »."""
    for line, args in [("#repondre : Madame, pouvez-vous préciser ?", ("Madame, pouvez-vous préciser ?",)),
                       ("#note: appel du RSSI", ("appel du RSSI",)),
                       ("#note\u00a0: appel du RSSI", ("appel du RSSI",)),
                       ("#qualifier : grave", ("grave",)),
                       ("#note ::1 bloquée sur le pare-feu", ("::1 bloquée sur le pare-feu",)),
                       ("#note :-) rien de grave", (":-) rien de grave",))]:
        cmd = parse_command_line(line, labels)
        assert cmd is not None and cmd.args == args, line


def test_bulletin_targets_are_key_value_arguments(labels: Labels) -> None:
    cmd = parse_command_line("#cible catégorie=LBM departement=69", labels)
    assert cmd is not None and (cmd.name, cmd.args) == ("cible", ("categorie=LBM", "departement=69"))


def test_status_query_canonicalises_the_reference(labels: Labels) -> None:
    cmd = parse_command_line("#statut ssi_ara_2026_42", labels)
    assert cmd is not None and cmd.args == ("SSI-ARA-2026-0042",)


def test_unknown_commands_are_reported_not_dropped(labels: Labels) -> None:
    cmd = parse_command_line("#envoyer-fleurs", labels)
    assert cmd is not None and cmd.reason == REASON_UNKNOWN and not cmd.accepted


def test_hashes_that_are_not_commands_are_ignored(labels: Labels) -> None:
    assert parse_command_line("#1 priorité", labels) is None
    assert parse_command_line("# Titre de section", labels) is None
    assert parse_command_line("voir #clore plus bas", labels) is None


def test_commands_in_quoted_text_are_ignored(labels: Labels) -> None:
    body = "#lu\n\n-----Message d'origine-----\nDe : SSI-ARA\nEnvoyé : mardi\n#clore\n"
    assert [c.name for c in parse_commands(new_text(body), labels)] == ["lu"]
    body = "#lu\n\nLe 24/11/2026 à 14:05, SSI-ARA a écrit :\n> #clore\n"
    assert [c.name for c in parse_commands(new_text(body), labels)] == ["lu"]
    body = "#lu\nDe : SSI ARA <ssi-ara@ars-sante.test>\nEnvoyé : lundi 23 novembre 2026\nObjet : x\n#clore\n"
    assert [c.name for c in parse_commands(new_text(body), labels)] == ["lu"]


def test_only_authenticated_staff_of_the_region_is_accepted(labels: Labels) -> None:
    cmds = parse_commands("#clore\n#inconnue", labels)
    ok = authorise(cmds, SenderVerdict("referent.ssi@ars-sante.test", "ars-sante.test", True), "ARA", STAFF)
    assert [(c.name, c.accepted) for c in ok] == [("clore", True), ("inconnue", False)]
    spoofed = authorise(cmds, SenderVerdict("referent.ssi@ars-sante.test", "ars-sante.test", False), "ARA", STAFF)
    assert not spoofed[0].accepted and "authentifié" in (spoofed[0].reason or "")
    other_region = authorise(cmds, SenderVerdict("referent.ssi@ars-sante.test", "ars-sante.test", True), "PDL", STAFF)
    assert not other_region[0].accepted and "PDL" in (other_region[0].reason or "")
    stranger = authorise(cmds, SenderVerdict("dsi@clinique.test", "clinique.test", True), "ARA", STAFF)
    assert not stranger[0].accepted


def test_outlooks_linked_address_is_read_as_the_address(labels: Labels) -> None:
    """Found by an outside tester: Outlook's text/plain of an auto-linked address."""
    cmd = parse_command_line("#assigner agent@ars.test<mailto:agent@ars.test>", labels)
    assert cmd is not None and cmd.name == "assigner" and cmd.args == ("agent@ars.test",)


def test_a_phones_sign_off_is_not_part_of_a_commands_text(labels: Labels) -> None:
    """Found by an outside tester: « Envoyé de mon iPhone » reached the declarant as the closure
    motif, « Obtenir Outlook pour iOS<https://aka.ms/…> » as part of a #repondre text."""
    for sign_off in ("Envoyé de mon iPhone", "Obtenir Outlook pour iOS<https://aka.ms/o0ukef>",
                     "Sent from my Galaxy", "Envoyé depuis mon appareil Android"):
        found = parse_commands(f"#clore Incident maîtrisé, sauvegardes restaurées.\n\n{sign_off}\n", labels)
        assert [c.args for c in found] == [("Incident maîtrisé, sauvegardes restaurées.",)], sign_off
    kept = parse_commands("#repondre Merci.\nEnvoyé de mon bureau par coursier demain.\n", labels)
    assert kept[0].args == ("Merci.\nEnvoyé de mon bureau par coursier demain.",)


def test_an_outlook_signature_is_not_part_of_a_note_or_a_comment_for_the_acss(labels: Labels) -> None:
    """Found by an outside tester: « #transmettre-acss » alone, written in Outlook (no « -- »), sent
    the agent's signature as « Commentaire de l'ARS ». A #repondre is a letter: it keeps its closing."""
    signature = "\nCordialement,\nJean Dupont\nCellule SSI — ARS Pays de la Loire\n02 40 00 00 00\n"
    assert parse_commands("#transmettre-acss" + signature, labels)[0].args == ()
    assert parse_commands("#note rappelé le DSI" + signature, labels)[0].args == ("rappelé le DSI",)
    letter = parse_commands("#repondre Merci pour ces éléments." + signature, labels)[0].args[0]
    assert letter.endswith("02 40 00 00 00") and "Cordialement," in letter


def test_a_bulletins_tlp_line_is_a_known_command(labels: Labels) -> None:
    # Outside tester: `parse --json` listed « #tlp GREEN » as « commande inconnue », yet the
    # bulletin took the marking (bulletins/by_mail.py reads the line itself).
    cmd = parse_command_line("#tlp GREEN", labels)
    assert cmd is not None and cmd.name == "tlp" and cmd.args == ("GREEN",) and cmd.reason != REASON_UNKNOWN


def test_new_text_under_a_marked_quote_and_between_quoted_lines() -> None:
    """Bottom-posting and interleaved answers (Thunderbird's default): what is not quoted under
    a ">" quote is new text; an unmarked quote (Outlook's header block, an attribution over
    unmarked text) ends the new text, as does the signature separator."""
    assert new_text("Le 27/11 a écrit :\n> #clore\n> texte\n\n#lu\n-- \nsig\n#clore\n") == "#lu"
    assert new_text("> question 1\nréponse 1\n> question 2\nréponse 2\n") == "réponse 1\n\nréponse 2"
    assert new_text("#lu\n\nLe 27/11 a écrit :\ntexte non marqué\n#clore\n") == "#lu"
    assert new_text("Merci\n\nDe : X\nEnvoyé : lundi\nÀ : Y\nObjet : Z\n\n> #clore\n#clore\n") == "Merci"
    assert new_text("-- \nsig\n> q\n#clore\n") == ""
    # Top-posted above an unmarked quote the header block of which is not recognised (Polish):
    # the colleague's bottom-posted command inside it is quoted, not new (outside tester, t54).
    quoted = ("Vu, je m'en occupe.\n\nOd: Agent\nWysłano: poniedziałek\nDo: ssi\nTemat: RE: dossier\n\n"
              "Le 27/11 à 09:12, SSI a écrit :\n> Nouvelle déclaration\n\n#qualifier sans-suite\n")
    assert new_text(quoted) == "Vu, je m'en occupe.\n\nOd: Agent\nWysłano: poniedziałek\nDo: ssi\nTemat: RE: dossier"
    # Outlook's header block in Spanish, Italian, Dutch is a quote start, as in French and English.
    for header in ("De: Agent\nEnviado el: lunes", "Da: Agent\nInviato: lunedì", "Van: Agent\nVerzonden: maandag"):
        assert new_text(f"Vu.\n\n{header}\nSubject: x\n\n#clore\n") == "Vu."


@pytest.mark.parametrize(("line", "expected"), [
    ("#assigner moi #qualifier grave", [("assigner", ("moi",)), ("qualifier", ("grave",))]),
    ("#qualifier grave #assigner moi", [("qualifier", ("grave",)), ("assigner", ("moi",))]),
    ("#fusionner SSI-ARA-2026-0001 #assigner moi", [("fusionner", ("SSI-ARA-2026-0001",)), ("assigner", ("moi",))]),
])
def test_two_word_commands_on_one_line_are_two_commands(labels: Labels, line: str, expected: list[object]) -> None:
    # An outside tester (Outlook): the second was dropped without a word.
    found = parse_commands(line, labels)
    assert [(c.name, c.args) for c in found] == expected and all(c.reason is None for c in found)


@pytest.mark.parametrize(("line", "first", "unread"), [
    # Outside attackers: each of these mailed a hospital or the ACSS what the agent never meant to send.
    ("#assigner moi #clore si RAS lundi", ("assigner", ("moi",)), "clore"),
    ("#qualifier grave #transmettre-acss demain après validation", ("qualifier", ("grave",)), "transmettre-acss"),
    ("#NB #repondre pas avant l'accord du DG", ("nb", ()), "repondre"),
    ("#assigner moi — je ne fais pas de #repondre tant que l'ACSS n'a pas vu.",
     ("assigner", ("moi", "—", "je", "ne", "fais", "pas", "de")), "repondre"),
    ("#qualifier grave, #transmettre-acss demain", ("qualifier", ("grave",)), "transmettre-acss"),
    ("#assigner moi (à #clore si RAS)", ("assigner", ("moi", "(a")), "clore"),
    ("#assigner moi et #qualifier grave", ("assigner", ("moi", "et")), "qualifier"),
    ("#qualifier sans-suite #clore", ("qualifier", ("sans-suite",)), "clore"),
])
def test_a_second_command_a_line_cannot_hold_is_named_not_run(
        labels: Labels, line: str, first: tuple[str, tuple[str, ...]], unread: str) -> None:
    found = parse_commands(line, labels)
    assert [(c.name, c.args) for c in found[:1]] == [first]
    assert [(c.name, c.reason) for c in found[1:]] == [(unread, REASON_ONE_PER_LINE)]
    assert authorise(found, SenderVerdict(address="referent.ssi@ars-sante.test", authenticated=True), "ARA",
                     STAFF)[1].reason == REASON_ONE_PER_LINE


@pytest.mark.parametrize("line", ["#note voir #clore demain", "#repondre Madame, #assigner n'est pas pour vous",
                                  "#assigner moi #123 #foo", "#transmettre-acss #qualifier grave"])
def test_a_text_or_a_hash_that_names_no_command_is_one_command(labels: Labels, line: str) -> None:
    assert len(parse_commands(line, labels)) == 1
