"""Courtesy replies: « Merci, bonne journée », « Bien reçu, cordialement », « #lu ».

A courtesy carries nothing to act on: on a closed case it is attached to the timeline without
reopening it, and on a bulletin or relayed alert it counts as an acknowledgement without a staff
notification. Anything else is substantive and reaches staff, so the test is conservative: the
new text is short (``[courtesy] max_chars``), has no question mark, the message no attachment,
and every line is made only of the phrases of ``[courtesy] phrases`` (labels.toml) — except up to
two closing lines of a signature in which every word is capitalised (« Jean Dupont », « RSSI »).

Linear: the text is cut to ``max_chars`` before anything else, then matched word by word against
phrases of at most a few words (no regex on the text).
"""

from __future__ import annotations

from mailgateway.mail.labels import Labels
from mailgateway.mail.text import match_form

MAX_SIGNATURE_LINES = 2
MAX_SIGNATURE_CHARS = 60


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


def _signature_line(line: str) -> bool:
    words = line.replace(",", " ").split()
    return (
        0 < len(line) <= MAX_SIGNATURE_CHARS
        and not any(ch.isdigit() for ch in line)
        and all(w[:1].isupper() or not w[:1].isalpha() for w in words)
    )


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
