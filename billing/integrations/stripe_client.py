"""Builds the app's StripeClient from settings: keys, base addresses, httpx, retries, and the
account's rate limit, which every request of the app takes its slot from."""

import functools
import hashlib
from collections.abc import Mapping
from typing import Any, Protocol

import stripe
from django.conf import settings

from billing.integrations.ratelimit import TokenBucket
from billing.integrations.redis_ratelimit import RedisBucket
from billing.integrations.stripe_errors import parse_retry_after

RATE_LIMITED_PAUSE = 0.1  # seconds every caller waits after a 429 without Retry-After
MAX_RETRY_AFTER_PAUSE = 30.0  # seconds: the longest Retry-After every caller honours


class Limiter(Protocol):
    rate: float

    def acquire(self) -> None: ...
    def pause(self, seconds: float) -> None: ...
    def throttle(self) -> None: ...
    def current_rate(self) -> float: ...


def account_limiter(*, rate: float) -> Limiter:
    """The limiter of the configured Stripe account: shared by every process through Redis when
    REDIS_URL is set (Stripe's limit is per account), else this process's own bucket."""
    return _limiter(
        api_key=settings.STRIPE_API_KEY or "",
        events_base=settings.STRIPE_METER_EVENTS_API_BASE,
        redis_url=settings.REDIS_URL,
        rate=rate,
    )


def _limiter(*, api_key: str, events_base: str, redis_url: str | None, rate: float) -> Limiter:
    if not redis_url:
        return TokenBucket.shared(rate)
    tag = hashlib.sha256(f"{api_key}@{events_base}".encode()).hexdigest()[:16]
    return RedisBucket.shared(url=redis_url, key=f"meterbridge:stripe-rate:{tag}", rate=rate)


class PacedHTTPXClient(stripe.HTTPXClient):
    """stripe-python's httpx client, each request paced by the account's limiter: sending,
    syncing, reading and stripe-python's own retries alike. A 429 slows every caller."""

    def __init__(self, *, limiter: Limiter, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.limiter = limiter

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
        *,
        _usage: list[str] | None = None,
    ) -> tuple[Any, int, Mapping[str, str]]:
        self.limiter.acquire()
        content, status, response_headers = super().request(method, url, headers or {}, post_data)
        note_answer(self.limiter, status=status, headers=response_headers)
        return content, status, response_headers


def note_answer(limiter: Limiter, *, status: int, headers: Mapping[str, str]) -> None:
    """A 429 slows every caller of the account: the rate is cut, and nobody calls again before
    Retry-After (or a short pause). `headers`: names in lower case, or case-insensitive."""
    if status != 429:
        return
    limiter.throttle()
    retry_after = parse_retry_after(headers.get("retry-after"))
    limiter.pause(
        RATE_LIMITED_PAUSE if retry_after is None else min(retry_after, MAX_RETRY_AFTER_PAUSE)
    )


class StripeNotConfigured(Exception):
    def __init__(self) -> None:
        super().__init__("Stripe is not configured: set STRIPE_API_KEY.")


@functools.cache
def _build(
    api_key: str,
    api_base: str,
    events_base: str,
    retries: int,
    timeout: float,
    rate: float,
    redis_url: str | None,
) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": api_base, "meter_events": events_base},
        http_client=_http(api_key, events_base, timeout, rate, redis_url),
        max_network_retries=retries,
    )


@functools.cache
def _http(
    api_key: str, events_base: str, timeout: float, rate: float, redis_url: str | None
) -> PacedHTTPXClient:
    limiter = _limiter(api_key=api_key, events_base=events_base, redis_url=redis_url, rate=rate)
    return PacedHTTPXClient(limiter=limiter, allow_sync_methods=True, timeout=timeout)


def get_client(
    *, max_network_retries: int | None = None, rate: float | None = None
) -> stripe.StripeClient:
    """The shared client. Settings are read on each call so a changed setting takes effect.

    `max_network_retries=0` gives a client for callers that retry themselves (the reporting
    engine). `rate`: requests per second, STRIPE_MAX_REQUESTS_PER_SECOND unless given.
    """
    if not settings.STRIPE_API_KEY:
        raise StripeNotConfigured()
    retries = (
        settings.STRIPE_MAX_NETWORK_RETRIES if max_network_retries is None else max_network_retries
    )
    return _build(
        settings.STRIPE_API_KEY,
        settings.STRIPE_API_BASE.rstrip("/"),
        settings.STRIPE_METER_EVENTS_API_BASE.rstrip("/"),
        retries,
        settings.STRIPE_TIMEOUT,
        rate or settings.STRIPE_MAX_REQUESTS_PER_SECOND,
        settings.REDIS_URL,
    )


def get_http_client(*, rate: float | None = None) -> PacedHTTPXClient:
    """The shared client's HTTP client, for the few calls made below stripe-python's resources
    (the v2 meter event stream): paced by the same limiter."""
    if not settings.STRIPE_API_KEY:
        raise StripeNotConfigured()
    return _http(
        settings.STRIPE_API_KEY,
        settings.STRIPE_METER_EVENTS_API_BASE.rstrip("/"),
        settings.STRIPE_TIMEOUT,
        rate or settings.STRIPE_MAX_REQUESTS_PER_SECOND,
        settings.REDIS_URL,
    )


def is_live_mode() -> bool:
    key = settings.STRIPE_API_KEY or ""
    return "_live_" in key


def dashboard_url(path: str) -> str:
    """Link to an object in the Stripe dashboard, in test or live mode according to the key."""
    prefix = "" if is_live_mode() else "test/"
    return f"https://dashboard.stripe.com/{prefix}{path}"
