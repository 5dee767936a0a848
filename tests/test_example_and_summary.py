"""The seed's two steps on Meterbridge: `setup_example` (meter, price, customer, subscription in
Stripe, with dashboard links) and `report_usage` ending with one line per customer and meter in
the seed's shape, whose totals equal OpenMeter's."""

import re
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command

from billing.models import Customer, Meter, PriceMapping, Subscription, SyncStatus
from tests.helpers import Usage, hours_ago

pytestmark = pytest.mark.django_db


def run_command(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.fixture
def tokens_meter(fake_openmeter):
    fake_openmeter.add_meter("tokens_total", aggregation="SUM")
    return fake_openmeter


def test_setup_example_creates_four_synced_objects_and_prints_their_links(
    fake_stripe, tokens_meter
):
    out = run_command("setup_example")

    links = re.findall(r"^(meter|price|customer|subscription): (\S+)$", out, re.M)
    assert [what for what, _ in links] == ["meter", "price", "customer", "subscription"]
    assert all(url.startswith("https://dashboard.stripe.com/test/") for _, url in links)
    meter = Meter.objects.get()
    price = PriceMapping.objects.get()
    customer = Customer.objects.get()
    subscription = Subscription.objects.get()
    for obj in (meter, price, customer, subscription):
        assert obj.sync_status == SyncStatus.SYNCED, obj.sync_error
    assert (meter.name, meter.openmeter_slug, meter.window) == ("AI Tokens", "tokens_total", "hour")
    assert (price.unit_amount_decimal, price.currency, price.interval) == (
        Decimal(1),
        "usd",
        "month",
    )
    assert meter.stripe_meter_id in links[0][1] and price.stripe_price_id in links[1][1]
    assert customer.stripe_customer_id in links[2][1]
    assert subscription.stripe_subscription_id in links[3][1]
    stripe_price = fake_stripe.objects["price"][price.stripe_price_id]
    assert stripe_price["unit_amount_decimal"] == "1"
    assert stripe_price["recurring"]["meter"] == meter.stripe_meter_id
    assert list(subscription.prices.all()) == [price]


def test_setup_example_twice_creates_nothing_more(fake_stripe, tokens_meter):
    run_command("setup_example")
    posts = fake_stripe.count("POST", "/v1/")
    run_command("setup_example")
    assert fake_stripe.count("POST", "/v1/") == posts
    assert (Meter.objects.count(), PriceMapping.objects.count(), Customer.objects.count()) == (
        1,
        1,
        1,
    )
    assert Subscription.objects.count() == 1


def test_setup_example_says_what_failed_and_exits_1(fake_stripe, tokens_meter, settings):
    settings.STRIPE_API_KEY = None
    err = StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("setup_example", stdout=StringIO(), stderr=err)
    assert exit_info.value.code == 1
    assert "Stripe is not configured" in err.getvalue()
    assert Meter.objects.get().sync_status == SyncStatus.FAILED


def test_report_usage_ends_with_the_seed_shaped_line_per_customer_and_meter(
    fake_stripe, tokens_meter, now
):
    run_command("setup_example", "--subject", "user-1")
    run_command("setup_example", "--subject", "user-2", "--name", "Second")
    meter = Meter.objects.get()
    usage = Usage(tokens_meter)
    usage.add(meter, "user-1", hours_ago(now, 3), 4)
    usage.add(meter, "user-1", hours_ago(now, 2), Decimal("6.5"))
    usage.add(meter, "user-2", hours_ago(now, 2), 10)
    usage.add(meter, "nobody", hours_ago(now, 2), 99)  # unmapped: no line

    out = run_command("report_usage")

    lines = [line for line in out.splitlines() if line.startswith("stripe_customer:")]
    pattern = re.compile(
        r"stripe_customer: (cus_\w+), stripe_price: (price_\w+), meter: tokens_total, "
        r"total_usage: (\d+\.\d{6}), from: (\S+) to: (\S+)$"
    )
    parsed = {m.group(1): m.groups() for m in map(pattern.match, lines) if m}
    assert len(parsed) == len(lines) == 2, out
    price_id = PriceMapping.objects.get().stripe_price_id
    for subject, total in (("user-1", "10.500000"), ("user-2", "10.000000")):
        customer = Customer.objects.get(openmeter_subject=subject)
        _, price, shown_total, start, end = parsed[customer.stripe_customer_id]
        assert (price, shown_total) == (price_id, total)
        assert start.endswith(":00:00Z") and end.endswith(":00:00Z") and start < end
        billed = sum(
            Decimal(v)
            for (cus, _), v in fake_stripe.billed_windows(meter.stripe_meter_id).items()
            if cus == customer.stripe_customer_id
        )
        assert f"{billed:.6f}" == total


def test_a_dry_run_prints_no_billed_totals(fake_stripe, tokens_meter, now):
    run_command("setup_example")
    Usage(tokens_meter).add(Meter.objects.get(), "example-user", hours_ago(now, 2), 3)
    out = run_command("report_usage", "--dry-run")
    assert (
        "stripe_customer:" not in out and fake_stripe.count("POST", "/v1/billing/meter_events") == 0
    )
