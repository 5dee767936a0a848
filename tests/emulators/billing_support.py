"""Shared by the Stripe emulator's billing tests: a customer with a metered subscription whose
periods start at 00:00 UTC, driven through stripe-python on a settable clock."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import stripe

from emulators.stripe import FakeStripe
from tests.emulators.support import Clock

KEY = "sk_test_fakeStripeBilling1234"
HOUR = 3600
DAY = 86400
DAY0 = 1795132800  # 2026-11-20 00:00 UTC
Client = Any  # stripe-python's TypedDicts would refuse the deliberately invalid parameters


def client_for(fake: FakeStripe, http_client: stripe.HTTPXClient) -> Client:
    return stripe.StripeClient(
        KEY, base_addresses={"api": fake.url, "meter_events": fake.url}, http_client=http_client
    )


def meter_and_price(
    client: Client,
    *,
    interval: str = "day",
    unit: str = "0.5",
    event_name: str = "api_calls",
    formula: str = "sum",
) -> tuple[Any, Any]:
    meter = client.v1.billing.meters.create(
        {
            "display_name": "API calls",
            "event_name": event_name,
            "default_aggregation": {"formula": formula},
            "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
            "value_settings": {"event_payload_key": "value"},
            "event_time_window": "hour",
        }
    )
    price = client.v1.prices.create(
        {
            "currency": "usd",
            "unit_amount_decimal": unit,
            "product_data": {"name": "API"},
            "recurring": {"interval": interval, "usage_type": "metered", "meter": meter.id},
        }
    )
    return meter, price


def daily_world(
    fake: FakeStripe, clock: Clock, client: Client, *, formula: str = "sum"
) -> dict[str, Any]:
    """At 23:30 on DAY0: a customer subscribed since 00:00 (backdated) with daily periods
    anchored at midnight, so the current period is [DAY0, DAY0 + DAY)."""
    clock.now = DAY0 + DAY - 1800
    meter, price = meter_and_price(client, formula=formula)
    customer = client.v1.customers.create({"name": "Acme"})
    sub = client.v1.subscriptions.create(
        {
            "customer": customer.id,
            "items": [{"price": price.id}],
            "backdate_start_date": DAY0,
            "billing_cycle_anchor": DAY0 + DAY,
            "proration_behavior": "none",
        }
    )
    return {"meter": meter, "price": price, "customer": customer, "sub": sub}


def send(client: Client, customer: str, value: str, ts: int, identifier: str | None = None) -> None:
    params: dict[str, Any] = {
        "event_name": "api_calls",
        "payload": {"stripe_customer_id": customer, "value": value},
        "timestamp": ts,
    }
    if identifier:
        params["identifier"] = identifier
    client.v1.billing.meter_events.create(params)


def windows_in(fake: FakeStripe, meter: str, customer: str, start: int, end: int) -> Decimal:
    """The sum of the billed windows whose start lies in [start, end)."""
    return sum(
        (
            v
            for (c, w), v in fake.billed_windows(meter).items()
            if c == customer and start <= w < end
        ),
        Decimal(0),
    )


def cents(quantity: Decimal, unit: str) -> int:
    """Stripe's line rounding: quantity x unit, half up to a whole minor unit."""
    return int((quantity * Decimal(unit)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def types(fake: FakeStripe) -> list[str]:
    return [e["type"] for e in fake.events]
