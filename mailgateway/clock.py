"""Time as an injected dependency: tests swap the clock, code never calls datetime.now() directly."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol
from zoneinfo import ZoneInfo

PARIS = ZoneInfo("Europe/Paris")


class Clock(Protocol):
    def now(self) -> datetime:
        """Current time, timezone-aware (UTC)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock for tests: stays where it is put."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> None:
        from datetime import timedelta

        self.at = self.at + timedelta(**delta)


def paris(at: datetime) -> datetime:
    """``at`` in Paris wall-clock time (what operators and declarants read)."""
    return aware(at).astimezone(PARIS)


def french_datetime(at: datetime) -> str:
    """« 27/11/2026 à 08:30 », Paris time: the one way mail and receipts print an instant."""
    return paris(at).strftime("%d/%m/%Y à %H:%M")


def aware(dt: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns: they were stored as UTC."""
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def french_instant(value: object) -> str | None:
    """« 27/11/2026 à 08:30 » (Paris) of an ISO 8601 instant kept in a case's fields (a declaration's
    ``detected_at``): mail shows people French dates, never ISO timestamps. A value that is not an
    instant is returned as it was written; a date without a time is shown as a French date."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return value
    if len(value.strip()) <= 10:  # a date alone: no time to convert
        return parsed.strftime("%d/%m/%Y")
    # A declaration's time without an offset was written in France: Paris time, not UTC.
    return french_datetime(parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=PARIS))
