"""Plain text sent as ``format=flowed`` (RFC 3676), read as the writer typed it.

Thunderbird, Apple Mail and others wrap long lines at about 72 columns and mark each soft break
with a trailing space (§4.2); ``DelSp=yes`` (§4.1) says that space was added by the wrapper and
is removed when the lines are joined again. Without this, a staff command written on one long
line reached the gateway as its first 72 columns (issue 17: "… Le CERT Santé va vous").

One forward pass over the lines, string operations, except that a line that could be joined to
the one above is checked against the command and quote-header patterns (mail/commands.py,
mail/text.py: linear, budget-tested) — only when the width test says it could be a wrap.
"""

from __future__ import annotations

from mailgateway.mail.commands import is_command_line
from mailgateway.mail.text import quote_start

SIGNATURE = "-- "  # §4.3: the signature separator is never a flowed line
# A soft break is honoured only where a writer wrapped: where the next line's first word would not
# have fitted on a line of this many columns. Writers wrap at 66-78 (§4.2 recommends at most 66
# for new lines, "SHOULD NOT" exceed 78; Thunderbird 72), so every real wrap passes. Why: a DKIM
# signature with relaxed body canonicalisation (RFC 6376 §3.4.4, what most providers use) does not
# cover trailing blanks, so anyone holding a signed flowed mail can add a space at the end of any
# line and its copy still verifies; without this rule the copy read « Numéro FINESS : 690781810 »
# and the next field as one line — an authenticated declaration saying something else (found by an
# outside tester). The trailing space of a short line is an edit nobody's wrapper makes: ignored.
WRAP_MIN = 60


def unflow(text: str, *, delsp: bool = False) -> str:
    """Join the soft-broken lines of ``text`` (RFC 3676 §4.2), keeping the hard breaks.

    Quoted lines (§4.5) keep their quote depth; a change of depth ends a paragraph even after a
    trailing space (§4.5: "improperly flowed"). Space-stuffing (§4.4) is undone. A trailing space
    counts as a soft break only where a writer wrapping at ``WRAP_MIN`` columns would have broken
    the line (see above), and never before a command line, the signature separator or an
    attribution line.
    """
    lines = [_split(raw) for raw in text.split("\n")]
    out: list[str] = []
    pieces: list[str] = []  # the current flowed paragraph
    depth_open = 0

    def flush() -> None:
        if pieces:
            out.append(_quoted(depth_open, "".join(pieces)))
            pieces.clear()

    for index, (depth, content) in enumerate(lines):
        if pieces and depth != depth_open:
            flush()
        depth_open = depth
        following = lines[index + 1] if index + 1 < len(lines) else None
        if content.endswith(" ") and content != SIGNATURE and _wrapped(depth, content, following):
            pieces.append(content[:-1] if delsp else content)
            continue
        pieces.append(content)
        flush()
    flush()
    return "\n".join(out)


def _split(raw: str) -> tuple[int, str]:
    """A line as (quote depth, content without the quote markers and the stuffing space)."""
    line = raw[:-1] if raw.endswith("\r") else raw
    content = line.lstrip(">")
    depth = len(line) - len(content)
    if content.startswith(" "):
        content = content[1:]  # space-stuffed (§4.4), or the blank after "> "
    return depth, content


def _wrapped(depth: int, content: str, following: tuple[int, str] | None) -> bool:
    """Whether the line ``content`` (ending in a space) was broken by a wrapper: its next word
    would not have fitted in ``WRAP_MIN`` columns. The last line, or one before a change of quote
    depth, ends its paragraph either way."""
    if following is None or following[0] != depth:
        return True
    next_text = following[1]
    width = (depth + 1 if depth else 0) + len(content)  # quote markers and their blank count too
    space = next_text.find(" ")
    if width + (len(next_text) if space < 0 else space) <= WRAP_MIN:
        return False
    # Never a wrap a line may be joined to: a staff command (« #note INTERNE … » joined to the
    # « #repondre » line above it was mailed to the establishment: an outside tester, with a line
    # ending in a space by accident — or added, as above), the signature separator, an
    # attribution (« Le …, X a écrit : ») or quote header.
    return not (next_text == SIGNATURE or is_command_line(next_text) or quote_start([next_text]) == 0)


def _quoted(depth: int, content: str) -> str:
    return f"{'>' * depth} {content}" if depth else content
