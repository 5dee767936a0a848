"""The admin's home page is a finance dashboard: the last scheduled run, the next one, failed
syncs, windows that failed to send, unmapped usage (with an action that creates customers for
it), each number linked to its list, and changes valued in money."""

import re
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from billing import reporting
from billing.integrations import stripe_sync
from billing.models import Customer, PriceMapping, SyncStatus, Trigger
from billing.roles import OPERATOR, VIEWER
from tests.helpers import Usage, hours_ago, synced_customers, synced_meter

pytestmark = pytest.mark.django_db

EVENTS = "/v1/billing/meter_events"


def staff(username: str, group: str) -> Any:
    user = get_user_model().objects.create_user(username, password="pw-12345-xyz", is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    return user


def text(response: Any) -> str:
    body = re.sub(r"<(style|script).*?</\1>", "", response.content.decode(), flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body))


@pytest.fixture
def reported(fake_stripe, fake_openmeter, frozen):
    """A scheduled run: three customers on a price of 2.5 cents per call, one window refused by
    Stripe, and usage of a subject no customer has."""
    meter = synced_meter(fake_openmeter)
    price = PriceMapping.objects.create(
        meter=meter, product_name="API calls", unit_amount_decimal=Decimal("2.5")
    )
    assert stripe_sync.sync_object(price), price.sync_error
    customers = synced_customers(["acme", "globex", "initech"])
    usage = Usage(fake_openmeter)
    for c in customers:
        usage.add(meter, c.openmeter_subject, hours_ago(frozen, 2), 100)
    usage.add(meter, "trial-user", hours_ago(frozen, 2), 40)
    fake_stripe.fail_next(1, status=400, path_prefix=EVENTS)  # final: one window fails
    run = reporting.report_usage(trigger=Trigger.SCHEDULE, now=frozen)
    assert (run.events_sent, run.events_failed) == (2, 1)
    return run


def test_the_dashboard_shows_the_last_run_in_quantity_and_money(client, reported):
    client.force_login(staff("viewer", VIEWER))
    page = text(client.get("/admin/"))
    assert "Meterbridge" in page and "Dashboard" in page
    assert re.search(
        r"Last scheduled run: Partial , started .* 2 window\(s\) sent , 1 failed", page
    )
    # 200 calls sent at 2.5 cents each
    assert "+200 +5.00 USD" in page
    assert re.search(r"Windows that failed to send .* 1 ", page)
    assert "Next scheduled run:" in page


def test_each_number_links_to_its_list(client, reported):
    client.force_login(staff("viewer", VIEWER))
    html = client.get("/admin/").content.decode()
    assert f'href="/admin/billing/reportrun/{reported.pk}/change/"' in html
    assert "/admin/billing/reportlog/?status__exact=failed" in html
    for model in ("meter", "customer", "pricemapping", "subscription"):
        assert f"/admin/billing/{model}/?sync_status__exact=failed" in html
    listed = client.get("/admin/billing/reportlog/?status__exact=failed")
    assert listed.status_code == 200 and "1 report log" in text(listed)


def test_failed_syncs_are_counted(client, fake_stripe, fake_openmeter, settings):
    settings.STRIPE_API_KEY = None
    customer = Customer.objects.create(name="Down", openmeter_subject="down")
    assert not stripe_sync.sync_object(customer)
    client.force_login(staff("viewer", VIEWER))
    assert re.search(r"Customers whose sync to Stripe failed .* 1 ", text(client.get("/admin/")))


def test_unmapped_usage_is_listed_with_its_value(client, reported):
    client.force_login(staff("viewer", VIEWER))
    page = text(client.get("/admin/"))
    assert re.search(r"trial-user 40 Api Calls 1.00 USD", page), page
    # a viewer may not create customers: no checkbox, no button
    assert 'name="subject"' not in client.get("/admin/").content.decode()


def test_an_operator_creates_customers_for_chosen_subjects(client, reported, fake_stripe):
    user = staff("operator", OPERATOR)
    client.force_login(user)
    assert 'name="subject" value="trial-user"' in client.get("/admin/").content.decode()
    response = client.post("/admin/dashboard/create-customers/", {"subject": ["trial-user"]})
    assert response.status_code == 302
    customer = Customer.objects.get(openmeter_subject="trial-user")
    assert customer.sync_status == SyncStatus.SYNCED
    assert customer.stripe_customer_id in fake_stripe.objects["customer"]
    entry = LogEntry.objects.get(object_id=str(customer.pk))
    assert entry.user == user and "unmapped subject trial-user" in entry.get_change_message()
    # now mapped: no longer listed
    assert 'name="subject"' not in client.get("/admin/").content.decode()
    assert "None: every subject with usage belongs to a customer." in text(client.get("/admin/"))


def test_without_add_customer_creating_customers_is_refused(client, reported, fake_stripe):
    client.force_login(staff("viewer", VIEWER))
    before = fake_stripe.count("POST", "/v1/customers")
    response = client.post("/admin/dashboard/create-customers/", {"subject": ["trial-user"]})
    assert response.status_code == 403
    assert not Customer.objects.filter(openmeter_subject="trial-user").exists()
    assert fake_stripe.count("POST", "/v1/customers") == before


def test_an_existing_customer_is_not_created_twice(client, reported):
    client.force_login(staff("operator", OPERATOR))
    client.post("/admin/dashboard/create-customers/", {"subject": ["acme"]})
    assert Customer.objects.filter(openmeter_subject="acme").count() == 1
    messages = [str(m) for m in client.get("/admin/").context["messages"]]
    assert messages == ["acme: already has a customer."]


def test_the_run_page_values_the_change_in_money(client, reported):
    client.force_login(staff("viewer", VIEWER))
    page = text(client.get(f"/admin/billing/reportrun/{reported.pk}/change/"))
    assert re.search(r"Api Calls 2 \+200 \+5.00 USD", page), page
