"""The text of a form filled in a word processor and attached (.docx, .odt), for the declaration
reader: establishments often send the agency's form as a Word or LibreOffice file under a one-line
note (« Veuillez trouver ci-joint notre fiche de déclaration »), and the case then said « non
précisé » for every field.

Both formats are a zip holding XML (ECMA-376 WordprocessingML ``word/document.xml``; OpenDocument
``content.xml``), read with the standard library: ``zipfile`` and expat. The file is hostile until
its sender is known, so every step is bounded:

- the file at most ``MAX_FILE_BYTES`` and ``MAX_MEMBERS`` zip members (``zipfile`` reads the whole
  central directory at open);
- the document's XML read at most ``MAX_XML_BYTES`` decompressed (a zip bomb stops there; a cut
  document is read up to the cut), at most ``MAX_ELEMENTS`` elements;
- UTF-8 only, and no DTD: a document that declares one (entities: « billion laughs ») is not read;
- at most ``MAX_DOCUMENTS`` documents of a message are opened, whatever they yield (mail/parse.py);
- the text at most ``MAX_CHARS``.

A table row of two cells, a label and its value, becomes « label : valeur », the line the form
reader knows; other rows become their cells separated by tabs. Anything unreadable gives ``None``:
the message is analysed without it, never failed for it.
"""

from __future__ import annotations

import io
import zipfile
from xml.etree.ElementTree import Element, ParseError, XMLPullParser

MAX_FILE_BYTES = 5 * 1024 * 1024
MAX_MEMBERS = 500
MAX_XML_BYTES = 2 * 1024 * 1024
MAX_ELEMENTS = 100_000  # a form's document has a few thousand; 4 MB of « <w:x/> » took 0.9 s
MAX_CHARS = 64 * 1024
# How many documents of one message are opened, whatever they yield (mail/parse.py): an outside
# attacker attached a hundred that each yielded nothing and cost a second.
MAX_DOCUMENTS = 2
_CHUNK = 64 * 1024

DOCX = "docx"
ODT = "odt"

_TYPES = {
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": DOCX,
    "application/vnd.oasis.opendocument.text": ODT,
}
_MEMBER = {DOCX: "word/document.xml", ODT: "content.xml"}

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_TEXT = "{urn:oasis:names:tc:opendocument:xmlns:text:1.0}"
_TABLE = "{urn:oasis:names:tc:opendocument:xmlns:table:1.0}"


class _Names:
    """The element names that matter in one format."""

    def __init__(self, paragraphs: tuple[str, ...], text: str | None, tab: str, brk: str, space: str,
                 row: str, cell: str) -> None:
        # text: the one element holding visible text (DOCX ``w:t``: not ``w:instrText`` field codes
        # nor ``w:delText`` deleted text); None: every element's text and tail (ODT spans).
        self.paragraphs, self.text, self.tab, self.brk = paragraphs, text, tab, brk
        self.space, self.row, self.cell = space, row, cell


_NAMES = {
    DOCX: _Names((f"{_W}p",), f"{_W}t", f"{_W}tab", f"{_W}br", "", f"{_W}tr", f"{_W}tc"),
    ODT: _Names((f"{_TEXT}p", f"{_TEXT}h"), None, f"{_TEXT}tab", f"{_TEXT}line-break", f"{_TEXT}s",
                f"{_TABLE}table-row", f"{_TABLE}table-cell"),
}


def office_kind(content_type: str, filename: str) -> str | None:
    """DOCX or ODT when the part is one (by its type, or its name for the generic types clients
    use), else None."""
    kind = _TYPES.get(content_type)
    if kind is not None:
        return kind
    if content_type in ("application/octet-stream", "application/zip", "application/msword"):
        name = filename.lower()
        return DOCX if name.endswith(".docx") else ODT if name.endswith(".odt") else None
    return None


def office_text(data: bytes, kind: str) -> str | None:
    """The document's text, one paragraph a line; None when it cannot be read within bounds."""
    if len(data) > MAX_FILE_BYTES:
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            if len(archive.infolist()) > MAX_MEMBERS:
                return None
            with archive.open(_MEMBER[kind]) as member:
                xml = member.read(MAX_XML_BYTES)
    except (zipfile.BadZipFile, KeyError, OSError, RuntimeError, ValueError, EOFError, NotImplementedError):
        return None  # not a zip, no document in it, encrypted, a compression we lack, a broken stream
    if not _utf8_without_dtd(xml):
        return None
    return _text(xml, _NAMES[kind])


def _utf8_without_dtd(xml: bytes) -> bool:
    """UTF-8 (what Word and LibreOffice write: no byte-order mark, no other encoding declared)
    and no DTD. Checked on the bytes, so only in UTF-8: an outside attacker's UTF-16 document
    carried « <!DOCTYPE … <!ENTITY » past an ASCII search, and expat expanded its entities
    (« billion laughs »: 1 GB and 1.6 s for a 4.8 KB file)."""
    if xml[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in xml[:4096]:
        return False
    head = xml[:200].lower()
    if head.startswith(b"<?xml") and b"encoding" in head.split(b"?>", 1)[0]:
        declared = head.split(b"encoding", 1)[1].split(b"?>", 1)[0]
        if b"utf-8" not in declared and b"utf8" not in declared:
            return False
    return b"<!DOCTYPE" not in xml and b"<!ENTITY" not in xml and b"<!doctype" not in xml


def _text(xml: bytes, names: _Names) -> str | None:
    lines: list[str] = []
    rows: list[list[str]] = []  # the open table rows, innermost last
    cells: list[list[str]] = []  # the paragraphs of the open cells, innermost last
    size = 0
    elements = 0
    parser: XMLPullParser[Element] = XMLPullParser(events=("start", "end"))
    chunks: list[bytes | None] = [xml[at:at + _CHUNK] for at in range(0, len(xml), _CHUNK)]
    for chunk in [*chunks, None]:  # fed in chunks: what was read is cleared as it goes
        broken = False
        try:
            if chunk is not None:
                parser.feed(chunk)
            else:
                parser.close()
            for found in parser.read_events():  # a fault met while feeding is raised here, in order
                event, item = found[0], found[1]  # type: ignore[misc]  # typeshed's union of event tuples
                if isinstance(item, Element):
                    size += _event(event, item, names, lines, rows, cells)
                    elements += 1
        except ParseError:
            broken = True  # a cut or broken document: what was read before the fault stands
        if broken or size > MAX_CHARS or elements > 2 * MAX_ELEMENTS:
            break
    text = "\n".join(line.strip() for line in lines).strip()
    return text[:MAX_CHARS] or None


def _event(event: str, element: Element, names: _Names, lines: list[str], rows: list[list[str]],
           cells: list[list[str]]) -> int:
    """Take one parser event; the number of characters it added to ``lines``."""
    tag = element.tag
    if event == "start":
        if tag == names.row:
            rows.append([])
        elif tag == names.cell:
            cells.append([])
        return 0
    if tag in names.paragraphs:
        text = _paragraph(element, names)
        element.clear()  # read once: an enclosing paragraph (a text box's) does not repeat it
        if cells:
            cells[-1].append(text)
            return 0
        lines.extend(text.split("\n"))
        return len(text)
    if tag == names.cell and cells:
        value = " ".join(p for p in cells.pop() if p)
        if rows:
            rows[-1].append(value)
        element.clear()
    elif tag == names.row and rows:
        row = _row(rows.pop())
        element.clear()
        if cells:  # a table inside a cell: its rows are that cell's paragraphs
            cells[-1].append(row)
        else:
            lines.append(row)
            return len(row)
    return 0


def _paragraph(element: Element, names: _Names) -> str:
    if names.text is not None:  # DOCX
        # Hidden runs (« <w:vanish/> ») are not what a person opening the file reads (an outside
        # attacker hid « Gravité : grave » under a visible « faible »).
        pieces = ["\t" if e.tag == names.tab else "\n" if e.tag == names.brk else e.text or ""
                  for run in element.iter(f"{_W}r") if run.find(f"{_W}rPr/{_W}vanish") is None
                  for e in run.iter() if e.tag in (names.text, names.tab, names.brk)]
        return "".join(pieces)
    for e in element.iter():  # ODT: the empty elements that stand for white space
        if e.tag == names.tab:
            e.text = "\t"
        elif e.tag == names.brk:
            e.text = "\n"
        elif e.tag == names.space:
            count = e.get("{urn:oasis:names:tc:opendocument:xmlns:text:1.0}c", "1")
            # ASCII digits, at most three: « ² » is a digit to str.isdigit and not to int()
            # (an outside attacker's .odt failed the whole message).
            e.text = " " * min(int(count), 100) if count.isascii() and count.isdigit() and len(count) <= 3 else " "
    try:
        return "".join(element.itertext())
    except RecursionError:  # nested beyond reason: its text is not worth the stack
        return ""


def _row(cells: list[str]) -> str:
    filled = [" ".join(c.split()) for c in cells if c.strip()]
    if len(filled) == 2:
        label = filled[0].rstrip(" :\u00a0")
        return f"{label} : {filled[1]}"
    return "\t".join(filled)
