from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from mailgateway.directory import run_import
from mailgateway.settings import DatabaseSettings, RegionSettings, Settings
from mailgateway.store.engine import make_engine
from mailgateway.store.models import Contact, Establishment
from tests.directory.conftest import DATA, NOW
from tests.support.finess import write_csv


def _settings(url: str) -> Settings:
    return Settings(database=DatabaseSettings(url=url), regions=(RegionSettings("ARA", "ARA", "ssi-ara@ars.test"),))


def _count(url: str, table: type[Establishment] | type[Contact]) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())
    finally:
        engine.dispose()


def test_cli_import_reports_in_french_and_exits_0_then_2_on_refusal(sqlite_url: str, tmp_path: Path) -> None:
    settings = _settings(sqlite_url)
    text, code = run_import(settings, "finess", DATA / "finess-sample.csv", now=NOW)
    assert code == 0
    assert "Ajoutés : 39, modifiés : 0, inchangés : 0, erreurs : 2" in text
    assert "ligne 22 : nombre de champs incorrect (8 au lieu de 32)" in text.splitlines()

    bad = write_csv(tmp_path / "c.csv", "finess;email\n690781810;ssi@chu-lyon.fr\n690781810;x\n")
    text, code = run_import(settings, "contacts", bad, now=NOW)
    assert code == 2
    assert "ligne 3 : adresse invalide « x »" in text.splitlines()
    assert _count(sqlite_url, Contact) == 0

    good = write_csv(tmp_path / "d.csv", "finess;email\n690781810;ssi@chu-lyon.fr\n")
    text, code = run_import(settings, "contacts", good, now=NOW)
    assert code == 0 and "Ajoutés : 1," in text
    assert _count(sqlite_url, Contact) == 1


def test_missing_file_and_unknown_kind_exit_2(sqlite_url: str, tmp_path: Path) -> None:
    text, code = run_import(_settings(sqlite_url), "finess", tmp_path / "absent.csv", now=NOW)
    assert code == 2 and text.startswith("fichier illisible")
    text, code = run_import(_settings(sqlite_url), "hospitals", tmp_path / "absent.csv", now=NOW)
    assert code == 2 and "type d'import inconnu" in text
    assert _count(sqlite_url, Establishment) == 0
