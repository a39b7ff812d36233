"""Courtesy replies: « Merci, bonne journée », « Bien reçu, cordialement », « #lu ».

A courtesy carries nothing to act on: on a closed case it is attached to the timeline without
reopening it, and on a bulletin or relayed alert it counts as an acknowledgement without a staff
notification. Anything else is substantive and reaches staff, so the test is conservative: the
new text is short (``[courtesy] max_chars``), has no question mark, the message no attachment,
and every line is made only of the phrases of ``[courtesy] phrases`` (labels.toml) — except up to
five closing lines of a signature: capitalised words and the particles of names (« Jean Dupont »,
« La cellule SSI du CHU de Test »), an address, a phone line (« Tél. 04 72 00 00 00 »).

Linear: the text is cut to ``max_chars`` before anything else, then matched word by word against
phrases of at most a few words (no regex on the text).
"""

from __future__ import annotations

from mailgateway.mail.labels import Labels
from mailgateway.mail.text import match_form

MAX_SIGNATURE_LINES = 5
MAX_SIGNATURE_CHARS = 80
# Lower-case words a name or a service may hold (« La cellule SSI du CHU de Test »).
_PARTICLES = frozenset({"de", "du", "des", "la", "le", "les", "d", "l", "et", "à", "au", "aux", "en", "sur", "-"})
# A signature line with digits is a phone line: it starts with one of these, or is only a number.
_PHONE_WORDS = frozenset({"tél", "tel", "téléphone", "telephone", "mob", "mobile", "portable", "port", "fax",
                          "standard", "ligne", "poste", "t", "m", "f"})
_NUMBER_CHARS = frozenset("0123456789 +().-/")


def _phrases_only(words: list[str], phrases: tuple[tuple[str, ...], ...]) -> bool:
    """Every word covered by a sequence of phrases (greedy, longest phrase first)."""
    i = 0
    while i < len(words):
        for phrase in phrases:
            if tuple(words[i : i + len(phrase)]) == phrase:
                i += len(phrase)
                break
        else:
            return False
    return True


def _signature_word(word: str) -> bool:
    bare = word.strip(",.;:()/|\"'«»")
    if not bare:
        return True
    if "@" in bare and "/" not in bare:  # an address: « jean.dupont@chu.fr »
        return True
    if bare.lower().split("'")[0] in _PARTICLES or bare.lower() in _PARTICLES:
        return True
    return bare[:1].isupper() or not bare[:1].isalpha()


def _signature_line(line: str) -> bool:
    """A closing line of a signature: a name, a title, a service (capitalised words and the
    particles of names), an address, or a phone number — never a sentence with a question."""
    if not 0 < len(line) <= MAX_SIGNATURE_CHARS or "?" in line or "://" in line:
        return False
    words = line.replace(",", " ").split()
    if any(ch.isdigit() for ch in line):
        first = words[0].strip(".:").lower() if words else ""
        if first not in _PHONE_WORDS and not all(ch in _NUMBER_CHARS for ch in line):
            return False
        return all(ch in _NUMBER_CHARS for ch in " ".join(words[1:] if first in _PHONE_WORDS else words))
    return all(_signature_word(w) for w in words)


def is_courtesy(new_text: str, attachments: int, labels: Labels) -> bool:
    """Whether a reply's new text (quotes and signature separator removed) is only a courtesy."""
    text = new_text.strip()
    if attachments or not text or len(text) > labels.courtesy_max_chars or "?" in text:
        return False
    phrases = tuple(tuple(p.split()) for p in labels.courtesy_phrases)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    courteous = 0
    for n, line in enumerate(lines):
        if _phrases_only(match_form(line).split(), phrases):
            courteous += 1
            continue
        # A closing signature: the last lines only, after at least one courtesy line.
        rest = lines[n:]
        return courteous > 0 and len(rest) <= MAX_SIGNATURE_LINES and all(_signature_line(r) for r in rest)
    return courteous > 0
