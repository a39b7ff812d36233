"""Staff commands: ``#name args`` lines in the new text of a message (quotes never count).

docs/guarantees.md: a command counts only from an authenticated member of the staff of the case's
region; otherwise it is returned with ``accepted`` False and a French reason (the receipt tells
the sender why nothing happened).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mailgateway.mail.facts import Command, SenderVerdict
from mailgateway.mail.indicators import is_closing, writer_card
from mailgateway.mail.labels import Labels, command_key
from mailgateway.mail.refs import CASE_REF, canonical
from mailgateway.mail.text import fold, is_mobile_sign_off, quote_start

MAX_COMMANDS = 50
MAX_LINE = 2000
# '#' then a letter (so "#1" or "###" are not commands); "# clore" only for known names.
_COMMAND_LINE = re.compile(r"^[ \t]*#(\s?)([^\W\d_][\w\-]*|\?)(.*)$")

REASON_UNKNOWN = "commande inconnue"
REASON_NOT_AUTHENTICATED = "expéditeur non authentifié (signature DKIM/DMARC absente ou invalide)"
REASON_NOT_STAFF = "l'expéditeur ne fait pas partie des agents SSI de la région"
REASON_NO_REGION = "message adressé à aucune boîte SSI régionale : aucune commande n'est acceptée"
REASON_ONE_PER_LINE = ("non exécutée : elle suit une autre commande sur la même ligne ; écrivez une commande "
                       "par ligne")
REASON_INHERITED_SUBJECT = ("non exécutée : en tête de l'objet d'une réponse ou d'un transfert, une commande peut "
                            "venir du message d'origine et non de vous (seule une réponse à un message de la "
                            "passerelle, son objet repris, la porte) ; écrivez-la dans le texte pour l'appliquer")
# Refused by analysis one command at a time (not for the whole mail): authorise keeps the reason,
# the receipt shows it (commands/handling.py).
PER_COMMAND_REFUSALS = (REASON_UNKNOWN, REASON_ONE_PER_LINE, REASON_INHERITED_SUBJECT)


def _args(mode: str, rest: str) -> tuple[str, ...]:
    rest = rest.strip()
    # French typography puts a colon after the word (« #repondre : Madame, … », « #note: … »): it
    # is not the argument's (an outside tester: the declarant's mail began with « : Madame »). A
    # colon that starts a word (« ::1 », « :-) ») is kept.
    if rest[:1] == ":" and rest[1:2] in ("", " ", "\t", "\u00a0", "\u202f"):
        rest = rest[1:].strip()
    if mode == "none" or not rest:
        return ()
    if mode == "text":
        return (rest[:MAX_LINE],)
    words = rest.split()[:50]
    out: list[str] = []
    for word in words:
        match = CASE_REF.fullmatch(word.strip("[]()<>,;"))
        if match:
            out.append(canonical(*match.groups()))
        elif mode == "raw":
            if "=" in word:
                key, _, value = word.partition("=")
                out.append(f"{fold(key)}={value}")
            else:
                out.append(word)
        else:
            out.append(fold(word).strip(",;."))
    return tuple(out)


def is_command_line(line: str) -> bool:
    """Whether ``line`` has the shape of a command line (``#`` and a letter, or ``#?``), whatever
    its name: mail/flowed.py never joins such a line to the one above it."""
    return _COMMAND_LINE.match(line[:MAX_LINE]) is not None


def parse_command_line(line: str, labels: Labels) -> Command | None:
    """One ``#...`` line as a Command (accepted False until authorised), or None if not one."""
    match = _COMMAND_LINE.match(line[:MAX_LINE])
    if not match:
        return None
    space, word, rest = match.groups()
    # Outlook's text/plain writes an address it linked as « a@b<mailto:a@b> » (found by an outside
    # tester: « #assigner agent@ars.test<mailto:agent@ars.test> » was refused as no agent).
    rest = _OUTLOOK_MAILTO.sub("", rest)
    key = command_key(word)
    # Two-word spellings first: "#transmettre acss", "#demander info".
    spec = None
    first_rest = rest.split(None, 1)
    if first_rest and not rest[:1].isalnum():
        spec = labels.commands.get(key + command_key(first_rest[0]))
        if spec is not None:
            rest = first_rest[1] if len(first_rest) > 1 else ""
    if spec is None:
        spec = labels.commands.get(key)
    if spec is None:
        if space:
            return None  # "# Titre": markdown, not a command
        return Command(name=fold(word), args=(), accepted=False, reason=REASON_UNKNOWN, line=line.strip())
    return Command(name=spec.name, args=_args(spec.args, rest), accepted=False, line=line.strip())


def parse_commands(text: str, labels: Labels, writer: Sequence[str] = ()) -> list[Command]:
    """Commands of the lines of ``text`` (already reduced to the new text: no quote, no signature).

    A command of ``WHOLE_TEXT`` takes the rest of its line and every following line, up to the
    next command line (or a signature delimiter, should ``text`` still hold one): staff write the
    answer to a declarant as a mail, over several lines and paragraphs, and mail clients wrap long
    lines anyway. Its one argument is that text with the writer's line breaks (blank lines around
    it removed), at most ``MAX_TEXT`` characters. ``writer``: the words naming the writer
    (mail/indicators.py ``writer_words``), whose card ending a text is not part of it.
    """
    found: list[Command] = []
    block: list[str] | None = None  # the lines of the last command when it takes a whole text
    for line in text.splitlines():
        if _SIGNATURE_LINE.match(line):
            break
        pieces, unread = _pieces(line, labels) if "#" in line else ([line], None)
        for piece in pieces:
            cmd = parse_command_line(piece, labels) if "#" in piece else None
            if cmd is None:
                if block is not None:
                    block.append(piece)
                continue
            _close(found, block, writer)
            if len(found) >= MAX_COMMANDS:
                return found
            found.append(cmd)
            block = [cmd.args[0] if cmd.args else ""] if cmd.name in WHOLE_TEXT and cmd.reason is None else None
        if unread is not None and len(found) < MAX_COMMANDS:
            found.append(unread)
    _close(found, block, writer)
    return found


# At most this many « # » of one line are looked at as the start of a second command.
_MAX_CUTS = 10


def _pieces(line: str, labels: Labels) -> tuple[list[str], Command | None]:
    """``line`` cut before a second command, and the second command it did not run, if any.

    A line is cut only between two known commands that take words, the first with at most one
    bare argument: « #assigner moi #qualifier grave » is two commands (an outside tester: the
    second was dropped without a word). Never before a command that takes a text (« #assigner moi
    #clore si RAS lundi » would close the case and mail « si RAS lundi » to the hospital;
    « #qualifier grave #transmettre-acss demain » send the case to the national cell today), nor
    after an unknown one (« #NB #repondre pas avant l'accord du DG »), nor around words
    (« #assigner moi — je ne fais pas de #repondre tant que… »): outside attackers. The first
    command then ends where the second begins, and the receipt names the second as not run
    (``REASON_ONE_PER_LINE``), whatever follows it on the line. A text keeps what it holds:
    « #note voir #clore demain »."""
    pieces: list[str] = []
    rest = line
    cmd = parse_command_line(rest, labels)
    while True:
        found = None if cmd is None or cmd.name in WHOLE_TEXT else _next_command(rest, labels)
        if cmd is None or found is None:
            pieces.append(rest)
            return pieces, None
        cut, second = found
        pieces.append(rest[:cut].rstrip())
        if cmd.reason is not None or second.name in WHOLE_TEXT or not _bare_arguments(rest[:cut]):
            return pieces, Command(name=second.name, args=(), accepted=False, reason=REASON_ONE_PER_LINE,
                                   line=rest[cut:].strip()[:MAX_LINE])
        rest, cmd = rest[cut:], second


# What one bare argument is made of: a word, an address, a reference, a FINESS, « sans-suite ».
_ARGUMENT_CHARS = frozenset("-_.@+'")


def _bare_arguments(head: str) -> bool:
    """Whether ``head`` is a command with at most one argument, a bare word (no punctuation
    around it, no second word)."""
    match = _COMMAND_LINE.match(head.rstrip())
    if match is None:
        return False
    words = match.group(3).split()
    return len(words) == 0 or (len(words) == 1 and all(ch.isalnum() or ch in _ARGUMENT_CHARS for ch in words[0]))


def _next_command(line: str, labels: Labels) -> tuple[int, Command] | None:
    """The next known command after the line's first ``#`` (after a space), and where it starts."""
    start = line.find("#") + 1
    for _ in range(_MAX_CUTS):
        at = line.find("#", start)
        if at < 0:
            return None
        if line[at - 1] in " \t\u00a0":
            cmd = parse_command_line(line[at:], labels)
            if cmd is not None and cmd.reason is None:
                return at, cmd
        start = at + 1
    return None


# Commands whose argument is a message (to the declarant, the timeline, the ACSS), not a word.
WHOLE_TEXT = frozenset({"repondre", "demander-info", "note", "clore", "rouvrir", "transmettre-acss"})
MAX_TEXT = 20_000
_SIGNATURE_LINE = re.compile(r"^-- ?$")  # RFC 3676 §4.3 signature separator ("-- ")


# Whole-text commands whose text stays inside the agency (or goes to the ACSS): not a letter.
_NOT_A_LETTER = frozenset({"note", "transmettre-acss", "clore", "rouvrir"})
_CARD_WIDTH = 80  # an agency's card: « Direction de la santé publique – ARS Auvergne-Rhône-Alpes »
_OUTLOOK_MAILTO = re.compile(r"<mailto:[^<>\s]{1,320}>", re.I)


def _close(found: list[Command], block: list[str] | None, writer: Sequence[str] = ()) -> None:
    """Give the last command of ``found`` the whole text of ``block`` (its lines, as written),
    without a phone's automatic sign-off line at its end, nor the writer's card: Outlook for Mac,
    a signature pasted or set by a template is not marked in the HTML, and « Claire Dubois /
    Référente SSI / … / Tél. : … » under a #clore motif was mailed to the establishment, then
    the template's own « Cordialement » (an outside tester, an agent)."""
    if block is None or not found:
        return
    lines = [line.rstrip() for line in block]
    card = writer_card(lines, writer, _CARD_WIDTH, whole_name=True) if writer else None
    if card is not None and card.start > 0 and not _announces(lines[:card.start]):
        lines = lines[:card.start]
    last = found[-1]
    if last.name in _NOT_A_LETTER:
        # A note, a comment for the ACSS or a closure motif is no letter: Outlook's signature under it
        # (« Cordialement, / Jean Dupont / ARS … », no « -- ») is not part of it (found by an outside
        # tester: #transmettre-acss alone sent the agent's signature as « Commentaire de l'ARS »).
        end = next((i for i, line in enumerate(lines) if is_closing(line)), None)
        lines = lines[:end] if end is not None else lines
    while lines and (not lines[-1] or is_mobile_sign_off(lines[-1])):
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    whole = "\n".join(lines)[:MAX_TEXT].strip()
    found[-1] = Command(last.name, (whole,) if whole else (), last.accepted, last.reason, last.line)


def _announces(lines: list[str]) -> bool:
    """The text before a card ends announcing what follows (« vous pouvez me joindre
    directement : ») or signing off (« Cordialement, »: the card signs the letter): the card is
    then what the agent meant to send."""
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return last.endswith(":") or is_closing(last)


def repeats(cmd: Command, other: Command) -> bool:
    """``cmd`` says nothing ``other`` does not: the same command, its words (folded) the first of
    ``other``'s — « #clore » beside « #clore incident maîtrisé », « #qualifier grave » twice."""
    if cmd.name != other.name or cmd.reason == REASON_UNKNOWN:
        return False
    mine, theirs = _words(cmd.args), _words(other.args)
    return theirs[:len(mine)] == mine


def _words(args: tuple[str, ...]) -> list[str]:
    return " ".join(args).lower().split()


def authorise(
    commands: list[Command],
    sender: SenderVerdict,
    region: str | None,
    staff: Mapping[str, frozenset[str]],
) -> tuple[Command, ...]:
    """Accept known commands from authenticated staff of ``region``; explain every refusal."""
    address = (sender.address or "").lower()
    regions = staff.get(address)
    out: list[Command] = []
    for cmd in commands:
        if cmd.reason in PER_COMMAND_REFUSALS:
            out.append(cmd)
            continue
        if not sender.authenticated:
            reason: str | None = REASON_NOT_AUTHENTICATED
        elif region is None:
            # A mail that names no regional mailbox (and no case) authorises nobody;
            # "any staff of any region" would let one region act on another's behalf.
            reason = REASON_NO_REGION
        elif not regions or region not in regions:
            reason = f"{REASON_NOT_STAFF} {region}"
        else:
            reason = None
        out.append(Command(cmd.name, cmd.args, accepted=reason is None, reason=reason, line=cmd.line))
    return tuple(out)


def is_staff(address: str | None, staff: Mapping[str, frozenset[str]]) -> bool:
    return bool(address) and (address or "").lower() in staff


# --- what staff meant: suggestions for a mail where no command was recognised ------------------
MAX_HINTS = 5
HINT_UNKNOWN = "commande inconnue"
_HINT_LINES = 40  # non-blank lines of a mail looked at for a command written without "#"
_MAX_WORD = 30  # a longer word is no command spelling: never compared


@dataclass(frozen=True)
class Hint:
    """A line that looks like a command that was not run, and what to write instead (French)."""

    line: str
    suggestion: str
    why: str


def distance(a: str, b: str, limit: int) -> int:
    """Levenshtein distance of two short words, or ``limit + 1`` once it is certainly above
    ``limit``: O(len(a) × len(b)) with both at most ``_MAX_WORD``, so bounded per comparison."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        if min(current) > limit:
            return limit + 1
        previous = current
    return previous[-1]


def nearest_command(word: str, labels: Labels) -> str | None:
    """The canonical name of the command spelling nearest to ``word`` (at most a third of its
    letters off, at least one), or None. Linear in the size of the command table."""
    key = command_key(word)
    if not key or len(key) > _MAX_WORD:
        return None
    if key in labels.commands:
        return labels.commands[key].name
    limit = max(1, len(key) // 3)
    best: tuple[int, str] | None = None
    for spelling, spec in labels.commands.items():
        found = distance(key, spelling, limit)
        if found <= limit and (best is None or found < best[0]):
            best = (found, spec.name)
    return best[1] if best else None


def _shown(line: str) -> str:
    line = line.strip()
    return line if len(line) <= 120 else line[:117] + "…"


def _rest(line: str) -> str:
    parts = line.strip().lstrip("#").split(None, 1)
    return f" {parts[1].strip()}"[:100] if len(parts) > 1 else ""


def command_hints(new: str, signature: str, unknown: list[Command], labels: Labels) -> list[Hint]:
    """Why a mail of staff ran no command, line by line: a misspelt ``#commande``, a command
    written without its "#", a command put under the signature separator (never read there)."""
    hints: list[Hint] = []
    for cmd in unknown[:MAX_HINTS]:
        word = cmd.line.strip().lstrip("#").split(None, 1)
        name = nearest_command(word[0], labels) if word else None
        if name is not None:
            hints.append(Hint(_shown(cmd.line), f"#{name}{_rest(cmd.line)}", HINT_UNKNOWN))
    for line in signature.splitlines()[:_HINT_LINES]:
        under = parse_command_line(line, labels) if "#" in line else None
        if under is not None and under.reason != REASON_UNKNOWN and len(hints) < MAX_HINTS:
            hints.append(Hint(_shown(line), _shown(line),
                              "sous la ligne de signature « -- » : ce qui suit la signature n'est pas lu"))
    if unknown:
        return hints
    for line in [ln for ln in new.splitlines() if ln.strip()][:_HINT_LINES]:
        words = line.split(None, 1)
        if len(hints) >= MAX_HINTS or not words or words[0].startswith("#"):
            continue
        # Canonical names only ("assigner moi"): a synonym ("ok", "info", "liste") opens many a sentence.
        spec = labels.commands.get(command_key(words[0].rstrip(":,;."))) if len(words[0]) <= _MAX_WORD else None
        if spec is not None and command_key(spec.name) == command_key(words[0].rstrip(":,;.")):
            hints.append(Hint(_shown(line), f"#{spec.name}{_rest(line)}",
                              "sans « # » en début de ligne, ce n'est pas une commande"))
    return hints


def signature_part(text: str) -> str:
    """The lines between the signature separator ("-- ") and the quoted part, if any."""
    lines = text.splitlines()[:5000]
    end = quote_start(lines)
    lines = lines[:end] if end is not None else lines
    for i, line in enumerate(lines):
        if _SIGNATURE_LINE.match(line):
            return "\n".join(lines[i + 1 :])
    return ""
