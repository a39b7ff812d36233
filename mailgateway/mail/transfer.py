"""Whether a single part's body bytes fix their own Content-Transfer-Encoding (RFC 2045 §6), for a
signature that does not cover that header (Exchange Online's ``h=`` never lists it).

DKIM's body hash fixes the bytes, not how they read. Changed in transit, the header chose the
reading: an outside attacker re-sent a genuine 8bit staff reply quoting his own words with
« quoted-printable », and his quoted « …=0A#clore … » became a command line outside the quote.
Refusing every such mail refused every plain-text command of agencies on Exchange Online (an
outside tester: iPhone, OWA in plain text, Thunderbird). What the bytes allow instead:

- **base64** is a reading only of bytes that are strict base64 (alphabet, line breaks, padding):
  no text a person writes is, so no identity or quoted-printable body can be relabelled so, and a
  base64 body relabelled otherwise reads as letters without a « # ».
- **quoted-printable** is a reading only of bytes a QP encoder writes (RFC 2045 §6.7: printable
  ASCII, lines of at most 76 characters, « = » only before two hexadecimal digits or a line break)
  that encode no line break nor any other character that ends a line in Python's ``splitlines``:
  an encoder writes a text's line breaks as line breaks. Genuine 8bit French text has 8-bit bytes
  and is no such body; planted « =0A » is refused.
- **identity** (7bit, 8bit, binary, any value the email package does not decode, or no header) is a
  reading only of bytes with no quoted-printable soft line break (blanks after it included): a
  genuine QP body relabelled « 8bit » (its soft line breaks then cut lines) is refused; an escape
  only garbles characters within a line (« #cible departement=44 » is a command, not an attack);
- **uuencode** (``x-uuencode``…, which the email package decodes) is never fixed by the bytes.

Linear: one pass over the body with two bounded regular expressions.
"""

from __future__ import annotations

import re

_BASE64_LINE = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_QP_ESCAPE = re.compile(rb"=(?:[0-9A-F]{2}|\r?\n|\Z)")
_NOT_QP_BYTE = re.compile(rb"[^\t\r\n\x20-\x7e]")
# Characters that end a line for str.splitlines, as QP escapes (bytes, and their UTF-8 forms).
_LINE_ENDING_ESCAPES = (b"=0A", b"=0D", b"=0B", b"=0C", b"=1C", b"=1D", b"=1E", b"=85", b"=C2=85",
                        b"=E2=80=A8", b"=E2=80=A9")
# What the email package decodes, by the header's value exactly as it compares it (compat32
# ``Message.get_payload``: ``str(value).lower()``, no strip — « quoted-printable » with a trailing
# blank, folded or as an encoded word is read as identity; an outside attacker's checks read it
# otherwise), and the uuencode names it also decodes.
_UUENCODE = frozenset({"x-uuencode", "uuencode", "uue", "x-uue"})
# In a body read as identity, what a genuine quoted-printable body read so would show: a soft line
# break (with the blanks relaxed canonicalisation lets anyone add before the line end), which then
# cuts a line in two. An escape (« =3D », « departement=44 ») only garbles characters within a line.
_QP_LIKE = re.compile(rb"=[ \t]*(?:\r?\n|\Z)")


def reading_fixed_by_body(encoding: str, body: bytes) -> bool:
    """Whether ``body`` admits ``encoding`` (the header's value as the email package compares it:
    ``str(value).lower()``) as its only dangerous reading."""
    if encoding == "base64":
        return _strict_base64(body)
    if encoding == "quoted-printable":
        return _canonical_qp(body)
    if encoding in _UUENCODE:
        # uuencode keeps only what lies between « begin » and « end »: a payload planted in a
        # quote became the whole text (an outside attacker). Never fixed by the bytes.
        return False
    # Read as identity: only when nothing in it reads otherwise as quoted-printable. A genuine
    # QP body relabelled « 8bit » (its soft line breaks then cut lines: a quoted « #clore » began
    # one) is refused, whatever blanks were added after its soft breaks.
    return _QP_LIKE.search(body) is None


def _strict_base64(body: bytes) -> bool:
    lines = body.replace(b"\r\n", b"\n").split(b"\n")
    joined = b"".join(line.strip() for line in lines)
    if not joined or len(joined) % 4:
        return False
    if any(not _BASE64_LINE.fullmatch(line.strip()) for line in lines):
        return False
    return b"=" not in joined.rstrip(b"=")  # padding only at the end


def _canonical_qp(body: bytes) -> bool:
    if _NOT_QP_BYTE.search(body) or any(len(line) > 76 for line in body.replace(b"\r\n", b"\n").split(b"\n")):
        return False
    if body.count(b"=") != len(_QP_ESCAPE.findall(body)):
        return False  # an « = » that escapes nothing (« =0a », « =G1 »): no encoder wrote it
    upper = body.upper()
    return not any(escape in upper for escape in _LINE_ENDING_ESCAPES)
