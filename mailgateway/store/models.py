"""SQLAlchemy mapping of every table (docs/architecture.md, "Contracts").

One module so the schema reads in one place; behaviour lives in the services. Times are stored
as timezone-aware UTC. Raw inbound bytes and final outbound bytes are kept verbatim (never
re-serialised). The schema is created by Alembic (``mailgateway/migrations``); after changing a
model, regenerate the migration with ``scripts/new-migration``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import false as sa_false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only has INTEGER PRIMARY KEY as an auto-increment rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: DateTime(timezone=True), dict[str, Any]: JSON, list[Any]: JSON,
    }


# --- intake -------------------------------------------------------------------------------------


def dedup_key(sha256: str, region: str | None) -> str:
    """The intake deduplication key: the content hash scoped by the receiving region."""
    return f"{sha256}:{region or '-'}"


def _dedup_default(context: Any) -> str:
    params = context.get_current_parameters()
    return dedup_key(params["sha256"], params.get("region"))


class InboundMessage(Base):
    """A message as accepted: raw bytes, where it came from, what processing made of it."""

    __tablename__ = "inbound_messages"
    # The sweep's queue (processing/runner.py ``Processor.pending``): received rows by priority,
    # first come first served within one priority.
    __table_args__ = (Index("ix_inbound_pending", "status", "priority", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # Not unique: one SMTP transaction to several regional mailboxes is stored once per receiving
    # region (docs/guarantees.md, "The region is where the mail arrived"); ``dedup_key`` is unique.
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    # ``<sha256>:<region or ->``: a duplicate is the same bytes received again *by the same region*
    # (intake/accept.py). Rows written without it (tests, old code) get it from sha256 and region.
    dedup_key: Mapped[str] = mapped_column(String(80), unique=True, default=_dedup_default)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(16))  # smtp | lmtp | imap | cli
    mail_from: Mapped[str | None] = mapped_column(String(512))
    # SMTP client IP (intake/smtp.py); None for IMAP and CLI. Authentication-Results are accepted
    # only from [intake.smtp] trusted_relays (docs/guarantees.md).
    peer: Mapped[str | None] = mapped_column(String(64))
    rcpt_tos: Mapped[list[Any]] = mapped_column(default=list)
    region: Mapped[str | None] = mapped_column(String(8))
    received_at: Mapped[datetime]
    # received -> processed | quarantined; processing is retried while "received".
    status: Mapped[str] = mapped_column(String(16), default="received", index=True)
    kind: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    auth: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_until: Mapped[datetime | None]
    # Not tried again before this time (a DKIM key lookup failed temporarily: processing/runner.py);
    # None: due now. Only meaningful while "received".
    retry_at: Mapped[datetime | None]
    processed_at: Mapped[datetime | None]
    # GDPR retention (jobs/retention.py): raw emptied, envelope cleared; hash kept for dedup.
    purged_at: Mapped[datetime | None]
    # Processing order, decided at accept from the unverified envelope and From (intake/priority.py):
    # 1 staff or ACSS, 0 the rest. It orders work only and grants nothing (docs/guarantees.md).
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ReplayKey(Base):
    """A command mail or alert already acted on (processing/replay.py): one row per key.

    Keys are ``<REGION>|dkim:<d>:<sha256 of b=>`` (the accepted signature) and
    ``<REGION>|mid:<Message-ID>``, scoped by the region the message acts for; a second message
    carrying either in that region is a replay, whatever its other bytes (docs/guarantees.md, "once only").
    Recorded in the transaction that acts, so a crash before the commit re-runs exactly once."""

    __tablename__ = "replay_keys"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    inbound_id: Mapped[int] = mapped_column(ForeignKey("inbound_messages.id"), index=True)
    at: Mapped[datetime]


class InboundSourceKey(Base):
    """Source-side identity of a message (``imap:ARA:INBOX:<uidvalidity>:<uid>``) for dedup."""

    __tablename__ = "inbound_source_keys"

    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    inbound_id: Mapped[int] = mapped_column(ForeignKey("inbound_messages.id"), index=True)
    # Set once the source has been answered (IMAP: moved/flagged on the server).
    acknowledged_at: Mapped[datetime | None]
    # IMAP: set once a quarantined message was moved on to the quarantine folder (or looked for).
    quarantined_at: Mapped[datetime | None]


class MailboxState(Base):
    """IMAP watcher state per regional mailbox (one row per region+folder)."""

    __tablename__ = "mailbox_states"

    mailbox: Mapped[str] = mapped_column(String(256), primary_key=True)
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    # Highest UID already seen (accepted or deliberately skipped by the initial-sync policy).
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    last_contact_at: Mapped[datetime | None]
    last_message_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(32), default="new")
    holder: Mapped[str | None] = mapped_column(String(128))


# --- cases --------------------------------------------------------------------------------------


class CaseSequence(Base):
    """Last number used per region and year: references are never reused (docs/architecture.md, "Contracts")."""

    __tablename__ = "case_sequences"

    region: Mapped[str] = mapped_column(String(8), primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    last: Mapped[int] = mapped_column(Integer, default=0)


class Case(Base):
    __tablename__ = "cases"
    # (status, opened_at): ``cases list --status X`` reads the newest rows of one status straight
    # from the index, no sort of every closed case (benchmarks/cases_list.py, README, "Benchmarks").
    # ix_cases_declarant_region (migration 0010): a declaration without FINESS looks for the open
    # cases of its authenticated declarant (cases/service._same_declarant), which read the whole
    # table (issue 19: what grows with the number of open cases is indexed). Both columns: on one
    # SQLite's planner preferred ix_cases_region_status, every case of an agency's one region.
    __table_args__ = (Index("ix_cases_region_status", "region", "status"),
                      Index("ix_cases_status_opened_at", "status", "opened_at"),
                      Index("ix_cases_declarant_region", "declarant", "region"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    reference: Mapped[str] = mapped_column(String(32), unique=True)
    region: Mapped[str] = mapped_column(String(8))
    kind: Mapped[str] = mapped_column(String(16))  # incident | alert | bulletin
    status: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16), default="NON_QUALIFIE")
    nature: Mapped[str | None] = mapped_column(String(32))
    incident_type: Mapped[str | None] = mapped_column(String(64))
    category: Mapped[str | None] = mapped_column(String(32))
    tlp: Mapped[str | None] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(Text, default="")
    finess: Mapped[str | None] = mapped_column(String(9), index=True)
    establishment: Mapped[str | None] = mapped_column(Text)
    declarant: Mapped[str | None] = mapped_column(String(512))
    assignee: Mapped[str | None] = mapped_column(String(512))
    fields: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    opened_at: Mapped[datetime] = mapped_column(index=True)
    updated_at: Mapped[datetime]
    acknowledged_at: Mapped[datetime | None]
    qualified_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    # A merged duplicate points at the case it was merged into (#fusionner).
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))
    linked_case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))
    # Message-ID of the original message and of our first message (threading anchor).
    # Indexed (issue 19): threading looks a reply's In-Reply-To / References up here (last resort
    # of processing/worker.thread_lookup_for), once per reply; a scan of every case otherwise.
    origin_message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    last_event_hash: Mapped[str | None] = mapped_column(String(64))
    event_count: Mapped[int] = mapped_column(Integer, default=0)
    # GDPR retention (jobs/retention.py): personal data removed, statistics kept.
    anonymised_at: Mapped[datetime | None]


class CaseEvent(Base):
    """Append-only, hash-chained timeline: hash = sha256(prev_hash + canonical JSON of the event)."""

    __tablename__ = "case_events"
    __table_args__ = (UniqueConstraint("case_id", "seq"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(512))
    type: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_messages.id"))
    outbound_id: Mapped[int | None] = mapped_column(ForeignKey("outbound_messages.id"))
    prev_hash: Mapped[str] = mapped_column(String(64))
    # The hash tells each new event apart in one multi-row INSERT … RETURNING id: SQLite cannot
    # return generated ids in the order of the rows given, so without a client-side "sentinel"
    # SQLAlchemy inserts the events of a flush one statement each (issue 19: five per declaration).
    # No DDL: the flag only tells the ORM how to match returned rows (sha256 over case and seq: unique).
    hash: Mapped[str] = mapped_column(String(64), insert_sentinel=True)
    # sha256 of the case's audited state when the event was written (cases/timeline.py); part of
    # the event hash. NULL for events written before migration 0002 (their hash is unchanged).
    state_hash: Mapped[str | None] = mapped_column(String(64))


class AuditHead(Base):
    """Head of a region's audit ledger: locked (row lock / SQLite write lock) to append to it."""

    __tablename__ = "audit_heads"

    region: Mapped[str] = mapped_column(String(8), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    hash: Mapped[str] = mapped_column(String(64))


class AuditLedger(Base):
    """Append-only, hash-chained per region: each entry anchors one case's chain head (reference,
    last event seq and hash) outside the mutable case row, so a deleted case, a truncated timeline
    or a rewritten case row is detected by ``cases verify`` (cases/timeline.py)."""

    __tablename__ = "audit_ledger"
    __table_args__ = (UniqueConstraint("region", "seq"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    region: Mapped[str] = mapped_column(String(8))
    seq: Mapped[int] = mapped_column(Integer)
    case_reference: Mapped[str] = mapped_column(String(32), index=True)
    event_seq: Mapped[int] = mapped_column(Integer)
    event_hash: Mapped[str] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class Indicator(Base):
    __tablename__ = "indicators"
    __table_args__ = (UniqueConstraint("case_id", "type", "value"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    type: Mapped[str] = mapped_column(String(16))
    value: Mapped[str] = mapped_column(Text)


class Confirmation(Base):
    """One-time token for broadcast/destructive commands (#confirmer <token>)."""

    __tablename__ = "confirmations"

    token: Mapped[str] = mapped_column(String(64), primary_key=True)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))
    bulletin_id: Mapped[int | None] = mapped_column(ForeignKey("bulletins.id"))
    command: Mapped[str] = mapped_column(String(32))
    args: Mapped[list[Any]] = mapped_column(default=list)
    requested_by: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    used_by: Mapped[str | None] = mapped_column(String(512))


class Reminder(Base):
    """A deadline reminder sent: at most one per case, deadline and cadence step."""

    __tablename__ = "reminders"
    __table_args__ = (UniqueConstraint("case_id", "deadline", "step"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    deadline: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer)
    sent_at: Mapped[datetime]


class JobRun(Base):
    """One run of a periodic job per period (digest per day, report per week): inserted first,
    in the transaction that queues the job's mail, so each period runs once across instances."""

    __tablename__ = "job_runs"
    __table_args__ = (UniqueConstraint("job", "period"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job: Mapped[str] = mapped_column(String(64))
    period: Mapped[str] = mapped_column(String(64))
    ran_at: Mapped[datetime] = mapped_column(index=True)
    summary: Mapped[str | None] = mapped_column(Text)


# ROUTING: alert receipts per region (processing/alert_links.py).


class AlertReceipt(Base):
    """One alert case opened in one region for a national alert reference (ACSS/CERT id).

    A national alert delivered to several regions opens one case per region, linked through this
    table; the same reference again in one region (a corrected version, a resend under a new
    Message-ID) is linked to the earlier case and flagged to staff (docs/guarantees.md)."""

    __tablename__ = "alert_receipts"
    __table_args__ = (Index("ix_alert_receipts_reference_region", "reference", "region"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    reference: Mapped[str] = mapped_column(String(100))
    region: Mapped[str] = mapped_column(String(8))
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    inbound_id: Mapped[int] = mapped_column(ForeignKey("inbound_messages.id"))
    received_at: Mapped[datetime]


# end ROUTING


# --- directory ----------------------------------------------------------------------------------


class Establishment(Base):
    """A FINESS geographic establishment (ET)."""

    __tablename__ = "establishments"
    __table_args__ = (Index("ix_establishments_region_category", "region", "category"),)

    finess: Mapped[str] = mapped_column(String(9), primary_key=True)
    # Indexed: a declaration naming an EJ (or an unknown number) is looked up by it (migration 0006).
    finess_ej: Mapped[str | None] = mapped_column(String(9), index=True)
    name: Mapped[str] = mapped_column(Text)
    category: Mapped[str | None] = mapped_column(String(32))
    categetab: Mapped[str | None] = mapped_column(String(8))
    departement: Mapped[str | None] = mapped_column(String(3), index=True)
    region: Mapped[str | None] = mapped_column(String(8))
    commune: Mapped[str | None] = mapped_column(Text)
    # "finess" (national extraction, authoritative) or "contacts" (created from the ARS contacts
    # CSV for a structure not yet in the extraction; a later FINESS import takes it over).
    source: Mapped[str] = mapped_column(String(16), default="finess")
    updated_at: Mapped[datetime]


def _address_domain(context: Any) -> str | None:
    """The domain of the row's ``address`` (lower case, no root dot), as it is inserted."""
    address = context.get_current_parameters().get("address")
    return contact_domain(address) if isinstance(address, str) else None


def contact_domain(address: str) -> str | None:
    """The domain part of a contact address, as ``contacts.domain`` holds it."""
    domain = address.rpartition("@")[2].strip().lower().rstrip(".")
    return domain or None


class Contact(Base):
    """An establishment's mailbox: ssi (bulletin recipient), rssi, dsi, direction."""

    __tablename__ = "contacts"
    __table_args__ = (UniqueConstraint("finess", "address", "role"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    finess: Mapped[str] = mapped_column(ForeignKey("establishments.finess"), index=True)
    address: Mapped[str] = mapped_column(String(512), index=True)
    # Set from ``address`` at insert: « is this signing domain one we deal with? » is asked of
    # every authenticated message, and ``address LIKE '%@domain'`` scanned the whole directory
    # (8 ms a message at 40,000 contacts; issue 19). Indexed, it is one lookup.
    domain: Mapped[str | None] = mapped_column(String(253), index=True, default=_address_domain)
    role: Mapped[str] = mapped_column(String(16), default="ssi")
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | bouncing | disabled
    bounce_score: Mapped[float] = mapped_column(default=0.0)
    last_bounce_at: Mapped[datetime | None]
    # Bounces before this instant no longer count towards the distinct-message rule (staff
    # reactivated the contact); None: all within the window count (directory/bounces.py).
    bounces_counted_since: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ContactBounce(Base):
    __tablename__ = "contact_bounces"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    at: Mapped[datetime]
    permanent: Mapped[bool]
    diagnostic: Mapped[str | None] = mapped_column(Text)
    outbound_id: Mapped[int | None] = mapped_column(ForeignKey("outbound_messages.id"))
    # How the failure reached us: relay (our relay's own answer), verp (a DSN at the message's
    # VERP address), message_id (a DSN that only names a Message-ID); None: before 0002.
    evidence: Mapped[str | None] = mapped_column(String(16))


class StaffMember(Base):
    """Staff imported by CSV, in addition to [[staff]] in the configuration."""

    __tablename__ = "staff"

    address: Mapped[str] = mapped_column(String(512), primary_key=True)
    region: Mapped[str] = mapped_column(String(8), primary_key=True)
    role: Mapped[str] = mapped_column(String(32), default="agent")


# --- dispatch -----------------------------------------------------------------------------------


class OutboundMessage(Base):
    """Final signed bytes for one recipient; the sender renders nothing new."""

    __tablename__ = "outbound_messages"
    __table_args__ = (Index("ix_outbound_due", "status", "priority", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # The same logical mail is never queued twice (e.g. after reprocessing).
    idempotency_key: Mapped[str] = mapped_column(String(256), unique=True)
    kind: Mapped[str] = mapped_column(String(32))  # acknowledgement, notification, bulletin...
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    bulletin_id: Mapped[int | None] = mapped_column(ForeignKey("bulletins.id"), index=True)
    message_id: Mapped[str] = mapped_column(String(998), index=True)
    verp_token: Mapped[str] = mapped_column(String(64), unique=True)
    mail_from: Mapped[str] = mapped_column(String(512))
    recipient: Mapped[str] = mapped_column(String(512), index=True)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    # Lower drains first: 0 case mail, 5 digests/reports, 10 bulletins.
    priority: Mapped[int] = mapped_column(Integer, default=0)
    # queued -> sending -> sent | failed (permanent) | expired (deadline) | refused (policy)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime]
    deadline_at: Mapped[datetime]
    lease_until: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    sent_at: Mapped[datetime | None]
    last_answer: Mapped[str | None] = mapped_column(Text)
    bounced_at: Mapped[datetime | None]
    # GDPR retention (jobs/retention.py): final bytes emptied.
    purged_at: Mapped[datetime | None]


class DeliveryAttempt(Base):
    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    outbound_id: Mapped[int] = mapped_column(ForeignKey("outbound_messages.id"), index=True)
    at: Mapped[datetime]
    outcome: Mapped[str] = mapped_column(String(16))  # sent | temporary | permanent
    code: Mapped[int | None] = mapped_column(Integer)
    answer: Mapped[str | None] = mapped_column(Text)


class AutoReplyLog(Base):
    """Automatic replies sent, for the per-recipient and per-case storm caps."""

    __tablename__ = "auto_reply_log"
    # "at" alone: the global budget counts every automatic reply of the last hour (docs/guarantees.md).
    __table_args__ = (Index("ix_auto_reply_recipient_at", "recipient", "at"), Index("ix_auto_reply_at", "at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    recipient: Mapped[str] = mapped_column(String(512))
    # Indexed (issue 19): the per-case storm cap is an OR with the per-recipient one, which SQLite
    # answers from two indexes, or by scanning every automatic reply ever sent without this one.
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    at: Mapped[datetime]
    # Sent to the very address that authenticated the message it answers: the per-recipient caps
    # count these apart from replies to an address anyone could have written in a From (forged
    # mail in a declarant's name must not use up the acknowledgements the declarant is owed).
    verified: Mapped[bool] = mapped_column(default=False, server_default=sa_false())


class StaffNoticeLog(Base):
    """Staff notifications caused by an inbound sender, for the per-sender cap (docs/guarantees.md)."""

    __tablename__ = "staff_notice_log"
    __table_args__ = (Index("ix_staff_notice_sender_at", "sender", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sender: Mapped[str] = mapped_column(String(512))
    at: Mapped[datetime]


class DeferredStaffNotice(Base):
    """A staff notification put off while a backlog is processed (processing/later.py): what
    ``Mailer.send_to_staff`` is to be called with, written in the transaction that processed its
    message, composed and queued once the backlog is done (or at the latest after a bound)."""

    __tablename__ = "deferred_staff_notices"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(index=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_messages.id"))
    spec: Mapped[str] = mapped_column(Text)  # JSON, encoded once by the writer (it checks it is plain JSON)


class Bulletin(Base):
    __tablename__ = "bulletins"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    region: Mapped[str] = mapped_column(String(8))
    target: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    tlp: Mapped[str] = mapped_column(String(16), default="CLEAR")
    # draft -> approved -> sending -> sent | cancelled
    status: Mapped[str] = mapped_column(String(16), default="draft")
    author: Mapped[str] = mapped_column(String(512))
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))
    created_at: Mapped[datetime]
    approved_at: Mapped[datetime | None]
    approved_by: Mapped[str | None] = mapped_column(String(512))
    report_sent_at: Mapped[datetime | None]
    recipients: Mapped[int] = mapped_column(Integer, default=0)
    # Who fans it out while ``sending``: ``<host>:<pid>`` (dispatch/liveness.py). A starting daemon
    # resumes only the fan-outs of dead owners, never a live CLI's or another instance's.
    fan_out_owner: Mapped[str | None] = mapped_column(String(255))


class BulletinRecipient(Base):
    __tablename__ = "bulletin_recipients"
    __table_args__ = (UniqueConstraint("bulletin_id", "finess"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    bulletin_id: Mapped[int] = mapped_column(ForeignKey("bulletins.id"), index=True)
    finess: Mapped[str] = mapped_column(String(9))
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"))
    address: Mapped[str] = mapped_column(String(512))
    outbound_id: Mapped[int | None] = mapped_column(ForeignKey("outbound_messages.id"), index=True)
    # queued -> delivered | bounced; acknowledged when the establishment replied
    status: Mapped[str] = mapped_column(String(16), default="queued")
    acknowledged_at: Mapped[datetime | None]
    reminded_at: Mapped[datetime | None]


# --- installation -------------------------------------------------------------------------------


class InstallationSecret(Base):
    """Random keys of this installation, created once on first use (store/installation.py).

    Kept in the database so that every instance sharing it derives the same identifiers
    (Message-IDs of re-sent mail stay stable across restarts and instances)."""

    __tablename__ = "installation_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]


# SILENT: nothing fails silently (relay SIZE memory, quarantine notices and releases).


class RelayLimit(Base):
    """The last message size limit a relay advertised (EHLO SIZE, RFC 1870 §4), per relay.

    Written by the sender when it learns a new value; read when mail to staff is composed, so a
    notification never carries an attachment the relay would refuse for good (5.3.4)."""

    __tablename__ = "relay_limits"

    relay: Mapped[str] = mapped_column(String(255), primary_key=True)  # host:port
    size_bytes: Mapped[int | None] = mapped_column(Integer)  # None: no limit advertised (SIZE 0 or absent)
    seen_at: Mapped[datetime]


class QuarantineLog(Base):
    """What was done about a quarantined message: staff notified, released for processing (audit)."""

    __tablename__ = "quarantine_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    inbound_id: Mapped[int] = mapped_column(ForeignKey("inbound_messages.id"), index=True)
    action: Mapped[str] = mapped_column(String(16))  # notified | released
    actor: Mapped[str] = mapped_column(String(512))
    at: Mapped[datetime]
    detail: Mapped[str | None] = mapped_column(Text)


# end SILENT
