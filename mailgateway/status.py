"""``mailgateway status``: the gateway's health at a glance, read from the database (docs/operations.md).

The same :class:`Snapshot` feeds the Prometheus gauges (``metrics``), so the command and the
dashboards never disagree. Reading only: the command never migrates nor writes.

Exit codes: 0 all well, 1 a problem is shown (a mailbox unreachable for too long, schema behind,
a mail to staff refused for good in the last ``[outbound] staff_failure_window_hours``, a message
due for processing waiting longer than PROCESSING_LATE_SECONDS: processing is down or stalled),
2 the database cannot be read.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from mailgateway.cases.lifecycle import CLOSED
from mailgateway.clock import aware, french_datetime
from mailgateway.dispatch.failures import FailedMail, count_staff_failures, staff_failures
from mailgateway.store.models import Case, DeferredStaffNotice, InboundMessage, MailboxState, OutboundMessage

# Outbox rows still to deliver (queued -> sending -> sent | failed | expired | refused).
PENDING_OUTBOX = ("queued", "sending")
# IMAP watcher states in which the mailbox is being read (intake/imap.py MailboxHealth.state).
CONNECTED_STATES = frozenset({"idle", "polling", "syncing"})
# Beyond this the mailbox counts as unreachable ([metrics] mailbox_unhealthy_after_seconds).
DEFAULT_MAILBOX_GRACE = 300.0
# A message accepted and due (``received``, not deferred for a DNS retry) waiting longer than this:
# processing is down or stalled (a host that dies at each start, a sweep that fails each time). A
# burst of thousands is processed well within it (README, "Benchmarks").
PROCESSING_LATE_SECONDS = 600.0


@dataclass(frozen=True)
class MailboxView:
    mailbox: str
    state: str
    last_contact_at: datetime | None = None
    last_message_at: datetime | None = None
    last_error: str | None = None
    # The instance watching it (several instances on PostgreSQL: the holder of its lock).
    holder: str | None = None

    @property
    def connected(self) -> bool:
        return self.state in CONNECTED_STATES

    def problem(self, now: datetime, grace_seconds: float) -> str | None:
        """Why this mailbox is unhealthy, or None.

        A reconnection is normal (server restart, IDLE renewal); a mailbox is reported only
        when it has not been reached for ``grace_seconds``.
        """
        # "standby": another instance holds this mailbox (intake/leadership.py), nothing is wrong.
        if self.connected or self.state in ("new", "stopped", "standby"):
            return None
        if self.last_contact_at is not None:
            silent = (now - aware(self.last_contact_at)).total_seconds()
            if silent <= grace_seconds:
                return None
            since = f"depuis {int(silent)} s"
        else:
            since = "jamais joignable"
        detail = f" : {self.last_error}" if self.last_error else ""
        return f"boîte {self.mailbox} injoignable ({self.state}, {since}){detail}"


@dataclass(frozen=True)
class Snapshot:
    at: datetime
    inbound_backlog: int  # accepted, not yet processed
    quarantined: int
    outbox: dict[str, int]  # pending rows by status
    outbox_oldest_age_seconds: float | None
    cases_open: int
    mailboxes: tuple[MailboxView, ...] = ()
    # Only in a full snapshot (a scan of the inbound table: the command, not every scrape).
    inbound: dict[str, dict[str, int]] = field(default_factory=dict)  # status -> kind -> count
    cases_open_by_region: dict[str, int] = field(default_factory=dict)
    # Mail to staff refused for good (5yz) or expired within the failure window (dispatch/failures.py);
    # the list only in a full snapshot.
    staff_failed: int = 0
    staff_failures: tuple[FailedMail, ...] = ()
    # Age of the oldest message due for processing (received, not deferred), None when none waits.
    inbound_oldest_due_age_seconds: float | None = None
    # Staff notifications put off behind a backlog (processing/later.py): how many, the oldest's age.
    staff_notices_deferred: int = 0
    staff_notices_oldest_age_seconds: float | None = None

    @property
    def outbox_depth(self) -> int:
        return sum(self.outbox.values())

    def problems(self, grace_seconds: float = DEFAULT_MAILBOX_GRACE) -> list[str]:
        found = [p for m in self.mailboxes if (p := m.problem(self.at, grace_seconds))]
        if self.staff_failed:
            found.append(f"{self.staff_failed} courriel(s) aux agents non remis (refus définitif du relais "
                         "ou délai dépassé) : « mailgateway outbox list », puis « outbox retry ID »")
        late = self.inbound_oldest_due_age_seconds
        if late is not None and late > PROCESSING_LATE_SECONDS:
            found.append(f"traitement arrêté ou bloqué : le plus ancien message à traiter attend depuis {_age(late)} "
                         f"(processing stalled: oldest due message waiting {int(late)} s) ; voir le journal "
                         "du service")
        held = self.staff_notices_oldest_age_seconds
        if held is not None and held > PROCESSING_LATE_SECONDS:
            found.append(f"{self.staff_notices_deferred} notification(s) aux agents différée(s), la plus ancienne "
                         f"depuis {_age(held)} (staff notifications deferred for {int(held)} s: processing stalled "
                         "or stopped) ; voir le journal du service")
        return found


def oldest_due_received(session: Session, now: datetime) -> datetime | None:
    """When the oldest message due for processing arrived (``received``, its DNS retry not in the
    future: processing/runner.py ``due_query``), or None."""
    m = InboundMessage
    found = session.scalar(select(func.min(m.received_at))
                           .where(m.status == "received", or_(m.retry_at.is_(None), m.retry_at <= now)))
    return aware(found) if found is not None else None


def _count(session: Session, stmt: Any) -> int:
    return int(session.scalar(stmt) or 0)


def read_mailboxes(session: Session) -> tuple[MailboxView, ...]:
    rows = session.scalars(select(MailboxState).order_by(MailboxState.mailbox))
    return tuple(MailboxView(r.mailbox, r.state, r.last_contact_at, r.last_message_at, r.last_error, r.holder)
                 for r in rows)


def snapshot(session: Session, now: datetime, *, full: bool = True, staff: Collection[str] = (),
             failures_since: datetime | None = None) -> Snapshot:
    """Read the counters; ``full=False`` keeps to indexed queries (cheap enough for every scrape).

    ``staff`` (``directory.staff.all_staff``) and ``failures_since``: count the mail to staff
    that failed for good since then."""
    backlog = _count(session, select(func.count()).select_from(InboundMessage)
                     .where(InboundMessage.status == "received"))
    quarantined = _count(session, select(func.count()).select_from(InboundMessage)
                         .where(InboundMessage.status == "quarantined"))
    outbox = {status: 0 for status in PENDING_OUTBOX}
    for status, n in session.execute(
        select(OutboundMessage.status, func.count()).where(OutboundMessage.status.in_(PENDING_OUTBOX))
        .group_by(OutboundMessage.status)
    ):
        outbox[status] = int(n)
    oldest = session.scalar(select(func.min(OutboundMessage.created_at))
                            .where(OutboundMessage.status.in_(PENDING_OUTBOX)))
    oldest_age = max(0.0, (now - aware(oldest)).total_seconds()) if oldest is not None else None
    open_filter = Case.status.not_in(sorted(CLOSED)), Case.merged_into_id.is_(None)
    cases_open = _count(session, select(func.count()).select_from(Case).where(*open_filter))
    inbound: dict[str, dict[str, int]] = {}
    by_region: dict[str, int] = {}
    if full:
        for status, kind, n in session.execute(
            select(InboundMessage.status, InboundMessage.kind, func.count())
            .group_by(InboundMessage.status, InboundMessage.kind)
        ):
            inbound.setdefault(status, {})[kind or "-"] = int(n)
        for region, n in session.execute(
            select(Case.region, func.count()).where(*open_filter).group_by(Case.region).order_by(Case.region)
        ):
            by_region[region] = int(n)
    failed = 0
    failures: tuple[FailedMail, ...] = ()
    if staff and failures_since is not None:
        failed = count_staff_failures(session, staff, failures_since)
        if full and failed:
            failures = tuple(staff_failures(session, staff, failures_since, limit=20))
    due = oldest_due_received(session, now) if backlog else None
    due_age = max(0.0, (now - due).total_seconds()) if due is not None else None
    deferred, first = session.execute(select(func.count(), func.min(DeferredStaffNotice.created_at))).one()
    deferred_age = max(0.0, (now - aware(first)).total_seconds()) if first is not None else None
    return Snapshot(now, backlog, quarantined, outbox, oldest_age, cases_open, read_mailboxes(session),
                    inbound, by_region, failed, failures, due_age, int(deferred or 0), deferred_age)


def _iso(value: datetime | None) -> str | None:
    return aware(value).isoformat() if value is not None else None


def to_json(snap: Snapshot, grace_seconds: float = DEFAULT_MAILBOX_GRACE) -> dict[str, Any]:
    return {
        "at": snap.at.isoformat(),
        "inbound": snap.inbound,
        "inbound_backlog": snap.inbound_backlog,
        "quarantined": snap.quarantined,
        "outbox": {"depth": snap.outbox_depth, "by_status": snap.outbox,
                   "oldest_age_seconds": snap.outbox_oldest_age_seconds},
        "inbound_oldest_due_age_seconds": snap.inbound_oldest_due_age_seconds,
        "staff_notices_deferred": {"count": snap.staff_notices_deferred,
                                   "oldest_age_seconds": snap.staff_notices_oldest_age_seconds},
        "cases_open": snap.cases_open,
        "cases_open_by_region": snap.cases_open_by_region,
        "staff_mail_failed": snap.staff_failed,
        "staff_mail_failures": [{"id": f.id, "recipient": f.recipient, "kind": f.kind, "status": f.status,
                                 "failed_at": f.failed_at.isoformat(), "answer": f.answer, "case_ref": f.case_ref}
                                for f in snap.staff_failures],
        "mailboxes": [
            {**asdict(m), "last_contact_at": _iso(m.last_contact_at), "last_message_at": _iso(m.last_message_at),
             "connected": m.connected, "problem": m.problem(snap.at, grace_seconds)}
            for m in snap.mailboxes
        ],
        "problems": snap.problems(grace_seconds),
    }


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60:02d}" if s < 172800 else f"{s // 86400} j"


# The stored values (``status --json`` keeps them: DESIGN.md) as the operator reads them.
INBOUND_STATUS_FR = {"received": "reçus", "processed": "traités", "quarantined": "en quarantaine",
                     "failed": "en échec"}
INBOUND_KIND_FR = {"declaration": "déclaration", "alert": "alerte", "command": "commande", "reply": "réponse",
                   "auto_reply": "réponse automatique", "bounce": "non-remise", "loop": "boucle",
                   "unknown": "inconnu", "bulletin": "bulletin", "-": "non analysé"}
OUTBOX_STATUS_FR = {"queued": "en file", "sending": "en cours d'envoi", "sent": "envoyés", "failed": "en échec",
                    "expired": "expirés", "refused": "refusés", "bounced": "rejetés", "cancelled": "annulés",
                    "deferred": "différés", "retry": "à réessayer"}


def format_text(snap: Snapshot, grace_seconds: float = DEFAULT_MAILBOX_GRACE) -> str:
    """French, for the operator's terminal (labels and dates in French; ``to_json`` keeps the codes)."""
    lines = [f"État de mailgateway au {french_datetime(aware(snap.at))}", "", "Messages reçus :"]
    if not snap.inbound:
        lines.append("  aucun")
    for status in sorted(snap.inbound):
        kinds = snap.inbound[status]
        detail = ", ".join(f"{INBOUND_KIND_FR.get(kind, kind)} {n}" for kind, n in sorted(kinds.items()))
        lines.append(f"  {INBOUND_STATUS_FR.get(status, status):<14} {sum(kinds.values()):>7}   ({detail})")
    lines += [
        f"  en attente de traitement : {snap.inbound_backlog}",
        f"  en quarantaine : {snap.quarantined}",
        f"  plus ancien à traiter : {_age(snap.inbound_oldest_due_age_seconds)}",
        "",
        f"File sortante : {snap.outbox_depth} message(s) à envoyer "
        f"({', '.join(f'{OUTBOX_STATUS_FR.get(k, k)} {v}' for k, v in snap.outbox.items())}), "
        f"plus ancien : {_age(snap.outbox_oldest_age_seconds)}",
        f"Notifications aux agents différées (après une rafale) : {snap.staff_notices_deferred}, plus ancienne : "
        f"{_age(snap.staff_notices_oldest_age_seconds)}",
        "",
        f"Dossiers ouverts : {snap.cases_open}"
        + (f" ({', '.join(f'{r} {n}' for r, n in snap.cases_open_by_region.items())})"
           if snap.cases_open_by_region else ""),
        "",
        f"Courriels aux agents non remis : {snap.staff_failed}",
        *(f"  - {french_datetime(aware(f.failed_at))} {f.line_fr()}" for f in snap.staff_failures),
        "",
        "Boîtes IMAP :",
    ]
    if not snap.mailboxes:
        lines.append("  aucune (réception SMTP seulement, ou démon jamais lancé)")
    for m in snap.mailboxes:
        contact = (f"il y a {_age((snap.at - aware(m.last_contact_at)).total_seconds()):<8}" if m.last_contact_at
                   else "jamais établi")  # not « il y a jamais » (outside tester)
        flag = "ok" if m.problem(snap.at, grace_seconds) is None else "PROBLÈME"
        lines.append(f"  {m.mailbox:<24} {m.state:<10} dernier contact {contact} {flag}"
                     + (f" (instance {m.holder})" if m.holder else "")
                     + (f" — {m.last_error}" if m.last_error and not m.connected else ""))
    problems = snap.problems(grace_seconds)
    if problems:
        lines += ["", "Problèmes :"] + [f"  - {p}" for p in problems]
    return "\n".join(lines)
