"""Meters that do not add up over a period (UNIQUE_COUNT, MAX, MIN, LATEST, AVG), end to end
against the fake Stripe and OpenMeter: each window carries the aggregate from the customer's
billing period start to its end, Stripe's `last` meter bills the period's last window, and so the
final invoice bills exactly OpenMeter's aggregate over the period, whatever arrived late."""

import csv
import functools
import io
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import call_command
from stripe import StripeClient

from billing import clock, reporting
from billing.formatting import utc_iso, utc_minute
from billing.integrations import stripe_sync
from billing.models import (
    BillingPeriod,
    Correction,
    Customer,
    Meter,
    PeriodStatus,
    PriceMapping,
    Reconciliation,
    ReportedWindow,
    ReportLog,
    ReportRun,
    Subscription,
    Trigger,
)
from billing.reporting.preview import preview
from billing.reporting.selection import select_meters
from tests.helpers import STRIPE_KEY, deliver_newest, synced_customers
from tests.reconciling import write_behind_our_back

pytestmark = pytest.mark.django_db
SECRET = "whsec_meterbridge_period_to_date"
EVENTS = "/v1/billing/meter_events"
KINDS: dict[str, Callable[[list[float]], float]] = {
    "UNIQUE_COUNT": lambda values: len(set(values)),
    "MAX": max,
    "MIN": min,
    "LATEST": lambda values: values[-1],
    "AVG": lambda values: sum(values) / len(values),
}


@dataclass
class Events:
    """What the tests ingest into the fake OpenMeter, kept to compute the truth independently."""

    fake: Any
    rows: list[tuple[str, str, datetime, float]] = field(default_factory=list)

    def add(self, meter: Meter, subject: str, when: datetime, value: float) -> None:
        self.fake.ingest(meter=meter.openmeter_slug, subject=subject, time=when, value=value)
        self.rows.append((meter.openmeter_slug, subject, when, value))

    def truth(
        self, meter: Meter, subject: str | set[str], start: datetime, end: datetime
    ) -> Decimal:
        """OpenMeter's aggregate of `subject` (or of these subjects together) over [start, end),
        computed here."""
        wanted = {subject} if isinstance(subject, str) else subject
        values = [
            v
            for slug, s, when, v in sorted(self.rows, key=lambda r: r[2])
            if slug == meter.openmeter_slug and s in wanted and start <= when < end
        ]
        if not values:
            return Decimal(0)
        return Decimal(str(KINDS[meter.openmeter_aggregation](values)))


def make_meter(fake_openmeter: Any, slug: str, aggregation: str) -> Meter:
    fake_openmeter.add_meter(slug, aggregation=aggregation)
    meter = Meter.objects.create(
        name=slug.replace("_", " ").title(),
        openmeter_slug=slug,
        openmeter_aggregation=aggregation,
    )
    assert stripe_sync.sync_object(meter), meter.sync_error
    return meter


deliver = functools.partial(deliver_newest, secret=SECRET)


@pytest.fixture
def at(fake_stripe, settings):
    """Moves the app's clock and the fake Stripe's together: `at(moment)` is a context manager."""
    settings.STRIPE_WEBHOOK_SECRET = SECRET
    settings.STRIPE_MAX_REQUESTS_PER_SECOND = 1000
    current = {"now": datetime.now(UTC)}
    fake_stripe.clock = lambda: current["now"].timestamp()

    def move(moment: datetime) -> Any:
        current["now"] = moment
        return clock.frozen(moment)

    return move


@pytest.fixture
def start_of_period() -> datetime:
    """Midnight UTC four days ago: the customers' monthly periods began then."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=4)


@pytest.fixture
def billing(fake_stripe, fake_openmeter, at, start_of_period):
    """A UNIQUE_COUNT and a MAX meter, monthly prices, two customers subscribed since the start."""
    users = make_meter(fake_openmeter, "active_users", "UNIQUE_COUNT")
    seats = make_meter(fake_openmeter, "peak_seats", "MAX")
    prices = []
    for meter, amount in ((users, "500"), (seats, "1000")):
        price = PriceMapping.objects.create(
            meter=meter, product_name=meter.name, unit_amount_decimal=Decimal(amount)
        )
        assert stripe_sync.sync_object(price), price.sync_error
        prices.append(price)
    customers = synced_customers(["acme", "globex"])
    subs = []
    with at(start_of_period + timedelta(hours=1)):
        for customer in customers:
            sub = Subscription.objects.create(customer=customer, bill_from=start_of_period)
            sub.prices.set(prices)
            assert stripe_sync.sync_object(sub), sub.sync_error
            subs.append(sub)
    return users, seats, customers, subs


def stripe_steps(fake_stripe: Any, meter: Meter, customer: Customer) -> dict[datetime, Decimal]:
    """The value Stripe keeps per window start (UTC) for the customer."""
    return {
        datetime.fromtimestamp(when, UTC): Decimal(value)
        for (cid, when), value in fake_stripe.billed_windows(meter.stripe_meter_id).items()
        if cid == customer.stripe_customer_id
    }


def period_value(fake_stripe: Any, meter: Meter, customer: Customer, start: datetime) -> Decimal:
    """What Stripe bills for the period from `start`: its latest window's value."""
    kept = {w: v for w, v in stripe_steps(fake_stripe, meter, customer).items() if w >= start}
    return kept[max(kept)] if kept else Decimal(0)


def feed_days(events: Events, users: Meter, seats: Meter, start: datetime) -> None:
    """Four days: the same users come back every day, peak seats move up and down."""
    for day in range(4):
        base = start + timedelta(days=day, hours=9)
        for hour, user in enumerate([1, 2, 3, 2, 1]):
            events.add(users, "acme", base + timedelta(hours=hour, minutes=5), user)
        events.add(users, "globex", base + timedelta(minutes=20), 7)
        events.add(seats, "acme", base + timedelta(minutes=30), [5, 12, 8, 9][day])
        events.add(seats, "globex", base + timedelta(hours=2), [3, 3, 4, 2][day])


def test_unique_count_and_max_bill_the_period_aggregate_through_late_events_and_reruns(
    client,
    fake_stripe,
    fake_openmeter,
    at,
    start_of_period,
    billing,
    django_capture_on_commit_callbacks,
):
    users, seats, customers, subs = billing
    events = Events(fake_openmeter)
    feed_days(events, users, seats, start_of_period)
    now = start_of_period + timedelta(days=3, hours=22, minutes=30)

    with at(now):
        run = reporting.report_usage(trigger=Trigger.SCHEDULE, now=now)
    assert run.status == "succeeded", run.error
    end = now.replace(minute=0)
    for meter in (users, seats):
        for customer in customers:
            expected = events.truth(meter, customer.openmeter_subject, start_of_period, end)
            assert period_value(fake_stripe, meter, customer, start_of_period) == expected
    # acme: users 1, 2 and 3 on four days are 3 monthly active users, not 3 x 4 x ...
    assert period_value(fake_stripe, users, customers[0], start_of_period) == 3
    assert period_value(fake_stripe, seats, customers[0], start_of_period) == 12
    # Only windows where the period's value changed were sent (not one per hour).
    sent = ReportLog.objects.filter(meter=users, customer=customers[0], status="sent")
    assert sent.count() < 10
    assert {log.period_start for log in sent} == {start_of_period}

    # An unchanged re-run sends nothing.
    posts = fake_stripe.count("POST", EVENTS)
    with at(now + timedelta(minutes=10)):
        again = reporting.report_usage(trigger=Trigger.SCHEDULE, now=now + timedelta(minutes=10))
    assert again.status == "succeeded" and again.events_sent == 0
    assert fake_stripe.count("POST", EVENTS) == posts

    # Late events: a new acme user 30 hours ago, a new peak for globex 10 hours ago, a user
    # globex already had (no change), and an acme seat count below its peak (no change).
    events.add(users, "acme", end - timedelta(hours=30, minutes=-5), 4)
    events.add(seats, "globex", end - timedelta(hours=10, minutes=-1), 6)
    events.add(users, "globex", end - timedelta(hours=20), 7)
    events.add(seats, "acme", end - timedelta(hours=5), 2)
    later = now + timedelta(minutes=20)
    with at(later):
        late = reporting.report_usage(trigger=Trigger.SCHEDULE, now=later)
    assert late.status == "succeeded", late.error
    assert period_value(fake_stripe, users, customers[0], start_of_period) == 4
    assert period_value(fake_stripe, seats, customers[1], start_of_period) == 6
    # The late user's window and every later one of the period hold the value to date.
    acme_windows = stripe_steps(fake_stripe, users, customers[0])
    landed = end - timedelta(hours=30)
    assert acme_windows[landed] == 4
    assert all(v == 4 for when, v in acme_windows.items() if when >= landed)
    posts = fake_stripe.count("POST", EVENTS)
    with at(later + timedelta(minutes=5)):
        rerun = reporting.report_usage(trigger=Trigger.SCHEDULE, now=later + timedelta(minutes=5))
    assert rerun.events_sent == 0 and fake_stripe.count("POST", EVENTS) == posts

    # The period ends: the close run reports it whole, and the final invoice bills OpenMeter's
    # aggregate over the period for every customer and meter.
    fake_stripe.invoice_grace_seconds = 0
    close_at = later + timedelta(minutes=10)
    totals = {}
    with at(close_at):
        for sub in subs:
            fake_stripe.advance_subscription(sub.stripe_subscription_id)
            deliver(client, fake_stripe, "invoice.created", django_capture_on_commit_callbacks)
        finals = fake_stripe.finalize_due_invoices()
    assert len(finals) == 2
    closed = BillingPeriod.objects.filter(period_start=start_of_period)
    assert all(ReportRun.objects.get(pk=p.close_run_id).status == "succeeded" for p in closed)
    for final in finals:
        customer = Customer.objects.get(stripe_customer_id=final["customer"])
        for line in final["lines"]["data"]:
            price_id = line["pricing"]["price_details"]["price"]
            meter = PriceMapping.objects.get(stripe_price_id=price_id).meter
            totals[(customer.openmeter_subject, meter.openmeter_slug)] = Decimal(
                str(line["quantity_decimal"])
            )
    for meter in (users, seats):
        for customer in customers:
            expected = events.truth(meter, customer.openmeter_subject, start_of_period, end)
            assert totals[(customer.openmeter_subject, meter.openmeter_slug)] == expected
    assert totals == {
        ("acme", "active_users"): 4,
        ("globex", "active_users"): 1,
        ("acme", "peak_seats"): 12,
        ("globex", "peak_seats"): 6,
    }
    assert PeriodStatus.OPEN not in {p.status for p in closed}


def test_a_new_period_mid_month_counts_from_its_start_and_the_history_says_which(
    fake_stripe, fake_openmeter, at, start_of_period, billing, admin_client
):
    users, _, customers, subs = billing
    acme = customers[0]
    events = Events(fake_openmeter)
    for day in range(3):
        for user in (1, 2):
            events.add(users, "acme", start_of_period + timedelta(days=day, hours=8), user)
    # An upgrade at 10:23 on the third day starts a new period (a new anchor); the old period's
    # row keeps its end, as when Stripe's update has not been seen for it.
    upgrade = start_of_period + timedelta(days=2, hours=10, minutes=23)
    BillingPeriod.objects.create(
        subscription=subs[0], period_start=upgrade, period_end=upgrade + timedelta(days=30)
    )
    first_window = upgrade.replace(minute=0) + timedelta(hours=1)  # 11:00: the new period's first
    events.add(users, "acme", upgrade + timedelta(minutes=10), 1)  # 10:33: the old period's window
    events.add(users, "acme", first_window + timedelta(hours=2), 5)
    events.add(users, "acme", first_window + timedelta(hours=20), 1)
    now = start_of_period + timedelta(days=3, hours=12, minutes=30)
    with at(now):
        run = reporting.report_usage(trigger=Trigger.SCHEDULE, now=now, customers=[acme])
    assert run.status == "succeeded", run.error
    end = now.replace(minute=0)

    kept = stripe_steps(fake_stripe, users, acme)
    old = {w: v for w, v in kept.items() if w < first_window}
    new = {w: v for w, v in kept.items() if w >= first_window}
    assert old[max(old)] == events.truth(users, "acme", start_of_period, first_window) == 2
    assert new[max(new)] == events.truth(users, "acme", first_window, end) == 2  # users 5 and 1
    logs = ReportLog.objects.filter(meter=users, customer=acme, status="sent")
    assert {(log.window_start >= first_window, log.period_start) for log in logs} == {
        (False, start_of_period),
        (True, first_window),
    }
    page = admin_client.get(f"/admin/billing/reportlog/?meter__id__exact={users.pk}")
    assert f"period from {utc_minute(first_window)}" in page.content.decode()
    assert f"period from {utc_minute(start_of_period)}" in page.content.decode()
    # The charts do not add days up: each day shows the highest value to date sent that day.
    meter_page = admin_client.get(f"/admin/billing/meter/{users.pk}/change/").content.decode()
    assert "active_users · latest 2" in meter_page and "value to date per UTC day" in meter_page
    response = admin_client.get("/admin/billing/reportlog/export.csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert {r["billing_period_from_utc"] for r in rows if r["meter"] == "active_users"} == {
        utc_iso(start_of_period),
        utc_iso(first_window),
    }


def test_reconciliation_compares_what_stripe_holds_with_what_was_sent(
    fake_stripe, fake_openmeter, at, start_of_period, billing, settings
):
    users, seats, customers, _ = billing
    settings.RECONCILE_SETTLE_MINUTES = 0
    events = Events(fake_openmeter)
    feed_days(events, users, seats, start_of_period)
    now = start_of_period + timedelta(days=3, hours=22, minutes=30)
    with at(now):
        reporting.report_usage(trigger=Trigger.SCHEDULE, now=now)
    with at(now + timedelta(minutes=20)):
        out = io.StringIO()
        call_command("reconcile", stdout=out)
        check = Reconciliation.objects.get()
        assert (check.drift, check.unsent) == (0, 0), out.getvalue()
        assert check.matched == check.windows_compared > 0
        held = ReportedWindow.objects.filter(meter=seats, customer=customers[1]).latest(
            "window_start"
        )
        write_behind_our_back(fake_stripe, seats, customers[1], held.window_start, "99")
        with pytest.raises(SystemExit):
            call_command("reconcile", stdout=io.StringIO())
    latest = Reconciliation.objects.order_by("-pk").first()
    assert latest is not None and latest.drift == 1 and latest.unsent == 0
    item = latest.items.get()
    assert (item.stripe_value, item.sent_value) == (Decimal(99), held.value)


def test_late_usage_after_the_final_invoice_is_one_correction_of_the_period_value(
    client,
    fake_stripe,
    fake_openmeter,
    at,
    start_of_period,
    billing,
    django_capture_on_commit_callbacks,
):
    users, seats, customers, subs = billing
    events = Events(fake_openmeter)
    feed_days(events, users, seats, start_of_period)
    close_at = start_of_period + timedelta(days=3, hours=22, minutes=30)
    fake_stripe.invoice_grace_seconds = 0
    with at(close_at):
        fake_stripe.advance_subscription(subs[0].stripe_subscription_id)
        deliver(client, fake_stripe, "invoice.created", django_capture_on_commit_callbacks)
        fake_stripe.finalize_due_invoices()
        deliver(client, fake_stripe, "invoice.finalized", django_capture_on_commit_callbacks)
    # Two new users late in the closed period, and a user it already counted.
    end = close_at.replace(minute=0)
    for user in (8, 9, 1):
        events.add(users, "acme", end - timedelta(hours=40), user)
    posts = fake_stripe.count("POST", EVENTS)
    later = close_at + timedelta(minutes=30)
    with at(later):
        reporting.report_usage(trigger=Trigger.SCHEDULE, now=later, customers=customers[:1])
    assert fake_stripe.count("POST", EVENTS) == posts  # the period is closed: no meter event
    correction = Correction.objects.get(meter=users)
    assert (correction.quantity_before, correction.quantity_after) == (Decimal(3), Decimal(5))
    assert correction.amount == Decimal(1000)  # 2 users at 500 cents
    assert not Correction.objects.filter(meter=seats).exists()


def holds_as_of(steps: dict[datetime, Decimal], start: datetime, window: datetime) -> Decimal:
    """What Stripe bills for the period from `start` if it ended after `window`."""
    kept = [w for w in steps if start <= w <= window]
    return steps[max(kept)] if kept else Decimal(0)


def close_enough(a: Decimal, b: Decimal) -> bool:
    return abs(a - b) <= Decimal("1e-9") * max(1, abs(b))  # AVG: floating point in OpenMeter


@pytest.mark.parametrize("aggregation", sorted(KINDS))
def test_every_kind_with_several_subjects_late_events_and_a_re_report(
    fake_stripe, fake_openmeter, at, start_of_period, aggregation
):
    """A customer with two subjects (a user seen under both counts once), events over three days,
    late events, lookback runs, then the whole period re-reported: every window's value in
    Stripe is OpenMeter's aggregate from the period start to the window's end."""
    meter = make_meter(fake_openmeter, "usage_kind", aggregation)
    price = PriceMapping.objects.create(
        meter=meter, product_name="P", unit_amount_decimal=Decimal(1)
    )
    assert stripe_sync.sync_object(price), price.sync_error
    acme, globex = synced_customers(["acme", "globex"])
    # Its two subjects are read together through its OpenMeter customer.
    linked = fake_openmeter.add_customer(name="Acme", key="acme", subject_keys=["acme", "acme-bot"])
    Customer.objects.filter(pk=acme.pk).update(openmeter_customer_id=linked["id"])
    acme.refresh_from_db()
    acme.subjects.create(subject="acme-bot")
    with at(start_of_period + timedelta(hours=1)):
        for customer in (acme, globex):
            sub = Subscription.objects.create(customer=customer, bill_from=start_of_period)
            sub.prices.set([price])
            assert stripe_sync.sync_object(sub), sub.sync_error
    rng = random.Random(aggregation)
    events = Events(fake_openmeter)
    subjects = ["acme", "acme-bot", "globex"]
    for n in range(150):
        when = start_of_period + timedelta(minutes=n * 29 + rng.randrange(20))
        events.add(meter, rng.choice(subjects), when, rng.randrange(1, 9))
    now = start_of_period + timedelta(days=3, hours=1, minutes=30)
    end = now.replace(minute=0)
    owners = {acme: {"acme", "acme-bot"}, globex: {"globex"}}

    with at(now):
        assert reporting.report_usage(trigger=Trigger.SCHEDULE, now=now).status == "succeeded"
        for n in range(6):  # late: inside the lookback
            when = end - timedelta(hours=rng.randrange(1, 40), minutes=rng.randrange(1, 59))
            events.add(meter, subjects[n % 3], when, rng.randrange(1, 12))
        assert reporting.report_usage(trigger=Trigger.SCHEDULE, now=now).status == "succeeded"
        for customer, keys in owners.items():
            billed_now = holds_as_of(
                stripe_steps(fake_stripe, meter, customer), start_of_period, end
            )
            assert close_enough(billed_now, events.truth(meter, keys, start_of_period, end))

        whole = reporting.report_usage(
            trigger=Trigger.COMMAND, start=start_of_period, end=end, now=now, reason="check"
        )
        assert whole.status == "succeeded", whole.error
        for customer, keys in owners.items():
            steps = stripe_steps(fake_stripe, meter, customer)
            for hour in range(int((end - start_of_period) / timedelta(hours=1))):
                window = start_of_period + timedelta(hours=hour)
                expected = events.truth(meter, keys, start_of_period, window + timedelta(hours=1))
                assert close_enough(holds_as_of(steps, start_of_period, window), expected), window
        posts = fake_stripe.count("POST", EVENTS)
        again = reporting.report_usage(
            trigger=Trigger.COMMAND, start=start_of_period, end=end, now=now, reason="again"
        )
        assert again.events_sent == 0 and fake_stripe.count("POST", EVENTS) == posts


def test_a_customer_whose_subjects_cannot_be_read_together_is_named_and_the_others_billed(
    fake_stripe, fake_openmeter, at, start_of_period, billing
):
    users, seats, customers, _ = billing
    acme, globex = customers
    acme.subjects.create(subject="acme-bot")  # no OpenMeter customer to read both by
    events = Events(fake_openmeter)
    feed_days(events, users, seats, start_of_period)
    events.add(seats, "acme-bot", start_of_period + timedelta(days=2, hours=3), 30)
    now = start_of_period + timedelta(days=3, hours=22, minutes=30)
    with at(now):
        run = reporting.report_usage(trigger=Trigger.SCHEDULE, now=now)
    assert run.status == "partial"
    assert "Customer 'acme' skipped on meter 'active_users': its 2 subjects' UNIQUE_COUNT" in (
        run.error
    )
    assert not ReportLog.objects.filter(meter=users, customer=acme).exists()
    assert period_value(fake_stripe, users, globex, start_of_period) == 1
    # A maximum over both subjects is the larger of theirs: read subject by subject.
    assert period_value(fake_stripe, seats, acme, start_of_period) == 30


def test_a_re_report_preview_shows_the_change_of_the_period_value_in_money(
    fake_stripe, fake_openmeter, at, start_of_period, billing, admin_client
):
    users, seats, customers, _ = billing
    acme = customers[0]
    events = Events(fake_openmeter)
    feed_days(events, users, seats, start_of_period)
    now = start_of_period + timedelta(days=3, hours=22, minutes=30)
    end = now.replace(minute=0)
    with at(now):
        reporting.report_usage(trigger=Trigger.SCHEDULE, now=now)
        events.add(users, "acme", end - timedelta(hours=30, minutes=-5), 4)  # a new user, late
        shown = preview(
            selection=select_meters(meters=[users]),
            start=end - timedelta(hours=40),
            end=end,
            requested_by=None,
            reason="late users",
        )
    (row,) = shown.rows
    assert row.customer == acme and (row.old_total, row.new_total) == (Decimal(3), Decimal(4))
    assert row.value_change.text(signed=True) == "+5.00 USD"  # one more user at 500 cents
    first = row.changes[0]
    assert first.window_start == end - timedelta(hours=30)
    assert (first.old, first.before, first.new, first.delta) == (None, 3, 4, 1)
    assert all(change.delta == 1 for change in row.changes)
    with at(now):  # the admin's page of the same preview
        page = admin_client.post(
            "/admin/billing/meter/",
            {
                "action": "rereport_usage",
                "_selected_action": [str(users.pk)],
                "step": "preview",
                "preset": "custom",
                "start": (end - timedelta(hours=40)).strftime("%Y-%m-%dT%H:%M"),
                "end": end.strftime("%Y-%m-%dT%H:%M"),
                "reason": "late users",
            },
        ).content.decode()
    assert "Stripe holds” is the period's value as of that window" in page
    assert '<td class="num mb-old">3</td><td class="num mb-new">4</td>' in page


def test_a_new_billing_cycle_anchor_closes_the_old_period_and_counts_the_new_one_from_its_start(
    client,
    fake_stripe,
    fake_openmeter,
    at,
    start_of_period,
    billing,
    django_capture_on_commit_callbacks,
):
    """An upgrade resets the anchor at 10:23: Stripe invoices the old period up to then (the
    window of 10:00 still belongs to it) and starts a new one; Meterbridge closes the old period
    and counts the new one's users from its first whole window, 11:00."""
    users, _, customers, subs = billing
    acme, sub = customers[0], subs[0]
    events = Events(fake_openmeter)
    for day in range(3):
        for user in (1, 2):
            events.add(users, "acme", start_of_period + timedelta(days=day, hours=8), user)
    change = start_of_period + timedelta(days=2, hours=10, minutes=23)
    first_window = change.replace(minute=0) + timedelta(hours=1)
    with at(change - timedelta(minutes=13)):
        reporting.report_usage(trigger=Trigger.SCHEDULE, customers=[acme])
    with at(change):
        stripe = StripeClient(STRIPE_KEY, base_addresses={"api": fake_stripe.url})
        stripe.v1.subscriptions.update(
            sub.stripe_subscription_id,
            {"billing_cycle_anchor": "now", "proration_behavior": "none"},
        )
        for kind in ("customer.subscription.updated", "invoice.created"):
            deliver(client, fake_stripe, kind, django_capture_on_commit_callbacks)
    old = BillingPeriod.objects.get(subscription=sub, period_start=start_of_period)
    new = BillingPeriod.objects.get(subscription=sub, period_start=change)
    assert old.period_end == change and old.status == PeriodStatus.INVOICING
    assert new.status == PeriodStatus.OPEN

    events.add(users, "acme", change + timedelta(minutes=17), 3)  # 10:40: the old period's window
    events.add(users, "acme", first_window + timedelta(hours=2, minutes=5), 5)
    events.add(users, "acme", first_window + timedelta(hours=20), 1)
    with at(first_window + timedelta(minutes=30)):  # the window of 10:00 is closed now
        reporting.report_usage(trigger=Trigger.SCHEDULE, customers=[acme])
    with at(change + timedelta(hours=2)):
        (final,) = fake_stripe.finalize_due_invoices()
        deliver(client, fake_stripe, "invoice.finalized", django_capture_on_commit_callbacks)
    billed = {
        PriceMapping.objects.get(stripe_price_id=line["pricing"]["price_details"]["price"]).meter: (
            Decimal(str(line["quantity_decimal"]))
        )
        for line in final["lines"]["data"]
    }
    assert billed[users] == events.truth(users, "acme", start_of_period, first_window) == 3

    later = first_window + timedelta(days=1, hours=2, minutes=30)
    with at(later):
        run = reporting.report_usage(trigger=Trigger.SCHEDULE, customers=[acme])
    assert run.status == "succeeded", run.error
    end = later.replace(minute=0)
    assert period_value(fake_stripe, users, acme, first_window) == 2  # users 5 and 1
    assert events.truth(users, "acme", first_window, end) == 2
    logs = ReportLog.objects.filter(meter=users, customer=acme, status="sent")
    assert {log.period_start for log in logs if log.window_start >= first_window} == {first_window}
    assert {log.period_start for log in logs if log.window_start < first_window} == {
        start_of_period
    }
