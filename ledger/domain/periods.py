"""The calendar of a grant schedule: where period n starts.

A schedule's periods are numbered from 0 at its anchor: period n is
[start(n), start(n + 1)). Calendar cadences (months, weeks, days) keep the
anchor's wall-clock time in the schedule's time zone; a fixed duration is a
number of seconds and knows no time zone.

Months follow the anchor's day of the month, clamped to the month's end: an
anchor on Jan 31 renews on Feb 28 (Feb 29 in a leap year), then on Mar 31,
Apr 30, May 31. Each start is computed from the anchor, never from the
previous start, so a clamp never drifts (Feb 28 is not followed by Mar 28).

Daylight saving time (docs/design.md, "Grant schedules"): the wall-clock
time is kept, so a daily period starting at 09:00 in Europe/Paris is 23 or 25
hours long on the days the clocks change. A wall-clock time that does not
exist that day (the spring-forward gap: 02:30 in Europe/Paris on the last
Sunday of March) starts at the instant that time would have been with the
offset before the change, which is the same distance past the gap (03:30 CEST);
a time that happens twice (the autumn fold) starts at its first occurrence.
Period 0 starts at the anchor itself, always.

Pure functions of (cadence, n) and (cadence, instant): every reader and the
writer compute the same periods, whatever ran before.
"""

from __future__ import annotations

import calendar
import enum
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ledger.domain import limits


class Unit(enum.Enum):
    MONTH = "month"
    WEEK = "week"
    DAY = "day"
    FIXED = "fixed"  # `count` seconds


# The most of each unit one period may last, and the fewest seconds of a fixed one.
COUNT_MAX = {
    Unit.MONTH: limits.SCHEDULE_PERIOD_MONTHS_MAX,
    Unit.WEEK: limits.SCHEDULE_PERIOD_WEEKS_MAX,
    Unit.DAY: limits.SCHEDULE_PERIOD_DAYS_MAX,
    Unit.FIXED: limits.SCHEDULE_PERIOD_FIXED_S_MAX,
}
COUNT_MIN = {
    Unit.MONTH: 1,
    Unit.WEEK: 1,
    Unit.DAY: 1,
    Unit.FIXED: limits.SCHEDULE_PERIOD_FIXED_S_MIN,
}


def longest_period_s(unit: Unit, count: int) -> int:
    """The longest one period can be, in seconds (months of 31 days, a DST hour)."""
    day = 86400
    if unit is Unit.FIXED:
        return count
    days = {Unit.MONTH: 31, Unit.WEEK: 7, Unit.DAY: 1}[unit] * count
    return days * day + 3600


class OutOfCalendar(ValueError):
    """Period n would start past year 9999 (or before year 1): it never comes."""


_ZONE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}")
ZONE_NAME_LEN_MAX = 64


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`. Raises ValueError when there is no such zone."""
    if len(name) > ZONE_NAME_LEN_MAX or not _ZONE_NAME.fullmatch(name):
        raise ValueError(f"unknown time zone {name[:64]!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


@dataclass(frozen=True)
class Cadence:
    """How a schedule's periods follow each other. `anchor` is an aware instant."""

    unit: Unit
    count: int
    anchor: datetime
    time_zone: str = "UTC"

    def __post_init__(self) -> None:
        if self.anchor.tzinfo is None:
            raise ValueError("anchor must be timezone-aware")
        if not COUNT_MIN[self.unit] <= self.count <= COUNT_MAX[self.unit]:
            raise ValueError(
                f"count of {self.unit.value} must be {COUNT_MIN[self.unit]}"
                f" to {COUNT_MAX[self.unit]}"
            )
        zone(self.time_zone)

    @cached_property
    def _local_anchor(self) -> datetime:
        return self.anchor.astimezone(zone(self.time_zone))

    def start(self, n: int) -> datetime:
        """The instant (UTC) period n starts. Raises OutOfCalendar past year 9999."""
        if n == 0:
            return self.anchor.astimezone(UTC)
        try:
            if self.unit is Unit.FIXED:
                return (self.anchor + timedelta(seconds=n * self.count)).astimezone(UTC)
            local = self._local_anchor
            if self.unit is Unit.MONTH:
                months = local.month - 1 + n * self.count
                year, month = local.year + months // 12, months % 12 + 1
                day = min(local.day, calendar.monthrange(year, month)[1])
                wall = local.replace(year=year, month=month, day=day, fold=0)
            else:
                days = n * self.count * (7 if self.unit is Unit.WEEK else 1)
                # Wall-clock arithmetic: a naive date moved by whole days, then placed
                # in the zone again (fold 0: the first of two, or past a gap).
                naive = local.replace(tzinfo=None) + timedelta(days=days)
                wall = naive.replace(tzinfo=local.tzinfo, fold=0)
            return wall.astimezone(UTC)
        except (OverflowError, ValueError) as exc:
            raise OutOfCalendar(f"period {n} is outside the calendar") from exc

    def end(self, n: int) -> datetime:
        """The instant period n ends (exclusive): the start of period n + 1."""
        return self.start(n + 1)

    def period_at(self, t: datetime) -> int:
        """The period that contains instant `t`: the largest n with start(n) <= t
        (negative before the anchor)."""
        n = self._estimate(t)
        while self.start(n) > t:
            n -= 1
        while self._starts_by(n + 1, t):
            n += 1
        return n

    def _starts_by(self, n: int, t: datetime) -> bool:
        try:
            return self.start(n) <= t
        except OutOfCalendar:
            return False

    def _estimate(self, t: datetime) -> int:
        """A guess within a period or two of the answer (period_at corrects it)."""
        span = t - self.anchor
        if self.unit is Unit.FIXED:
            return span // timedelta(seconds=self.count)
        if self.unit is Unit.MONTH:
            local = t.astimezone(zone(self.time_zone))
            months = (local.year - self._local_anchor.year) * 12 + (
                local.month - self._local_anchor.month
            )
            return months // self.count
        days = self.count * (7 if self.unit is Unit.WEEK else 1)
        return span // timedelta(days=days)
