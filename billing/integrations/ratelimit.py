"""Pace calls so that Stripe never sees more than `rate` of them in any second.

A token bucket with a burst of one, kept as the time of the next free slot (GCRA): each caller
reserves the next slot, slots are 1/refill apart, and the caller sleeps until its slot. A thread
that wakes late loses nothing (its slot was reserved, the next one is not moved), so a busy sender
goes at the full refill rate; an idle one banks nothing, so there is never a burst.

Stripe counts arrivals, not departures. Between leaving the bucket and reaching Stripe a call is
delayed by a varying amount (thread scheduling, the GIL, the network), so departures spread over
1 + J seconds can arrive within one second. The refill leaves room for J = `jitter` seconds:
any one second of arrivals holds at most 1 + refill * (1 + J) <= rate calls.
"""

import threading
import time
from typing import ClassVar

JITTER_ALLOWANCE = 0.03  # seconds of spread between departure and arrival the rate allows for


class TokenBucket:
    _shared: ClassVar[dict[float, "TokenBucket"]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, *, rate: float, jitter: float = JITTER_ALLOWANCE) -> None:
        if rate <= 0:
            raise ValueError("The rate must be positive.")
        self.limit = rate
        self.capacity = 1.0
        self.rate = (rate - self.capacity) / (1 + jitter) if rate > 2 else rate / 2
        self._interval = 1.0 / self.rate
        self._next = time.monotonic()
        self._lock = threading.Lock()

    @classmethod
    def shared(cls, rate: float) -> "TokenBucket":
        """The process-wide bucket for `rate`: every sender of the process draws from it, so
        consecutive or concurrent senders (one per meter, say) stay under the rate together."""
        with cls._shared_lock:
            bucket = cls._shared.get(rate)
            if bucket is None:
                bucket = cls._shared[rate] = cls(rate=rate)
            return bucket

    def acquire(self) -> None:
        """Block until one call may go out."""
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self._interval
        if slot > now:
            time.sleep(slot - now)

    def pause(self, seconds: float) -> None:
        """Let no call out for `seconds` from now (Stripe said we were too fast)."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)
