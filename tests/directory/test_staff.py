from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgateway.directory import import_staff
from mailgateway.store.models import StaffMember
from tests.directory.conftest import NOW
from tests.support.finess import write_csv


def _staff(session: Session) -> set[tuple[str, str, str]]:
    return {(s.address, s.region, s.role) for s in session.scalars(select(StaffMember))}


def test_staff_file_is_imported_with_or_without_header(session: Session, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "s.csv", "Referent.SSI@ars.sante.fr;ARA;referent\nagent@ars.sante.fr;ara;\n")
    report = import_staff(session, path, NOW)
    assert report.errors == [] and report.added == 2
    assert _staff(session) == {("referent.ssi@ars.sante.fr", "ARA", "referent"), ("agent@ars.sante.fr", "ARA", "agent")}
    with_header = write_csv(
        tmp_path / "h.csv",
        "address;region;role\nreferent.ssi@ars.sante.fr;ARA;referent\nagent@ars.sante.fr;ARA;agent\n",
    )
    again = import_staff(session, with_header, NOW)
    assert (again.added, again.changed, again.unchanged, again.removed) == (0, 0, 2, 0)


def test_staff_absent_from_the_file_lose_their_place_and_roles_follow(session: Session, tmp_path: Path) -> None:
    import_staff(session, write_csv(tmp_path / "a.csv", "a@ars.sante.fr;ARA;agent\nb@ars.sante.fr;ARA;agent\n"), NOW)
    report = import_staff(session, write_csv(tmp_path / "b.csv", "a@ars.sante.fr;ARA;referent\n"), NOW)
    assert (report.added, report.changed, report.removed) == (0, 1, 1)
    assert _staff(session) == {("a@ars.sante.fr", "ARA", "referent")}


def test_a_bad_staff_file_changes_nothing(session: Session, tmp_path: Path) -> None:
    import_staff(session, write_csv(tmp_path / "a.csv", "a@ars.sante.fr;ARA;agent\n"), NOW)
    bad = write_csv(tmp_path / "b.csv", "b@ars.sante.fr;ARA;agent\nc@ars;ARA;agent\nd@ars.sante.fr;XYZ;agent\n")
    report = import_staff(session, bad, NOW)
    assert report.refused
    assert [e.line for e in report.errors] == [2, 3]
    assert _staff(session) == {("a@ars.sante.fr", "ARA", "agent")}


def test_imported_staff_are_staff_of_their_own_region_only(session: Session, tmp_path: Path) -> None:
    """Who receives a region's staff notifications: its [[staff]] plus its imported staff — never
    another region's (``staff_addresses``, a statement built once: issue 19)."""
    from mailgateway.directory.staff import staff_addresses
    from mailgateway.settings import parse_settings
    from tests.support.casegateway import settings_data

    settings = parse_settings(settings_data("sqlite://"))
    csv = write_csv(tmp_path / "s.csv", "Imp.Ara@ars.sante.fr;ARA;agent\nimp.pdl@ars.sante.fr;PDL;agent\n")
    import_staff(session, csv, NOW)
    ara = staff_addresses(settings, session, "ARA")
    assert "imp.ara@ars.sante.fr" in ara and "imp.pdl@ars.sante.fr" not in ara
    assert {s.address.lower() for s in settings.staff if s.region == "ARA"} <= set(ara)
    pdl = staff_addresses(settings, session, "PDL")
    assert "imp.pdl@ars.sante.fr" in pdl and "imp.ara@ars.sante.fr" not in pdl
