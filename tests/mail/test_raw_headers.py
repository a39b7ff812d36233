"""Raw 8-bit headers (RFC 6532 UTF-8 without encoded words, as SMTPUTF8 clients, swaks and many
MTAs send them; legacy Latin-1) decode as text, never as U+FFFD (issue 16).

Before: the README's own tour mail came back as « D\ufffd\ufffdclaration d'incident :
ran\ufffd\ufffdongiciel »: ``compat32`` hands such a value back as an ``email.header.Header`` whose
``str()`` replaces every 8-bit byte. The stored bytes and the one view both parsers agree on are
unchanged: decoding is for display and analysis only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgateway.mail.analyse import analyse
from mailgateway.mail.context import AnalysisContext
from mailgateway.mail.headers import decode_header_value
from mailgateway.mail.parse import message_problem, parse_message
from mailgateway.wire import canonical
from tests.support import casemail
from tests.support.casegateway import Gateway, make_gateway
from tests.support.gateway import PROJECT_ROOT, GatewayConfig

# The README's "five-minute tour" declaration, as swaks sends it (raw UTF-8 Subject).
TOUR_SUBJECT = "Déclaration d'incident : rançongiciel"
TOUR_BODY = ("Numéro FINESS : 440000289\nType d'incident : rançongiciel\nDate de détection : 27/11/2026 à 08h30\n"
             "Gravité : grave\n\nPostes chiffrés, demande de rançon.")


def tour_mail(to: str = "ssi-pdl@ars.test", sender: str = "rssi@chu.test", display: str = "") -> bytes:
    head = (f"From: {display}{' ' if display else ''}<{sender}>\r\nTo: {to}\r\nSubject: {TOUR_SUBJECT}\r\n"
            "Message-ID: <tour-1@chu.test>\r\nDate: Fri, 27 Nov 2026 10:00:00 +0100\r\n\r\n")
    return (head + TOUR_BODY.replace("\n", "\r\n") + "\r\n").encode("utf-8")


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def test_the_readme_tour_mail_comes_back_correct_in_the_acknowledgement(gw: Gateway) -> None:
    # Signed by its author's domain, so the acknowledgement may quote the subject back.
    raw = casemail.sign(tour_mail(display="Jérôme Dupré"), casemail.establishment_key())
    result = gw.feed(raw)
    assert result.kind == "declaration" and result.case_ref, result
    ack = gw.last("accuse_reception", "rssi@chu.test")
    text = casemail.text_of(ack.raw)
    assert f"Objet de votre message : {TOUR_SUBJECT}" in text
    assert "\ufffd" not in text and "\ufffd" not in str(casemail.parse(ack.raw)["Subject"])
    case = gw.case(result.case_ref)
    assert case.incident_type == "RANCONGICIEL" and case.finess == "440000289"
    assert [e.data["objet"] for e in gw.events(result.case_ref) if e.type == "message_recu"] == [TOUR_SUBJECT]


def test_the_tour_mail_unsigned_still_decodes_on_the_timeline(gw: Gateway) -> None:
    result = gw.feed(tour_mail())
    assert result.case_ref
    # The timeline (cases show, digests) holds the subject as written.
    assert [e.data["objet"] for e in gw.events(result.case_ref) if e.type == "message_recu"] == [TOUR_SUBJECT]
    # Unverified: the acknowledgement quotes nothing of the message (docs/guarantees.md).
    assert "rançongiciel" in casemail.text_of(gw.last("accuse_reception", "rssi@chu.test").raw)


@pytest.mark.parametrize(("raw_value", "expected"), [
    ("Déclaration d'incident : rançongiciel".encode(), "Déclaration d'incident : rançongiciel"),
    ("Déclaration d'incident : rançongiciel".encode("latin-1"), "Déclaration d'incident : rançongiciel"),
    ("Sécurité – «urgent»".encode("cp1252"), "Sécurité – «urgent»"),
    (b"caf\x81\x8d", "caf\x81\x8d"),  # bytes cp1252 leaves undefined: Latin-1, never U+FFFD
    ("Objet : =?utf-8?q?d=C3=A9j=C3=A0?= et été".encode(), "Objet : déjà et été"),  # mixed
])
def test_raw_8bit_subjects_decode_without_replacement_characters(
        ctx: AnalysisContext, raw_value: bytes, expected: str) -> None:
    raw = (b"From: rssi@chu.test\r\nTo: ssi-ara@ars-sante.test\r\nSubject: " + raw_value +
           b"\r\nMessage-ID: <r@chu.test>\r\n\r\nBonjour\r\n")
    pm = parse_message(raw)
    assert pm.header("Subject") == expected
    assert analyse(raw, ctx).subject == expected
    assert message_problem(raw, pm) is None  # the one view still holds on raw 8-bit headers
    assert canonical(raw) == raw  # analysis does not change the stored bytes


def test_raw_utf8_display_names_decode(ctx: AnalysisContext) -> None:
    raw = tour_mail(to="ssi-ara@ars-sante.test", display="Jérôme Dupré")
    pm = parse_message(raw)
    assert pm.from_address() == ("Jérôme Dupré", "rssi@chu.test")
    assert decode_header_value(pm.msg.get("From")) == "Jérôme Dupré <rssi@chu.test>"


def test_parse_json_prints_the_decoded_declaration(tmp_path: Path) -> None:
    config = GatewayConfig(tmp_path / "gw")
    path = config.directory / "tour.eml"
    path.write_bytes(tour_mail())
    proc = subprocess.run([sys.executable, "-m", "mailgateway", "parse", "--json", str(path), "-c",
                           str(config.path)], capture_output=True, cwd=PROJECT_ROOT, check=True, timeout=120)
    obj = json.loads(proc.stdout.decode("utf-8").splitlines()[0])
    assert obj["kind"] == "declaration" and obj["region"] == "PDL"
    decl = obj["declaration"]
    assert decl["incident_type"] == "RANCONGICIEL" and decl["finess"] == "440000289"
    assert decl["forwarded_author"] is None and "finess_ej" in decl
    assert "\ufffd" not in proc.stdout.decode("utf-8")
