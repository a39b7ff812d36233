"""Staff commands: ``#name args`` lines in the new text of a message (quotes never count).

docs/guarantees.md: a command counts only from an authenticated member of the staff of the case's
region; otherwise it is returned with ``accepted`` False and a French reason (the receipt tells
the sender why nothing happened).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from mailgateway.mail.facts import Command, SenderVerdict
from mailgateway.mail.labels import Labels, command_key
from mailgateway.mail.refs import CASE_REF, canonical
from mailgateway.mail.text import fold

MAX_COMMANDS = 50
MAX_LINE = 2000
# '#' then a letter (so "#1" or "###" are not commands); "# clore" only for known names.
_COMMAND_LINE = re.compile(r"^[ \t]*#(\s?)([^\W\d_][\w\-]*|\?)(.*)$")

REASON_UNKNOWN = "commande inconnue"
REASON_NOT_AUTHENTICATED = "expéditeur non authentifié (signature DKIM/DMARC absente ou invalide)"
REASON_NOT_STAFF = "l'expéditeur ne fait pas partie des agents SSI de la région"
REASON_NO_REGION = "message adressé à aucune boîte SSI régionale : aucune commande n'est acceptée"


def _args(mode: str, rest: str) -> tuple[str, ...]:
    rest = rest.strip()
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


def parse_command_line(line: str, labels: Labels) -> Command | None:
    """One ``#...`` line as a Command (accepted False until authorised), or None if not one."""
    match = _COMMAND_LINE.match(line[:MAX_LINE])
    if not match:
        return None
    space, word, rest = match.groups()
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


def parse_commands(text: str, labels: Labels) -> list[Command]:
    """Commands of the lines of ``text`` (already reduced to the new text)."""
    found: list[Command] = []
    for line in text.splitlines():
        if "#" not in line:
            continue
        cmd = parse_command_line(line, labels)
        if cmd is not None:
            found.append(cmd)
            if len(found) >= MAX_COMMANDS:
                break
    return found


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
        if cmd.reason == REASON_UNKNOWN:
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
