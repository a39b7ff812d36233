"""``is_known_domain``: exemptions from anti-flood caps go to the exact domains the agency deals
with (directory/known.py), never to a parent, a child, or a LIKE pattern smuggled in a domain."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from mailgateway.directory.contacts import import_contacts
from mailgateway.directory.known import is_known_domain
from mailgateway.directory.staff import all_staff, import_staff
from mailgateway.settings import DkimSettings, Settings, parse_settings
from mailgateway.store.models import Contact, Establishment, StaffMember
from tests.support.db import migrated

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def settings(**extra: Any) -> Settings:
    data: dict[str, Any] = {
        "database": {"url": "sqlite://"},
        "regions": [{"code": "ARA", "name": "Auvergne-Rhône-Alpes", "address": "ssi-ara@ars-ara.test"}],
        "staff": [{"address": "agent@personnel.test", "region": "ARA"}],
        "authentication": {"acss_domains": ["esante.test"]},
    }
    data.update(extra)
    return parse_settings(data)


def one_establishment(session: Session, *, name: str, category: str, rssi: str, dsi: str, staff: str) -> Session:
    """FINESS 690781810 (ARA) with its RSSI and DSI contacts, and one staff member."""
    session.add(Establishment(finess="690781810", name=name, category=category, departement="69", region="ARA",
                              source="finess", updated_at=NOW))
    session.flush()
    for address, role in ((rssi, "rssi"), (dsi, "dsi")):
        session.add(Contact(finess="690781810", address=address, role=role, status="active",
                            bounce_score=0.0, created_at=NOW, updated_at=NOW))
    session.add(StaffMember(address=staff, region="ARA"))
    session.flush()
    return session


@pytest.fixture
def directory(session: Session) -> Session:
    return one_establishment(session, name="CHU", category="CH", rssi="RSSI@Chu-Lyon.test", dsi="dsi@ch_a.test",
                             staff="Cadre@Import.test")


@pytest.mark.parametrize("domain", [
    "esante.test",  # the national cell (acss_domains)
    "ars-ara.test",  # a regional mailbox's domain
    "personnel.test",  # staff of the configuration
    "import.test",  # staff imported by CSV
    "chu-lyon.test",  # an establishment's contact
    "CHU-LYON.TEST",  # DNS names are case-insensitive (RFC 4343)
    " chu-lyon.test. ",  # a trailing root dot, blanks
    "ch_a.test",  # "_" is a LIKE wildcard: matches itself when escaped
])
def test_known_domains(directory: Session, domain: str) -> None:
    assert is_known_domain(settings(), directory, domain)


@pytest.mark.parametrize("domain", [
    None,
    "",
    " ",
    ".",
    "evil.test",
    "lyon.test",  # a suffix of a known domain's text
    "hu-lyon.test",
    "test",  # a parent of every known domain
    "sub.chu-lyon.test",  # a child of a known domain
    "sub.esante.test",
    "sub.ars-ara.test",
    "sub.personnel.test",
    "chu-lyon.test.evil.test",
    "%",  # LIKE wildcards in the domain match nothing but themselves
    "%.test",
    "chu%",
    "_hu-lyon.test",
    "chu-lyon.tes_",
    "chXa.test",  # "_" of ch_a.test must not match any character
    "ch\\a.test",
])
def test_unknown_domains(directory: Session, domain: str | None) -> None:
    assert not is_known_domain(settings(), directory, domain)


def test_the_signing_domain_of_the_gateway_is_known(session: Session) -> None:
    with_dkim = replace(settings(), dkim=DkimSettings(domain="Passerelle.test"))
    assert is_known_domain(with_dkim, session, "passerelle.test")
    assert not is_known_domain(settings(), session, "passerelle.test")
    assert not is_known_domain(with_dkim, session, "sub.passerelle.test")


def test_an_empty_directory_knows_only_the_configuration(session: Session) -> None:
    assert not is_known_domain(settings(), session, "chu-lyon.test")
    assert is_known_domain(settings(), session, "esante.test")


@contextmanager
def statements(session: Session) -> Iterator[list[str]]:
    """Every statement SQLite runs on the session's connection, the driver's own included
    (store/fast.py runs the hot path's statements there, below SQLAlchemy's events)."""
    seen: list[str] = []
    raw = session.connection().connection.driver_connection
    raw.set_trace_callback(seen.append)
    try:
        yield seen
    finally:
        raw.set_trace_callback(None)


def test_a_signing_domain_is_looked_up_by_its_index(directory: Session) -> None:
    """Asked of every authenticated message: ``address LIKE '%@domain'`` scanned the whole
    directory (8 ms a message at 40,000 contacts, issue 19); ``contacts.domain`` is indexed."""
    with statements(directory) as seen:
        assert is_known_domain(settings(), directory, "chu-lyon.test")
        assert not is_known_domain(settings(), directory, "ailleurs.test")
        assert is_known_domain(settings(), directory, "gmail.com", "rssi.clinique@gmail.com") is False
    lookups = [q for q in seen if q.startswith("SELECT contacts.id")]
    assert len(lookups) == 3, seen
    conn = directory.connection().connection.driver_connection
    for lookup in lookups:  # values inlined by the trace; the plan is the same
        plan = " ".join(str(r[-1]) for r in conn.execute(f"EXPLAIN QUERY PLAN {lookup}"))
        assert "ix_contacts_domain" in plan, (lookup, plan)


def test_the_domain_is_set_at_insert(directory: Session) -> None:
    """(Older rows: the migration, tests/store/test_migrations.py.)"""
    domains = dict(directory.execute(select(Contact.address, Contact.domain)).all())
    assert domains == {"RSSI@Chu-Lyon.test": "chu-lyon.test", "dsi@ch_a.test": "ch_a.test"}


def test_the_staff_list_is_read_once_per_transaction_and_again_after_an_import(
        directory: Session, tmp_path: Path) -> None:
    reads: list[str] = []
    conn = directory.connection()

    def count(_conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, _many: bool) -> None:
        if "FROM staff" in statement:
            reads.append(statement)

    config = settings()
    event.listen(conn.engine, "before_cursor_execute", count)
    try:
        for _ in range(3):
            assert is_known_domain(config, directory, "import.test")
        assert len(reads) == 1, reads
        csv = tmp_path / "agents.csv"
        csv.write_text("adresse;region\nnouvel.agent@renfort.test;ARA\n", encoding="utf-8")
        assert not import_staff(directory, csv, NOW).refused
        assert "nouvel.agent@renfort.test" in all_staff(config, directory)
    finally:
        event.remove(conn.engine, "before_cursor_execute", count)


def test_an_answer_is_remembered_for_the_transaction_and_forgotten_by_an_import(
        directory: Session, tmp_path: Path) -> None:
    """Asked of every authenticated message (issue 19): the directory is read once per question
    and transaction; a contacts import or a staff import in the same transaction is seen at once."""
    config = settings()
    with statements(directory) as seen:
        for _ in range(3):
            assert not is_known_domain(config, directory, "ch-nouveau.test")
            assert is_known_domain(config, directory, "CHU-lyon.test")
    assert len([q for q in seen if q.startswith("SELECT contacts.id")]) == 2, seen
    contacts = tmp_path / "contacts.csv"
    contacts.write_text("finess;email;role\n690781810;ssi@ch-nouveau.test;ssi\n", encoding="utf-8")
    assert not import_contacts(directory, contacts, NOW).refused
    assert is_known_domain(config, directory, "ch-nouveau.test")
    assert not is_known_domain(config, directory, "renfort.test")
    staff = tmp_path / "agents.csv"
    staff.write_text("adresse;region\nnouvel.agent@renfort.test;ARA\n", encoding="utf-8")
    assert not import_staff(directory, staff, NOW).refused
    assert is_known_domain(config, directory, "renfort.test")


def test_an_answer_is_not_carried_into_the_next_transaction(sqlite_url: str) -> None:
    config = settings()
    with migrated(sqlite_url) as factory, factory() as session:
        with session.begin():
            assert not is_known_domain(config, session, "chu-lyon.test")
        with session.begin():  # an import committed by another process meanwhile
            one_establishment(session, name="CHU", category="CH", rssi="rssi@chu-lyon.test", dsi="dsi@chu-lyon.test",
                              staff="cadre@import.test")
        with session.begin():
            assert is_known_domain(config, session, "chu-lyon.test")
