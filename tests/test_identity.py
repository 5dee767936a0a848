"""A customer's identity is fixed once billed, and linking a Stripe customer never overwrites it
blindly: through the admin, against the fake Stripe and OpenMeter.

The probe this guards against: 10 units reported to cus_A; the customer relinked to cus_B; 5
late units in the same window. The run then sent the window's 15 to cus_B while cus_A kept its
10: Stripe billed 25 for 15 units of usage.
"""

import copy
import html
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from billing import reporting
from billing.integrations import stripe_sync
from billing.integrations.stripe_client import get_client
from billing.models import Customer, LogStatus, Meter, ReportLog, SyncStatus, Trigger
from tests.helpers import Usage, billed, hours_ago, synced_customers, synced_meter

pytestmark = pytest.mark.django_db(transaction=True)

ADD = "/admin/billing/customer/add/"
LOCKED = "its Stripe customer and OpenMeter subject cannot change"


@pytest.fixture
def staff(client: Client) -> Client:
    user = get_user_model().objects.create_superuser("finance", "f@example.com", "pw-12345-xyz")
    client.force_login(user)
    return client


def change_url(customer: Customer) -> str:
    return f"/admin/billing/customer/{customer.pk}/change/"


def page(response: Any) -> str:
    return html.unescape(response.content.decode())


def form_data(customer: Customer, **changes: str) -> dict[str, str]:
    data = {
        "name": customer.name,
        "email": customer.email,
        "openmeter_subject": customer.openmeter_subject,
        "stripe_customer_id": customer.stripe_customer_id,
        "active": "on",
    }
    data.update(changes)
    return data


def report(now: Any) -> None:
    run = reporting.report_usage(
        now=now, trigger=Trigger.COMMAND, start=hours_ago(now, 4), end=hours_ago(now, 0)
    )
    assert run.events_failed == 0, run.error


def stripe_customer(**params: Any) -> str:
    return get_client().v1.customers.create(params).id


@pytest.fixture
def billed_customer(fake_stripe, fake_openmeter, now) -> tuple[Meter, Customer, Usage, str]:
    """acme, 10 units reported under its Stripe customer; and another Stripe customer, cus_B."""
    meter = synced_meter(fake_openmeter)
    (acme,) = synced_customers(["acme"])
    usage = Usage(fake_openmeter)
    usage.add(meter, "acme", hours_ago(now, 2) + timedelta(minutes=5), 10)
    report(now)
    other = stripe_customer(name="Someone else", email="billing@else.test")
    return meter, acme, usage, other


def assert_billed_only_the_truth(fake_stripe, meter, acme, other, now) -> None:
    """15 units measured, 15 billed, all to acme's own Stripe customer, nothing to `other`."""
    windows = billed(fake_stripe, meter)
    assert windows == {(acme.stripe_customer_id, int(hours_ago(now, 2).timestamp())): Decimal(15)}
    assert not any(e["payload"]["stripe_customer_id"] == other for e in fake_stripe.meter_events)


def test_relinking_a_billed_customer_is_refused_and_nothing_is_billed_twice(
    staff, fake_stripe, billed_customer, now
):
    meter, acme, usage, other = billed_customer
    before = copy.deepcopy(fake_stripe.objects["customer"][other])
    # Both identity fields are read-only once usage was reported.
    shown = staff.get(change_url(acme)).content.decode()
    assert 'name="stripe_customer_id"' not in shown and 'name="openmeter_subject"' not in shown

    # A page opened before the first report still posts the field: refused, with what to do.
    response = staff.post(change_url(acme), form_data(acme, stripe_customer_id=other))
    assert response.status_code == 200
    text = page(response)
    assert (
        f"This customer has usage reported to Stripe under {acme.stripe_customer_id}; its Stripe "
        "customer and OpenMeter subject cannot change. Create a new customer for the new id and "
        "deactivate this one." in text
    )
    old_id = acme.stripe_customer_id
    acme.refresh_from_db()
    assert acme.stripe_customer_id == old_id
    assert fake_stripe.objects["customer"][other] == before

    # Late usage in the same window: the window's new value replaces acme's, billed once.
    usage.add(meter, "acme", hours_ago(now, 2) + timedelta(minutes=40), 5)
    report(now)
    assert_billed_only_the_truth(fake_stripe, meter, acme, other, now)


def test_changing_the_subject_of_a_billed_customer_is_refused(
    staff, fake_stripe, billed_customer, now
):
    _meter, acme, _usage, _other = billed_customer
    response = staff.post(change_url(acme), form_data(acme, openmeter_subject="acme-2"))
    assert LOCKED in page(response)
    acme.refresh_from_db()
    assert acme.openmeter_subject == "acme"
    remote = fake_stripe.objects["customer"][acme.stripe_customer_id]
    assert remote["metadata"] == {"openmeter_subject": "acme"}


def test_a_failed_sync_does_not_unlock_the_stripe_id(staff, fake_stripe, billed_customer, now):
    meter, acme, usage, other = billed_customer
    fake_stripe.down = True
    assert not stripe_sync.sync_object(acme)
    fake_stripe.down = False
    acme.refresh_from_db()
    assert acme.sync_status == SyncStatus.FAILED

    shown = staff.get(change_url(acme)).content.decode()
    assert 'name="stripe_customer_id"' not in shown and 'name="openmeter_subject"' not in shown
    response = staff.post(change_url(acme), form_data(acme, stripe_customer_id=other))
    assert LOCKED in page(response)
    # Saved without touching the identity: allowed, and the sync recovers.
    response = staff.post(change_url(acme), form_data(acme, name="Acme Inc"), follow=True)
    acme.refresh_from_db()
    assert (acme.name, acme.sync_status) == ("Acme Inc", SyncStatus.SYNCED), acme.sync_error

    usage.add(meter, "acme", hours_ago(now, 2) + timedelta(minutes=40), 5)
    report(now)
    assert_billed_only_the_truth(fake_stripe, meter, acme, other, now)


def test_a_customer_with_only_a_ledger_row_is_locked_too(fake_stripe, billed_customer):
    _meter, acme, _usage, _other = billed_customer
    assert acme.reported_under() == acme.stripe_customer_id
    ReportLog.objects.filter(customer=acme).update(status=LogStatus.FAILED)
    assert acme.identity_locked()  # its ReportedWindow still says what Stripe holds
    fresh = Customer.objects.create(name="New", openmeter_subject="new")
    assert fresh.reported_under() is None and not fresh.identity_locked()


def test_report_log_keeps_the_stripe_customer_and_event_name(fake_stripe, billed_customer):
    meter, acme, _usage, _other = billed_customer
    log = ReportLog.objects.get(customer=acme)
    assert (log.status, log.stripe_customer_id, log.event_name) == (
        LogStatus.SENT,
        acme.stripe_customer_id,
        meter.event_name,
    )


def test_linking_a_stripe_customer_of_another_subject_is_refused(staff, fake_stripe):
    theirs = stripe_customer(name="Globex", metadata={"openmeter_subject": "globex"})
    before = copy.deepcopy(fake_stripe.objects["customer"][theirs])
    response = staff.post(
        ADD,
        {"name": "Acme", "openmeter_subject": "acme", "stripe_customer_id": theirs, "active": "on"},
    )
    assert (
        f"Stripe customer {theirs} belongs to OpenMeter subject 'globex' (its metadata says so), "
        "not 'acme'" in page(response)
    )
    assert not Customer.objects.exists()
    assert fake_stripe.objects["customer"][theirs] == before


def test_linking_an_id_another_customer_uses_is_refused(staff, fake_stripe):
    (globex,) = synced_customers(["globex"])
    response = staff.post(
        ADD,
        {
            "name": "Acme",
            "openmeter_subject": "acme",
            "stripe_customer_id": globex.stripe_customer_id,
            "active": "on",
        },
    )
    text = page(response)
    assert f"{globex.stripe_customer_id} is already linked to the customer Globex (globex)" in text
    assert Customer.objects.count() == 1


def test_linking_one_that_would_be_overwritten_asks_first(staff, fake_stripe):
    theirs = stripe_customer(name="Old", email="a@x.test")
    before = copy.deepcopy(fake_stripe.objects["customer"][theirs])
    data = {
        "name": "New",
        "email": "b@y.test",
        "openmeter_subject": "acme",
        "stripe_customer_id": theirs,
        "active": "on",
    }
    # The checkbox is not offered until there is something to confirm.
    assert 'type="checkbox" name="confirm_overwrite"' not in staff.get(ADD).content.decode()

    response = staff.post(ADD, data)
    text = page(response)
    assert (
        f"Stripe's customer {theirs} will be overwritten: name 'Old' → 'New', "
        "email 'a@x.test' → 'b@y.test', metadata openmeter_subject (none) → 'acme'" in text
    )
    assert 'type="checkbox" name="confirm_overwrite"' in text
    assert "Overwrite these in Stripe" in text
    assert not Customer.objects.exists()
    assert fake_stripe.objects["customer"][theirs] == before

    staff.post(ADD, {**data, "confirm_overwrite": "on"})
    acme = Customer.objects.get()
    assert (acme.stripe_customer_id, acme.sync_status) == (theirs, SyncStatus.SYNCED)
    remote = fake_stripe.objects["customer"][theirs]
    assert (remote["name"], remote["email"]) == ("New", "b@y.test")
    assert remote["metadata"] == {"openmeter_subject": "acme"}
    assert len(fake_stripe.objects["customer"]) == 1


def test_linking_an_identical_stripe_customer_needs_no_confirmation(staff, fake_stripe):
    theirs = stripe_customer(
        name="Acme", email="ap@acme.test", metadata={"openmeter_subject": "acme"}
    )
    response = staff.post(
        ADD,
        {
            "name": "Acme",
            "email": "ap@acme.test",
            "openmeter_subject": "acme",
            "stripe_customer_id": theirs,
            "active": "on",
        },
    )
    assert response.status_code == 302
    acme = Customer.objects.get()
    assert (acme.stripe_customer_id, acme.sync_status) == (theirs, SyncStatus.SYNCED)


def test_linking_a_nonexistent_id_says_so(staff, fake_stripe):
    data = {"name": "Acme", "openmeter_subject": "acme", "active": "on"}
    response = staff.post(ADD, {**data, "stripe_customer_id": "cus_nosuchcustomer"})
    assert "Stripe has no customer cus_nosuchcustomer." in page(response)
    assert not Customer.objects.exists()

    # A customer not billed yet whose sync failed may still fix its id: it is checked too.
    row = Customer.objects.create(
        name="Acme", openmeter_subject="acme", sync_status=SyncStatus.FAILED, sync_error="x"
    )
    response = staff.post(change_url(row), form_data(row, stripe_customer_id="cus_nosuchone"))
    assert "Stripe has no customer cus_nosuchone." in page(response)
    theirs = stripe_customer(name="Acme", metadata={"openmeter_subject": "acme"})
    staff.post(change_url(row), form_data(row, stripe_customer_id=theirs))
    row.refresh_from_db()
    assert (row.stripe_customer_id, row.sync_status) == (theirs, SyncStatus.SYNCED)


def test_stripe_unreachable_or_not_configured_links_nothing(staff, fake_stripe, settings):
    theirs = stripe_customer(name="Old")
    before = copy.deepcopy(fake_stripe.objects["customer"][theirs])
    data = {"name": "Acme", "openmeter_subject": "acme", "stripe_customer_id": theirs}
    fake_stripe.down = True
    response = staff.post(ADD, {**data, "active": "on"})
    assert f"Could not check {theirs} in Stripe, so nothing was saved" in page(response)
    fake_stripe.down = False
    settings.STRIPE_API_KEY = None
    response = staff.post(ADD, {**data, "active": "on"})
    text = page(response)
    assert f"Could not check {theirs} in Stripe" in text
    assert "Stripe is not configured" in text
    assert not Customer.objects.exists()
    assert fake_stripe.objects["customer"][theirs] == before


def test_first_sync_of_a_linked_customer_refuses_another_subjects(fake_stripe):
    """Defence in depth: a row linked without the form is checked before its first update."""
    theirs = stripe_customer(name="Globex", metadata={"openmeter_subject": "globex"})
    before = copy.deepcopy(fake_stripe.objects["customer"][theirs])
    acme = Customer.objects.create(name="Acme", openmeter_subject="acme", stripe_customer_id=theirs)
    outcome = stripe_sync.sync_object(acme)
    assert not outcome
    assert "belongs to OpenMeter subject 'globex'" in outcome.error
    assert fake_stripe.objects["customer"][theirs] == before
    assert acme.synced_at is None

    # Once synced (its own metadata written), later syncs update without asking again.
    mine = stripe_customer(name="Old", metadata={"openmeter_subject": "initech"})
    initech = Customer.objects.create(
        name="Initech", openmeter_subject="initech", stripe_customer_id=mine
    )
    assert stripe_sync.sync_object(initech)
    assert fake_stripe.objects["customer"][mine]["name"] == "Initech"
