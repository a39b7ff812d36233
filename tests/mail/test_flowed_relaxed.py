"""Spaces added at line ends of a signed ``format=flowed`` declaration change nothing we read.

DKIM's relaxed body canonicalisation (RFC 6376 §3.4.4, what most providers sign with) drops
trailing blanks, so a copy with a space added after « Numéro FINESS : 690781810 » still verifies;
RFC 3676 reads that space as a soft break and joined the line with the next field — an
authenticated declaration without its FINESS (found by an outside tester holding one signed
mail). A soft break now counts only where a writer wraps (mail/flowed.py ``WRAP_MIN``).
"""

from __future__ import annotations

import pytest

from mailgateway.dns import StaticResolver
from mailgateway.mail.analyse import analyse
from mailgateway.mail.auth import Authenticator
from mailgateway.mail.facts import MessageFacts
from mailgateway.settings import AuthenticationSettings
from tests.mail.test_one_view import CTX
from tests.support.casemail import establishment_key
from tests.support.dkim import signer, zone

FIELDS = ("Numéro FINESS : 690781810", "Raison sociale : Centre Hospitalier Test",
          "Nature : Malveillance", "Type d'incident : Rançongiciel", "Impact sur les soins : Oui")
LONG = ("Le chiffrement a touché trois serveurs de fichiers et le serveur de messagerie interne, "
        "isolés du réseau à 08h30 ; les sauvegardes de la veille sont intactes.")


def body(lines: list[str]) -> bytes:
    return "\r\n".join(lines).encode("utf-8") + b"\r\n"


def declaration(text: bytes, delsp: bool) -> bytes:
    params = "; format=flowed" + ("; delsp=yes" if delsp else "")
    raw = (b"From: rssi@chu.test\r\nTo: ssi-ara@ars.test\r\nSubject: Declaration d'incident SSI\r\n"
           b"Date: Fri, 27 Nov 2026 10:00:00 +0100\r\nMessage-ID: <flowed@chu.test>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=utf-8" + params.encode() + b"\r\n"
           b"Content-Transfer-Encoding: 8bit\r\n\r\n" + text)
    return signer(establishment_key()).sign(raw) + raw


def read(raw: bytes) -> MessageFacts:
    verdict = Authenticator(AuthenticationSettings(), StaticResolver(zone(establishment_key()))).verify(raw)
    return analyse(raw, CTX, verdict)


def wrapped(text: str, delsp: bool) -> list[str]:
    """``text`` as Thunderbird sends it: cut before 72 columns, a space marking each soft break."""
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > 72:
            lines.append(line + ("  " if delsp else " "))  # DelSp=yes: the marker is one more space
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line]


@pytest.mark.parametrize("delsp", [False, True])
def test_added_trailing_spaces_verify_and_read_the_same(delsp: bool) -> None:
    genuine_lines = ["Déclaration d'incident :", "", *FIELDS, "", "Description :", *wrapped(LONG, delsp)]
    genuine = declaration(body(genuine_lines), delsp)
    tampered = declaration(body([line + " " if line in FIELDS else line for line in genuine_lines]), delsp)
    first, second = read(genuine), read(tampered)
    assert first.sender.authenticated and second.sender.authenticated  # relaxed: the copy verifies
    assert first.declaration is not None and second.declaration is not None
    assert first.declaration.finess == second.declaration.finess == "690781810"
    assert first.declaration.to_json() == second.declaration.to_json()


@pytest.mark.parametrize("delsp", [False, True])
def test_a_real_soft_break_still_joins_the_wrapped_paragraph(delsp: bool) -> None:
    assert len(wrapped(LONG, delsp)) == 3
    lines = ["Déclaration d'incident :", *FIELDS, "Description :", *wrapped(LONG, delsp)]
    facts = read(declaration(body(lines), delsp))
    assert facts.declaration is not None and facts.declaration.summary == LONG
