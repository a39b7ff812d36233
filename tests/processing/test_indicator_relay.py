"""Round trip (docs/indicators.md): a signed ACSS alert with indicators in its text (defanged, French
numbers) and in an attached STIX bundle comes in through the pipeline; its relay to establishments
carries a STIX 2.1 bundle, a MISP event and a CSV that hold the same indicators, marked with the
relay's TLP; TLP:RED never leaves; the formats are those configured; ``alerts export`` writes the
same files and ``cases show --json`` lists the indicators with their type."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailgateway.app import build_app
from mailgateway.bulletins.fanout import BulletinError, create_bulletin, fan_out, relay_alert
from mailgateway.cli.commands import main
from mailgateway.clock import FixedClock
from mailgateway.directory import Target
from mailgateway.dispatch.indicators_out import TLP2_MARKINGS, IndicatorSet, stix_bundle
from mailgateway.mail.facts import Indicator as FoundIndicator
from mailgateway.settings import parse_settings
from mailgateway.store.engine import transaction
from mailgateway.store.models import Case, Indicator, OutboundMessage
from tests.support import casemail
from tests.support.bulletins import dsn, fill_directory
from tests.support.casegateway import NOW, Gateway, settings_data
from tests.support.db import at_head
from tests.support.dkim import GeneratedKey, rsa_key, zone
from tests.support.indicator_files import (
    csv_values,
    load_misp,
    misp_values,
    stix_values,
    validate_stix,
)

ESTABLISHMENTS = ["ssi@e0.test", "ssi@e1.test"]
TEXT = ("{tlp}\n\nRéférence : CERTFR-2026-ALE-031\nTitre : Campagne de fax frauduleux\n"
        "Structures concernées : laboratoires de biologie médicale\n\n"
        "Des fax demandent de rappeler le « 01 23 45 67 89 » ou le +33 1 98 76 54 32.\n"
        "Lien de paiement : hxxps://faux-labo[.]example/paiement ; serveur 198.51.100[.]7.\n"
        "Pièce jointe piégée : 44d88612fea8a8f36de82e1238ace85a. Vulnérabilité exploitée : CVE-2024-3400.\n")
FILE_INDICATORS = (FoundIndicator("phone", "+442079460958"), FoundIndicator("ip", "203.0.113.9"),
                   FoundIndicator("phone", "+33123456789"))
EXPECTED = {("phone", "+33123456789"), ("phone", "+33198765432"), ("url", "https://faux-labo.example/paiement"),
            ("ip", "198.51.100.7"), ("hash", "44d88612fea8a8f36de82e1238ace85a"), ("cve", "CVE-2024-3400"),
            ("phone", "+442079460958"), ("ip", "203.0.113.9")}


@pytest.fixture(scope="module")
def acss_key() -> GeneratedKey:
    return rsa_key("rsa", "esante.test")


def _gateway(url: str, key: GeneratedKey, roles: tuple[str, ...] = ("ssi",), **outbound: Any) -> Iterator[Gateway]:
    data = settings_data(at_head(url))
    data["authentication"]["static_keys"] = {**data["authentication"]["static_keys"], **zone(key)}
    # The establishments' domains may receive AMBER: an AMBER relay then reaches them.
    data["outbound"] = {"amber_allowed_domains": ["e0.test", "e1.test"], **outbound}
    app = build_app(parse_settings(data), clock=FixedClock(NOW))
    with transaction(app.factory) as s:
        fill_directory(s, NOW, 2, category="LBM", roles=roles)
    try:
        yield Gateway(app, FixedClock(NOW))
    finally:
        app.close()


@pytest.fixture
def gw(sqlite_url: str, acss_key: GeneratedKey) -> Iterator[Gateway]:
    yield from _gateway(sqlite_url, acss_key)


def alert_mail(key: GeneratedKey | None, tlp: str = "TLP:AMBER", file_tlp: str | None = "AMBER",
               text: str = TEXT) -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "CERT Santé <alerte@esante.test>"
    msg["To"] = "ssi-ara@ars.test"
    msg["Subject"] = "Alerte - Campagne de fax frauduleux CERTFR-2026-ALE-031"
    msg["Message-ID"] = "<alerte-31@esante.test>"
    msg["Date"] = casemail.DATE
    msg.set_content(text.format(tlp=tlp))
    if file_tlp is not None:
        bundle = stix_bundle(IndicatorSet(reference="CERTFR-2026-ALE-031", title="Campagne de fax frauduleux",
                                          tlp=file_tlp, created=datetime(2026, 11, 27, 8, tzinfo=UTC),
                                          indicators=FILE_INDICATORS, producer="CERT Santé"))
        msg.add_attachment(bundle, maintype="application", subtype="stix+json", filename="ioc.json")
    return casemail.sign(msg.as_bytes(), key) if key is not None else msg.as_bytes()


def receive(gw: Gateway, raw: bytes) -> Case:
    result = gw.feed(raw)
    assert result.status == "processed" and result.case_ref, result
    case = gw.case(result.case_ref)
    assert case.kind == "alert" and case.status == "A_DIFFUSER"
    return case


def relay(gw: Gateway, case: Case) -> list[OutboundMessage]:
    with transaction(gw.app.factory) as s:
        stored = s.get(Case, case.id)
        assert stored is not None
        relay_alert(gw.app.env, s, stored, "agent@ars.test")
    return gw.outbound("alerte_relais")


def files_of(raw: bytes) -> dict[str, tuple[str, bytes]]:
    msg = casemail.parse(raw)
    out: dict[str, tuple[str, bytes]] = {}
    for part in msg.iter_attachments():
        if part.get_content_type() == "message/rfc822":  # the original, attached for staff
            continue
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        out[part.get_filename() or ""] = (part.get_content_type(), payload)
    return out


def test_alert_in_relay_out_the_attachments_hold_the_same_indicators(gw: Gateway, acss_key: GeneratedKey) -> None:
    case = receive(gw, alert_mail(acss_key))
    with gw.app.factory() as s:
        stored = {(i.type, i.value) for i in s.scalars(select(Indicator).where(Indicator.case_id == case.id))}
    assert stored == EXPECTED  # the text's and the file's, each once
    sources = (case.fields or {}).get("indicator_sources") or []
    assert {(x["type"], x["value"]) for x in sources} == EXPECTED  # where each came from, kept with the case
    assert len({x["source"] for x in sources}) == 2  # the mail's text and the attached file
    rows = relay(gw, case)
    assert sorted(r.recipient for r in rows) == ESTABLISHMENTS
    for row in rows:
        files = files_of(row.raw)
        assert set(files) == {"CERTFR-2026-ALE-031-indicateurs.stix.json", "CERTFR-2026-ALE-031-indicateurs.misp.json",
                              "CERTFR-2026-ALE-031-indicateurs.csv"}
        ctype, stix = files["CERTFR-2026-ALE-031-indicateurs.stix.json"]
        assert ctype == "application/stix+json"
        bundle = validate_stix(stix)
        assert stix_values(bundle) == EXPECTED
        markings = {m for o in bundle["objects"] for m in o.get("object_marking_refs", ())}
        assert markings == {TLP2_MARKINGS["AMBER"]}  # the relay's label, never less
        event = load_misp(files["CERTFR-2026-ALE-031-indicateurs.misp.json"][1])
        assert misp_values(event) == EXPECTED and [t.name for t in event.tags] == ["tlp:amber"]
        assert csv_values(files["CERTFR-2026-ALE-031-indicateurs.csv"][1]) == EXPECTED
        # The human text keeps the alert as written: defanged.
        text = casemail.text_of(row.raw)
        assert "hxxps://faux-labo[.]example/paiement" in text and "https://faux-labo.example" not in text


def test_links_the_acss_wrote_live_reach_establishments_defanged(gw: Gateway, acss_key: GeneratedKey) -> None:
    """An outside tester (as the ACSS): an alert whose indicators were written live reached the
    establishments' SSI mailboxes with « https://…/login.php » and « www.…/outil.exe » as written,
    which their mail clients make links; staff's copy was defanged. docs/indicators.md: the mail's
    text keeps the alert as written, defanged."""
    live = TEXT.replace("hxxps://faux-labo[.]example/paiement", "https://faux-labo.example/paiement "
                        "et www.faux-labo.example/outil.exe")
    case = receive(gw, alert_mail(acss_key, file_tlp=None, text=live))
    rows = relay(gw, case)
    assert rows
    for row in rows:
        msg = casemail.parse(row.raw)
        for ctype in ("plain", "html"):
            part = msg.get_body(preferencelist=(ctype,))
            assert part is not None
            body = part.get_content()
            assert "hxxps://faux-labo[.]example/paiement" in body, ctype
            assert "https://faux-labo.example" not in body and "www.faux-labo.example" not in body, ctype


def test_a_stricter_file_marking_keeps_the_alert_from_establishments_and_staff_see_why(
        gw: Gateway, acss_key: GeneratedKey) -> None:
    case = receive(gw, alert_mail(acss_key, tlp="TLP:GREEN", file_tlp="AMBER+STRICT"))
    assert case.tlp == "AMBER+STRICT"
    notification = casemail.text_of(gw.last("notification_equipe", "agent@ars.test").raw)
    assert "désaccord" in notification and "AMBER+STRICT" in notification
    with pytest.raises(BulletinError, match=r"AMBER\+STRICT"):
        relay(gw, case)
    assert gw.outbound("alerte_relais") == []


def test_a_red_alert_and_its_indicators_never_leave(gw: Gateway, acss_key: GeneratedKey) -> None:
    case = receive(gw, alert_mail(acss_key, tlp="TLP:RED", file_tlp="RED"))
    assert case.tlp == "RED"
    with pytest.raises(BulletinError, match="RED"):
        relay(gw, case)
    assert gw.outbound("alerte_relais") == []
    for row in gw.outbound():  # staff alone were written to, and without indicator files
        assert row.recipient.endswith("@ars.test")
        assert not any(name.endswith((".stix.json", ".misp.json", ".csv")) for name in files_of(row.raw))


def test_the_next_contact_of_a_bounced_relay_gets_the_files_too(sqlite_url: str, acss_key: GeneratedKey) -> None:
    for gw in _gateway(sqlite_url, acss_key, roles=("ssi", "rssi")):
        rows = relay(gw, receive(gw, alert_mail(acss_key)))
        first = next(r for r in rows if r.recipient == "ssi@e0.test")
        result = gw.feed(dsn(first.mail_from, "ssi@e0.test", first.message_id))
        assert result.kind == "bounce" and result.status == "processed", result
        fallback = gw.last("alerte_relais", "rssi@e0.test")
        assert files_of(fallback.raw).keys() == files_of(first.raw).keys() and len(files_of(fallback.raw)) == 3
        assert stix_values(validate_stix(files_of(fallback.raw)["CERTFR-2026-ALE-031-indicateurs.stix.json"][1])) \
            == EXPECTED


def test_an_amber_alert_goes_nowhere_without_the_allow_list(sqlite_url: str, acss_key: GeneratedKey) -> None:
    for gw in _gateway(sqlite_url, acss_key, amber_allowed_domains=[]):
        case = receive(gw, alert_mail(acss_key))
        with pytest.raises(BulletinError, match="AMBER"):
            relay(gw, case)
        assert gw.outbound("alerte_relais") == []


def test_only_the_configured_formats_are_attached(sqlite_url: str, acss_key: GeneratedKey) -> None:
    for gw in _gateway(sqlite_url, acss_key, indicator_formats=["csv"]):
        rows = relay(gw, receive(gw, alert_mail(acss_key, tlp="TLP:CLEAR", file_tlp=None)))
        assert rows and all(list(files_of(r.raw)) == ["CERTFR-2026-ALE-031-indicateurs.csv"] for r in rows)


def test_no_format_configured_attaches_nothing(sqlite_url: str, acss_key: GeneratedKey) -> None:
    for gw in _gateway(sqlite_url, acss_key, indicator_formats=[]):
        rows = relay(gw, receive(gw, alert_mail(acss_key, tlp="TLP:CLEAR", file_tlp=None)))
        assert rows and all(files_of(r.raw) == {} for r in rows)


def test_an_unknown_format_is_refused_by_the_settings(sqlite_url: str) -> None:
    data = settings_data(at_head(sqlite_url))
    data["outbound"] = {"indicator_formats": ["stix", "pdf"]}
    with pytest.raises(Exception, match="indicator_formats"):
        parse_settings(data)


def _send_bulletin(gw: Gateway, body: str) -> None:
    """A TLP:GREEN bulletin of ``body`` approved and fanned out to the two LBM of the directory."""
    with transaction(gw.app.factory) as s:
        bulletin = create_bulletin(s, gw.app.settings, region="ARA", target=Target(categories=frozenset({"LBM"})),
                                   subject="Rançongiciel", body=body, tlp="GREEN", author="agent@ars.test", now=NOW)
        bulletin.status = "approved"
        assert fan_out(gw.app.env, s, bulletin) == 2


def _csv_of(raw: bytes) -> str:
    return next(data for name, (_t, data) in files_of(raw).items() if name.endswith(".csv")).decode()


def test_a_bulletin_with_indicators_carries_them(gw: Gateway) -> None:
    body = "Bonjour,\nbloquez hxxp://rancon[.]example/x et le domaine rancon.example.\nTLP:GREEN\n"
    _send_bulletin(gw, body)
    for row in gw.outbound("bulletin"):
        files = files_of(row.raw)
        stix = next(data for name, (_t, data) in files.items() if name.endswith(".stix.json"))
        bundle = validate_stix(stix)
        assert stix_values(bundle) == {("url", "http://rancon.example/x"), ("domain", "rancon.example")}
        assert {m for o in bundle["objects"] for m in o.get("object_marking_refs", ())} == {TLP2_MARKINGS["GREEN"]}


def test_a_bulletin_exports_no_indicator_of_its_authors_signature(gw: Gateway) -> None:
    # Outlook: no « -- » separator, a closing formula, the agent's name, title, address and phone.
    body = ("Bonjour,\nbloquez le domaine rancon.example et appelez le 01 23 45 67 89 si vous le voyez.\n"
            "TLP:GREEN\n\nCordialement,\nPaul Bernard\nChargé de mission SSI – ARS\n"
            "paul.bernard@ars.test\nTél. 02 49 10 41 41\n")
    _send_bulletin(gw, body)
    for row in gw.outbound("bulletin"):
        csv = _csv_of(row.raw)
        assert "rancon.example" in csv and "+33123456789" in csv  # the text's own indicators stay
        assert "+33249104141" not in csv and "ars.test" not in csv, csv


@pytest.mark.parametrize("body", [
    # No closing formula: the contact line alone says whose number it is.
    "Bonjour,\n\nMerci de bloquer rancon.example sur vos pare-feux.\nPaul Agent\nARS\nTél. 02 49 10 41 41\n",
    # A postscript after the signature is the author's text again: its fraud number stays.
    "Bonjour,\nBloquez rancon.example.\nBien cordialement,\nPaul Agent\nTél. 02 49 10 41 41\n\n"
    "PS : le faux support appelle depuis le 01 23 45 67 89.\n",
])
def test_a_bulletins_contact_line_is_no_indicator_but_its_postscript_is_text(gw: Gateway, body: str) -> None:
    # Outside tester (second round): both ways were wrong.
    _send_bulletin(gw, body)
    csv = _csv_of(gw.outbound("bulletin")[0].raw)
    assert "rancon.example" in csv and "+33249104141" not in csv, csv
    assert ("+33123456789" in csv) == ("PS :" in body), csv


def _config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "mailgateway.toml"
    path.write_text(f'[database]\nurl = "{url}"\n\n[[regions]]\ncode = "ARA"\nname = "Auvergne-Rhône-Alpes"\n'
                    'address = "ssi-ara@ars.test"\n', encoding="utf-8")
    return path


def test_alerts_export_writes_the_same_files_and_cases_show_lists_the_indicator_types(
        gw: Gateway, acss_key: GeneratedKey, sqlite_url: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    case = receive(gw, alert_mail(acss_key, tlp="TLP:AMBER+STRICT", file_tlp="AMBER+STRICT"))
    config = str(_config(tmp_path, sqlite_url))
    out = tmp_path / "b.json"
    assert main(["alerts", "export", case.reference, "--format", "stix", "--out", str(out), "-c", config]) == 0
    assert out.stat().st_mode & 0o777 == 0o600
    bundle = validate_stix(out.read_bytes())
    assert stix_values(bundle) == EXPECTED
    assert {m for o in bundle["objects"] for m in o.get("object_marking_refs", ())} == \
        {"marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003"}  # AMBER+STRICT
    capsys.readouterr()
    assert main(["alerts", "export", case.reference, "--format", "misp", "-c", config]) == 0
    assert misp_values(load_misp(capsys.readouterr().out.encode())) == EXPECTED
    assert main(["alerts", "export", case.reference, "--format", "csv", "-c", config]) == 0
    assert csv_values(capsys.readouterr().out.encode()) == EXPECTED
    assert main(["alerts", "export", "SSI-ARA-2026-9999", "--format", "csv", "-c", config]) == 2
    # A forged « ACSS » alert (unsigned): its values are not exported as indicators unless asked
    # (an outside tester: a look-alike alert's « malicious » domains under the agency's name).
    forged = gw.feed(alert_mail(None, file_tlp=None).replace(b"<alerte-31@esante.test>", b"<forged-31@esante.test>"))
    assert forged.status == "processed" and forged.case_ref and gw.case(forged.case_ref).status == "RECUE"
    capsys.readouterr()
    assert main(["alerts", "export", forged.case_ref, "--format", "csv", "-c", config]) == 2
    assert "alerte non authentifiée" in capsys.readouterr().err
    assert main(["alerts", "export", forged.case_ref, "--format", "csv", "--unauthenticated", "-c", config]) == 0
    assert ("url", "https://faux-labo.example/paiement") in csv_values(capsys.readouterr().out.encode())
    assert main(["cases", "show", case.reference, "--json", "-c", config]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {(i["type"], i["value"]) for i in shown["indicators"]} == EXPECTED
