"""Once only: a command mail or an alert acts at most once (docs/guarantees.md, "once only").

Intake de-duplicates by content hash, which a replay defeats by changing one byte outside what
was signed — one more ``Received:`` line (RFC 5321 §4.4 lets every relay add one) keeps the DKIM
signature valid. So what identifies a message *as acted on* is not its bytes but:

- ``dkim:<d>:<sha256 of b=>`` — the accepted DKIM signature (``SenderVerdict.signature_key``):
  the same signature is the same signed content, however the unsigned part was changed;
- ``mid:<Message-ID>`` — lower-cased, without angle brackets (RFC 5322 §3.6.4: unique per
  message), which also catches the same message signed again or relayed by a trusted
  authserv-id (no signature key then).

Both are scoped by the region the message is processed for (``<REGION>|dkim:…``,
``<REGION>|mid:…``): docs/guarantees.md processes a message once *per region*. One genuine alert sent to
ssi-ara and ssi-pdl is two deliveries of the same signature and Message-ID; a global key made the
second region's copy a "replay", and let anyone holding a Bcc'd copy send it to the wrong region
first to suppress it for the right one. Commands are scoped by their case's region (else the
region the command mail was processed for), so a copy to a second mailbox does not run twice.

Keys are recorded in the transaction that acts (the processing transaction of the message), so a
crash before its commit leaves no key and the message is re-run once; the primary key makes a
concurrent second copy fail its insert, which ``claim`` reports as a replay. Only messages that
act record keys: a forged, unauthenticated copy that arrives first must not burn the Message-ID
of the genuine one.

Commands also carry a date check (``command_date_refusal``): a signed command mail sent anywhere
long ago (a copy, a forward, a leak) is refused when its ``Date:`` is older than
``[authentication] max_command_age_days``, missing, unreadable or more than a day ahead.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailgateway.clock import PARIS, aware
from mailgateway.mail.dkim_canon import relaxed_body
from mailgateway.mail.facts import MessageFacts
from mailgateway.store import fast
from mailgateway.store.models import ReplayKey
from mailgateway.wire import header_block

__all__ = [
    "ALERT_REPLAYED",
    "COMMAND_REPLAYED",
    "DECLARATION_REPLAYED",
    "MAX_FUTURE",
    "already_applied",
    "claim",
    "claim_keys",
    "command_date_refusal",
    "declaration_keys",
    "first_applied_fr",
    "keys_of",
    "message_id_key",
    "recorded",
    "sent_at",
]

COMMAND_REPLAYED = "commande déjà exécutée : message rejoué"
DECLARATION_REPLAYED = "déclaration déjà reçue : message rejoué"
ALERT_REPLAYED = "alerte déjà reçue : message rejoué"
# Clocks drift and time zones get mislabelled, but a command dated more than a day ahead was not
# written now: it would stay "recent" for max_command_age_days + its lead.
MAX_FUTURE = timedelta(days=1)
_KEY_LENGTH = 255  # ReplayKey.key


def _bounded(key: str) -> str:
    """``key`` itself when it fits the column, else its prefix and a SHA-256 of the whole key."""
    if len(key) <= _KEY_LENGTH:
        return key
    prefix = key.split(":", 1)[0]
    return f"{prefix}:sha256:{hashlib.sha256(key.encode('utf-8', 'surrogateescape')).hexdigest()}"


def _scoped(region: str | None, key: str) -> str:
    # "|" cannot occur in a region code (settings: [A-Z0-9] codes); the scope comes first so that
    # _bounded keeps it readable in the prefix of a hashed key.
    return f"{region.upper()}|{key}" if region else key


def _bare(message_id: str | None) -> str:
    """A Message-ID lower-cased, without blanks or angle brackets ("" for none)."""
    return (message_id or "").strip().strip("<>").strip().lower()


def message_id_key(message_id: str | None, region: str | None = None) -> str | None:
    """``[<REGION>|]mid:<id>`` lower-cased without angle brackets, or None for a missing or empty id."""
    value = _bare(message_id)
    return _bounded(_scoped(region, f"mid:{value}")) if value else None


def keys_of(facts: MessageFacts, region: str | None = None) -> list[str]:
    """The replay keys of a message processed for ``region``: its signature, then its Message-ID.

    Every caller that acts passes the region it acts for; ``region=None`` (unscoped keys) is
    kept for tools and tests that inspect keys, never for a decision to act.
    """
    keys: list[str] = []
    if facts.sender.signature_key:
        keys.append(_bounded(_scoped(region, facts.sender.signature_key)))
        keys += [_bounded(_scoped(region, k)) for k in facts.sender.other_signature_keys]
    mid = message_id_key(facts.message_id, region)
    if mid is not None and mid not in keys:
        keys.append(mid)
    return keys


def declaration_keys(facts: MessageFacts, raw: bytes, region: str | None) -> tuple[list[str], list[str]]:
    """(the keys a declaration processed for ``region`` is looked up by, the keys it records).

    - its accepted signature;
    - ``decl:<a|u>:<From>:<Message-ID>:<sha256 of the body>`` — the same message from the same
      address, whatever headers were added in front (a relay retrying after a lost ``250`` adds a
      ``Received:``; intake's content hash no longer matches). The body is hashed as DKIM's
      relaxed canonicalisation reads it (RFC 6376 §3.4.4: line ends, trailing blanks and empty
      lines at the end do not count), so a copy signed twice and replayed under its other
      signature plus a CRLF is still the same declaration.

    ``a`` (authenticated) and ``u`` are apart: an unauthenticated copy is a replay of an
    authenticated one or of an unauthenticated one, but an authenticated declaration only of an
    authenticated one — a forged copy sent first must not swallow the genuine signed declaration
    (outside tester: it did; the genuine one then opens its own case). Without a Message-ID, only
    the signature counts (two declarations may share a body: « RAS » forms)."""
    authenticated = bool(facts.sender.authenticated)
    # Every aligned signature's: a copy stripped of the accepted one verifies under another.
    accepted = facts.sender.signature_key
    signature = ([_bounded(_scoped(region, k)) for k in (accepted, *facts.sender.other_signature_keys)]
                 if authenticated and accepted else [])
    mid = _bare(facts.message_id)
    if not mid:
        return signature, signature
    body = raw[len(header_block(raw)):].replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    digest = hashlib.sha256(relaxed_body(body)).hexdigest()  # linear: the body is untrusted
    sender = (facts.sender.address or "").strip().lower()
    signed = _bounded(_scoped(region, f"decl:a:{sender}:{mid}:{digest}"))
    unsigned = _bounded(_scoped(region, f"decl:u:{sender}:{mid}:{digest}"))
    if authenticated:
        return [*signature, signed], [*signature, signed]
    return [signed, unsigned], [unsigned]


def recorded(session: Session, keys: Sequence[str]) -> ReplayKey | None:
    """The earliest record of any of ``keys`` (the message that already acted), or None."""
    if not keys:
        return None
    return session.scalar(select(ReplayKey).where(ReplayKey.key.in_(list(keys)))
                          .order_by(ReplayKey.inbound_id).limit(1))


def claim(session: Session, facts: MessageFacts, inbound_id: int, at: datetime,
          region: str | None = None) -> ReplayKey | None:
    """Record the keys of ``facts`` for ``inbound_id`` in ``region``, or return the record that
    makes it a replay there (the same message acting for another region is not a replay).

    Re-processing the same inbound message (a crash after a partial run is rolled back, but a
    caller may claim twice in one transaction) is not a replay: its own records are accepted.
    A copy committed concurrently in between (PostgreSQL) turns into a replay here rather than an
    error that would quarantine the message (``claim_keys``: ON CONFLICT DO NOTHING).
    """
    return claim_keys(session, keys_of(facts, region), inbound_id, at)


def claim_keys(session: Session, keys: Sequence[str], inbound_id: int, at: datetime,
               looked_up: Sequence[str] | None = None) -> ReplayKey | None:
    """``claim`` for keys made by the caller (``declaration_keys``): a replay when any of
    ``looked_up`` (default: ``keys``) is recorded for another message; else ``keys`` are recorded.

    Two statements on the hot path (every declaration claims, issue 19): one read of the keys,
    one ``INSERT … ON CONFLICT DO NOTHING`` of the missing ones — no ORM objects, no savepoint. A
    key another instance committed in between is not inserted: the record that won is returned.
    Nothing is pending on these rows in the session, so the read needs no flush."""
    search = list(dict.fromkeys([*(keys if looked_up is None else looked_up), *keys]))
    if not search:
        return None
    with session.no_autoflush:
        rows = _owners(session, search)
        if any(owner != inbound_id for _key, owner in rows):
            return recorded(session, search)
        mine = {key for key, _owner in rows}
        missing = [k for k in dict.fromkeys(keys) if k not in mine]
        if not missing:
            return None
        stmt = _claim_statement(session.get_bind().dialect.name)
        inserted = {fast.execute(session, stmt, {"key": k, "inbound_id": inbound_id, "at": at}).scalar()
                    for k in missing}
        inserted.discard(None)
        if len(inserted) == len(missing):
            return None
        found = recorded(session, search)
    if found is not None and found.inbound_id != inbound_id:
        return found
    raise IntegrityError("replay key neither inserted nor found", None, ValueError(missing))


def _owners(session: Session, keys: Sequence[str]) -> list[tuple[str, int]]:
    """(key, inbound id) of those of ``keys`` already recorded."""
    rows = fast.execute(session, _owners_statement(len(keys)), fast.any_of_params(keys)).rows
    return [(str(k), int(i)) for k, i in rows]


# Built once on the table's columns, values bound at execution: every declaration claims (issue 19).
# One statement per number of keys (a message has a handful): fast.any_of.
@lru_cache(maxsize=32)
def _owners_statement(count: int) -> Any:
    table = cast(Table, ReplayKey.__table__)
    return select(table.c.key, table.c.inbound_id).where(fast.any_of(table.c.key, count))


@cache
def _claim_statement(dialect: str) -> Any:
    """One key, ``ON CONFLICT DO NOTHING RETURNING key``: the key when this call recorded it."""
    insert_ = pg_insert if dialect == "postgresql" else sqlite_insert
    table = cast(Table, ReplayKey.__table__)
    return insert_(table).on_conflict_do_nothing(index_elements=["key"]).returning(table.c.key)


def first_applied_fr(first: ReplayKey) -> str:
    """When the first copy acted (its record's time), Europe/Paris, « dd/mm/yyyy à HH:MM »."""
    return _fr(aware(first.at))


def already_applied(first: ReplayKey) -> str:
    """What staff are told when their mail is a replay (an Outlook resend, a copy sent twice):
    not an alarm, but when the first copy was applied and that there is nothing to do."""
    return (f"ce message avait déjà été reçu et ses commandes appliquées le {first_applied_fr(first)}. "
            "Rien n'a été appliqué une seconde fois : vous n'avez rien à faire.")


# --- command dates ------------------------------------------------------------------------------


def sent_at(raw: bytes) -> tuple[datetime | None, str | None]:
    """The ``Date:`` of ``raw`` as an aware datetime, or (None, French reason).

    Only the header block is read, with the parser analysis uses (``email``, compat32): the
    block has already been checked unambiguous (``wire.header_block_problem``, one Date at most).
    """
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(header_block(raw))
    values = headers.get_all("Date") or []
    if not values:
        return None, "en-tête Date absent : une commande doit être datée"
    if len(values) > 1:
        return None, "plusieurs en-têtes Date (RFC 5322 §3.6)"
    try:
        when = email.utils.parsedate_to_datetime(str(values[0]))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None, "en-tête Date illisible (RFC 5322 §3.3)"
    if when.tzinfo is None:
        # RFC 5322 §3.3: "-0000" is UTC with no information about the local time zone.
        when = when.replace(tzinfo=UTC)
    return when, None


def _fr(at: datetime) -> str:
    return at.astimezone(PARIS).strftime("%d/%m/%Y à %H:%M")


def command_date_refusal(raw: bytes, facts: MessageFacts, received_at: datetime, max_age_days: float) -> str | None:
    """Why a command mail is too old (or undated, or from the future) to act on, or None.

    Measured against the message's reception, not its processing: a backlog after an outage
    must not turn fresh commands into stale ones.
    """
    when, problem = sent_at(raw)
    if problem is not None:
        return f"{problem} : commande refusée"
    assert when is not None
    signed = facts.sender.signed_headers
    if signed and "date" not in signed:
        # A Date outside the signature could be rewritten by whoever replays the mail.
        return "la date du message n'est pas couverte par sa signature DKIM : commande refusée"
    if when < received_at - timedelta(days=max_age_days):
        return (f"commande trop ancienne : message daté du {_fr(when)}, plus de "
                f"{max_age_days:g} jour(s) avant sa réception : commande refusée")
    if when > received_at + MAX_FUTURE:
        return f"message daté dans le futur ({_fr(when)}) : commande refusée"
    return None
