"""Pace calls so that Stripe never sees more than `rate` of them in any second.

A token bucket with a burst of one, kept as the time of the next free slot (GCRA): each caller
reserves the next slot, slots are 1/refill apart, and the caller sleeps until its slot. A thread
that wakes late loses nothing (its slot was reserved, the next one is not moved), so a busy sender
goes at the full refill rate; an idle one banks nothing, so there is never a burst.

Stripe counts arrivals, not departures. Between leaving the bucket and reaching Stripe a call is
delayed by a varying amount (thread scheduling, the GIL, the network), so departures spread over
1 + J seconds can arrive within one second. The refill leaves room for J = `jitter` seconds:
any one second of arrivals holds at most 1 + refill * (1 + J) <= rate calls.

Stripe may still be slower than the configured rate (another app on the same account, a lower
limit than configured). Then 429s come back, and the bucket adapts as TCP does (AIMD):
`throttle()` halves the current refill, at most once a second (the requests already in flight
come back 429 too and must not cut it again), never below THROTTLE_FLOOR of it; the refill then
grows back linearly, to the full rate within RECOVERY_SECONDS, so a passing storm costs little
and a lasting lower limit is found and kept close to.
"""

import threading
import time
from typing import ClassVar

JITTER_ALLOWANCE = 0.05  # seconds of spread between departure and arrival the rate allows for
LATE_WAKEUP = 0.02  # seconds: a caller waking later than this after its slot takes a new one
THROTTLE_FACTOR = 0.5  # each throttle() keeps this share of the current refill
THROTTLE_GAP = 1.0  # seconds: one cut per second at most (Stripe counts per second)
THROTTLE_FLOOR = 0.05  # share of the full refill the bucket never goes below
RECOVERY_SECONDS = 60.0  # from zero back to the full refill, growing linearly


def refill_rate(rate: float, jitter: float) -> float:
    """The refill that keeps any one second of arrivals at or under `rate` (see above)."""
    return (rate - 1.0) / (1 + jitter) if rate > 2 else rate / 2


class TokenBucket:
    _shared: ClassVar[dict[float, "TokenBucket"]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, *, rate: float, jitter: float = JITTER_ALLOWANCE) -> None:
        if rate <= 0:
            raise ValueError("The rate must be positive.")
        self.limit = rate
        self.rate = refill_rate(rate, jitter)
        self._next = time.monotonic()
        self._lock = threading.Lock()
        self._reduced = self.rate  # the refill right after the last throttle()
        self._throttled_at = float("-inf")

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
        """Block until one call may go out.

        A caller that wakes more than LATE_WAKEUP after its slot (the process stalled: the GIL,
        a busy CPU) takes a new slot instead of going at once: after a stall every sleeper wakes
        together, and going at once would send them as a burst on top of the slots that follow."""
        while True:
            with self._lock:
                now = time.monotonic()
                slot = max(now, self._next)
                self._next = slot + 1.0 / self._current_rate(now)
            if slot <= now:
                return
            time.sleep(slot - now)
            if time.monotonic() - slot <= LATE_WAKEUP:
                return

    def pause(self, seconds: float) -> None:
        """Let no call out for `seconds` from now (Stripe said we were too fast)."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)

    def throttle(self) -> None:
        """Stripe answered 429: lower the refill (see the module doc). Thread-safe."""
        with self._lock:
            now = time.monotonic()
            if now - self._throttled_at < THROTTLE_GAP:
                return
            current = self._current_rate(now)
            self._reduced = max(self.rate * THROTTLE_FLOOR, current * THROTTLE_FACTOR)
            self._throttled_at = now

    def current_rate(self) -> float:
        """Calls per second the bucket lets out now (below `rate` for a while after a 429)."""
        with self._lock:
            return self._current_rate(time.monotonic())

    def _current_rate(self, now: float) -> float:
        if self._reduced >= self.rate:
            return self.rate
        grown = self._reduced + (now - self._throttled_at) * self.rate / RECOVERY_SECONDS
        if grown >= self.rate:
            self._reduced = self.rate  # recovered: back to the plain bucket
            return self.rate
        return grown
