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
