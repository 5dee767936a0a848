"""The Stripe emulator's read-only page (``/``, ``/_emulator/state.json``) and its state file."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe

from emulators import persist
from emulators.persist import AutoSaver, StateFileError, restore
from emulators.stripe import FakeStripe
from emulators.stripe.page import WINDOWS_SHOWN
from emulators.stripe.snapshot import money, utc
from emulators.stripe.state import FORMAT, LATER_ATTRS, STATE_ATTRS
from tests.emulators.receiver import Receiver
from tests.emulators.support import Clock

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

KEY = "sk_test_fakeStripePage1234"
HOUR = 3600


@pytest.fixture
def clock() -> Clock:
    now = time.time()
    return Clock(now - now % HOUR - 3 * HOUR)  # an hour boundary, three hours ago


@pytest.fixture
def fake(clock: Clock) -> Iterator[FakeStripe]:
    server = FakeStripe()
    server.clock = clock
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http_client() -> stripe.HTTPXClient:
    return stripe.HTTPXClient(allow_sync_methods=True)


def client_for(fake: FakeStripe, http_client: stripe.HTTPXClient) -> Any:
    return stripe.StripeClient(
        KEY, base_addresses={"api": fake.url, "meter_events": fake.url}, http_client=http_client
    )


def send(client: Any, customer: str, value: str, ts: int, identifier: str | None = None) -> None:
    params: dict[str, Any] = {
        "event_name": "api_calls",
        "payload": {"stripe_customer_id": customer, "value": value},
        "timestamp": ts,
    }
    if identifier:
        params["identifier"] = identifier
    client.v1.billing.meter_events.create(params)


def build(fake: FakeStripe, clock: Clock, http_client: stripe.HTTPXClient) -> dict[str, Any]:
    """A customer with a metered subscription from the clock's hour on, and three windows:
    one before the period (not invoiced), 1000 in the first hour, 1469 (latest of two) in the
    second."""
    client = client_for(fake, http_client)
    start = int(clock.now)
    customer = client.v1.customers.create(
        {"name": "Acme <Inc>", "email": "billing@acme.test", "metadata": {"tier": "gold"}}
    )
    meter = client.v1.billing.meters.create(
        {
            "display_name": "API calls",
            "event_name": "api_calls",
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
            "value_settings": {"event_payload_key": "value"},
            "event_time_window": "hour",
        }
    )
    price = client.v1.prices.create(
        {
            "currency": "usd",
            "unit_amount_decimal": "0.5",
            "product_data": {"name": "API"},
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
        }
    )
    sub = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}]})
    send(client, customer.id, "250", start - HOUR, identifier="before")
    send(client, customer.id, "1000", start, identifier="first")
    clock.now = start + HOUR + 60
    send(client, customer.id, "300", start + HOUR, identifier="second-a")
    send(client, customer.id, "1469", start + HOUR, identifier="second-b")
    return {"client": client, "customer": customer, "meter": meter, "price": price, "sub": sub}


def test_page_lists_customers_meters_windows_and_open_invoice(
    fake: FakeStripe, clock: Clock, http_client: stripe.HTTPXClient
) -> None:
    world = build(fake, clock, http_client)
    requests_before = len(fake.requests)
    start = int(world["sub"].items.data[0].current_period_start)
    for path in ("/", "/_emulator/", "/_emulator"):
        response = httpx.get(fake.url + path)  # no Authorization header
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8"
    html = response.text
    assert world["customer"].id in html
    assert "Acme &lt;Inc&gt;" in html and "Acme <Inc>" not in html
    assert "billing@acme.test" in html and "tier = gold" in html
    assert world["meter"].id in html and "API calls" in html and "api_calls" in html
    assert world["sub"].id in html and world["price"].id in html
    assert f'<td class="t">{utc(start + HOUR)}</td><td class="num">1469</td>' in html
    assert utc(start - HOUR) in html  # the window before the period is listed...
    # ...but not billed: (1000 + 1469) * 0.5 minor units = 1234.5 -> 1235 (half up)
    assert "12.35 USD" in html and "2469" in html
    assert len(fake.requests) == requests_before  # the page is not an API request

    fake.down = True  # the page stays readable while the API hangs up
    assert httpx.get(fake.url + "/").status_code == 200
    fake.down = False
    assert httpx.get(fake.url + "/v1/customers").status_code == 401  # the API still checks


def test_state_json_matches_billed_windows_and_invoice(
    fake: FakeStripe, clock: Clock, http_client: stripe.HTTPXClient
) -> None:
    world = build(fake, clock, http_client)
    response = httpx.get(fake.url + "/_emulator/state.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    data = response.json()
    meter_id = world["meter"].id
    windows = {(w["customer"], w["window_start"]): Decimal(w["value"]) for w in data["windows"]}
    assert windows == fake.billed_windows(meter_id)
    assert {w["meter"] for w in data["windows"]} == {meter_id}
    starts = [w["window_start"] for w in data["windows"]]
    assert starts == sorted(starts, reverse=True)

    assert [c["id"] for c in data["customers"]] == [world["customer"].id]
    assert data["customers"][0]["metadata"] == {"tier": "gold"}
    assert data["meters"][0]["event_time_window"] == "hour"
    (sub,) = data["subscriptions"]
    assert sub["status"] == "active" and sub["items"][0]["meter"] == meter_id
    (invoice,) = data["invoices"]
    assert invoice["subscription"] == world["sub"].id
    assert (invoice["amount"], invoice["display"]) == (1235, "12.35 USD")
    (line,) = invoice["lines"]
    assert (line["quantity"], line["unit_amount_decimal"]) == ("2469", "0.5")


def test_long_usage_lists_are_capped(fake: FakeStripe, clock: Clock) -> None:
    fake.clock = time.time  # windows over the past 80 hours
    client = client_for(fake, stripe.HTTPXClient(allow_sync_methods=True))
    client.v1.billing.meters.create(
        {
            "display_name": "API calls",
            "event_name": "api_calls",
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
            "value_settings": {"event_payload_key": "value"},
            "event_time_window": "hour",
        }
    )
    now = int(time.time())
    hours = WINDOWS_SHOWN + 8
    customer = client.v1.customers.create({"name": "Many"}).id
    for h in range(hours):
        send(client, customer, str(h), now - now % HOUR - h * HOUR)
    html = httpx.get(fake.url + "/").text
    assert html.count('<td class="num">') == WINDOWS_SHOWN
    assert "8 older windows not shown." in html
    assert len(httpx.get(fake.url + "/_emulator/state.json").json()["windows"]) == hours


def test_page_shows_recent_events_and_webhook_deliveries(
    fake: FakeStripe, clock: Clock, http_client: stripe.HTTPXClient
) -> None:
    world = build(fake, clock, http_client)
    receiver = Receiver()
    try:
        fake.add_webhook_destination(receiver.url, secret="whsec_page", mode="thin")
        send(world["client"], "cus_nobody", "5", int(clock.now), identifier="nobody-1")
        state = httpx.get(fake.url + "/_emulator/state.json").json()
        thin = [e for e in state["events"] if e["thin"]]
        assert state["pending_error_reports"] == 1 and thin == []
        assert "1 asynchronous meter event errors not reported yet" in httpx.get(fake.url).text
        (report,) = fake.flush_error_reports()
        assert fake.deliver_pending(timeout=5)
    finally:
        receiver.close()
    state = httpx.get(fake.url + "/_emulator/state.json").json()
    (shown,) = [e for e in state["events"] if e["thin"]]
    assert shown == {
        "id": report["id"],
        "type": "v1.billing.meter.error_report_triggered",
        "thin": True,
        "created": clock.now,
        "related": world["meter"].id,
    }
    (delivery,) = state["deliveries"]
    assert (delivery["event_id"], delivery["status"], delivery["url"]) == (
        report["id"],
        200,
        receiver.url,
    )
    html = httpx.get(fake.url + "/").text
    assert "Recent events" in html and report["id"] in html and receiver.url in html


def test_money_formatting() -> None:
    assert money(1234, "usd") == "12.34 USD"
    assert money(5, "eur") == "0.05 EUR"
    assert money(1200, "jpy") == "1200 JPY"
    assert money(1500, "kwd") == "1.500 KWD"
    assert utc(1795179600) == "2026-11-20 13:00"


# --------------------------------------------------------------------------- state file


def test_save_and_load_keep_objects_windows_and_dedupe(
    fake: FakeStripe, clock: Clock, http_client: stripe.HTTPXClient, tmp_path: Path
) -> None:
    world = build(fake, clock, http_client)
    raw_headers = {"Authorization": f"Bearer {KEY}", "Idempotency-Key": "idem-1"}
    first = httpx.post(f"{fake.url}/v1/customers", data={"name": "Idem"}, headers=raw_headers)
    path = tmp_path / "stripe.state"
    fake.save_state(str(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["stripe.state"]  # no temporary file left

    other = FakeStripe()
    other.clock = clock
    assert other.load_state(str(path)) is True
    with other:
        assert other.objects == fake.objects
        meter_id = world["meter"].id
        assert other.billed_windows(meter_id) == fake.billed_windows(meter_id)
        sub = other.objects["subscription"][world["sub"].id]
        si = sub["items"]["data"][0]
        assert si is other.objects["subscription_item"][si["id"]]  # shared, as before saving
        assert si["price"] is other.objects["price"][world["price"].id]

        client = client_for(other, http_client)
        with pytest.raises(stripe.InvalidRequestError, match="identifier second-b"):
            send(client, world["customer"].id, "1", int(clock.now), identifier="second-b")
        again = httpx.post(f"{other.url}/v1/customers", data={"name": "Idem"}, headers=raw_headers)
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json()["id"] == first.json()["id"]
        invoice = httpx.get(other.url + "/_emulator/state.json").json()["invoices"][0]
        assert invoice["display"] == "12.35 USD"

        # the loaded state keeps working: a newer event replaces the second window's value
        send(client, world["customer"].id, "1", int(clock.now) - 60, identifier="second-c")
        assert other.billed_value(meter_id, world["customer"].id, int(clock.now)) == Decimal(1)

    assert FakeStripe().load_state(str(tmp_path / "missing")) is False


def test_state_keeps_emitted_events_and_pending_error_reports(
    fake: FakeStripe, clock: Clock, http_client: stripe.HTTPXClient, tmp_path: Path
) -> None:
    world = build(fake, clock, http_client)
    emitted = fake.emit_event("customer.updated", {"id": world["customer"].id})
    send(world["client"], "cus_nobody", "5", int(clock.now), identifier="nobody-1")
    path = tmp_path / "stripe.state"
    fake.save_state(str(path))

    other = FakeStripe()
    other.clock = clock
    assert other.load_state(str(path)) is True
    assert other.events == fake.events and other.events[-1] == emitted
    (report,) = other.flush_error_reports()  # the error noted before saving is reported now
    assert report["related_object"]["id"] == world["meter"].id
    sample = report["data"]["reason"]["error_types"][0]["sample_errors"][0]
    assert sample["request"]["identifier"] == "nobody-1"

    # a state file written before events existed still loads
    older = {name: getattr(fake, name) for name in STATE_ATTRS if name not in LATER_ATTRS}
    persist.write_atomic(str(path), persist.dump(FORMAT, older))
    oldest = FakeStripe()
    assert oldest.load_state(str(path)) is True
    assert oldest.events == [] and oldest.flush_error_reports() == []
    assert oldest.objects == fake.objects


def test_unreadable_state_file_is_moved_aside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "stripe.state"
    path.write_bytes(b"not a pickle")
    fake = FakeStripe()
    with pytest.raises(StateFileError):
        fake.load_state(str(path))
    assert restore(fake, str(path), name="emulators.stripe") is False
    assert not path.exists()
    assert (tmp_path / "stripe.state.bad").read_bytes() == b"not a pickle"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("emulators.stripe: ignoring state file")
    assert all(not objs for objs in fake.objects.values())

    # a state file of the other emulator is refused the same way
    from emulators.openmeter import FakeOpenMeter

    FakeOpenMeter().save_state(str(path))
    with pytest.raises(StateFileError, match=r"emulators\.openmeter/1"):
        fake.load_state(str(path))


def test_autosaver_saves_changes_and_on_stop(
    fake: FakeStripe, clock: Clock, http_client: stripe.HTTPXClient, tmp_path: Path
) -> None:
    path = tmp_path / "auto.state"
    saver = AutoSaver(fake, str(path), interval=0.05, name="test").start()
    httpx.get(fake.url + "/")  # reads change nothing
    client = client_for(fake, http_client)
    client.v1.customers.list()
    time.sleep(0.2)
    assert not path.exists()
    customer = client.v1.customers.create({"name": "Saved"})
    deadline = time.monotonic() + 5
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists()
    saver.stop()
    first = FakeStripe()
    first.load_state(str(path))
    assert set(first.objects["customer"]) == {customer.id}

    # with a long interval, only stop() saves
    saver = AutoSaver(fake, str(path), interval=60.0, name="test").start()
    late = client.v1.customers.create({"name": "Late"})
    saver.stop()
    loaded = FakeStripe()
    loaded.load_state(str(path))
    assert set(loaded.objects["customer"]) == {customer.id, late.id}
