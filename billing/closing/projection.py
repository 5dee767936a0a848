"""A customer's projected invoice: Stripe's preview of the upcoming invoice of each active
subscription (`POST /v1/invoices/create_preview`), beside the usage of the current period that
Meterbridge has not sent yet (OpenMeter's total minus what Stripe holds)."""

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from billing import aggregations, clock, subjects, windows
from billing.closing.corrections import held_billed
from billing.formatting import money
from billing.integrations.openmeter import OpenMeterClient, OpenMeterError
from billing.integrations.stripe_client import get_client
from billing.integrations.stripe_errors import describe
from billing.models import BillingPeriod, Customer, Meter, Subscription
from billing.pricing import Amounts
from billing.reporting.period_to_date import read_customers, unreadable


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
                start = windows.ceil(period.period_start, meter.window)
                if start >= windows.floor(end, meter.window):
                    continue  # no closed window of the period yet
                measured = _measured(client, meter=meter, customer=customer, start=start, end=end)
                held = held_billed(
                    meter=meter,
                    customer=customer,
                    start=start,
                    end=windows.floor(end, meter.window),
                )
                value = Amounts()
                value.add(quantity=measured - held, price=price)
                rows.append((meter.name, measured - held, value))
    except OpenMeterError:
        return []
    return rows


def _measured(
    client: OpenMeterClient, *, meter: Meter, customer: Customer, start: datetime, end: datetime
) -> Decimal:
    """OpenMeter's value of the customer over [start, end) as Stripe would bill it: summed over
    its subjects, or, for a period-to-date meter, its aggregate over all of them."""
    keys = subjects.subjects_of(customer)
    end = windows.floor(end, meter.window)
    if not meter.period_to_date:
        rows = client.query(
            slug=meter.openmeter_slug, start=start, end=end, window_size=None, subjects=keys
        )
        return sum((row.value for row in rows), Decimal(0))
    aggregation = aggregations.normal(meter.openmeter_aggregation)
    if unreadable([customer], {customer.pk: keys}, aggregation):
        return Decimal(0)
    values = read_customers(
        openmeter=client,
        meter=meter,
        aggregation=aggregation,
        customers=[customer],
        subjects_of={customer.pk: keys},
        start=start,
        end=end,
        window_size=None,
    )
    return sum(values.values(), Decimal(0))  # one total
