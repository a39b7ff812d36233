"""mail/transfer.py: which Content-Transfer-Encoding a single part's body bytes admit, for a
signature that does not cover the header (Exchange Online)."""

from __future__ import annotations

import base64
import quopri
import time

import pytest

from mailgateway.mail.transfer import reading_fixed_by_body

FRENCH = ("Bonjour,\n#note vu, l'équipe a été prévenue à 8h. "
          + "Une ligne longue qui dépasse soixante-seize caractères " * 3)


def qp(text: str) -> bytes:
    return quopri.encodestring(text.encode()).replace(b"\n", b"\r\n")


@pytest.mark.parametrize(("encoding", "body"), [
    ("quoted-printable", qp(FRENCH)),  # an encoder's output: accents and soft line breaks
    ("base64", base64.encodebytes(FRENCH.encode()).replace(b"\n", b"\r\n")),
    ("8bit", FRENCH.encode()),  # 8-bit bytes: no QP reading
    ("7bit", b"#assigner moi\r\n"),  # nothing QP would read otherwise
    ("", b"a=b c=d\r\n"),  # « = » that escapes nothing
    ("", b"#cible categorie=LBM departement=44\r\n"),  # an escape's look-alike within a line
])
def test_what_a_client_sends_is_read_as_declared(encoding: str, body: bytes) -> None:
    assert reading_fixed_by_body(encoding, body)


@pytest.mark.parametrize(("encoding", "body"), [
    # An outside attacker's relabellings of a genuine body.
    ("quoted-printable", b"> Postes chiffres. =0A#clore Fausse alerte=0A\r\n"),  # planted line breaks
    ("quoted-printable", b"> x=0a#clore\r\n"),  # lower-case: no encoder wrote it
    ("quoted-printable", b"> x=E2=80=A8#clore\r\n"),  # U+2028 ends a line for splitlines
    ("quoted-printable", FRENCH.encode()),  # genuine 8bit text relabelled
    ("8bit", qp(FRENCH)),  # genuine QP relabelled: its soft breaks would cut lines
    ("base64", b"Bien recu, nous regardons.\r\n"),  # no text a person writes is base64
    ("base64", b"I25vdGU=I25vdGU=\r\n"),  # padding inside
    # An outside attacker, round 3: uuencode keeps only its « begin … end » payload; the header's
    # value as the email package compares it (a trailing blank: read as identity, its QP body's
    # soft breaks then cut lines); blanks after a soft break, which relaxed canonicalisation allows.
    ("x-uuencode", b"Bien recu.\r\nbegin 644 log.txt\r\n&(V-L;W)E\r\n`\r\nend\r\n"),
    ("uue", b"Bien recu.\r\n"),
    ("quoted-printable ", qp(FRENCH)),
    ("8bit", b"> " + b"x" * 73 + b"= \r\n#clore Fausse alerte\r\n"),
])
def test_a_relabelled_body_is_refused(encoding: str, body: bytes) -> None:
    assert not reading_fixed_by_body(encoding, body)


def test_it_is_linear_on_a_large_body() -> None:
    body = (b"=" * 1000 + b"\r\n") * 5000
    started = time.perf_counter()
    reading_fixed_by_body("quoted-printable", body)
    reading_fixed_by_body("8bit", body)
    assert time.perf_counter() - started < 1
