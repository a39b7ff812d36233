"""Load and validate the TOML configuration into immutable settings (README, "Configuration").

Settings are frozen dataclasses built once at the edge (CLI, daemon) and passed in; there is no
global configuration object. Every problem is reported with its key path (``relay.port``,
``regions[0].imap.password_file``) and unknown keys are errors: a misspelt key silently ignored is
a security setting silently not applied.

To add a key: add a field with its default to the right dataclass, and document it in
``config/mailgateway.example.toml``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailgateway.errors import ConfigError
from mailgateway.statuses import ALERT_STATUSES, INCIDENT_STATUSES, CaseStatus

DEFAULT_CONFIG = Path("config/mailgateway.example.toml")
# The longest staff notifications may be told to wait behind a backlog: status.py calls deferred
# notifications older than PROCESSING_LATE_SECONDS (600 s) a stalled processing, and a chunk of
# thousands composed at the bound takes a while: half of it, so that an honest wait is never
# reported as a stall.
STAFF_NOTICE_DELAY_LIMIT = 300.0


@dataclass(frozen=True)
class DatabaseSettings:
    # Four slashes: an absolute path (SQLAlchemy reads « sqlite:///var/lib/… » as relative to the
    # working directory: under the unit's WorkingDirectory=/var/lib/mailgateway the default was
    # /var/lib/mailgateway/var/lib/mailgateway/mailgateway.db; outside tester).
    url: str = "sqlite:////var/lib/mailgateway/mailgateway.db"
    # Several instances may share one PostgreSQL database; SQLite is for one instance only.
    instances: int = 1


@dataclass(frozen=True)
class SmtpIntakeSettings:
    host: str = "127.0.0.1"
    port: int = 2525
    max_message_bytes: int = 26214400
    # RFC 5321 §4.5.3.1.8: at least 100 recipients must be accepted.
    max_recipients: int = 100
    # Messages accepted per client IP and per minute before answering 451 4.7.1.
    rate_limit_per_minute: int = 600
    # Also speak LMTP (RFC 2033) on this port; 0 disables it.
    lmtp_port: int = 0
    server_hostname: str = "mailgateway.localhost"
    # Client IPs (or CIDR networks) of the site MTA that relays to us (README "Configuration":
    # loopback by default, the local Postfix). They are exempt from the per-IP rate limit above (the
    # site's own MX is not an attacker: intake/smtp.py), and only mail received from them may be
    # authenticated by an Authentication-Results header, when its authserv-id is also listed in
    # [authentication] trusted_authserv_ids (docs/guarantees.md; docs/operations.md).
    trusted_relays: tuple[str, ...] = ("127.0.0.1", "::1")
    # Concurrent SMTP connections; beyond: 421 4.7.0 and close (bounded descriptors, docs/guarantees.md).
    max_connections: int = 100
    # Concurrent connections from one client IP, trusted relays exempt; beyond: 421 4.7.0 and close.
    # One address must not hold every slot above (found by an outside tester: 105 sockets kept
    # alive with NOOP locked every other client out). 0: no per-address cap.
    max_connections_per_ip: int = 20
    # Message bytes held in memory by all DATA transfers together; beyond: 451 4.3.1. 0: four
    # times max_message_bytes.
    max_concurrent_data_bytes: int = 0
    # A connection silent this long is closed (RFC 5321 §4.5.3.2.7 asks for at least 5 minutes).
    idle_timeout_seconds: float = 300.0


@dataclass(frozen=True)
class IntakeSettings:
    smtp: SmtpIntakeSettings | None = None
    # Refuse attachments beyond this count (message kept in quarantine).
    max_attachments: int = 100


@dataclass(frozen=True)
class ProcessingSettings:
    """Bounded work per message (docs/guarantees.md): isolation, time budget, attempts (processing/worker.py)."""

    # "process": sender authentication and analysis run in a worker process that is killed and
    # restarted alone when a message exceeds its budget, so intake never freezes (the daemon's
    # default); "thread": in the daemon's own process (no isolation, no time budget).
    isolation: str = "process"
    # Per-message budget for authentication + analysis in the worker; beyond it, quarantine.
    analysis_timeout_seconds: float = 30.0
    # Tries (each counted before it starts, crash or not) after which a message is quarantined.
    max_attempts: int = 3
    # A message whose DKIM key lookup failed temporarily (DNS timeout, SERVFAIL) is tried again
    # after this long instead of being processed as unauthenticated; longer than the resolver's
    # 60 s failure cache (dns.py), so the retry really asks again. The try that uses up
    # max_attempts processes it as unauthenticated.
    dns_retry_seconds: float = 120.0
    # Where the daemon runs processing (issue 19: accepting never waits for it). "process": in its
    # own process, the processing host (processing/host.py), restarted if it dies; "thread": in a
    # thread of the daemon's process, sharing the GIL with SMTP intake (for diagnosis only).
    host: str = "process"
    # Supervision of the processing host (docs/operations.md, "Process model"): the daemon kills and
    # restarts a host that holds SQLite's write gate longer than this, or whose heartbeat stops for
    # longer than this plus analysis_timeout_seconds (a paused or wedged host blocks intake).
    host_stall_seconds: float = 30.0
    # Processing "stalled": a due message waits and processing made no progress (a message done, a
    # sweep finished) for this long, whichever host runs: /healthz 503 and systemd STATUS= say so,
    # and past stalled_watchdog_seconds the systemd watchdog pings stop (systemd restarts us).
    stalled_unhealthy_seconds: float = 45.0
    stalled_watchdog_seconds: float = 60.0
    # A host that died is restarted after host_restart_first_seconds, doubled per death up to
    # host_restart_max_seconds (back to the first after a minute of life); /healthz reports a host
    # that has not been running for host_down_unhealthy_seconds (a restart takes ≈2 s). Tests
    # shorten them; sites have no reason to.
    host_restart_first_seconds: float = 1.0
    host_restart_max_seconds: float = 30.0
    host_down_unhealthy_seconds: float = 10.0
    # In a backlog (more than a batch of messages due) each staff notification waits until the
    # backlog's acknowledgements are queued, or this long at most (processing/later.py). A burst
    # of 2,000 declarations takes 10-30 s to work through on 2 CPUs: with 10 s its notifications
    # were composed in the middle of it, a third of the CPU before the last declarants' receipts.
    staff_notice_max_delay_seconds: float = 60.0
    # A wave: once this many staff notifications wait behind a backlog, those of new declarations
    # are told in digests of up to 100 cases, a mail each (« Afflux de déclarations »,
    # processing/wave.py): 20,000 look-alike mails help no one, and cost a third of the burst's
    # CPU before the last declarants' acknowledgements. 0: a notification per declaration always.
    staff_notice_digest_from: int = 100


@dataclass(frozen=True)
class RelaySettings:
    host: str | None = None
    port: int = 25
    starttls: bool = False
    # Implicit TLS (SMTPS, RFC 8314); exclusive with starttls.
    tls: bool = False
    username: str | None = None
    password_file: str | None = None
    maildir: str = "var/outbox"
    timeout_seconds: float = 30.0
    # Parallel connections to the relay, and messages sent per connection before reconnecting.
    concurrency: int = 4
    messages_per_connection: int = 1000
    # Throttles: 0 means unlimited.
    max_per_second: float = 0.0
    max_per_hour: int = 0
    per_domain_per_second: float = 0.0
    per_domain_per_hour: int = 0
    # Give up on a temporarily failing message after this long (Mailman's default: 5 days).
    retry_deadline_hours: float = 120.0
    retry_base_seconds: float = 60.0
    retry_max_seconds: float = 3600.0
    # A claimed message whose sender died is reclaimed after this lease.
    lease_seconds: float = 300.0
    local_hostname: str = "mailgateway.localhost"
    # The relay's message size limit until it has advertised one (EHLO SIZE, RFC 1870): Postfix's
    # default message_size_limit. Mail to staff is kept under the advertised (else this) size.
    assumed_size_bytes: int = 10_240_000


@dataclass(frozen=True)
class DkimKeySettings:
    selector: str = ""
    algorithm: str = "rsa-sha256"
    private_key_file: str = ""


@dataclass(frozen=True)
class DkimSettings:
    domain: str = ""
    keys: tuple[DkimKeySettings, ...] = ()


@dataclass(frozen=True)
class AuthenticationSettings:
    trusted_authserv_ids: tuple[str, ...] = ()
    acss_domains: tuple[str, ...] = ("esante.gouv.fr",)
    static_keys: dict[str, str] = field(default_factory=dict)
    # DNS for DKIM keys: empty means the system resolver (never used by the tests).
    nameservers: tuple[str, ...] = ()
    dns_timeout_seconds: float = 5.0
    # A command mail whose Date is older than this (or missing, or more than a day ahead) is
    # refused: an old signed mail replayed to the gateway must not act (docs/guarantees.md, "once only").
    max_command_age_days: float = 7.0
    # An authentic alert whose Date is older than this is flagged to staff (« alerte ancienne »):
    # a genuine alert leaked or kept can be re-sent to the gateway long after (issue 16 attack).
    max_alert_age_days: float = 14.0


@dataclass(frozen=True)
class ImapSettings:
    host: str = ""
    port: int = 993
    tls: bool = True
    starttls: bool = False
    username: str = ""
    password_file: str = ""
    folder: str = "INBOX"
    # Processed mail is moved to these folders (created if missing); never deleted.
    processed_folder: str = "Traité"
    quarantine_folder: str = "Quarantaine"
    # "new" (default): only mail arriving after the first start; "all": the whole mailbox.
    initial_sync: str = "new"
    # RFC 2177: re-issue IDLE at least every 29 minutes.
    idle_renew_seconds: float = 600.0
    poll_interval_seconds: float = 30.0
    timeout_seconds: float = 30.0


@dataclass(frozen=True)
class RegionSettings:
    code: str = ""
    name: str = ""
    address: str = ""
    imap: ImapSettings | None = None
    # Staff role that receives escalated reminders (default: "referent").
    referent: str | None = None


@dataclass(frozen=True)
class StaffSettings:
    address: str = ""
    region: str = ""
    role: str = "agent"


@dataclass(frozen=True)
class AcssSettings:
    address: str = "acss@esante.gouv.fr"


@dataclass(frozen=True)
class MetricsSettings:
    host: str = "127.0.0.1"
    port: int = 9308
    # /healthz fails when an IMAP mailbox has not been reached for this long (reconnections
    # shorter than this are normal: server restarts, IDLE renewals).
    mailbox_unhealthy_after_seconds: float = 300.0


@dataclass(frozen=True)
class OutboundSettings:
    # Domain of the VERP return path (bounces+<token>@domain); defaults to the DKIM domain.
    bounce_domain: str = ""
    bounce_local_part: str = "bounces"
    # RFC 3834 §3.1.8 / Mailman-style storm caps on automatic replies per recipient.
    auto_replies_per_hour: int = 5
    auto_replies_per_day: int = 10
    auto_replies_per_case: int = 20
    # Budgets (docs/guarantees.md). All automatic replies together (every recipient): a flood of forged
    # declarations must not turn the agency into a signed spam relay; staff get one warning an hour.
    auto_reply_global_per_hour: int = 5000
    # Staff notifications caused by one sender address per hour; beyond it the message is still
    # stored and attached to its case, and staff get one summary notice for that sender and hour.
    staff_notifications_per_sender_per_hour: int = 20
    # All notifications caused by unauthenticated mail together, per region and hour: a From is free
    # to change, so a per-address cap alone is no cap (one summary notice beyond it). Sized above a
    # real wave of declarations to one region (a few hundred in an hour).
    staff_notifications_unauthenticated_per_hour: int = 1000
    # The original is attached to staff notifications up to this size (bytes); a larger one is
    # named with « mailgateway cases original REF » instead (one copy per staff member otherwise).
    staff_attachment_max_bytes: int = 2 * 1024 * 1024
    # A mail to staff refused for good (5yz, or expired) is a problem shown by ``status``, the
    # metrics and the digest for this long after its failure (or until ``outbox retry``).
    staff_failure_window_hours: float = 168.0
    # TLP:AMBER(+STRICT) may only go to these domains (besides the agency and ACSS).
    amber_allowed_domains: tuple[str, ...] = ()
    # Site overrides of the bundled templates.
    templates_dir: str | None = None
    # INDICATORS: files attached to relayed alerts and bulletins with indicators (docs/indicators.md):
    # "stix" (STIX 2.1 bundle), "misp" (MISP event), "csv" (type;value;comment); [] attaches none.
    indicator_formats: tuple[str, ...] = ("stix", "misp", "csv")
    # The service named in acknowledgements.
    # Who handles declarations, as it reads in a sentence ("prise en charge par la cellule SSI").
    service_name: str = "la cellule SSI"


@dataclass(frozen=True)
class LabelSettings:
    """Site additions to the French label and synonym tables (see mail/labels)."""

    fields: dict[str, tuple[str, ...]] = field(default_factory=dict)
    incident_types: dict[str, tuple[str, ...]] = field(default_factory=dict)
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    radiotherapy_finess: tuple[str, ...] = ()
    # UNDERSTANDING (issue 16): more tables a site may extend, and a file of its wording.
    severities: dict[str, tuple[str, ...]] = field(default_factory=dict)
    alert_targets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    courtesy: tuple[str, ...] = ()
    # A TOML file with the same tables ([fields], [incident_types], [categories], [severities],
    # [alert_targets], and [courtesy] phrases = [...]), added to the ones above; a relative path
    # is relative to the configuration file. Read once at load: a reload (SIGHUP) rereads it.
    file: str | None = None


@dataclass(frozen=True)
class DirectorySettings:
    """Contact bounce scoring (Mailman 3 defaults; see directory/bounces.py)."""

    bounce_threshold: float = 5.0
    soft_bounce_score: float = 0.5
    hard_bounce_score: float = 1.0
    # The score restarts from zero after this many days without a bounce.
    bounce_stale_days: float = 7.0
    # Permanent failures (a relay 5xx, a DSN) mark the contact bouncing after failures on
    # bounce_min_messages distinct messages (directory/bounces.py); soft bounces never do.
    hard_bounce_marks_bouncing: bool = True
    # Distinct outbound messages that must have failed permanently (relay 5xx or DSNs) before a
    # contact is marked bouncing; a forged DSN is one message at most (docs/guarantees.md).
    bounce_min_messages: int = 2
    # Permanent failures older than this many days no longer count towards bounce_min_messages.
    bounce_window_days: float = 90.0


@dataclass(frozen=True)
class BulletinSettings:
    """Awareness bulletins and ACSS alert relays (bulletins/fanout.py)."""

    # The author's report (coverage, bounces) is sent this long after the fan-out.
    report_after_hours: float = 24.0
    # Establishments that have not acknowledged get one reminder after this long; 0 disables.
    reminder_after_hours: float = 72.0
    # Recipients listed in the preview sent to the author of a bulletin by mail.
    preview_sample: int = 10
    # A "#diffuser" must be confirmed with "#confirmer <jeton>" within this delay.
    confirmation_hours: float = 24.0
    # Approvals by mail up to this many recipients are queued in the approving transaction; larger
    # ones are queued by the daemon in committed chunks, so intake never waits on a fan-out.
    inline_fanout_limit: int = 500
    # FANOUT: processes that DKIM-sign a chunked fan-out (0: one per CPU), and recipients queued per
    # committed transaction (the sender is woken after each commit).
    signing_processes: int = 0
    fanout_commit_every: int = 200


@dataclass(frozen=True)
class DeadlineSettings:
    """How long a case may stay in one status before reminders (scheduler/jobs/deadlines.py)."""

    # 0 disables the deadline for this status.
    hours: float = 0.0
    # Time between cadence steps: step 0 reminds the assignee, later steps escalate to the
    # region's referent. 0 means "the same as hours".
    cadence_hours: float = 0.0
    # Reminders per stay in the status (step 0 .. max_steps-1), never more.
    max_steps: int = 2


def _default_deadlines() -> dict[str, DeadlineSettings]:
    return {
        CaseStatus.RECU: DeadlineSettings(hours=1.0),  # not acknowledged within 1 h
        CaseStatus.PRIS_EN_COMPTE: DeadlineSettings(hours=24.0),  # not sent for qualification within 24 h
        CaseStatus.QUALIFIE: DeadlineSettings(hours=168.0),  # no follow-up for 7 days
        CaseStatus.A_DIFFUSER: DeadlineSettings(hours=4.0),  # alert not approved within 4 h
    }


@dataclass(frozen=True)
class SchedulerSettings:
    """APScheduler jobs (mailgateway/scheduler.py); times are Europe/Paris wall-clock times."""

    enabled: bool = True
    # Deadlines per status; a [scheduler.deadlines.X] table overrides the default for X only.
    deadlines: dict[str, DeadlineSettings] = field(default_factory=_default_deadlines)
    # Count deadlines in business time only (Mon-Fri, business_start_hour..business_end_hour,
    # French public holidays excluded).
    business_hours: bool = False
    business_start_hour: int = 9
    business_end_hour: int = 18
    deadline_interval_minutes: float = 5.0
    digest_hour: int = 8
    # 0 = Monday; the weekly report covers report_weeks weeks.
    weekly_report_weekday: int = 0
    weekly_report_hour: int = 8
    report_weeks: int = 12
    quarantine_summary_hour: int = 8
    housekeeping_interval_minutes: float = 10.0
    # Quarantined messages are announced to staff in one notice per region at most this often.
    quarantine_notice_minutes: float = 5.0
    retention_hour: int = 3
    # A digest or report missed while the daemon was stopped is still sent this long after its hour.
    catch_up_hours: float = 4.0
    # GDPR: days after which raw messages and personal data of cases in these statuses are purged
    # (counted from closing, else from the last activity); 0 keeps them.
    retention_days: dict[str, int] = field(default_factory=lambda: {CaseStatus.CLOS: 730, CaseStatus.CLOSE: 730})


@dataclass(frozen=True)
class CasesSettings:
    """Case handling by mail (commands/handling.py)."""

    # An authenticated reply from the establishment (or ACSS) to a closed case: "reopen" it, or open
    # a new case "link"ed to it. An unauthenticated reply never changes a case (docs/guarantees.md).
    reply_to_closed: str = "reopen"
    # "#confirmer <jeton>" must come within this delay for #clore of a GRAVE case (#diffuser uses
    # [bulletins].confirmation_hours).
    confirmation_hours: float = 48.0
    # A broadcast (#diffuser) must be confirmed by another staff member than the one who asked.
    broadcast_second_approver: bool = False
    # A declaration for the same FINESS as an open case opened this recently is flagged as duplicate.
    duplicate_window_hours: float = 72.0
    # "#retards": open cases without any activity for this many days.
    overdue_days: float = 7.0
    # Tell the declarant when staff close or merge the case (commands/closure.py): a French mail,
    # never to a no-reply address, under the case's TLP; an unverified address is told nothing more
    # than the reference.
    notify_declarant_on_close: bool = True


@dataclass(frozen=True)
class LoggingSettings:
    level: str = "INFO"
    # "auto": JSON when stderr is not a terminal, readable text when it is.
    format: str = "auto"
    # Repeated warnings and errors (same logger, level and message template): at most this many per
    # interval, then one "suppressed N similar records" line (a flood of bad clients must not fill
    # the journal). 0 disables the limit.
    repeat_limit: int = 20
    repeat_interval_seconds: float = 60.0


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    intake: IntakeSettings = field(default_factory=IntakeSettings)
    processing: ProcessingSettings = field(default_factory=ProcessingSettings)
    relay: RelaySettings = field(default_factory=RelaySettings)
    dkim: DkimSettings | None = None
    authentication: AuthenticationSettings = field(default_factory=AuthenticationSettings)
    regions: tuple[RegionSettings, ...] = ()
    staff: tuple[StaffSettings, ...] = ()
    acss: AcssSettings = field(default_factory=AcssSettings)
    metrics: MetricsSettings | None = None
    outbound: OutboundSettings = field(default_factory=OutboundSettings)
    labels: LabelSettings = field(default_factory=LabelSettings)
    directory: DirectorySettings = field(default_factory=DirectorySettings)
    bulletins: BulletinSettings = field(default_factory=BulletinSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    cases: CasesSettings = field(default_factory=CasesSettings)
    source: str = ""

    def region(self, code: str) -> RegionSettings | None:
        for region in self.regions:
            if region.code == code:
                return region
        return None

    @property
    def bounce_domain(self) -> str:
        if self.outbound.bounce_domain:
            return self.outbound.bounce_domain
        if self.dkim and self.dkim.domain:
            return self.dkim.domain
        return self.regions[0].address.rpartition("@")[2] if self.regions else "localhost"


def config_path(explicit: str | None) -> Path:
    """``-c`` first, then ``$MAILGATEWAY_CONFIG``, then the example config (README, "Command line")."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("MAILGATEWAY_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def load_settings(path: str | os.PathLike[str]) -> Settings:
    """Read, validate and return the settings; raise ConfigError listing every problem."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([("(file)", f"configuration file not found: {path}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("(file)", f"invalid TOML: {exc}")]) from exc
    except UnicodeDecodeError as exc:  # TOML is UTF-8 (a Latin-1 file: outside tester, a traceback)
        raise ConfigError([("(file)", f"not UTF-8 (TOML files are UTF-8): {path}: {exc.reason} at byte "
                                      f"{exc.start}")]) from exc
    except OSError as exc:  # a directory, no permission
        raise ConfigError([("(file)", f"configuration file unreadable: {path}: {exc.strerror or exc}")]) from exc
    return parse_settings(data, source=str(path))


def parse_settings(data: dict[str, Any], source: str = "") -> Settings:
    problems: list[tuple[str, str]] = []
    settings = _build(Settings, data, "", problems)
    if isinstance(settings, Settings):
        settings = dataclasses.replace(settings, source=source)
        settings = _with_label_file(settings, problems)  # UNDERSTANDING
        _check_semantics(settings, problems)
        if problems:
            # Already refused: the files it names are checked too, so that one run of check-config
            # (or run) lists every problem, not the next one only (outside tester). Not when the
            # text is valid: ``parse`` works without the production secrets.
            problems += file_problems(settings)
    if problems:
        # One line per key: a value of the wrong type also fails its range check on the default it
        # was replaced by (« must be an integer », then « must be between 1 and 65535 »).
        first: dict[str, str] = {}
        for path, message in problems:
            first.setdefault(path, message)
        raise ConfigError(list(first.items()))
    assert isinstance(settings, Settings)
    return settings


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _build(tp: Any, value: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    """Convert TOML data to ``tp``, appending (path, message) for each problem."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _build(args[0], value, path, problems)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            problems.append((path, "must be a table"))
            return tp()
        hints = typing.get_type_hints(tp)
        known = {f.name for f in dataclasses.fields(tp) if f.name != "source"}
        kwargs: dict[str, Any] = {}
        for key, item in value.items():
            if key not in known:
                problems.append((_join(path, key), "unknown key"))
                continue
            kwargs[key] = _build(hints[key], item, _join(path, key), problems)
        return tp(**kwargs)
    if origin is tuple:
        (inner, *_rest) = typing.get_args(tp)
        if not isinstance(value, list):
            problems.append((path, "must be an array"))
            return ()
        return tuple(_build(inner, v, f"{path}[{i}]", problems) for i, v in enumerate(value))
    if origin is dict:
        _key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            problems.append((path, "must be a table"))
            return {}
        return {str(k): _build(val_tp, v, _join(path, f'"{k}"'), problems) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            problems.append((path, "must be true or false"))
            return False
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append((path, "must be an integer"))
            return 0
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append((path, "must be a number"))
            return 0.0
        if not math.isfinite(value):  # TOML has nan and inf: every comparison with nan is false
            problems.append((path, "must be a finite number"))
            return 0.0
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.append((path, "must be a string"))
            return ""
        if path.endswith("_file") or path.endswith("_dir"):
            return _expand_credentials(value)
        return value
    raise TypeError(f"unsupported settings type {tp!r}")  # a programming error, not a config one


def _expand_credentials(value: str) -> str:
    """``${CREDENTIALS_DIRECTORY}`` in a file path: where systemd's ``LoadCredential=`` put the
    secrets (systemd/mailgateway.service). Left as is when unset, so the "file not found" problem
    names the variable."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        value = value.replace("${CREDENTIALS_DIRECTORY}", creds).replace("$CREDENTIALS_DIRECTORY", creds)
    return value


def _check_address(value: str, path: str, problems: list[tuple[str, str]]) -> None:
    local, at, domain = value.partition("@")
    if not (local and at and "." in domain) or any(c.isspace() for c in value):
        problems.append((path, f"not an e-mail address: {value!r}"))


# --- UNDERSTANDING (issue 16): the site's label file and the names its tables may use ---------------
_LABEL_TABLES = ("fields", "incident_types", "categories", "severities", "alert_targets")


def _bundled_label_names() -> dict[str, set[str]]:
    """Names each extensible table knows (mailgateway/data/labels.toml): a misspelt field name in
    a site's wording must be an error, not wording silently never used."""
    from importlib import resources

    raw = tomllib.loads(resources.files("mailgateway").joinpath("data/labels.toml").read_text(encoding="utf-8"))
    names = {table: set(raw.get(table, {})) for table in _LABEL_TABLES}
    names["alert_targets"] |= names["categories"]
    names["categories"] |= names["alert_targets"]
    return names


def _label_table(value: Any, path: str, known: set[str], problems: list[tuple[str, str]]) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        problems.append((path, "must be a table"))
        return {}
    out: dict[str, tuple[str, ...]] = {}
    for key, items in value.items():
        if key not in known:
            problems.append((f"{path}.{key}", f"unknown name; known: {', '.join(sorted(known))}"))
        elif not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            problems.append((f"{path}.{key}", "must be an array of strings"))
        else:
            out[str(key)] = tuple(items)
    return out


def _with_label_file(s: Settings, problems: list[tuple[str, str]]) -> Settings:
    """Check the inline label tables' names and add the wording of ``[labels] file``."""
    labels = s.labels
    known = _bundled_label_names()
    for table in _LABEL_TABLES:
        _label_table(getattr(labels, table), f"labels.{table}", known[table], problems)
    if not labels.file:
        return s
    path = Path(labels.file)
    if not path.is_absolute() and s.source:
        path = Path(s.source).resolve().parent / path
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        problems.append(("labels.file", f"cannot read {path}: {exc}"))
        return s
    merged: dict[str, Any] = {}
    for table, value in data.items():
        where = f"labels.file({path.name}).{table}"
        if table in _LABEL_TABLES:
            extra = _label_table(value, where, known[table], problems)
            inline: dict[str, tuple[str, ...]] = getattr(labels, table)
            merged[table] = {k: tuple(inline.get(k, ())) + extra.get(k, ()) for k in {*inline, *extra}}
        elif table == "courtesy" and isinstance(value, dict) and set(value) <= {"phrases"} \
                and all(isinstance(p, str) for p in value.get("phrases", [])):
            merged["courtesy"] = labels.courtesy + tuple(value.get("phrases", []))
        else:
            problems.append((where, f"unknown table; known: {', '.join((*_LABEL_TABLES, 'courtesy'))}"))
    return dataclasses.replace(s, labels=dataclasses.replace(labels, **merged))


# Listening on every address (a wildcard bind, not one we make here): conflicts with any host.
_ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104


def _check_semantics(s: Settings, problems: list[tuple[str, str]]) -> None:
    """Rules across keys, with the key path of the offending value."""
    if not (s.database.url.startswith("sqlite:") or s.database.url.startswith("postgresql")):
        problems.append(("database.url", "only sqlite:/// and postgresql+psycopg:// URLs are supported"))
    if s.database.instances > 1 and s.database.url.startswith("sqlite:"):
        problems.append(("database.instances", "several instances need PostgreSQL; SQLite is single-instance"))
    smtp = s.intake.smtp
    if smtp is not None:
        if not 0 < smtp.port < 65536:
            problems.append(("intake.smtp.port", "must be between 1 and 65535"))
        if smtp.max_message_bytes < 1024:
            problems.append(("intake.smtp.max_message_bytes", "must be at least 1024"))
        if smtp.max_connections < 1:
            problems.append(("intake.smtp.max_connections", "must be at least 1"))
        if smtp.max_connections_per_ip < 0:
            problems.append(("intake.smtp.max_connections_per_ip", "must be 0 (no cap) or more"))
        if 0 < smtp.max_concurrent_data_bytes < smtp.max_message_bytes:
            problems.append(("intake.smtp.max_concurrent_data_bytes", "must be 0 or at least max_message_bytes"))
        if smtp.idle_timeout_seconds <= 0:
            problems.append(("intake.smtp.idle_timeout_seconds", "must be positive"))
        for i, relay in enumerate(smtp.trusted_relays):
            try:
                ipaddress.ip_network(relay.strip(), strict=False)
            except ValueError:
                problems.append((f"intake.smtp.trusted_relays[{i}]", f"not an IP address or network: {relay!r}"))
    if smtp is not None and s.metrics is not None and smtp.port == s.metrics.port and (
            smtp.host == s.metrics.host or {smtp.host, s.metrics.host} & _ANY_ADDRESS):
        # Passed check-config, then run failed with EADDRINUSE (outside tester).
        problems.append(("metrics.port", f"the SMTP intake already listens on {smtp.host}:{smtp.port}"))
    if s.authentication.max_command_age_days <= 0:
        problems.append(("authentication.max_command_age_days", "must be greater than 0"))
    if s.processing.isolation not in ("process", "thread"):
        problems.append(("processing.isolation", 'must be "process" or "thread"'))
    if s.processing.host not in ("process", "thread"):
        problems.append(("processing.host", 'must be "process" or "thread"'))
    for bound in ("host_stall_seconds", "stalled_unhealthy_seconds", "stalled_watchdog_seconds",
                  "host_restart_first_seconds", "host_restart_max_seconds", "host_down_unhealthy_seconds"):
        if getattr(s.processing, bound) <= 0:
            problems.append((f"processing.{bound}", "must be greater than 0"))
    if not 0 <= s.processing.staff_notice_max_delay_seconds <= STAFF_NOTICE_DELAY_LIMIT:
        # Beyond it `status` and /healthz would call the notifications of a long backlog stalled.
        problems.append(("processing.staff_notice_max_delay_seconds",
                         f"must be between 0 and {STAFF_NOTICE_DELAY_LIMIT:.0f}"))
    if s.processing.staff_notice_digest_from < 0:
        problems.append(("processing.staff_notice_digest_from", "must be 0 (never) or a number of notifications"))
    if s.processing.stalled_watchdog_seconds < s.processing.stalled_unhealthy_seconds:
        problems.append(("processing.stalled_watchdog_seconds", "must be at least stalled_unhealthy_seconds"))
    if s.processing.host_restart_max_seconds < s.processing.host_restart_first_seconds:
        problems.append(("processing.host_restart_max_seconds", "must be at least host_restart_first_seconds"))
    if s.processing.analysis_timeout_seconds <= 0:
        problems.append(("processing.analysis_timeout_seconds", "must be greater than 0"))
    if s.processing.max_attempts < 1:
        problems.append(("processing.max_attempts", "must be at least 1"))
    if s.processing.dns_retry_seconds <= 0:
        problems.append(("processing.dns_retry_seconds", "must be greater than 0"))
    if s.directory.bounce_min_messages < 1:
        problems.append(("directory.bounce_min_messages", "must be at least 1"))
    if not 0 < s.relay.port < 65536:
        problems.append(("relay.port", "must be between 1 and 65535"))
    if s.relay.starttls and s.relay.tls:
        problems.append(("relay.tls", "tls (implicit) and starttls are exclusive"))
    # FANOUT
    if not 0 <= s.bulletins.signing_processes <= 64:
        problems.append(("bulletins.signing_processes", "must be between 0 (one per CPU) and 64"))
    if not 1 <= s.bulletins.fanout_commit_every <= 10_000:
        problems.append(("bulletins.fanout_commit_every", "must be between 1 and 10000"))
    if s.dkim is not None:
        if not s.dkim.domain:
            problems.append(("dkim.domain", "required when [dkim] is present"))
        if not s.dkim.keys:
            problems.append(("dkim.keys", "at least one key is required when [dkim] is present"))
        for i, key in enumerate(s.dkim.keys):
            p = f"dkim.keys[{i}]"
            if not key.selector:
                problems.append((f"{p}.selector", "required"))
            if key.algorithm not in ("rsa-sha256", "ed25519-sha256"):
                problems.append((f"{p}.algorithm", "must be rsa-sha256 or ed25519-sha256"))
            if not key.private_key_file:
                problems.append((f"{p}.private_key_file", "required"))
    if not s.regions:
        problems.append(("regions", "at least one [[regions]] entry is required"))
    codes: set[str] = set()
    for i, region in enumerate(s.regions):
        p = f"regions[{i}]"
        if not region.code or not region.code.isalnum() or region.code.upper() != region.code:
            problems.append((f"{p}.code", "required, upper-case letters and digits (e.g. ARA)"))
        if region.code in codes:
            problems.append((f"{p}.code", f"duplicate region {region.code}"))
        codes.add(region.code)
        _check_address(region.address, f"{p}.address", problems)
        if region.imap is not None:
            imap = region.imap
            if not imap.host:
                problems.append((f"{p}.imap.host", "required"))
            if not imap.username:
                problems.append((f"{p}.imap.username", "required"))
            if not imap.password_file:
                problems.append((f"{p}.imap.password_file", "required (secrets come from files)"))
            if imap.initial_sync not in ("new", "all"):
                problems.append((f"{p}.imap.initial_sync", "must be 'new' or 'all'"))
            if not imap.tls and not imap.starttls and imap.host not in ("127.0.0.1", "localhost", "::1"):
                problems.append((f"{p}.imap.tls", "plain IMAP is only allowed to a loopback host"))
            if imap.idle_renew_seconds > 29 * 60:
                problems.append((f"{p}.imap.idle_renew_seconds", "RFC 2177: at most 1740 (29 minutes)"))
    for i, staff in enumerate(s.staff):
        _check_address(staff.address, f"staff[{i}].address", problems)
        if staff.region not in codes:
            problems.append((f"staff[{i}].region", f"unknown region {staff.region!r}"))
    _check_address(s.acss.address, "acss.address", problems)
    for budget in ("auto_reply_global_per_hour", "staff_notifications_per_sender_per_hour",
                   "staff_notifications_unauthenticated_per_hour"):
        if getattr(s.outbound, budget) < 1:
            problems.append((f"outbound.{budget}", "must be at least 1"))
    if s.outbound.staff_attachment_max_bytes < 0:
        problems.append(("outbound.staff_attachment_max_bytes", "must be >= 0 (0: never attach the original)"))
    if s.outbound.staff_failure_window_hours <= 0:
        problems.append(("outbound.staff_failure_window_hours", "must be positive"))
    unknown_formats = [f for f in s.outbound.indicator_formats if f not in ("stix", "misp", "csv")]
    if unknown_formats or len(set(s.outbound.indicator_formats)) != len(s.outbound.indicator_formats):
        problems.append(("outbound.indicator_formats",
                         f"each of stix, misp, csv at most once (got {list(s.outbound.indicator_formats)})"))
    if s.relay.assumed_size_bytes < 0:
        problems.append(("relay.assumed_size_bytes", "must be >= 0 (0: no limit assumed)"))
    if s.cases.reply_to_closed not in ("reopen", "link"):
        problems.append(("cases.reply_to_closed", 'must be "reopen" or "link"'))
    if s.cases.confirmation_hours <= 0:
        problems.append(("cases.confirmation_hours", "must be positive"))
    if s.logging.format not in ("auto", "json", "text"):
        problems.append(("logging.format", "must be auto, json or text"))
    if s.logging.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        problems.append(("logging.level", "must be DEBUG, INFO, WARNING, ERROR or CRITICAL"))
    if s.metrics is not None and not 0 <= s.metrics.port < 65536:
        problems.append(("metrics.port", "must be between 0 and 65535 (0: any free port)"))
    _check_scheduler(s.scheduler, problems)


def _check_scheduler(sc: SchedulerSettings, problems: list[tuple[str, str]]) -> None:
    for key in ("digest_hour", "weekly_report_hour", "quarantine_summary_hour", "retention_hour",
                "business_start_hour", "business_end_hour"):
        if not 0 <= getattr(sc, key) <= 23:
            problems.append((f"scheduler.{key}", "must be an hour between 0 and 23"))
    if sc.business_start_hour >= sc.business_end_hour:
        problems.append(("scheduler.business_end_hour", "must be after business_start_hour"))
    if not 0 <= sc.weekly_report_weekday <= 6:
        problems.append(("scheduler.weekly_report_weekday", "must be 0 (Monday) to 6 (Sunday)"))
    for status, deadline in sc.deadlines.items():
        if status not in INCIDENT_STATUSES + ALERT_STATUSES:
            problems.append((f"scheduler.deadlines.{status}", "unknown case status"))
        if deadline.hours < 0 or deadline.cadence_hours < 0 or deadline.max_steps < 1:
            problems.append((f"scheduler.deadlines.{status}", "hours >= 0, cadence_hours >= 0, max_steps >= 1"))
    for status, days in sc.retention_days.items():
        if status not in INCIDENT_STATUSES + ALERT_STATUSES:
            problems.append((f"scheduler.retention_days.{status}", "unknown case status"))
        elif days < 0:
            problems.append((f"scheduler.retention_days.{status}", "must be >= 0 (0 keeps the data)"))
    for key in ("deadline_interval_minutes", "housekeeping_interval_minutes", "quarantine_notice_minutes"):
        if getattr(sc, key) <= 0:
            problems.append((f"scheduler.{key}", "must be positive"))


def file_problems(s: Settings) -> list[tuple[str, str]]:
    """Secrets and keys that must be readable to run (checked by ``check-config`` and ``run``,
    not by every command, so ``parse`` works on a machine without the production secrets)."""
    problems: list[tuple[str, str]] = []

    def check(path: str | None, key: str) -> None:
        if path and not Path(path).is_file():
            problems.append((key, f"file not found: {path}"))

    check(s.relay.password_file, "relay.password_file")
    if s.dkim is not None:
        for i, key in enumerate(s.dkim.keys):
            check(key.private_key_file, f"dkim.keys[{i}].private_key_file")
    for i, region in enumerate(s.regions):
        if region.imap is not None:
            check(region.imap.password_file, f"regions[{i}].imap.password_file")
    if s.outbound.templates_dir and not Path(s.outbound.templates_dir).is_dir():
        problems.append(("outbound.templates_dir", f"directory not found: {s.outbound.templates_dir}"))
    return problems
