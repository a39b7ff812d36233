"""The grammar of staff commands, table by table (mail/commands.py; README "Commands").

A command is a line of the new text that starts with ``#`` (after blanks) and a known name; case,
accents and ``-``/``_``/space differences do not matter; ``# name`` with one space is a command
only for a known name (``# Titre`` is markdown); every line counts, after a plain line or after an
unknown command alike; at most ``MAX_COMMANDS`` (50) per mail, ``MAX_LINE`` (2,000) characters per
line, ``MAX_TEXT`` (20,000) for a whole-text argument; nothing under the signature separator.
A ``#word`` line from someone who is not staff is no command: an establishment's declaration that
contains one still opens a case.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailgateway.mail.commands import (
    MAX_COMMANDS,
    MAX_LINE,
    MAX_TEXT,
    REASON_NO_REGION,
    REASON_NOT_AUTHENTICATED,
    REASON_NOT_STAFF,
    REASON_UNKNOWN,
    WHOLE_TEXT,
    authorise,
    command_hints,
    distance,
    is_staff,
    nearest_command,
    parse_command_line,
    parse_commands,
    signature_part,
)
from mailgateway.mail.facts import Command, SenderVerdict
from mailgateway.mail.labels import Labels
from tests.support import casemail
from tests.support.casegateway import Gateway, make_gateway


def test_documented_limits() -> None:
    assert (MAX_COMMANDS, MAX_LINE, MAX_TEXT) == (50, 2000, 20_000)
    assert {"repondre", "demander-info", "note", "clore", "rouvrir", "transmettre-acss"} == WHOLE_TEXT


@pytest.mark.parametrize(("line", "name", "args"), [
    ("#clore", "clore", ()),
    ("#CLORE", "clore", ()),
    ("#Clore", "clore", ()),
    ("#clôturer", "clore", ()),
    ("  #clore", "clore", ()),
    ("\t#clore", "clore", ()),
    ("# clore", "clore", ()),  # one space after '#': a command when the name is known
    ("#clore   ", "clore", ()),
    ("#assigner moi", "assigner", ("moi",)),
    ("#ASSIGNER   MOI", "assigner", ("moi",)),
    ("#assigner\tmoi", "assigner", ("moi",)),
    ("#Qualifier Grave.", "qualifier", ("grave",)),
    ("#qualifier grave, significatif;", "qualifier", ("grave", "significatif")),
    ("#transmettre acss", "transmettre-acss", ()),
    ("#Transmettre-ACSS urgent", "transmettre-acss", ("urgent",)),
    ("#transmettre_acss urgent", "transmettre-acss", ("urgent",)),
    ("#demander info Quel antivirus ?", "demander-info", ("Quel antivirus ?",)),
    ("#statut RESOLU", "statut", ("RESOLU",)),
    ("#statut [ssi_ara_2026_42],", "statut", ("SSI-ARA-2026-0042",)),
    ("#fusionner SSI-ARA-2026-7", "fusionner", ("SSI-ARA-2026-0007",)),
    ("#cible Catégorie=LBM 69", "cible", ("categorie=LBM", "69")),
    ("#note  Appel du DSI : MFA activée.  ", "note", ("Appel du DSI : MFA activée.",)),
    ("#lu merci beaucoup", "lu", ()),  # takes no argument
    ("#?", "aide", ()),
    ("#aide", "aide", ()),
])
def test_command_lines(labels: Labels, line: str, name: str, args: tuple[str, ...]) -> None:
    cmd = parse_command_line(line, labels)
    assert cmd is not None
    assert (cmd.name, cmd.args, cmd.reason, cmd.accepted) == (name, args, None, False)
    assert cmd.line == line.strip()


@pytest.mark.parametrize("line", [
    "clore",  # no '#'
    "texte #clore",  # not at the start of the line
    "#1",  # '#' then a digit: a number
    "#123 rue de la Paix",
    "###",
    "#_clore",
    "#",
    "#  clore",  # two spaces: not a command
    "# Titre",  # markdown heading: not a command, not an unknown one either
    "# 1. Contexte",
    "",
])
def test_lines_that_are_not_commands(labels: Labels, line: str) -> None:
    assert parse_command_line(line, labels) is None


@pytest.mark.parametrize("line", ["#envoyer-fleurs", "#Urgent", "#titre du mail", "#clore2"])
def test_unknown_commands_are_reported(labels: Labels, line: str) -> None:
    cmd = parse_command_line(line, labels)
    assert cmd is not None and cmd.reason == REASON_UNKNOWN and not cmd.accepted
    assert cmd.args == () and cmd.line == line


def test_a_line_longer_than_max_line_is_cut(labels: Labels) -> None:
    cmd = parse_command_line("#note " + "a" * (2 * MAX_LINE), labels)
    assert cmd is not None and cmd.args == ("a" * (MAX_LINE - len("#note ")),)
    # The '#' beyond MAX_LINE characters is never seen.
    assert parse_command_line(" " * MAX_LINE + "#clore", labels) is None


def names(text: str, labels: Labels) -> list[tuple[str, str | None]]:
    return [(c.name, c.reason) for c in parse_commands(text, labels)]


@pytest.mark.parametrize(("text", "expected"), [
    ("#assigner moi\n#qualifier grave", [("assigner", None), ("qualifier", None)]),
    ("Bonjour,\n#assigner moi", [("assigner", None)]),  # after a plain line
    ("Bonjour,\n\n  #assigner moi\nMerci", [("assigner", None)]),
    ("#envoyer-fleurs\n#assigner moi", [("envoyer-fleurs", REASON_UNKNOWN), ("assigner", None)]),
    ("#assigner moi\n#envoyer-fleurs\n#qualifier grave",
     [("assigner", None), ("envoyer-fleurs", REASON_UNKNOWN), ("qualifier", None)]),
    ("# Titre\n#assigner moi", [("assigner", None)]),
    ("#assigner moi\n-- \n#clore", [("assigner", None)]),  # RFC 3676 §4.3 signature separator
    ("#assigner moi\n--\n#clore", [("assigner", None)]),
    ("#assigner moi\n--x\n#clore", [("assigner", None), ("clore", None)]),
    ("#assigner moi\n---\n#clore", [("assigner", None), ("clore", None)]),
    ("pas de commande ici", []),
])
def test_command_sequences(labels: Labels, text: str, expected: list[tuple[str, str | None]]) -> None:
    assert names(text, labels) == expected


def test_at_most_max_commands_per_mail(labels: Labels) -> None:
    found = parse_commands("#assigner moi\n" * (MAX_COMMANDS + 10), labels)
    assert len(found) == MAX_COMMANDS


def test_the_last_whole_text_command_before_the_limit_keeps_only_its_own_text(labels: Labels) -> None:
    text = "#lu\n" * (MAX_COMMANDS - 1) + "#note premier\nsuite\n#lu\nperdu\n"
    found = parse_commands(text, labels)
    assert len(found) == MAX_COMMANDS
    assert (found[-1].name, found[-1].args) == ("note", ("premier\nsuite",))


@pytest.mark.parametrize(("text", "args"), [
    ("#repondre Bonjour,\nligne 2\n\nligne 3\n", ("Bonjour,\nligne 2\n\nligne 3",)),
    ("#repondre\n\n  Texte  \n\n\n", ("Texte",)),
    ("#repondre", ()),
    ("#repondre\n\n\n", ()),
    ("#note a\nb\n#lu\nc", ("a\nb",)),  # up to the next command
    ("#note a\nb\n#envoyer-fleurs\nc", ("a\nb",)),  # an unknown command ends it too
    ("#note a\nb\n-- \nJean", ("a\nb",)),
])
def test_whole_text_arguments(labels: Labels, text: str, args: tuple[str, ...]) -> None:
    assert parse_commands(text, labels)[0].args == args


def test_whole_text_is_bounded(labels: Labels) -> None:
    found = parse_commands("#note debut\n" + ("x" * 1000 + "\n") * 30, labels)
    assert len(found[0].args[0]) == MAX_TEXT


def test_a_one_line_whole_text_command(labels: Labels) -> None:
    (cmd,) = parse_commands("#note seul", labels)
    assert (cmd.name, cmd.args, cmd.accepted, cmd.reason, cmd.line) == ("note", ("seul",), False, None, "#note seul")


def test_whole_text_keeps_the_indentation_of_following_lines(labels: Labels) -> None:
    (cmd,) = parse_commands("#note a\n  - point 1\n  - point 2  ", labels)
    assert cmd.args == ("a\n  - point 1\n  - point 2",)
    assert cmd.line == "#note a"


def test_a_command_of_words_takes_no_following_lines(labels: Labels) -> None:
    found = parse_commands("#assigner moi\nmerci d'avance", labels)
    assert [(c.name, c.args) for c in found] == [("assigner", ("moi",))]


def test_words_arguments(labels: Labels) -> None:
    cmd = parse_command_line("#cible " + " ".join(f"m{i}" for i in range(60)), labels)
    assert cmd is not None and len(cmd.args) == 50  # at most 50 words
    cmd = parse_command_line("#cible A=B=c", labels)
    assert cmd is not None and cmd.args == ("a=B=c",)  # the key is folded, the value kept
    cmd = parse_command_line("#statut XSSI-ARA-2026-1", labels)
    assert cmd is not None and cmd.args == ("XSSI-ARA-2026-1",)  # not a reference


def test_an_unknown_command_takes_no_following_lines(labels: Labels) -> None:
    found = parse_commands("#envoyer-fleurs\nroses\n#lu", labels)
    assert [(c.name, c.args) for c in found] == [("envoyer-fleurs", ()), ("lu", ())]


# --- who may command --------------------------------------------------------------------------------

STAFF = {"agent@ars.test": frozenset({"ARA"}), "pdl@ars.test": frozenset({"PDL"})}


def verdict(address: str = "agent@ars.test", authenticated: bool = True) -> SenderVerdict:
    return SenderVerdict(address=address, domain="ars.test", authenticated=authenticated,
                         method="dkim" if authenticated else None)


@pytest.mark.parametrize(("sender", "region", "reason"), [
    (verdict(), "ARA", None),
    (verdict("Agent@ARS.test"), "ARA", None),  # addresses compare case-insensitively
    (verdict(authenticated=False), "ARA", REASON_NOT_AUTHENTICATED),
    (verdict(), None, REASON_NO_REGION),
    (verdict(), "PDL", f"{REASON_NOT_STAFF} PDL"),
    (verdict("dsi@chu.test"), "ARA", f"{REASON_NOT_STAFF} ARA"),
    (verdict(None), "ARA", f"{REASON_NOT_STAFF} ARA"),  # type: ignore[arg-type]
])
def test_authorise(sender: SenderVerdict, region: str | None, reason: str | None) -> None:
    known = Command("clore", ("fin",), accepted=False, line="#clore fin")
    unknown = Command("fleurs", (), accepted=False, reason=REASON_UNKNOWN, line="#fleurs")
    out = authorise([unknown, known, unknown], sender, region, STAFF)
    assert out[1] == Command("clore", ("fin",), accepted=reason is None, reason=reason, line="#clore fin")
    assert out[0] == out[2] == unknown  # unknown stays unknown, whoever sent it


@pytest.mark.parametrize(("address", "expected"), [
    ("agent@ars.test", True),
    ("AGENT@ars.test", True),
    ("dsi@chu.test", False),
    ("", False),
    (None, False),
])
def test_is_staff(address: str | None, expected: bool) -> None:
    assert is_staff(address, STAFF) is expected


def test_nobody_is_staff_of_an_empty_directory() -> None:
    assert not is_staff("agent@ars.test", {})
    assert not is_staff("", {"": frozenset({"ARA"})})


# --- hints for a mail where nothing ran ---------------------------------------------------------------


@pytest.mark.parametrize(("a", "b", "limit", "expected"), [
    ("clore", "clore", 1, 0),
    ("clore", "clor", 1, 1),
    ("clore", "clorre", 1, 1),
    ("clore", "cloer", 2, 2),
    ("abc", "xyz", 1, 2),  # above the limit: limit + 1
    ("a", "abcdef", 2, 3),  # lengths too far apart
    ("", "ab", 2, 2),
    ("abc", "", 5, 3),
    ("ab", "ba", 2, 2),
])
def test_distance(a: str, b: str, limit: int, expected: int) -> None:
    assert distance(a, b, limit) == expected


@pytest.mark.parametrize(("word", "expected"), [
    ("clxre", "clore"),  # one letter off in five: within a third
    ("clxxe", None),  # two letters off in five: not
    ("qualxxxer", "qualifier"),  # three off in nine
    ("ou", "confirmer"),  # a tie ("ok", "lu"): the first spelling of the table wins
    ("demander-informations" + "x" * 10, "demander-info"),  # 30 letters: compared
    ("demander-informations" + "x" * 11, None),  # 31: never compared
    ("assignr", "assigner"),
    ("qualifer", "qualifier"),
    ("#Clôre", "clore"),
    ("clore", "clore"),
    ("xyzzy", None),
    ("", None),
    ("a" * 31, None),
])
def test_nearest_command(labels: Labels, word: str, expected: str | None) -> None:
    assert nearest_command(word, labels) == expected


def test_hints_for_a_misspelt_command(labels: Labels) -> None:
    unknown = parse_commands("#assignr moi", labels)
    hints = command_hints("#assignr moi", "", unknown, labels)
    assert [(h.line, h.suggestion, h.why) for h in hints] == [("#assignr moi", "#assigner moi", "commande inconnue")]


def test_hints_for_a_command_under_the_signature(labels: Labels) -> None:
    hints = command_hints("Bonjour", "Jean Martin\n#clore", [], labels)
    assert [(h.line, h.suggestion) for h in hints] == [("#clore", "#clore")]
    assert "signature" in hints[0].why


def test_hints_for_a_command_written_without_its_hash(labels: Labels) -> None:
    hints = command_hints("Bonjour\nassigner moi\nok merci", "", [], labels)
    assert [(h.line, h.suggestion) for h in hints] == [("assigner moi", "#assigner moi")]
    assert "sans « # »" in hints[0].why


def test_signature_part(labels: Labels) -> None:
    assert signature_part("texte\n-- \nJean\n#clore\n\nLe 24/11/2026 à 14:05, X a écrit :\n> #lu") == "Jean\n#clore\n"
    assert signature_part("texte sans signature") == ""


# --- the staff check, through the pipeline -----------------------------------------------------------


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def test_an_establishments_declaration_with_a_hash_word_line_opens_a_case(gw: Gateway) -> None:
    body = ("Bonjour,\n\n#urgent\nNuméro FINESS : 690781810\nNom de la structure : Centre hospitalier\n"
            "Type d'incident : rançongiciel\nGravité : grave\n#clore\nServeurs chiffrés depuis ce matin.\n")
    raw = casemail.sign(casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test",
                                         subject="Déclaration d'incident", body=body),
                        casemail.establishment_key())
    result = gw.feed(raw)
    assert result.status == "processed" and result.case_ref, result
    assert gw.case(result.case_ref).status != "CLOS"  # "#clore" from an establishment runs nothing
    assert not gw.outbound("recu_commandes", "dsi@chu.test")


def test_hints_are_shown_shortened_and_capped(labels: Labels) -> None:
    long_rest = "x" * 150
    unknown = parse_commands(f"#assignr {long_rest}", labels)
    (hint,) = command_hints("", "", unknown, labels)
    assert hint.suggestion == "#assigner " + "x" * 99  # the arguments, at most 100 characters with the space
    assert hint.line == f"#assignr {long_rest}"[:117] + "…"  # a line over 120 characters is cut
    exact = "#assignr " + "y" * (120 - len("#assignr "))
    assert command_hints("", "", parse_commands(exact, labels), labels)[0].line == exact  # 120: whole
    over = exact + "z"
    assert command_hints("", "", parse_commands(over, labels), labels)[0].line == over[:117] + "…"  # 121: cut
    three = parse_commands("#assignr moi vite", labels)
    assert command_hints("", "", three, labels)[0].suggestion == "#assigner moi vite"
    many = parse_commands("\n".join(["#assignr moi"] * 8), labels)
    assert len(command_hints("", "", many, labels)) == 5  # MAX_HINTS


def test_hints_under_the_signature_are_capped_too(labels: Labels) -> None:
    unknown = parse_commands("\n".join(["#assignr moi"] * 4), labels)
    hints = command_hints("", "#clore\n#lu\n#note x", unknown, labels)
    assert [h.line for h in hints] == ["#assignr moi"] * 4 + ["#clore"]
    assert hints[-1].why == "sous la ligne de signature « -- » : ce qui suit la signature n'est pas lu"


def test_hints_without_hash_skip_hash_lines_and_read_the_first_word_only(labels: Labels) -> None:
    hints = command_hints("#fleurs roses\nassigner: moi\nqualifier grave, vite\nnote", "", [], labels)
    assert [(h.line, h.suggestion, h.why) for h in hints] == [
        ("assigner: moi", "#assigner moi", "sans « # » en début de ligne, ce n'est pas une commande"),
        ("qualifier grave, vite", "#qualifier grave, vite", "sans « # » en début de ligne, ce n'est pas une commande"),
        ("note", "#note", "sans « # » en début de ligne, ce n'est pas une commande"),
    ]
    assert command_hints("Bonjour\nclore: demain", "", [], labels)[0].suggestion == "#clore demain"
    assert command_hints("#assigner moi", "", [], labels) == []  # already written as a command
    # A word longer than any spelling is not looked up; six candidates give five hints.
    assert command_hints("a" * 31 + " x\n" + "note\n" * 6, "", [], labels)[0].line == "note"
    assert len(command_hints("note\n" * 6, "", [], labels)) == 5


def test_the_signature_is_looked_for_in_the_first_5000_lines() -> None:
    assert signature_part("x\n" * 4998 + "-- \nJean") == "Jean"
    assert signature_part("x\n" * 4999 + "-- \nJean") == ""  # "Jean" is line 5001
