"""What a run covers: its mode (a lookback or a chosen period), checked against Stripe's limits.

A *lookback* run (the schedule, or `report_usage` without --from/--to) covers each meter's own
closed windows of the last REPORT_LOOKBACK_HOURS, however it was started. A *period* run covers
exactly what the person chose, which must sit on every covered meter's window boundaries.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings

from billing import windows
from billing.formatting import utc_iso
from billing.models import Meter, ReportRun, RunMode, Window


class ReportInputError(ValueError):
    """The request cannot be run as given; the message says why and what would work."""


# The moments a period may start or end at. Window arithmetic (a boundary above, the day after,
# 35 days back) overflows at the calendar's ends (years 1 and 9999); nothing Meterbridge reports
# lies outside these, so such input is refused first, with this range in the message.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)


def reportable_range() -> str:
    return f"{utc_iso(EARLIEST)} to {utc_iso(LATEST)}"


def check_in_range(label: str, moment: datetime) -> None:
    """Refuse a moment outside [EARLIEST, LATEST] before any arithmetic is done with it."""
    try:
        inside = EARLIEST <= moment <= LATEST
    except OverflowError:  # an offset pushing it off the calendar
        inside = False
    if not inside:
        raise ReportInputError(
            f"The {label} {moment.isoformat()} is outside the range Meterbridge reports "
            f"({reportable_range()})."
        )


@dataclass(frozen=True)
class Coverage:
    mode: str
    start: datetime
    end: datetime


def coarsest_window(meters: Sequence[Meter]) -> str:
    """Periods must sit on every meter's boundaries: daily ones if any meter is daily."""
    return Window.DAY if any(m.window == Window.DAY for m in meters) else Window.HOUR


def validate_period(
    *, start: datetime, end: datetime, meters: Sequence[Meter], now: datetime, sending: bool = True
) -> None:
    """Refuse a period Stripe cannot take or the meters cannot be reported for, saying why.
    `sending=False` (a reconciliation, which reads) allows windows older than Stripe accepts."""
    check_in_range("start", start)
    check_in_range("end", end)
    window = coarsest_window(meters)
    closed = windows.floor(now, window)  # the still-open window starts here
    if end > closed + windows.length(window):
        raise ReportInputError(
            f"The period ends in the future ({utc_iso(end)}): only closed windows can be "
            f"reported, so end at {utc_iso(closed)} or earlier."
        )
    if start >= end:
        raise ReportInputError(
            f"The start ({utc_iso(start)}) must be before the end ({utc_iso(end)})."
        )
    for meter in meters:
        for label, moment in (("start", start), ("end", end)):
            if not windows.is_aligned(moment, meter.window):
                below = windows.floor(moment, meter.window)
                above = below + meter.window_length
                raise ReportInputError(
                    f"The {label} {utc_iso(moment)} is not on a {meter.window} boundary of meter "
                    f"'{meter.openmeter_slug}': use {utc_iso(below)} or {utc_iso(above)}."
                )
        open_window = windows.floor(now, meter.window)
        if end > open_window:
            raise ReportInputError(
                f"The period reaches into the still-open {meter.window} window of meter "
                f"'{meter.openmeter_slug}' (it started {utc_iso(open_window)}): end at "
                f"{utc_iso(open_window)} or earlier."
            )
        oldest = windows.oldest_reportable(meter.window, now=now)
        if sending and start < oldest:
            raise ReportInputError(
                f"Stripe only accepts usage from the last 35 days: start at {utc_iso(oldest)} "
                "or later (`reconcile` compares older windows and proposes corrections)."
            )


def recent_period(*, now: datetime) -> tuple[datetime, datetime]:
    """Every closed window Stripe still accepts, on every active meter's boundaries: what a
    change of subjects re-reports."""
    window = coarsest_window(list(Meter.objects.filter(active=True)))
    return windows.oldest_reportable(window, now=now), windows.floor(now, window)


def lookback_range(window: str, *, now: datetime) -> tuple[datetime, datetime]:
    return windows.lookback_range(window, now=now, hours=settings.REPORT_LOOKBACK_HOURS)


def plan_coverage(
    *,
    start: datetime | None,
    end: datetime | None,
    meters: Sequence[Meter],
    now: datetime,
) -> Coverage:
    """A chosen period when start and end are given (checked), else the lookback before `now`.

    A lookback's stored bounds span its meters' ranges; its end is the start of the finest
    meter's open window, from which `meter_range` gives each meter its own closed windows."""
    if (start is None) != (end is None):
        raise ReportInputError("Give both a start and an end, or neither.")
    if start is not None and end is not None:
        validate_period(start=start, end=end, meters=meters, now=now)
        return Coverage(RunMode.PERIOD, start, end)
    ranges = [lookback_range(m.window, now=now) for m in meters] or [
        lookback_range(Window.HOUR, now=now)
    ]
    return Coverage(RunMode.LOOKBACK, min(r[0] for r in ranges), max(r[1] for r in ranges))


def meter_range(*, run: ReportRun, meter: Meter) -> tuple[datetime, datetime]:
    """The windows of `meter` that `run` covers."""
    if run.mode == RunMode.LOOKBACK:
        return lookback_range(meter.window, now=run.period_end)
    return run.period_start, run.period_end
