"""Sync on save, through the admin as finance staff use it, against the fake Stripe."""

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.test import Client

from billing.integrations import stripe_sync
from billing.models import ArchivedPrice, Customer, Meter, PriceMapping, Subscription, SyncStatus

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff(client: Client) -> Client:
    user = get_user_model().objects.create_superuser("finance", "f@example.com", "pw-12345-xyz")
    client.force_login(user)
    return client


def add_meter(client: Client, fake_openmeter: Any, slug: str = "api_calls", **extra: Any) -> Any:
    fake_openmeter.add_meter(slug, aggregation=extra.pop("aggregation", "SUM"))
    data = {
        "name": "API calls",
        "openmeter_slug": slug,
        "event_name": "",
        "window": "hour",
        "active": "on",
    }
    data.update(extra)
    return client.post("/admin/billing/meter/add/", data, follow=True)


# The price form carries the inline of archived prices: its management form must be posted.
INLINE = {"archived_prices-TOTAL_FORMS": "0", "archived_prices-INITIAL_FORMS": "0"}


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_admin_meter_creates_stripe_meter_with_the_right_parameters(
    staff, fake_stripe, fake_openmeter
):
    response = add_meter(staff, fake_openmeter)
    assert response.status_code == 200
    meter = Meter.objects.get()
    assert meter.sync_status == SyncStatus.SYNCED, meter.sync_error
    assert meter.event_name == "api_calls"
    assert meter.openmeter_aggregation == "SUM"
    remote = fake_stripe.objects["billing.meter"][meter.stripe_meter_id]
    assert remote["display_name"] == "API calls"
    assert remote["event_name"] == "api_calls"
    assert remote["default_aggregation"]["formula"] == "sum"
    assert remote["event_time_window"] == "hour"
    assert remote["customer_mapping"] == {
        "event_payload_key": "stripe_customer_id",
        "type": "by_id",
    }
    assert remote["value_settings"] == {"event_payload_key": "value"}
    assert any("Synced to Stripe" in m for m in messages_of(response))


def test_saving_again_creates_no_duplicate_and_renames(staff, fake_stripe, fake_openmeter):
    add_meter(staff, fake_openmeter)
    meter = Meter.objects.get()
    url = f"/admin/billing/meter/{meter.pk}/change/"
    # event_name and window are read-only once synced: a posted change is ignored.
    staff.post(
        url,
        {
            "name": "API requests",
            "openmeter_slug": "api_calls",
            "event_name": "other",
            "window": "day",
            "active": "on",
        },
    )
    meter.refresh_from_db()
    assert len(fake_stripe.objects["billing.meter"]) == 1
    remote = fake_stripe.objects["billing.meter"][meter.stripe_meter_id]
    assert remote["display_name"] == "API requests"
    assert (remote["event_name"], remote["event_time_window"]) == ("api_calls", "hour")
    assert (meter.event_name, meter.window) == ("api_calls", "hour")
    page = staff.get(url).content.decode()
    assert 'name="event_name"' not in page and 'name="window"' not in page


def test_deactivating_and_reactivating_a_meter(staff, fake_stripe, fake_openmeter):
    add_meter(staff, fake_openmeter)
    meter = Meter.objects.get()
    url = f"/admin/billing/meter/{meter.pk}/change/"
    staff.post(url, {"name": "API calls", "openmeter_slug": "api_calls"})
    assert fake_stripe.objects["billing.meter"][meter.stripe_meter_id]["status"] == "inactive"
    staff.post(url, {"name": "API calls", "openmeter_slug": "api_calls", "active": "on"})
    assert fake_stripe.objects["billing.meter"][meter.stripe_meter_id]["status"] == "active"


def test_meter_form_refuses_unknown_and_bad_slugs(staff, fake_stripe, fake_openmeter):
    response = staff.post(
        "/admin/billing/meter/add/",
        {"name": "X", "openmeter_slug": "nope", "window": "hour", "active": "on"},
    )
    assert "OpenMeter has no meter with the slug &#x27;nope&#x27;" in response.content.decode()
    response = staff.post(
        "/admin/billing/meter/add/",
        {"name": "X", "openmeter_slug": "Bad Slug", "window": "hour", "active": "on"},
    )
    assert "lowercase letters and digits" in response.content.decode()
    assert not Meter.objects.exists()
    assert not fake_stripe.objects["billing.meter"]


@pytest.mark.parametrize(
    ("aggregation", "billed"), [("UNIQUE_COUNT", "unique count"), ("MAX", "maximum")]
)
def test_a_period_to_date_meter_gets_a_last_meter_and_says_what_it_bills(
    staff, fake_stripe, fake_openmeter, aggregation, billed
):
    add_meter(staff, fake_openmeter, slug="active_users", aggregation=aggregation)
    meter = Meter.objects.get()
    assert meter.sync_status == SyncStatus.SYNCED, meter.sync_error
    assert meter.openmeter_aggregation == aggregation and meter.period_to_date
    remote = fake_stripe.objects["billing.meter"][meter.stripe_meter_id]
    assert remote["default_aggregation"]["formula"] == "last"
    page = staff.get(f"/admin/billing/meter/{meter.pk}/change/").content.decode()
    assert f"The period&#x27;s {billed}, from the start of each customer&#x27;s billing" in page
    assert "Stripe meter formula: last" in page


def test_an_aggregation_that_needs_another_stripe_formula_is_refused(
    staff, fake_stripe, fake_openmeter
):
    add_meter(staff, fake_openmeter, slug="seats")
    meter = Meter.objects.get()
    fake_openmeter.add_meter("seats", aggregation="MAX")  # changed in OpenMeter since
    response = staff.post(
        f"/admin/billing/meter/{meter.pk}/change/",
        {"name": "Seats", "openmeter_slug": "seats", "active": "on"},
    )
    assert "bills with formula &#x27;sum&#x27;, which Stripe cannot change" in (
        response.content.decode()
    )
    meter.refresh_from_db()
    assert meter.openmeter_aggregation == "SUM" and meter.name == "API calls"
    remote = fake_stripe.objects["billing.meter"][meter.stripe_meter_id]
    assert remote["default_aggregation"]["formula"] == "sum"
    # A sync of a meter whose Stripe formula is not the one its aggregation needs is refused.
    Meter.objects.filter(pk=meter.pk).update(openmeter_aggregation="MAX")
    meter.refresh_from_db()
    assert not stripe_sync.sync_object(meter)
    assert "Stripe cannot change a meter's formula" in meter.sync_error


def test_a_meter_saved_while_openmeter_was_down_is_created_in_stripe_once_it_answers(
    fake_stripe, fake_openmeter, settings
):
    """Its aggregation decides the Stripe meter's formula, which Stripe cannot change."""
    meter = Meter.objects.create(name="Users", openmeter_slug="active_users")  # not read yet
    settings.OPENMETER_URL, settings.OPENMETER_MAX_RETRIES = "http://127.0.0.1:9", 0
    assert not stripe_sync.sync_object(meter)
    meter.refresh_from_db()
    assert "decides the Stripe meter's formula and could not be read" in meter.sync_error
    assert not fake_stripe.objects["billing.meter"]
    settings.OPENMETER_URL = fake_openmeter.url
    fake_openmeter.add_meter("active_users", aggregation="UNIQUE_COUNT")
    assert stripe_sync.sync_object(meter)
    meter.refresh_from_db()
    assert meter.openmeter_aggregation == "UNIQUE_COUNT"
    remote = fake_stripe.objects["billing.meter"][meter.stripe_meter_id]
    assert remote["default_aggregation"]["formula"] == "last"


def test_customer_created_or_linked(staff, fake_stripe):
    staff.post(
        "/admin/billing/customer/add/",
        {"name": "Acme", "email": "ap@acme.test", "openmeter_subject": "acme", "active": "on"},
    )
    acme = Customer.objects.get()
    assert acme.sync_status == SyncStatus.SYNCED, acme.sync_error
    remote = fake_stripe.objects["customer"][acme.stripe_customer_id]
    assert (remote["name"], remote["email"]) == ("Acme", "ap@acme.test")
    assert remote["metadata"] == {"openmeter_subject": "acme"}

    # Linking an existing Stripe customer updates it instead of creating another (after the
    # overwrite is confirmed: tests/test_identity.py).
    existing = stripe_sync.get_client().v1.customers.create({"name": "Old name"})
    staff.post(
        "/admin/billing/customer/add/",
        {
            "name": "Globex",
            "openmeter_subject": "globex",
            "stripe_customer_id": existing.id,
            "active": "on",
            "confirm_overwrite": "on",
        },
    )
    globex = Customer.objects.get(openmeter_subject="globex")
    assert globex.stripe_customer_id == existing.id
    assert fake_stripe.objects["customer"][existing.id]["name"] == "Globex"
    assert len(fake_stripe.objects["customer"]) == 2


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("stripe_customer_id", "acct_123", "starts with &#x27;cus_&#x27;"),
        ("email", "not-an-email", "Enter a valid email address"),
        ("openmeter_subject", "", "This field is required"),
    ],
)
def test_customer_form_validation(staff, fake_stripe, field, value, message):
    data = {"name": "Acme", "openmeter_subject": "acme", "active": "on", field: value}
    response = staff.post("/admin/billing/customer/add/", data)
    assert message in response.content.decode()
    assert not Customer.objects.exists() and not fake_stripe.objects["customer"]


def test_unique_subject_is_enforced(staff, fake_stripe):
    Customer.objects.create(name="Acme", openmeter_subject="acme")
    response = staff.post(
        "/admin/billing/customer/add/",
        {"name": "Again", "openmeter_subject": "acme", "active": "on"},
    )
    assert "Customer with this OpenMeter subject already exists" in response.content.decode()


def make_synced_setup(staff: Client, fake_openmeter: Any) -> tuple[Meter, Customer, PriceMapping]:
    add_meter(staff, fake_openmeter)
    meter = Meter.objects.get()
    staff.post(
        "/admin/billing/customer/add/",
        {"name": "Acme", "openmeter_subject": "acme", "active": "on"},
    )
    staff.post(
        "/admin/billing/pricemapping/add/",
        {
            "meter": meter.pk,
            "product_name": "API",
            "currency": "usd",
            "unit_amount_decimal": "0.5",
            "interval": "month",
            "active": "on",
            **INLINE,
        },
    )
    return meter, Customer.objects.get(), PriceMapping.objects.get()


def test_price_is_a_metered_price_on_the_meter(staff, fake_stripe, fake_openmeter):
    meter, _, price = make_synced_setup(staff, fake_openmeter)
    assert price.sync_status == SyncStatus.SYNCED, price.sync_error
    remote = fake_stripe.objects["price"][price.stripe_price_id]
    assert remote["recurring"]["usage_type"] == "metered"
    assert remote["recurring"]["meter"] == meter.stripe_meter_id
    assert remote["recurring"]["interval"] == "month"
    assert Decimal(remote["unit_amount_decimal"]) == Decimal("0.5")
    assert remote["currency"] == "usd"
    assert fake_stripe.objects["product"][price.stripe_product_id]["name"] == "API"


def test_changed_amount_creates_new_price_and_archives_old(staff, fake_stripe, fake_openmeter):
    _meter, customer, price = make_synced_setup(staff, fake_openmeter)
    staff.post("/admin/billing/subscription/add/", {"customer": customer.pk, "prices": [price.pk]})
    sub = Subscription.objects.get()
    old_id = price.stripe_price_id
    staff.post(
        f"/admin/billing/pricemapping/{price.pk}/change/",
        {
            "product_name": "API",
            "currency": "usd",
            "unit_amount_decimal": "0.75",
            "interval": "month",
            "active": "on",
            **INLINE,
        },
    )
    price.refresh_from_db()
    assert price.stripe_price_id != old_id
    assert fake_stripe.objects["price"][old_id]["active"] is False
    assert Decimal(
        fake_stripe.objects["price"][price.stripe_price_id]["unit_amount_decimal"]
    ) == Decimal("0.75")
    archived = ArchivedPrice.objects.get()
    assert (archived.stripe_price_id, archived.replaced_by) == (old_id, price.stripe_price_id)
    # Existing subscriptions keep the old price, as in Stripe, until moved.
    page = staff.get("/admin/billing/subscription/").content.decode()
    assert 'alt="True"' in page
    staff.post(
        "/admin/billing/subscription/",
        {"action": "move_to_current_prices", "_selected_action": [sub.pk]},
    )
    sub.refresh_from_db()
    remote_sub = fake_stripe.objects["subscription"][sub.stripe_subscription_id]
    assert [i["price"]["id"] for i in remote_sub["items"]["data"]] == [price.stripe_price_id]
    assert list(sub.stripe_items) == [price.stripe_price_id]


def test_subscription_created_with_metered_items_and_cancelled(staff, fake_stripe, fake_openmeter):
    _, customer, price = make_synced_setup(staff, fake_openmeter)
    staff.post("/admin/billing/subscription/add/", {"customer": customer.pk, "prices": [price.pk]})
    sub = Subscription.objects.get()
    assert sub.sync_status == SyncStatus.SYNCED, sub.sync_error
    remote = fake_stripe.objects["subscription"][sub.stripe_subscription_id]
    assert remote["customer"] == customer.stripe_customer_id
    items = remote["items"]["data"]
    assert [i["price"]["id"] for i in items] == [price.stripe_price_id]
    assert len(fake_stripe.objects["subscription"]) == 1
    staff.post(
        "/admin/billing/subscription/", {"action": "cancel_in_stripe", "_selected_action": [sub.pk]}
    )
    sub.refresh_from_db()
    assert sub.status == "canceled"
    assert fake_stripe.objects["subscription"][sub.stripe_subscription_id]["status"] == "canceled"


def test_stripe_failures_keep_the_row_and_sync_stripe_recovers(staff, fake_stripe, fake_openmeter):
    fake_stripe.fail_next(1000, status=500)
    response = add_meter(staff, fake_openmeter)
    meter = Meter.objects.get()
    assert meter.sync_status == SyncStatus.FAILED
    assert "500" in meter.sync_error
    assert any("Stripe did not take it" in m for m in messages_of(response))
    fake_stripe.reset_faults() if hasattr(fake_stripe, "reset_faults") else fake_stripe.fail_next(0)
    fake_stripe.down = True
    staff.post(
        "/admin/billing/customer/add/",
        {"name": "Acme", "openmeter_subject": "acme", "active": "on"},
    )
    customer = Customer.objects.get()
    assert customer.sync_status == SyncStatus.FAILED and customer.sync_error
    page = staff.get("/admin/billing/customer/?sync_status__exact=failed").content.decode()
    assert "Acme" in page
    fake_stripe.down = False

    call_command("sync_stripe")
    meter.refresh_from_db()
    customer.refresh_from_db()
    assert (meter.sync_status, customer.sync_status) == (SyncStatus.SYNCED, SyncStatus.SYNCED)
    assert len(fake_stripe.objects["billing.meter"]) == 1
    assert len(fake_stripe.objects["customer"]) == 1


def test_retried_create_reuses_the_stripe_object(fake_stripe):
    customer = Customer.objects.create(name="Acme", openmeter_subject="acme")
    assert stripe_sync.sync_object(customer)
    first = customer.stripe_customer_id
    assert first.startswith("cus_")
    # As if the answer was lost: forget the id and sync again; the idempotency key is the same.
    Customer.objects.filter(pk=customer.pk).update(stripe_customer_id="", sync_status="pending")
    call_command("sync_stripe")
    customer.refresh_from_db()
    assert customer.stripe_customer_id == first
    assert len(fake_stripe.objects["customer"]) == 1


def test_without_stripe_key_the_status_says_not_configured(staff, fake_stripe, settings):
    settings.STRIPE_API_KEY = None
    staff.post(
        "/admin/billing/customer/add/",
        {"name": "Acme", "openmeter_subject": "acme", "active": "on"},
    )
    customer = Customer.objects.get()
    assert customer.sync_status == SyncStatus.FAILED
    assert customer.sync_error == "Stripe is not configured: set STRIPE_API_KEY."


def test_sync_stripe_exit_code_and_output(fake_stripe, capsys):
    assert stripe_sync.sync_object(Customer.objects.create(name="Acme", openmeter_subject="acme"))
    fake_stripe.down = True
    Customer.objects.create(name="Globex", openmeter_subject="globex")
    with pytest.raises(SystemExit) as exited:
        call_command("sync_stripe")
    assert exited.value.code == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "Globex" in out and "0 synced, 1 failed, 1 in all." in out


def test_bill_usage_from_must_be_in_the_past(frozen):
    customer = Customer.objects.create(name="Acme", openmeter_subject="acme")
    sub = Subscription(customer=customer, bill_from=frozen + timedelta(hours=1))
    with pytest.raises(ValidationError) as error:
        sub.full_clean()
    assert error.value.message_dict == {"bill_from": ["Bill usage from a moment in the past."]}
    sub.bill_from = frozen - timedelta(days=3)
    sub.full_clean()
