"""Bounded work for the issue-16 readers of untrusted text (forwards at any depth, Outlook header
blocks, courtesy replies, read receipts, raw 8-bit headers): linear, in the style and the budget
of tests/mail/test_regex_budget.py, on its worst cases and on those of these readers."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mailgateway.mail.analyse import analyse
from mailgateway.mail.context import AnalysisContext
from mailgateway.mail.courtesy import is_courtesy
from mailgateway.mail.flowed import unflow
from mailgateway.mail.headers import decode_header_value
from mailgateway.mail.labels import load_labels
from mailgateway.mail.parse import parse_message
from mailgateway.mail.receipt import read_receipt
from mailgateway.mail.text import header_block_end, split_forwarded
from tests.mail.test_regex_budget import BUDGET, SIZE, WORST, within

LABELS = load_labels()


def _runs(unit: str, size: int = SIZE) -> str:
    return unit * (size // len(unit))


OWN_WORST: dict[str, str] = {
    "De lines": _runs("De : a\n"),
    "De then Objet lines": _runs("De : a\nObjet : b\n"),
    "De then Envoyé, never Objet": _runs("De : a\nEnvoyé : b\n"),
    "forward markers": _runs("-------- Message transféré --------\n"),
    "nested Outlook blocks": _runs("De : a\nEnvoyé : b\nObjet : c\n\nx\n"),
    "courtesy words": _runs("merci "),
    "Lu subject-like lines": _runs("Lu : a été lu\n"),
    "flowed lines": _runs("a \n"),
    "flowed quotes": _runs("> a \n>> b \n"),
}
CASES = {**{k: WORST[k] for k in sorted(WORST)}, **OWN_WORST}


def _entry_points() -> dict[str, Callable[[str], object]]:
    return {
        "split_forwarded": split_forwarded,
        "unflow": unflow,
        "header_block_end": header_block_end,
        "is_courtesy": lambda t: is_courtesy(t, 0, LABELS),
        "decode_header_value (8-bit)": lambda t: decode_header_value(t.encode().decode("ascii", "surrogateescape")),
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_new_text_entry_points_are_linear(case: str) -> None:
    text = CASES[case]
    for name, call in _entry_points().items():
        with within(BUDGET, f"{name} on {case!r} ({len(text)} characters)"):
            call(text)


@pytest.mark.parametrize("case", sorted(OWN_WORST))
def test_analyse_of_a_forward_or_receipt_made_of_worst_cases_is_quick(ctx: AnalysisContext, case: str) -> None:
    body = OWN_WORST[case].replace("\n", "\r\n").encode("utf-8")
    raw = (b"From: a@chu.test\r\nTo: ssi-ara@ars-sante.test\r\nSubject: Lu : TR: d\xc3\xa9claration\r\n"
           b"In-Reply-To: <x@ars-sante.test>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + body)
    with within(BUDGET * 2, f"analyse on {case!r}"):
        analyse(raw, ctx)
    with within(BUDGET, f"read_receipt on {case!r}"):
        read_receipt(parse_message(raw))
