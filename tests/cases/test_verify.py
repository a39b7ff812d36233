"""``mailgateway cases verify`` covers everything that matters (docs/guarantees.md, item 7).

A real database is made by processing real mail (declarations, staff commands, a confirmed close,
a merge, a follow-up case); each test then edits a copy of it with sqlite3, behind the gateway's
back, and runs ``mailgateway cases verify`` (in this process; as a subprocess in the test
that shows both report alike). The edits are the ones the issue
showed going unnoticed: case rows, re-pointed links, a truncated tail, a deleted case, and data
that cannot be decoded.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.cases import service
from mailgateway.cases.timeline import GENESIS, append_event, event_hash
from mailgateway.cases.views import verify_cases
from mailgateway.cli import main
from mailgateway.store.engine import transaction
from mailgateway.store.models import AuditHead, AuditLedger, Case, CaseEvent
from tests.support import casemail
from tests.support.casegateway import make_gateway

PROJECT_ROOT = Path(__file__).resolve().parents[2]
AT = datetime(2026, 11, 27, 8, 30, tzinfo=UTC)


# --- a database made by the real process --------------------------------------------------------


def _token(text: str) -> str:
    found = re.search(r"#confirmer ([0-9a-f]{12})", text)
    assert found is not None, text
    return found.group(1)


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A SQLite database after a full process; returns its path and the references by role."""
    directory = tmp_path_factory.mktemp("processed")
    db = directory / "mailgateway.db"
    refs: dict[str, str] = {}
    for gw in make_gateway(f"sqlite:///{db}", reply_to_closed="link"):
        refs["assigned"] = gw.declare(1)
        gw.command(refs["assigned"], "#assigner moi\n#qualifier significatif\n#note appelé le RSSI\n")
        gw.clock.advance(hours=5)
        refs["duplicate"] = gw.declare(2)  # same FINESS within the window: linked, then merged
        gw.command(refs["duplicate"], f"#fusionner {refs['assigned']}\n")
        refs["grave"] = gw.declare(3, finess="440000289")
        gw.command(refs["grave"], "#qualifier grave\n#clore\n")
        gw.feed(casemail.staff_mail(f"#confirmer {_token(gw.receipt_text())}\n", subject="ok"))
        refs["closed"] = gw.declare(4, finess="130000011")
        gw.command(refs["closed"], "#clore\n")
        ack = gw.last("accuse_reception", "dsi@chu.test")
        follow_up = gw.feed(casemail.sign(casemail.message(
            sender="dsi@chu.test", to="ssi-ara@ars.test", subject=f"RE: [{refs['closed']}]",
            body="Le problème est revenu.\n", in_reply_to=ack.message_id), casemail.establishment_key()))
        assert follow_up.case_ref
        refs["follow_up"] = follow_up.case_ref
        assert gw.case(refs["grave"]).status == "CLOS"
        assert gw.case(refs["duplicate"]).merged_into_id == gw.case(refs["assigned"]).id
        assert gw.case(refs["follow_up"]).linked_case_id == gw.case(refs["closed"]).id
    return db, refs


@pytest.fixture
def copy(processed: tuple[Path, dict[str, str]], tmp_path: Path) -> Iterator[Path]:
    """A private copy of the processed database and a configuration naming it."""
    db = tmp_path / "mailgateway.db"
    with sqlite3.connect(processed[0]) as source, sqlite3.connect(db) as target:
        source.backup(target)
    (tmp_path / "mailgateway.toml").write_text(
        f'[database]\nurl = "sqlite:///{db}"\n\n[[regions]]\ncode = "ARA"\nname = "Auvergne-Rhône-Alpes"\n'
        'address = "ssi-ara@ars.test"\n', encoding="utf-8")
    yield db


@pytest.fixture
def refs(processed: tuple[Path, dict[str, str]]) -> dict[str, str]:
    return processed[1]


def verify_cli(db: Path, *ref: str) -> subprocess.CompletedProcess[str]:
    """``mailgateway cases verify`` as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "mailgateway", "cases", "verify", *ref,
                           "-c", str(db.with_name("mailgateway.toml"))],
                          capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)


def verify(db: Path, *ref: str) -> subprocess.CompletedProcess[str]:
    """The same command run in this process: its parser, settings, handler and output, but no
    logging setup (this process's is pytest's) and no interpreter start (≈1 s of CPU; the edits
    below run it some forty times). A traceback here fails the test as it would show there;
    test_the_command_line_reports_as_the_in_process_run_does compares the two."""
    out, err = io.StringIO(), io.StringIO()
    argv = ["cases", "verify", *ref, "-c", str(db.with_name("mailgateway.toml"))]
    with mock.patch("mailgateway.logs.setup_logging"), redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return subprocess.CompletedProcess(["mailgateway", *argv], code, out.getvalue(), err.getvalue())


def sql(db: Path, statement: str, *params: object) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(statement, params)


def case_id(db: Path, reference: str) -> int:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT id FROM cases WHERE reference = ?", (reference,)).fetchone()
    return int(row[0])


def assert_detected(result: subprocess.CompletedProcess[str], reference: str, *words: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "intacte" not in result.stdout
    first = result.stderr.splitlines()[0]
    assert reference in first, result.stderr
    for word in words:
        assert word in first, result.stderr


# --- the untouched database -----------------------------------------------------------------------


def test_the_command_line_reports_as_the_in_process_run_does(copy: Path, refs: dict[str, str]) -> None:
    for edit in (None, "UPDATE cases SET status = 42 WHERE reference = ?"):
        if edit:
            sql(copy, edit, refs["assigned"])
        for ref in ((), (refs["assigned"],)):
            here, there = verify(copy, *ref), verify_cli(copy, *ref)
            assert (there.returncode, there.stdout, there.stderr) == (here.returncode, here.stdout, here.stderr)
    assert there.returncode == 1 and "Traceback" not in there.stderr


def test_an_untouched_database_after_a_full_process_is_intact(copy: Path, refs: dict[str, str]) -> None:
    result = verify(copy)
    assert result.returncode == 0, result.stderr
    assert "chaîne d'audit intacte (5 dossier(s) vérifié(s))" in result.stdout
    assert re.search(r"registre d'audit ARA : \d+ entrée\(s\), tête [0-9a-f]{64}", result.stdout)
    for ref in refs.values():
        assert verify(copy, ref).returncode == 0


def test_every_event_of_the_process_seals_the_case_state(copy: Path) -> None:
    with sqlite3.connect(copy) as conn:
        unsealed = conn.execute("SELECT count(*) FROM case_events WHERE state_hash IS NULL").fetchone()[0]
        anchored = conn.execute("SELECT count(DISTINCT case_reference) FROM audit_ledger").fetchone()[0]
    assert unsealed == 0 and anchored == 5


# --- case rows edited behind the gateway's back ---------------------------------------------------

EDITS = {
    "status": "'CLOS'", "severity": "'SANS_SUITE'", "assignee": "'intrus@example.test'",
    "declarant": "'phishing@example.test'", "tlp": "'CLEAR'", "fields": "'{\"declaration\": {}}'",
    "title": "'autre titre'", "finess": "'440000289'", "establishment": "'Clinique'", "nature": "'x'",
    "incident_type": "'AUTRE'", "category": "'LBM'", "origin_message_id": "'<forged@example.test>'",
    "kind": "'alert'", "region": "'PDL'",
}


@pytest.mark.parametrize("column", sorted(EDITS))
def test_an_audited_column_edited_in_sqlite_is_detected(copy: Path, refs: dict[str, str], column: str) -> None:
    sql(copy, f"UPDATE cases SET {column} = {EDITS[column]} WHERE reference = ?", refs["assigned"])
    assert_detected(verify(copy), refs["assigned"], "modifié hors chronologie")


def test_an_edited_row_is_detected_by_verify_ref(copy: Path, refs: dict[str, str]) -> None:
    sql(copy, "UPDATE cases SET status = 'CLOS' WHERE reference = ?", refs["assigned"])
    assert_detected(verify(copy, refs["assigned"]), refs["assigned"], "modifié hors chronologie")
    assert verify(copy, refs["grave"]).returncode == 0
    unknown = verify(copy, "SSI-ARA-2026-0999")
    assert unknown.returncode == 2 and "dossier inconnu" in unknown.stderr


@pytest.mark.parametrize("column", ["merged_into_id", "linked_case_id"])
def test_a_re_pointed_link_is_detected(copy: Path, refs: dict[str, str], column: str) -> None:
    sql(copy, f"UPDATE cases SET {column} = ? WHERE reference = ?", case_id(copy, refs["grave"]), refs["duplicate"])
    assert_detected(verify(copy), refs["duplicate"], "modifié hors chronologie")


def test_a_removed_merge_is_detected(copy: Path, refs: dict[str, str]) -> None:
    sql(copy, "UPDATE cases SET merged_into_id = NULL, status = 'PRIS_EN_COMPTE' WHERE reference = ?",
        refs["duplicate"])
    assert_detected(verify(copy), refs["duplicate"])


def test_an_edited_chain_head_on_the_row_is_detected(copy: Path, refs: dict[str, str]) -> None:
    sql(copy, "UPDATE cases SET event_count = event_count + 1 WHERE reference = ?", refs["grave"])
    assert_detected(verify(copy), refs["grave"], "fin de chaîne supprimée")


# --- truncated tails and deleted cases --------------------------------------------------------------


def _truncate(db: Path, reference: str, keep: int) -> None:
    """Delete the events after ``keep`` and make the row agree: what the old verify accepted."""
    cid = case_id(db, reference)
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM case_events WHERE case_id = ? AND seq > ?", (cid, keep))
        (last_hash,) = conn.execute("SELECT hash FROM case_events WHERE case_id = ? AND seq = ?",
                                    (cid, keep)).fetchone()
        conn.execute("UPDATE cases SET event_count = ?, last_event_hash = ? WHERE id = ?", (keep, last_hash, cid))


def test_the_last_event_deleted_is_detected(copy: Path, refs: dict[str, str]) -> None:
    cid = case_id(copy, refs["grave"])
    sql(copy, "DELETE FROM case_events WHERE case_id = ? AND seq = (SELECT max(seq) FROM case_events "
        "WHERE case_id = ?)", cid, cid)
    assert_detected(verify(copy), refs["grave"])


@pytest.mark.parametrize("dropped", [1, 3])
def test_a_truncated_tail_with_a_consistent_row_is_detected(copy: Path, refs: dict[str, str], dropped: int) -> None:
    with sqlite3.connect(copy) as conn:
        (count,) = conn.execute("SELECT event_count FROM cases WHERE reference = ?", (refs["grave"],)).fetchone()
    _truncate(copy, refs["grave"], count - dropped)
    assert_detected(verify(copy), refs["grave"])
    assert_detected(verify(copy, refs["grave"]), refs["grave"])


def _delete_case(db: Path, reference: str) -> None:
    cid = case_id(db, reference)
    with sqlite3.connect(db) as conn:  # foreign keys are off in a plain sqlite3 connection
        for table in ("case_events", "indicators", "confirmations", "reminders", "auto_reply_log"):
            conn.execute(f"DELETE FROM {table} WHERE case_id = ?", (cid,))
        conn.execute("UPDATE cases SET linked_case_id = NULL WHERE linked_case_id = ?", (cid,))
        conn.execute("DELETE FROM cases WHERE id = ?", (cid,))


def test_a_deleted_case_is_detected(copy: Path, refs: dict[str, str]) -> None:
    _delete_case(copy, refs["grave"])
    assert_detected(verify(copy), refs["grave"], "supprimé")
    assert_detected(verify(copy, refs["grave"]), refs["grave"], "supprimé")  # not "dossier inconnu" (exit 2)


def test_a_deleted_case_is_detected_even_with_its_ledger_entries(copy: Path, refs: dict[str, str]) -> None:
    """Gaps in case numbers: the sequence issued the number, the case is gone."""
    _delete_case(copy, refs["grave"])
    sql(copy, "DELETE FROM audit_ledger WHERE case_reference = ?", refs["grave"])
    result = verify(copy)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{refs['grave']}: dossier manquant" in result.stderr
    assert "registre d'audit ARA" in result.stderr  # and the ledger chain is broken


def test_the_last_case_deleted_with_its_number_is_detected(copy: Path, refs: dict[str, str]) -> None:
    last = refs["follow_up"]
    _delete_case(copy, last)
    sql(copy, "UPDATE case_sequences SET last = last - 1")
    sql(copy, "UPDATE cases SET linked_case_id = NULL WHERE reference = ?", refs["closed"])
    assert_detected(verify(copy), refs["closed"])  # the link it sealed is gone
    assert f"{last}: dossier supprimé" in verify(copy).stderr


def test_a_case_added_outside_the_gateway_is_detected(copy: Path, refs: dict[str, str]) -> None:
    with sqlite3.connect(copy) as conn:
        conn.execute("INSERT INTO cases (reference, region, kind, status, severity, title, fields, opened_at, "
                     "updated_at, event_count) SELECT 'SSI-ARA-2026-0099', region, kind, status, severity, title, "
                     "fields, opened_at, updated_at, 0 FROM cases WHERE reference = ?", (refs["grave"],))
    result = verify(copy)
    assert result.returncode == 1
    assert "SSI-ARA-2026-0099: " in result.stderr


# --- data that cannot be decoded ----------------------------------------------------------------------

CORRUPTIONS = [
    ("cases", "fields", "'{pas du json'"),
    ("cases", "fields", "'[1, 2]'"),
    ("cases", "status", "42"),
    ("cases", "merged_into_id", "'abc'"),
    ("cases", "event_count", "'beaucoup'"),
    ("case_events", "data", "'{\"texte\": '"),
    ("case_events", "at", "'hier soir'"),
    ("case_events", "seq", "'deux'"),
]


@pytest.mark.parametrize(("table", "column", "value"), CORRUPTIONS)
def test_undecodable_data_is_reported_as_altered_without_a_traceback(
        copy: Path, refs: dict[str, str], table: str, column: str, value: str) -> None:
    cid = case_id(copy, refs["assigned"])
    where = "id = ?" if table == "cases" else "case_id = ? AND seq = 2"
    sql(copy, f"UPDATE {table} SET {column} = {value} WHERE {where}", cid)
    for result in (verify(copy), verify(copy, refs["assigned"])):
        assert_detected(result, refs["assigned"])
        assert "illisible" in result.stderr or "modifié" in result.stderr or "manquant" in result.stderr


def test_a_corrupt_ledger_entry_is_reported(copy: Path) -> None:
    sql(copy, "UPDATE audit_ledger SET event_seq = 'x' WHERE seq = 2")
    result = verify(copy)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "registre d'audit ARA: entrée 2 illisible" in result.stderr


# --- databases from before the audit ledger ------------------------------------------------------------


def _to_legacy(db: Path) -> None:
    """What a database written before migration 0002 holds: unsealed events, empty ledger."""
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM audit_ledger")
        conn.execute("DELETE FROM audit_heads")
        for cid, ref in conn.execute("SELECT id, reference FROM cases").fetchall():
            prev = GENESIS
            rows = conn.execute("SELECT id, seq, at, actor, type, data FROM case_events WHERE case_id = ? "
                                "ORDER BY seq", (cid,)).fetchall()
            for event_id, seq, at, actor, type_, data in rows:
                when = datetime.fromisoformat(at).replace(tzinfo=UTC)
                new = event_hash(prev, ref, seq, when, actor, type_, json.loads(data))
                conn.execute("UPDATE case_events SET prev_hash = ?, hash = ?, state_hash = NULL WHERE id = ?",
                             (prev, new, event_id))
                prev = new
            conn.execute("UPDATE cases SET last_event_hash = ? WHERE id = ?", (prev, cid))


def test_a_legacy_database_still_verifies_and_is_sealed_by_its_next_event(
        copy: Path, refs: dict[str, str]) -> None:
    _to_legacy(copy)
    assert verify(copy).returncode == 0, verify(copy).stderr
    # The legacy chains are still checked...
    sql(copy, "UPDATE case_events SET actor = 'intrus@example.test' WHERE seq = 2 AND case_id = ?",
        case_id(copy, refs["grave"]))
    assert_detected(verify(copy), refs["grave"], "événement 2")


def test_a_legacy_case_row_is_covered_from_its_next_event(copy: Path, refs: dict[str, str]) -> None:
    _to_legacy(copy)
    for gw in make_gateway(f"sqlite:///{copy}"):
        gw.command(refs["assigned"], "#note après la mise à jour\n", subject=f"RE: [{refs['assigned']}] suivi")
    assert verify(copy).returncode == 0, verify(copy).stderr
    sql(copy, "UPDATE cases SET severity = 'GRAVE' WHERE reference = ?", refs["assigned"])
    assert_detected(verify(copy), refs["assigned"], "modifié hors chronologie")


# --- the ORM safety net, and both engines -------------------------------------------------------------


def _new_case(s: Session, number: int, region: str = "ARA") -> Case:
    case = Case(reference=f"SSI-{region}-2026-{number:04d}", region=region, kind="incident", status="RECU",
                title=f"cas {number}", opened_at=AT, updated_at=AT, fields={"declaration": {"n": number}},
                event_count=0)
    s.add(case)
    s.flush()
    append_event(s, case, type="message_recu", actor="dsi@chu.test", at=AT, data={"n": number})
    return case


def _numbered(factory: sessionmaker[Session], count: int) -> None:
    from mailgateway.cases.reference import next_reference

    with transaction(factory) as s:
        for _ in range(count):
            number = int(next_reference(s, "ARA", 2026).rsplit("-", 1)[1])
            _new_case(s, number)


def test_a_column_changed_through_the_orm_without_an_event_is_recorded(
        sqlite_factory: sessionmaker[Session]) -> None:
    _numbered(sqlite_factory, 1)
    with transaction(sqlite_factory) as s:
        case = s.scalars(select(Case)).one()
        case.assignee = "agent@ars.test"  # a writer that forgot its event
    with sqlite_factory() as s:
        events = s.scalars(select(CaseEvent).order_by(CaseEvent.seq)).all()
        assert [e.type for e in events] == ["message_recu", "etat"]
        assert events[-1].data == {"champs": ["assignee"]} and events[-1].actor == "passerelle"
        assert verify_cases(s, None) == ([], 1)


def test_events_appended_before_the_columns_they_describe_seal_the_final_state(
        sqlite_factory: sessionmaker[Session]) -> None:
    """Processing appends "message_recu" and then fills the declaration in: no extra event."""
    _numbered(sqlite_factory, 1)
    with transaction(sqlite_factory) as s:
        case = s.scalars(select(Case)).one()
        append_event(s, case, type="statut", actor="agent@ars.test", at=AT, data={"vers": "PRIS_EN_COMPTE"})
        case.status = "PRIS_EN_COMPTE"
        case.declarant = "dsi@chu.test"
    with sqlite_factory() as s:
        assert [e.type for e in s.scalars(select(CaseEvent).order_by(CaseEvent.seq))] == ["message_recu", "statut"]
        assert verify_cases(s, None) == ([], 1)


def test_tampering_is_detected_on_both_engines(db_factory: sessionmaker[Session]) -> None:
    _numbered(db_factory, 4)
    with transaction(db_factory) as s:
        one, two, three, four = s.scalars(select(Case).order_by(Case.id)).all()
        service.assign(s, one, "agent@ars.test", actor="agent@ars.test", at=AT)
        service.link(s, one, two, type="doublon_possible", actor="passerelle", at=AT)
        service.merge(s, two, one, actor="agent@ars.test", at=AT)
        service.close(s, three, actor="agent@ars.test", at=AT)
    with db_factory() as s:
        assert verify_cases(s, None) == ([], 4)
    refs = ["SSI-ARA-2026-0001", "SSI-ARA-2026-0002", "SSI-ARA-2026-0003", "SSI-ARA-2026-0004"]

    def problems() -> list[str]:
        with db_factory() as s:
            return [str(p) for p in verify_cases(s, None)[0]]

    with transaction(db_factory) as s:  # Core statements: no ORM, no event
        s.execute(update(Case).where(Case.reference == refs[0]).values(assignee="intrus@example.test"))
    assert problems()[0].startswith(f"{refs[0]}: dossier modifié hors chronologie")
    with transaction(db_factory) as s:
        s.execute(update(Case).where(Case.reference == refs[0]).values(assignee="agent@ars.test"))
        s.execute(update(Case).where(Case.reference == refs[1]).values(merged_into_id=four.id))
    assert problems()[0].startswith(f"{refs[1]}: dossier modifié hors chronologie")
    with transaction(db_factory) as s:
        s.execute(update(Case).where(Case.reference == refs[1]).values(merged_into_id=one.id))
        s.execute(delete(CaseEvent).where(CaseEvent.case_id == four.id))
        s.execute(delete(Case).where(Case.id == four.id))
    assert problems() == [f"{refs[3]}: dossier supprimé : présent au registre d'audit, absent de la base"]
    with db_factory() as s:
        heads = s.scalars(select(AuditHead)).all()
        assert [(h.region, h.seq) for h in heads] == [("ARA", s.scalar(select(AuditLedger.seq).order_by(
            AuditLedger.seq.desc()).limit(1)))]


def test_ledger_hash_is_sha256_of_the_previous_one_and_the_entry(sqlite_factory: sessionmaker[Session]) -> None:
    from mailgateway.cases.timeline import ledger_hash

    _numbered(sqlite_factory, 1)
    with sqlite_factory() as s:
        entry = s.scalars(select(AuditLedger)).one()
        body = json.dumps({"region": "ARA", "seq": 1, "case": entry.case_reference, "event_seq": 1,
                           "event_hash": entry.event_hash}, sort_keys=True, separators=(",", ":")).encode()
        assert entry.prev_hash == GENESIS
        assert entry.hash == hashlib.sha256(GENESIS.encode() + body).hexdigest() == ledger_hash(
            GENESIS, "ARA", 1, entry.case_reference, 1, entry.event_hash)


def test_concurrent_transactions_append_to_the_ledger_in_turn(db_factory: sessionmaker[Session]) -> None:
    """Several instances share a database: the ledger head is locked, entries never collide."""
    import threading

    _numbered(db_factory, 4)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    # PostgreSQL: all four transactions are open when they append (SQLite: one writer at a time).
    inside = db_factory.kw["bind"].dialect.name == "postgresql"

    def work(number: int) -> None:
        try:
            for round_ in range(5):
                if round_ == 0 and not inside:
                    barrier.wait(timeout=30)
                with transaction(db_factory) as s:
                    case = s.scalars(select(Case).where(Case.reference == f"SSI-ARA-2026-{number:04d}")).one()
                    if round_ == 0 and inside:
                        barrier.wait(timeout=30)
                    append_event(s, case, type="note", actor="agent@ars.test", at=AT, data={"n": round_})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    with db_factory() as s:
        assert verify_cases(s, None) == ([], 4)
        assert s.scalars(select(AuditHead.seq)).one() == 4 + 4 * 5
