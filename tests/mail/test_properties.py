"""Property-based tests: header, command and label parsers, and analyse, never raise.

The default budget is small (fast suite); ``pytest -m fuzz`` runs the long variants.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailgateway.mail.analyse import analyse
from mailgateway.mail.commands import parse_command_line, parse_commands
from mailgateway.mail.context import AnalysisContext
from mailgateway.mail.headers import decode_header_value, parse_addresses
from mailgateway.mail.labels import load_labels
from mailgateway.mail.refs import canonical, find_ref
from mailgateway.mail.text import labelled_lines, match_form, new_text
from tests.support.messages import make_declaration
from tests.support.schema import assert_valid_facts

LABELS = load_labels()
CTX = AnalysisContext(region_addresses={"ssi-ara@ars-sante.test": "ARA"}, loop_token="t")
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LONG = settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
header_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=300) | st.sampled_from(
    ["=?utf-8?q?=C3?= =?utf-8?q?=A9?=", "=?bogus?b?!!!?=", "=?utf-8?b?", "a:; (c)", '<a@b>, "x" <c@d>']
)
raw_bytes = st.binary(max_size=2000)


def _headers(value: str) -> None:
    decoded = decode_header_value(value)
    assert isinstance(decoded, str)
    for _name, addr in parse_addresses(decoded):
        assert "\n" not in addr and " " not in addr


def _commands(line: str) -> None:
    cmd = parse_command_line(line, LABELS)
    if cmd is not None:
        assert cmd.name and isinstance(cmd.args, tuple)
    parse_commands(line + "\n#" + line, LABELS)


def _labels(text: str) -> None:
    for label, _value, _i in labelled_lines(text):
        assert label == match_form(label)
    LABELS.incident_types.first(text)
    new_text(text)


@FAST
@given(header_text)
def test_header_decoding_never_raises(value: str) -> None:
    _headers(value)


@FAST
@given(st.text(max_size=200))
def test_command_parsing_never_raises(line: str) -> None:
    _commands(line)


@FAST
@given(st.text(max_size=500))
def test_label_parsing_never_raises(text: str) -> None:
    _labels(text)


@FAST
@given(
    st.sampled_from(["ARA", "PDL", "PACA", "GE"]),
    st.integers(2000, 2099),
    st.integers(0, 999999),
    st.sampled_from(["-", "_", " ", "- ", "."]),
)
def test_references_roundtrip_through_mangling(region: str, year: int, number: int, sep: str) -> None:
    text = f"RE: [SSI{sep}{region}{sep}{year}{sep}{number}] suite"
    assert find_ref(text) == canonical(region, str(year), str(number))


@FAST
@given(raw_bytes)
def test_analyse_is_total_on_random_bytes(raw: bytes) -> None:
    assert_valid_facts(analyse(raw, CTX).to_json())


@FAST
@given(st.integers(0, 2000), st.binary(min_size=1, max_size=20))
def test_analyse_is_total_on_corrupted_declarations(pos: int, junk: bytes) -> None:
    raw = bytearray(make_declaration())
    pos = min(pos, len(raw))
    raw[pos : pos + len(junk)] = junk
    assert_valid_facts(analyse(bytes(raw), CTX).to_json())


@pytest.mark.fuzz
@LONG
@given(header_text, st.text(max_size=300), st.text(max_size=1000))
def test_fuzz_parsers(value: str, line: str, text: str) -> None:
    _headers(value)
    _commands(line)
    _labels(text)


@pytest.mark.fuzz
@LONG
@given(raw_bytes)
def test_fuzz_analyse(raw: bytes) -> None:
    assert_valid_facts(analyse(raw, CTX).to_json())
