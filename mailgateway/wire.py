"""One view of a message: the bytes that are verified are the bytes that are acted on.

Two parsers read every inbound message: dkimpy (DKIM verification) and Python's ``email`` package
(analysis). They split lines and header fields differently, and every difference is a way to show
the verifier one message and the analyser another (RFC 6376 §8.15):

* dkimpy splits lines on ``\\r?\\n`` only; the ``email`` package also ends a line at a bare CR. A
  ``X-Mailer: x\\r\\r\\n`` followed by indented lines is one folded field for dkimpy, but the end of
  the header block for the ``email`` package: the "continuation" lines become body text.
* Where a field occurs twice, DKIM signs the bottom-most instance (RFC 6376 §5.4.2) while
  ``Message.get`` returns the top-most: a prepended ``Subject:`` is unsigned but is the one read.
* A line that is neither a field nor a continuation ends the header block for the ``email``
  package (MissingHeaderBodySeparatorDefect) and is an error for dkimpy.

So, once, at accept: ``canonical`` turns every bare LF into CRLF (what SMTP carries, RFC 5321
§2.3.8; dkimpy treats ``\\r?\\n`` alike, so no signature changes), and ``header_block_problem``
names any header block on which the two parsers could disagree. Such a message is refused at SMTP
(``550 5.6.0``) or quarantined by analysis, never authenticated.

This module is the base layer: it imports nothing from mailgateway, and every function is linear
in the size of its input (no regular expression at all).
"""

from __future__ import annotations

import functools
import unicodedata

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_HEADER_FIELDS",
    "MAX_SIGNATURE_FIELDS",
    "MAX_SIGNED_NAMES",
    "SINGLE_INSTANCE_FIELDS",
    "canonical",
    "header_block",
    "header_block_problem",
    "header_block_refusal",
]

# RFC 5322 §3.6 fields that "MUST occur at most once", plus the MIME fields that decide how the body
# is read (RFC 2045 §§5, 6: one type, one encoding per entity): a second instance of any of them is
# ambiguous, and DKIM and the analyser would each pick a different one. MIME-Version is left out: its
# only value is 1.0, no parser reads it to decide anything, and antivirus gateways are known to add a
# second one to honest declarations.
SINGLE_INSTANCE_FIELDS: tuple[str, ...] = (
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "content-type",
    "content-transfer-encoding",
)
_DISPLAY_NAMES = {
    "message-id": "Message-ID",
    "content-transfer-encoding": "Content-Transfer-Encoding",
    "content-type": "Content-Type",
    "in-reply-to": "In-Reply-To",
    "reply-to": "Reply-To",
    "cc": "Cc",
}

# Bounded work per message (docs/guarantees.md, "bounded work"): real mail has a few dozen fields and a few
# kilobytes of header; relays add one Received: per hop (RFC 5321 §6.3 suggests refusing beyond 100).
MAX_HEADER_FIELDS = 1000
MAX_HEADER_BYTES = 256 * 1024
# DKIM-Signature fields examined at all, and names accepted in one signature's h= tag: verifying
# costs (names in h=) x (fields in the block), the "DKIM cost bomb".
MAX_SIGNATURE_FIELDS = 20
MAX_SIGNED_NAMES = 64

_BOM = b"\xef\xbb\xbf"
# RFC 5322 §3.6.8: ftext = %d33-57 / %d59-126 (printable US-ASCII except ":").
_FTEXT = bytes(c for c in range(33, 127) if c != ord(":"))


def canonical(raw: bytes) -> bytes:
    """``raw`` with every bare LF turned into CRLF; bare CRs are left alone (the body is signed
    byte for byte, and a bare CR in the header block is refused by ``header_block_problem``),
    except in a message without any LF, whose CRs are its line endings.

    A leading UTF-8 BOM is dropped, as ``mail.parse`` has always done: it is not part of a header
    name, and dkimpy would otherwise read ``\\ufeffFrom`` where analysis reads ``From``.
    Idempotent: ``canonical(canonical(x)) == canonical(x)``.
    """
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    if b"\n" not in raw:
        # No LF at all: a file with classic Mac (CR) line endings, which no SMTP client sends
        # and no signature can cover (dkimpy would see one single header line). Both parsers
        # then agree on CRLF lines.
        return raw.replace(b"\r", b"\r\n")
    # Two linear passes: CRLF -> LF, then every LF -> CRLF. "\r\r\n" stays "\r\r\n".
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def header_block(raw: bytes) -> bytes:
    """The header block up to and including the empty line (or the whole message without one).

    Lines end at LF (with or without CR), as both parsers agree once bare CRs are excluded.
    """
    start = 0
    size = len(raw)
    while start < size:
        end = raw.find(b"\n", start)
        if end < 0:
            return raw
        if end == start or (end == start + 1 and raw[start] == 0x0D):
            return raw[: end + 1]
        start = end + 1
    return raw


def _display(name: str) -> str:
    return _DISPLAY_NAMES.get(name, name.title())


def header_block_problem(raw: bytes) -> str | None:
    """Why the header block of ``raw`` is ambiguous or unsafe (French, for staff), or None.

    Linear in the size of the header block, which is examined up to ``MAX_HEADER_BYTES`` only.
    """
    found = _problem(raw)
    return found[0] if found else None


def header_block_refusal(raw: bytes) -> str | None:
    """The same verdict for an SMTP reply (``550 5.6.0 <this>``), or None: English, then the French
    reason in plain ASCII (an SMTP reply is US-ASCII, RFC 5321 §4.2), so that the bounce a
    declarant receives tells them in their language why the message was refused."""
    found = _problem(raw)
    if not found:
        return None
    return f"{found[1]} / message refuse : {_ascii(found[0])}"


def _ascii(text: str) -> str:
    """French text without accents and typographic quotes, for an SMTP reply line."""
    text = text.replace("«", '"').replace("»", '"').replace("\u00a0", " ").replace("’", "'")
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if c.isascii() and not unicodedata.combining(c))


def _problem(raw: bytes) -> tuple[str, str] | None:
    """(French, English) reasons for the first problem of the header block, or None. The last
    few messages' answers are remembered (issue 19: analysis asks twice, authentication once)."""
    if len(raw) > _REMEMBERED_BYTES:
        return _first_problem(raw)
    return _remembered_problem(raw)


# Messages up to this size are remembered, four of them at most (larger ones would cost more to
# hash than to examine).
_REMEMBERED_BYTES = 64 * 1024


def _first_problem(raw: bytes) -> tuple[str, str] | None:
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    start = 0
    fields = 0
    seen: dict[str, int] = {}
    size = len(raw)
    lineno = 0
    while start < size:
        end = raw.find(b"\n", start, start + MAX_HEADER_BYTES + 2)
        stop = end if end >= 0 else size
        if stop > MAX_HEADER_BYTES:
            return (
                f"en-têtes trop volumineux (plus de {MAX_HEADER_BYTES // 1024} Ko)",
                f"Header block larger than {MAX_HEADER_BYTES // 1024} KB",
            )
        line = raw[start:stop]
        if end >= 0 and line.endswith(b"\r"):
            line = line[:-1]
        if not line and end >= 0:
            return None  # the empty line: end of the header block
        problem = _line_problem(line, lineno, fields)
        if problem:
            return problem
        if line[:1] not in (b" ", b"\t") and not (lineno == 0 and line.startswith(b"From ")):
            fields += 1
            if fields > MAX_HEADER_FIELDS:
                return (
                    f"trop de champs d'en-tête (plus de {MAX_HEADER_FIELDS})",
                    f"More than {MAX_HEADER_FIELDS} header fields",
                )
            name = line[: line.find(b":")].decode("ascii").lower()
            if name in SINGLE_INSTANCE_FIELDS:
                seen[name] = seen.get(name, 0) + 1
                if seen[name] == 2:
                    shown = _display(name)
                    return (
                        f"en-tête {shown} présent plusieurs fois (RFC 5322 §3.6)",
                        f"Duplicate {shown} header field (RFC 5322 section 3.6)",
                    )
        lineno += 1
        if end < 0:
            break
        start = end + 1
    return None


_remembered_problem = functools.lru_cache(maxsize=4)(_first_problem)


def _line_problem(line: bytes, lineno: int, fields: int) -> tuple[str, str] | None:
    """What is wrong with one header line (without its line ending), or None."""
    if b"\r" in line:
        # The email package ends a line at a bare CR, dkimpy does not: the fold trick.
        return "retour chariot (CR) isolé dans les en-têtes", "Bare CR in the header block"
    if line[:1] in (b" ", b"\t"):
        if fields == 0:
            return (
                "ligne de continuation avant le premier champ d'en-tête",
                "Continuation line before the first header field",
            )
        return None
    if line.startswith(b"From "):
        if lineno == 0:
            return None  # mbox envelope line: both parsers skip it (and only it)
        return (
            "ligne « From » d'enveloppe au milieu des en-têtes",
            "Envelope From line inside the header block",
        )
    colon = line.find(b":")
    if colon <= 0 or line[:colon].translate(None, _FTEXT):
        return (
            "ligne d'en-tête invalide (ni champ « nom: valeur » ni continuation)",
            "Malformed header line (neither a field nor a continuation)",
        )
    return None
