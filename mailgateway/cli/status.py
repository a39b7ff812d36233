"""``mailgateway status [--json]``: health at a glance, read-only (never takes the daemon's write lock)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta

from mailgateway.clock import Clock, SystemClock
from mailgateway.directory.staff import all_staff
from mailgateway.settings import Settings
from mailgateway.status import DEFAULT_MAILBOX_GRACE, format_text, snapshot, to_json


def run(args: argparse.Namespace, settings: Settings, clock: Clock | None = None) -> int:
    from mailgateway.store.engine import (
        current_revision,
        head_revision,
        make_engine,
        make_sessionmaker,
        reading,
        sqlite_file,
    )

    url = settings.database.url
    path = sqlite_file(url)
    if path is not None:
        if not path.exists():
            print(f"base de données absente : {path} (lancer « mailgateway db upgrade »)", file=sys.stderr)
            return 2
    grace = settings.metrics.mailbox_unhealthy_after_seconds if settings.metrics else DEFAULT_MAILBOX_GRACE
    engine = make_engine(url)
    try:
        revision = current_revision(engine)
        if revision is None:
            print("base de données non initialisée (lancer « mailgateway db upgrade »)", file=sys.stderr)
            return 2
        # A read-only transaction: never takes SQLite's write lock from the running daemon.
        with reading(make_sessionmaker(engine)) as session:
            now = (clock or SystemClock()).now()
            snap = snapshot(session, now, staff=all_staff(settings, session),
                            failures_since=now - timedelta(hours=settings.outbound.staff_failure_window_hours))
    except Exception as exc:  # the operator wants the reason, not a traceback
        print(f"lecture de la base impossible : {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    head = head_revision()
    extra = [] if revision == head else [_schema_problem(revision, head)]
    if getattr(args, "json", False):
        obj = to_json(snap, grace)
        obj["schema"] = {"revision": revision, "head": head}
        obj["problems"] += extra
        sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    else:
        text = format_text(snap, grace)
        if extra:
            text += ("\n" if snap.problems(grace) else "\n\nProblèmes :") + "".join(f"\n  - {p}" for p in extra)
        print(text)
    return 1 if (snap.problems(grace) or extra) else 0


def _schema_problem(revision: str, head: str | None) -> str:
    """Behind (``db upgrade`` helps), or a revision this code does not know: a database migrated
    by a newer version, or by a hotfix since removed (``db upgrade`` would fail; found by an
    outside tester, who was told to run it)."""
    from alembic.script import ScriptDirectory  # only when the revisions differ

    from mailgateway.store.engine import alembic_config

    try:
        known = ScriptDirectory.from_config(alembic_config("sqlite://")).get_revision(revision) is not None
    except Exception:  # unknown, or not a revision at all
        known = False
    if known:
        return f"schéma en retard : {revision} (attendu {head}), lancer « mailgateway db upgrade »"
    return (f"schéma inconnu de cette version : {revision} (attendu {head}) ; base migrée par une autre "
            "version du code : installer celle-ci ou restaurer la sauvegarde d'avant la migration")
