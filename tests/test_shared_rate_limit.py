"""One Stripe rate limit for several processes, through Redis (REDIS_URL set): together they stay
at or under it, a 429 seen by one slows the others, and without Redis each still goes on."""

import multiprocessing
import os
import socket
import time
import uuid

import pytest

from billing.integrations.redis_ratelimit import RedisBucket
from tests.helpers import skip_or_fail
from tests.slot_taker import take_slots

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RATE = 40
PROCESSES = 3
CALLS_EACH = 40


@pytest.fixture
def redis_url() -> str:
    try:
        socket.create_connection(("127.0.0.1", 6379), 2).close()
    except OSError:
        skip_or_fail("Redis is not running on 127.0.0.1:6379")
    return REDIS_URL


def busiest_second(times: list[float]) -> int:
    times = sorted(times)
    busiest, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= 1.0:
            lo += 1
        busiest = max(busiest, hi - lo + 1)
    return busiest


def test_processes_share_one_limit(redis_url):
    key = f"meterbridge-test:{uuid.uuid4().hex}"
    start_at = time.time() + 3  # spawned processes take a while to start
    with multiprocessing.get_context("spawn").Pool(PROCESSES) as pool:
        results = pool.starmap(
            take_slots, [(redis_url, key, RATE, CALLS_EACH, start_at)] * PROCESSES
        )
    granted = [t for times in results for t in times]
    assert len(granted) == PROCESSES * CALLS_EACH
    assert busiest_second(granted) <= RATE
    # Together they go at the shared refill, not one process's share of it.
    elapsed = max(granted) - min(granted)
    assert len(granted) / elapsed >= 0.8 * RATE
    # Each process got its turn all along, not one after the other.
    for times in results:
        assert max(times) - min(times) > 0.6 * elapsed


def test_a_throttle_in_one_process_slows_the_others(redis_url):
    key = f"meterbridge-test:{uuid.uuid4().hex}"
    one = RedisBucket(url=redis_url, key=key, rate=RATE)
    other = RedisBucket(url=redis_url, key=key, rate=RATE)
    assert other.current_rate() == pytest.approx(other.rate, rel=1e-3)
    one.throttle()
    assert other.current_rate() == pytest.approx(other.rate / 2, rel=0.05)
    one.throttle()  # within a second of the first: in-flight 429s cut once
    assert other.current_rate() == pytest.approx(other.rate / 2, rel=0.05)
    one.pause(0.5)
    began = time.monotonic()
    other.acquire()
    assert time.monotonic() - began >= 0.45


def test_without_redis_the_process_paces_itself(caplog):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    bucket = RedisBucket(url=f"redis://127.0.0.1:{port}/0", key="unused", rate=RATE)
    began = time.monotonic()
    for _ in range(5):
        bucket.acquire()
    assert time.monotonic() - began < 2  # went on, paced in-process
    assert "Redis did not answer" in caplog.text
