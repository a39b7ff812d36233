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
