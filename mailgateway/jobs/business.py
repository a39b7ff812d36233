"""Deadlines in business time: working days (Mon-Fri, French public holidays excluded) between
``[scheduler].business_start_hour`` and ``business_end_hour``, Europe/Paris wall-clock time.

Public holidays come from the ``holidays`` package (France, national list: the Code du travail
art. L3133-1 days; Alsace-Moselle's extra days are not counted).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING

from mailgateway.clock import PARIS, aware
from mailgateway.settings import SchedulerSettings

if TYPE_CHECKING:
    import holidays


@lru_cache(maxsize=1)
def _france() -> holidays.HolidayBase:
    # Imported on first use: the package builds every calendar it knows at import (≈0.1 s, a
    # twentieth of the daemon's start, which every restart and every CLI command pays).
    import holidays

    return holidays.country_holidays("FR")


def is_business_day(day: date) -> bool:
    return day.weekday() < 5 and day not in _france()


class Calendar:
    """Adds durations to instants, counting all time or business time only."""

    def __init__(self, business: bool = False, start_hour: int = 9, end_hour: int = 18) -> None:
        self.business = business
        self.start = time(start_hour)
        self.end = time(end_hour)

    @classmethod
    def from_settings(cls, sc: SchedulerSettings) -> Calendar:
        return cls(sc.business_hours, sc.business_start_hour, sc.business_end_hour)

    def _open_at(self, day: date) -> datetime:
        return datetime.combine(day, self.start, PARIS)

    def _close_at(self, day: date) -> datetime:
        return datetime.combine(day, self.end, PARIS)

    def _next_open(self, local: datetime) -> datetime:
        """The first business instant at or after ``local``."""
        day = local.date()
        if is_business_day(day) and local < self._close_at(day):
            return max(local, self._open_at(day))
        day += timedelta(days=1)
        while not is_business_day(day):
            day += timedelta(days=1)
        return self._open_at(day)

    def add(self, start: datetime, hours: float) -> datetime:
        """``start`` plus ``hours`` (of business time when configured)."""
        start = aware(start)
        if not self.business:
            return start + timedelta(hours=hours)
        remaining = timedelta(hours=hours)
        # Wall-clock arithmetic in Paris time: a business day is 9:00-18:00 whatever the DST offset.
        local = self._next_open(start.astimezone(PARIS))
        while True:
            left_today = self._close_at(local.date()) - local
            if remaining <= left_today:
                return (local + remaining).astimezone(start.tzinfo)
            remaining -= left_today
            local = self._next_open(self._close_at(local.date()))
