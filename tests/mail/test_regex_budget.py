"""Bounded work on untrusted text (docs/guarantees.md, "poison message"): every text entry point is linear.

The label regex ``^\\s*[-*•]?\\s*([^:\\n]{1,60}?)\\s*:`` took 5 s on 600 spaces before a colon and
minutes on a 3.7 KB line; the TLP, date, forward-marker and address patterns and Python 3.11's
``html.parser`` were quadratic on other runs. Each entry point is fed 100 KB worst cases and must
answer within a generous budget (the fixed code takes milliseconds; the old code minutes). A
SIGALRM interrupts a runaway call (``re`` checks signals while matching) so that a regression
fails the test instead of hanging the suite.

Fast by default; ``pytest -m fuzz --hypothesis-profile long`` runs the long generated variant.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import FrameType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailgateway.mail import ndr, tlp
from mailgateway.mail.alert import extract_alert, looks_like_alert
from mailgateway.mail.analyse import analyse
from mailgateway.mail.bounce import parse_dsn
from mailgateway.mail.commands import parse_commands
from mailgateway.mail.context import AnalysisContext
from mailgateway.mail.dates import parse_french_datetime
from mailgateway.mail.declaration import extract_declaration, looks_like_declaration, says_portal
from mailgateway.mail.facts import SenderVerdict
from mailgateway.mail.headers import decode_header_value, message_ids, parse_addresses
from mailgateway.mail.htmltext import html_to_text
from mailgateway.mail.indicators import contact_line_phones, extract_indicators
from mailgateway.mail.labels import load_labels
from mailgateway.mail.mbox import looks_like_mbox, split_mbox
from mailgateway.mail.refs import find_ref, strip_prefixes
from mailgateway.mail.text import (
    forwarded_from,
    label_line,
    labelled_lines,
    match_form,
    new_text,
    split_forwarded,
)

LABELS = load_labels()
CTX = AnalysisContext(region_addresses={"ssi-ara@ars-sante.test": "ARA"}, loop_token="t")
SENDER = SenderVerdict(address="alerte@esante.gouv.fr", domain="esante.gouv.fr", authenticated=True,
                       method="dkim", auth_domain="esante.gouv.fr")
SENT = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
SIZE = 100_000
BUDGET = 2.0  # seconds per call on 100 KB; generous: the linear code takes a few milliseconds


@contextmanager
def within(seconds: float, what: str) -> Iterator[None]:
    """Fail (rather than hang) when the body runs longer than ``seconds``."""

    def expire(_signum: int, _frame: FrameType | None) -> None:
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.perf_counter()
    try:
        yield
    except TimeoutError:
        pytest.fail(f"{what}: still running after {seconds} s (superlinear work on untrusted text)")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    elapsed = time.perf_counter() - start
    assert elapsed < seconds, f"{what}: {elapsed:.2f} s"


def _runs(unit: str, size: int = SIZE) -> str:
    return unit * (size // len(unit))


# Hand-made worst cases: long runs of what the old patterns let several quantifiers share, with a
# terminator that makes the match fail late.
WORST: dict[str, str] = {
    "spaces then colon": _runs(" ") + ":",
    "spaces, 61 letters, colon": _runs(" ") + "a" * 61 + ":",  # 600 spaces: 26 s on the old regex
    "tabs, 80 letters, colon": _runs("\t") + "ab" * 40 + ":",
    "tabs then colon": _runs("\t") + ":x",
    "bullet, spaces, 61 letters, colon": "- " + _runs(" ") + "a" * 61 + " :",
    "space-colon pairs": _runs(" :"),
    "letters": _runs("a"),
    "letters then colon": _runs("a") + ":",
    "colons": _runs(":"),
    "dots": _runs("."),
    # The sentence-end mark of negations retried the run from every dot: a 29,990-dot run ending in
    # a letter, inside the 30,000 characters a declaration's free text is read in, took ≈ 20 s.
    "dots then a letter": "." * 29_990 + "x" + _runs(" ", SIZE - 30_000),
    "angle brackets": _runs("<"),
    "dashes": _runs("-"),
    "blank lines": _runs("\n"),
    "space-newline": _runs(" \n"),
    "TLP then blanks": "TLP" + _runs(" ") + "!",
    "TLP then tabs": "TLP" + _runs("\t"),
    "many TLP": _runs("TLP "),
    "date then blanks": "25/11/2026" + _runs(" \n") + "x",
    "worded date then blanks": "27 novembre 2026" + _runs(" ") + "x",
    "relative date then blanks": "ce matin" + _runs("\n") + "!",
    "forward marker then blanks": "begin forwarded message" + _runs(" ") + "x",
    "De then newlines": "De" + _runs("\n") + "x",
    "attribution then blanks": "Le 27 nov. x a écrit" + _runs(" ") + "x",
    "reply prefix then blanks": "Re" + _runs(" \n") + "!",
    "underscores (no @)": _runs("_"),
    "dotted digits (no @)": _runs("1."),
    "hash commands": _runs("#a "),
    "label lines": _runs("Nom : \n"),
    "ip-ish": _runs("1.1"),
    "hex": _runs("ab"),
    "defanged": _runs("[.]"),
    "encoded words": _runs("=?utf-8?q?a?= "),
    "case refs": _runs("SSI-"),
    "no-break spaces between words": "a" + _runs("\u00a0") + "b",  # 35 s in the free-text summary
    "mbox From line, many @": "From " + _runs("a@") + " x",  # three minutes on the old From_ regex
    "mbox From line, blanks": "From a " + _runs(" ") + "x\nSubject: y",
    # This session's readings: days and months by numbers, spoken times, nights, FINESS kinds,
    # call-back numbers, the portal down, the cover note announcing a form.
    "slashed digits": _runs("1/"),
    "le then blanks then a day": "le" + _runs(" ") + "3/12",
    "day then blanks then midi": "hier" + _runs(" ") + "midi",
    "nights": _runs("nuit de "),
    "juridique then digits": _runs("juridique 35 "),
    "call-back words": _runs("joignable "),
    "portal sentences": _runs("portail de signalement "),
}

HTML_WORST: dict[str, str] = {
    "open tags": _runs("<a"),
    "comment openers": _runs("<!--"),
    "comment openers closed by >": _runs("<!-- >"),
    "end tag openers": _runs("</a"),
    "processing instructions": _runs("<?"),
    "declarations": _runs("<!"),
    "quoted attribute": "<a href='" + _runs("x"),
    "unterminated script": "<script>" + _runs("</"),
}


def _entry_points() -> dict[str, Callable[[str], object]]:
    return {
        "labelled_lines": labelled_lines,
        "new_text": new_text,
        "split_forwarded": split_forwarded,
        "forwarded_from": forwarded_from,
        "looks_like_declaration": lambda t: looks_like_declaration(t, "Déclaration", LABELS),
        "extract_declaration": lambda t: extract_declaration(t, "Déclaration", CTX, LABELS, "dsi@chu.test", None, SENT),
        "looks_like_alert": lambda t: looks_like_alert("Alerte", t, LABELS),
        "extract_alert": lambda t: extract_alert("Alerte", t, SENDER, ("esante.gouv.fr",), LABELS),
        "parse_commands": lambda t: parse_commands(t, LABELS),
        "extract_indicators": lambda t: extract_indicators([t]),
        "parse_french_datetime": lambda t: parse_french_datetime(t, SENT),
        "says_portal": says_portal,
        "contact_line_phones": contact_line_phones,
        "tlp.find_markings": tlp.find_markings,
        "tlp.parse_value": tlp.parse_value,
        "strip_prefixes": strip_prefixes,
        "find_ref": find_ref,
        "parse_addresses": parse_addresses,
        "decode_header_value": decode_header_value,
        "message_ids": message_ids,
        "html_to_text": html_to_text,
        "split_mbox": lambda t: split_mbox(t.encode()),
        "looks_like_mbox": lambda t: looks_like_mbox(t.encode()),
        # BOUNCES: plain-text non-delivery reports (mail/ndr.py) and RFC 3464 fields.
        "ndr.report_text": lambda t: ndr.report_text([t]),
        "ndr.failed_recipients": lambda t: ndr.failed_recipients(t, ["ssi-ara@ars-sante.test"], ["tok"]),
        "ndr.diagnostic": lambda t: ndr.diagnostic(t, ["a@b.example"]),
        "ndr.has_ndr_wording": ndr.has_ndr_wording,
        "ndr.is_challenge": lambda t: ndr.is_challenge("x", t),
        "ndr.envelope_recipients": lambda t: ndr.envelope_recipients(t, t),
        "ndr.ses_notification": ndr.ses_notification,
        "parse_dsn": parse_dsn,
    }


ENTRY_POINTS = _entry_points()


@pytest.mark.parametrize("case", sorted(WORST))
def test_every_text_entry_point_is_linear_on_worst_case_lines(case: str) -> None:
    text = WORST[case]
    for name, call in ENTRY_POINTS.items():
        with within(BUDGET, f"{name} on {case!r} ({len(text)} characters)"):
            call(text)


@pytest.mark.parametrize("case", sorted(HTML_WORST))
def test_html_to_text_is_linear_on_unterminated_markup(case: str) -> None:
    # Python 3.11's html.parser took 50 s on 100 KB of "<a" and 24 s on 25,000 "<!--".
    with within(BUDGET, f"html_to_text on {case!r}"):
        html_to_text(HTML_WORST[case])


def test_a_label_line_of_thousands_of_spaces_is_read_at_once() -> None:
    line = "Nom" + " " * 50_000 + ": valeur"
    with within(BUDGET, "label_line"):
        assert label_line(line) == ("Nom", "valeur")
        assert label_line(" " * SIZE + ":") == ("", "")
        assert label_line(" " * SIZE + "a" * 61 + ":") is None
        assert labelled_lines(" " * SIZE + "a" * 61 + ":\n" + "\t" * SIZE + "Nom : x") == [("nom", "x", 1)]


def _poison(line: str) -> bytes:
    head = ("From: x@outside.example\r\nTo: ssi-ara@ars-sante.test\r\nSubject: Declaration\r\n"
            "Message-ID: <poison@outside.example>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
    return (head + "Bonjour,\r\n" + line + "\r\nCordialement\r\n").encode()


@pytest.mark.parametrize("line", [
    " " * 3700 + "a" * 61 + ":",               # the 3.7 KB line (600 spaces: 26 s on the old code)
    " " * 4096 + ":",
    "- " + " " * 4000 + "a" * 61 + " :",
    "Description" + " \t" * 2000 + "x",
    "TLP" + " " * 4000 + "!",
    "25/11/2026" + " " * 4000 + "x",
])
def test_analyse_of_a_4_kb_poison_line_message_is_quick(line: str) -> None:
    with within(BUDGET, "analyse"):
        facts = analyse(_poison(line), CTX)
    assert facts.kind in ("declaration", "unknown")


# -- the label parser reads exactly what the old regex read --------------------------------------
_OLD_LABEL_LINE = re.compile(r"^\s*[-*•]?\s*([^:\n]{1,60}?)\s*:\s?(.*)$")
_LABEL_CHARS = [" ", "\t", "\u00a0", "\u2003", "-", "*", "•", ":", "a", "é", "h", ">", "x", "Z", "1"]


def _read_as(label: str, value: str) -> tuple[str, bool, str]:
    """What labelled_lines uses of a label line: its field name, whether it is skipped, its value."""
    return match_form(label), label.lstrip().startswith(("http", ">")), value


def _old_label(line: str) -> tuple[str, bool, str] | None:
    match = _OLD_LABEL_LINE.match(line)
    return None if match is None else _read_as(match.group(1), match.group(2))


def _new_label(line: str) -> tuple[str, bool, str] | None:
    found = label_line(line)
    return None if found is None else _read_as(*found)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_LABEL_CHARS), max_size=24).map("".join)
       | st.builds(lambda n, tail: "a" * n + tail, st.integers(55, 66), st.sampled_from([":", " :", ": x", "x"])))
def test_label_line_agrees_with_the_old_regex_on_short_lines(line: str) -> None:
    # Short lines only: the old regex is the oracle, and it is quick below a few dozen blanks.
    assert _new_label(line) == _old_label(line)


# -- generated adversarial text -------------------------------------------------------------------
_CHUNKS = [" ", "\t", ":", ".", "<", "-", "a", "1", "@", "#", "=", "?", "[", "(", "/", "+", "_", "\n", "é",
           " :", "TLP", "De ", "Le ", "a écrit", "wrote", "25/11/2026", "8h", "Re:", "SSI-", "http://", "<!--",
           "<a ", "=?utf-8?q?", "&#", "•", "begin forwarded message", "AMBRE+STRICT"]
adversarial = st.builds(
    lambda parts, repeat: "".join(p * r for p, r in zip(parts, repeat, strict=False)),
    st.lists(st.sampled_from(_CHUNKS), min_size=1, max_size=6),
    st.lists(st.integers(1, 1500), min_size=6, max_size=6),
)


def _all_within(text: str, budget: float) -> None:
    for name, call in ENTRY_POINTS.items():
        with within(budget, f"{name} on a generated text of {len(text)} characters"):
            call(text)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(adversarial)
def test_generated_adversarial_text_is_handled_within_budget(text: str) -> None:
    _all_within(text, BUDGET)


@pytest.mark.fuzz
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(adversarial)
def test_generated_adversarial_text_is_handled_within_budget_long(text: str) -> None:
    _all_within(text, BUDGET)
