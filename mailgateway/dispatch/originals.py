"""An inbound original as staff see it when it is not attached: its size, its hash, its files.

Mail to staff carries the original only when it fits (dispatch/relaylimits.py); otherwise the
notification lists what the original holds (each attachment's name, size and SHA-256, so staff
can compare it with what the establishment says it sent, or look a hash up) and how to fetch it
(``#original REF`` by mail, ``mailgateway cases original REF``).

The original is hostile until authenticated: it is read with the bounded parser of ``mail/``,
names are decoded, stripped of control characters and shortened, and are only ever shown as text
in a body (autoescaped in HTML), never placed in a header.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from mailgateway.dispatch.relaylimits import encoded_size
from mailgateway.mail.headers import decode_header_value
from mailgateway.mail.parse import parse_bytes, walk

MAX_LISTED = 50  # attachments listed; the count of the others follows
MAX_NAME_CHARS = 120
# An attachment is hashed whole: its size is bounded by intake ([intake.smtp] max_message_bytes).
MAX_ATTACHMENT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class FileSummary:
    name: str
    content_type: str
    size: int
    sha256: str

    def to_context(self) -> dict[str, Any]:
        return {"name": self.name, "content_type": self.content_type, "size": self.size,
                "size_fr": size_fr(self.size), "sha256": self.sha256}


def size_fr(size: int) -> str:
    """« 9,0 Mo », « 12 ko », « 300 octets » (decimal comma, French units: 1 Mo = 1 048 576 octets)."""
    if size >= 1_048_576:
        return f"{size / 1_048_576:.1f} Mo".replace(".", ",")
    if size >= 1024:
        return f"{size // 1024} ko"
    return f"{size} octet{'s' if size > 1 else ''}"


def _clean(text: str) -> str:
    kept = "".join(ch if ch.isprintable() else " " for ch in text)
    kept = " ".join(kept.split())
    return kept[:MAX_NAME_CHARS] + ("…" if len(kept) > MAX_NAME_CHARS else "")


def _is_file(part: Any, ctype: str) -> bool:
    try:
        disposition = str(part.get("Content-Disposition") or "").strip().lower()
    except Exception:
        disposition = ""
    return disposition.startswith("attachment") or not (ctype.startswith("text/") or ctype.startswith("multipart/"))


def attachments(raw: bytes) -> tuple[list[FileSummary], int]:
    """The files of ``raw`` (at most ``MAX_LISTED``) and how many there are in all; never raises."""
    msg, degraded = parse_bytes(raw)
    if degraded is not None and degraded != "headers-only":
        return [], 0
    found: list[FileSummary] = []
    total = 0
    for part, depth, inner in walk(msg):
        if depth == 0 or inner or part.is_multipart():
            continue
        try:
            ctype = part.get_content_type()
        except Exception:
            ctype = "application/octet-stream"
        if not _is_file(part, ctype):
            continue
        total += 1
        if len(found) >= MAX_LISTED:
            continue
        try:
            name = _clean(decode_header_value(part.get_filename() or "")) or "(sans nom)"
        except Exception:
            name = "(sans nom)"
        try:
            data = part.get_payload(decode=True)
        except Exception:
            data = None
        body = data[:MAX_ATTACHMENT_BYTES] if isinstance(data, bytes) else b""
        found.append(FileSummary(name, _clean(ctype), len(body), hashlib.sha256(body).hexdigest()))
    return found, total


def attached_size(original: bytes) -> int:
    """Bytes the original takes once attached by ``mime.message_part`` (verbatim, else base64)."""
    lines = original.splitlines()
    if b"\0" in original or any(len(line) > 998 for line in lines):
        return encoded_size(len(original))
    return sum(len(line) + 2 for line in lines)


def summary_context(raw: bytes) -> dict[str, Any]:
    """Template fields describing ``raw`` for staff: size, SHA-256, attachments."""
    files, total = attachments(raw)
    return {"original_size": len(raw), "original_size_fr": size_fr(len(raw)),
            "original_sha256": hashlib.sha256(raw).hexdigest(),
            "original_files": [f.to_context() for f in files], "original_files_total": total}


__all__ = ["FileSummary", "attached_size", "attachments", "size_fr", "summary_context"]
