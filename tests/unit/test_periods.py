"""What a run covers: a chosen period on every meter's boundaries, or each meter's own lookback."""

from datetime import UTC, datetime, timedelta

import pytest

from billing.models import Meter, ReportRun, RunMode
from billing.reporting.periods import (
    ReportInputError,
    meter_range,
    plan_coverage,
    validate_period,
)

NOW = datetime(2026, 11, 20, 13, 30, tzinfo=UTC)
HOURLY = Meter(openmeter_slug="api_calls", window="hour")
DAILY = Meter(openmeter_slug="storage", window="day")


def hour(n: int) -> datetime:
    return datetime(2026, 11, 20, 13, tzinfo=UTC) - timedelta(hours=n)


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (hour(3), hour(-30), "The period ends in the future"),
        (hour(2), hour(4), "must be before the end"),
        (hour(3), hour(-1), "reaches into the still-open hour window"),
        (hour(40 * 24), hour(1), "Stripe only accepts usage from the last 35 days"),
        (hour(3) + timedelta(minutes=5), hour(1), "is not on a hour boundary"),
    ],
)
def test_periods_stripe_cannot_take_are_refused_with_the_reason(start, end, message):
    with pytest.raises(ReportInputError, match=message):
        validate_period(start=start, end=end, meters=[HOURLY], now=NOW)


def test_a_period_must_sit_on_every_meters_boundaries():
    validate_period(start=hour(5), end=hour(1), meters=[HOURLY], now=NOW)
    with pytest.raises(ReportInputError, match="day boundary of meter 'storage'"):
        validate_period(start=hour(5), end=hour(1), meters=[HOURLY, DAILY], now=NOW)
    day = datetime(2026, 11, 20, tzinfo=UTC)
    validate_period(start=day - timedelta(days=2), end=day, meters=[HOURLY, DAILY], now=NOW)


def test_half_a_period_is_refused():
    with pytest.raises(ReportInputError, match="both a start and an end"):
        plan_coverage(start=hour(3), end=None, meters=[HOURLY], now=NOW)


def test_a_lookback_gives_each_meter_its_own_closed_windows(settings):
    settings.REPORT_LOOKBACK_HOURS = 48
    coverage = plan_coverage(start=None, end=None, meters=[HOURLY, DAILY], now=NOW)
    assert coverage.mode == RunMode.LOOKBACK
    run = ReportRun(mode=coverage.mode, period_start=coverage.start, period_end=coverage.end)
    assert meter_range(run=run, meter=HOURLY) == (hour(48), hour(0))
    day = datetime(2026, 11, 20, tzinfo=UTC)
    # The daily meter's open day (it started at midnight) is not covered.
    assert meter_range(run=run, meter=DAILY) == (day - timedelta(days=2), day)


def test_a_chosen_period_is_the_same_on_every_meter():
    day = datetime(2026, 11, 20, tzinfo=UTC)
    coverage = plan_coverage(
        start=day - timedelta(days=2), end=day, meters=[HOURLY, DAILY], now=NOW
    )
    assert coverage.mode == RunMode.PERIOD
    run = ReportRun(mode=coverage.mode, period_start=coverage.start, period_end=coverage.end)
    assert meter_range(run=run, meter=HOURLY) == meter_range(run=run, meter=DAILY)
