"""Builds the app's StripeClient from settings: keys, base addresses, httpx, retries."""

import functools

import stripe
from django.conf import settings


class StripeNotConfigured(Exception):
    def __init__(self) -> None:
        super().__init__("Stripe is not configured: set STRIPE_API_KEY.")


@functools.cache
def _build(
    api_key: str, api_base: str, events_base: str, retries: int, timeout: float
) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": api_base, "meter_events": events_base},
        http_client=stripe.HTTPXClient(allow_sync_methods=True, timeout=timeout),
        max_network_retries=retries,
    )


def get_client(*, max_network_retries: int | None = None) -> stripe.StripeClient:
    """The shared client. Settings are read on each call so a changed setting takes effect.

    `max_network_retries=0` gives a client for callers that retry themselves (the reporting
    engine retries through its rate limiter).
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
    )


def is_live_mode() -> bool:
    key = settings.STRIPE_API_KEY or ""
    return "_live_" in key


def dashboard_url(path: str) -> str:
    """Link to an object in the Stripe dashboard, in test or live mode according to the key."""
    prefix = "" if is_live_mode() else "test/"
    return f"https://dashboard.stripe.com/{prefix}{path}"
