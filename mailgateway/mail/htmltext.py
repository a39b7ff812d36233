"""HTML to plain text with the standard library's ``html.parser`` (no third-party sanitizer needed:
the text is only read, never rendered). Script and style contents are dropped; block elements
become line breaks so labelled lines ("Champ : valeur") survive; link targets are collected
separately because they carry indicators that the visible text may not show.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

_BLOCK = frozenset(
    "p div br li ul ol tr table h1 h2 h3 h4 h5 h6 blockquote pre hr section article header footer "
    "dt dd dl form title address center".split()
)
_SKIP = frozenset({"script", "style", "head", "noscript", "template", "svg"})
MAX_LINKS = 200
MAX_HTML_CHARS = 1_000_000
_WS = re.compile(r"\s+")
_BLANKS = re.compile(r"\n{3,}")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.links: list[str] = []
        self.skip_depth = 0
        self.quote_depth = 0
        self.at_line_start = True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skip_depth += 1
            return
        if tag == "a" and len(self.links) < MAX_LINKS:
            href = dict(attrs).get("href")
            if href and not href.lower().startswith(("mailto:", "#", "cid:", "javascript:")):
                self.links.append(href.strip())
        if tag == "blockquote":
            self.quote_depth += 1
        if tag in _BLOCK:
            self._newline()
        elif tag == "td":
            self.chunks.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag in _SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
            return
        if tag == "blockquote":
            self.quote_depth = max(0, self.quote_depth - 1)
        if tag in _BLOCK:
            self._newline()

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        text = _WS.sub(" ", data)
        if not text.strip() and self.at_line_start:
            return
        if self.at_line_start:
            text = text.lstrip()
            # Quoted HTML replies (<blockquote>) become '>' lines, like plain-text quoting.
            if self.quote_depth:
                text = "> " * self.quote_depth + text
        self.chunks.append(text)
        self.at_line_start = False

    def _newline(self) -> None:
        self.chunks.append("\n")
        self.at_line_start = True


def html_to_text(markup: str) -> tuple[str, list[str]]:
    """(plain text, link targets) of an HTML document; never raises."""
    parser = _TextExtractor()
    try:
        parser.feed(markup[:MAX_HTML_CHARS])
        parser.close()
    except Exception:  # noqa: S110 - html.parser is lenient; keep whatever was extracted
        pass
    text = "".join(parser.chunks)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = _BLANKS.sub("\n\n", text).strip()
    return text, parser.links
