"""The Stripe emulator's events: signed webhook delivery (snapshot and thin), GET /v2/core/events,
and the asynchronous meter event error reports, checked with stripe-python's own verifiers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
import stripe

from emulators.stripe import FakeStripe
from emulators.stripe.common import ApiError
from tests.emulators.receiver import Receiver

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

KEY = "sk_test_fakeStripeHooks1234"
SECRET = "whsec_test_secret_0123456789"
HOUR = 3600
Json = dict[str, Any]


@pytest.fixture
def fake(stripe_server: FakeStripe) -> FakeStripe:
    stripe_server.reset()
    stripe_server.webhook_retry_delays = (0.01, 0.02, 0.03)
    return stripe_server


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def http_client() -> stripe.HTTPXClient:
    return stripe.HTTPXClient(allow_sync_methods=True)


@pytest.fixture
def client(fake: FakeStripe, http_client: stripe.HTTPXClient) -> Any:
    return stripe.StripeClient(
        KEY, base_addresses={"api": fake.url, "meter_events": fake.url}, http_client=http_client
    )


def create_meter(client: Any, event_name: str = "api_calls") -> Any:
    return client.v1.billing.meters.create(
        {
            "display_name": "API calls",
            "event_name": event_name,
            "default_aggregation": {"formula": "sum"},
            "event_time_window": "hour",
        }
    )


def stream(client: Any, events: list[Json]) -> None:
    token = client.v2.billing.meter_event_session.create().authentication_token
    client.v2.billing.meter_event_stream.create({"events": events}, {"api_key": token})


def event(name: str, customer: str, value: str, identifier: str) -> Json:
    payload = {"stripe_customer_id": customer, "value": value}
    return {"event_name": name, "payload": payload, "identifier": identifier}


# --------------------------------------------------------------------------- delivery


def test_snapshot_event_arrives_signed_and_verifies(
    fake: FakeStripe, receiver: Receiver, client: Any
) -> None:
    fake.add_webhook_destination(receiver.url, secret=SECRET)
    fake.add_webhook_destination(receiver.url, secret=SECRET, mode="thin")  # gets no snapshot
    customer = client.v1.customers.create({"name": "Acme"})
    emitted = fake.emit_event("customer.updated", fake.objects["customer"][customer.id])
    fake.objects["customer"][customer.id]["name"] = "changed later"  # the event keeps a copy
    assert fake.deliver_pending(timeout=5)

    ((headers, body),) = receiver.received
    assert headers["Content-Type"].startswith("application/json")
    assert set(json.loads(body)) == {
        "id",
        "object",
        "api_version",
        "created",
        "data",
        "livemode",
        "pending_webhooks",
        "request",
        "type",
    }
    verified = stripe.Webhook.construct_event(body, headers["Stripe-Signature"], SECRET)
    assert verified.id == emitted["id"] and verified.id.startswith("evt_")
    assert verified.type == "customer.updated" and verified.object == "event"
    assert verified.data.object.id == customer.id and verified.data.object.name == "Acme"
    assert verified.livemode is False and verified.pending_webhooks == 1
    assert verified.request.to_dict() == {"id": None, "idempotency_key": None}
    again = client.construct_event(body, headers["Stripe-Signature"], SECRET)
    assert again.id == emitted["id"]

    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, headers["Stripe-Signature"], "whsec_wrong")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body + b" ", headers["Stripe-Signature"], SECRET)

    (delivery,) = fake.webhook_deliveries
    assert delivery["url"] == receiver.url and delivery["event_id"] == emitted["id"]
    assert (delivery["status"], delivery["error"], delivery["attempt"]) == (200, None, 1)
    assert fake.events == [emitted]


def test_thin_event_notification_verifies_and_fetches_the_full_event(
    fake: FakeStripe, receiver: Receiver, client: Any
) -> None:
    fake.add_webhook_destination(receiver.url, secret=SECRET, mode="thin")
    meter = create_meter(client)
    stream(client, [event("api_calls", "cus_unknown", "5", "id-1")])
    (report,) = fake.flush_error_reports()
    assert fake.deliver_pending(timeout=5)

    ((headers, body),) = receiver.received
    notification = json.loads(body)
    assert notification == {
        "id": report["id"],
        "object": "v2.core.event",
        "type": "v1.billing.meter.error_report_triggered",
        "created": report["created"],
        "livemode": False,
        "context": None,
        "reason": None,
        "related_object": {
            "id": meter.id,
            "type": "billing.meter",
            "url": f"/v1/billing/meters/{meter.id}",
        },
    }
    assert datetime.fromisoformat(notification["created"].replace("Z", "+00:00"))

    parsed = client.parse_event_notification(body, headers["Stripe-Signature"], SECRET)
    assert type(parsed).__name__ == "V1BillingMeterErrorReportTriggeredEventNotification"
    assert parsed.id == report["id"] and parsed.related_object.id == meter.id
    assert parsed.fetch_related_object().id == meter.id
    full = parsed.fetch_event()
    assert full.data.reason.error_types[0].code == "meter_event_customer_not_found"

    retrieved = client.v2.core.events.retrieve(report["id"])
    assert retrieved.object == "v2.core.event" and retrieved.related_object.id == meter.id
    assert retrieved.data.reason.error_count == 1
    assert retrieved.data.reason.error_types[0].sample_errors[0].request.identifier == "id-1"

    with pytest.raises(stripe.SignatureVerificationError):
        client.parse_event_notification(body, headers["Stripe-Signature"], "whsec_wrong")
    with pytest.raises(ValueError, match="parse_event_notification"):  # thin, not snapshot
        client.construct_event(body, headers["Stripe-Signature"], SECRET)
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v2.core.events.retrieve("evt_test_missing")
    assert exc.value.http_status == 404 and exc.value.code == "not_found"


def test_failed_deliveries_are_retried_and_recorded(
    fake: FakeStripe, receiver: Receiver, client: Any
) -> None:
    receiver.failing = 2
    fake.add_webhook_destination(receiver.url, secret=SECRET)
    fake.add_webhook_destination("http://127.0.0.1:9/nothing-listens", secret=SECRET)
    emitted = fake.emit_event("customer.created", {"id": "cus_1", "object": "customer"})
    assert fake.deliver_pending(timeout=10)

    to_receiver = [d for d in fake.webhook_deliveries if d["url"] == receiver.url]
    assert [(d["attempt"], d["status"]) for d in to_receiver] == [(1, 500), (2, 500), (3, 200)]
    assert len(receiver.received) == 3
    assert all(json.loads(body)["id"] == emitted["id"] for _, body in receiver.received)
    lost = [d for d in fake.webhook_deliveries if d["url"] != receiver.url]
    assert [d["attempt"] for d in lost] == [1, 2, 3, 4]  # the first try and three retries
    assert all(d["status"] is None and d["error"] for d in lost)


def test_types_filter_sign_and_reset(fake: FakeStripe, receiver: Receiver) -> None:
    fake.add_webhook_destination(receiver.url, secret=SECRET, types=["invoice.paid"])
    fake.emit_event("customer.created", {"id": "cus_1"})
    paid = fake.emit_event("invoice.paid", {"id": "in_1"})
    assert fake.deliver_pending(timeout=5)
    assert [b["id"] for b in receiver.bodies()] == [paid["id"]]

    # a hand-made payload, signed the way Stripe (and stripe-python's test helper) signs
    payload = json.dumps({"id": "evt_hand", "object": "event", "type": "x", "data": {}}).encode()
    header = fake.sign(payload, SECRET, timestamp=1_700_000_000)
    expected = stripe.WebhookSignature.generate_signature_header(
        payload.decode(), SECRET, timestamp=1_700_000_000
    )
    assert header == expected
    with pytest.raises(stripe.SignatureVerificationError, match="tolerance"):
        stripe.Webhook.construct_event(payload, header, SECRET)  # older than 300 s
    assert stripe.Webhook.construct_event(payload, fake.sign(payload, SECRET), SECRET).id

    fake.reset()
    fake.emit_event("invoice.paid", {"id": "in_2"})
    assert fake.deliver_pending(timeout=5)
    assert len(receiver.received) == 1 and fake.webhook_deliveries == []  # reset: no destinations
    fake.add_webhook_destination(receiver.url, secret=SECRET)
    fake.clear_webhook_destinations()
    fake.emit_event("invoice.paid", {"id": "in_3"})
    assert fake.deliver_pending(timeout=5) and len(receiver.received) == 1
    with pytest.raises(ValueError):
        fake.add_webhook_destination(receiver.url, secret=SECRET, mode="fat")


def test_events_of_a_request_carry_it_and_die_with_it(
    fake: FakeStripe, receiver: Receiver, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endpoint that emits (as invoice events will): the event names the request, and a
    request that fails emits nothing."""
    fake.add_webhook_destination(receiver.url, secret=SECRET)
    create = fake._customer_create

    def emitting(ctx: Any, p: Json, accepted: list[Json]) -> Json:
        obj = create(ctx, p, accepted)
        fake.emit_event("customer.created", obj)
        if p.get("name") == "fail":
            raise ApiError(400, "refused after emitting")
        return obj

    monkeypatch.setattr(fake, "_customer_create", emitting)
    customer = client.v1.customers.create({"name": "ok"}, {"idempotency_key": "idem-7"})
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.customers.create({"name": "fail"})
    assert fake.deliver_pending(timeout=5)
    (body,) = receiver.bodies()
    assert body["data"]["object"]["id"] == customer.id
    assert body["request"]["idempotency_key"] == "idem-7"
    assert body["request"]["id"].startswith("req_")
    assert [e["data"]["object"]["id"] for e in fake.events] == [customer.id]


# --------------------------------------------------------------------------- error reports


def test_error_reports_codes_counts_and_samples(fake: FakeStripe, client: Any) -> None:
    meter = create_meter(client)
    old = create_meter(client, "old_calls")
    client.v1.billing.meters.deactivate(old.id)
    known = client.v1.customers.create({}).id
    hour = int(time.time()) // HOUR * HOUR

    # v1 answers 200 for a customer Stripe does not know, and bills nothing for it
    v1 = client.v1.billing.meter_events.create(
        {
            "event_name": "api_calls",
            "payload": {"stripe_customer_id": "cus_ghost", "value": "7"},
            "identifier": "v1-ghost",
            "timestamp": hour,
        }
    )
    assert v1.identifier == "v1-ghost"
    stream(
        client,
        [
            event("api_calls", known, "2", "ok-1"),
            *(event("api_calls", f"cus_ghost{i}", "1", f"ghost-{i}") for i in range(4)),
            event("api_calls", known, "ten", "nan-1"),
            event("api_calls", known, "1234567890.1234567", "digits-1"),
            event("old_calls", known, "1", "archived-1"),
            event("no_such_meter", known, "1", "nometer-1"),
            event("no_such_meter", known, "1", "nometer-2"),
        ],
    )
    (((customer, _window), value),) = fake.billed_windows(meter.id).items()
    assert (customer, value) == (known, Decimal(2))  # only the valid event is billed
    assert [e["identifier"] for e in fake.meter_events] == ["ok-1"]
    assert len(fake.async_errors) == 10

    reports = {
        (e["type"], (e["related_object"] or {}).get("id")): e for e in fake.flush_error_reports()
    }
    assert set(reports) == {
        ("v1.billing.meter.error_report_triggered", meter.id),
        ("v1.billing.meter.error_report_triggered", old.id),
        ("v1.billing.meter.no_meter_found", None),
    }
    data = reports[("v1.billing.meter.error_report_triggered", meter.id)]["data"]
    assert data["reason"]["error_count"] == 7
    assert data["developer_message_summary"] == "There are 7 invalid events"
    assert data["validation_start"] <= data["validation_end"]
    types = {t["code"]: t for t in data["reason"]["error_types"]}
    assert {code: t["error_count"] for code, t in types.items()} == {
        "meter_event_customer_not_found": 5,
        "meter_event_invalid_value": 1,
        "meter_event_value_too_many_digits": 1,
    }
    ghosts = types["meter_event_customer_not_found"]["sample_errors"]
    assert [s["request"]["identifier"] for s in ghosts] == ["v1-ghost", "ghost-0", "ghost-1"]
    assert "cus_ghost" in ghosts[0]["error_message"]

    archived = reports[("v1.billing.meter.error_report_triggered", old.id)]["data"]["reason"]
    assert [(t["code"], t["error_count"]) for t in archived["error_types"]] == [
        ("archived_meter", 1)
    ]
    no_meter = reports[("v1.billing.meter.no_meter_found", None)]
    assert no_meter["related_object"] is None
    (nm,) = no_meter["data"]["reason"]["error_types"]
    assert (nm["code"], nm["error_count"]) == ("no_meter", 2)
    assert [s["request"]["identifier"] for s in nm["sample_errors"]] == ["nometer-1", "nometer-2"]
    assert no_meter["data"]["developer_message_summary"] == "There are 2 invalid events"

    assert fake.flush_error_reports() == []  # each error is reported once
    retrieved = client.v2.core.events.retrieve(no_meter["id"])
    assert retrieved.type == "v1.billing.meter.no_meter_found"
    assert retrieved.data.reason.error_types[0].code == "no_meter"


def test_duplicates_and_adjustments_are_not_error_reports(fake: FakeStripe, client: Any) -> None:
    create_meter(client)
    known = client.v1.customers.create({}).id
    stream(client, [event("api_calls", known, "1", "dup")])
    stream(client, [event("api_calls", known, "2", "dup")])  # dropped silently
    client.v1.billing.meter_event_adjustments.create(
        {"event_name": "api_calls", "type": "cancel", "cancel": {"identifier": "never-sent"}}
    )
    assert [e["code"] for e in fake.async_errors] == [
        "duplicate_meter_event",
        "meter_event_adjustment_not_applied",
    ]
    assert fake.flush_error_reports() == []


def test_error_reports_on_a_timer_reach_the_webhook(
    fake: FakeStripe, receiver: Receiver, client: Any
) -> None:
    fake.add_webhook_destination(receiver.url, secret=SECRET, mode="thin")
    create_meter(client)
    fake.flush_error_reports_every(0.05)
    try:
        stream(client, [event("api_calls", "cus_nobody", "1", "late-1")])
        deadline = time.monotonic() + 5
        while not receiver.received and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        fake.flush_error_reports_every(None)
    assert fake.deliver_pending(timeout=5)
    (body,) = receiver.bodies()
    assert body["type"] == "v1.billing.meter.error_report_triggered"
