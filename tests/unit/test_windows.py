"""UTC window arithmetic: boundaries, lookbacks, Stripe's 35 days and the range search order."""

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from billing import windows

T = datetime(2026, 11, 20, 13, 30, tzinfo=UTC)
HOUR = timedelta(hours=1)


def test_floor_and_alignment():
    assert windows.floor(T, "hour") == datetime(2026, 11, 20, 13, tzinfo=UTC)
    assert windows.floor(T, "day") == datetime(2026, 11, 20, tzinfo=UTC)
    assert windows.is_aligned(datetime(2026, 11, 20, 13, tzinfo=UTC), "hour")
    assert not windows.is_aligned(datetime(2026, 11, 20, 13, tzinfo=UTC), "day")
    assert not windows.is_aligned(T, "hour")


def test_windows_of_a_range_are_half_open():
    start = datetime(2026, 11, 20, 10, tzinfo=UTC)
    listed = list(windows.iter_windows(start, start + 3 * HOUR, "hour"))
    assert listed == [start, start + HOUR, start + 2 * HOUR]
    assert windows.count(start, start + 3 * HOUR, "hour") == 3
    assert windows.count(start, start, "hour") == 0


def test_a_lookback_covers_only_closed_windows_of_its_own_meter():
    start, end = windows.lookback_range("hour", now=T, hours=48)
    assert end == datetime(2026, 11, 20, 13, tzinfo=UTC)  # the open hour is left out
    assert start == end - 48 * HOUR
    start, end = windows.lookback_range("day", now=T, hours=48)
    assert end == datetime(2026, 11, 20, tzinfo=UTC)  # the open day is left out
    assert start == datetime(2026, 11, 18, tzinfo=UTC)


def test_a_short_lookback_still_checks_the_last_closed_window():
    start, end = windows.lookback_range("day", now=T, hours=1)
    assert (start, end) == (datetime(2026, 11, 19, tzinfo=UTC), datetime(2026, 11, 20, tzinfo=UTC))


def test_lookbacks_stop_at_what_stripe_accepts():
    start, _ = windows.lookback_range("hour", now=T, hours=24 * 60)
    assert start == windows.oldest_reportable("hour", now=T)
    assert T - start <= windows.STRIPE_MAX_AGE - HOUR
    assert windows.is_aligned(windows.oldest_reportable("day", now=T), "day")


@pytest.mark.parametrize(
    ("n", "sizes"),
    [(1, [1]), (2, [1, 1]), (4, [1, 1, 2]), (8, [1, 1, 2, 4]), (10, [1, 1, 2, 4, 2])],
)
def test_recent_first_halves_the_range_from_the_newest_window(n, sizes):
    start = datetime(2026, 11, 20, tzinfo=UTC)
    ranges = windows.recent_first(start, start + n * HOUR, HOUR)
    assert [(high - low) // HOUR for low, high in ranges] == sizes
    assert ranges[0][1] == start + n * HOUR  # newest first
    assert ranges[-1][0] == start  # the whole range, once
    assert all(a[0] == b[1] for a, b in itertools.pairwise(ranges))
