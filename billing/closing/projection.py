"""A customer's projected invoice: Stripe's preview of the upcoming invoice of each active
subscription (`POST /v1/invoices/create_preview`), beside the usage of the current period that
Meterbridge has not sent yet (OpenMeter's total minus what Stripe holds)."""

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from billing import clock, subjects, windows
from billing.closing.corrections import held_total
from billing.formatting import money
from billing.integrations.openmeter import OpenMeterClient, OpenMeterError
from billing.integrations.stripe_client import get_client
from billing.integrations.stripe_errors import describe
from billing.models import BillingPeriod, Customer, Subscription
from billing.pricing import Amounts


@dataclass
class Projection:
    subscription: Subscription
    amount_due: str = ""
    period: tuple[datetime, datetime] | None = None
    lines: list[tuple[str, Any, str]] = field(default_factory=list)  # description, qty, amount
    unsent: list[tuple[str, Decimal, Amounts]] = field(default_factory=list)  # meter, qty, value
    error: str = ""


def projections(*, customer: Customer) -> list[Projection]:
    subs = customer.subscriptions.exclude(stripe_subscription_id="").exclude(
        status__in=("canceled", "incomplete_expired")
    )
    return [_project(customer, sub) for sub in subs.order_by("pk")]


def _project(customer: Customer, sub: Subscription) -> Projection:
    found = Projection(subscription=sub)
    try:
        preview = get_client(max_network_retries=0).v1.invoices.create_preview(
            {"customer": customer.stripe_customer_id, "subscription": sub.stripe_subscription_id}
        )
    except Exception as exc:  # the page still shows, with why the preview is missing
        found.error = describe(exc)
        return found
    currency = preview.currency or "usd"
    found.amount_due = money(minor_units=Decimal(preview.amount_due or 0), currency=currency)
    for line in preview.lines.data:
        amount = money(minor_units=Decimal(line.amount or 0), currency=currency)
        found.lines.append((line.description or "", getattr(line, "quantity", None), amount))
    period = BillingPeriod.objects.filter(subscription=sub).order_by("-period_start").first()
    if period is not None:
        found.period = (period.period_start, period.period_end)
        found.unsent = _unsent(customer, sub, period)
    return found


def _unsent(
    customer: Customer, sub: Subscription, period: BillingPeriod
) -> list[tuple[str, Decimal, Amounts]]:
    """Per meter: OpenMeter's usage of the period's closed hours minus what Stripe holds."""
    end = min(period.period_end, windows.floor(clock.now(), windows.HOUR))
    rows = []
    try:
        with OpenMeterClient.from_settings() as client:
            for price in sub.prices.select_related("meter"):
                meter = price.meter
                start = windows.floor(period.period_start, meter.window)
                measured = sum(
                    (
                        row.value
                        for row in client.query(
                            slug=meter.openmeter_slug,
                            start=start,
                            end=windows.floor(end, meter.window),
                            window_size=None,
                            subjects=subjects.subjects_of(customer),
                        )
                    ),
                    Decimal(0),
                )
                held = held_total(
                    meter=meter,
                    stripe_customer_id=customer.stripe_customer_id,
                    start=start,
                    end=windows.floor(end, meter.window),
                )
                value = Amounts()
                value.add(quantity=measured - held, price=price)
                rows.append((meter.name, measured - held, value))
    except OpenMeterError:
        return []
    return rows
