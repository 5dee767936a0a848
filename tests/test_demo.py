"""Demo mode: the seed's example on the local emulators, generated usage, and a first report;
never against anything but loopback emulators."""

from collections import defaultdict
from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command

from billing import demo, subjects, windows
from billing.integrations.openmeter import OpenMeterClient
from billing.models import Customer, Meter, ReportRun, RunStatus, Subscription, SyncStatus, Trigger

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo_mode(fake_stripe, fake_openmeter, settings, frozen):
    settings.DEMO_MODE = True
    settings.STRIPE_MAX_REQUESTS_PER_SECOND = 1000  # 144 windows: no need to wait at 20/s
    # as dev.py starts the OpenMeter emulator: tokens_total sums data.tokens of "tokens" events
    fake_openmeter.add_meter(
        "tokens_total", aggregation="SUM", event_type="tokens", value_property="$.tokens"
    )
    # ...and active_users counts the unique data.user of the same events
    fake_openmeter.add_meter(
        "active_users", aggregation="UNIQUE_COUNT", event_type="tokens", value_property="$.user"
    )
    return fake_stripe, fake_openmeter


def openmeter_windows(now) -> dict[tuple[str, int], Decimal]:
    start = windows.floor(now, windows.HOUR) - timedelta(hours=demo.BACKFILL_HOURS)
    with OpenMeterClient.from_settings() as client:
        rows = client.query(slug="tokens_total", start=start, end=windows.floor(now, windows.HOUR))
        return {(r.subject, int(r.window_start.timestamp())): r.value for r in rows if r.value}


def test_demo_setup_creates_the_example_feeds_usage_and_reports_it(demo_mode, frozen):
    fake_stripe, _ = demo_mode
    out = StringIO()
    call_command("demo_setup", stdout=out, stderr=StringIO())

    assert "3 customers with subscriptions" in out.getvalue()
    meter = Meter.objects.get(openmeter_slug="tokens_total")
    assert {c.openmeter_subject for c in Customer.objects.all()} == {"acme", "globex", "initech"}
    for obj in [meter, *Customer.objects.all(), *Subscription.objects.all()]:
        assert obj.sync_status == SyncStatus.SYNCED, obj.sync_error
    # the first report ran (django-q2 runs tasks in-process in the tests)
    run = ReportRun.objects.get(trigger=Trigger.SCHEDULE)
    assert run.status == RunStatus.SUCCEEDED and run.events_sent > 0
    assert run.unmapped_subjects == 1  # the generator's subject without a customer
    ids = {c.stripe_customer_id: c.openmeter_subject for c in Customer.objects.all()}
    billed = {
        (ids[cus], ts): Decimal(v)
        for (cus, ts), v in fake_stripe.billed_windows(meter.stripe_meter_id).items()
    }
    # Acme is billed for its users' subjects too: each window is the sum over its subjects.
    owner = {s: c.openmeter_subject for s, c in subjects.owners(Customer.objects.all()).items()}
    assert owner["acme-alice"] == owner["acme-bob"] == "acme"
    truth: dict[tuple[str, int], Decimal] = defaultdict(Decimal)
    for (subject, ts), value in openmeter_windows(frozen).items():
        if subject in owner:
            truth[(owner[subject], ts)] += value
    assert billed == truth and len(truth) == 3 * demo.BACKFILL_HOURS


def test_demo_subscriptions_bill_the_generated_history(demo_mode, frozen):
    fake_stripe, _ = demo_mode
    call_command("demo_setup", stdout=StringIO(), stderr=StringIO())
    sub = Subscription.objects.first()
    assert sub is not None and sub.bill_from is not None
    assert sub.bill_from <= frozen - timedelta(hours=demo.BACKFILL_HOURS)
    remote = fake_stripe.objects["subscription"][sub.stripe_subscription_id]
    item = remote["items"]["data"][0]
    assert remote["start_date"] == int(sub.bill_from.timestamp())
    assert item["current_period_start"] <= int(sub.bill_from.timestamp())
    assert item["current_period_end"] > int(frozen.timestamp())


def test_a_second_start_changes_nothing(demo_mode):
    fake_stripe, _ = demo_mode
    call_command("demo_setup", stdout=StringIO(), stderr=StringIO())
    posts = fake_stripe.count("POST", "/v1/customers") + fake_stripe.count(
        "POST", "/v1/subscriptions"
    )
    out = StringIO()
    call_command("demo_setup", stdout=out, stderr=StringIO())
    assert "0 usage events fed" in out.getvalue()
    assert Customer.objects.count() == 3 and Subscription.objects.count() == 3
    assert posts == fake_stripe.count("POST", "/v1/customers") + fake_stripe.count(
        "POST", "/v1/subscriptions"
    )
    second = ReportRun.objects.filter(trigger=Trigger.SCHEDULE).order_by("pk").last()
    assert second is not None and second.events_sent == 0 and second.events_unchanged > 0


def test_no_demo_data_outside_demo_mode(fake_stripe, fake_openmeter, settings):
    settings.DEMO_MODE = False
    err = StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("demo_setup", stdout=StringIO(), stderr=err)
    assert exit_info.value.code == 2 and "Not in demo mode" in err.getvalue()
    assert not Meter.objects.exists() and fake_stripe.count("POST", "/v1/") == 0


def test_no_demo_data_against_a_real_stripe(demo_mode, settings):
    settings.STRIPE_API_BASE = "https://api.stripe.com"
    with pytest.raises(demo.DemoRefused, match="STRIPE_API_BASE is not a local emulator"):
        demo.ensure_example()
    assert not Meter.objects.exists()


def test_live_usage_is_mostly_now_and_sometimes_late_or_unmapped(frozen):
    import random

    rng = random.Random(3)
    events = [e for _ in range(2000) for e in demo.live(now=frozen, rng=rng)]
    late = [e for e in events if e.time < frozen - timedelta(minutes=59)]
    unmapped = [e for e in events if e.subject == demo.UNMAPPED_SUBJECT]
    assert late and unmapped and len(late) + len(unmapped) < len(events) / 10
    assert all(e.tokens > 0 for e in events)


def test_the_demo_bills_monthly_active_users_as_the_period_unique_count(demo_mode, frozen):
    """The demo's second price: active users (UNIQUE_COUNT of data.user), billed per period
    through a Stripe meter with formula `last`; Acme's three subjects are read together through
    its OpenMeter customer."""
    fake_stripe, _ = demo_mode
    call_command("demo_setup", stdout=StringIO(), stderr=StringIO())
    run = ReportRun.objects.get(trigger=Trigger.SCHEDULE)
    assert run.status == RunStatus.SUCCEEDED, run.error
    users = Meter.objects.get(openmeter_slug=demo.USERS_SLUG)
    assert users.openmeter_aggregation == "UNIQUE_COUNT" and users.period_to_date
    remote = fake_stripe.objects["billing.meter"][users.stripe_meter_id]
    assert remote["default_aggregation"]["formula"] == "last"
    acme = Customer.objects.get(openmeter_subject="acme")
    assert acme.openmeter_customer_id
    end = windows.floor(frozen, windows.HOUR)
    billed = fake_stripe.billed_windows(users.stripe_meter_id)
    with OpenMeterClient.from_settings() as client:
        for sub in Subscription.objects.select_related("customer"):
            assert sub.prices.count() == 2
            items = fake_stripe.objects["subscription"][sub.stripe_subscription_id]["items"]
            assert len(items["data"]) == 2
            customer = sub.customer
            assert sub.bill_from is not None
            if customer.openmeter_customer_id:
                rows = client.query(
                    slug=demo.USERS_SLUG,
                    start=sub.bill_from,
                    end=end,
                    window_size=None,
                    customers=[customer.openmeter_customer_id],
                )
            else:
                rows = client.query(
                    slug=demo.USERS_SLUG,
                    start=sub.bill_from,
                    end=end,
                    window_size=None,
                    subjects=[customer.openmeter_subject],
                )
            truth = sum((row.value for row in rows), Decimal(0))
            mine = {w: v for (cus, w), v in billed.items() if cus == customer.stripe_customer_id}
            assert truth > 1 and Decimal(mine[max(mine)]) == truth
