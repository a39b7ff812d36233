from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailgateway.directory import import_contacts, import_finess
from mailgateway.directory.addresses import normalise_address
from mailgateway.store.models import Contact, Establishment
from tests.directory.conftest import DATA, NOW
from tests.support.finess import write_csv

HEADER = "finess;name;category;departement;email;role\n"


@pytest.fixture
def directory(session: Session) -> Session:
    import_finess(session, DATA / "finess-sample.csv", NOW)
    return session


def _contacts(session: Session) -> set[tuple[str, str, str]]:
    return {(c.finess, c.address, c.role) for c in session.scalars(select(Contact))}


def test_valid_file_adds_contacts_with_default_role_and_lower_case(directory: Session, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "c.csv",
        HEADER
        + "690781810;;;;SSI@CHU-Lyon.fr;\n690781810;;;;rssi@chu-lyon.fr;RSSI\n710780263;;;;ssi@ch-macon.fr;ssi\n",
    )
    report = import_contacts(directory, path, NOW)
    assert not report.refused and report.errors == []
    assert (report.added, report.unchanged) == (3, 0)
    assert _contacts(directory) == {
        ("690781810", "ssi@chu-lyon.fr", "ssi"),
        ("690781810", "rssi@chu-lyon.fr", "rssi"),
        ("710780263", "ssi@ch-macon.fr", "ssi"),
    }


def test_reimport_is_idempotent(directory: Session, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", HEADER + "690781810;;;;ssi@chu-lyon.fr;ssi\n")
    import_contacts(directory, path, NOW)
    again = import_contacts(directory, path, NOW)
    assert (again.added, again.changed, again.unchanged) == (0, 0, 1)


def test_any_error_refuses_the_whole_file_and_lists_every_error(directory: Session, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "c.csv",
        HEADER
        + "690781810;;;;ssi@chu-lyon.fr;ssi\n"  # 2: fine
        + "690781810;;;;pas une adresse;ssi\n"  # 3
        + "123;;;;ssi@x.fr;ssi\n"  # 4
        + "690781810;;;;SSI@chu-lyon.fr;ssi\n"  # 5: duplicate of 2 (case-insensitive)
        + "999999999;;;;ssi@inconnu.fr;\n"  # 6: unknown FINESS without a name
        + "710780263;;;;ssi@ch-macon.fr;chef\n"  # 7
        + "710780263;;PHARMACIE;;ssi@ch-macon.fr;\n"  # 8
        + "710780263;;;;ssi@ch-macon.fr;dsi;extra\n",  # 9
    )
    report = import_contacts(directory, path, NOW)
    assert report.refused and report.exit_code == 2
    assert [str(e) for e in report.errors] == [
        "ligne 3 : adresse invalide « pas une adresse »",
        "ligne 4 : numéro FINESS invalide « 123 »",
        "ligne 5 : doublon de la ligne 2 (690781810, ssi@chu-lyon.fr, ssi)",
        "ligne 6 : FINESS 999999999 absent de l'annuaire et sans nom : impossible de créer l'établissement "
        "(renseigner la colonne name)",
        "ligne 7 : rôle inconnu « chef » (valeurs possibles : ssi, rssi, dsi, direction)",
        "ligne 8 : catégorie inconnue « PHARMACIE » — valeurs possibles : ETABLISSEMENT_SANTE (ou : établissement "
        "de santé, ES, CH, CHU, clinique, hôpital) ; HOPITAL_ARMEES (ou : hôpital d'instruction des armées, HIA) ; "
        "LBM (ou : laboratoire de biologie médicale, laboratoire) ; CENTRE_RADIOTHERAPIE (ou : centre de "
        "radiothérapie, radiothérapie) ; ESMS (ou : établissement social ou médico-social, ESSMS, médico-social, "
        "EHPAD) ; AUTRE (ou : autre)",
        "ligne 9 : nombre de colonnes incorrect (7 au lieu de 6)",
    ]
    assert _contacts(directory) == set()  # not even line 2


def test_unknown_finess_with_a_name_creates_the_establishment(directory: Session, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "c.csv",
        HEADER + "690999990;Centre de Radiothérapie Test;CENTRE_RADIOTHERAPIE;69;ssi@radio.fr;\n"
        "690999990;;;;dsi@radio.fr;dsi\n",
    )
    report = import_contacts(directory, path, NOW)
    assert report.errors == [] and report.added == 2
    est = directory.get(Establishment, "690999990")
    assert est is not None
    assert (est.name, est.category, est.departement, est.region, est.source) == (
        "Centre de Radiothérapie Test",
        "CENTRE_RADIOTHERAPIE",
        "69",
        "ARA",
        "contacts",
    )


def test_comma_separator_bom_and_french_headers_are_accepted(directory: Session, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "c.csv",
        'FINESS,Nom,Catégorie,Département,Courriel,Rôle\n690781810,"HCL, site Édouard Herriot",,,ssi@chu-lyon.fr,\n',
        bom=True,
    )
    report = import_contacts(directory, path, NOW)
    assert report.errors == [] and report.added == 1


def test_spreadsheet_quirks_are_repaired_with_a_warning(directory: Session, tmp_path: Path) -> None:
    # Excel: cp1252 instead of UTF-8, leading zero of the FINESS lost, trailing empty column.
    path = write_csv(
        tmp_path / "c.csv",
        HEADER + "10000024;Centre Hospitalier Fleyriat;;;ssi@ch-bourg.fr;ssi;\n",
        encoding="cp1252",
    )
    report = import_contacts(directory, path, NOW)
    assert report.errors == [] and report.added == 1
    assert any("010000024" in str(w) for w in report.warnings)
    assert ("010000024", "ssi@ch-bourg.fr", "ssi") in _contacts(directory)


def test_a_category_differing_from_finess_is_a_warning_and_finess_wins(directory: Session, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", HEADER + "690781810;;LBM;;ssi@chu-lyon.fr;\n")
    report = import_contacts(directory, path, NOW)
    assert report.errors == [] and len(report.warnings) == 1
    est = directory.get(Establishment, "690781810")
    assert est is not None and est.category == "ETABLISSEMENT_SANTE"


def test_missing_email_column_is_refused(directory: Session, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", "finess;name\n690781810;HCL\n")
    report = import_contacts(directory, path, NOW)
    assert report.refused
    assert [str(e) for e in report.errors] == ["ligne 1 : colonne(s) obligatoire(s) absente(s) : email"]
    assert directory.scalar(select(func.count()).select_from(Contact)) == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("SSI@CH-Macon.fr", "ssi@ch-macon.fr"),
        ("Cellule SSI <ssi@ch.fr>", "ssi@ch.fr"),
        ("ssi@hôpital.fr", "ssi@hôpital.fr"),
        ("a@b", None),
        ("a b@c.fr", None),
        ("a..b@c.fr", None),
        ("a@-b.fr", None),
        ("a@b.fr, c@d.fr", None),
        ('"q"@b.fr', None),
        ("a@b.fr>", None),
        ("x" * 65 + "@b.fr", None),
    ],
)
def test_address_validation(value: str, expected: str | None) -> None:
    assert normalise_address(value) == expected


def test_an_unknown_finess_is_reported_even_on_a_line_with_other_errors(directory: Session, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", "finess;email\n999999999;x@\n")
    report = import_contacts(directory, path, NOW)
    assert [e.message.split(" :")[0] for e in report.errors] == [
        "adresse invalide « x@ »",
        "FINESS 999999999 absent de l'annuaire et sans nom",
    ]


def test_a_later_finess_import_takes_over_an_establishment_created_from_contacts(
    session: Session, tmp_path: Path
) -> None:
    from tests.support.finess import structure_line, write_extraction

    path = write_csv(tmp_path / "c.csv", HEADER + "690999990;Centre provisoire;LBM;69;ssi@centre.fr;\n")
    import_contacts(session, path, NOW)
    extraction = write_extraction(
        tmp_path / "f.csv", [structure_line("690999990", "Laboratoire Officiel", "69", "611")]
    )
    report = import_finess(session, extraction, NOW)
    assert (report.added, report.changed) == (0, 1)
    est = session.get(Establishment, "690999990")
    assert est is not None and (est.name, est.source) == ("Laboratoire Officiel", "finess")
