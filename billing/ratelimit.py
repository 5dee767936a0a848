"""A thread-safe token bucket: never more than `rate` calls in any second."""

import threading
import time


class TokenBucket:
    def __init__(self, *, rate: float) -> None:
        if rate <= 0:
            raise ValueError("The rate must be positive.")
        # Any 1-second window sees at most capacity + refill rate calls: split `rate` between
        # the two so that sum never exceeds it.
        self.capacity = max(1.0, rate * 0.05)
        self.rate = max(rate - self.capacity, rate * 0.5)
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
