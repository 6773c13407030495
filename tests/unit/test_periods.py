"""The calendar of grant schedules (ledger/domain/periods.py), values written by hand."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from ledger.domain.periods import Cadence, OutOfCalendar, Unit, zone


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def starts(c: Cadence, count: int) -> list[datetime]:
    return [c.start(n) for n in range(count)]


def test_monthly_on_the_31st_clamps_to_the_month_end_and_comes_back() -> None:
    c = Cadence(Unit.MONTH, 1, utc(2031, 1, 31, 9))
    assert starts(c, 6) == [
        utc(2031, 1, 31, 9),
        utc(2031, 2, 28, 9),
        utc(2031, 3, 31, 9),  # not Mar 28: every start is computed from the anchor
        utc(2031, 4, 30, 9),
        utc(2031, 5, 31, 9),
        utc(2031, 6, 30, 9),
    ]


def test_leap_years_give_february_its_29th() -> None:
    c = Cadence(Unit.MONTH, 1, utc(2031, 12, 31))
    assert c.start(2) == utc(2032, 2, 29)
    yearly = Cadence(Unit.MONTH, 12, utc(2032, 2, 29))
    assert starts(yearly, 5) == [
        utc(2032, 2, 29),
        utc(2033, 2, 28),
        utc(2034, 2, 28),
        utc(2035, 2, 28),
        utc(2036, 2, 29),
    ]


def test_quarterly_packages() -> None:
    c = Cadence(Unit.MONTH, 3, utc(2031, 11, 30, 12))
    assert starts(c, 4) == [
        utc(2031, 11, 30, 12),
        utc(2032, 2, 29, 12),
        utc(2032, 5, 30, 12),
        utc(2032, 8, 30, 12),
    ]


def test_weeks_days_and_fixed_durations() -> None:
    assert starts(Cadence(Unit.WEEK, 2, utc(2031, 1, 1)), 3) == [
        utc(2031, 1, 1),
        utc(2031, 1, 15),
        utc(2031, 1, 29),
    ]
    assert starts(Cadence(Unit.DAY, 1, utc(2031, 2, 27, 23)), 3) == [
        utc(2031, 2, 27, 23),
        utc(2031, 2, 28, 23),
        utc(2031, 3, 1, 23),
    ]
    fixed = Cadence(Unit.FIXED, 90 * 60, utc(2031, 1, 1))
    assert starts(fixed, 3) == [utc(2031, 1, 1), utc(2031, 1, 1, 1, 30), utc(2031, 1, 1, 3)]


def test_monthly_in_a_time_zone_keeps_the_local_midnight_across_dst() -> None:
    # Midnight on the 1st in Paris: 23:00 UTC in winter, 22:00 UTC in summer.
    c = Cadence(Unit.MONTH, 1, utc(2030, 12, 31, 23), "Europe/Paris")
    assert starts(c, 5) == [
        utc(2030, 12, 31, 23),
        utc(2031, 1, 31, 23),
        utc(2031, 2, 28, 23),
        utc(2031, 3, 31, 22),  # CEST from Mar 30
        utc(2031, 4, 30, 22),
    ]


def test_daily_periods_are_23_and_25_hours_long_on_the_days_clocks_change() -> None:
    c = Cadence(Unit.DAY, 1, utc(2031, 3, 29, 8), "Europe/Paris")  # 09:00 local
    lengths = [c.end(n) - c.start(n) for n in range(3)]
    assert lengths == [timedelta(hours=23), timedelta(hours=24), timedelta(hours=24)]
    c = Cadence(Unit.DAY, 1, utc(2031, 10, 25, 7), "Europe/Paris")  # 09:00 CEST
    assert c.end(0) - c.start(0) == timedelta(hours=25)


def test_a_wall_time_in_the_spring_gap_starts_past_it_and_a_folded_one_at_its_first() -> None:
    # 02:30 local does not exist on 2031-03-30 in Paris: 03:30 CEST (01:30 UTC).
    c = Cadence(Unit.DAY, 1, utc(2031, 3, 29, 1, 30), "Europe/Paris")  # 02:30 CET
    assert c.start(1) == utc(2031, 3, 30, 1, 30)
    assert c.start(2) == utc(2031, 3, 31, 0, 30)  # 02:30 CEST
    # 02:30 happens twice on 2031-10-26: the first (CEST, 00:30 UTC).
    c = Cadence(Unit.DAY, 1, utc(2031, 10, 25, 0, 30), "Europe/Paris")  # 02:30 CEST
    assert c.start(1) == utc(2031, 10, 26, 0, 30)
    assert c.start(2) == utc(2031, 10, 27, 1, 30)  # 02:30 CET


def test_period_at_finds_the_period_of_an_instant() -> None:
    c = Cadence(Unit.MONTH, 1, utc(2031, 1, 31, 9))
    assert c.period_at(utc(2031, 1, 31, 9)) == 0  # a start is inclusive
    assert c.period_at(utc(2031, 2, 28, 8, 59, 59)) == 0
    assert c.period_at(utc(2031, 2, 28, 9)) == 1
    assert c.period_at(utc(2031, 3, 30)) == 1
    assert c.period_at(utc(2031, 1, 1)) == -1
    assert c.period_at(utc(2041, 1, 31, 9)) == 120


@pytest.mark.parametrize("unit", list(Unit))
def test_bad_cadences_are_refused(unit: Unit) -> None:
    with pytest.raises(ValueError, match="count"):
        Cadence(unit, 0, utc(2031, 1, 1))
    with pytest.raises(ValueError, match="time zone"):
        Cadence(unit, 1 if unit is not Unit.FIXED else 3600, utc(2031, 1, 1), "Mars/Olympus")
    with pytest.raises(ValueError, match="aware"):
        Cadence(unit, 1 if unit is not Unit.FIXED else 3600, datetime(2031, 1, 1))


def test_zone_refuses_paths() -> None:
    for name in ("", "../etc/passwd", "/etc/localtime", "Europe/../UTC"):
        with pytest.raises(ValueError):
            zone(name)


def test_periods_past_year_9999_never_come() -> None:
    c = Cadence(Unit.MONTH, 120, utc(9990, 1, 1))
    with pytest.raises(OutOfCalendar):
        c.start(2)
    assert c.period_at(utc(9999, 12, 31)) == 0


_ZONES = ["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]


def test_periods_tile_time_and_period_at_agrees_with_start() -> None:
    """Starts strictly increase, and every instant lies in exactly the period
    period_at names (the law every reader relies on), over 3,000 random cadences
    and instants, DST zones included (a 30-minute one: Lord Howe)."""
    rng = random.Random(23)
    for _ in range(3000):
        unit = rng.choice(list(Unit))
        count = rng.randint(1, 14)
        anchor = utc(2000, 1, 1) + timedelta(seconds=rng.randint(0, 60 * 366 * 86400))
        c = Cadence(unit, count * 3600 if unit is Unit.FIXED else count, anchor, rng.choice(_ZONES))
        t = anchor + timedelta(seconds=rng.randint(-3 * 366 * 86400, 10 * 366 * 86400))
        n = c.period_at(t)
        assert c.start(n) <= t < c.start(n + 1), (c, t, n)
        assert c.start(n - 1) < c.start(n), (c, n)
