"""Operator commands through the real entry point: --version, dkim dns-record, status."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mailgateway import __version__
from tests.support.gateway import GatewayConfig


def test_version(tmp_path: Path) -> None:
    config = GatewayConfig(tmp_path / "gw")
    assert config.cli("--version").stdout.strip() == f"mailgateway {__version__}"


def test_dkim_dns_record_prints_the_published_key_in_zone_syntax(tmp_path: Path) -> None:
    config = GatewayConfig(tmp_path / "gw")
    out = config.cli("dkim", "dns-record").stdout.strip()
    match = re.fullmatch(r'mg\._domainkey\.ars\.test\. IN TXT \( ((?:"[^"]{1,255}" ?)+)\)', out)
    assert match, out
    value = "".join(re.findall(r'"([^"]*)"', match.group(1)))  # RFC 1035: strings concatenate
    assert value == config.dkim_record


def test_status_json_after_db_upgrade(tmp_path: Path) -> None:
    config = GatewayConfig(tmp_path / "gw")
    assert config.cli("status", check=False).returncode == 2  # no database yet: says so
    config.cli("db", "upgrade")
    out = json.loads(config.cli("status", "--json").stdout)
    assert out["outbox"]["depth"] == 0 and out["problems"] == []
    text = config.cli("status").stdout
    assert "File sortante : 0 message(s)" in text and "Dossiers ouverts : 0" in text
