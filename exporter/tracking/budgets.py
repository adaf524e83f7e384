"""Credit budgets: the calendar periods (UTC) they run over, and each workflow's credits
by the UTC day its runs ended, from which a budget's used credits are summed.

Periods start at midnight UTC: a day, a week from Monday, a calendar month. Every period
boundary is a day boundary, so credits kept per day add up to any period exactly, and a
period's used credits are worked out from the clock at each scrape: they fall to what
the new period holds at the first scrape after the boundary, on every replica alike.

    period_bounds("month", 1_700_000_000.0)  # 2023-11-14 22:13:20 UTC
    (1698796800.0, 1701388800.0)              # 2023-11-01 .. 2023-12-01
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

DAY_SECONDS = 86_400
KEPT_DAYS = 40  # more than any period that contains the newest day (31 + 6 days)


def day_of(when: float) -> int:
    """The UTC day `when` (Unix seconds) falls in, as days since 1970-01-01."""
    return math.floor(when / DAY_SECONDS)


def period_bounds(period: str, now: float) -> tuple[float, float]:
    """[start, end) of the `period` ("day", "week" from Monday, "month") that contains
    `now`, as Unix seconds."""
    midnight = datetime.fromtimestamp(day_of(now) * DAY_SECONDS, UTC)
    if period == "day":
        start, end = midnight, midnight + timedelta(days=1)
    elif period == "week":
        start = midnight - timedelta(days=midnight.weekday())
        end = start + timedelta(days=7)
    elif period == "month":
        start = midnight.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown budget period {period!r}")
    return start.timestamp(), end.timestamp()


class DailyCredits:
    """Credits of one workflow's runs by the UTC day each ended, for the newest
    KEPT_DAYS days (older days can be in no current period). Which days are kept
    depends only on what was added, never on the clock, so every replica's copy of the
    leader's is the same."""

    __slots__ = ("days",)

    def __init__(self) -> None:
        self.days: dict[int, float] = {}

    def add(self, when: float, credits: float) -> None:
        day = day_of(when)
        days = self.days
        days[day] = days.get(day, 0.0) + credits
        newest = max(days)
        if len(days) > KEPT_DAYS:
            for old in [d for d in days if d <= newest - KEPT_DAYS]:
                del days[old]

    def between(self, start: float, end: float) -> float:
        """Credits of the runs that ended in [start, end): both on day boundaries."""
        first, last = day_of(start), day_of(end)
        return sum(credits for day, credits in self.days.items() if first <= day < last)

    def record(self) -> dict[str, float]:
        return {str(day): credits for day, credits in sorted(self.days.items())}

    def load(self, data: Mapping[str, Any]) -> None:
        self.days = {int(day): float(credits) for day, credits in data.items()}
