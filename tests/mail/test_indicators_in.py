"""An ACSS alert with a STIX 2.1 bundle or a MISP event attached (docs/indicators.md, "In"): the
file's indicators are merged with the text's (deduplicated, the source of each kept), its TLP is
cross-checked (the stricter wins, a disagreement is written for staff), and a broken or hostile
file is reported, never a crash."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

import pytest

from mailgateway.dispatch.indicators_out import IndicatorSet, misp_event, stix_bundle
from mailgateway.mail import indicators_in
from mailgateway.mail.analyse import analyse
from mailgateway.mail.context import AnalysisContext
from mailgateway.mail.facts import Indicator, MessageFacts, SenderVerdict
from mailgateway.mail.indicators import extract_indicators

TEXT = ("TLP:GREEN\n\nRéférence : CERTFR-2026-ALE-020\nTitre : Campagne de fax frauduleux\n"
        "Structures concernées : laboratoires de biologie médicale\n\n"
        "Des fax demandent de rappeler le « 01 23 45 67 89 ». Site : hxxps://faux-labo[.]example/paiement\n")
ACSS = SenderVerdict(address="alerte@esante.test", domain="esante.test", authenticated=True, method="dkim",
                     auth_domain="esante.test", signed_headers=frozenset({"from", "to", "subject", "date"}))


def context() -> AnalysisContext:
    return AnalysisContext(acss_domains=("esante.test",), own_addresses=frozenset({"ssi-ara@ars.test"}))


def alert_mail(files: list[tuple[str, str, bytes]], text: str = TEXT) -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "CERT Santé <alerte@esante.test>"
    msg["To"] = "ssi-ara@ars.test"
    msg["Subject"] = "Alerte - Campagne de fax frauduleux CERTFR-2026-ALE-020"
    msg["Message-ID"] = "<alerte-20@esante.test>"
    msg["Date"] = "Fri, 27 Nov 2026 10:00:00 +0100"
    msg.set_content(text)
    for name, ctype, data in files:
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes()


def acss_file(tlp: str, indicators: tuple[Indicator, ...]) -> IndicatorSet:
    return IndicatorSet(reference="CERTFR-2026-ALE-020", title="Campagne de fax frauduleux", tlp=tlp,
                        created=datetime(2026, 11, 27, 9, 0, tzinfo=UTC), indicators=indicators, producer="CERT Santé")


FILE_INDICATORS = (Indicator("phone", "+33123456789"), Indicator("ip", "203.0.113.9"),
                   Indicator("hash", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
                   Indicator("phone", "+442079460958"))


def facts_of(raw: bytes) -> MessageFacts:
    facts = analyse(raw, context(), ACSS)
    assert facts.kind == "alert" and facts.alert is not None, facts.quarantine_reason
    return facts


@pytest.mark.parametrize(("name", "ctype", "build"), [
    ("indicateurs.json", "application/stix+json", stix_bundle),
    ("evenement-misp.json", "application/json", misp_event),
])
def test_the_files_indicators_are_merged_with_the_texts_without_duplicates_and_with_their_source(
        name: str, ctype: str, build: Any) -> None:
    facts = facts_of(alert_mail([(name, ctype, build(acss_file("GREEN", FILE_INDICATORS)))]))
    values = [(i.type, i.value) for i in facts.indicators]
    assert len(values) == len(set(values))  # the number in both the text and the file is there once
    assert set(values) == {("phone", "+33123456789"), ("url", "https://faux-labo.example/paiement"),
                           ("ip", "203.0.113.9"), ("phone", "+442079460958"),
                           ("hash", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")}
    label = ("STIX " if build is stix_bundle else "MISP ") + name
    sources = {(s["type"], s["value"], s["source"]) for s in facts.extra["indicator_sources"]}
    assert ("phone", "+33123456789", "texte") in sources and ("phone", "+33123456789", label) in sources
    assert ("ip", "203.0.113.9", label) in sources and ("ip", "203.0.113.9", "texte") not in sources
    assert facts.alert is not None and facts.alert.tlp == "GREEN"  # the file agrees with the mail


@pytest.mark.parametrize("build", [stix_bundle, misp_event])
def test_a_stricter_tlp_in_the_file_wins_and_the_disagreement_is_written_for_staff(build: Any) -> None:
    facts = facts_of(alert_mail([("ioc.json", "application/json", build(acss_file("AMBER+STRICT", FILE_INDICATORS)))]))
    assert facts.alert is not None
    assert facts.alert.tlp == "AMBER+STRICT"
    marking = facts.alert.tlp_marking or ""
    assert "TLP:AMBER+STRICT" in marking and "désaccord" in marking and "le plus strict" in marking


def test_a_laxer_tlp_in_the_file_never_lowers_the_mails() -> None:
    text = TEXT.replace("TLP:GREEN", "TLP:AMBER")
    facts = facts_of(alert_mail([("ioc.json", "application/json", stix_bundle(acss_file("CLEAR", FILE_INDICATORS)))],
                                text))
    assert facts.alert is not None and facts.alert.tlp == "AMBER"
    assert "désaccord" in (facts.alert.tlp_marking or "")


def _deep(depth: int) -> bytes:
    return ("[" * depth + "]" * depth).encode()


@pytest.mark.parametrize(("data", "problem"), [
    (b"{not json", "JSON illisible"),
    (b"\xff\xfe\x00garbage", "JSON illisible"),
    (_deep(100_000), "JSON illisible"),  # json's own recursion limit: caught
    (json.dumps({"type": "bundle", "objects": json.loads(_deep(40))}).encode(), "imbrication"),  # under json's limit
    (json.dumps({"hello": "world"}).encode(), "ni paquet STIX 2.1 ni événement MISP"),
    (json.dumps({"type": "bundle", "objects": "nope"}).encode(), "sans liste"),
    (b" " * (indicators_in.MAX_FILE_BYTES + 10) + b"{}", "non lu"),
])
def test_a_broken_or_hostile_file_is_reported_and_the_texts_indicators_stay(data: bytes, problem: str) -> None:
    started = time.monotonic()
    facts = facts_of(alert_mail([("ioc.json", "application/json", data)]))
    assert time.monotonic() - started < 5
    assert problem in " ".join(facts.extra["indicator_files_problems"])
    assert problem in (facts.alert.tlp_marking or "") if facts.alert else False  # staff see it
    assert ("phone", "+33123456789") in {(i.type, i.value) for i in facts.indicators}


def test_values_a_file_claims_are_checked_like_the_texts() -> None:
    bundle = {"type": "bundle", "id": "bundle--9d9c4b2e-3a5f-4b7e-9c1d-2e3f4a5b6c7d", "objects": [
        {"type": "indicator", "pattern_type": "stix", "pattern": "[ipv4-addr:value = 'not-an-ip']"},
        {"type": "indicator", "pattern_type": "stix",
         "pattern": "[domain-name:value = 'ars.sante.fr'] OR [url:value = 'hxxp://evil[.]example/x']"},
        {"type": "email-addr", "value": "ssi-ara@ars.test"},  # ours: never an indicator
        {"type": "x-mailgateway-phone-number", "value": "+1 202 555 0143"},
    ]}
    facts = facts_of(alert_mail([("b.json", "application/json", json.dumps(bundle).encode())]))
    values = {(i.type, i.value) for i in facts.indicators}
    assert ("url", "http://evil.example/x") in values and ("phone", "+12025550143") in values
    assert not {v for v in values if "ars" in v[1] or v[1] == "not-an-ip"}


def test_an_alert_without_a_json_file_is_read_as_before() -> None:
    facts = facts_of(alert_mail([("note.txt", "text/plain", b"rien")]))
    assert "indicator_sources" not in facts.extra
    assert facts.alert is not None and facts.alert.tlp == "GREEN" and "désaccord" not in (facts.alert.tlp_marking or "")


@pytest.mark.parametrize("text", ["+1" * 50_000, "+" + "1 " * 50_000, "+44" + "1" * 100_000, "0" * 100_000])
def test_the_phone_patterns_stay_linear_on_hostile_text(text: str) -> None:
    started = time.monotonic()
    extract_indicators([text])
    assert time.monotonic() - started < 2  # milliseconds in practice (100 ms measured)


@pytest.mark.parametrize("pattern", ["a:b='" * 4_000, "a:b = '\\" * 3_000, "x" * 20_000 + ":", "x:" + "a" * 19_000])
def test_a_hostile_pattern_is_read_in_bounded_time(pattern: str) -> None:
    bundle = {"type": "bundle", "objects": [{"type": "indicator", "pattern_type": "stix", "pattern": pattern}] * 50}
    started = time.monotonic()
    facts_of(alert_mail([("b.json", "application/json", json.dumps(bundle).encode())]))
    assert time.monotonic() - started < 5
