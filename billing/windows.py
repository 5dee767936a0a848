"""UTC window arithmetic: alignment, ranges and Stripe's timestamp limits. Pure functions."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

HOUR, DAY = "hour", "day"
WINDOW_LENGTH = {HOUR: timedelta(hours=1), DAY: timedelta(days=1)}
# Stripe accepts meter event timestamps within the past 35 days (and up to 5 minutes ahead).
STRIPE_MAX_AGE = timedelta(days=35)


def length(window: str) -> timedelta:
    return WINDOW_LENGTH[window]


def floor(moment: datetime, window: str) -> datetime:
    moment = moment.astimezone(UTC)
    if window == DAY:
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(minute=0, second=0, microsecond=0)


def ceil(moment: datetime, window: str) -> datetime:
    """The first window boundary at or after `moment`."""
    start = floor(moment, window)
    return start if start == moment.astimezone(UTC) else start + length(window)


def month_start(moment: datetime) -> datetime:
    return floor(moment, DAY).replace(day=1)


def is_aligned(moment: datetime, window: str) -> bool:
    return floor(moment, window) == moment.astimezone(UTC)


def iter_windows(start: datetime, end: datetime, window: str) -> Iterator[datetime]:
    step = length(window)
    current = start
    while current < end:
        yield current
        current += step


def count(start: datetime, end: datetime, window: str) -> int:
    """How many whole windows [start, end) holds (both on the window's boundaries)."""
    return max(0, (end - start) // length(window))


def lookback_range(window: str, *, now: datetime, hours: int) -> tuple[datetime, datetime]:
    """The closed windows of the last `hours` before `now`, no older than Stripe accepts."""
    end = floor(now, window)
    start = floor(now - timedelta(hours=hours), window)
    if start == end:  # a lookback shorter than one window still re-checks the last closed one
        start = end - length(window)
    return max(start, oldest_reportable(window, now=now)), end


def oldest_reportable(window: str, *, now: datetime) -> datetime:
    """The earliest window start Stripe still accepts, with an hour's margin for a slow run."""
    limit = now - STRIPE_MAX_AGE + timedelta(hours=1)
    aligned = floor(limit, window)
    return aligned if aligned >= limit else aligned + length(window)


def recent_first(
    start: datetime, end: datetime, step: timedelta
) -> list[tuple[datetime, datetime]]:
    """[start, end) cut from the end into ranges of 1, 1, 2, 4, 8... windows, newest first."""
    ranges: list[tuple[datetime, datetime]] = []
    high, size = end, 1
    while high > start:
        low = max(start, high - step * size)
        ranges.append((low, high))
        high = low
        if len(ranges) > 1:
            size *= 2
    return ranges
