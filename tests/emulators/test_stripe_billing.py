"""The Stripe emulator's billing cycle through stripe-python: periods that advance, the draft
invoice of each ended period and its finalization after the grace period, late usage, anchored
periods, the upcoming invoice preview, and the HTTP control that closes a period."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest
import stripe

from emulators.stripe import FakeStripe
from tests.emulators.billing_support import (
    DAY,
    DAY0,
    HOUR,
    Client,
    cents,
    client_for,
    daily_world,
    meter_and_price,
    send,
    types,
    windows_in,
)
from tests.emulators.support import Clock

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def fake(stripe_server: FakeStripe) -> FakeStripe:
    stripe_server.reset()
    return stripe_server


@pytest.fixture
def clock(fake: FakeStripe) -> Clock:
    c = Clock(DAY0)
    fake.clock = c
    return c


@pytest.fixture(scope="module")
def http_client() -> stripe.HTTPXClient:
    return stripe.HTTPXClient(allow_sync_methods=True)


@pytest.fixture
def client(fake: FakeStripe, http_client: stripe.HTTPXClient) -> Client:
    return client_for(fake, http_client)


def test_periods_advance_and_lines_bill_the_windows_of_the_period(
    fake: FakeStripe, clock: Clock, client: Client
) -> None:
    w = daily_world(fake, clock, client)
    cus, meter, sub = w["customer"].id, w["meter"].id, w["sub"]
    item = sub["items"].data[0]
    assert (item.current_period_start, item.current_period_end) == (DAY0, DAY0 + DAY)
    assert sub.billing_cycle_anchor == DAY0 + DAY and sub.start_date == DAY0
    first = client.v1.invoices.retrieve(sub.latest_invoice)  # at creation: nothing to bill
    assert (first.billing_reason, first.status, first.total) == ("subscription_create", "paid", 0)

    send(client, cus, "250", DAY0 - HOUR)  # before the period: billed nowhere here
    send(client, cus, "1000", DAY0)
    send(client, cus, "300", DAY0 + 5 * HOUR, "five-a")
    send(client, cus, "1469", DAY0 + 5 * HOUR, "five-b")  # the latest event of a window wins
    send(client, cus, "3", DAY0 + DAY - HOUR)
    clock.advance(HOUR)  # 00:30 the next day: the period has ended
    send(client, cus, "77", DAY0 + DAY)  # the next period's first window

    (draft,) = fake.advance_due_subscriptions()
    assert fake.advance_due_subscriptions() == []  # nothing more has ended
    inv = client.v1.invoices.retrieve(draft["id"])
    assert (inv.status, inv.billing_reason, inv.customer) == ("draft", "subscription_cycle", cus)
    assert inv.parent.type == "subscription_details"
    assert inv.parent.subscription_details.subscription == sub.id
    assert (inv.period_start, inv.period_end) == (DAY0, DAY0 + DAY)
    assert inv.automatically_finalizes_at == inv.created + 3600 and inv.number is None
    (line,) = inv.lines.data
    quantity = windows_in(fake, meter, cus, DAY0, DAY0 + DAY)
    assert quantity == Decimal(2472) == fake.billed_quantity(meter, cus, DAY0, DAY0 + DAY)
    assert Decimal(line.quantity_decimal) == quantity and line.quantity == 2472
    assert line.amount == cents(quantity, "0.5") == 1236  # 1236.0
    assert (line.period.start, line.period.end) == (DAY0, DAY0 + DAY)
    assert line.parent.subscription_item_details.subscription_item == item.id
    assert line.pricing.price_details.price == w["price"].id
    assert line.pricing.unit_amount_decimal == Decimal("0.5")  # decoded by stripe-python
    assert (inv.subtotal, inv.total, inv.amount_due) == (1236, 1236, 1236)

    after = client.v1.subscriptions.retrieve(sub.id)
    moved = after["items"].data[0]
    assert (moved.current_period_start, moved.current_period_end) == (DAY0 + DAY, DAY0 + 2 * DAY)
    assert after.latest_invoice == inv.id
    assert types(fake)[-2:] == ["customer.subscription.updated", "invoice.created"]
    updated = fake.events[-2]["data"]
    assert updated["previous_attributes"]["latest_invoice"] == first.id
    old_items = updated["previous_attributes"]["items"]["data"]
    assert old_items[0]["current_period_end"] == DAY0 + DAY

    # the manual control ends the next period at once, whatever the clock says
    second = fake.advance_subscription(sub.id)
    assert (second["period_start"], second["period_end"]) == (DAY0 + DAY, DAY0 + 2 * DAY)
    assert second["lines"]["data"][0]["quantity"] == 77


def test_late_usage_counts_until_the_draft_is_finalized_and_not_after(
    fake: FakeStripe, clock: Clock, client: Client
) -> None:
    w = daily_world(fake, clock, client)
    cus, meter, sub = w["customer"].id, w["meter"].id, w["sub"]
    send(client, cus, "100", DAY0 + HOUR)
    draft = fake.advance_subscription(sub.id)  # closed at 23:30, before the period's end
    assert draft["total"] == 50

    send(client, cus, "60", DAY0 + 2 * HOUR)  # late, for the closed period
    send(client, cus, "140", DAY0 + HOUR, "late-replacement")  # a newer value for a window
    assert client.v1.invoices.retrieve(draft["id"]).total == 100  # (140 + 60) * 0.5
    clock.advance(3599)
    assert fake.finalize_due_invoices() == []  # the grace has not passed
    send(client, cus, "1", DAY0 + 3 * HOUR)
    clock.advance(1)
    (final,) = fake.finalize_due_invoices()
    assert final["id"] == draft["id"] and final["status"] == "open"
    assert (final["total"], final["amount_due"], final["amount_remaining"]) == (101, 101, 101)
    assert final["status_transitions"]["finalized_at"] == clock.now
    assert final["number"].endswith("-0002")  # the subscription_create invoice was -0001
    assert final["automatically_finalizes_at"] is None
    assert types(fake)[-1] == "invoice.finalized"

    send(client, cus, "5000", DAY0 + 4 * HOUR)  # after finalization: billed nowhere
    again = client.v1.invoices.retrieve(draft["id"])
    assert (again.total, again.status) == (101, "open")
    assert [line.quantity for line in again.lines.data] == [201]
    assert fake.billed_quantity(meter, cus, DAY0, DAY0 + DAY) == Decimal(5201)
    upcoming = client.v1.invoices.create_preview({"subscription": sub.id})
    assert upcoming.period_start == DAY0 + DAY and upcoming.total == 0  # not there either


def test_finalize_endpoint_retrieve_and_list(
    fake: FakeStripe, clock: Clock, client: Client
) -> None:
    w = daily_world(fake, clock, client)
    sub = w["sub"]
    send(client, w["customer"].id, "7", DAY0)
    drafts = [fake.advance_subscription(sub.id)["id"] for _ in range(3)]
    other = daily_world_second_customer(client, w)

    done = client.v1.invoices.finalize_invoice(drafts[0], {"auto_advance": False})
    assert (done.status, done.auto_advance, done.amount_due) == ("open", False, 4)
    with pytest.raises(stripe.InvalidRequestError, match="already finalized"):
        client.v1.invoices.finalize_invoice(drafts[0])
    paid = client.v1.invoices.finalize_invoice(drafts[1])  # nothing used that period
    assert (paid.status, paid.total, paid.status_transitions.paid_at) == ("paid", 0, clock.now)
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.invoices.retrieve("in_missing")
    assert missing.value.http_status == 404 and missing.value.code == "resource_missing"

    mine = client.v1.invoices.list({"subscription": sub.id})
    assert [i.id for i in mine.data] == [drafts[2], drafts[1], drafts[0], sub.latest_invoice]
    assert [i.id for i in client.v1.invoices.list({"status": "draft"}).data] == [drafts[2]]
    by_customer = client.v1.invoices.list({"customer": other})
    assert [i.billing_reason for i in by_customer.data] == ["subscription_create"]
    page = client.v1.invoices.list({"subscription": sub.id, "limit": 2})
    assert page.has_more and len(page.data) == 2
    rest = client.v1.invoices.list(
        {"subscription": sub.id, "limit": 2, "starting_after": page.data[-1].id}
    )
    assert [i.id for i in rest.data] == [drafts[0], sub.latest_invoice] and not rest.has_more
    with pytest.raises(stripe.InvalidRequestError, match="status"):
        client.v1.invoices.list({"status": "unpaid"})


def daily_world_second_customer(client: Client, w: dict[str, Any]) -> str:
    other = client.v1.customers.create({"name": "Other"}).id
    client.v1.subscriptions.create({"customer": other, "items": [{"price": w["price"].id}]})
    return str(other)


def test_anchor_config_starts_monthly_periods_at_midnight_utc(
    fake: FakeStripe, clock: Clock, client: Client
) -> None:
    clock.now = DAY0 + 13 * HOUR + 1800  # 2026-11-20 13:30 UTC
    _, price = meter_and_price(client, interval="month")
    customer = client.v1.customers.create({}).id
    midnight = {"hour": 0, "minute": 0, "second": 0}
    sub = client.v1.subscriptions.create(
        {
            "customer": customer,
            "items": [{"price": price.id}],
            "backdate_start_date": DAY0,
            "billing_cycle_anchor_config": {"day_of_month": 20, **midnight},
        }
    )
    dec20 = DAY0 + 30 * DAY
    assert sub.billing_cycle_anchor == dec20
    config = sub.billing_cycle_anchor_config.to_dict()
    assert config == {"day_of_month": 20, "month": None, **midnight}
    item = sub["items"].data[0]
    assert (item.current_period_start, item.current_period_end) == (DAY0, dec20)
    assert fake.advance_subscription(sub.id)["period_end"] == dec20
    moved = client.v1.subscriptions.retrieve(sub.id)["items"].data[0]
    assert moved.current_period_start == dec20 and moved.current_period_end == dec20 + 31 * DAY

    # the 31st: the last day of shorter months, back to the 31st when the month has one
    last = client.v1.subscriptions.create(
        {
            "customer": customer,
            "items": [{"price": price.id}],
            "billing_cycle_anchor_config": {"day_of_month": 31, **midnight},
        }
    )
    nov30 = DAY0 + 10 * DAY
    assert last.billing_cycle_anchor == nov30
    ends = [fake.advance_subscription(last.id)["period_end"] for _ in range(5)]
    days = [(end - nov30) // DAY for end in ends]
    assert days == [0, 31, 62, 90, 121]  # Nov 30, Dec 31, Jan 31, Feb 28, Mar 31
    assert all(end % DAY == 0 for end in ends)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {
                "billing_cycle_anchor": DAY0 + DAY,
                "billing_cycle_anchor_config": {"day_of_month": 1},
            },
            "only specify one",
        ),
        ({"billing_cycle_anchor": DAY0 - HOUR}, "must be in the future"),
        ({"billing_cycle_anchor": DAY0 + 2 * DAY}, "next natural billing date"),
        ({"billing_cycle_anchor_config": {"day_of_month": 1}}, "monthly and yearly"),
        ({"backdate_start_date": DAY0 + HOUR}, "backdate_start_date"),
    ],
)
def test_anchor_refusals(
    fake: FakeStripe, clock: Clock, client: Client, extra: dict[str, Any], message: str
) -> None:
    _, price = meter_and_price(client)  # daily
    customer = client.v1.customers.create({}).id
    with pytest.raises(stripe.InvalidRequestError, match=message):
        client.v1.subscriptions.create(
            {"customer": customer, "items": [{"price": price.id}], **extra}
        )
    assert fake.objects["subscription"] == {}


def test_create_preview_is_the_current_period_so_far_and_is_not_stored(
    fake: FakeStripe, clock: Clock, client: Client
) -> None:
    w = daily_world(fake, clock, client)
    cus, sub = w["customer"].id, w["sub"]
    send(client, cus, "1001", DAY0 + HOUR)
    client.v1.invoice_items.create({"customer": cus, "amount": -100, "description": "goodwill"})
    stored = set(fake.objects["invoice"])

    preview = client.v1.invoices.create_preview({"subscription": sub.id})
    assert preview.id.startswith("upcoming_in_") and preview.billing_reason == "upcoming"
    assert (preview.period_start, preview.period_end) == (DAY0, DAY0 + DAY)
    usage, goodwill = preview.lines.data
    assert (usage.quantity, usage.amount) == (1001, 501)  # 500.5 rounds half up
    assert (goodwill.amount, goodwill.description) == (-100, "goodwill")
    assert (preview.total, preview.amount_due) == (401, 401)
    assert set(fake.objects["invoice"]) == stored
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.retrieve(preview.id)
    by_customer = client.v1.invoices.create_preview({"customer": cus})
    assert by_customer.parent.subscription_details.subscription == sub.id
    assert by_customer.total == 401

    state = httpx.get(fake.url + "/_emulator/state.json").json()
    (upcoming,) = state["invoices"]
    assert (upcoming["amount"], upcoming["display"]) == (401, "4.01 USD")

    lonely = client.v1.customers.create({}).id
    with pytest.raises(stripe.InvalidRequestError) as none:
        client.v1.invoices.create_preview({"customer": lonely})
    assert none.value.code == "invoice_upcoming_none"
    client.v1.subscriptions.cancel(sub.id)
    with pytest.raises(stripe.InvalidRequestError, match="No upcoming invoices"):
        client.v1.invoices.create_preview({"subscription": sub.id})


def test_http_control_closes_a_period(fake: FakeStripe, clock: Clock, client: Client) -> None:
    w = daily_world(fake, clock, client)
    sub = w["sub"]
    requests = len(fake.requests)
    answer = httpx.post(f"{fake.url}/_emulator/subscriptions/{sub.id}/advance")
    assert answer.status_code == 200
    inv = answer.json()
    assert inv["object"] == "invoice" and inv["status"] == "draft"
    assert inv["parent"]["subscription_details"]["subscription"] == sub.id
    everyone = httpx.post(f"{fake.url}/_emulator/subscriptions/advance").json()
    assert [i["period_start"] for i in everyone["data"]] == [DAY0 + DAY]
    clock.advance(3600)
    due = httpx.post(f"{fake.url}/_emulator/invoices/finalize_due").json()
    assert [i["id"] for i in due["data"]] == [inv["id"], everyone["data"][0]["id"]]
    assert len(fake.requests) == requests  # controls are not API requests

    missing = httpx.post(f"{fake.url}/_emulator/subscriptions/sub_missing/advance")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "resource_missing"
    client.v1.subscriptions.cancel(sub.id)
    assert types(fake)[-1] == "customer.subscription.deleted"
    canceled = httpx.post(f"{fake.url}/_emulator/subscriptions/{sub.id}/advance")
    assert canceled.status_code == 400 and "canceled" in canceled.json()["error"]["message"]


def test_a_last_meter_with_windows_bills_the_latest_window_of_the_period(
    fake: FakeStripe, clock: Clock, client: Client
) -> None:
    """Formula `last` with pre-aggregated windows: the latest event received per window is kept,
    and the period bills the value of its latest window (not the sum of the windows)."""
    w = daily_world(fake, clock, client, formula="last")
    cus, meter = w["customer"].id, w["meter"].id
    send(client, cus, "9", DAY0 - HOUR)  # before the period: not billed in it
    send(client, cus, "3", DAY0 + HOUR, "one-a")
    send(client, cus, "5", DAY0 + 4 * HOUR)
    send(client, cus, "7", DAY0 + 4 * HOUR, "four-b")  # replaces 5: latest received wins
    send(client, cus, "6", DAY0 + HOUR, "one-b")  # an earlier window: not the latest window
    summaries = client.v1.billing.meters.event_summaries.list(
        meter,
        {"customer": cus, "start_time": DAY0, "end_time": DAY0 + DAY},
    )
    assert [Decimal(str(s.aggregated_value)) for s in summaries.data] == [Decimal(7)]
    clock.advance(HOUR)
    (draft,) = fake.advance_due_subscriptions()
    (line,) = client.v1.invoices.retrieve(draft["id"]).lines.data
    assert (
        Decimal(line.quantity_decimal)
        == Decimal(7)
        == fake.billed_quantity(meter, cus, DAY0, DAY0 + DAY)
    )
    assert line.amount == cents(Decimal(7), "0.5")
