"""A safe, bounded view of one message over Python's ``email`` package.

Why ``compat32`` and not ``policy.default``: every crash class documented in
shared/corpus/README.md (Group.local_part, CR/LF in an address, unknown charset, unknown
maintype, UnicodeEncodeError on refolding, empty multipart/related) lives in the default policy's
header objects and content manager. ``compat32`` keeps header values as strings and payloads as
bytes, which we decode ourselves (``mail.headers``), and it parses the corpus about four times
faster (the ≥ 300 msg/s target). If the ``compat32`` parse itself fails, ``policy.default`` is
tried, then a headers-only parse, so some facts come out of nearly anything.

The message is never re-serialised: callers keep the original bytes (README, "How it works").

Bounds: a message over ``MAX_MESSAGE_BYTES`` is parsed headers-only; at most ``MAX_PARTS`` parts
are visited, ``MAX_DEPTH`` levels deep; each text part contributes at most ``MAX_PART_BYTES``
and the body text at most ``MAX_TEXT_CHARS``.
"""

from __future__ import annotations

import email
import email.parser
import email.policy
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from email.message import Message

import dkim

from mailgateway.mail.flowed import unflow
from mailgateway.mail.headers import decode_bytes, decode_header_value, message_ids, parse_header_addresses
from mailgateway.mail.htmltext import SIGNATURE_MARKERS, html_to_text
from mailgateway.mail.office import MAX_DOCUMENTS, office_kind, office_text
from mailgateway.mail.office import MAX_FILE_BYTES as MAX_OFFICE_BYTES
from mailgateway.mail.text import quote_start
from mailgateway.wire import MAX_SIGNATURE_FIELDS, MAX_SIGNED_NAMES, header_block, header_block_problem

MAX_MESSAGE_BYTES = 25 * 1024 * 1024
MAX_PARTS = 10_000
MAX_DEPTH = 50
MAX_PART_BYTES = 2 * 1024 * 1024
MAX_TEXT_CHARS = 200_000
MAX_FORWARDED = 5

_ADDRESS_HEADERS = ("from", "to", "cc", "reply-to", "sender", "delivered-to", "x-original-to")


def parse_bytes(raw: bytes) -> tuple[Message, str | None]:
    """Parse into a compat32 Message; the second value names a degraded mode, if any."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 BOM is not a header (corpus: unmunged.mbox.txt)
    if len(raw) > MAX_MESSAGE_BYTES:
        head = raw[: 256 * 1024]
        return email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head), "too-large"
    try:
        return email.message_from_bytes(raw, policy=email.policy.compat32), None
    except Exception:
        try:
            return email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw), "headers-only"
        except Exception:
            return Message(), "unparseable"


def walk(msg: Message, max_parts: int = MAX_PARTS) -> Iterator[tuple[Message, int, bool]]:
    """Yield (part, depth, inside an attached message) iteratively, bounded in count and depth.

    The stdlib's recursive ``walk`` is replaced so that a 10,000-part or deeply nested tree can
    neither exhaust the stack nor run unbounded.
    """
    stack: list[tuple[Message, int, bool]] = [(msg, 0, False)]
    seen = 0
    while stack and seen < max_parts:
        part, depth, inner = stack.pop()
        seen += 1
        yield part, depth, inner
        if depth >= MAX_DEPTH:
            continue
        try:
            payload = part.get_payload()
        except Exception:  # noqa: S112 - an unreadable part has no children to visit
            continue
        if isinstance(payload, list):
            ctype = _ctype(part)
            child_inner = inner or ctype == "message/rfc822"
            stack.extend((p, depth + 1, child_inner) for p in reversed(payload) if isinstance(p, Message))


def _ctype(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:
        return "text/plain"


def part_bytes(part: Message, limit: int = MAX_PART_BYTES) -> bytes:
    """Decoded (base64/QP) payload bytes of a leaf part; never raises."""
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if isinstance(data, bytes):
        return data[:limit]
    try:
        raw = part.get_payload()
    except Exception:
        return b""
    if isinstance(raw, str):
        return raw.encode("ascii", errors="surrogateescape")[:limit]
    return b""


# Every character ``str.splitlines`` ends a line at, but LF, and the other C0 controls (but TAB) and
# DEL: a space in the text analysis reads (the other C1 controls stay: windows-1252's undefined
# bytes, decoded as Latin-1, are kept, tests/mail/test_parse.py). dkimpy and mail clients end a body line at LF (CRLF);
# a bare CR, VT, FF, NEL or U+2028 inside a signed line made two lines for analysis, and a second
# command the signer's own client showed on the same line as the first (an outside tester:
# ``#note bonjour\r#qualifier sans-suite`` ran both). NUL and the other controls never reach a
# command's arguments or a template (docs/guarantees.md, "one view of a message").
_NOT_LINE_BREAKS = {c: " " for c in (*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, 0x85, 0x2028, 0x2029)}


def one_view_text(text: str) -> str:
    """``text`` whose only line break is LF (CRLF read as one): the lines DKIM and mail clients see."""
    return text.replace("\r\n", "\n").translate(_NOT_LINE_BREAKS)


def part_text(part: Message, limit: int = MAX_PART_BYTES) -> str:
    try:
        charset = part.get_param("charset")
    except Exception:
        charset = None
    if isinstance(charset, tuple):  # RFC 2231 (charset, language, value)
        charset = charset[0]
    text = one_view_text(decode_bytes(part_bytes(part, limit), charset if isinstance(charset, str) else None))
    try:
        flowed = str(part.get_param("format") or "").strip().lower() == "flowed"
        delsp = str(part.get_param("delsp") or "").strip().lower() == "yes"
    except Exception:
        flowed = delsp = False
    # RFC 3676 format=flowed, one reading for every caller (mail/flowed.py).
    return unflow(text, delsp=delsp) if flowed and _ctype(part) == "text/plain" else text


MAX_ATTACHMENT_NAMES = 10


def _filename(part: Message) -> str:
    """A part's file name as text (RFC 2231 decoded by the stdlib), at most 200 characters; ''
    when it has none or it cannot be read (a broken parameter is no reason to fail a message)."""
    try:
        name = str(part.get_filename() or "")
        if "=?" in name:
            # An encoded word inside the quoted name (RFC 2047 §5 forbids it; Outlook and Gmail
            # send it): decoded, or staff read « =?utf-8?q?…?= » (an outside tester).
            name = decode_header_value(name)
    except Exception:
        return ""
    return " ".join(name.split())[:200]


MAX_ATTACHED_TEXTS = 3
MAX_ATTACHED_TEXT_CHARS = 64 * 1024
MAX_TEXT_FILES = 20  # candidates kept while walking the parts (a message may carry hundreds)


def _text_file(part: Message, ctype: str) -> bool:
    """A plain-text file (text/plain, or a ``.txt`` sent as application/octet-stream, as some
    clients do) or a Word or LibreOffice document (mail/office.py): a file that may hold a form."""
    name = _filename(part).lower()
    return (ctype == "text/plain" or (ctype == "application/octet-stream" and name.endswith(".txt"))
            or office_kind(ctype, name) is not None)


def _is_attachment(part: Message) -> bool:
    try:
        disposition = (part.get("Content-Disposition") or "").lower()
    except Exception:
        return False
    return str(disposition).strip().startswith("attachment")


@dataclass
class ParsedMessage:
    """What the analysers need, extracted once."""

    msg: Message
    degraded: str | None = None
    plain: list[str] = field(default_factory=list)
    html_raw: list[str] = field(default_factory=list)  # converted lazily: html.parser is slow
    html: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    forwarded: list[Message] = field(default_factory=list)  # message/rfc822 parts, top level first
    rfc822_headers: list[str] = field(default_factory=list)  # text/rfc822-headers parts
    delivery_status: list[str] = field(default_factory=list)  # message/delivery-status parts
    dispositions: list[str] = field(default_factory=list)  # message/disposition-notification (RFC 8098)
    parts: int = 0
    attachments: int = 0  # leaf parts that are files (attachment disposition or not text)
    # Their file names, decoded (RFC 2231), the first MAX_ATTACHMENT_NAMES: a declaration sent as
    # its form attached says so in the name (« Declaration_incident_SSI.pdf »).
    attachment_names: list[str] = field(default_factory=list)
    # Files attached at the top level that may hold a form (« fiche_incident.txt »,
    # « Formulaire.docx », .odt): read only when a declaration needs them (``attached_texts``).
    text_files: list[Message] = field(default_factory=list)
    _cache: dict[str, str] = field(default_factory=dict)
    _addr_cache: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    _html_done: bool = False
    _attached: list[str] | None = None

    # -- headers ----------------------------------------------------------------------------
    def header(self, name: str) -> str:
        """The first value of a header, decoded; '' when absent."""
        key = name.lower()
        if key not in self._cache:
            try:
                value = self.msg.get(name)
            except Exception:
                value = None
            self._cache[key] = decode_header_value(value) if value is not None else ""
        return self._cache[key]

    def headers(self, name: str) -> list[str]:
        try:
            values = self.msg.get_all(name) or []
        except Exception:
            values = []
        return [decode_header_value(v) for v in values[:50]]

    def has(self, name: str) -> bool:
        try:
            return name in self.msg
        except Exception:
            return False

    def addresses(self, *names: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for name in names:
            key = name.lower()
            if key not in self._addr_cache:
                found: list[tuple[str, str]] = []
                try:
                    values = self.msg.get_all(name) or []
                except Exception:
                    values = []
                for value in values[:50]:
                    # Split first, display names decoded after (headers.header_text).
                    found.extend(parse_header_addresses(value))
                self._addr_cache[key] = found
            out.extend(self._addr_cache[key])
        return out

    def from_address(self) -> tuple[str, str] | None:
        """The author: the one address of From (or of Sender, without From). A From of several
        addresses is nobody's, as for authentication (mail/auth.py): « victime@chu… <ssi@evil…> »
        is read as two by the stdlib and as ssi@evil… by mail clients (outside tester)."""
        found = self.addresses("From")
        if len(found) > 1:
            return None
        found = found or self.addresses("Sender")
        return found[0] if found else None

    def message_id(self) -> str | None:
        ids = message_ids(self.header("Message-ID"))
        return ids[0] if ids else None

    # -- body -------------------------------------------------------------------------------
    def text(self) -> str:
        """The message's own text: plain parts, else HTML converted; attached messages excluded."""
        if any(p.strip() for p in self.plain):
            return _signed_off("\n\n".join(self.plain)[:MAX_TEXT_CHARS], self._html_signature())
        self.convert_html()
        return "\n\n".join(self.html)[:MAX_TEXT_CHARS]

    def _html_signature(self) -> tuple[str, ...]:
        """The first lines (three at most) of the signature block the mail client marked in the
        HTML alternative (mail/htmltext.py), or none. OWA and the new Outlook send text/plain beside the HTML, with
        the signature unmarked in the plain part (an outside tester: an agent's name and mobile
        number reached a hospital in a closure reason). Looked for only when a marker is in the
        markup: converting every HTML part would cost every message."""
        if not any(marker in raw.lower() for raw in self.html_raw for marker in SIGNATURE_MARKERS):
            return ()
        self.convert_html()
        for text in self.html:
            lines = text.split("\n")
            at = next((i for i, line in enumerate(lines) if _separator(line)), None)
            if at is not None:
                # The block ends where the quoted message begins (« De : … Envoyé : », a rule of
                # underscores): a 1- or 2-line signature took the quote's header as its next
                # lines, which the plain part does not have there (OWA puts a rule before it), so
                # it was never found and reached a hospital in a closure reason (outside tester).
                end = quote_start(lines, at + 1)
                block = [" ".join(line.split()) for line in lines[at + 1:end] if line.strip()]
                return tuple(line for line in block if not _rule(line))[:3]
        return ()

    def attached_texts(self) -> list[str]:
        """The text of the first MAX_ATTACHED_TEXTS files that may hold a form, each cut at
        MAX_ATTACHED_TEXT_CHARS, at most MAX_DOCUMENTS Word / LibreOffice documents opened whatever
        they yield (an outside attacker attached a hundred that yielded nothing and cost a second
        each). Read once, when asked: most mail with a file attached is no declaration to read."""
        if self._attached is None:
            texts: list[str] = []
            opened = 0
            for part in self.text_files:
                if len(texts) >= MAX_ATTACHED_TEXTS:
                    break
                name = _filename(part).lower()
                kind = office_kind(_ctype(part), name)
                if kind is None:
                    text: str | None = part_text(part)
                elif opened < MAX_DOCUMENTS:
                    opened += 1
                    text = office_text(part_bytes(part, MAX_OFFICE_BYTES + 1), kind)
                else:
                    continue
                if text:
                    texts.append(text[:MAX_ATTACHED_TEXT_CHARS])
            self._attached = texts
        return self._attached

    def convert_html(self) -> None:
        """Fill ``html`` (text) and ``links`` from the HTML parts, once."""
        if self._html_done:
            return
        self._html_done = True
        for markup in self.html_raw:
            text, links = html_to_text(markup)
            self.html.append(one_view_text(text))
            self.links.extend(links[: 200 - len(self.links)])

    def all_links(self) -> list[str]:
        self.convert_html()
        return self.links


def _signed_off(text: str, signature: tuple[str, ...]) -> str:
    """``text`` with a ``-- `` line where the signature the HTML alternative marked begins: the
    first place whose lines (blank ones skipped) read as its first lines, all of them — a line of
    the agent's own that merely equals its first (« Cordialement, » above a PS; a command) is not
    it (an outside attacker: a PS vanished from a #repondre, commands above it were refused).
    Unchanged when a signature separator comes first."""
    if not signature:
        return text
    lines = text.split("\n")
    filled = [(i, " ".join(line.split())) for i, line in enumerate(lines) if line.strip()]
    for n, (i, _line) in enumerate(filled):
        if _separator(lines[i]):
            return text
        if tuple(words for _i, words in filled[n:n + len(signature)]) == signature:
            return "\n".join([*lines[:i], "-- ", *lines[i:]])
    return text


def _rule(line: str) -> bool:
    """A line drawn between a reply and what it quotes (« ______ », « ------ »)."""
    return len(line) >= 5 and set(line) <= {"_", "-", "=", "—"}


def _separator(line: str) -> bool:
    """The signature separator line (RFC 3676 §4.3), as mail/text.py's ``_SIGNATURE`` reads it."""
    return line in ("--", "-- ")


def text_digest(text: str) -> str:
    """A message's text, whitespace runs folded (a forwarding client may re-wrap or re-encode it),
    hashed: whether a forwarded copy says what the message received earlier said."""
    return hashlib.sha256(" ".join(text.split()).encode("utf-8", "surrogatepass")).hexdigest()


def message_digest(parsed: ParsedMessage) -> str:
    """``text_digest`` of a whole message as a reader sees it: its Subject, From (display name
    too) and Reply-To, and every part — its type, file name, and its text (markup and links
    included) or its decoded size. A forged copy forwarded by an agent kept the genuine plain text
    under an HTML part saying « fausse alerte, écrivez à … » (what Outlook shows), added a
    Reply-To, a PDF, a nameless .exe, a nested message or a calendar part, changed a link's target
    or the Subject (an outside attacker). Whitespace is folded: a client re-wrapping or re-encoding
    the genuine message (base64, quoted-printable, another charset) changes none of it."""
    shape = []
    for part, _depth, _inner in walk(parsed.msg):
        if part.is_multipart():
            continue
        ctype = _ctype(part)
        seen = text_digest(part_text(part)) if ctype.startswith("text/") else len(part_bytes(part))
        shape.append(f"{ctype}:{_filename(part)}:{seen}")
    parts = (parsed.header("Subject"), " ".join(f"{n} {a}" for n, a in parsed.addresses("From")),
             " ".join(address for _name, address in parsed.addresses("Reply-To")), "\n".join(shape))
    return text_digest("\x00".join(parts))


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse and collect text, forwarded messages and report parts; never raises."""
    msg, degraded = parse_bytes(raw)
    parsed = ParsedMessage(msg=msg, degraded=degraded)
    if degraded is not None and degraded != "headers-only":
        return parsed
    collect_parts(parsed)
    return parsed


def collect_parts(parsed: ParsedMessage) -> None:
    budget = MAX_TEXT_CHARS
    for part, depth, inner in walk(parsed.msg):
        parsed.parts += 1
        ctype = _ctype(part)
        if len(parsed.content_types) < 200:
            parsed.content_types.append(ctype)
        if ctype == "message/rfc822" or (ctype == "message/global" and depth > 0):
            attached = _attached_message(part)
            if attached is not None and len(parsed.forwarded) < MAX_FORWARDED:
                parsed.forwarded.append(attached)
            continue
        if ctype == "message/delivery-status" and not inner:
            parsed.delivery_status.append(_report_text(part))
            continue
        if ctype in ("message/disposition-notification", "message/global-disposition-notification") and not inner:
            if len(parsed.dispositions) < 5:
                parsed.dispositions.append(_report_text(part)[:20_000])
            continue
        if ctype in ("text/rfc822-headers", "message/rfc822-headers") and not inner:
            parsed.rfc822_headers.append(part_text(part, 256 * 1024))
            continue
        if not inner and not part.is_multipart() and (_is_attachment(part) or not ctype.startswith("text/")):
            parsed.attachments += 1
            if len(parsed.attachment_names) < MAX_ATTACHMENT_NAMES:
                name = _filename(part)
                if name:
                    parsed.attachment_names.append(name)
            if len(parsed.text_files) < MAX_TEXT_FILES and _text_file(part, ctype):
                parsed.text_files.append(part)
        if inner or part.is_multipart() or budget <= 0:
            continue
        if ctype == "text/plain" or (ctype.startswith("text/") and ctype not in ("text/html",)):
            if _is_attachment(part) or ctype not in ("text/plain", "text/enriched", "text/richtext"):
                continue
            text = part_text(part)  # format=flowed unwrapped there, once (mail/flowed.py)
            parsed.plain.append(text)
            budget -= len(text)
        elif ctype == "text/html" and not _is_attachment(part):
            markup = part_text(part)
            parsed.html_raw.append(markup)
            budget -= len(markup) // 4


def _attached_message(part: Message) -> Message | None:
    """The message inside a message/rfc822 part.

    RFC 2046 §5.2.1 forbids base64/quoted-printable on message/rfc822, but some mailers use it:
    the stdlib then sees a headerless message whose body is the encoded text; decode and parse it.
    """
    try:
        payload = part.get_payload()
        cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    except Exception:
        return None
    if not (isinstance(payload, list) and payload and isinstance(payload[0], Message)):
        return None
    inner = payload[0]
    if cte in ("base64", "quoted-printable") and not inner.keys():
        body = inner.get_payload()
        if isinstance(body, str):
            fake = Message()
            fake["Content-Transfer-Encoding"] = cte
            fake.set_payload(body)
            try:
                data = fake.get_payload(decode=True)
                if isinstance(data, bytes):
                    return email.message_from_bytes(data[:MAX_MESSAGE_BYTES], policy=email.policy.compat32)
            except Exception:
                return inner
    return inner


def _report_text(part: Message) -> str:
    """message/delivery-status: compat32 parses each block as a sub-message; rebuild the text."""
    try:
        payload = part.get_payload()
    except Exception:
        return ""
    if isinstance(payload, str):
        return decode_bytes(part_bytes(part, 256 * 1024), None)
    blocks: list[str] = []
    for block in payload[:1000] if isinstance(payload, list) else []:
        if not isinstance(block, Message):
            continue
        try:
            items = block.items()
        except Exception:  # noqa: S112 - skip an unreadable report block, keep the others
            continue
        blocks.append("\n".join(f"{k}: {decode_header_value(v)}" for k, v in items))
    return "\n\n".join(blocks)


def inner_text(msg: Message) -> tuple[ParsedMessage, str]:
    """Parse an attached message/rfc822 already in the tree (no re-serialisation)."""
    inner = ParsedMessage(msg=msg)
    collect_parts(inner)
    return inner, inner.text()


# --- one view of a message (docs/guarantees.md) --------------------------------------------------------------


def _unfolded(value: str) -> str:
    return value.replace("\r\n", "").replace("\n", "").strip(" \t")


def dkim_view(raw: bytes) -> list[tuple[str, str]] | None:
    """The header fields as dkimpy splits them (what DKIM verifies), or None when it cannot."""
    try:
        parsed, _body = dkim.rfc822_parse(header_block(raw))
    except Exception:  # MessageFormatError, IndexError on a leading continuation
        return None
    return [
        (bytes(n).decode("ascii", "surrogateescape"), _unfolded(bytes(v).decode("ascii", "surrogateescape")))
        for n, v in parsed
    ]


def email_view(msg: Message) -> list[tuple[str, str]]:
    """The header fields as the ``email`` package split them (what analysis reads)."""
    return [(str(n), _unfolded(v if isinstance(v, str) else str(v))) for n, v in msg.raw_items()]


def views_problem(raw: bytes, msg: Message) -> str | None:
    """Defence in depth behind ``wire.header_block_problem``: the two parsers' header lists must be
    identical (names, order, count, unfolded values); any difference is an ambiguous header block."""
    seen = dkim_view(raw)
    if seen is None:
        return "en-têtes illisibles pour la vérification DKIM"
    read = email_view(msg)
    if len(seen) != len(read):
        return f"en-têtes lus différemment par la vérification DKIM et l'analyse ({len(seen)} / {len(read)} champs)"
    for (dk_name, dk_value), (em_name, em_value) in zip(seen, read, strict=True):
        if dk_name != em_name or dk_value != em_value:
            return f"en-tête {em_name[:60]} lu différemment par la vérification DKIM et l'analyse"
    return None


def _h_names(signature: str) -> int:
    """Names listed in the h= tag of one DKIM-Signature value (RFC 6376 §3.5), counted linearly."""
    for tag in signature.split(";"):
        name, _eq, value = tag.partition("=")
        if name.strip() == "h":
            return sum(1 for n in value.split(":") if n.strip())
    return 0


def budget_problem(signatures: Iterable[str]) -> str | None:
    """Over the per-message analysis budget for DKIM signatures (the verifier's cost bomb)."""
    values = list(signatures)
    if len(values) > MAX_SIGNATURE_FIELDS:
        return f"trop de signatures DKIM : {len(values)} (maximum {MAX_SIGNATURE_FIELDS})"
    for value in values:
        names = _h_names(value)
        if names > MAX_SIGNED_NAMES:
            return f"signature DKIM couvrant {names} noms d'en-têtes (maximum {MAX_SIGNED_NAMES})"
    return None


def message_problem(raw: bytes, parsed: ParsedMessage) -> str | None:
    """Why ``raw`` must not be acted on (French): an ambiguous header block or one over budget."""
    problem = header_block_problem(raw)
    if problem is None and parsed.degraded != "unparseable":
        problem = views_problem(raw, parsed.msg)
    if problem is None:
        try:
            signatures = [str(v) for v in parsed.msg.get_all("DKIM-Signature") or []]
        except Exception:
            signatures = []
        problem = budget_problem(signatures)
    return problem
