"""The fake Stripe, driven through the real stripe-python client (no Django needed)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
import stripe

from emulators.stripe import FakeStripe
from tests.emulators.support import Clock

# stripe-python's HTTPXClient posts raw bytes with data=, which httpx deprecates
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

# The tests send deliberately invalid parameters, which stripe-python's TypedDicts would refuse.
Client = Any

KEY = "sk_test_fakeStripeKey1234"
HOUR = 3600
DAY = 86400


def error_of(exc: stripe.StripeError) -> dict[str, Any]:
    body = exc.json_body
    assert isinstance(body, dict)
    error = body["error"]
    assert isinstance(error, dict)
    return error


@pytest.fixture
def fake(stripe_server: FakeStripe) -> FakeStripe:
    stripe_server.reset()
    return stripe_server


@pytest.fixture
def clock(fake: FakeStripe) -> Clock:
    # an hour boundary plus 30 minutes, so "the previous hour" is a closed window
    now = time.time()
    c = Clock(now - now % HOUR + 1800)
    fake.clock = c
    return c


@pytest.fixture(scope="module")
def http_client() -> stripe.HTTPXClient:
    return stripe.HTTPXClient(allow_sync_methods=True)


def make_client(fake: FakeStripe, http_client: stripe.HTTPXClient, **kw: Any) -> Client:
    return stripe.StripeClient(
        kw.pop("api_key", KEY),
        base_addresses={"api": fake.url, "meter_events": fake.url},
        http_client=http_client,
        **kw,
    )


@pytest.fixture
def client(fake: FakeStripe, http_client: stripe.HTTPXClient) -> Client:
    return make_client(fake, http_client)


@pytest.fixture
def raw(fake: FakeStripe) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, headers={"Authorization": f"Bearer {KEY}"}) as c:
        yield c


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stripe.HTTPClient, "INITIAL_DELAY", 0.001)
    monkeypatch.setattr(stripe.HTTPClient, "MAX_DELAY", 0.002)


def create_meter(client: Client, event_name: str = "api_calls", **kw: Any) -> Any:
    params: dict[str, Any] = {
        "display_name": "API calls",
        "event_name": event_name,
        "default_aggregation": {"formula": "sum"},
        "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
        "value_settings": {"event_payload_key": "value"},
        "event_time_window": "hour",
    }
    params.update(kw)
    return client.v1.billing.meters.create(params)


def new_customer(client: Client) -> str:
    """A customer Stripe knows (events for unknown customers are rejected asynchronously)."""
    return str(client.v1.customers.create({}).id)


def send(
    client: Client,
    customer: str,
    value: str,
    ts: int,
    identifier: str | None = None,
    event_name: str = "api_calls",
) -> Any:
    params: dict[str, Any] = {
        "event_name": event_name,
        "payload": {"stripe_customer_id": customer, "value": value},
        "timestamp": ts,
    }
    if identifier is not None:
        params["identifier"] = identifier
    return client.v1.billing.meter_events.create(params)


# --------------------------------------------------------------------------- auth and basics


def test_auth_and_request_id(fake: FakeStripe, http_client: stripe.HTTPXClient) -> None:
    bad = make_client(fake, http_client, api_key="pk_test_nopeABCD")
    with pytest.raises(stripe.AuthenticationError) as exc:
        bad.v1.customers.list()
    assert exc.value.http_status == 401
    assert "ABCD" in str(exc.value) and "pk_test" not in str(exc.value)

    r = httpx.get(f"{fake.url}/v1/customers", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and r.headers["Request-Id"].startswith("req_")
    assert r.json() == {"object": "list", "data": [], "has_more": False, "url": "/v1/customers"}

    live = make_client(fake, http_client, api_key="rk_live_restricted9999")
    assert live.v1.customers.create({"email": "x@example.com"}).livemode is True
    assert fake.count("GET", "/v1/customers") == 2


def test_crud_lists_and_pagination(client: Client, fake: FakeStripe) -> None:
    ids = [client.v1.customers.create({"name": f"c{i}"}).id for i in range(12)]
    first = client.v1.customers.list()
    assert len(first.data) == 10 and first.has_more
    assert [c.id for c in client.v1.customers.list().auto_paging_iter()] == ids[::-1]
    updated = client.v1.customers.update(ids[0], {"metadata": {"k": "v"}, "email": "a@b.co"})
    assert updated.metadata.to_dict() == {"k": "v"}
    assert client.v1.customers.delete(ids[1]).deleted is True
    assert client.v1.customers.retrieve(ids[1]).to_dict()["deleted"] is True
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.customers.retrieve("cus_missing")
    assert exc.value.http_status == 404 and exc.value.code == "resource_missing"
    assert set(fake.objects["customer"]) == set(ids) - {ids[1]}


# --------------------------------------------------------------------------- contract


def test_contract_validation(client: Client) -> None:
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.customers.create({"email": "a@b.co", "colour": "blue"})
    assert exc.value.code == "parameter_unknown" and exc.value.param == "colour"
    assert exc.value.http_status == 400

    with pytest.raises(stripe.InvalidRequestError) as exc:
        create_meter(client, default_aggregation={"formula": "avg"})
    assert exc.value.code == "parameter_invalid_enum"
    assert exc.value.param == "default_aggregation[formula]"

    with pytest.raises(stripe.InvalidRequestError) as exc:
        create_meter(client, customer_mapping={"event_payload_key": "cid"})
    assert exc.value.code == "parameter_missing" and exc.value.param == "customer_mapping[type]"

    with pytest.raises(stripe.InvalidRequestError) as exc:
        create_meter(client, event_name="x" * 101)
    assert exc.value.code == "parameter_invalid_string" and exc.value.param == "event_name"

    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.billing.meters.create({"display_name": "d", "event_name": "e"})
    assert exc.value.code == "parameter_missing" and exc.value.param == "default_aggregation"

    product = client.v1.products.create({"name": "P"})
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.prices.create(
            {
                "product": product.id,
                "currency": "usd",
                "unit_amount": 1,
                "recurring": {"interval": "month", "usage_type": "by_the_hour"},
            }
        )
    assert exc.value.param == "recurring[usage_type]"

    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.subscriptions.create(
            {"customer": "cus_x", "items": [{"price": "price_x", "colour": "red"}]}
        )
    assert exc.value.code == "parameter_unknown" and exc.value.param == "items[0][colour]"


# --------------------------------------------------------------------------- meters and prices


def test_meter_rules(client: Client, fake: FakeStripe) -> None:
    meter = create_meter(client)
    assert meter.id.startswith("mtr_") and meter.status == "active"
    assert meter.event_time_window == "hour" and meter.default_aggregation.formula == "sum"

    with pytest.raises(stripe.InvalidRequestError) as exc:
        create_meter(client)
    assert exc.value.param == "event_name" and "already exists" in str(exc.value)

    renamed = client.v1.billing.meters.update(meter.id, {"display_name": "Calls"})
    assert renamed.display_name == "Calls"
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.billing.meters.update(meter.id, {"event_name": "other"})
    assert exc.value.code == "parameter_unknown" and exc.value.param == "event_name"
    assert fake.objects["billing.meter"][meter.id]["event_name"] == "api_calls"

    assert client.v1.billing.meters.deactivate(meter.id).status == "inactive"
    second = create_meter(client)  # the event name is free again
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.billing.meters.reactivate(meter.id)
    client.v1.billing.meters.deactivate(second.id)
    assert client.v1.billing.meters.reactivate(meter.id).status == "active"
    listed = client.v1.billing.meters.list({"status": "inactive"})
    assert [m.id for m in listed.data] == [second.id]


def test_metered_price_needs_active_meter(client: Client, fake: FakeStripe) -> None:
    product = client.v1.products.create({"name": "API"})
    base: dict[str, Any] = {"product": product.id, "currency": "usd", "unit_amount_decimal": "0.25"}

    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.prices.create(
            {**base, "recurring": {"interval": "month", "usage_type": "metered"}}
        )
    assert exc.value.param == "recurring[meter]"

    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.prices.create(
            {**base, "recurring": {"interval": "month", "usage_type": "metered", "meter": "mtr_x"}}
        )
    assert exc.value.code == "resource_missing" and exc.value.param == "recurring[meter]"

    meter = create_meter(client)
    client.v1.billing.meters.deactivate(meter.id)
    metered = {"interval": "month", "usage_type": "metered", "meter": meter.id}
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.prices.create({**base, "recurring": metered})
    assert "inactive" in str(exc.value)

    client.v1.billing.meters.reactivate(meter.id)
    price = client.v1.prices.create({**base, "recurring": metered})
    assert price.recurring.meter == meter.id and price.recurring.usage_type == "metered"
    assert price.unit_amount_decimal == Decimal("0.25") and price.type == "recurring"

    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.prices.create({"currency": "usd", "unit_amount": 5})
    assert exc.value.param == "product"
    with pytest.raises(stripe.InvalidRequestError):  # a refused request creates nothing
        client.v1.prices.create(
            {
                "product_data": {"name": "inline"},
                "currency": "usd",
                "unit_amount": 5,
                "recurring": {"interval": "month", "usage_type": "metered"},
            }
        )
    assert [p["name"] for p in fake.objects["product"].values()] == ["API"]
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.prices.create({**base, "product": "prod_missing"})
    assert exc.value.code == "resource_missing"

    found = client.v1.prices.list({"recurring": {"meter": meter.id}, "active": True})
    assert [p.id for p in found.data] == [price.id]


@pytest.mark.parametrize("validate", [True, False])
def test_prices_are_immutable(validate: bool, http_client: stripe.HTTPXClient) -> None:
    with FakeStripe(validate=validate) as fake:
        client = make_client(fake, http_client)
        product = client.v1.products.create({"name": "P"})
        price = client.v1.prices.create(
            {"product": product.id, "currency": "usd", "unit_amount": 7}
        )
        for change in (
            {"unit_amount": 8},
            {"unit_amount_decimal": "8"},
            {"currency": "eur"},
            {"recurring": {"interval": "year"}},
        ):
            with pytest.raises(stripe.InvalidRequestError) as exc:
                client.v1.prices.update(price.id, change)
            assert exc.value.code == "parameter_unknown"
            assert exc.value.param == next(iter(change))
        updated = client.v1.prices.update(
            price.id, {"nickname": "n", "active": False, "metadata": {"a": "1"}}
        )
        assert updated.unit_amount == 7 and updated.active is False and updated.nickname == "n"


# --------------------------------------------------------------------------- meter events


def test_window_keeps_latest_event(client: Client, fake: FakeStripe, clock: Clock) -> None:
    meter = create_meter(client)
    cus = client.v1.customers.create({}).id
    window = int(clock.now) - int(clock.now) % HOUR - HOUR
    send(client, cus, "10", window)
    send(client, cus, "4.5", window + 120)  # same hour: replaces, not adds
    send(client, cus, "7", window + HOUR)  # current hour
    assert fake.billed_value(meter.id, cus, window) == Decimal("4.5")
    assert fake.billed_windows(meter.id) == {
        (cus, window): Decimal("4.5"),
        (cus, window + HOUR): Decimal("7"),
    }
    assert fake.billed_total(meter.id, cus) == Decimal("11.5")
    assert fake.billed_value(meter.id, cus, window - HOUR) is None
    assert [e["payload"]["value"] for e in fake.meter_events] == ["10", "4.5", "7"]
    assert all(e["api"] == "v1" for e in fake.meter_events)

    summaries = client.v1.billing.meters.event_summaries.list(
        meter.id,
        {
            "customer": cus,
            "start_time": window,
            "end_time": window + 2 * HOUR,
            "value_grouping_window": "hour",
        },
    )
    assert [(s.start_time, s.aggregated_value) for s in summaries.data] == [
        (window, 4.5),
        (window + HOUR, 7),
    ]

    # a raw meter (no event_time_window) sums its events
    raw = create_meter(client, event_name="raw_calls", event_time_window=None)
    send(client, cus, "2", window, event_name="raw_calls")
    send(client, cus, "3", window + 60, event_name="raw_calls")
    assert fake.billed_value(raw.id, cus, window) == Decimal(5)

    # cancelling the latest event of a window brings back the one before it
    client.v1.billing.meter_event_adjustments.create(
        {"event_name": "api_calls", "type": "cancel", "cancel": {"identifier": "w2"}}
    )
    send(client, cus, "1", window + 300, identifier="w2")
    assert fake.billed_value(meter.id, cus, window) == Decimal(1)
    adj = client.v1.billing.meter_event_adjustments.create(
        {"event_name": "api_calls", "type": "cancel", "cancel": {"identifier": "w2"}}
    )
    assert adj.status == "complete"
    assert fake.billed_value(meter.id, cus, window) == Decimal("4.5")


def test_payload_rules(client: Client, clock: Clock) -> None:
    create_meter(client)
    ts = int(clock.now)
    with pytest.raises(stripe.InvalidRequestError) as exc:
        send(client, "cus_1", "1", ts, event_name="nope")
    assert exc.value.code == "no_meter"
    with pytest.raises(stripe.InvalidRequestError) as exc:
        send(client, "cus_1", "ten", ts)
    assert exc.value.param == "payload[value]"
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.billing.meter_events.create(
            {"event_name": "api_calls", "payload": {"value": "1"}, "timestamp": ts}
        )
    assert exc.value.param == "payload[stripe_customer_id]"
    generated = client.v1.billing.meter_events.create(
        {"event_name": "api_calls", "payload": {"stripe_customer_id": "cus_1", "value": "1"}}
    )
    assert generated.identifier and generated.timestamp == ts


def test_identifier_dedupe_for_24_hours(client: Client, fake: FakeStripe, clock: Clock) -> None:
    meter = create_meter(client)
    cus = new_customer(client)
    ts = int(clock.now) - HOUR
    send(client, cus, "5", ts, identifier="evt-1")
    with pytest.raises(stripe.InvalidRequestError) as exc:
        send(client, cus, "6", ts, identifier="evt-1")
    err = exc.value
    assert err.http_status == 400
    assert err.json_body == {
        "error": {
            "message": "An event already exists with identifier evt-1.",
            "type": "invalid_request_error",
        }
    }
    assert err.headers is not None and err.headers["Stripe-Should-Retry"] == "false"
    assert fake.billed_value(meter.id, cus, ts) == Decimal(5)

    clock.advance(23 * HOUR)
    with pytest.raises(stripe.InvalidRequestError):
        send(client, cus, "6", int(clock.now), identifier="evt-1")
    clock.advance(2 * HOUR)  # 25 h after the first one
    send(client, cus, "6", int(clock.now), identifier="evt-1")
    assert len(fake.meter_events) == 2


def test_timestamp_limits(client: Client, fake: FakeStripe, clock: Clock) -> None:
    meter = create_meter(client)
    cus = new_customer(client)
    now = int(clock.now)
    with pytest.raises(stripe.InvalidRequestError) as exc:
        send(client, cus, "1", now - 35 * DAY - 1)
    assert exc.value.code == "timestamp_too_far_in_past" and exc.value.param == "timestamp"
    assert "35 days" in str(exc.value)
    with pytest.raises(stripe.InvalidRequestError) as exc:
        send(client, cus, "1", now + 301)
    assert exc.value.code == "timestamp_in_future"
    send(client, cus, "1", now - 35 * DAY + 60)
    send(client, cus, "2", now + 300)
    assert len(fake.billed_windows(meter.id)) == 2


# --------------------------------------------------------------------------- faults


def test_rate_limit_and_server_errors(
    fake: FakeStripe, http_client: stripe.HTTPXClient, no_backoff: None
) -> None:
    retrying = make_client(fake, http_client, max_network_retries=3)
    plain = make_client(fake, http_client)

    fake.rate_limit_next(2, should_retry=True)
    assert retrying.v1.customers.create({"name": "a"}).name == "a"
    assert fake.count("POST", "/v1/customers") == 3

    fake.rate_limit_next(1, should_retry=False)
    with pytest.raises(stripe.RateLimitError) as exc:
        retrying.v1.customers.list()
    assert exc.value.http_status == 429 and error_of(exc.value)["code"] == "rate_limit"
    assert exc.value.headers is not None and exc.value.headers["Stripe-Should-Retry"] == "false"

    fake.rate_limit_next(1)  # no header: stripe-python does not retry a 429
    with pytest.raises(stripe.RateLimitError):
        retrying.v1.customers.list()

    fake.fail_next(2, status=500, path_prefix="/v1/customers")
    assert retrying.v1.customers.create({"name": "b"}).name == "b"
    assert len(fake.objects["customer"]) == 2  # the faulted attempts changed nothing
    fake.fail_next(1, status=503)
    with pytest.raises(stripe.APIError) as exc2:
        plain.v1.customers.list()
    assert exc2.value.http_status == 503 and error_of(exc2.value)["type"] == "api_error"

    fake.fail_next(1, path_prefix="/v1/prices")
    assert plain.v1.customers.list().data  # other paths are unaffected
    with pytest.raises(stripe.APIError):  # still armed for /v1/prices
        plain.v1.prices.list()
    assert plain.v1.prices.list().data == []

    fake.fail_next(100, path_prefix="/v1/prices")
    fake.rate_limit_next(100, path_prefix="/v1/prices")
    fake.fail_next(0, path_prefix="/v1/prices")  # n=0 disarms that kind under the prefix
    with pytest.raises(stripe.RateLimitError):
        plain.v1.prices.list()
    fake.reset_faults()
    assert plain.v1.prices.list().data == []


def test_rate_limit_per_second_latency_and_down(fake: FakeStripe, raw: httpx.Client) -> None:
    fake.rate_limit_per_second = 5
    codes = [raw.get("/v1/customers").status_code for _ in range(8)]
    assert codes[:5] == [200] * 5 and set(codes[5:]) == {429}
    fake.rate_limit_per_second = None

    fake.latency = 0.05
    started = time.monotonic()
    raw.get("/v1/customers")
    assert time.monotonic() - started >= 0.05
    fake.latency = 0

    fake.down = True
    with pytest.raises(httpx.TransportError):
        raw.get("/v1/customers")
    fake.down = False
    assert raw.get("/v1/customers").status_code == 200


def test_stripe_unreachable_is_a_connection_error(
    fake: FakeStripe, http_client: stripe.HTTPXClient
) -> None:
    fake.down = True
    with pytest.raises(stripe.APIConnectionError):
        make_client(fake, http_client).v1.customers.list()


# --------------------------------------------------------------------------- idempotency


def test_idempotent_replay(client: Client, fake: FakeStripe, raw: httpx.Client) -> None:
    first = client.v1.customers.create({"name": "a"}, {"idempotency_key": "key-1"})
    again = client.v1.customers.create({"name": "a"}, {"idempotency_key": "key-1"})
    assert first.id == again.id and len(fake.objects["customer"]) == 1
    with pytest.raises(stripe.IdempotencyError):
        client.v1.customers.create({"name": "b"}, {"idempotency_key": "key-1"})

    r1 = raw.post("/v1/customers", data={"name": "c"}, headers={"Idempotency-Key": "key-2"})
    r2 = raw.post("/v1/customers", data={"name": "c"}, headers={"Idempotency-Key": "key-2"})
    assert r2.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in r1.headers
    assert r1.json() == r2.json()

    # a faulted answer is not stored: the retry with the same key really runs
    fake.fail_next(1)
    r3 = raw.post("/v1/customers", data={"name": "d"}, headers={"Idempotency-Key": "key-3"})
    r4 = raw.post("/v1/customers", data={"name": "d"}, headers={"Idempotency-Key": "key-3"})
    assert r3.status_code == 500 and r4.status_code == 200
    assert "Idempotent-Replayed" not in r4.headers


# --------------------------------------------------------------------------- subscriptions


def test_subscriptions(client: Client, fake: FakeStripe) -> None:
    meter = create_meter(client)
    cus = client.v1.customers.create({"email": "a@b.co"})
    product = client.v1.products.create({"name": "API"})
    metered = client.v1.prices.create(
        {
            "product": product.id,
            "currency": "usd",
            "unit_amount": 2,
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
        }
    )
    seat = client.v1.prices.create(
        {
            "product": product.id,
            "currency": "usd",
            "unit_amount": 900,
            "recurring": {"interval": "month"},
        }
    )
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.subscriptions.create(
            {"customer": cus.id, "items": [{"price": metered.id, "quantity": 1}]}
        )
    assert exc.value.param == "items[0][quantity]"
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.subscriptions.create({"customer": "cus_nope", "items": [{"price": seat.id}]})
    assert exc.value.code == "resource_missing" and exc.value.param == "customer"

    sub = client.v1.subscriptions.create(
        {"customer": cus.id, "items": [{"price": metered.id}, {"price": seat.id, "quantity": 3}]}
    )
    items = sub["items"].data
    assert sub.status == "active" and [i.price.id for i in items] == [metered.id, seat.id]
    assert "quantity" not in items[0] and items[1].quantity == 3
    assert set(fake.objects["subscription_item"]) == {i.id for i in items}

    listed = client.v1.subscription_items.list({"subscription": sub.id})
    assert {i.id for i in listed.data} == {i.id for i in items}
    client.v1.subscription_items.delete(items[1].id)
    assert [i.id for i in client.v1.subscriptions.retrieve(sub.id)["items"].data] == [items[0].id]

    canceled = client.v1.subscriptions.cancel(sub.id)
    assert canceled.status == "canceled" and canceled.canceled_at
    assert client.v1.subscriptions.list({"customer": cus.id}).data == []
    assert len(client.v1.subscriptions.list({"status": "canceled"}).data) == 1


# --------------------------------------------------------------------------- v2


def test_v2_session_and_stream(client: Client, fake: FakeStripe, clock: Clock) -> None:
    meter = create_meter(client)
    customers = [new_customer(client) for _ in range(10)]
    session = client.v2.billing.meter_event_session.create()
    assert session.object == "v2.billing.meter_event_session"
    assert session.authentication_token and session.expires_at > session.created
    window = int(clock.now) - int(clock.now) % HOUR - HOUR
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(window))
    events: list[dict[str, Any]] = [
        {
            "event_name": "api_calls",
            "identifier": f"s-{i}",
            "payload": {"stripe_customer_id": customers[i % 10], "value": str(i)},
            "timestamp": stamp,
        }
        for i in range(100)
    ]
    token = session.authentication_token
    client.v2.billing.meter_event_stream.create({"events": events}, {"api_key": token})
    assert len(fake.meter_events) == 100 and {e["api"] for e in fake.meter_events} == {"v2"}
    assert fake.billed_value(meter.id, customers[3], window) == Decimal(93)  # latest of 3 ... 93

    # duplicates are dropped silently (validation is asynchronous), and recorded for inspection
    client.v2.billing.meter_event_stream.create({"events": events[:2]}, {"api_key": token})
    assert len(fake.meter_events) == 100
    assert [e["code"] for e in fake.async_errors] == ["duplicate_meter_event"] * 2

    with pytest.raises(stripe.InvalidRequestError):
        client.v2.billing.meter_event_stream.create(
            {"events": events + events[:1]},
            {"api_key": token},
        )
    with pytest.raises(stripe.AuthenticationError):  # a secret key is not a session token
        client.v2.billing.meter_event_stream.create({"events": events[:1]})

    clock.advance(15 * 60)
    with pytest.raises(stripe.TemporarySessionExpiredError) as exc:
        client.v2.billing.meter_event_stream.create({"events": []}, {"api_key": token})
    assert exc.value.http_status == 401 and exc.value.code == "billing_meter_event_session_expired"

    sync = client.v2.billing.meter_events.create(
        {
            "event_name": "api_calls",
            "payload": {"stripe_customer_id": customers[0], "value": "1"},
            "identifier": "sync-1",
        }
    )
    assert sync.object == "v2.billing.meter_event" and sync.identifier == "sync-1"
    assert fake.meter_events[-1]["api"] == "v2"


def test_v2_sync_meter_event_duplicate(client: Client, clock: Clock) -> None:
    create_meter(client)
    params: dict[str, Any] = {
        "event_name": "api_calls",
        "payload": {"stripe_customer_id": new_customer(client), "value": "1"},
        "identifier": "v2-dup",
    }
    client.v2.billing.meter_events.create(params)
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v2.billing.meter_events.create(params)
    assert exc.value.code == "duplicate_meter_event"
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v2.billing.meter_events.create({**params, "colour": "red"})
    assert exc.value.code == "parameter_unknown"


# --------------------------------------------------------------------------- hooks, concurrency


def test_on_meter_event_callback_and_concurrency(
    client: Client, fake: FakeStripe, clock: Clock
) -> None:
    meter = create_meter(client)
    customers = [new_customer(client) for _ in range(20)]
    seen: list[str] = []
    fake.on_meter_event(lambda event: seen.append(event["identifier"]))
    window = int(clock.now) - int(clock.now) % HOUR - HOUR
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(10):
                send(client, customers[n], str(i), window, identifier=f"c-{n}-{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(seen) == 200 and len(fake.meter_events) == 200
    assert all(fake.billed_value(meter.id, c, window) == 9 for c in customers)
