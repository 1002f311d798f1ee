"""Periods of time, as the spec's monitoring period cuts them: a year, a quarter or a month.

`evaluate` labels its rows by period, `backtest` replays one period after another, and a
`cycle` runs once per period: they cut time the same way, here.
"""

from __future__ import annotations

from datetime import date

import pandas as pd

STEPS = {"year": pd.DateOffset(years=1), "quarter": pd.DateOffset(months=3), "month": pd.DateOffset(months=1)}


def period_starts(start: date, end: date, period: str) -> list[tuple[date, date]]:
    """[start, next) of each period from `start` until `end`, `period` long (the monitoring period)."""
    begins = pd.date_range(start, end, freq=STEPS[period], inclusive="left")
    return [(b.date(), min((b + STEPS[period]).date(), end)) for b in begins]


def period_label(start: date, period: str) -> str:
    """A period's label, as `evaluate` writes it: 2021, 2021Q3, 2021-07."""
    if period == "year":
        return str(start.year)
    return f"{start.year}Q{(start.month - 1) // 3 + 1}" if period == "quarter" else f"{start:%Y-%m}"


def period_of(day: date, period: str) -> tuple[date, date]:
    """[start, end) of the calendar period (year, quarter, month) that holds `day`."""
    month = 1 if period == "year" else (day.month - 1) // 3 * 3 + 1 if period == "quarter" else day.month
    start = date(day.year, month, 1)
    return start, (pd.Timestamp(start) + STEPS[period]).date()


def shift(day: date, period: str, periods: int) -> date:
    """`day` moved by `periods` periods (negative: back)."""
    return (pd.Timestamp(day) + periods * STEPS[period]).date()


def periods_between(start: date, end: date, period: str) -> int:
    """Whole periods from `start` to `end` (0 when `end` is not after `start`)."""
    count = 0
    while shift(start, period, count + 1) <= end:
        count += 1
    return count
