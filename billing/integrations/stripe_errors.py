"""One reading of Stripe's errors, for sync and sending alike: retry it, was it a duplicate,
and what to tell a person (secrets redacted)."""

import math
from collections.abc import Mapping
from dataclasses import dataclass

import stripe

from billing.redaction import redact


@dataclass(frozen=True)
class Retry:
    """A failure worth trying again, after `retry_after` seconds if Stripe said so.

    `rate_limited`: Stripe answered 429. Such a request was not processed; the sender retries it
    on its own budget and slows the whole process down (meter_events.py)."""

    reason: str
    retry_after: float | None = None
    rate_limited: bool = False


def retryable(exc: stripe.StripeError) -> Retry | None:
    """A Stripe failure that retrying can fix as Retry, or None when it cannot.

    A 429 is always retried: Stripe did not process a rate-limited request, and its
    `Stripe-Should-Retry: false` only tells client libraries not to retry at once, so it gets
    backoff, not a final failure. Otherwise `Stripe-Should-Retry: false` is final, 5xx included
    (Stripe knows the retry cannot succeed, as stripe-python reads it); 5xx, 409 and connection
    errors are retried."""
    headers = exc.headers or {}
    status = exc.http_status or 0
    retry_after = parse_retry_after(header(headers, "retry-after"))
    if status == 429:
        return Retry("Stripe answered 429 (rate limited)", retry_after, rate_limited=True)
    should_retry = str(header(headers, "stripe-should-retry") or "").lower()
    if should_retry == "false":
        return None
    if isinstance(exc, stripe.APIConnectionError):
        return Retry(f"cannot reach Stripe: {exc}")
    if status >= 500 or should_retry == "true" or status == 409:
        return Retry(f"Stripe answered {status}", retry_after)
    return None


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A response header by name, whatever its case (stripe-python may hand a plain dict)."""
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds (Stripe sends a number); None when absent or unreadable."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def is_duplicate(exc: stripe.StripeError) -> bool:
    """Stripe refuses a meter event identifier it saw in the last 24 hours: that event was
    delivered."""
    if exc.http_status != 400:
        return False
    if exc.code in {"duplicate_meter_event", "resource_already_exists"}:
        return True
    message = (getattr(exc, "user_message", None) or str(exc)).lower()
    return "already exists" in message and "identifier" in message


def describe(exc: BaseException) -> str:
    """What went wrong, for a person: Stripe's status, message and request id, redacted."""
    if isinstance(exc, stripe.StripeError):
        detail = exc.user_message or str(exc)
        status = f"Stripe answered {exc.http_status}: " if exc.http_status else "Stripe: "
        request = f" (request {exc.request_id})" if exc.request_id else ""
        return redact(f"{status}{detail}{request}")
    return redact(str(exc) or type(exc).__name__)
