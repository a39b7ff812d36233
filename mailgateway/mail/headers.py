"""Header decoding that cannot raise.

Python's ``email.policy.default`` header objects raise on real mail (shared/corpus/README.md
crash classes 1, 2 and 5: ``Group.local_part``, CR/LF in a decoded address, ``UnicodeEncodeError``
on refolding). We therefore read header values as plain strings from a ``compat32`` message and
decode RFC 2047 encoded words ourselves, tolerantly:

* adjacent encoded words in the same charset are joined *before* decoding, so a UTF-8 character
  split across two words (RFC 2047 §5 forbids it, mailers do it) comes out whole;
* unknown charsets and broken base64/quoted-printable degrade to replacement characters;
* raw 8-bit bytes (RFC 6532 UTF-8 headers as SMTPUTF8 clients and many MTAs send them, or legacy
  Latin-1/cp1252) are decoded as UTF-8, else by a charset guess; never as U+FFFD. ``compat32``
  hands such a value back as an ``email.header.Header`` whose ``str()`` is all replacement
  characters ("D\ufffd\ufffdclaration"): the undecoded bytes are taken from it instead.

Decoding is for display and analysis only: the stored bytes, and the header list both parsers
must agree on (``mail.parse.views_problem``, docs/guarantees.md), are never changed.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email.utils
import re
from collections.abc import Iterable
from email.header import Header

# RFC 2047 §2: encoded-word = "=?" charset "?" encoding "?" encoded-text "?="
# (RFC 2231 §5 adds an optional *language after the charset).
_ENCODED_WORD = re.compile(r"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([bBqQ])\?([^?\s]*)\?=")
_QP_HEX = re.compile(rb"=([0-9A-Fa-f]{2})")
_WS_BETWEEN_WORDS = re.compile(r"\?=\s+=\?")
_FOLD = re.compile(r"\r?\n[ \t]*")
_B64_JUNK = re.compile(r"[^A-Za-z0-9+/]")
# The local part is bounded (RFC 5321 §4.5.3.1.1: 64 octets): tried from every character of a long
# run without '@', an unbounded one rescanned the rest of the run each time (quadratic).
_BARE_ADDRESS = re.compile(r"[\w.+\-=/!#$%&'*?^`{|}~]{1,64}@[\w\-.]+")
_ANGLE_ID = re.compile(r"<([^<>\s]+)>")
MAX_HEADER_CHARS = 16_384

# Charset names seen in the wild that Python does not know (corpus crash class 3 and typos).
_CHARSET_ALIASES = {
    "uft-8": "utf-8",
    "utf8": "utf-8",
    "unicode-1-1-utf-7": "utf-7",
    "x-unknown": "",
    "unknown-8bit": "",
    "x-user-defined": "",
    "ansi_x3.4-1968": "ascii",
    "x-mac-cyrillic": "mac-cyrillic",
}


def clean_charset(name: str | None) -> str | None:
    """A Python codec name for a declared charset, or None when it cannot be trusted."""
    if not name:
        return None
    value = str(name).strip().strip("\"'").lower()
    # 'charset="charset=us-ascii"' (corpus crash class 3): keep what follows the last '='.
    value = value.rpartition("=")[2].strip().strip("\"'")
    value = _CHARSET_ALIASES.get(value, value)
    if not value:
        return None
    try:
        info = codecs.lookup(value)
    except (LookupError, ValueError):
        return None
    # Python's codec registry also holds transforms (zlib, base64, rot13: not text encodings) and
    # codecs that are no charset (unicode-escape makes « \\ud800 » a lone surrogate, which no
    # database or mail can hold; undefined always raises): an outside tester's « charset=zlib_codec »
    # quarantined a declaration. Such a label is one we cannot trust: the text is guessed.
    if not info._is_text_encoding or info.name in _NOT_CHARSETS:
        return None
    return info.name


_NOT_CHARSETS = frozenset({"undefined", "unicode-escape", "raw-unicode-escape", "punycode", "idna"})

# A lone surrogate (U+D800–U+DFFF) is no character: UTF-7 decodes « +2AA- » to one, and neither
# SQL drivers nor our mail can encode it (an outside tester's reply was quarantined). One pass, no
# backtracking.
_SURROGATE = re.compile("[\ud800-\udfff]")


# Declared charsets that mailers use for their supersets (WHATWG Encoding: gb2312 and gbk are
# labels of gb18030; Windows sends cp949/cp932 text labelled euc-kr/shift_jis).
_SUPERSETS = {"gb2312": "gb18030", "gbk": "gb18030", "euc_kr": "cp949", "shift_jis": "cp932", "big5": "big5hkscs"}


# WHATWG Encoding: the labels iso-8859-1 / latin1 mean windows-1252. Outlook labels its
# windows-1252 text iso-8859-1: read as Latin-1, « € », « ’ », « – » (0x80, 0x92, 0x96) became C1
# control characters and then vanished (found by an outside tester: « 2 000 000 € » arrived as
# « 2 000 000  »). The five bytes windows-1252 leaves undefined stay what Latin-1 makes of them.
_C1_AS_CP1252 = {
    0x80 + i: bytes([0x80 + i]).decode("cp1252") for i in range(32) if (0x80 + i) not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)
}


def _latin1_as_windows_1252(data: bytes) -> str:
    return data.decode("latin-1").translate(_C1_AS_CP1252)


_SINGLE_BYTE_WESTERN = frozenset({"iso8859-1", "iso8859-15", "cp1252"})  # as clean_charset names them


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode with the declared charset if Python knows it, else guess; never raises, and never
    returns a lone surrogate (each becomes U+FFFD)."""
    text = _decoded(data, charset)
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def _decoded(data: bytes, charset: str | None) -> str:
    codec = clean_charset(charset)
    if codec in _SINGLE_BYTE_WESTERN and not data.isascii():
        # Labelled Latin-1 but valid UTF-8 (« ThÃ©rÃ¨se »: a client that re-encoded and kept the
        # old label). Real Latin-1 French is never valid UTF-8: « é » alone is an invalid byte.
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    if codec == "iso8859-1":
        return _latin1_as_windows_1252(data)
    if codec and codec not in ("ascii", "us-ascii"):
        try:
            return data.decode(codec)
        except (UnicodeDecodeError, LookupError, ValueError):
            if codec in _SUPERSETS:
                try:
                    return data.decode(_SUPERSETS[codec])
                except UnicodeDecodeError:
                    pass
            # A lying label (Latin-1 bytes labelled utf-8, outside tester: « Sainte-Th\ufffdr\ufffdse »
            # lost the incident type): the mail of a French-speaking sender is Western; never
            # replacement characters. A guesser read « è » as Central European « č ».
            if codec == "utf-8":
                # Byte by byte: the invalid ones as Western, the rest as UTF-8 (a UTF-8 body with
                # one Latin-1 disclaimer line must keep its UTF-8 text; outside tester).
                return data.decode("utf-8", errors=_WESTERN_BYTES)
            return data.decode(codec, errors="replace") if codec != "utf-7" else _guess(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return _guess(data)


def _guess(data: bytes) -> str:
    """Undeclared or lying charset: charset-normalizer for long text, cp1252 otherwise.

    Never a replacement character: the guess must decode every byte, cp1252 leaves five bytes
    undefined (0x81, 0x8D, 0x8F, 0x90, 0x9D), and Latin-1 decodes anything.
    """
    if len(data) >= 64:
        try:
            from charset_normalizer import from_bytes

            best = from_bytes(data[:200_000]).best()
            if best is not None and best.encoding:
                return data.decode(best.encoding)
        except Exception:  # noqa: S110 - a guesser failure falls back to cp1252 below
            pass
    return _western(data)


def _western_bytes(error: UnicodeError) -> tuple[str, int]:
    """A ``codecs`` error handler: the bytes UTF-8 could not decode, as cp1252 (or Latin-1)."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return _western(error.object[error.start:error.end]), error.end


_WESTERN_BYTES = "mailgateway-western"
codecs.register_error(_WESTERN_BYTES, _western_bytes)


def _western(data: bytes) -> str:
    """cp1252, or Latin-1 for the five bytes cp1252 leaves undefined: every byte decodes."""
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _raw_to_text(value: str) -> str:
    """compat32 keeps undecodable header bytes as surrogate escapes; turn them back to text."""
    if not any("\udc80" <= ch <= "\udcff" for ch in value):
        return value
    try:
        data = value.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:
        return value
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return _guess(data)


def _header_text(value: Header) -> str:
    """The text of a compat32 ``Header``, its undecoded 8-bit bytes kept as surrogate escapes.

    compat32 wraps a raw 8-bit value in a Header of charset ``unknown-8bit`` whose ``str()``
    replaces every such byte by U+FFFD; its chunks still hold the bytes (as surrogates).
    """
    chunks = getattr(value, "_chunks", None)
    if isinstance(chunks, list) and chunks and all(
        isinstance(c, tuple) and len(c) == 2 and isinstance(c[0], str) for c in chunks
    ):
        return "".join(c[0] for c in chunks)
    return str(value)


def _decode_word(charset: str, encoding: str, text: str) -> bytes:
    if encoding in "bB":
        cleaned = _B64_JUNK.sub("", text)
        cleaned += "=" * (-len(cleaned) % 4)
        try:
            return base64.b64decode(cleaned)
        except (binascii.Error, ValueError):
            return text.encode("ascii", errors="replace")
    raw = text.replace("_", " ").encode("ascii", errors="replace")
    return _QP_HEX.sub(lambda m: bytes([int(m.group(1), 16)]), raw)


def header_text(value: object) -> str:
    """One header value (str or email.header.Header) as text, unfolded, its RFC 2047 encoded
    words left as written; never raises. Address lists are parsed from this: an encoded word is
    the text of a display name or a comment, never an address (RFC 2047 §5), so it is decoded
    after the list is split (``parse_header_addresses``). Decoded first, « =?utf-8?q?dsi=40chu…?=
    <ssi@evil.test> » read as two addresses, the first one not the author's (outside tester: a
    signed reply opened a case in another establishment's name and acknowledged it there)."""
    try:
        if isinstance(value, Header):
            text = _header_text(value)
        elif isinstance(value, str):
            text = value
        else:
            text = str(value)
    except Exception:
        return ""
    text = _raw_to_text(text[:MAX_HEADER_CHARS])
    # Unfold (RFC 5322 §2.2.3) before looking for encoded words.
    return _FOLD.sub(" ", text).replace("\r", " ")


def parse_header_addresses(value: object) -> list[tuple[str, str]]:
    """(display name decoded, on one line; lower-case address) pairs of an address header, split
    before any encoded word is decoded (``header_text``); never raises."""
    return [(" ".join(decode_header_value(name).split()) if "=?" in name else name, address)
            for name, address in parse_addresses(header_text(value))]


def decode_header_value(value: object) -> str:
    """Decode one header value (str or email.header.Header) to text; never raises."""
    text = header_text(value)
    if "=?" not in text:
        return text.strip()
    # RFC 2047 §6.2: whitespace between adjacent encoded words is ignored.
    text = _WS_BETWEEN_WORDS.sub("?==?", text)
    out: list[str] = []
    pos = 0
    pending: list[tuple[str, bytes]] = []

    def flush() -> None:
        if not pending:
            return
        groups: list[tuple[str, bytearray]] = []
        for cs, data in pending:
            if groups and groups[-1][0] == cs:
                groups[-1][1].extend(data)
            else:
                groups.append((cs, bytearray(data)))
        for cs, joined in groups:
            out.append(decode_bytes(bytes(joined), cs))
        pending.clear()

    for match in _ENCODED_WORD.finditer(text):
        if match.start() != pos:
            flush()
            out.append(text[pos : match.start()])
        charset, enc, payload = match.groups()
        pending.append((charset.lower(), _decode_word(charset, enc, payload)))
        pos = match.end()
    flush()
    out.append(text[pos:])
    return "".join(out).strip()


def parse_addresses(value: str) -> list[tuple[str, str]]:
    """(display name, lower-case address) pairs from a decoded address header; never raises.

    Group syntax (``unlisted-recipients:; (comment)``, corpus crash class 1) yields nothing;
    CR/LF that came out of encoded words (crash class 2) is flattened first.
    """
    value = value.replace("\r", " ").replace("\n", " ")[:MAX_HEADER_CHARS]
    plain = _plain_addresses(value)
    if plain is not None:
        return plain
    try:
        pairs = email.utils.getaddresses([value])
    except Exception:
        pairs = []
    result: list[tuple[str, str]] = []
    for name, addr in pairs:
        addr = addr.strip().strip("<>").strip()
        if addr and not any(ch.isspace() for ch in addr):
            result.append((name.strip(), addr.lower()))
    if not result:
        # getaddresses gives up on some malformed values: take any bracketed or bare address.
        for found in _BARE_ADDRESS.findall(value)[:100]:
            result.append(("", found.lower().strip(".")))
    return result[:500]


# The common address list, read without ``getaddresses`` (a message's From, To, Cc… cost
# ≈ 0.1 ms of the analysis; issue 19): entries of a display name of plain words (letters, digits,
# spaces, « ' », « - »: atoms, RFC 5322 §3.2.3) and an angle address, or a bare address, both of
# dot-atoms, separated by commas. Anything else (quotes, comments, encoded or accented names,
# groups, empty entries) goes to ``getaddresses``; tests/mail/test_plain_addresses.py holds this to
# its result. Each piece is matched alone: linear.
# The "plain" grammar is one for both fast paths (this one and mail/auth.py's From): the two
# readers of an address must agree on what they take without the stdlib.
PLAIN_LOCAL = r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*"
PLAIN_DOMAIN = r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"
PLAIN_NAME = r"[A-Za-z0-9' -]*"
_PLAIN_ADDRESS = rf"{PLAIN_LOCAL}@{PLAIN_DOMAIN}"
_PLAIN_ENTRY = re.compile(rf"({PLAIN_NAME})<({_PLAIN_ADDRESS})>|({_PLAIN_ADDRESS})")


def _plain_addresses(value: str) -> list[tuple[str, str]] | None:
    if not value.strip():
        return []
    found: list[tuple[str, str]] = []
    for piece in value.split(",", 500):
        entry = _PLAIN_ENTRY.fullmatch(piece.strip(" \t"))
        if entry is None:
            return None
        if entry[3] is not None:
            found.append(("", entry[3].lower()))
        else:
            found.append((" ".join(entry[1].split()), entry[2].lower()))
    return found


def message_ids(value: str) -> list[str]:
    """Message-IDs (without angle brackets) from In-Reply-To/References/Message-ID values."""
    found = _ANGLE_ID.findall(value)
    if not found:
        found = [tok for tok in value.split() if "@" in tok]
    return [f.strip("<>") for f in found][:100]


def id_forms(message_ids: Iterable[str], limit: int = 50) -> list[str]:
    """Each of the first ``limit`` Message-IDs bare and between angle brackets: what a look-up in
    the stored messages matches, whichever way a row holds it (ours are bracketed)."""
    bare = [b for b in (mid.strip().strip("<>").strip() for mid in list(message_ids)[:limit]) if b]
    return [*bare, *(f"<{b}>" for b in bare)]
