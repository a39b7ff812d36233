"""Render mail templates in a sandboxed, autoescaping Jinja2 environment (docs/guarantees.md).

A mail is three templates: ``<name>.subject.j2`` (one line), ``<name>.txt.j2`` and, optionally,
``<name>.html.j2``. Values taken from mail are passed as *data* only; they never become template
source, so a body containing ``{{ ... }}`` is shown literally. HTML templates autoescape; the text
and subject templates do not (they are not HTML) and the subject is flattened to one line before it
reaches the header API. Sites override any template by putting a file of the same name in
``[outbound].templates_dir``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mailgateway.errors import TemplateError

BUNDLED_DIR = Path(str(resources.files("mailgateway") / "templates"))


@dataclass(frozen=True)
class RenderedMail:
    subject: str
    text: str
    html: str | None


@cache
def _labels() -> dict[str, str]:
    text = resources.files("mailgateway").joinpath("data/libelles.toml").read_text(encoding="utf-8")
    return dict(tomllib.loads(text)["libelles"])


def libelle(value: Any) -> Any:
    """French label of an enumeration value (``RANCONGICIEL`` -> ``rançongiciel``); lists too."""
    if isinstance(value, list | tuple):
        return [libelle(v) for v in value]
    return _labels().get(value, value) if isinstance(value, str) else value


def _one_line(value: str) -> str:
    # RFC 5322 §2.2: a header body is one logical line; CR/LF never reach the header API.
    return " ".join(value.split())


class Renderer:
    def __init__(self, site_dir: str | None = None) -> None:
        dirs = [site_dir] if site_dir else []
        loader = jinja2.FileSystemLoader([*dirs, str(BUNDLED_DIR)])
        self._html = ImmutableSandboxedEnvironment(
            loader=loader, autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True
        )
        self._text = ImmutableSandboxedEnvironment(
            loader=loader, autoescape=False, undefined=jinja2.StrictUndefined, keep_trailing_newline=True
        )
        for env in (self._html, self._text):
            env.filters["libelle"] = libelle

    def has(self, name: str) -> bool:
        try:
            self._text.get_template(name)
        except jinja2.TemplateNotFound:
            return False
        return True

    def render(self, name: str, context: Mapping[str, Any]) -> RenderedMail:
        try:
            subject = _one_line(self._text.get_template(f"{name}.subject.j2").render(context))
            text = self._text.get_template(f"{name}.txt.j2").render(context)
            html = None
            if self.has(f"{name}.html.j2"):
                html = self._html.get_template(f"{name}.html.j2").render({**context, "text_body": text})
        except jinja2.TemplateError as exc:
            raise TemplateError(f"template {name}: {exc}") from exc
        return RenderedMail(subject=subject, text=text, html=html)

    def check(self) -> list[tuple[str, str]]:
        """Compile every template (bundled and site); return (template, problem) pairs."""
        problems: list[tuple[str, str]] = []
        for name in sorted(set(self._text.list_templates(extensions=["j2"]))):
            try:
                (self._html if name.endswith(".html.j2") else self._text).get_template(name)
            except jinja2.TemplateError as exc:
                problems.append((name, str(exc)))
        return problems
