"""A billing period from start to correction, against the fake Stripe's billing cycle: the draft
invoice makes Meterbridge report the whole period at once (so the final invoice holds every
window), the final invoice closes the period, and usage that arrives later becomes one proposed
correction, booked once as an invoice item when approved."""

import functools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from billing import clock, reporting
from billing.closing.periods import record_periods
from billing.integrations import stripe_sync
from billing.models import (
    BillingPeriod,
    Correction,
    CorrectionStatus,
    PeriodStatus,
    PriceMapping,
    ReportRun,
    Subscription,
    Trigger,
)
from tests.helpers import Usage, deliver_newest, synced_customers, synced_meter

pytestmark = pytest.mark.django_db
SECRET = "whsec_meterbridge_period_tests"
EVENTS = "/v1/billing/meter_events"


@pytest.fixture
def noon(fake_stripe, settings):
    """Today at 12:30 UTC, on the app's clock and the fake Stripe's."""
    moment = datetime.now(UTC).replace(hour=12, minute=30, second=0, microsecond=0)
    settings.STRIPE_WEBHOOK_SECRET = SECRET
    settings.STRIPE_MAX_REQUESTS_PER_SECOND = 1000
    fake_stripe.clock = lambda: moment.timestamp()
    with clock.frozen(moment):
        yield moment


def hour(noon: datetime, h: int) -> datetime:
    return noon.replace(minute=0) - timedelta(hours=h)


deliver = functools.partial(deliver_newest, secret=SECRET)


@pytest.fixture
def subscribed(fake_stripe, fake_openmeter, noon):
    meter = synced_meter(fake_openmeter)
    price = PriceMapping.objects.create(
        meter=meter, product_name="Calls", unit_amount_decimal=Decimal("2.5"), interval="day"
    )
    assert stripe_sync.sync_object(price), price.sync_error
    (acme,) = synced_customers(["acme"])
    sub = Subscription.objects.create(customer=acme)
    sub.prices.set([price])
    assert stripe_sync.sync_object(sub), sub.sync_error
    return meter, acme, sub, Usage(fake_openmeter)


def test_periods_start_at_midnight_and_are_known_locally(subscribed, fake_stripe, noon):
    _, _, sub, _ = subscribed
    period = BillingPeriod.objects.get(subscription=sub)
    midnight = noon.replace(hour=0, minute=0)
    assert (period.period_start, period.period_end) == (midnight, midnight + timedelta(days=1))
    assert period.status == PeriodStatus.OPEN
    item = fake_stripe.objects["subscription"][sub.stripe_subscription_id]["items"]["data"][0]
    assert item["current_period_start"] == int(midnight.timestamp())


def test_close_final_invoice_and_a_correction(
    client, subscribed, fake_stripe, noon, django_capture_on_commit_callbacks
):
    meter, acme, sub, usage = subscribed
    for h in range(1, 5):
        usage.add(meter, "acme", hour(noon, h) + timedelta(minutes=10), 10 * h)
    reporting.report_usage(trigger=Trigger.SCHEDULE, now=noon)
    usage.add(meter, "acme", hour(noon, 1) + timedelta(minutes=50), 5)  # in the last hour

    # The period ends: Stripe drafts the invoice; Meterbridge reports the whole period at once.
    fake_stripe.invoice_grace_seconds = 0  # finalized when finalize_due_invoices() is called
    invoice = fake_stripe.advance_subscription(sub.stripe_subscription_id)
    deliver(client, fake_stripe, "invoice.created", django_capture_on_commit_callbacks)
    period = BillingPeriod.objects.get(stripe_invoice_id=invoice["id"])
    assert period.status == PeriodStatus.INVOICING
    close = ReportRun.objects.get(pk=period.close_run_id)
    assert close.status == "succeeded" and close.events_sent == 1  # the last hour's change
    assert "Closing the billing period" in close.reason

    # Finalized after the grace period: every window of the period is on the invoice.
    (final,) = fake_stripe.finalize_due_invoices()
    deliver(client, fake_stripe, "invoice.finalized", django_capture_on_commit_callbacks)
    period.refresh_from_db()
    assert period.status == PeriodStatus.CLOSED and period.invoice_total == final["total"]
    measured = sum(usage.windows(meter, [acme]).values(), Decimal(0))
    line = final["lines"]["data"][0]
    assert Decimal(str(line["quantity_decimal"])) == measured == Decimal(105)
    assert final["total"] == 263  # 105 calls at 2.5 cents, rounded half up

    # Usage for the closed period arrives after the invoice is final: no meter event.
    usage.add(meter, "acme", hour(noon, 3) + timedelta(minutes=5), 8)
    sent = fake_stripe.count("POST", EVENTS)
    reporting.report_usage(trigger=Trigger.SCHEDULE, now=noon + timedelta(minutes=20))
    assert fake_stripe.count("POST", EVENTS) == sent
    correction = Correction.objects.get()
    assert (correction.quantity_before, correction.quantity_after) == (Decimal(105), Decimal(113))
    assert correction.amount == Decimal(20) and correction.billing_period == period

    # A second person approves it: one invoice item, booked once however often it is approved.
    boss = get_user_model().objects.create_user("boss", password="pw-12345-xyz", is_staff=True)
    boss.user_permissions.set(
        Permission.objects.filter(codename__in=["approve_correction", "view_correction"])
    )
    client.force_login(boss)
    for _ in range(2):
        client.post(
            "/admin/billing/correction/",
            {
                "action": "approve",
                "_selected_action": [str(correction.pk)],
                "confirm": "1",
                "reason": "Late usage from the pipeline",
            },
        )
    correction.refresh_from_db()
    assert correction.status == CorrectionStatus.BOOKED and correction.decided_by == boss
    items = list(fake_stripe.objects["invoiceitem"].values())
    assert [i["id"] for i in items] == [correction.stripe_object_id]
    assert items[0]["amount"] == 20 and items[0]["customer"] == acme.stripe_customer_id
    assert "Usage correction: Api Calls" in items[0]["description"]


def test_periods_of_an_older_api_version_are_read_from_the_subscription(subscribed):
    """Before API version 2025-03-31 the period is on the subscription, not on its items."""
    _, _, sub, _ = subscribed
    start, end = 1_800_000_000, 1_802_592_000
    record_periods(
        subscription=sub,
        stripe_subscription={
            "items": {"data": [{"id": "si_1"}]},
            "current_period_start": start,
            "current_period_end": end,
        },
    )
    period = BillingPeriod.objects.get(
        subscription=sub, period_start=datetime.fromtimestamp(start, UTC)
    )
    assert period.period_end == datetime.fromtimestamp(end, UTC)
