"""``mailgateway bulletin send|status`` (README « Command line », a contract).

``send`` without ``--yes`` is a dry run: recipient count and a sample, nothing written. With
``--yes`` the bulletin is created (approved by "cli") and queued in chunks of ``CHUNK``
recipients, each chunk committed: memory stays flat and an interrupted run can be resumed.
The running daemon (or ``outbox flush``) delivers.
"""

from __future__ import annotations

import argparse
import json
import sys
from itertools import islice
from pathlib import Path
from typing import Any

from mailgateway.app import build_services
from mailgateway.bulletins.fanout import _approve, _stream, check_tlp, create_bulletin, fan_out
from mailgateway.bulletins.followups import status_counts
from mailgateway.directory import count_establishments, count_recipients, parse_target
from mailgateway.errors import InputError
from mailgateway.settings import Settings
from mailgateway.store.engine import ensure_schema, make_engine, make_sessionmaker, reading


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.bulletin_cmd == "send":
        return _send(args, settings)
    if args.bulletin_cmd == "status":
        return _status(args, settings)
    raise InputError(f"sous-commande inconnue : {args.bulletin_cmd}")


def _send(args: argparse.Namespace, settings: Settings) -> int:

    try:
        body = Path(args.body_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{args.body_file} : lecture impossible ({exc})") from exc
    region = args.region.strip().upper()
    if settings.region(region) is None:
        raise InputError(f"région « {args.region} » absente de la configuration")
    target = parse_target(args.target)
    target.check_region(region)
    tlp = check_tlp(args.tlp)
    app = build_services(settings)
    try:
        if not args.yes:
            with reading(app.factory) as session:
                recipients = count_recipients(session, region, target)
                targeted = count_establishments(session, region, target)
                from mailgateway.store.models import Bulletin

                probe = Bulletin(id=0, region=region, target=str(target), subject=args.subject, body=body, tlp=tlp)
                sample = [r._asdict() for r in islice(_stream(session, probe), 10)]
            if args.json:
                _print_json({"id": None, "dry_run": True, "recipients": recipients, "establishments": targeted,
                             "target": str(target), "tlp": tlp, "sample": sample})
            else:
                print(f"Simulation (rien n'est envoyé) : {recipients} établissement(s) destinataire(s) "
                      f"sur {targeted} ciblé(s) — région {region}, cible « {target} », TLP:{tlp}")
                if targeted > recipients:
                    print(f"{targeted - recipients} établissement(s) sans adresse SSI/RSSI/DSI active")
                print("Échantillon :")
                for r in sample:
                    print(f"  {r['finess']}  {r['name']} ({r['departement'] or '?'}) — {r['address']} [{r['role']}]")
                print("Relancez avec --yes pour diffuser.")
            return 0
        with app.factory() as session:
            now = app.clock.now()
            bulletin = create_bulletin(session, settings, region=region, target=target, subject=args.subject,
                                       body=body, tlp=tlp, author="cli", now=now)
            _approve(bulletin, "cli", now)
            bulletin.status = "sending"  # this process fans it out; the daemon must not claim it
            session.commit()
            queued = fan_out(app.env, session, bulletin, checkpoint=lambda s: s.commit())
            session.commit()
            bulletin_id = bulletin.id
    finally:
        app.close()
    if args.json:
        _print_json({"id": bulletin_id, "recipients": queued})
    else:
        print(f"bulletin {bulletin_id} : {queued} message(s) en file ; le démon (ou « outbox flush ») les envoie")
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:

    ensure_schema(settings.database.url)
    engine = make_engine(settings.database.url)
    try:
        with reading(make_sessionmaker(engine)) as session:
            counts = status_counts(session, args.id)
    finally:
        engine.dispose()
    if counts is None:
        print(f"bulletin inconnu : {args.id}", file=sys.stderr)
        return 2
    if args.json:
        _print_json(counts)
        return 0
    print(f"Bulletin {counts['id']} ({counts['status']}) — {counts['subject']} [TLP:{counts['tlp']}]")
    print(f"  établissements : {counts['recipients']}   remis : {counts['delivered']}   en attente : "
          f"{counts['pending']}   rebonds/échecs : {counts['bounced']}   accusés de lecture : {counts['acknowledged']}")
    if counts["fallbacks"]:
        print(f"  renvois à un autre contact : {counts['fallbacks']}")
    if counts["refused"]:
        print(f"  refusés (TLP) : {counts['refused']}")
    for dep, c in counts["by_departement"].items():
        print(f"  département {dep} : {c['recipients']} établissement(s), {c['delivered']} remis, "
              f"{c['acknowledged']} accusé(s)")
    return 0
