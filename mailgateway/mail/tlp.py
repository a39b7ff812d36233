"""TLP markings (FIRST TLP 2.0, https://www.first.org/tlp/): one parser for mail and operators.

Every place that reads a marking goes through here: ACSS alerts (mail/alert.py), the TLP of an
alert relay (bulletins/fanout.relay_alert), bulletins written by staff (``#tlp`` lines,
``bulletin send --tlp``) and the outbound gate (dispatch/mailer.py).

It fails closed. A marking that is present but not understood ("TLP:PURPLE", "TLP: ???",
"TLP:AMBER-ish", "Diffusion : restreinte") is AMBER+STRICT for relay — it never leaves the agency
and the ACSS — and the marking as written is kept for staff to see (``Marking.raw``). When one
text carries several markings the strictest wins: the relay forwards the whole text, and TLP 2.0
asks that information be shared under the label of its most restrictive part.

French labels map exactly: BLANC → CLEAR, VERT → GREEN, AMBRE → AMBER, AMBRE+STRICT →
AMBER+STRICT, ROUGE → RED; TLP 1.0's WHITE is TLP 2.0's CLEAR.

The search is linear: "TLP", then blanks and an optional ':' or '=' with no two quantifiers over
the same characters, then the label read from a fixed position (docs/guarantees.md: no backtracking on
untrusted text).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailgateway.mail.text import fold

CLEAR, GREEN, AMBER, AMBER_STRICT, RED = "CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED"
LABELS = (CLEAR, GREEN, AMBER, AMBER_STRICT, RED)  # least to most restrictive
FAIL_CLOSED = AMBER_STRICT
MAX_RAW = 80
MAX_MARKINGS = 100  # markings considered in one text (each is cheap; the bound is for the list)

# Spellings after fold() and upper(), words joined by "+" ("AMBER STRICT", "ambre + strict").
_SPELLINGS = {
    "CLEAR": CLEAR, "WHITE": CLEAR, "BLANC": CLEAR, "BLANCHE": CLEAR,
    "GREEN": GREEN, "VERT": GREEN, "VERTE": GREEN,
    "AMBER": AMBER, "AMBRE": AMBER,
    "AMBER+STRICT": AMBER_STRICT, "AMBRE+STRICT": AMBER_STRICT,
    "RED": RED, "ROUGE": RED,
}  # fmt: skip

_BLANK = r"[^\S\n]"  # a blank within the line
# "TLP" as a word, then blanks, then an optional separator and blanks: each blank run is read by
# one quantifier only ("[:=]" is not a blank), so a run of blanks is scanned a bounded number of times.
_PREFIX = re.compile(rf"\bTLP\b(?:{_BLANK}*(?P<sep>[:=\-–/]))?{_BLANK}*", re.I)
# The label: letters, then possibly a joined second word ("+STRICT", "-STRICT", " STRICT").
_WORD = re.compile(rf"[^\W\d_]+(?:{_BLANK}*[+\-_/]{_BLANK}*[^\W\d_]+|{_BLANK}+strict\b)?", re.I)
_JOINERS = re.compile(rf"{_BLANK}*[+\-_/]{_BLANK}*|{_BLANK}+")


@dataclass(frozen=True)
class Marking:
    """A TLP marking: ``label`` is what relay obeys, ``raw`` what the author wrote."""

    label: str  # one of LABELS; FAIL_CLOSED when the marking was not understood
    raw: str  # as written after "TLP:" (bounded), shown to staff
    known: bool  # False: an unknown or unparsed marking, read as FAIL_CLOSED

    def to_json(self) -> dict[str, object]:
        return {"label": self.label, "raw": self.raw, "known": self.known}


def _lookup(word: str) -> str | None:
    key = _JOINERS.sub("+", fold(word)).upper()
    return _SPELLINGS.get(key)


def _raw(text: str) -> str:
    return " ".join(text.split())[:MAX_RAW]


def parse_value(value: str | None) -> Marking | None:
    """The marking written as a value ("AMBRE+STRICT", "TLP:CLEAR", "Diffusion restreinte").

    None for an empty value; anything that is not exactly a TLP label is a FAIL_CLOSED marking.
    Text after the label ("TLP:CLEAR (diffusion libre)") is allowed when separated by a blank or
    punctuation other than a joiner.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    start = 0
    prefix = _PREFIX.match(text)
    if prefix is not None:
        start = prefix.end()
    word = _WORD.match(text, start)
    label = _lookup(word.group(0)) if word is not None else None
    if label is not None and word is not None:
        rest = text[word.end() :]
        # "CLEAR" then end, blanks or punctuation; "CLEARLY" cannot happen ([^\W\d_]+ is greedy),
        # "CLEAR2" or "AMBER+STRICT+X" can: they are not labels.
        if rest and (rest[0].isalnum() or rest[0] in "+-_/"):
            label = None
    # What was written after "TLP:" (so that "TLP:AMBER" and a field "TLP : AMBER" read alike).
    if label is None or word is None:
        return Marking(FAIL_CLOSED, _raw(text[start:]) or _raw(text), known=False)
    return Marking(label, _raw(text[start : word.end()]), known=True)


def find_markings(text: str) -> list[Marking]:
    """Every "TLP…" marking in ``text``, in order (at most MAX_MARKINGS).

    "TLP" then ':', '=', '-', '–' or '/' followed by anything is a marking (unknown: FAIL_CLOSED). Without the
    separator ("TLP AMBER", "[TLP ROUGE]") the next word must be a label or written in capitals,
    so that prose ("le protocole TLP définit…", "TLP 2.0") is not a marking.
    """
    found: list[Marking] = []
    for prefix in _PREFIX.finditer(text):
        word = _WORD.match(text, prefix.end())
        written = word.group(0) if word is not None else ""
        if prefix.group("sep") is None and _lookup(written) is None and not (len(written) >= 3 and written.isupper()):
            continue
        # One more character: parse_value refuses a label glued to more ("GREEN2", "AMBER+STRICT+X");
        # an unparsed marking keeps a few characters of what followed, for staff ("TLP: ???").
        end = word.end() + 1 if word is not None else prefix.end() + 20
        raw = text[prefix.start() : end].split("\n", 1)[0]
        marking = parse_value(raw)
        if marking is not None:
            found.append(marking)
        if len(found) >= MAX_MARKINGS:
            break
    return found


def strictest(markings: list[Marking]) -> Marking | None:
    """The most restrictive marking (ties: the first); None for no marking."""
    best: Marking | None = None
    for marking in markings:
        if best is None or LABELS.index(marking.label) > LABELS.index(best.label):
            best = marking
    return best


def relay_label(label: str | None) -> str:
    """The label a relay obeys for a stored label: canonical, and FAIL_CLOSED when unknown or absent.

    No marking at all is also FAIL_CLOSED. The TLP rule is that the source decides how far its
    information goes; an unlabelled alert gives no such permission, and CERTs ask the source before
    passing unlabelled material on. The gateway cannot ask, so the alert stays with the agency and
    the ACSS until staff, having asked, send it themselves as a bulletin with an explicit label
    (``#tlp`` / ``--tlp``). ACSS alerts meant for establishments carry a marking.
    """
    if label is None:
        return FAIL_CLOSED
    marking = parse_value(label)
    return marking.label if marking is not None else FAIL_CLOSED


def operator_label(value: str | None, default: str = CLEAR) -> Marking:
    """A label typed by staff (``--tlp``, ``#tlp``): None gives ``default``; unknown stays unknown.

    The caller refuses an unknown label with the raw text (the author can correct it), rather
    than guessing.
    """
    if value is None:
        return Marking(default, default, known=True)
    marking = parse_value(value)
    return marking if marking is not None else Marking(FAIL_CLOSED, "", known=False)
