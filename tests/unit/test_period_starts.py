"""Where a period-to-date meter's value is counted from (billing.reporting.period_starts)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from billing import aggregations
from billing.reporting.period_starts import Segment, period_start, segments

H = timedelta(hours=1)
NOV1 = datetime(2026, 11, 1, tzinfo=UTC)
DEC1 = datetime(2026, 12, 1, tzinfo=UTC)


def test_a_window_belongs_to_the_period_with_the_latest_start_at_or_before_it():
    upgrade = datetime(2026, 11, 15, 11, tzinfo=UTC)  # first whole hour after 10:23
    bounds = [NOV1, upgrade, datetime(2026, 12, 15, tzinfo=UTC)]
    assert period_start(bounds, NOV1) == NOV1
    assert period_start(bounds, upgrade - H) == NOV1  # 10:00 starts before the change
    assert period_start(bounds, upgrade) == upgrade
    assert period_start(bounds, datetime(2026, 12, 20, tzinfo=UTC)) == bounds[2]


def test_without_a_known_period_the_calendar_month_counts():
    assert period_start([], datetime(2026, 11, 20, 5, tzinfo=UTC)) == NOV1
    assert period_start([DEC1], datetime(2026, 11, 20, tzinfo=UTC)) == NOV1


def test_a_range_is_cut_where_a_period_or_a_month_begins():
    change = datetime(2026, 11, 20, 7, tzinfo=UTC)
    start, end = datetime(2026, 11, 19, tzinfo=UTC), datetime(2026, 11, 21, tzinfo=UTC)
    assert segments(boundaries=[NOV1, change], start=start, end=end, window="hour") == [
        Segment(NOV1, start, change),
        Segment(change, change, end),
    ]
    start, end = datetime(2026, 10, 30, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC)
    assert segments(boundaries=[], start=start, end=end, window="day") == [
        Segment(datetime(2026, 10, 1, tzinfo=UTC), start, NOV1),
        Segment(NOV1, NOV1, end),
    ]
    assert segments(boundaries=[DEC1], start=start, end=end, window="hour") == [
        Segment(datetime(2026, 10, 1, tzinfo=UTC), start, NOV1),
        Segment(NOV1, NOV1, end),
    ]


def test_what_stripe_bills_for_a_period():
    values = {NOV1 + H: Decimal(3), NOV1: Decimal(5), NOV1 + 2 * H: Decimal(4)}
    assert aggregations.billed_value(aggregation="SUM", values=values) == 12
    assert aggregations.billed_value(aggregation="", values=values) == 12
    assert aggregations.billed_value(aggregation="unique_count", values=values) == 4
    assert aggregations.billed_value(aggregation="MAX", values={}) == 0
    assert aggregations.stripe_formula("LATEST") == "last"
    assert aggregations.stripe_formula("COUNT") == "sum"
    assert aggregations.problem("MAX") is None
    assert "PERCENTILE" in (aggregations.problem("percentile") or "")
