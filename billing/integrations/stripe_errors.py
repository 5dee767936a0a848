"""One reading of Stripe's errors, for sync and sending alike: retry it, was it a duplicate,
and what to tell a person (secrets redacted)."""

from dataclasses import dataclass

import stripe

from billing.redaction import redact


@dataclass(frozen=True)
class Retry:
    """A failure worth trying again, after `retry_after` seconds if Stripe said so."""

    reason: str
    retry_after: float | None = None


def retryable(exc: stripe.StripeError) -> Retry | None:
    """A Stripe failure that retrying can fix as Retry, or None when it cannot."""
    headers = exc.headers or {}
    should_retry = str(headers.get("stripe-should-retry", "")).lower()
    if should_retry == "false":
        return None
    if isinstance(exc, stripe.APIConnectionError):
        return Retry(f"cannot reach Stripe: {exc}")
    status = exc.http_status or 0
    if status == 429 or status >= 500 or should_retry == "true" or status == 409:
        retry_after = headers.get("retry-after")
        return Retry(
            f"Stripe answered {status}",
            float(retry_after) if retry_after and str(retry_after).isdigit() else None,
        )
    return None


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
