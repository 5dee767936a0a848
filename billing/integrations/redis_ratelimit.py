"""The account's rate limit shared by every process, on every machine, through Redis.

The same GCRA bucket as ratelimit.TokenBucket (burst of one, each caller reserves the next slot,
slots 1/refill apart, AIMD after a 429), with its state in one Redis hash per Stripe account and
each step one Lua script, so reserving a slot is atomic across processes and timed on Redis's
clock (machines' clocks may differ; Redis has one). A 429 seen by any process halves the refill
for all of them.

Why a script of our own: the maintained Redis rate limiters for Python (limits, pyrate-limiter)
answer "allowed now or not"; callers then poll, and pollers of several processes arrive together.
Reserving the next slot spaces the calls exactly, and the AIMD state (a 429 anywhere slows every
process) has to live beside the slot, in the same atomic step.

If Redis does not answer, the process falls back to its own bucket and says so in the log: the
Stripe calls of an admin save still go out, at this process's share of the limit.
"""

import logging
import threading
import time
from typing import ClassVar

import redis

from billing.integrations.ratelimit import (
    LATE_WAKEUP,
    RECOVERY_SECONDS,
    THROTTLE_FACTOR,
    THROTTLE_FLOOR,
    THROTTLE_GAP,
    TokenBucket,
    refill_rate,
)

logger = logging.getLogger(__name__)

KEY_TTL_SECONDS = 3600  # an idle account's state goes away; a fresh one starts with no debt
# Calls of several processes (machines) spread more between their slot and their arrival at
# Stripe than one process's: each has its own scheduler, GIL and network path.
SHARED_JITTER_ALLOWANCE = 0.1

# The refill now: the full one, or (after a 429) the reduced one growing back linearly.
_CURRENT = """
local function current(state, now, full, recovery)
  local reduced = tonumber(state[2])
  if reduced == nil or reduced >= full then return full end
  local grown = reduced + (now - tonumber(state[3])) * full / recovery
  if grown >= full then return full end
  return grown
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'next', 'reduced', 'at')
local full = tonumber(ARGV[1])
local recovery = tonumber(ARGV[2])
"""

# ARGV: full refill, recovery seconds. Returns the seconds to wait for the reserved slot.
_ACQUIRE = (
    _CURRENT
    + """
local slot = math.max(now, tonumber(state[1]) or now)
local rate = current(state, now, full, recovery)
redis.call('HSET', KEYS[1], 'next', string.format('%.6f', slot + 1 / rate))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return string.format('%.6f', slot - now)
"""
)

# ARGV: full refill, recovery seconds, ttl, seconds to keep every caller out.
_PAUSE = (
    _CURRENT
    + """
local later = now + tonumber(ARGV[4])
if later > (tonumber(state[1]) or 0) then
  redis.call('HSET', KEYS[1], 'next', string.format('%.6f', later))
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 1
"""
)

# ARGV: full refill, recovery seconds, ttl, factor, floor share, gap seconds.
_THROTTLE = (
    _CURRENT
    + """
local at = tonumber(state[3])
if at ~= nil and now - at < tonumber(ARGV[6]) then return 0 end
local rate = current(state, now, full, recovery)
local reduced = math.max(full * tonumber(ARGV[5]), rate * tonumber(ARGV[4]))
redis.call('HSET', KEYS[1], 'reduced', string.format('%.6f', reduced),
  'at', string.format('%.6f', now))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
)

_RATE = (
    _CURRENT
    + """
return string.format('%.6f', current(state, now, full, recovery))
"""
)


class RedisBucket:
    """TokenBucket's interface, its state in Redis under `key` (one per Stripe account)."""

    _shared: ClassVar[dict[tuple[str, str, float], "RedisBucket"]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self, *, url: str, key: str, rate: float, jitter: float = SHARED_JITTER_ALLOWANCE
    ) -> None:
        if rate <= 0:
            raise ValueError("The rate must be positive.")
        self.limit = rate
        self.rate = refill_rate(rate, jitter)
        self.key = key
        self._redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._pause = self._redis.register_script(_PAUSE)
        self._throttle = self._redis.register_script(_THROTTLE)
        self._rate = self._redis.register_script(_RATE)
        self._fallback = TokenBucket.shared(rate)
        self._warned = False

    @classmethod
    def shared(cls, *, url: str, key: str, rate: float) -> "RedisBucket":
        with cls._shared_lock:
            bucket = cls._shared.get((url, key, rate))
            if bucket is None:
                bucket = cls._shared[(url, key, rate)] = cls(url=url, key=key, rate=rate)
            return bucket

    def _args(self, *extra: float) -> list[float]:
        return [self.rate, RECOVERY_SECONDS, KEY_TTL_SECONDS, *extra]

    def _unavailable(self, exc: redis.RedisError) -> None:
        if not self._warned:
            self._warned = True
            logger.warning(
                "Redis did not answer (%s): Stripe calls of this process are paced by its own "
                "limiter until it does.",
                exc,
            )

    def acquire(self) -> None:
        """Block until one call may go out (see TokenBucket.acquire)."""
        while True:
            try:
                wait = float(self._acquire(keys=[self.key], args=self._args()))
            except redis.RedisError as exc:
                self._unavailable(exc)
                self._fallback.acquire()
                return
            self._warned = False
            if wait <= 0:
                return
            slot = time.monotonic() + wait
            time.sleep(wait)
            if time.monotonic() - slot <= LATE_WAKEUP:
                return

    def pause(self, seconds: float) -> None:
        try:
            self._pause(keys=[self.key], args=self._args(seconds))
        except redis.RedisError as exc:
            self._unavailable(exc)
            self._fallback.pause(seconds)

    def throttle(self) -> None:
        try:
            self._throttle(
                keys=[self.key],
                args=self._args(THROTTLE_FACTOR, THROTTLE_FLOOR, THROTTLE_GAP),
            )
        except redis.RedisError as exc:
            self._unavailable(exc)
            self._fallback.throttle()

    def current_rate(self) -> float:
        try:
            return float(self._rate(keys=[self.key], args=self._args()))
        except redis.RedisError as exc:
            self._unavailable(exc)
            return self._fallback.current_rate()
