"""``mailgateway bulletin send|status|list`` (README « Command line », a contract).

``send`` without ``--yes`` is a dry run: recipient count and a sample, nothing written. With
``--yes`` the bulletin is created (approved by "cli") and queued in chunks of ``CHUNK``
recipients, each chunk committed: memory stays flat and an interrupted run can be resumed.
The running daemon (or ``outbox flush``) delivers.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from mailgateway.app import build_services
from mailgateway.bulletins.fanout import _approve, _stream, check_tlp, create_bulletin, fan_out
from mailgateway.bulletins.followups import status_counts
from mailgateway.bulletins.roster import bulletin_list, establishments
from mailgateway.cli.common import require_database
from mailgateway.clock import french_datetime
from mailgateway.directory import count_establishments, parse_target
from mailgateway.dispatch.liveness import SenderLiveness, this_process
from mailgateway.errors import InputError
from mailgateway.settings import Settings
from mailgateway.statuses import BULLETIN_STATUS_FR
from mailgateway.store.engine import ensure_schema, make_engine, make_sessionmaker, reading


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.bulletin_cmd == "send":
        return _send(args, settings)
    if args.bulletin_cmd == "status":
        return _status(args, settings)
    if args.bulletin_cmd == "list":
        return _list(args, settings)
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
    # A marking written in the subject or the text that is stricter than --tlp (or than the CLEAR
    # default): « [TLP:RED] Ne pas diffuser » went to every establishment as TLP:CLEAR (outside
    # tester). The author decides, with --tlp; the mail never goes out under a weaker label.
    from mailgateway.mail.tlp import LABELS, find_markings, strictest

    written = strictest(find_markings(f"{args.subject}\n{body}"))
    if written is not None and LABELS.index(written.label) > LABELS.index(tlp):
        raise InputError(f"le bulletin porte le marquage TLP:{written.label} (« {written.raw} ») mais il serait "
                         f"diffusé en TLP:{tlp} : précisez --tlp {written.label} ou retirez ce marquage")
    require_database(settings)
    app = build_services(settings)
    try:
        if not args.yes:
            with reading(app.factory) as session:
                targeted = count_establishments(session, region, target)
                from mailgateway.store.models import Bulletin

                probe = Bulletin(id=0, region=region, target=str(target), subject=args.subject, body=body, tlp=tlp)
                # The rules the sending applies to each address (the TLP marking first): the dry
                # run counts whom ``--yes`` would reach. It said « 4 sur 4 » for an AMBER bulletin
                # that then went to 1, the 3 others refused in log lines only (outside tester).
                allows = app.env.mailer.tlp_gate(session, tlp)
                reachable = refused = 0  # establishments with an address; of them, refused by the rules
                sample: list[dict[str, Any]] = []
                refused_sample: list[dict[str, Any]] = []
                for row in _stream(session, probe):
                    reachable += 1
                    reason = app.env.mailer.address_refusal(row.address.strip().lower(), tlp, allows)
                    if reason is not None:
                        refused += 1
                        if len(refused_sample) < 10:
                            refused_sample.append({**row._asdict(), "reason": reason})
                    elif len(sample) < 10:
                        sample.append(row._asdict())
            recipients = reachable - refused
            if args.json:
                _print_json({"id": None, "dry_run": True, "recipients": recipients, "establishments": targeted,
                             "refused": refused, "target": str(target), "tlp": tlp, "sample": sample,
                             "refused_sample": refused_sample})
            else:
                print(f"Simulation (rien n'est envoyé) : {recipients} établissement(s) destinataire(s) "
                      f"sur {targeted} ciblé(s) — région {region}, cible « {target} », TLP:{tlp}")
                if targeted > reachable:
                    print(f"{targeted - reachable} établissement(s) sans adresse SSI/RSSI/DSI active")
                if refused:
                    print(f"{refused} établissement(s) exclu(s) par les règles d'envoi :")
                    for r in refused_sample:
                        print(f"  {r['finess']}  {r['name']} — {r['reason']}")
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
            bulletin.fan_out_owner = this_process()  # nor resume it at its start while we live:
            # seen alive by a daemon starting meanwhile (PostgreSQL: our advisory lock, taken
            # before the bulletin names us; SQLite: our PID) — dispatch/liveness.py.
            liveness = SenderLiveness(app.factory.kw["bind"], this_process())
            liveness.hold()
            try:
                session.commit()
                if not args.json:
                    # Composing and signing run here, in the foreground (about a minute for 40,000
                    # on 2 CPUs); the daemon sends each chunk as it is committed (an outside tester
                    # was not told).
                    print(f"bulletin {bulletin.id} approuvé : composition, signature et mise en file en cours "
                          "(le démon envoie chaque lot dès qu'il est en file)…", file=sys.stderr, flush=True)
                queued = fan_out(app.env, session, bulletin, checkpoint=lambda s: s.commit())
                session.commit()
            finally:
                liveness.release()
            bulletin_id = bulletin.id
    finally:
        app.close()
    if args.json:
        _print_json({"id": bulletin_id, "recipients": queued})
    else:
        print(f"bulletin {bulletin_id} : {queued} message(s) en file ; le démon (ou « outbox flush ») les envoie")
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:

    wanted = _states(args.state)
    require_database(settings)
    ensure_schema(settings.database.url)
    engine = make_engine(settings.database.url)
    try:
        with reading(make_sessionmaker(engine)) as session:
            counts = status_counts(session, args.id)
            listed = establishments(session, args.id) if counts is not None else []
    finally:
        engine.dispose()
    if counts is None:
        print(f"bulletin inconnu : {args.id}", file=sys.stderr)
        return 2
    listed = [e for e in listed if e["state"] in wanted]
    if args.json:
        _print_json({**counts, "establishments": listed})
        return 0
    print(f"Bulletin {counts['id']} ({bulletin_status_fr(counts['status'], counts['pending'])}) — {counts['subject']} "
          f"[TLP:{counts['tlp']}]")
    print(f"  établissements : {counts['recipients']}   remis : {counts['delivered']}   en attente : "
          f"{counts['pending']}   rebonds/échecs : {counts['bounced']}   accusés de lecture : {counts['acknowledged']}")
    if counts["fallbacks"]:
        print(f"  renvois à un autre contact : {counts['fallbacks']}")
    if counts["refused"]:
        print(f"  refusés (TLP) : {counts['refused']}")
    for dep, c in counts["by_departement"].items():
        print(f"  département {dep} : {c['recipients']} établissement(s), {c['delivered']} remis, "
              f"{c['acknowledged']} accusé(s)")
    for state in STATE_ORDER:
        group = [e for e in listed if e["state"] == state]
        if not group:
            continue
        print(f"{STATE_TITLES[state]} ({len(group)}) :")
        for e in group:
            extra = f" — {e['answer']}" if e["answer"] else ""
            print(f"  {e['finess']}  {e['name']} ({e['departement'] or '?'}) — {e['email']}{extra}")
    return 0


def bulletin_status_fr(status: str, pending: int = 0) -> str:
    """« sent » is stored once every message is queued: while some still wait for the relay
    (a fan-out stopped and resumed, a relay down) the operator reads « en envoi », not « envoyé »."""
    if status == "sent" and pending > 0:
        return BULLETIN_STATUS_FR["sending"]
    return BULLETIN_STATUS_FR.get(status, status)


# The per-establishment lists of ``bulletin status``, in the order staff act on them.
STATE_ORDER = ("bounced", "unreached", "pending", "delivered", "acknowledged")
STATE_TITLES = {
    "bounced": "Rebonds et échecs",
    "unreached": "Non atteints (aucun message envoyé)",
    "pending": "En attente d'envoi",
    "delivered": "Remis, sans accusé de lecture",
    "acknowledged": "Accusés de lecture reçus",
}
# ``--state``: one of the states, or « unacknowledged » for every establishment that has not replied.
STATE_CHOICES = (*STATE_ORDER, "unacknowledged")


def _states(value: str | None) -> set[str]:
    if not value:
        return set(STATE_ORDER)
    if value == "unacknowledged":
        return set(STATE_ORDER) - {"acknowledged"}
    return {value}


def _list(args: argparse.Namespace, settings: Settings) -> int:
    require_database(settings)
    ensure_schema(settings.database.url)
    engine = make_engine(settings.database.url)
    try:
        with reading(make_sessionmaker(engine)) as session:
            rows = bulletin_list(session, limit=args.limit)
    finally:
        engine.dispose()
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'ID':>5}  {'ÉTAT':<10} {'CRÉÉ LE':<18}  {'RÉGION':<6} {'TLP':<12} {'ÉTAB.':>6} {'REMIS':>6} "
          f"{'ACCUSÉS':>7} {'REBONDS':>7} {'ATTENTE':>7}  OBJET")
    for r in rows:
        created = french_datetime(datetime.fromisoformat(r["created_at"])) if r["created_at"] else "—"
        delivered = r["delivered"] + r["acknowledged"]
        state = bulletin_status_fr(r["status"], r["pending"])
        print(f"{r['id']:>5}  {state:<10} {created:<18}  {r['region']:<6} {r['tlp']:<12} "
              f"{r['recipients']:>6} "
              f"{delivered:>6} {r['acknowledged']:>7} {r['bounced'] + r['unreached']:>7} {r['pending']:>7}  "
              f"{r['subject']}")
    return 0
