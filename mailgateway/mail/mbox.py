"""Split an mbox file into messages without losing any.

``mailbox.mbox`` splits at every line starting with ``From `` (mboxo/mboxrd are supposed to escape
body lines as ``>From``, but real files do not always). On shared/corpus
``mimekit/.../unmunged.mbox.txt`` (a UTF-8 BOM, then bodies with unescaped ``From Russia with
love`` lines) that yields three pieces and loses a message. Here a line is a separator only when:

* it has the envelope shape ``From <sender> [<date>]``: the sender is ``-``, an address, or a
  single token, followed by nothing or by a ctime-like date with a year or a time, and
* the next line looks like a header field (RFC 5322 §2.2 field name and a colon).

Message bytes are returned as they are in the file, without the separator line and the
blank line before the next one (like ``mailbox.mbox.get_bytes``), and never re-encoded.
"""

from __future__ import annotations

import re

# A year or a time somewhere after the sender ("From x@y Fri Nov 27 08:30:00 2026").
_DATE_HINT = re.compile(rb"\b\d{4}\b|\d{1,2}:\d{2}")
_LINE_BLANKS = b" \t"
_ASCII_SPACE = frozenset(b" \t\n\r\x0b\x0c")  # what \s means in a bytes pattern


def _from_line(line: bytes) -> bool:
    """A "From " separator line: "From ", a sender (a run of non-blanks), then nothing or a date.

    String operations plus one search: the former single regex
    (``From (?:-|\\S+@\\S+|\\S+)(?:[ \\t]*$|[ \\t]+.*(?:…).*$)``) let ``\\S+@\\S+`` and
    ``.*….*`` retry every split, and a 100 KB line took three minutes (docs/guarantees.md, bounded work).
    """
    line = line[:-1] if line.endswith(b"\n") else line  # one final line break, as "$" allowed
    if not line.startswith(b"From ") or len(line) == 5 or line[5:6].isspace() or b"\n" in line:
        return False
    rest = line[5:]
    cut = next((i for i, byte in enumerate(rest) if byte in _ASCII_SPACE), len(rest))
    tail = rest[cut:]
    if not tail.strip(_LINE_BLANKS):
        return True
    return tail[:1] in (b" ", b"\t") and _DATE_HINT.search(tail) is not None
_HEADER_LINE = re.compile(rb"^[!-9;-~]+[ \t]*:")


def _is_separator(lines: list[bytes], index: int) -> bool:
    line = lines[index].rstrip(b"\r\n")
    if not _from_line(line):
        return False
    if index + 1 >= len(lines):
        return False
    return bool(_HEADER_LINE.match(lines[index + 1]))


def split_mbox(data: bytes) -> list[bytes]:
    """The messages of an mbox file, in order."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.splitlines(keepends=True)
    starts = [i for i in range(len(lines)) if lines[i].startswith(b"From ") and _is_separator(lines, i)]
    if not starts:
        return [data] if data.strip() else []
    messages: list[bytes] = []
    if starts[0] > 0 and b"".join(lines[: starts[0]]).strip():
        # Text before the first separator is kept as its own item rather than dropped.
        messages.append(b"".join(lines[: starts[0]]))
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        body = lines[start + 1 : end]
        if len(body) > 1 and body[-1] == b"\n":
            body = body[:-1]  # the blank line before the next From_ line belongs to the separator
        messages.append(b"".join(body))
    return messages


def looks_like_mbox(data: bytes) -> bool:
    head = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    first = head.split(b"\n", 1)[0].rstrip(b"\r")
    return _from_line(first)
