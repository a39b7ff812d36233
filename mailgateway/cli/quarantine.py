"""``mailgateway quarantine list|show ID|release ID``: the quarantine on the command line.

``list [--region R] [--json]`` lists quarantined messages, newest first; ``show ID [--json]`` prints
a message's headers (decoded, as text), its reason and what was done about it; ``release ID``
puts it back to processing (the running daemon takes it within seconds), recorded with the
operator's login in ``quarantine_log`` (processing/quarantine.py). Unknown ID: exit 2.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import TYPE_CHECKING

from mailgateway.cli.common import database
from mailgateway.clock import SystemClock, french_datetime
from mailgateway.settings import Settings

if TYPE_CHECKING:  # imported when the command runs (``mailgateway --help`` stays fast)
    pass




def _operator() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name (containers): still an audit entry
        return "cli"


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mailgateway.processing import quarantine
    from mailgateway.store.engine import reading, transaction
    from mailgateway.store.models import InboundMessage

    with database(settings) as factory:
        if args.quarantine_cmd == "list":
            region = args.region.upper() if args.region else None
            with reading(factory) as session:
                found = quarantine.list_quarantined(session, regions={region} if region else None, limit=args.limit)
            if args.json:
                for m in found:
                    sys.stdout.write(json.dumps(m.to_json(), ensure_ascii=False) + "\n")
                return 0
            if not found:
                print("quarantaine vide")
            else:  # a header line, as the other lists have (an outside tester)
                print(f"{'ID':>7}  {'REÇU LE':<18}  {'RÉG.':<4} {'EXPÉDITEUR':<40}  OBJET  — MOTIF")
            for m in found:  # what senders wrote is printable already (quarantine.safe_text)
                print(f"{m.id:>7}  {french_datetime(m.received_at)}  {m.region or '-':<4} "
                      f"{(m.sender or m.envelope_from or '-')[:40]:<40}  {m.subject[:50]}  — {m.reason_fr[:120]}")
            return 0
        if args.quarantine_cmd == "show":
            with reading(factory) as session:
                row = session.get(InboundMessage, args.id)
                view = quarantine.describe(row) if row is not None and row.status == "quarantined" else None
                # Read here: the session's rollback at the end of ``reading`` expires its rows (an
                # outside tester: « quarantine show » crashed on every message with a history).
                log = [(e.action, e.actor, e.at, e.detail)
                       for e in (quarantine.history(session, args.id) if view is not None else [])]
            if view is None:
                print(f"message inconnu en quarantaine : {args.id}", file=sys.stderr)
                return 2
            if args.json:
                obj = {**view.to_json(), "history": [{"action": action, "actor": actor, "at": at.isoformat(),
                                                      "detail": detail} for action, actor, at, detail in log]}
                sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
                return 0
            print(f"Message n° {view.id} en quarantaine"
                  + (f" depuis le {french_datetime(view.quarantined_at)}" if view.quarantined_at else ""))
            for label, value in (("Reçu le", french_datetime(view.received_at)), ("Source", view.source),
                                 ("Région", view.region or "inconnue"), ("Expéditeur (enveloppe)", view.envelope_from),
                                 ("De", view.sender), ("À", view.to), ("Objet", view.subject), ("Date", view.date),
                                 ("Message-ID", view.message_id), ("Taille", f"{view.size} octets"),
                                 ("Essais de traitement", str(view.attempts)), ("Motif", view.reason_fr)):
                print(f"  {label:<24}: {value or '—'}")
            for action, actor, at, _detail in log:
                what = "agents avertis" if action == quarantine.NOTIFIED else "libéré"
                print(f"  {french_datetime(at)} : {what} ({actor})")
            print(f"Pour le remettre en traitement : « mailgateway quarantine release {view.id} »")
            return 0
        # release
        with transaction(factory) as session:
            try:
                before = quarantine.release(session, args.id, actor=_operator(), now=SystemClock().now())
            except quarantine.QuarantineError as exc:
                print(str(exc), file=sys.stderr)
                return 2
        print(f"message {before.id} remis en traitement (motif de la quarantaine : {before.reason_fr}) ; "
              "le démon le traite dans les secondes qui viennent")
        return 0
