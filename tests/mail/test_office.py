"""The text of a form attached as a Word or LibreOffice file (mail/office.py): what a declarant's
filled-in form says, read within bounds whatever the file holds."""

from __future__ import annotations

import io
import time
import zipfile

import pytest

from mailgateway.mail import office
from mailgateway.mail.office import DOCX, ODT, office_kind, office_text

W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'


def docx(body: str, member: str = "word/document.xml", extra: dict[str, bytes] | None = None) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr(member, f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
                                 f"<w:document {W}><w:body>{body}</w:body></w:document>")
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return out.getvalue()


def p(*runs: str) -> str:
    return "<w:p>" + "".join(f"<w:r><w:t xml:space=\"preserve\">{r}</w:t></w:r>" for r in runs) + "</w:p>"


def row(*cells: str) -> str:
    return "<w:tr>" + "".join(f"<w:tc>{p(c)}</w:tc>" for c in cells) + "</w:tr>"


def test_paragraphs_and_a_two_column_table_read_as_labelled_lines() -> None:
    body = (p("Fiche de déclaration d'incident de sécurité") + "<w:tbl>" + row("Numéro FINESS", "690781810")
            + row("Type d'incident :", "Rançongiciel") + row("Gravité", "☒ Grave ☐ Non grave")
            + row("Case", "à", "cocher") + "</w:tbl>" + p("Description : postes ", "chiffrés."))
    assert office_text(docx(body), DOCX) == (
        "Fiche de déclaration d'incident de sécurité\nNuméro FINESS : 690781810\n"
        "Type d'incident : Rançongiciel\nGravité : ☒ Grave ☐ Non grave\nCase\tà\tcocher\n"
        "Description : postes chiffrés.")


def test_field_codes_and_deleted_text_are_not_read() -> None:
    """Only ``w:t`` is what Word shows: a tracked deletion (``w:delText``) or a field code
    (``w:instrText``, « FORMCHECKBOX ») is not the form's text."""
    body = ("<w:p><w:r><w:instrText> FORMCHECKBOX </w:instrText></w:r><w:del><w:r><w:delText>Non grave"
            "</w:delText></w:r></w:del><w:r><w:t>Gravité : grave</w:t></w:r><w:r><w:tab/><w:t>x</w:t></w:r></w:p>")
    assert office_text(docx(body), DOCX) == "Gravité : grave\tx"


def test_an_odt_form_is_read() -> None:
    ns = ('xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
          'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
          'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0"')
    content = (f'<office:document-content {ns}><office:body><office:text>'
               '<text:h>Déclaration</text:h><text:p>Numéro FINESS :<text:s/><text:span>690781810</text:span></text:p>'
               '<table:table><table:table-row><table:table-cell><text:p>Gravité</text:p></table:table-cell>'
               '<table:table-cell><text:p>Grave</text:p></table:table-cell></table:table-row></table:table>'
               '<text:p>a<text:tab/>b<text:line-break/>c</text:p>'
               '</office:text></office:body></office:document-content>')
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("mimetype", "application/vnd.oasis.opendocument.text")
        archive.writestr("content.xml", content)
    assert office_text(out.getvalue(), ODT) == "Déclaration\nNuméro FINESS : 690781810\nGravité : Grave\na\tb\nc"


@pytest.mark.parametrize(("ctype", "name", "kind"), [
    ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "x", DOCX),
    ("application/octet-stream", "Fiche Incident.DOCX", DOCX),
    ("application/msword", "fiche.docx", DOCX),
    ("application/vnd.oasis.opendocument.text", "", ODT),
    ("application/octet-stream", "fiche.odt", ODT),
    ("application/octet-stream", "fiche.pdf", None),
    ("application/pdf", "fiche.docx", None),
])
def test_which_files_are_read(ctype: str, name: str, kind: str | None) -> None:
    assert office_kind(ctype, name) == kind


@pytest.mark.parametrize("data", [
    b"", b"%PDF-1.4", b"PK\x03\x04 truncated",
    docx(p("x"), member="word/other.xml"),  # no document in it
    docx("<w:p><w:r><w:t>cut", member="word/document.xml")[:-40],  # a broken zip
])
def test_what_is_not_a_readable_document_gives_none(data: bytes) -> None:
    assert office_text(data, DOCX) is None


def test_a_document_declaring_entities_is_not_read() -> None:
    """« Billion laughs »: entities expanding into each other. Expat bounds them too; we do not
    hand it a DTD at all."""
    laughs = ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
              f'<w:document {W}><w:body><w:p><w:r><w:t>&b;</w:t></w:r></w:p></w:body></w:document>')
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("word/document.xml", laughs)
    assert office_text(out.getvalue(), DOCX) is None


def test_a_zip_bomb_is_read_only_up_to_its_bound() -> None:
    """200 MB of paragraphs compressed to a few hundred KB: read up to MAX_XML_BYTES, the text cut
    at MAX_CHARS, in well under a second's worth of the analysis budget."""
    one = p("Gravité : grave " + "x" * 80).encode()
    xml = (f'<w:document {W}><w:body>'.encode() + one * (200 * 1024 * 1024 // len(one)))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", xml)
    data = out.getvalue()
    assert len(data) < office.MAX_FILE_BYTES
    started = time.perf_counter()
    text = office_text(data, DOCX)
    assert text is not None and text.startswith("Gravité : grave") and len(text) <= office.MAX_CHARS
    assert time.perf_counter() - started < 5


def test_deep_nesting_and_many_members_are_bounded() -> None:
    deep = "<w:tbl>" * 5000 + "<w:tr><w:tc>" * 2000 + p("x")
    assert office_text(docx(deep), DOCX) in (None, "x")  # whatever it reads, it returns
    many = {f"media/{n}.bin": b"" for n in range(office.MAX_MEMBERS + 1)}
    assert office_text(docx(p("Gravité : grave"), extra=many), DOCX) is None
    assert office_text(b"x" * (office.MAX_FILE_BYTES + 1), DOCX) is None


def test_a_document_in_utf16_is_not_read_whatever_it_declares() -> None:
    """An outside attacker: a UTF-16 document carried « <!DOCTYPE … <!ENTITY » past a search for
    the ASCII bytes, and expat expanded its entities (1 GB, 1.6 s for a 4.8 KB file)."""
    xml = ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE d [<!ENTITY a "PLANTED">]>'
           f'<w:document {W}><w:body><w:p><w:r><w:t>Nom de la structure : &a;</w:t></w:r></w:p></w:body></w:document>')
    for data in (xml.encode("utf-16"), xml.encode("utf-16-le"), xml.replace("UTF-16", "ISO-8859-1").encode("latin-1")):
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as archive:
            archive.writestr("word/document.xml", data)
        assert office_text(out.getvalue(), DOCX) is None


def test_many_empty_elements_stop_at_the_element_bound() -> None:
    xml = f'<w:document {W}><w:body>'.encode() + b"<w:x/>" * 700_000 + p("fin").encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", xml)
    started = time.perf_counter()
    assert office_text(out.getvalue(), DOCX) is None  # cut before its one paragraph
    assert time.perf_counter() - started < 2


def test_an_odt_space_count_that_is_no_number_fails_nothing() -> None:
    """An outside attacker: ``text:c="²"`` (a digit to str.isdigit, not to int) failed the message."""
    ns = ('xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
          'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0"')
    for count in ("²", "9" * 5000, "-1"):
        content = (f'<office:document-content {ns}><office:body><office:text><text:p>a<text:s text:c="{count}"/>b'
                   '</text:p></office:text></office:body></office:document-content>')
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as archive:
            archive.writestr("content.xml", content)
        assert office_text(out.getvalue(), ODT) == "a b"


def test_only_the_first_documents_of_a_message_are_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    """An outside attacker attached a hundred documents that each yielded nothing and cost a second:
    at most MAX_DOCUMENTS are opened, whatever they yield."""
    from email.message import EmailMessage

    from mailgateway.mail import parse
    opened: list[int] = []
    real = parse.office_text
    monkeypatch.setattr(parse, "office_text", lambda data, kind: opened.append(1) or real(data, kind))
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "x@spam.test", "ssi-ara@ars.test", "Documents"
    msg.set_content("Voir pièces jointes.")
    for n in range(20):
        msg.add_attachment(docx(p("rien"), member="word/other.xml"), maintype="application", filename=f"d{n}.docx",
                           subtype="vnd.openxmlformats-officedocument.wordprocessingml.document")
    parsed = parse.parse_message(msg.as_bytes())
    assert opened == []  # read only when a declaration needs them
    assert parsed.attached_texts() == [] and len(opened) == office.MAX_DOCUMENTS


def test_hidden_word_text_is_not_read() -> None:
    """An outside attacker: a run marked hidden (« <w:vanish/> ») under a visible « Gravité : faible »
    was read; a person opening the file sees only the visible text."""
    body = ('<w:p><w:r><w:t>Gravité : faible</w:t></w:r>'
            '<w:r><w:rPr><w:vanish/></w:rPr><w:t> — Gravité : grave</w:t></w:r></w:p>')
    assert office_text(docx(body), DOCX) == "Gravité : faible"
