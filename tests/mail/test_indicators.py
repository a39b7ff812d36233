"""Indicators: refanged, deduplicated, noise excluded."""

from __future__ import annotations

import pytest

from mailgateway.mail.indicators import extract_indicators, refang, signature_phones, writer_words
from mailgateway.mail.labels import load_labels


def _pairs(text: str, **kw: object) -> set[tuple[str, str]]:
    return {(i.type, i.value) for i in extract_indicators([text], **kw)}  # type: ignore[arg-type]


def test_defanged_values_are_refanged() -> None:
    found = _pairs("hxxp://evil[.]example/a evil(.)example 203.0.113[.]45 pirate[at]evil.example")
    assert ("url", "http://evil.example/a") in found
    assert ("ip", "203.0.113.45") in found
    assert ("email", "pirate@evil.example") in found


@pytest.mark.parametrize(("defanged", "value"), [
    ("hXXps[:]//evil[.]example[/]x", "https://evil.example/x"),
    ("evil{.}example (dot) evil(dot)example", "evil.example . evil.example"),
    ("pirate [at] evil.example, pirate(at)evil.example, pirate[@]evil.example",
     "pirate@evil.example, pirate@evil.example, pirate@evil.example"),
    ("203.0.113[ . ]45", "203.0.113.45"),
    ("rien à refanger (ici) : x", "rien à refanger (ici) : x"),
])
def test_every_defanged_form_is_refanged(defanged: str, value: str) -> None:
    """Each form, also alone in a text (a pattern runs only when a character it needs is there)."""
    assert refang(defanged) == value


def test_hashes_cves_and_domains() -> None:
    sha = "a" * 63 + "1"
    found = _pairs(f"hash {sha} cve-2026-1234 domaine badsite.xyz fichier README.txt")
    assert {("hash", sha), ("cve", "CVE-2026-1234"), ("domain", "badsite.xyz")} <= found
    assert not any(v == "readme.txt" for _t, v in found)


def test_french_phone_formats_normalise_to_e164() -> None:
    found = _pairs("appeler le 01 23 45 67 89, le 01.23.45.67.89 ou le +33 1 23 45 67 89 ; fax 09 70 00 00 00")
    assert found == {("phone", "+33123456789"), ("phone", "+33970000000")}


def test_own_and_participant_addresses_and_noise_domains_are_excluded() -> None:
    found = _pairs(
        "écrire à ssi-ara@ars-sante.test ou voir http://www.w3.org/1999/xhtml et cybermalveillance.gouv.fr",
        exclude_addresses=["ssi-ara@ars-sante.test"],
        noise_domains=["w3.org", "gouv.fr"],
    )
    assert found == set()


def test_count_is_bounded() -> None:
    text = " ".join(f"http://h{i}.example/" for i in range(500))
    assert len(extract_indicators([text])) == 100


WRITER = ("Jeanne Martin", "jeanne.martin@chu.test", "Dr Paul Durand", "p.durand@labo.test")


@pytest.mark.parametrize(("text", "kept"), [
    # The writer's card closing the mail, no closing formula (an outside tester, an RSSI).
    ("Serveur chiffré ce matin.\n\nDr Paul Durand\nBiologiste responsable\n06 12 34 56 78\n", []),
    # A number the mail reports, in its last lines: still an indicator.
    ("Appel frauduleux ce matin.\n\nLe numéro de l'escroc :\n01 44 55 66 77\n", ["+33144556677"]),
    ("Appel frauduleux ce matin.\n\n01 44 55 66 77\nse présentant comme le support\n", ["+33144556677"]),
    ("Appel frauduleux depuis le 01 44 55 66 77.\n\nDr Paul Durand\n", ["+33144556677"]),
    # Quick mails end with the numbers they report (an outside tester, against a first version).
    ("Appels ce matin.\n\nNuméros utilisés par l'escroc\n- 01 44 55 66 77\n- 09 70 12 34 56\n",
     ["+33144556677", "+33970123456"]),
    ("Appels ce matin.\n\nIl appelait depuis le\n01 44 55 66 77\n", ["+33144556677"]),
    ("SMS ce matin.\n\nSMS frauduleux reçu du\n+33 7 56 78 90 12\n", ["+33756789012"]),
    # A name, but not the writer's: what the mail reports (an outside attacker).
    ("Il se présentait comme :\n\nSupport Technique Microsoft\n01 44 55 66 77\n", ["+33144556677"]),
    ("Appel reçu.\n\nService Comptabilité Medifourn\n+33 1 44 55 66 77\n", ["+33144556677"]),
    # The card above a confidentiality notice is the writer's still.
    ("Serveur chiffré.\n\nJeanne Martin\nRSSI - CHU de Nantes\n02 40 00 00 00\n\n"
     "Ce message et toutes les pièces jointes sont confidentiels.\n", []),
])
def test_a_card_closing_the_mail_is_the_writers(text: str, kept: list[str]) -> None:
    labels = load_labels()
    found = extract_indicators([text], [], labels.noise_domains, signature_phones(text, writer_words(*WRITER)))
    assert [i.value for i in found if i.type == "phone"] == kept
