"""Plain text sent as ``format=flowed`` (RFC 3676), read as the writer typed it.

Thunderbird, Apple Mail and others wrap long lines at about 72 columns and mark each soft break
with a trailing space (§4.2); ``DelSp=yes`` (§4.1) says that space was added by the wrapper and
is removed when the lines are joined again. Without this, a staff command written on one long
line reached the gateway as its first 72 columns (issue 17: "… Le CERT Santé va vous").

One forward pass over the lines, string operations only (no regex on untrusted text).
"""

from __future__ import annotations

from email.message import Message

SIGNATURE = "-- "  # §4.3: the signature separator is never a flowed line


def unflow(text: str, *, delsp: bool = False) -> str:
    """Join the soft-broken lines of ``text`` (RFC 3676 §4.2), keeping the hard breaks.

    Quoted lines (§4.5) keep their quote depth; a change of depth ends a paragraph even after a
    trailing space (§4.5: "improperly flowed"). Space-stuffing (§4.4) is undone.
    """
    out: list[str] = []
    pieces: list[str] = []  # the current flowed paragraph
    depth_open = 0

    def flush() -> None:
        if pieces:
            out.append(_quoted(depth_open, "".join(pieces)))
            pieces.clear()

    for raw in text.split("\n"):
        line = raw[:-1] if raw.endswith("\r") else raw
        content = line.lstrip(">")
        depth = len(line) - len(content)
        if content.startswith(" "):
            content = content[1:]  # space-stuffed (§4.4), or the blank after "> "
        if pieces and depth != depth_open:
            flush()
        depth_open = depth
        if content.endswith(" ") and content != SIGNATURE:
            pieces.append(content[:-1] if delsp else content)
            continue
        pieces.append(content)
        flush()
    flush()
    return "\n".join(out)


def _quoted(depth: int, content: str) -> str:
    return f"{'>' * depth} {content}" if depth else content


def unflow_part(part: Message, text: str) -> str:
    """``text`` of a text/plain ``part``, unwrapped when the part says ``format=flowed``."""
    try:
        fmt = part.get_param("format")
        delsp = part.get_param("delsp")
    except Exception:  # a broken Content-Type: read the text as it is
        return text
    if not isinstance(fmt, str) or fmt.strip().lower() != "flowed":
        return text
    return unflow(text, delsp=isinstance(delsp, str) and delsp.strip().lower() == "yes")
