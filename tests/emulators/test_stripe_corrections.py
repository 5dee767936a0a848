"""Corrections in the Stripe emulator through stripe-python: invoice items picked up by the next
invoice, credit notes within what an invoice has left, and the signed webhooks of the billing
cycle."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import stripe

from emulators.stripe import FakeStripe
from tests.emulators.billing_support import (
    DAY,
    DAY0,
    HOUR,
    KEY,
    Client,
    client_for,
    daily_world,
    send,
    types,
)
from tests.emulators.receiver import Receiver
from tests.emulators.support import Clock

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
SECRET = "whsec_billing_0123456789"


@pytest.fixture
def fake(stripe_server: FakeStripe) -> FakeStripe:
    stripe_server.reset()
    stripe_server.webhook_retry_delays = (0.01, 0.02, 0.03)
    stripe_server.clock = Clock(DAY0)
    return stripe_server


@pytest.fixture
def clock(fake: FakeStripe) -> Clock:
    assert isinstance(fake.clock, Clock)
    return fake.clock


@pytest.fixture(scope="module")
def http_client() -> stripe.HTTPXClient:
    return stripe.HTTPXClient(allow_sync_methods=True)


@pytest.fixture
def client(fake: FakeStripe, http_client: stripe.HTTPXClient) -> Client:
    return client_for(fake, http_client)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_invoice_items_wait_for_the_next_invoice(
    fake: FakeStripe, clock: Clock, client: Client
) -> None:
    w = daily_world(fake, clock, client)
    cus, sub = w["customer"].id, w["sub"]
    assert client.v1.customers.retrieve(cus).currency == "usd"  # set by the subscription
    send(client, cus, "100", DAY0 + HOUR)
    params = {
        "customer": cus,
        "amount": -250,
        "description": "Usage correction: API calls",
        "period": {"start": DAY0 - DAY, "end": DAY0},
        "metadata": {"meterbridge_correction": "7"},
    }
    credit = client.v1.invoice_items.create(params, {"idempotency_key": "correction-7"})
    assert (credit.object, credit.invoice, credit.amount, credit.currency) == (
        "invoiceitem",
        None,
        -250,
        "usd",
    )
    assert credit.discountable is False and credit.metadata.to_dict() == params["metadata"]
    again = client.v1.invoice_items.create(params, {"idempotency_key": "correction-7"})
    assert again.id == credit.id and len(fake.objects["invoiceitem"]) == 1
    with pytest.raises(stripe.IdempotencyError):
        client.v1.invoice_items.create(
            {**params, "amount": -1}, {"idempotency_key": "correction-7"}
        )
    debit = client.v1.invoice_items.create(
        {"customer": cus, "unit_amount_decimal": "12.5", "quantity": 3, "currency": "usd"}
    )
    assert debit.amount == 38  # 12.5 x 3 = 37.5, half up
    assert debit.pricing.unit_amount_decimal == Decimal("12.5")
    assert types(fake).count("invoiceitem.created") == 2

    draft = fake.advance_subscription(sub.id)
    usage, *items = draft["lines"]["data"]
    assert usage["amount"] == 50
    assert [line["parent"]["invoice_item_details"]["invoice_item"] for line in items] == [
        credit.id,
        debit.id,
    ]
    assert [line["amount"] for line in items] == [-250, 38]
    assert items[0]["period"] == {"start": DAY0 - DAY, "end": DAY0}
    assert (draft["total"], draft["amount_due"]) == (-162, 0)  # a negative total owes nothing
    assert client.v1.invoice_items.retrieve(credit.id).invoice == draft["id"]

    later = client.v1.invoice_items.create({"customer": cus, "amount": 500})  # after the draft
    assert later.invoice is None
    added = client.v1.invoice_items.create({"customer": cus, "amount": 12, "invoice": draft["id"]})
    assert added.invoice == draft["id"]
    assert [line["amount"] for line in client.v1.invoices.retrieve(draft["id"]).lines.data] == [
        50,
        -250,
        38,
        12,
    ]
    clock.advance(3600)
    (final,) = fake.finalize_due_invoices()
    assert (final["total"], final["status"], final["ending_balance"]) == (-150, "paid", -150)
    assert client.v1.customers.retrieve(cus).balance == -150  # a credit for the next invoice

    following = fake.advance_subscription(sub.id)  # takes the later item and the credit
    assert [line["amount"] for line in following["lines"]["data"]] == [0, 500]
    assert (following["starting_balance"], following["amount_due"]) == (-150, 350)

    with pytest.raises(stripe.InvalidRequestError, match="currency"):
        client.v1.invoice_items.create({"customer": cus, "amount": 5, "currency": "eur"})
    with pytest.raises(stripe.InvalidRequestError, match="draft"):
        client.v1.invoice_items.create({"customer": cus, "amount": 5, "invoice": final["id"]})
    with pytest.raises(stripe.InvalidRequestError, match="only specify one"):
        client.v1.invoice_items.create({"customer": cus, "amount": 5, "unit_amount_decimal": "1"})
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.invoice_items.retrieve("ii_missing")
    assert missing.value.http_status == 404


def test_credit_notes_stay_within_what_the_invoice_has_left(
    fake: FakeStripe, clock: Clock, client: Client
) -> None:
    w = daily_world(fake, clock, client)
    cus, sub = w["customer"].id, w["sub"]
    send(client, cus, "2000", DAY0 + HOUR)
    client.v1.invoice_items.create({"customer": cus, "amount": 300, "description": "Setup"})
    draft = fake.advance_subscription(sub.id)  # 1000 of usage + 300
    with pytest.raises(stripe.InvalidRequestError, match="draft"):
        client.v1.credit_notes.create({"invoice": draft["id"], "amount": 10})
    inv = client.v1.invoices.finalize_invoice(draft["id"])
    usage_line, setup_line = inv.lines.data
    assert (inv.total, inv.amount_remaining) == (1300, 1300)

    with pytest.raises(stripe.InvalidRequestError, match="exceeds the amount remaining"):
        client.v1.credit_notes.create({"invoice": inv.id, "amount": 1301})
    note = client.v1.credit_notes.create(
        {"invoice": inv.id, "amount": 100, "reason": "order_change", "memo": "Late usage fix"},
        {"idempotency_key": "cn-1"},
    )
    assert (note.object, note.status, note.type, note.total) == (
        "credit_note",
        "issued",
        "pre_payment",
        100,
    )
    assert note.number == f"{inv.number}-CN-01" and note.memo == "Late usage fix"
    assert (
        client.v1.credit_notes.create(
            {"invoice": inv.id, "amount": 100, "reason": "order_change", "memo": "Late usage fix"},
            {"idempotency_key": "cn-1"},
        ).id
        == note.id
    )
    after = client.v1.invoices.retrieve(inv.id)
    assert (after.amount_due, after.amount_remaining, after.pre_payment_credit_notes_amount) == (
        1200,
        1200,
        100,
    )
    assert client.v1.credit_notes.retrieve(note.id).invoice == inv.id

    with pytest.raises(stripe.InvalidRequestError, match="left to credit"):
        client.v1.credit_notes.create(
            {
                "invoice": inv.id,
                "lines": [
                    {"type": "invoice_line_item", "invoice_line_item": setup_line.id, "amount": 301}
                ],
            }
        )
    with pytest.raises(stripe.InvalidRequestError, match="invoice line item"):
        client.v1.credit_notes.create(
            {
                "invoice": inv.id,
                "lines": [{"type": "invoice_line_item", "invoice_line_item": "il_x"}],
            }
        )
    lines = client.v1.credit_notes.create(
        {
            "invoice": inv.id,
            "lines": [
                {"type": "invoice_line_item", "invoice_line_item": setup_line.id},
                {"type": "invoice_line_item", "invoice_line_item": usage_line.id, "quantity": 1200},
                {"type": "custom_line_item", "unit_amount": 100, "quantity": 3, "description": "x"},
            ],
        }
    )
    assert [line.amount for line in lines.lines.data] == [300, 600, 300] and lines.total == 1200
    assert lines.number == f"{inv.number}-CN-02"
    paid = client.v1.invoices.retrieve(inv.id)
    assert (paid.status, paid.amount_remaining, paid.amount_due) == ("paid", 0, 0)
    assert types(fake)[-3:] == ["credit_note.created", "invoice.updated", "invoice.paid"]
    with pytest.raises(stripe.InvalidRequestError, match=r"remaining on invoice .* \(0\)"):
        client.v1.credit_notes.create({"invoice": inv.id, "amount": 1})
    with pytest.raises(stripe.InvalidRequestError, match="reason"):
        client.v1.credit_notes.create({"invoice": inv.id, "amount": 1, "reason": "whim"})


def test_billing_webhooks_arrive_signed(
    fake: FakeStripe, clock: Clock, client: Client, receiver: Receiver
) -> None:
    fake.add_webhook_destination(receiver.url, secret=SECRET)
    w = daily_world(fake, clock, client)
    cus, sub = w["customer"].id, w["sub"]
    send(client, cus, "10", DAY0 + HOUR)
    draft = fake.advance_subscription(sub.id)
    clock.advance(3600)
    fake.finalize_due_invoices()
    client.v1.invoice_items.create({"customer": cus, "amount": 3})
    client.v1.credit_notes.create({"invoice": draft["id"], "amount": 2})
    client.v1.subscriptions.cancel(sub.id)
    assert fake.deliver_pending(timeout=10)

    verified = [
        stripe.Webhook.construct_event(body, headers["Stripe-Signature"], SECRET)
        for headers, body in receiver.received
    ]
    assert [e.type for e in verified] == [
        "customer.subscription.created",
        "invoice.created",
        "invoice.finalized",
        "invoice.paid",
        "customer.subscription.updated",
        "invoice.created",
        "invoice.finalized",
        "invoiceitem.created",
        "credit_note.created",
        "invoice.updated",
        "customer.subscription.deleted",
    ]
    assert [e.id for e in verified] == [e["id"] for e in fake.events]
    created = verified[5].data.object
    assert (created.object, created.status, created.billing_reason) == (
        "invoice",
        "draft",
        "subscription_cycle",
    )
    assert created.id == draft["id"] and created.lines.data[0].amount == 5
    updated = json.loads(receiver.received[4][1])["data"]
    assert updated["object"]["items"]["data"][0]["current_period_start"] == DAY0 + DAY
    assert updated["previous_attributes"]["items"]["data"][0]["current_period_start"] == DAY0
    finalized = verified[6].data.object
    assert (finalized.status, finalized.number is not None) == ("open", True)
    request = verified[7].request
    assert request.id.startswith("req_")  # emitted by an API request
    assert verified[5].request.id is None  # emitted by the period's end


def test_page_and_state_show_invoices_items_and_credit_notes(
    fake: FakeStripe, clock: Clock, client: Client, tmp_path: Path
) -> None:
    w = daily_world(fake, clock, client)
    cus, sub = w["customer"].id, w["sub"]
    send(client, cus, "2469", DAY0 + HOUR)
    draft = fake.advance_subscription(sub.id)
    clock.advance(3600)
    fake.finalize_due_invoices()
    note = client.v1.credit_notes.create({"invoice": draft["id"], "amount": 35})
    item = client.v1.invoice_items.create({"customer": cus, "amount": -99, "description": "Fix"})
    second = fake.advance_subscription(sub.id)

    state = httpx.get(fake.url + "/_emulator/state.json").json()
    created = {i["id"]: i for i in state["invoices_created"]}
    assert created[draft["id"]]["status"] == "open" and created[draft["id"]]["total"] == 1235
    assert created[draft["id"]]["credited"] == 35 and created[draft["id"]]["amount_due"] == 1200
    assert created[second["id"]]["status"] == "draft"
    assert created[second["id"]]["automatically_finalizes_at"] == clock.now + 3600
    assert [i["id"] for i in state["invoice_items"]] == [item.id]
    assert state["invoice_items"][0]["invoice"] == second["id"]
    assert [n["id"] for n in state["credit_notes"]] == [note.id]
    (upcoming,) = state["invoices"]
    assert upcoming["period_start"] == DAY0 + 2 * DAY and upcoming["amount"] == 0

    html = httpx.get(fake.url + "/").text
    for shown in (draft["id"], second["id"], item.id, note.id, "12.35 USD", "Fix", "-0.99 USD"):
        assert shown in html
    assert "Upcoming invoices" in html and "finalizes" in html

    copy = FakeStripe()
    path = str(tmp_path / "stripe.state")
    fake.save_state(path)
    assert copy.load_state(path)
    assert copy.objects["invoice"] == fake.objects["invoice"]
    assert copy.objects["credit_note"] == fake.objects["credit_note"]
    copy.clock = Clock(clock.now + 3600)
    (finalized,) = copy.finalize_due_invoices()  # the draft's deadline survived the restart
    assert finalized["id"] == second["id"]


def test_unknown_customer_and_missing_parameters(fake: FakeStripe, clock: Clock) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    answer = httpx.post(f"{fake.url}/v1/invoiceitems", data={"amount": "5"}, headers=headers)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "customer"
    answer = httpx.post(
        f"{fake.url}/v1/invoiceitems",
        data={"customer": "cus_missing", "amount": "5", "currency": "usd"},
        headers=headers,
    )
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "resource_missing"
    answer = httpx.post(f"{fake.url}/v1/credit_notes", data={"amount": "5"}, headers=headers)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "invoice"
