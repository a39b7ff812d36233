"""Operator commands through the real entry point: --version, dkim dns-record, status."""

from __future__ import annotations

import json
import re
import sqlite3
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


def test_a_database_stamped_by_another_version_gets_the_reason_not_a_traceback(tmp_path: Path) -> None:
    """Found by an outside tester: `cases list` and `db upgrade` on a database migrated by a newer
    version (or stamped twice) ended in a traceback, and `status` called it behind and advised
    `db upgrade`, which then failed."""
    config = GatewayConfig(tmp_path / "gw")
    config.cli("db", "upgrade")
    with sqlite3.connect(config.db_path) as db:
        db.execute("UPDATE alembic_version SET version_num = '0099'")
    for command in (("cases", "list"), ("db", "upgrade")):
        result = config.cli(*command, check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("erreur : migration impossible") and "0099" in result.stderr, result.stderr
    status = config.cli("status", "--json", check=False)
    assert status.returncode == 1
    [problem] = json.loads(status.stdout)["problems"]
    assert problem.startswith("schéma inconnu de cette version : 0099") and "db upgrade" not in problem
    with sqlite3.connect(config.db_path) as db:
        db.execute("UPDATE alembic_version SET version_num = '0008'")
    [problem] = json.loads(config.cli("status", "--json", check=False).stdout)["problems"]
    assert problem.startswith("schéma en retard : 0008") and "db upgrade" in problem
    with sqlite3.connect(config.db_path) as db:
        db.execute("INSERT INTO alembic_version VALUES ('0007')")
    result = config.cli("cases", "list", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "plusieurs révisions de schéma : 0007, 0008" in result.stderr


def test_a_file_that_is_no_database_gets_the_reason_not_a_traceback(tmp_path: Path) -> None:
    config = GatewayConfig(tmp_path / "gw")
    config.db_path.write_bytes(b"ceci n'est pas une base SQLite\n" * 200)
    for command in (("cases", "list"), ("db", "upgrade")):
        result = config.cli(*command, check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr == "erreur : base de données illisible : file is not a database\n", result.stderr
