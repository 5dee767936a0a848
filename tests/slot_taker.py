"""A child process of the shared rate limit test: takes slots from the Redis bucket. Imports
nothing of Django, so that it can be started with `spawn` (forking a multi-threaded test process
may deadlock the child)."""

import time

from billing.integrations.redis_ratelimit import RedisBucket


def take_slots(url: str, key: str, rate: float, calls: int, start_at: float) -> list[float]:
    """The wall-clock times at which `calls` slots were granted."""
    bucket = RedisBucket(url=url, key=key, rate=rate)
    time.sleep(max(0.0, start_at - time.time()))  # every process starts together
    granted = []
    for _ in range(calls):
        bucket.acquire()
        granted.append(time.time())
    return granted
