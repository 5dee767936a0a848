"""The seed's example, built through the app's own models and sync: a metered product
"AI Tokens" at $0.01 per token, monthly, billed from the OpenMeter meter `tokens_total`, and
customers subscribed to it. Used by `setup_example` (a real Stripe test account) and the demo.

Running it again changes nothing that exists: rows are found by their OpenMeter slug and subject,
and only rows not yet synced are pushed to Stripe."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from billing.integrations.openmeter import OpenMeterClient, OpenMeterError
from billing.integrations.stripe_client import dashboard_url
from billing.integrations.stripe_sync import SyncOutcome, sync_object
from billing.models import (
    ENDED_SUBSCRIPTION,
    Customer,
    Meter,
    PriceMapping,
    StripeSynced,
    Subscription,
    SyncStatus,
    Window,
)

METER_SLUG = "tokens_total"
METER_NAME = "AI Tokens"
PRODUCT_NAME = "AI Tokens"
UNIT_AMOUNT_CENTS = Decimal(1)  # $0.01 per token, in cents as Stripe takes it


@dataclass(frozen=True, kw_only=True)
class ExampleCustomer:
    name: str
    email: str
    subject: str  # the OpenMeter subject its usage carries


@dataclass
class Example:
    meter: Meter
    price: PriceMapping
    customers: list[Customer] = field(default_factory=list)
    subscriptions: list[Subscription] = field(default_factory=list)
    failures: list[SyncOutcome] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def links(self) -> list[tuple[str, str]]:
        """(what, Stripe dashboard address) for each object, in test or live mode by the key."""
        rows = [
            ("meter", dashboard_url(f"billing/meters/{self.meter.stripe_meter_id}")),
            ("price", dashboard_url(f"prices/{self.price.stripe_price_id}")),
        ]
        for customer in self.customers:
            rows.append(("customer", dashboard_url(f"customers/{customer.stripe_customer_id}")))
        for sub in self.subscriptions:
            rows.append(
                ("subscription", dashboard_url(f"subscriptions/{sub.stripe_subscription_id}"))
            )
        return rows


def create_example(
    *, customers: Sequence[ExampleCustomer], bill_from: datetime | None = None
) -> Example:
    """Create (or find) the example's rows and sync each to Stripe, in dependency order.
    New subscriptions bill usage from `bill_from` when given (Stripe's backdate_start_date)."""
    meter, _ = Meter.objects.get_or_create(
        openmeter_slug=METER_SLUG, defaults={"name": METER_NAME, "window": Window.HOUR}
    )
    example = Example(meter=meter, price=_price(meter))
    example.warnings.extend(_check_openmeter(meter))
    _sync(example.meter, example)
    _sync(example.price, example)
    for spec in customers:
        customer, _ = Customer.objects.get_or_create(
            openmeter_subject=spec.subject, defaults={"name": spec.name, "email": spec.email}
        )
        _sync(customer, example)
        example.customers.append(customer)
        subscription = _subscription(customer, example.price, bill_from)
        _sync(subscription, example)
        example.subscriptions.append(subscription)
    return example


def add_price(example: Example, *, slug: str, name: str, unit_amount: Decimal) -> PriceMapping:
    """Another metered price, from OpenMeter meter `slug`, on the example's subscriptions (the
    demo's monthly active users). Running it again changes nothing that exists."""
    meter, _ = Meter.objects.get_or_create(
        openmeter_slug=slug, defaults={"name": name, "window": Window.HOUR}
    )
    example.warnings.extend(_check_openmeter(meter))
    _sync(meter, example)
    price = _price(meter, name=name, unit_amount=unit_amount)
    _sync(price, example)
    for subscription in example.subscriptions:
        if not subscription.prices.filter(pk=price.pk).exists():
            subscription.prices.add(price)
            outcome = sync_object(subscription)  # adds the item in Stripe
            if not outcome:
                example.failures.append(outcome)
    return price


def _price(
    meter: Meter, *, name: str = PRODUCT_NAME, unit_amount: Decimal = UNIT_AMOUNT_CENTS
) -> PriceMapping:
    price = PriceMapping.objects.filter(meter=meter, active=True).order_by("pk").first()
    if price is None:
        price = PriceMapping.objects.create(
            meter=meter, product_name=name, currency="usd", unit_amount_decimal=unit_amount
        )
    return price


def _subscription(
    customer: Customer, price: PriceMapping, bill_from: datetime | None
) -> Subscription:
    current = (
        Subscription.objects.filter(customer=customer, prices=price)
        .exclude(status__in=ENDED_SUBSCRIPTION)
        .order_by("pk")
        .first()
    )
    if current is None:
        current = Subscription.objects.create(customer=customer, bill_from=bill_from)
        current.prices.set([price])
    return current


def _sync(obj: StripeSynced, example: Example) -> None:
    if obj.sync_status == SyncStatus.SYNCED and obj.stripe_id:
        return
    outcome = sync_object(obj)
    if not outcome:
        example.failures.append(outcome)


def _check_openmeter(meter: Meter) -> list[str]:
    """Record the OpenMeter meter's aggregation; say so when it cannot be billed or read."""
    try:
        with OpenMeterClient.from_settings() as client:
            info = client.get_meter(meter.openmeter_slug)
    except OpenMeterError as exc:
        return [f"Could not check the meter in OpenMeter: {exc}"]
    problem = Meter.aggregation_problem(info.aggregation)
    if problem:
        return [f"OpenMeter meter '{meter.openmeter_slug}': {problem}"]
    if meter.openmeter_aggregation != info.aggregation.upper():
        meter.openmeter_aggregation = info.aggregation.upper()
        meter.save(update_fields=["openmeter_aggregation", "updated_at"])
    return []
