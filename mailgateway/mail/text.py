"""Text helpers shared by the extractors: normalisation, quotes, forwarded messages, labels.

French mail is matched on a normalised form (accents removed, case folded, punctuation as
spaces) so that "Catégorie", "CATEGORIE" and "categorie" are one label.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from functools import lru_cache

_NON_WORD = re.compile(r"[^0-9a-z+?]+")


# The combining diacritical marks (U+0300–U+036F) but the grapheme joiner U+034F, whose combining
# class is 0: what NFKD leaves of every accent of French and of the Latin scripts.
_LATIN_MARKS = re.compile("[\u0300-\u034e\u0350-\u036f]+")


def fold(text: str) -> str:
    """Remove accents and fold case; keep everything else."""
    if text.isascii():
        return text.lower()
    text = text.replace("œ", "oe").replace("Œ", "OE").replace("æ", "ae").replace("Æ", "AE")
    text = text.replace("’", "'").replace("ʼ", "'")
    decomposed = _LATIN_MARKS.sub("", unicodedata.normalize("NFKD", text))
    if decomposed.isascii():  # French: one pass in C (issue 19: 2.5 × faster on a declaration)
        return decomposed.casefold()
    # Other combining marks removed one by one; other non-Latin letters are kept as they are.
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def normalise(text: str) -> str:
    """fold(), then every run of non-alphanumerics becomes one space."""
    return _NON_WORD.sub(" ", fold(text)).strip()


def singular(word: str) -> str:
    """French plural stripped for matching ("comptes" -> "compte", "réseaux" -> "reseau")."""
    if len(word) > 3 and word[-1] in "sx" and not word.endswith(("ss", "is", "us")):
        return word[:-1]
    return word


@lru_cache(maxsize=64)
def match_form(text: str) -> str:
    """The form labels and synonyms are compared in: normalised, plurals stripped."""
    return " ".join(singular(w) for w in normalise(text).split())


# -- quoted text and new text -------------------------------------------------------------------
# Where the quoted part of a reply starts (the line itself is not new text).
_QUOTE_HEADERS = [
    re.compile(r"^\s*-{2,}\s*(message d'origine|original message|message original)\s*-{2,}", re.I),
    re.compile(r"^\s*_{5,}\s*$"),  # Outlook's separator line before "De : ..."
    re.compile(r"^\s*(le|on|am)\s.{0,200}(a écrit|a ecrit|wrote|schrieb)\s*:\s*$", re.I),
    # Outlook header block (French, English, German, Spanish, Italian, Dutch); checked with the next
    re.compile(r"^\s*(de|from|von|da|van)\s*:\s*.+$", re.I),
    re.compile(r"^\s*-{3,}\s*(forwarded message|message transféré|message transfere)\s*-{3,}", re.I),
    # "(?:\s*:)?\s*$", not "\s*:?\s*$": two quantifiers over one run of blanks (quadratic).
    re.compile(r"^\s*début du message réexpédié(?:\s*:)?\s*$", re.I),
    re.compile(r"^\s*begin forwarded message(?:\s*:)?\s*$", re.I),
]
_OUTLOOK_NEXT = re.compile(r"^\s*(envoy[ée]|sent|date|gesendet|à|a|to|objet|subject|enviado(?: el)?|para|asunto|"
                           r"fecha|inviato|data|oggetto|verzonden|aan|onderwerp|datum)\s*:", re.I)
_SIGNATURE = re.compile(r"^-- ?$")
_WRAPPED_ATTRIBUTION = re.compile(r"^\s*(le|on)\s.{0,200}$", re.I)
# Matched on the line without its leading blanks: "^\s*.{0,80}" would let both quantifiers share
# a run of blanks (80 tries per blank).
_WROTE = re.compile(r"^.{0,80}(a écrit|a ecrit|wrote)\s*:\s*$", re.I)


def quote_start(lines: list[str], begin: int = 0) -> int | None:
    """Index of the first line of quoted/forwarded material (from ``begin`` on), or None."""
    for i in range(begin, len(lines)):
        line = lines[i]
        stripped = line.lstrip()
        if not stripped:
            continue  # no pattern matches a blank line: skip ten regex calls per blank line
        if stripped.startswith(">"):
            return i
        for n, pattern in enumerate(_QUOTE_HEADERS):
            if not pattern.match(line):
                continue
            if n == 3:  # "De : x" is a quote header only when followed by "Envoyé :"/"Date :" etc.
                following = [ln for ln in lines[i + 1 : i + 4] if ln.strip()]
                if not following or not _OUTLOOK_NEXT.match(following[0]):
                    continue
            return i
        # Gmail wraps long attributions over two lines: "Le ... <x@y>" / "a écrit :".
        if _WRAPPED_ATTRIBUTION.match(line) and i + 1 < len(lines) and _WROTE.match(lines[i + 1].lstrip()):
            return i
    return None


def _marked_block_end(lines: list[str], start: int) -> int | None:
    """Where the ``>``-marked quote opening at ``start`` ends (the first line after it that is
    neither marked nor blank), or None when what opens at ``start`` is not such a quote (an
    Outlook header block, a forward marker, an attribution over unmarked text: everything after
    it is quoted, nothing tells where it ends)."""
    i = start
    if not lines[i].lstrip().startswith(">"):
        # An attribution (« Le … a écrit : », maybe wrapped over two lines) right above ">" lines.
        i += 1
        if i < len(lines) and not lines[i].lstrip().startswith(">") and _WROTE.match(lines[i].lstrip()):
            i += 1
        while i < len(lines) and not lines[i].strip():
            i += 1
        if i >= len(lines) or not lines[i].lstrip().startswith(">"):
            return None
    while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith(">")):
        i += 1
    return i


def new_text(text: str) -> str:
    """The new text of a reply: what is not quoted, above the signature separator.

    Above the first quote, attribution or forwarded header block (top-posting: Outlook, most
    mobiles); or, when the mail opens with a quote marked line by line with ``>`` (nothing new
    above it), what follows that quote too, up to the next one (bottom-posting and interleaved
    answers: Thunderbird's default, an outside tester's commands under the quote ran nothing).
    Quoted lines are never new text, so the commands of a quoted notification stay quoted. One
    pass: each line is looked at once."""
    lines = text.splitlines()
    kept: list[str] = []
    at = 0
    while at < len(lines):
        start = quote_start(lines, at)
        piece = lines[at:] if start is None else lines[at:start]
        for i, line in enumerate(piece):
            if _SIGNATURE.match(line):
                kept += piece[:i]
                return "\n".join(kept).strip()
        kept += piece
        if start is None or (at == 0 and any(line.strip() for line in piece)):
            # Top-posting (new text above the first quote): everything under it is the quoted
            # original, whose own bottom-posted reply must not read as ours — an outside tester's
            # Outlook reply with a header block in Spanish (not recognised) quoted a colleague's
            # Thunderbird answer, and its « #qualifier » ran in the new sender's name.
            break
        end = _marked_block_end(lines, start)
        if end is None:
            break
        if kept and kept[-1].strip():
            kept.append("")
        at = end
    return "\n".join(kept).strip()


# -- forwarded messages --------------------------------------------------------------------------
# One line (re.M), blanks within the line only: "\s" would cross line ends, so that "^\s*" tried
# at every line start would rescan every following blank line (quadratic), and "\s*:?\s*$" lets two
# quantifiers share one run of blanks.
_BLANK = r"[^\S\n]*"
_FORWARD_MARKERS = re.compile(
    rf"^{_BLANK}(?:-{{3,}}{_BLANK}(?:forwarded message|message transf[ée]r[ée]|original message|message d'origine)"
    rf"{_BLANK}-{{3,}}|d[ée]but du message r[ée]exp[ée]di[ée](?:{_BLANK}:)?|begin forwarded message(?:{_BLANK}:)?)"
    rf"{_BLANK}$",
    re.I | re.M,
)


# Outlook forwards inline without a marker line: a header block « De : … / Envoyé : … / À : … /
# Objet : … » (English « From: / Sent: / To: / Subject: »), often after a line of underscores.
_OUTLOOK_FROM = frozenset({"de", "from", "von", "expediteur"})
_OUTLOOK_FIELDS = frozenset({"envoye", "sent", "date", "a", "to", "pour", "cc", "objet", "subject", "sujet",
                             "gesendet", "an", "betreff", "importance"})
_OUTLOOK_SUBJECT = frozenset({"objet", "subject", "sujet", "betreff"})
MAX_FORWARD_LINES = 5000


def _outlook_block(lines: list[str]) -> int | None:
    """Index of the « De : » line that opens an Outlook header block, or None.

    The « De : » line must be followed, within the next six non-blank lines, by at least two
    other header labels one of which is the subject: a form's « De : » line is not a forward.
    String operations only (``label_line``): linear in the text.
    """
    for i, line in enumerate(lines[:MAX_FORWARD_LINES]):
        found = label_line(line)
        if found is None or normalise(found[0].strip("*")) not in _OUTLOOK_FROM or not found[1].strip():
            continue
        names: set[str] = set()
        seen = 0
        for following in lines[i + 1 : i + 12]:
            if not following.strip():
                continue
            seen += 1
            if seen > 6:
                break
            label = label_line(following)
            if label is None:
                break
            name = normalise(label[0].strip("*"))
            if name not in _OUTLOOK_FIELDS:
                break
            names.add(name)
        if len(names) >= 2 and names & _OUTLOOK_SUBJECT:
            return i
    return None


def header_block_end(forwarded: str) -> int:
    """Offset just after the header block that opens a forwarded text (blank lines, then
    « Label : valeur » lines up to the first blank or unlabelled line), 0 without one."""
    offset = 0
    started = False
    for line in forwarded[:20_000].splitlines(keepends=True)[:40]:
        stripped = line.strip()
        if not stripped:
            if started:
                break
            offset += len(line)
            continue
        if label_line(line.rstrip("\r\n")) is None:
            break
        started = True
        offset += len(line)
    return offset if started else 0


def split_forwarded(text: str) -> tuple[str, str | None]:
    """(text before the forward marker, forwarded text) — the second is None without a marker.

    Markers: « -------- Message transféré -------- » (Thunderbird), « ---------- Forwarded
    message --------- » (Gmail), « Début du message réexpédié : » (Apple Mail), « -----Message
    d'origine----- », and Outlook's bare header block « De : … Envoyé : … À : … Objet : … »
    (whose « De : » line stays in the forwarded text: it names the forwarded message's author).
    """
    match = _FORWARD_MARKERS.search(text)
    lines = text.splitlines(keepends=True)
    block = _outlook_block([ln.rstrip("\r\n") for ln in lines])
    block_at = sum(len(ln) for ln in lines[:block]) if block is not None else None
    if match and (block_at is None or match.start() <= block_at):
        return text[: match.start()], text[match.end() :]
    if block_at is None:
        return text, None
    return text[:block_at], text[block_at:]


_FWD_HEADER = re.compile(rf"^{_BLANK}\*?(de|from|exp[ée]diteur)(?:{_BLANK}\*)?{_BLANK}:{_BLANK}(.+)$", re.I | re.M)


def forwarded_from(forwarded: str) -> str | None:
    """The From line of an inline-forwarded message's header block."""
    head = forwarded[:3000]
    match = _FWD_HEADER.search(head)
    return match.group(2).strip() if match else None


# -- labelled lines ------------------------------------------------------------------------------
MAX_LABEL = 60
_BULLETS = ("-", "*", "•")


def label_line(line: str) -> tuple[str, str] | None:
    r"""(label as written, value) of one "Label : value" line (no line break in it), or None.

    The label is what precedes the first colon, without blanks around it and without one list
    bullet ("-", "*", "•"); at most MAX_LABEL characters. It may be empty (" : x", "- : x"):
    such a line still counts as labelled (it ends a multi-line value) but names no field.

    String operations, not a regex: the former ``^\s*[-*•]?\s*([^:\n]{1,60}?)\s*:`` let four
    quantifiers share one run of blanks, and a line of a few thousand spaces before a colon took
    minutes (docs/guarantees.md, "poison message"). This is linear in the length of the line, with the same
    results on every line.
    """
    head, colon, rest = line.partition(":")
    if not colon or not head:
        return None
    label = head.lstrip()
    if label.startswith(_BULLETS):
        label = label[1:].lstrip()
    label = label.rstrip()
    if len(label) > MAX_LABEL or "\n" in label:
        return None
    # One blank after the colon belongs to the separator (": value"); the rest is the value.
    return label, rest[1:] if rest[:1].isspace() else rest


def _is_label_line(line: str) -> bool:
    return label_line(line) is not None


def labelled_lines(
    text: str, max_lines: int = 2000, is_field: Callable[[str], bool] | None = None,
    is_long: Callable[[str], bool] | None = None,
) -> list[tuple[str, str, int]]:
    """(normalised label, value, line index) for every "Label : value" line.

    A label whose value is empty ("Description :") takes the following lines up to the next
    blank line or labelled line: portals put long text on the lines after the label; after a
    blank line, the paragraph that follows, up to the next labelled line.

    ``is_field`` (normalised label -> known field) keeps a sentence that ends with a colon
    (« Voici les éléments : », « Nous vous signalons un incident : ») from swallowing the form
    below it: only a known field takes the following lines, and a known field's paragraph stops
    at the next known field. Without it every label is a field (and every labelled line ends a
    paragraph). Each line is read once or twice: linear.

    ``is_long`` (normalised label -> a field of free text: a description, the measures taken)
    keeps its whole paragraph, hard-wrapped lines and lines that merely end with a colon or hold
    a link included, up to a blank line or the next known field (found by an outside tester: the
    résumé sent to the ACSS stopped at the first line break, or at « … la page suivante : »).
    """
    lines = text.splitlines()[:max_lines]
    out: list[tuple[str, str, int]] = []

    def ends_value(line: str) -> bool:
        found = label_line(line)
        if found is None:
            return False
        return is_field is None or is_field(match_form(found[0]))

    i = 0
    while i < len(lines):
        found = label_line(lines[i])
        if found is None or found[0].startswith(("http", ">")):
            i += 1
            continue
        label = match_form(found[0])
        value = found[1].strip()
        j = i + 1
        if not value and is_field is not None and not is_field(label):
            pass  # an unknown label (a sentence ending with ':') takes nothing below it
        elif not value:
            block: list[str] = []
            long_text = is_long is not None and is_long(label)
            while j < len(lines) and lines[j].strip() and not (
                    ends_value(lines[j]) if long_text else _is_label_line(lines[j])):
                block.append(lines[j].strip())
                j += 1
            if not block and j < len(lines) and not lines[j].strip():
                # "Description :" then a blank line then the paragraph (not a labelled line).
                k = j + 1
                while k < len(lines) and lines[k].strip() and not ends_value(lines[k]):
                    block.append(lines[k].strip())
                    k += 1
                j = k
            value = " ".join(block)
        elif is_long is not None and is_long(label):
            while j < len(lines) and lines[j].strip() and not ends_value(lines[j]):
                value += " " + lines[j].strip()
                j += 1
        else:
            # Continuation lines (indented or wrapped text without a label) extend the value.
            while (
                j < len(lines) and lines[j].strip() and lines[j][:1] in (" ", "\t") and not _is_label_line(lines[j])
            ):
                value += " " + lines[j].strip()
                j += 1
        if label:
            out.append((label, value, i))
        i = max(j, i + 1)
    return out


# The line a phone's mail client adds under what was typed (« Envoyé de mon iPhone », « Obtenir
# Outlook pour iOS<https://aka.ms/…> »): not part of a #repondre or #clore text (found by an
# outside tester: the declarant's closure mail quoted « Envoyé de mon iPhone » as the motif), and
# what is just above it is the writer's signature (mail/indicators.py).
# On lowercase text without accents; bounded, linear.
_MOBILE_SIGN_OFF = re.compile(
    r"(?:envoye|envoyee|sent|obtenir|telecharger|get|download)\b[^<]{0,60}?"
    r"\b(?:iphone|ipad|android|smartphone|mobile|galaxy|samsung|huawei|blackberry|appareil|outlook (?:pour|for))\b")


def is_mobile_sign_off(line: str) -> bool:
    """« Envoyé de mon iPhone », « Obtenir Outlook pour iOS<…> », « Sent from my Galaxy »…"""
    stripped = line.strip()
    if len(stripped) > _REMEMBERED_LINE:
        return _mobile_sign_off(stripped)
    return _remembered_mobile_sign_off(stripped)


def _mobile_sign_off(stripped: str) -> bool:
    text = fold(stripped)
    return 0 < len(text) <= 160 and _MOBILE_SIGN_OFF.match(text) is not None


# Lines up to this long are remembered (issue 19: the same lines in every mail, each message's
# lines looked at twice); longer ones (never a sign-off, unless made of combining marks) are not,
# so the cache stays small (4,096 × 400 characters at most).
_REMEMBERED_LINE = 400
_remembered_mobile_sign_off = lru_cache(maxsize=4096)(_mobile_sign_off)
