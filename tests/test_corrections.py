"""Usage that arrives after a period's invoice is final is not sent (Stripe would bill it
nowhere): it becomes one proposed correction, with the quantity and the amount, that a person
with billing.approve_correction approves (booked once in Stripe) or rejects."""

from datetime import timedelta
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import call_command

from billing import reporting
from billing.closing.corrections import CorrectionRefused, decide
from billing.integrations import stripe_sync
from billing.models import (
    BillingPeriod,
    Correction,
    CorrectionStatus,
    PeriodStatus,
    PriceMapping,
    Subscription,
    Trigger,
)
from tests.helpers import Usage, hours_ago, synced_customers, synced_meter

pytestmark = pytest.mark.django_db
EVENTS = "/v1/billing/meter_events"


def run(*args: str) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    try:
        call_command(*args, stdout=out, stderr=err)
    except SystemExit as exc:
        return int(exc.code or 0), out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


@pytest.fixture
def closed(fake_stripe, fake_openmeter, frozen, settings):
    """Acme on 2.5 cents per call; a period of the last 8 hours whose invoice is final."""
    settings.STRIPE_MAX_REQUESTS_PER_SECOND = 1000
    meter = synced_meter(fake_openmeter)
    price = PriceMapping.objects.create(
        meter=meter, product_name="Calls", unit_amount_decimal=Decimal("2.5")
    )
    assert stripe_sync.sync_object(price), price.sync_error
    (acme,) = synced_customers(["acme"])
    sub = Subscription.objects.create(customer=acme)
    sub.prices.set([price])
    assert stripe_sync.sync_object(sub), sub.sync_error
    usage = Usage(fake_openmeter)
    for h in range(1, 9):
        usage.add(meter, "acme", hours_ago(frozen, h), 10)
    run = reporting.report_usage(trigger=Trigger.SCHEDULE, now=frozen)
    assert run.events_sent == 8
    BillingPeriod.objects.filter(subscription=sub).delete()  # the one Stripe reported on sync
    period = BillingPeriod.objects.create(
        subscription=sub,
        period_start=hours_ago(frozen, 8),
        period_end=hours_ago(frozen, 2),
        status=PeriodStatus.CLOSED,
        stripe_invoice_id="in_final",
        invoice_status="open",
    )
    return meter, acme, usage, period


def test_late_usage_in_a_closed_period_is_a_correction_not_a_meter_event(
    closed, fake_stripe, frozen
):
    meter, acme, usage, period = closed
    usage.add(meter, "acme", hours_ago(frozen, 5), 4)  # inside the closed period
    usage.add(meter, "acme", hours_ago(frozen, 1), 3)  # after it: billed as usual
    sent_before = fake_stripe.count("POST", EVENTS)

    run = reporting.report_usage(trigger=Trigger.SCHEDULE, now=frozen)

    assert fake_stripe.count("POST", EVENTS) == sent_before + 1  # only the open period's window
    assert run.events_sent == 1
    correction = Correction.objects.get()
    assert (correction.customer, correction.meter, correction.billing_period) == (
        acme,
        meter,
        period,
    )
    assert (correction.quantity_before, correction.quantity_after) == (Decimal(60), Decimal(64))
    assert correction.amount == Decimal(10) and correction.currency == "usd"  # 4 x 2.5 cents
    assert correction.status == CorrectionStatus.PROPOSED and correction.detected_by_run == run


def test_later_runs_keep_one_correction_up_to_date(closed, fake_stripe, frozen):
    meter, _, usage, _ = closed
    usage.add(meter, "acme", hours_ago(frozen, 5), 4)
    reporting.report_usage(trigger=Trigger.SCHEDULE, now=frozen)
    reporting.report_usage(trigger=Trigger.SCHEDULE, now=frozen)  # nothing new: same one
    usage.add(meter, "acme", hours_ago(frozen, 6), 2)
    start, end = hours_ago(frozen, 8), hours_ago(frozen, 0)
    call_command(
        "report_usage",
        "--from",
        start.isoformat(),
        "--to",
        end.isoformat(),
        stdout=StringIO(),
        stderr=StringIO(),
    )
    correction = Correction.objects.get()
    assert correction.quantity == Decimal(6) and correction.amount == Decimal(15)


def approver(username: str) -> Any:
    user = get_user_model().objects.create_user(username, password="pw-12345-xyz", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(codename__in=["approve_correction", "view_correction"])
    )
    return user


def test_a_rejection_needs_a_reason_and_is_not_proposed_again(closed, frozen):
    meter, _, usage, _ = closed
    usage.add(meter, "acme", hours_ago(frozen, 5), 4)
    reporting.report_usage(trigger=Trigger.SCHEDULE, now=frozen)
    correction = Correction.objects.get()
    with pytest.raises(CorrectionRefused, match="reason"):
        decide(correction=correction, user=approver("ann"), approve=False, reason=" ")
    decide(correction=correction, user=approver("bob"), approve=False, reason="Goodwill")
    reporting.report_usage(trigger=Trigger.SCHEDULE, now=frozen + timedelta(minutes=1))
    assert list(Correction.objects.values_list("status", flat=True)) == ["rejected"]


def test_the_requester_cannot_approve_their_own(closed, frozen):
    meter, _, usage, _ = closed
    usage.add(meter, "acme", hours_ago(frozen, 5), 4)
    reporting.report_usage(trigger=Trigger.SCHEDULE, now=frozen)
    ann = approver("ann")
    Correction.objects.update(requested_by=ann)
    with pytest.raises(CorrectionRefused, match="cannot approve"):
        decide(correction=Correction.objects.get(), user=ann, approve=True, reason="ok")
    assert Correction.objects.get().status == CorrectionStatus.PROPOSED


def test_without_the_permission_the_admin_refuses(client, closed, frozen):
    meter, _, usage, _ = closed
    usage.add(meter, "acme", hours_ago(frozen, 5), 4)
    reporting.report_usage(trigger=Trigger.SCHEDULE, now=frozen)
    viewer = get_user_model().objects.create_user("v", password="pw-12345-xyz", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename="view_correction"))
    client.force_login(viewer)
    correction = Correction.objects.get()
    assert client.get("/admin/billing/correction/").context["action_form"] is None  # none offered
    for action in ("approve", "reject"):
        response = client.post(
            "/admin/billing/correction/",
            {
                "action": action,
                "_selected_action": [str(correction.pk)],
                "confirm": "1",
                "reason": "x",
            },
        )
        assert response.status_code == 403
    assert Correction.objects.get().status == CorrectionStatus.PROPOSED


def test_a_reconciliation_proposes_the_correction_too(closed, fake_stripe, frozen, settings):
    from billing import reconcile

    settings.RECONCILE_SETTLE_MINUTES = 0
    meter, _, usage, period = closed
    usage.add(meter, "acme", hours_ago(frozen, 5), 4)
    check = reconcile.execute_reconciliation(
        reconcile.start_reconciliation(reconcile.ReconcileRequest(trigger=Trigger.COMMAND))
    )
    assert (check.unsent, check.drift) == (1, 0)
    correction = Correction.objects.get()
    assert correction.billing_period == period and correction.detected_by_run is None
    assert correction.quantity == Decimal(4) and correction.amount == Decimal(10)


def test_late_usage_older_than_stripe_accepts_is_a_correction_found_by_reconcile(
    closed, fake_stripe, frozen, settings
):
    """A window older than 35 days cannot be sent whatever its period's state: `report_usage`
    refuses it (pointing to `reconcile`), and a reconciliation over it proposes a correction in
    the period it falls in, here a long period that is still open."""
    settings.RECONCILE_SETTLE_MINUTES = 0
    meter, acme, usage, _ = closed
    long = BillingPeriod.objects.create(
        subscription=acme.subscriptions.get(),
        period_start=hours_ago(frozen, 60 * 24),
        period_end=hours_ago(frozen, 8),
        status=PeriodStatus.OPEN,
    )
    old = hours_ago(frozen, 38 * 24)
    usage.add(meter, "acme", old, 6)  # arrived 38 days late
    sent_before = fake_stripe.count("POST", EVENTS)
    span = (
        "--from",
        (old - timedelta(hours=2)).isoformat(),
        "--to",
        (old + timedelta(hours=3)).isoformat(),
    )

    code, out, err = run("report_usage", *span)
    assert code == 2 and "35 days" in err and "reconcile" in err

    code, out, _ = run("reconcile", *span)
    assert code == 0, out  # unsent, not drift
    assert fake_stripe.count("POST", EVENTS) == sent_before  # nothing sent
    correction = Correction.objects.get()
    assert correction.billing_period == long and correction.status == CorrectionStatus.PROPOSED
    assert correction.quantity == Decimal(6) and correction.amount == Decimal(15)


def test_the_customer_page_projects_the_invoice(admin_client, closed, fake_stripe, frozen):
    from billing.formatting import money
    from billing.integrations.stripe_client import get_client

    _, acme, _, _ = closed
    sub = acme.subscriptions.get()
    preview = get_client().v1.invoices.create_preview(
        {"customer": acme.stripe_customer_id, "subscription": sub.stripe_subscription_id}
    )
    page = admin_client.get(f"/admin/billing/customer/{acme.pk}/change/").content.decode()
    assert 'id="projected-invoice"' in page and "could not be read from Stripe" not in page
    shown = money(minor_units=Decimal(preview.amount_due), currency="usd")
    assert f'<strong data-field="amount-due">{shown}</strong>' in page


def test_a_period_off_the_hour_shows_its_split_window(admin_client, closed, frozen):
    _, _, _, period = closed
    BillingPeriod.objects.filter(pk=period.pk).update(
        period_start=period.period_start + timedelta(minutes=45)
    )
    page = admin_client.get("/admin/billing/billingperiod/").content.decode()
    assert "is billed in the previous period" in page
