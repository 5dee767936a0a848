"""The token bucket slows down after a 429 (at most once a second) and recovers slowly."""

import time

import pytest

from billing.integrations import ratelimit
from billing.integrations.ratelimit import TokenBucket


def test_throttle_halves_once_per_second_and_keeps_a_floor(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    bucket = TokenBucket(rate=20)
    full = bucket.rate
    assert bucket.current_rate() == full
    bucket.throttle()
    assert bucket.current_rate() == pytest.approx(full / 2)
    bucket.throttle()  # the other requests in flight come back 429 too: no second cut
    assert bucket.current_rate() == pytest.approx(full / 2)
    for _ in range(20):
        clock[0] += ratelimit.THROTTLE_GAP
        bucket.throttle()
    assert bucket.current_rate() >= full * ratelimit.THROTTLE_FLOOR


def test_the_rate_grows_back_to_the_full_rate(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    bucket = TokenBucket(rate=20)
    full = bucket.rate
    bucket.throttle()
    clock[0] += ratelimit.RECOVERY_SECONDS / 4
    assert full / 2 < bucket.current_rate() < full
    clock[0] += ratelimit.RECOVERY_SECONDS
    assert bucket.current_rate() == full


def test_a_throttled_bucket_spaces_its_calls_wider():
    bucket = TokenBucket(rate=50)
    began = time.monotonic()
    for _ in range(5):
        bucket.acquire()
    fast = time.monotonic() - began
    bucket.throttle()
    began = time.monotonic()
    for _ in range(5):
        bucket.acquire()
    assert time.monotonic() - began > 1.5 * fast


def test_a_caller_that_wakes_late_takes_a_new_slot(monkeypatch):
    """After a stall, a caller that wakes late goes on a fresh slot, so the next caller is still
    a full slot behind it: no burst."""
    clock = [1000.0]
    sleeps = [0]

    def sleep(seconds: float) -> None:
        sleeps[0] += 1
        clock[0] += seconds + (0.5 if sleeps[0] == 1 else 0.0)  # the first sleep overruns

    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(time, "sleep", sleep)
    bucket = TokenBucket(rate=20)
    returned = []
    for _ in range(3):
        bucket.acquire()
        returned.append(clock[0])
    assert returned[1] - returned[0] > 0.5  # the stalled one
    assert returned[2] - returned[1] == pytest.approx(1 / bucket.rate)  # not right behind it
