"""A thread-safe token bucket: never more than `rate` calls in any second."""

import threading
import time


class TokenBucket:
    def __init__(self, *, rate: float) -> None:
        if rate <= 0:
            raise ValueError("The rate must be positive.")
        # Any 1-second window sees at most capacity + refill calls at the moment they are let
        # go. No burst, and 7% headroom for network jitter, which bunches arrivals at Stripe.
        self.capacity = 1.0
        self.rate = rate * 0.93 if rate > 2 else rate / 2
        self._tokens = self.capacity
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Block until one call may go out."""
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                wait = (1 - self._tokens) / self.rate
            time.sleep(wait)
