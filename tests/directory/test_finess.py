from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailgateway.directory import import_finess
from mailgateway.directory.regions import departement_of_finess, normalise_departement, region_of_departement
from mailgateway.store.models import Establishment
from tests.directory.conftest import DATA, NOW
from tests.support.finess import structure_line, write_extraction

SAMPLE = DATA / "finess-sample.csv"
RADIOTHERAPY = ("690033456",)


def _get(session: Session, finess: str) -> Establishment:
    est = session.get(Establishment, finess)
    assert est is not None, finess
    return est


def test_sample_imports_valid_lines_and_reports_bad_ones_with_line_numbers(session: Session) -> None:
    report = import_finess(session, SAMPLE, NOW, radiotherapy_finess=RADIOTHERAPY)
    assert not report.refused
    assert (report.added, report.changed, report.unchanged) == (39, 0, 0)
    assert report.skipped == 4  # geolocalisation lines
    assert report.extracted_on == "2026-05-12"
    assert [(e.line, e.message) for e in report.errors] == [
        (22, "nombre de champs incorrect (8 au lieu de 32)"),
        (42, "numéro FINESS invalide « 69ABC1234 »"),
    ]
    assert session.scalar(select(func.count()).select_from(Establishment)) == 39


def test_latin1_names_regions_and_categories_are_derived(session: Session) -> None:
    import_finess(session, SAMPLE, NOW, radiotherapy_finess=RADIOTHERAPY)
    macon = _get(session, "710780263")
    assert macon.name == "Centre Hospitalier de Mâcon"
    assert (macon.departement, macon.region, macon.category, macon.categetab) == (
        "71",
        "BFC",
        "ETABLISSEMENT_SANTE",
        "355",
    )
    assert macon.commune == "MÂCON CEDEX"
    assert macon.finess_ej == "710780255"
    expected = {
        "690781810": ("ARA", "ETABLISSEMENT_SANTE"),
        "690041132": ("ARA", "LBM"),
        "010005239": ("ARA", "LBM"),  # 612
        "690011234": ("ARA", "ESMS"),  # categagretab 4401
        "970210126": ("MAR", "ESMS"),  # CMPP, 4106
        "690033456": ("ARA", "CENTRE_RADIOTHERAPIE"),  # configured list wins over categetab 698
        "690044567": ("ARA", "AUTRE"),  # dialysis: neither list
        "2A0000014": ("COR", "ETABLISSEMENT_SANTE"),
        "2B0000020": ("COR", "ETABLISSEMENT_SANTE"),
        "970100400": ("GUA", "ETABLISSEMENT_SANTE"),
        "970300026": ("GUY", "ETABLISSEMENT_SANTE"),
        "970400024": ("REU", "ETABLISSEMENT_SANTE"),
        "980502199": ("MAY", "ETABLISSEMENT_SANTE"),  # 699
        "980600027": (None, "ETABLISSEMENT_SANTE"),  # Wallis-et-Futuna: no ARS
    }
    got = {f: (_get(session, f).region, _get(session, f).category) for f in expected}
    assert got == expected


def test_quoted_fields_and_old_dates_are_read(session: Session) -> None:
    import_finess(session, SAMPLE, NOW)
    assert _get(session, "690055678").name == 'Lieu de Vie "Les OEillets"'
    assert _get(session, "010000032").name == "Centre Hospitalier Docteur Récamier"


def test_second_import_of_the_same_file_changes_nothing(session: Session) -> None:
    import_finess(session, SAMPLE, NOW, radiotherapy_finess=RADIOTHERAPY)
    again = import_finess(session, SAMPLE, NOW, radiotherapy_finess=RADIOTHERAPY)
    assert (again.added, again.changed, again.unchanged) == (0, 0, 39)


def test_changes_are_detected_and_written(session: Session, tmp_path: Path) -> None:
    first = write_extraction(
        tmp_path / "a.csv",
        [
            structure_line("690781810", "HCL", "69", "101", "1101"),
            structure_line("010000024", "CH Bourg", "01"),
        ],
    )
    import_finess(session, first, NOW)
    second = write_extraction(
        tmp_path / "b.csv",
        [
            structure_line("690781810", "Hospices Civils de Lyon", "69", "101", "1101"),  # renamed
            structure_line("010000024", "CH Bourg", "01"),
            structure_line("380780080", "CHU Grenoble", "38", "101", "1101"),
        ],
    )
    report = import_finess(session, second, NOW)
    assert (report.added, report.changed, report.unchanged) == (1, 1, 1)
    assert _get(session, "690781810").name == "Hospices Civils de Lyon"
    # Establishments that disappear from the extraction are counted, never deleted.
    third = write_extraction(tmp_path / "c.csv", [structure_line("380780080", "CHU Grenoble", "38", "101", "1101")])
    report = import_finess(session, third, NOW)
    assert (report.absent, report.unchanged) == (2, 1)
    assert session.get(Establishment, "010000024") is not None


def test_a_duplicate_finess_is_an_error_on_its_second_line(session: Session, tmp_path: Path) -> None:
    path = write_extraction(
        tmp_path / "d.csv",
        [structure_line("690781810", "HCL", "69"), structure_line("690781810", "HCL bis", "69")],
    )
    report = import_finess(session, path, NOW)
    assert [str(e) for e in report.errors] == ["ligne 3 : FINESS 690781810 en double (déjà ligne 2)"]
    assert _get(session, "690781810").name == "HCL"


def test_a_file_that_is_not_an_extraction_is_refused_and_nothing_is_written(session: Session, tmp_path: Path) -> None:
    path = tmp_path / "contacts.csv"
    path.write_text("finess;name;email\n690781810;HCL;ssi@chu-lyon.fr\n", encoding="utf-8")
    report = import_finess(session, path, NOW)
    assert report.refused and report.exit_code == 2
    assert session.scalar(select(func.count()).select_from(Establishment)) == 0


def test_utf8_and_cp1252_lines_are_tolerated(session: Session, tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    lines = [
        structure_line("710780263", "Centre Hospitalier de Mâcon", "71"),
        structure_line("690000880", "Cœur Clinique", "69"),
    ]
    path.write_bytes(
        b"finess;etalab;1;12/05/2026\n" + lines[0].encode("utf-8") + b"\n" + lines[1].encode("cp1252") + b"\n"
    )
    report = import_finess(session, path, NOW)
    assert report.extracted_on == "2026-05-12"
    assert _get(session, "710780263").name == "Centre Hospitalier de Mâcon"
    assert _get(session, "690000880").name == "Cœur Clinique"


def test_import_works_on_postgresql_too(any_session: Session) -> None:
    import_finess(any_session, SAMPLE, NOW)
    again = import_finess(any_session, SAMPLE, NOW)
    assert (again.added, again.changed, again.unchanged) == (0, 0, 39)


def test_departement_codes_map_to_regions() -> None:
    assert region_of_departement("2A") == "COR"
    assert region_of_departement("9D") == "REU"
    assert region_of_departement("9E") is None
    assert normalise_departement("1") == "01"
    assert normalise_departement("974") == "9D"
    assert normalise_departement("2b") == "2B"
    assert normalise_departement("Rhône") is None
    assert departement_of_finess("690781810") == "69"
    assert departement_of_finess("970400024") == "9D"
    assert departement_of_finess("980502199") == "9F"
