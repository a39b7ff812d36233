"""Migration 0003 (ROUTING): messages stored before it get their per-region deduplication key, and
the same bytes may then be stored once per receiving region (docs/guarantees.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic import command
from sqlalchemy import text

from mailgateway.store.engine import alembic_config, make_engine, upgrade


def test_existing_messages_get_a_dedup_key_and_copies_per_region_are_allowed(db_url: str) -> None:
    command.upgrade(alembic_config(db_url), "0002")
    engine = make_engine(db_url)
    try:
        insert = text("INSERT INTO inbound_messages (sha256, raw, size, source, rcpt_tos, region, received_at, "
                      "status, attempts) VALUES (:sha, :raw, 1, 'smtp', '[]', :region, :at, 'processed', 1)")
        with engine.begin() as conn:
            conn.execute(insert, {"sha": "a" * 64, "raw": b"x", "region": "PDL", "at": "2026-11-27 09:00:00+00:00"})
            conn.execute(insert, {"sha": "b" * 64, "raw": b"y", "region": None, "at": "2026-11-27 09:00:00+00:00"})
        upgrade(db_url)
        with engine.begin() as conn:
            keys = [r[0] for r in conn.execute(text("SELECT dedup_key FROM inbound_messages ORDER BY id"))]
            assert keys == ["a" * 64 + ":PDL", "b" * 64 + ":-"]
            conn.execute(text("INSERT INTO inbound_messages (sha256, dedup_key, raw, size, source, rcpt_tos, region, "
                              "received_at, status, attempts) VALUES (:sha, :key, :raw, 1, 'smtp', '[]', 'ARA', :at, "
                              "'received', 0)"),
                         {"sha": "a" * 64, "key": "a" * 64 + ":ARA", "raw": b"x", "at": "2026-11-27 09:01:00+00:00"})
        # Back below 0003 with a message stored for two regions: refused, nothing lost. (In a child
        # process: Alembic's env disposes its engine only after a migration that succeeded.)
        script = ("import sys; from alembic import command; from mailgateway.store.engine import alembic_config; "
                  "command.downgrade(alembic_config(sys.argv[1]), '0002')")
        refused = subprocess.run([sys.executable, "-c", script, db_url], capture_output=True, text=True,
                                 cwd=Path(__file__).resolve().parents[2], timeout=120)
        assert refused.returncode != 0 and "stored for several regions" in refused.stderr
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM inbound_messages")).scalar() == 3
    finally:
        engine.dispose()


def test_a_database_in_use_upgrades_although_its_messages_are_referenced(sqlite_url: str) -> None:
    """A site's SQLite database at 0002 holds messages referenced by replay keys, source keys and
    cases: rebuilding ``inbound_messages`` (SQLite alters a table by copying it) must not trip over
    those references — it did: « FOREIGN KEY constraint failed » at DROP TABLE — and must leave
    every reference intact."""
    command.upgrade(alembic_config(sqlite_url), "0002")
    engine = make_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO inbound_messages (sha256, raw, size, source, rcpt_tos, region, received_at, "
                              "status, attempts) VALUES (:sha, :raw, 1, 'smtp', '[]', 'ARA', :at, 'processed', 1)"),
                         {"sha": "c" * 64, "raw": b"x", "at": "2026-11-27 09:00:00+00:00"})
            conn.execute(text("INSERT INTO replay_keys (key, inbound_id, at) VALUES ('ARA|mid:<x@y>', 1, :at)"),
                         {"at": "2026-11-27 09:00:00+00:00"})
            conn.execute(text("INSERT INTO inbound_source_keys (key, inbound_id) VALUES ('imap:ARA:INBOX:1:1', 1)"))
        upgrade(sqlite_url)
        with engine.begin() as conn:
            assert conn.execute(text("PRAGMA foreign_key_check")).fetchall() == []
            assert conn.execute(text("SELECT inbound_id FROM replay_keys")).scalar() == 1
            assert conn.execute(text("SELECT dedup_key FROM inbound_messages")).scalar() == "c" * 64 + ":ARA"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1  # enforced again for the daemon
    finally:
        engine.dispose()
