"""Shared by the reconciliation tests: a reported meter (the `reported` fixture, registered in
conftest.py) and meter events written behind Meterbridge's back."""

import pytest
import stripe

from billing import reporting
from billing.models import Trigger
from tests.helpers import STRIPE_KEY, Usage, billed, hours_ago, synced_customers, synced_meter


@pytest.fixture
def reported(fake_stripe, fake_openmeter, frozen, settings):
    settings.RECONCILE_SETTLE_MINUTES = 0
    settings.STRIPE_MAX_REQUESTS_PER_SECOND = 1000
    meter = synced_meter(fake_openmeter)
    customers = synced_customers(["acme", "globex", "initech"])
    usage = Usage(fake_openmeter)
    for h in range(1, 6):
        for i, c in enumerate(customers):
            usage.add(meter, c.openmeter_subject, hours_ago(frozen, h), h + i)
    run = reporting.report_usage(trigger=Trigger.SCHEDULE, now=frozen)
    assert run.events_sent == 15 and billed(fake_stripe, meter) == usage.windows(meter, customers)
    return meter, customers, usage


def write_behind_our_back(fake_stripe, meter, customer, when, value: str) -> None:
    """Another integration (or a person) writes the same Stripe meter."""
    client = stripe.StripeClient(STRIPE_KEY, base_addresses={"api": fake_stripe.url})
    client.v1.billing.meter_events.create(
        {
            "event_name": meter.event_name,
            "payload": {"stripe_customer_id": customer.stripe_customer_id, "value": value},
            "timestamp": int(when.timestamp()) + 60,
            "identifier": f"someone-else-{customer.pk}-{int(when.timestamp())}",
        }
    )
