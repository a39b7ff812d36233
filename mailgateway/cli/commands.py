"""Operator command line (README, "Command line": a contract).

Exit codes: 0 success, 1 a check failed (``cases verify``), 2 bad input or configuration with one
line per problem on stderr. Every command takes ``-c/--config`` (default ``$MAILGATEWAY_CONFIG``,
then ``config/mailgateway.example.toml``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailgateway import __version__
from mailgateway.cli.common import database as _database
from mailgateway.errors import ConfigError, InputError, MailgatewayError
from mailgateway.settings import Settings, config_path, load_settings

if TYPE_CHECKING:  # the CLI imports heavy modules lazily, per command
    pass

Handler = Callable[[argparse.Namespace, Settings], int]


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(config_path(args.config))




def _read_inputs(files: Sequence[str]) -> tuple[list[tuple[str, bytes]], list[str]]:
    """The files that could be read, in order, and one line per file that could not (§5 of the
    design: « a one-line reason per problem »). An unreadable file no longer hides the others:
    ``parse a.eml missing.eml b.eml`` printed nothing for a.eml and b.eml (outside tester)."""
    out = []
    problems = []
    for name in files:
        if name == "-":
            out.append(("-", sys.stdin.buffer.read()))
        else:
            try:
                out.append((name, Path(name).read_bytes()))
            except OSError as exc:
                problems.append(f"{name}: lecture impossible ({exc.strerror or exc})")
    return out, problems


def _unread(problems: Sequence[str]) -> int:
    """Exit status after the readable files were done: 2, each problem on its own line, if any."""
    for problem in problems:
        print(f"erreur : {problem}", file=sys.stderr)
    return 2 if problems else 0


# -- commands -----------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from mailgateway.processes import defer_reloads
    from mailgateway.settings import file_problems

    defer_reloads()  # until the daemon is ready: a SIGHUP now would end the process

    if problems := file_problems(settings):
        raise ConfigError(problems)
    if settings.processing.host == "process":
        # Before our own imports (≈2 s): the fork server imports what a processing host runs
        # (its services, its main loop) beside them, so the host is ready when the daemon is
        # (mailgateway/processes.py). Not the daemon's own modules (intake, scheduler, metrics):
        # the two imports share the machine's cores.
        from mailgateway.processes import start_fork_server

        start_fork_server(["mailgateway.app", "mailgateway.processing.host"])
    from mailgateway.daemon import run

    return run(settings)


def cmd_check_config(args: argparse.Namespace, settings: Settings) -> int:
    from mailgateway.dispatch.compose import Composer
    from mailgateway.dispatch.dkim import DkimSigner
    from mailgateway.dispatch.render import Renderer
    from mailgateway.settings import file_problems

    # Every problem at once, one line each (main() prints them, exit 2): files, templates, keys.
    # The file checks used to end the run, hiding the rest (outside tester).
    problems: list[tuple[str, str]] = file_problems(settings)
    missing = {path for path, _ in problems}
    templates_ok = "outbound.templates_dir" not in missing
    renderer = Renderer(settings.outbound.templates_dir if templates_ok else None)
    if templates_ok:
        problems += [(f"templates:{name}", msg) for name, msg in renderer.check()]
    signer = None
    if not any(path.startswith("dkim.") for path in missing):  # a missing key file is said once
        try:
            signer = DkimSigner.from_settings(settings.dkim)
        except ConfigError as exc:
            problems += exc.problems
    if not problems:
        # Render every mail once with sample data: a template error is found now, not at 3 a.m.
        from mailgateway.clock import SystemClock
        from mailgateway.dispatch.samples import sample_mails
        from mailgateway.jobs.samples import SAMPLES as JOB_SAMPLES

        composer = Composer(renderer, signer, SystemClock(), settings.bounce_domain, "check")
        for spec in sample_mails(settings, extra=JOB_SAMPLES):
            try:
                composer.compose(spec)
            except MailgatewayError as exc:
                problems.append((f"templates:{spec.template}", str(exc)))
    if problems:
        raise ConfigError(problems)
    print(f"configuration valide : {settings.source}")
    from mailgateway.store.engine import sqlite_file

    database_file = sqlite_file(settings.database.url)
    if database_file is not None:
        # Where the database is, as resolved from this directory: « sqlite:///x » is relative to the
        # working directory (the unit's: /var/lib/mailgateway), « sqlite:////x » absolute.
        print(f"base de données SQLite : {database_file.absolute()}")
    return 0


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from mailgateway.store.engine import upgrade

    upgrade(settings.database.url)
    print("base de données à jour")
    return 0


def _parse_context(settings: Settings) -> tuple[Any, Any]:
    """Analysis context for ``parse``: database lookups when the database exists, read-only."""
    from mailgateway.mail.auth import build_authenticator
    from mailgateway.mail.context import build_context
    from mailgateway.processing.runner import establishment_lookup_for, thread_lookup_for, thread_subjects_for
    from mailgateway.store.engine import current_revision, make_engine, make_sessionmaker

    # parse has no side effects: no DNS query leaves the machine unless nameservers are configured.
    auth = build_authenticator(settings, use_dns=bool(settings.authentication.nameservers))
    url = settings.database.url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return build_context(settings), auth
    try:
        engine = make_engine(url)
        if current_revision(engine) is None:
            return build_context(settings), auth
        session = make_sessionmaker(engine.execution_options(mailgateway_readonly=True))()
    except Exception:
        return build_context(settings), auth
    ctx = build_context(settings, thread_lookup=thread_lookup_for(session),
                        establishment_lookup=establishment_lookup_for(session),
                        thread_subjects=thread_subjects_for(session))
    return ctx, auth


def cmd_parse(args: argparse.Namespace, settings: Settings) -> int:
    from mailgateway.mail.analyse import analyse
    from mailgateway.mail.facts import SenderVerdict
    from mailgateway.processing.routing import resolve_region

    ctx, auth = _parse_context(settings)
    inputs, problems = _read_inputs(args.files)
    for name, raw in inputs:
        try:
            verdict = auth.verify(raw)
        except Exception as exc:
            verdict = SenderVerdict(detail=f"vérification impossible : {type(exc).__name__}")
        facts = resolve_region(settings, analyse(raw, ctx, verdict))
        obj = facts.to_json(file=name)
        if args.json:
            _print_json(obj)
        else:
            print(f"{name}: {facts.kind}" + (f" [{facts.case_ref}]" if facts.case_ref else "")
                  + (f" région {facts.region}" if facts.region else "")
                  + (f" — {facts.quarantine_reason}" if facts.quarantine_reason else ""))
    return _unread(problems)


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from mailgateway.app import build_app
    from mailgateway.intake.accept import accept_in
    from mailgateway.store.engine import transaction

    inputs, problems = _read_inputs(args.files)
    app = build_app(settings)
    try:
        for name, raw in inputs:
            with transaction(app.factory) as session:
                accepted = accept_in(session, raw, source="cli", now=app.clock.now())
            result = app.processor.process(accepted.inbound_id)
            if result.status == "skipped" and not accepted.duplicate:
                # A running daemon's processing host took the message first: report what it did.
                result = _settled(app.factory, result)
            if accepted.duplicate and result.status == "skipped":
                from mailgateway.store.models import InboundMessage

                with app.factory() as session:
                    row = session.get(InboundMessage, accepted.inbound_id)
                    status = f"duplicate of inbound {accepted.inbound_id} ({row.status if row else '?'})"
            else:
                status = result.status
            if args.json:
                _print_json({"file": name, "inbound_id": accepted.inbound_id, "duplicate": accepted.duplicate,
                             "status": result.status, "kind": result.kind, "case_ref": result.case_ref,
                             "reason": result.reason})
            else:
                print(f"{name}: {status}" + (f" {result.kind}" if result.kind else "")
                      + (f" {result.case_ref}" if result.case_ref else "")
                      + (f" — {result.reason}" if result.reason else ""))
    finally:
        app.close()
    return _unread(problems)


def _settled(factory: Any, result: Any, timeout: float = 60.0) -> Any:
    """The outcome of a message another process (the daemon's processing host) is processing or
    has processed, read from its row once it has left ``received`` (``ingest``'s answer must say
    what happened to the mail, not that someone else did it)."""
    import time
    from dataclasses import replace

    from mailgateway.store.models import Case, InboundMessage

    deadline = time.monotonic() + timeout
    while True:
        with factory() as session:
            row = session.get(InboundMessage, result.inbound_id)
            if row is not None and row.status != "received":
                case = session.get(Case, row.case_id) if row.case_id is not None else None
                return replace(result, status=row.status, kind=row.kind, reason=row.reason,
                               case_ref=case.reference if case is not None else None)
        if row is None or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


VERIFY_SHOWN = 50  # problems printed by ``cases verify``; the count of the others follows


def cmd_cases(args: argparse.Namespace, settings: Settings) -> int:
    from mailgateway.cases import views
    from mailgateway.store.engine import reading

    if args.cases_cmd == "original":  # SILENT: cli/original.py
        from mailgateway.cli import original

        return original.run(args, settings)
    status = _case_status(args.status) if args.cases_cmd == "list" and args.status else None
    if args.cases_cmd == "list" and args.region is not None:
        # As --status does: an unknown value is a mistake, not an empty list (outside tester).
        known = [r.code for r in settings.regions]
        if args.region.strip().upper() not in known:
            raise InputError(f"--region : région inconnue « {args.region} » (régions configurées : "
                             f"{', '.join(known) or 'aucune'})")
        args.region = args.region.strip().upper()
    with _database(settings) as factory, reading(factory) as session:
        if args.cases_cmd == "list":
            rows = views.list_cases(session, status=status, region=args.region, limit=args.limit)
            if args.json:
                _print_json(rows)
            else:
                print(views.format_case_list(rows))
            return 0
        if args.cases_cmd == "show":
            detail = views.show_case(session, args.ref)
            if detail is None:
                print(f"dossier inconnu : {args.ref}", file=sys.stderr)
                return 2
            if args.json:
                _print_json(detail)
            else:
                print(views.format_case(detail))
            return 0
        breaks, checked = views.verify_cases(session, args.ref)  # "verify"
        for b in breaks[:VERIFY_SHOWN]:  # the first problem first
            print(str(b), file=sys.stderr)
        if len(breaks) > VERIFY_SHOWN:
            print(f"… et {len(breaks) - VERIFY_SHOWN} autre(s) problème(s)", file=sys.stderr)
        if breaks:
            return 1
        if args.ref and checked == 0:
            print(f"dossier inconnu : {args.ref}", file=sys.stderr)
            return 2
        print(f"chaîne d'audit intacte ({checked} dossier(s) vérifié(s))")
        if not args.ref:  # to be copied elsewhere: anchors the ledgers against a full rewrite
            for region, entries, head in views.audit_heads(session):
                print(f"registre d'audit {region} : {entries} entrée(s), tête {head}")
        return 0


def _case_status(value: str) -> str:
    """The stored status named by ``--status`` (code or French label, any case: « clos »,
    « pris-en-compte », « en suivi »); an unknown one is bad input, listed with the valid ones."""
    from mailgateway.cases.story import label
    from mailgateway.statuses import CaseStatus

    wanted = "_".join(value.replace("-", " ").split()).upper()
    for status in CaseStatus:
        if wanted in (status.value, "_".join(label(status).split()).upper()):
            return status.value
    known = ", ".join(s.value for s in CaseStatus)
    raise InputError(f"--status : statut inconnu « {value} » (statuts possibles : {known})")


def cmd_outbox(args: argparse.Namespace, settings: Settings) -> int:
    from mailgateway.clock import SystemClock
    from mailgateway.dispatch import outbox
    from mailgateway.store.engine import transaction

    clock = SystemClock()
    with _database(settings) as factory:
        if args.outbox_cmd == "list":
            status = (args.status or "").strip().lower() or None
            if status is not None and status not in outbox.STATES:
                raise InputError(f"--status : état inconnu « {args.status} » (états possibles : "
                                 f"{', '.join(outbox.STATES)})")
            with factory() as session:
                rows = outbox.list_rows(session, limit=args.limit, status=status)
            if args.json:
                _print_json(rows)
            else:
                _print_outbox(rows)
            return 0
        if args.outbox_cmd == "retry":
            with transaction(factory) as session:
                ok = outbox.retry(session, args.id, clock.now())
            if not ok:
                print(f"message sortant inconnu ou déjà envoyé : {args.id}", file=sys.stderr)
                return 2
            print(f"message {args.id} remis en file")
            return 0
        if args.outbox_cmd == "flush":
            from mailgateway.app import build_services
            from mailgateway.bulletins.tracking import permanent_failure_hook
            from mailgateway.dispatch.sender import Sender

            # The daemon's bounce handling (fallback contact, staff task) applies here too.
            app = build_services(settings, migrate=False)
            sender = Sender(settings, factory, clock, "cli-flush", on_permanent_failure=permanent_failure_hook(app.env),
                            signer=app.composer.signer)
            try:
                result = asyncio.run(sender.flush(include_backoff=args.all))
            finally:
                app.close()
            print(result.summary())
            return 0
    return 2


def _print_outbox(rows: list[dict[str, Any]]) -> None:
    """The queue as a table with a header line; instants in Paris time (« 27/11/2026 à 10:05 »)."""
    from mailgateway.cases.story import french_datetime_of
    from mailgateway.status import OUTBOX_STATUS_FR

    print(f"{'ID':>6}  {'ÉTAT':<16} {'ESSAIS':>6}  {'CRÉÉ LE':<18}  {'DESTINATAIRE':<40} TYPE")
    for r in rows:
        # French for the operator reading the table (an outside tester: « sent », « recu_commandes »);
        # ``--json`` keeps the codes.
        status = OUTBOX_STATUS_FR.get(r["status"], r["status"])
        kind = _OUTBOX_KINDS.get(r["kind"], str(r["kind"]).replace("_", " "))
        print(f"{r['id']:>6}  {status:<16} {r['attempts']:>6}  {french_datetime_of(r['created_at']):<18}  "
              f"{r['recipient']:<40} {kind}")


_OUTBOX_KINDS = {"accuse_reception": "accusé de réception", "recu_commandes": "compte rendu de commandes",
                 "notification_equipe": "notification à l'équipe", "notification_reponse": "réponse reçue",
                 "notification_afflux": "notification groupée (afflux)",
                 "cloture_declarant": "clôture (déclarant)", "demande_info": "demande d'information",
                 "reponse": "réponse au déclarant", "transmission_acss": "transmission à l'ACSS",
                 "bulletin": "bulletin", "bulletin_apercu": "aperçu de bulletin", "rappel": "rappel",
                 "avis_quarantaine": "avis de quarantaine", "assignation": "assignation"}


def cmd_directory(args: argparse.Namespace, settings: Settings) -> int:
    from mailgateway.directory import run_import

    if args.directory_cmd == "reactivate":
        return _reactivate_contact(settings, args.address)
    text, code = run_import(settings, args.kind, args.file)
    print(text, file=sys.stdout if code == 0 else sys.stderr)
    return code


def _reactivate_contact(settings: Settings, address: str) -> int:
    """``directory reactivate ADDRESS``: the contacts with this address (bouncing or disabled)
    are active again; exit 2 for an address the directory does not know."""
    from mailgateway.clock import SystemClock
    from mailgateway.directory.bounces import contacts_of, reactivate_address
    from mailgateway.store.engine import transaction

    address = address.strip().lower()
    with _database(settings) as factory, transaction(factory) as session:
        if not contacts_of(session, address):
            print(f"adresse inconnue de l'annuaire des contacts : {address}", file=sys.stderr)
            return 2
        done = reactivate_address(session, address, SystemClock().now(), statuses=("bouncing", "disabled"))
    if not done:
        print(f"{address} est déjà actif : rien à réactiver")
    else:
        print(f"contact {address} réactivé ({len(done)} établissement(s))")
    return 0


def cmd_bulletin(args: argparse.Namespace, settings: Settings) -> int:
    from mailgateway.cli import bulletin

    return bulletin.run(args, settings)


def cmd_scheduler(args: argparse.Namespace, settings: Settings) -> int:
    from mailgateway.cli import scheduler

    return scheduler.run(args, settings)


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from mailgateway.cli import scheduler

    return scheduler.report(args, settings)


def cmd_alerts(args: argparse.Namespace, settings: Settings) -> int:  # INDICATORS: cli/alerts.py
    from mailgateway.cli import alerts

    return alerts.run(args, settings)


def cmd_quarantine(args: argparse.Namespace, settings: Settings) -> int:
    from mailgateway.cli import quarantine

    return quarantine.run(args, settings)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from mailgateway.cli import status

    return status.run(args, settings)


def cmd_dkim(args: argparse.Namespace, settings: Settings) -> int:
    from mailgateway.dispatch.dkim import DkimSigner

    signer = DkimSigner.from_settings(settings.dkim)
    if signer is None:
        print("aucune clé DKIM configurée ([dkim])", file=sys.stderr)
        return 2
    for selector in signer.selectors:
        print(signer.zone_line(selector))
    return 0


def cmd_imap(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import date

    from mailgateway.clock import SystemClock
    from mailgateway.intake.imap import backfill

    try:
        since = date.fromisoformat(args.since)
    except ValueError as exc:
        raise InputError(f"--since : date invalide {args.since!r} (attendu AAAA-MM-JJ)") from exc
    with _database(settings) as factory:
        count = backfill(settings, factory, args.region, since, SystemClock())
    print(f"{count} message(s) repris depuis le {since.isoformat()} ; ils seront traités par le démon")
    return 0


# -- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default=argparse.SUPPRESS,
                        help="configuration file (default: $MAILGATEWAY_CONFIG, then config/mailgateway.example.toml)")
    parser = argparse.ArgumentParser(prog="mailgateway", description="Passerelle de messagerie SSI des ARS.")
    parser.add_argument("-c", "--config", default=None)
    parser.add_argument("--version", action="version", version=f"mailgateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler: Handler, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_)
        p.set_defaults(handler=handler)
        return p

    add("run", cmd_run, "run the daemon")
    add("check-config", cmd_check_config, "validate configuration, templates and keys")
    p = add("db", cmd_db_upgrade, "database migrations")
    p.add_argument("action", choices=["upgrade"])
    p = add("parse", cmd_parse, "classify and extract without side effects")
    p.add_argument("--json", action="store_true")
    p.add_argument("files", nargs="+")
    p = add("ingest", cmd_ingest, "feed messages through accept + process")
    p.add_argument("--json", action="store_true")
    p.add_argument("files", nargs="+")

    p = add("cases", cmd_cases, "read cases")
    csub = p.add_subparsers(dest="cases_cmd", required=True)
    q = csub.add_parser("list", parents=[common])
    q.add_argument("--status")
    q.add_argument("--region")
    q.add_argument("--limit", type=int, default=1000)
    q.add_argument("--json", action="store_true")
    q = csub.add_parser("show", parents=[common])
    q.add_argument("ref")
    q.add_argument("--json", action="store_true")
    q = csub.add_parser("verify", parents=[common])
    q.add_argument("ref", nargs="?")
    # SILENT: the original of a case, byte for byte (cli/original.py).
    q = csub.add_parser("original", parents=[common], help="the message that opened a case, byte for byte")
    q.add_argument("ref")
    q.add_argument("--out", "--output", "-o", dest="out", metavar="FILE",
                   help="write to FILE (mode 0600) instead of stdout")

    p = add("outbox", cmd_outbox, "the outbound queue")
    osub = p.add_subparsers(dest="outbox_cmd", required=True)
    q = osub.add_parser("list", parents=[common])
    q.add_argument("--json", action="store_true")
    q.add_argument("--status", help="queued, sending, sent, failed, expired, refused, bounced, cancelled")
    q.add_argument("--limit", type=int, default=1000)
    q = osub.add_parser("retry", parents=[common])
    q.add_argument("id", type=int)
    q = osub.add_parser("flush", parents=[common])
    q.add_argument("--all", action="store_true")

    p = add("directory", cmd_directory, "establishments, contacts and staff")
    dsub = p.add_subparsers(dest="directory_cmd", required=True)
    q = dsub.add_parser("import", parents=[common])
    q.add_argument("--kind", required=True, choices=["finess", "contacts", "staff"])
    q.add_argument("file")
    q = dsub.add_parser("reactivate", parents=[common], help="reactivate a contact taken out of use by bounces")
    q.add_argument("address")

    p = add("bulletin", cmd_bulletin, "awareness bulletins")
    bsub = p.add_subparsers(dest="bulletin_cmd", required=True)
    q = bsub.add_parser("send", parents=[common])
    q.add_argument("--region", required=True)
    q.add_argument("--target", required=True)
    q.add_argument("--subject", required=True)
    q.add_argument("--body-file", required=True)
    q.add_argument("--tlp", default="CLEAR")
    q.add_argument("--yes", action="store_true")
    q.add_argument("--json", action="store_true")
    q = bsub.add_parser("status", parents=[common])
    q.add_argument("id", type=int)
    q.add_argument("--json", action="store_true")
    q.add_argument("--state", choices=["bounced", "unreached", "pending", "delivered", "acknowledged",
                                       "unacknowledged"], help="list only the establishments in this state")
    q = bsub.add_parser("list", parents=[common])
    q.add_argument("--json", action="store_true")
    q.add_argument("--limit", type=int, default=200)

    p = add("scheduler", cmd_scheduler, "scheduled jobs")
    ssub = p.add_subparsers(dest="scheduler_cmd", required=True)
    q = ssub.add_parser("run-due", parents=[common])
    q.add_argument("--now")
    q = ssub.add_parser("list", parents=[common])
    q.add_argument("--now")

    p = add("report", cmd_report, "reports (weekly figures as CSV + PNG)")
    rsub = p.add_subparsers(dest="report_cmd", required=True)
    q = rsub.add_parser("weekly", parents=[common])
    q.add_argument("--out", required=True, help="directory for the CSV and PNG files")
    q.add_argument("--region")
    q.add_argument("--now", help="ISO 8601 instant (default: now); Paris time without an offset")

    # SILENT: the quarantine (cli/quarantine.py).
    p = add("quarantine", cmd_quarantine, "quarantined messages: list, show, release")
    qsub = p.add_subparsers(dest="quarantine_cmd", required=True)
    q = qsub.add_parser("list", parents=[common])
    q.add_argument("--region")
    q.add_argument("--limit", type=int, default=1000)
    q.add_argument("--json", action="store_true")
    q = qsub.add_parser("show", parents=[common])
    q.add_argument("id", type=int)
    q.add_argument("--json", action="store_true")
    q = qsub.add_parser("release", parents=[common])
    q.add_argument("id", type=int)
    # INDICATORS: an alert case's indicators as files (cli/alerts.py, docs/indicators.md).
    p = add("alerts", cmd_alerts, "ACSS alerts: export their indicators (STIX 2.1, MISP, CSV)")
    asub = p.add_subparsers(dest="alerts_cmd", required=True)
    q = asub.add_parser("export", parents=[common], help="an alert case's indicators as STIX 2.1, MISP or CSV")
    q.add_argument("ref")
    q.add_argument("--format", required=True, choices=["stix", "misp", "csv"])
    q.add_argument("--out", "--output", "-o", dest="out", metavar="FILE",
                   help="write to FILE (mode 0600) instead of stdout")
    q.add_argument("--unauthenticated", action="store_true",
                   help="export an alert that was not authenticated too (refused otherwise)")
    p = add("status", cmd_status, "health at a glance")
    p.add_argument("--json", action="store_true")
    p = add("dkim", cmd_dkim, "DKIM helpers")
    p.add_argument("action", choices=["dns-record"])
    p = add("imap", cmd_imap, "IMAP intake helpers")
    p.add_argument("action", choices=["backfill"])
    p.add_argument("--region", required=True)
    p.add_argument("--since", required=True)
    return parser


# What a shell shows for a command killed by SIGPIPE (128 + 13): ``mailgateway cases list | head``
# ends like ``seq 1000000 | head`` would, quietly.
EXIT_BROKEN_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    """The entry point: ``_main``, and a reader of our output that went away (``| head``) ends
    the command quietly, with no traceback (Python raises BrokenPipeError where C tools get SIGPIPE)."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # buffered output fails here, not at interpreter exit
        return code
    except BrokenPipeError:
        # Python flushes stdout again at exit: point it at /dev/null so that flush cannot fail
        # and print "Exception ignored ... BrokenPipeError" (Python docs, "Note on SIGPIPE").
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
        from mailgateway.logs import setup_logging

        setup_logging(settings.logging)
        handler: Handler = args.handler
        return handler(args, settings)
    except ConfigError as exc:
        for path, msg in exc.problems:
            print(f"{path}: {msg}", file=sys.stderr)
        return 2
    except InputError as exc:
        print(f"erreur : {exc}", file=sys.stderr)
        return 2
    except MailgatewayError as exc:
        print(f"erreur : {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
