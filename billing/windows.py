"""UTC window arithmetic: alignment, ranges and Stripe's timestamp limits."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from django.conf import settings

from billing.models import Window

WINDOW_LENGTH = {Window.HOUR: timedelta(hours=1), Window.DAY: timedelta(days=1)}
# Stripe accepts meter event timestamps within the past 35 days (and up to 5 minutes ahead).
STRIPE_MAX_AGE = timedelta(days=35)


def utcnow() -> datetime:
    return datetime.now(UTC)


def floor(moment: datetime, window: str) -> datetime:
    moment = moment.astimezone(UTC)
    if window == Window.DAY:
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(minute=0, second=0, microsecond=0)


def is_aligned(moment: datetime, window: str) -> bool:
    return floor(moment, window) == moment.astimezone(UTC)


def iter_windows(start: datetime, end: datetime, window: str) -> Iterator[datetime]:
    step = WINDOW_LENGTH[Window(window)]
    current = start
    while current < end:
        yield current
        current += step


def scheduled_range(window: str, *, now: datetime) -> tuple[datetime, datetime]:
    """The closed windows of the last REPORT_LOOKBACK_HOURS before `now`."""
    end = floor(now, window)
    start = floor(now - timedelta(hours=settings.REPORT_LOOKBACK_HOURS), window)
    if start == end:  # a lookback shorter than one window still re-checks the last closed one
        start = end - WINDOW_LENGTH[Window(window)]
    oldest = oldest_reportable(window, now=now)
    return max(start, oldest), end


def oldest_reportable(window: str, *, now: datetime) -> datetime:
    """The earliest window start Stripe still accepts, with an hour's margin for a slow run."""
    limit = now - STRIPE_MAX_AGE + timedelta(hours=1)
    aligned = floor(limit, window)
    return aligned if aligned >= limit else aligned + WINDOW_LENGTH[Window(window)]
