"""The indicator files (docs/indicators.md): STIX 2.1 valid for the OASIS validator in strict mode,
MISP events pymisp loads, CSV for spreadsheets; TLP 2.0 markings that match the mail's label."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from mailgateway.dispatch import indicators_out
from mailgateway.dispatch.indicators_out import IndicatorSet, attachments, csv_rows, misp_event, stix_bundle
from mailgateway.mail.facts import Indicator
from mailgateway.mail.indicators import extract_indicators
from tests.support.indicator_files import (
    csv_values,
    load_misp,
    misp_values,
    stix_values,
    validate_stix,
)

RECEIVED = datetime(2026, 3, 2, 9, 30, 12, 345678, tzinfo=UTC)
ALL_KINDS = (
    Indicator("url", "https://portail-sante.example/login?id=1"), Indicator("domain", "portail-sante.example"),
    Indicator("ip", "203.0.113.5"), Indicator("ip", "2001:db8::1"), Indicator("email", "fraude@portail-sante.example"),
    Indicator("hash", "d41d8cd98f00b204e9800998ecf8427e"),
    Indicator("hash", "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
    Indicator("hash", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    Indicator("cve", "CVE-2024-3400"), Indicator("phone", "+33123456789"), Indicator("phone", "+442079460958"),
)


def indicator_set(tlp: str = "AMBER", indicators: tuple[Indicator, ...] = ALL_KINDS) -> IndicatorSet:
    return IndicatorSet(reference="CERTFR-2026-ALE-012", title="Campagne de fax frauduleux", tlp=tlp,
                        created=RECEIVED, indicators=indicators, producer="la cellule SSI — Auvergne-Rhône-Alpes",
                        case_reference="SSI-ARA-2026-0001")


@pytest.mark.parametrize("tlp", ["CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED"])
def test_every_bundle_passes_the_strict_validator_and_carries_the_tlp_2_marking_of_the_mail(tlp: str) -> None:
    bundle = validate_stix(stix_bundle(indicator_set(tlp)))
    markings = [o for o in bundle["objects"] if o["type"] == "marking-definition"]
    assert [m["id"] for m in markings] == [indicators_out.TLP2_MARKINGS[tlp]]
    assert markings[0]["name"] == f"TLP:{tlp}"
    assert markings[0]["extensions"][indicators_out.TLP2_EXTENSION]["tlp_2_0"] == tlp.lower()
    # Every object but the marking and the software's identity is marked: none claims less than the mail.
    for obj in bundle["objects"]:
        if obj["type"] not in ("marking-definition", "extension-definition") and obj["id"] != \
                indicators_out.MAILGATEWAY_IDENTITY:
            assert obj["object_marking_refs"] == [indicators_out.TLP2_MARKINGS[tlp]], obj


def test_amber_strict_uses_the_official_oasis_marking_definition() -> None:
    bundle = validate_stix(stix_bundle(indicator_set("AMBER+STRICT")))
    marking = bundle["objects"][0]
    assert marking == {
        "type": "marking-definition", "spec_version": "2.1",
        "id": "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003", "created": "2022-10-01T00:00:00.000Z",
        "name": "TLP:AMBER+STRICT",
        "extensions": {"extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d": {
            "extension_type": "property-extension", "tlp_2_0": "amber+strict"}},
    }


def test_the_bundle_holds_a_report_indicators_observables_and_the_alert_reference() -> None:
    bundle = validate_stix(stix_bundle(indicator_set()))
    assert stix_values(bundle) == {(i.type, i.value) for i in ALL_KINDS}
    by_type: dict[str, list[dict[str, object]]] = {}
    for obj in bundle["objects"]:
        by_type.setdefault(obj["type"], []).append(obj)
    assert len(by_type["indicator"]) == len(ALL_KINDS) - 1  # a CVE is a vulnerability, not a pattern
    report = by_type["report"][0]
    # The alert's reception (stix2 writes created with milliseconds, STIX 2.1 §3.2).
    assert report["published"] == "2026-03-02T09:30:12Z" and report["created"] == "2026-03-02T09:30:12.000Z"
    assert {"source_name": "mailgateway-alert", "external_id": "CERTFR-2026-ALE-012"} in report["external_references"]
    for indicator in by_type["indicator"]:
        assert indicator["valid_from"] == "2026-03-02T09:30:12Z"
        assert indicator["id"] in report["object_refs"]
    patterns = {i["pattern"] for i in by_type["indicator"]}
    assert "[file:hashes.'SHA-256' = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855']" in patterns
    assert "[x-mailgateway-phone-number:value = '+33123456789']" in patterns
    # The phone SCO is the custom object of one extension definition (STIX 2.1 §7.3).
    (phone_ext,) = by_type["extension-definition"]
    assert phone_ext["id"] == indicators_out.PHONE_EXTENSION and phone_ext["extension_types"] == ["new-sco"]
    for phone in by_type["x-mailgateway-phone-number"]:
        assert phone["extensions"] == {indicators_out.PHONE_EXTENSION: {"extension_type": "new-sco"}}


def test_the_same_alert_gives_the_same_identifiers_in_every_copy() -> None:
    assert stix_bundle(indicator_set()) == stix_bundle(indicator_set())
    first, second = (json.loads(misp_event(indicator_set())) for _ in range(2))
    assert first["Event"]["uuid"] == second["Event"]["uuid"]
    assert [a["uuid"] for a in first["Event"]["Attribute"]] == [a["uuid"] for a in second["Event"]["Attribute"]]


def test_a_pattern_quote_is_escaped_not_broken() -> None:
    bundle = validate_stix(stix_bundle(indicator_set(indicators=(Indicator("url", "http://x.example/a'b\\c"),))))
    (indicator,) = [o for o in bundle["objects"] if o["type"] == "indicator"]
    # RFC 3986 has no backslash: percent-encoded for STIX (§6.15: the value MUST be a URL); a quote is escaped.
    assert indicator["pattern"] == "[url:value = 'http://x.example/a\\'b%5Cc']"


@pytest.mark.parametrize("tlp", ["CLEAR", "GREEN", "AMBER", "AMBER+STRICT"])
def test_the_misp_event_loads_with_pymisp_with_misp_types_and_the_tlp_tag(tlp: str) -> None:
    event = load_misp(misp_event(indicator_set(tlp)))
    assert misp_values(event) == {(i.type, i.value) for i in ALL_KINDS}
    assert {a.type for a in event.attributes} == {"url", "domain", "ip-dst", "email-src", "md5", "sha1", "sha256",
                                                  "vulnerability", "phone-number"}
    assert [t.name for t in event.tags] == [f"tlp:{tlp.lower()}"]
    assert event.info.startswith("CERTFR-2026-ALE-012")
    assert str(event.date) == "2026-03-02"
    assert int(event.distribution) == (0 if tlp.startswith("AMBER") else 1 if tlp == "GREEN" else 3)


def test_the_csv_has_type_value_comment_and_no_cell_a_spreadsheet_would_run() -> None:
    data = csv_rows(indicator_set(indicators=(*ALL_KINDS, Indicator("email", "=cmd@evil.example"))))
    lines = data.decode("utf-8").splitlines()
    assert lines[0] == "type;value;comment"  # the contract's header, no byte-order mark before it
    assert "phone-number;'+33123456789;CERTFR-2026-ALE-012" in lines
    assert "email-src;'=cmd@evil.example;CERTFR-2026-ALE-012" in lines
    assert csv_values(data) == {(i.type, i.value) for i in ALL_KINDS} | {("email", "=cmd@evil.example")}


def test_red_or_no_indicator_attaches_nothing_and_the_formats_are_those_configured() -> None:
    assert attachments(indicator_set("RED"), ["stix", "misp", "csv"]) == []
    assert attachments(indicator_set(indicators=()), ["stix"]) == []
    files = attachments(indicator_set("GREEN"), ["csv", "stix"])
    assert [(a.filename, a.content_type) for a in files] == [
        ("CERTFR-2026-ALE-012-indicateurs.stix.json", "application/stix+json;version=2.1"),
        ("CERTFR-2026-ALE-012-indicateurs.csv", "text/csv;charset=utf-8")]


def test_defanged_french_and_international_numbers_are_exported_refanged_and_in_e164() -> None:
    text = ("Lien : hxxps://faux-ameli[.]example/connexion\nServeur : 198.51.100[.]7\n"
            "Expéditeur : relance[at]faux-ameli[.]example\n"
            "Fax frauduleux : « 01 23 45 67 89 », rappel au +33 1 98 76 54 32, "
            "et depuis l'étranger +44 20 7946 0958 ou +1-202-555-0143.\n")
    found = extract_indicators([text])
    values = {(i.type, i.value) for i in found}
    assert values == {("url", "https://faux-ameli.example/connexion"), ("ip", "198.51.100.7"),
                      ("email", "relance@faux-ameli.example"),
                      ("phone", "+33123456789"), ("phone", "+33198765432"), ("phone", "+442079460958"),
                      ("phone", "+12025550143")}
    s = indicator_set("GREEN", found)
    assert stix_values(validate_stix(stix_bundle(s))) == values
    assert misp_values(load_misp(misp_event(s))) == values
    assert csv_values(csv_rows(s)) == values


def test_an_amount_is_not_a_phone_number() -> None:
    assert extract_indicators(["Rançon demandée : +100 000 €, hausse de +12 % en un an."]) == ()


def test_the_libraries_are_imported_only_when_a_file_is_built() -> None:
    """pymisp (210-670 ms) and stix2 (80-290 ms) must not slow down every command and the daemon's start."""
    import subprocess
    import sys

    code = ("import sys, mailgateway.app, mailgateway.cli.commands, mailgateway.bulletins.fanout, "
            "mailgateway.mail.analyse; print(sorted({'stix2', 'pymisp', 'stix2validator'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
