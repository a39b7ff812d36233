"""Mail to the national cell (ACSS) and to establishments speaks French: labels, not enumeration
codes (« RANCONGICIEL / MALVEILLANT / NON_QUALIFIE »), French dates, not ISO timestamps."""

from __future__ import annotations

import random
import re
import tomllib
from collections.abc import Iterator
from importlib import resources

import pytest

from mailgateway.dispatch.render import Renderer, columns
from mailgateway.dispatch.render import _width as render_width
from mailgateway.dispatch.samples import sample_mails
from mailgateway.jobs.samples import SAMPLES as JOB_SAMPLES
from mailgateway.settings import parse_settings
from mailgateway.statuses import CaseStatus, Severity
from tests.support import casemail
from tests.support.casegateway import Gateway, make_gateway, settings_data

# Outbound mail read by the ACSS and by establishments (and the reminder staff forward).
OUTBOUND = ("transmission_acss", "reponse", "demande_info", "rappel", "alerte_relais", "bulletin",
            "cloture_declarant")
ISO_INSTANT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d")


def _codes() -> set[str]:
    text = resources.files("mailgateway").joinpath("data/libelles.toml").read_text(encoding="utf-8")
    codes = set(tomllib.loads(text)["libelles"]) | {str(s) for s in CaseStatus} | {str(s) for s in Severity}
    # Codes that are also ordinary words or standard acronyms a French reader knows.
    return {c for c in codes if "_" in c or len(c) > 4} - {"AUTRE"}


def _leaks(text: str) -> list[str]:
    words = set(re.findall(r"[A-Z][A-Z_]+[A-Z]", text))
    return sorted(words & _codes()) + ISO_INSTANT.findall(text)


@pytest.mark.parametrize("template", OUTBOUND)
def test_every_outbound_template_renders_labels_and_french_dates(template: str) -> None:
    settings = parse_settings(settings_data("sqlite:///:memory:"))
    renderer = Renderer()
    (spec,) = sample_mails(settings, templates=(template,), extra=JOB_SAMPLES)
    # The sample context carries what the code hands templates: enumeration codes and the
    # declaration's ISO detection time, as stored in the case's fields.
    assert spec.context["declaration"]["incident_type"] == "RANCONGICIEL"
    mail = renderer.render(template, spec.context)
    for part in (mail.subject, mail.text, mail.html or ""):
        assert _leaks(part) == [], (template, part)


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def test_transmission_to_the_acss_by_mail_is_in_french(gw: Gateway) -> None:
    raw = casemail.message(
        sender="dsi@chu.test", to="ssi-ara@ars.test", subject="Déclaration d'incident",
        body=("Numéro FINESS : 690781810\nNom de la structure : Centre hospitalier\n"
              "Type d'incident : rançongiciel\nNature : malveillant\nGravité : grave\n"
              "Date de détection : 26/11/2026 à 23:40\nImpacts : sécurité des soins, données de santé\n"),
        message_id="<decl-acss@chu.test>")
    ref = gw.feed(raw).case_ref
    assert ref
    gw.command(ref, "#transmettre-acss\n")
    mail = gw.last("transmission_acss", "acss@esante.test")
    text = casemail.text_of(mail.raw)
    subject = casemail.parse(mail.raw)["Subject"]
    assert _leaks(text) == [] and _leaks(subject) == [], (subject, text)
    assert "Type d'incident : rançongiciel" in text
    assert "Nature : malveillant" in text
    assert "Détection : 26/11/2026 à 23:40" in text
    assert "sécurité des soins" in text
    assert subject.endswith("Centre hospitalier — rançongiciel")


def test_answers_to_the_declarant_are_in_french(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#qualifier significatif\n#repondre Nous revenons vers vous rapidement.\n"
                    "#demander-info Quels postes sont touchés ?\n")
    for kind in ("reponse", "demande_info"):
        mail = gw.last(kind, "dsi@chu.test")
        assert _leaks(casemail.text_of(mail.raw)) == [], kind
        assert _leaks(casemail.parse(mail.raw)["Subject"]) == [], kind


def test_columns_wraps_at_the_width_a_fixed_font_shows() -> None:
    """The « columns » filter (dispatch/render.py): every line fits the width in columns (a wide
    character two, a combining mark none), continuation lines indented, nothing lost or added but
    the breaks, a word wider than a line cut."""
    rng = random.Random(11)
    pieces = ["a", "é", "医", "Ａ", "\u0301", " ", "  ", "x" * 30, "hxxps://evil[.]example/" + "a" * 70]
    for _ in range(2000):
        text = "   " + "".join(rng.choice(pieces) for _ in range(rng.randint(0, 120)))
        out = columns(text, 80, "        ")
        lines = out.split("\n")
        assert all(render_width(line) <= 80 for line in lines)
        assert all(line.startswith("        ") for line in lines[1:])
        assert out.replace("\n", "").replace(" ", "") == text.replace(" ", "")
