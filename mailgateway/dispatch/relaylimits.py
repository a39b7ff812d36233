"""How large a mail the relay takes: the SIZE it advertised (RFC 1870), remembered per relay.

A relay refuses a message over its limit for good (552, RFC 1870 §6.2; 5.3.4, RFC 3463), and a
refused staff notification is a declaration nobody sees. So mail to staff is composed to fit:
the sender remembers the last ``SIZE`` each relay advertised in its EHLO answer (in memory in the
transport, and in ``relay_limits`` for the processes that compose mail), and an original too
large for it is summarised instead of attached (processing/context.py, ``#original``).

Until a relay has been seen, ``[relay] assumed_size_bytes`` (Postfix's default, 10 240 000) is
assumed; ``[outbound] staff_attachment_max_bytes`` caps the attachment on top of either.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any, cast

from sqlalchemy import Select, Table, bindparam, select
from sqlalchemy.orm import Session

from mailgateway.settings import RelaySettings, Settings
from mailgateway.store import fast
from mailgateway.store.models import RelayLimit

# What a staff mail carries besides the attachment: headers, DKIM signature, text and HTML parts
# (the HTML embeds the text), the attachment summary. Generous: being wrong costs a refusal.
MAIL_OVERHEAD_BYTES = 256 * 1024
# What ``known`` read, per session (``session.info``): one processing batch asks for every staff
# notification, and only the sender writes these rows (``remember``, which forgets the memo).
_MEMO = "mailgateway.dispatch.relaylimits"


def relay_key(relay: RelaySettings) -> str | None:
    """``host:port`` of the configured relay; None when mail goes to the local Maildir."""
    return f"{relay.host.lower()}:{relay.port}" if relay.host else None


def parse_size(value: str | None) -> int | None:
    """The EHLO ``SIZE`` parameter as a limit in bytes; None for no (or no stated) limit.

    RFC 1870 §4: ``SIZE`` without a number, or ``SIZE 0``, means no fixed maximum."""
    if not value:
        return None
    text = value.strip().split(" ", 1)[0]
    if not text.isdigit() or len(text) > 15:
        return None
    size = int(text)
    return size if size > 0 else None


def remember(session: Session, key: str, size: int | None, now: datetime) -> None:
    """Record what ``key`` advertised (the caller commits)."""
    session.info.get(_MEMO, {}).pop(key, None)
    row = session.get(RelayLimit, key)
    if row is None:
        session.add(RelayLimit(relay=key, size_bytes=size, seen_at=now))
    else:
        row.size_bytes, row.seen_at = size, now


def known(session: Session, key: str) -> RelayLimit | None:
    # No flush first: only the sender writes these rows (``remember``, then commits), never the
    # transactions that read them, so nothing pending can change the answer — and on the
    # processing hot path that autoflush was a whole unit of work per declaration (issue 19).
    memo: dict[str, RelayLimit | None] = session.info.setdefault(_MEMO, {})
    if key not in memo:
        # On the driver (issue 19): a processing transaction is a few declarations when intake is
        # busy, and the ORM's get was ≈ 0.2 ms of each.
        found = session.identity_map.get(session.identity_key(RelayLimit, key))
        memo[key] = found if found is not None else fast.load(session, RelayLimit, _by_relay(), {"relay": key})
    return memo[key]


@cache
def _by_relay() -> Select[Any]:
    return select(*cast(Table, RelayLimit.__table__).c).where(RelayLimit.relay == bindparam("relay"))


def message_limit(settings: Settings, session: Session) -> int | None:
    """The largest message the relay takes, as far as we know; None: no limit (Maildir, SIZE 0)."""
    key = relay_key(settings.relay)
    if key is None:
        return None
    row = known(session, key)
    if row is not None:
        return row.size_bytes
    return settings.relay.assumed_size_bytes or None


def encoded_size(size: int) -> int:
    """Bytes of ``size`` bytes once base64-encoded in 76-character lines ended by CRLF (RFC 2045 §6.8)."""
    chars = (size + 2) // 3 * 4
    return chars + (chars + 75) // 76 * 2


def attachment_fits(settings: Settings, session: Session, *, size: int, wire_size: int,
                    capped: bool = True) -> bool:
    """Whether an original of ``size`` bytes (``wire_size`` once attached) may go to staff: under
    ``[outbound] staff_attachment_max_bytes`` (``capped``: notifications, one copy per staff
    member) and, with the mail around it, under the relay's limit."""
    if capped and size > settings.outbound.staff_attachment_max_bytes:
        return False
    limit = message_limit(settings, session)
    return limit is None or wire_size + MAIL_OVERHEAD_BYTES <= limit
