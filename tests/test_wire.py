"""mailgateway.wire, field by field: the tests a mutation run of wire.py showed missing (survivors
of mutmut on the header-block check, issue 21): every single-instance field, the exact end of the
header block, the mbox ``From `` line, the field-name characters."""

from __future__ import annotations

import pytest

from mailgateway.wire import (
    MAX_HEADER_FIELDS,
    SINGLE_INSTANCE_FIELDS,
    canonical,
    header_block,
    header_block_problem,
    header_block_refusal,
)

BODY = b"\r\nCorps.\r\n"
BASE = b"From: a@chu.test\r\nTo: ssi-ara@ars.test\r\nSubject: s\r\n"


@pytest.mark.parametrize("name", SINGLE_INSTANCE_FIELDS)
def test_every_single_instance_field_twice_is_a_problem_whatever_its_case(name: str) -> None:
    raw = f"{name.upper()}: x\r\n{name}: y\r\n".encode() + BASE.replace(b"From:", b"X-From:") + BODY
    if name in ("from", "to", "subject"):
        raw = f"{name.upper()}: x\r\n".encode() + BASE + BODY
    problem = header_block_problem(raw)
    assert problem is not None and "plusieurs fois" in problem, (name, problem)
    assert "Duplicate" in (header_block_refusal(raw) or "")


def test_the_fields_list_is_the_rfc_5322_set_plus_the_mime_body_fields() -> None:
    assert set(SINGLE_INSTANCE_FIELDS) == {
        "from", "sender", "reply-to", "to", "cc", "subject", "date", "message-id", "in-reply-to", "references",
        "content-type", "content-transfer-encoding",
    }


@pytest.mark.parametrize(("raw", "block"), [
    (b"A: 1\r\nB: 2\r\n\r\nbody\r\n", b"A: 1\r\nB: 2\r\n\r\n"),
    (b"A: 1\nB: 2\n\nbody\n", b"A: 1\nB: 2\n\n"),
    (b"A: 1\r\n\r\n\r\nbody", b"A: 1\r\n\r\n"),
    (b"A: 1\r\nB: 2\r\n", b"A: 1\r\nB: 2\r\n"),  # no body: the whole message
    (b"\r\nbody\r\n", b"\r\n"),  # no header at all
    (b"\nA: 1\n\nbody", b"\n"),  # an empty first line ends it at once (LF only)
])
def test_header_block_ends_exactly_at_the_first_empty_line(raw: bytes, block: bytes) -> None:
    assert header_block(raw) == block


def test_a_line_with_a_lone_cr_is_not_the_end_of_the_header_block() -> None:
    raw = b"A: 1\r\nX: y\r\r\n #clore\r\n\r\nbody"
    assert header_block(raw).endswith(b"\r\n\r\n")
    assert header_block_problem(raw) == "retour chariot (CR) isolé dans les en-têtes"


def test_an_mbox_from_line_is_allowed_first_and_is_not_a_field() -> None:
    first = b"From a@chu.test Fri Nov 27 09:00:00 2026\r\n" + BASE + BODY
    assert header_block_problem(first) is None
    fields = b"".join(b"X-F-%d: y\r\n" % i for i in range(MAX_HEADER_FIELDS - 3))
    at_limit = b"From a@chu.test Fri Nov 27 09:00:00 2026\r\n" + BASE + fields + BODY
    assert header_block_problem(at_limit) is None  # the From_ line does not count as a field
    assert header_block_problem(BASE + b"From a@chu.test Fri Nov 27\r\n" + BODY) is not None


def test_field_limit_is_exact() -> None:
    fields = b"".join(b"X-F-%d: y\r\n" % i for i in range(MAX_HEADER_FIELDS - 3))
    assert header_block_problem(BASE + fields + BODY) is None
    assert header_block_problem(BASE + fields + b"X-Last: 1\r\n" + BODY) is not None


@pytest.mark.parametrize("name", [b"!bang", b"~tilde", b"a.b", b"X_Y"])
def test_every_printable_ascii_but_colon_is_a_field_name(name: bytes) -> None:
    assert header_block_problem(BASE + name + b": v\r\n" + BODY) is None


@pytest.mark.parametrize("name", [b"Sp ace", b"Caf\xc3\xa9", b"Tab\tbed"])
def test_other_bytes_in_a_field_name_are_a_problem(name: bytes) -> None:
    assert header_block_problem(BASE + name + b": v\r\n" + BODY) is not None


def test_canonical_is_idempotent_and_keeps_the_body_bytes() -> None:
    raw = b"A: 1\nB: 2\n\nligne\rcr\nfin\n"
    once = canonical(raw)
    assert once == b"A: 1\r\nB: 2\r\n\r\nligne\rcr\r\nfin\r\n"
    assert canonical(once) == once
    assert canonical(b"\xef\xbb\xbf" + raw) == once
    assert canonical(b"A: 1\rB: 2\r\rbody\r") == b"A: 1\r\nB: 2\r\n\r\nbody\r\n"


@pytest.mark.parametrize("raw", [b"\njunk that is body\n", b"\r\njunk that is body\r\n"])
def test_a_message_starting_with_an_empty_line_has_an_empty_header_block_and_no_problem(raw: bytes) -> None:
    assert header_block_problem(raw) is None
