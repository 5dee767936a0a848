"""Meter event summaries in the Stripe emulator follow Stripe's rules: required and aligned
times, pagination, only accepted events, the latest event per pre-aggregated window, and a delay
before new events show (Stripe's summaries are eventually consistent)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import stripe

from emulators.stripe import FakeStripe
from tests.emulators.support import Clock

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

KEY = "sk_test_fakeStripeSummaries1"
HOUR = 3600
DAY = 86400


@pytest.fixture
def clock(stripe_server: FakeStripe) -> Clock:
    stripe_server.reset()
    now = time.time()
    c = Clock(now - now % DAY + 12 * HOUR + 1800)  # 12:30 UTC today
    stripe_server.clock = c
    return c


@pytest.fixture
def fake(stripe_server: FakeStripe, clock: Clock) -> FakeStripe:
    return stripe_server


@pytest.fixture
def client(fake: FakeStripe) -> Any:
    return stripe.StripeClient(
        KEY,
        base_addresses={"api": fake.url, "meter_events": fake.url},
        http_client=stripe.HTTPXClient(allow_sync_methods=True),
    )


@pytest.fixture
def world(client: Any) -> tuple[Any, str]:
    meter = client.v1.billing.meters.create(
        {
            "display_name": "API calls",
            "event_name": "api_calls",
            "default_aggregation": {"formula": "sum"},
            "event_time_window": "hour",
        }
    )
    return meter, client.v1.customers.create({}).id


def send(client: Any, customer: str, value: str, ts: int, identifier: str) -> None:
    client.v1.billing.meter_events.create(
        {
            "event_name": "api_calls",
            "payload": {"stripe_customer_id": customer, "value": value},
            "timestamp": ts,
            "identifier": identifier,
        }
    )


def summaries(client: Any, meter_id: str, customer: str, start: int, end: int, **kw: Any) -> Any:
    params = {"customer": customer, "start_time": start, "end_time": end, **kw}
    return client.v1.billing.meters.event_summaries.list(meter_id, params)


def values(listed: Any) -> list[tuple[int, float]]:
    return [(s.start_time, s.aggregated_value) for s in listed.data]


def test_times_are_required_ordered_and_aligned(
    client: Any, world: tuple[Any, str], clock: Clock
) -> None:
    meter, cus = world
    day = int(clock.now) - int(clock.now) % DAY
    cases: list[tuple[dict[str, Any], str]] = [
        ({"customer": cus, "start_time": day}, "end_time"),
        ({"start_time": day, "end_time": day + HOUR}, "customer"),
        ({"customer": cus, "start_time": day + 30, "end_time": day + HOUR}, "start_time"),
        ({"customer": cus, "start_time": day + HOUR, "end_time": day + HOUR}, "start_time"),
        (
            {"customer": cus, "start_time": day + 60, "end_time": day + HOUR},
            "start_time",
        ),
        (
            {"customer": cus, "start_time": day, "end_time": day + 2 * HOUR},
            "end_time",
        ),
    ]
    groupings = [None, None, None, None, "hour", "day"]
    for (params, param), grouping in zip(cases, groupings, strict=True):
        if grouping:
            params["value_grouping_window"] = grouping
        with pytest.raises(stripe.InvalidRequestError) as exc:
            client.v1.billing.meters.event_summaries.list(meter.id, params)
        assert exc.value.http_status == 400 and exc.value.param == param, params
    # minute-aligned without grouping, hour-aligned with it: fine
    assert values(summaries(client, meter.id, cus, day + 60, day + 120)) == [(day + 60, 0)]
    assert summaries(client, meter.id, cus, day, day + DAY, value_grouping_window="day").data == []


def test_pagination_across_pages(client: Any, world: tuple[Any, str], clock: Clock) -> None:
    meter, cus = world
    first = int(clock.now) - int(clock.now) % HOUR - 24 * HOUR
    for h in range(25):
        send(client, cus, str(h + 1), first + h * HOUR + 60, f"h{h}")
    end = first + 25 * HOUR
    page = summaries(client, meter.id, cus, first, end, value_grouping_window="hour", limit=10)
    assert len(page.data) == 10 and page.has_more
    assert page.url == f"/v1/billing/meters/{meter.id}/event_summaries"
    rest = summaries(
        client,
        meter.id,
        cus,
        first,
        end,
        value_grouping_window="hour",
        starting_after=page.data[-1].id,
    )
    assert rest.data[0].start_time == first + 10 * HOUR
    every = list(
        summaries(
            client, meter.id, cus, first, end, value_grouping_window="hour", limit=7
        ).auto_paging_iter()
    )
    assert [(s.start_time, s.aggregated_value) for s in every] == [
        (first + h * HOUR, h + 1) for h in range(25)
    ]
    assert len({s.id for s in every}) == 25
    total = summaries(client, meter.id, cus, first, end)
    assert values(total) == [(first, sum(range(1, 26)))]


def test_latest_event_per_window_and_only_accepted_events(
    client: Any, fake: FakeStripe, world: tuple[Any, str], clock: Clock
) -> None:
    meter, cus = world
    hour = int(clock.now) - int(clock.now) % HOUR - HOUR
    send(client, cus, "10", hour + 60, "app-1")
    send(client, cus, "4", hour + 120, "app-2")  # same window, received later: wins
    send(client, cus, "5", hour + HOUR, "app-3")
    grouped = {"value_grouping_window": "hour"}
    assert values(summaries(client, meter.id, cus, hour, hour + 2 * HOUR, **grouped)) == [
        (hour, 4),
        (hour + HOUR, 5),
    ]

    # written behind the app's back: another event for the same window replaces the value
    send(client, cus, "1", hour + 1800, "someone-else")
    assert values(summaries(client, meter.id, cus, hour, hour + HOUR)) == [(hour, 1)]

    # cancelled: the window falls back to the event before it
    client.v1.billing.meter_event_adjustments.create(
        {"event_name": "api_calls", "type": "cancel", "cancel": {"identifier": "someone-else"}}
    )
    assert values(summaries(client, meter.id, cus, hour, hour + HOUR)) == [(hour, 4)]

    # rejected asynchronously (no such customer): answered 200, never summarized nor billed
    send(client, "cus_ghost", "99", hour + 60, "ghost-1")
    assert values(summaries(client, meter.id, "cus_ghost", hour, hour + HOUR)) == [(hour, 0)]
    assert values(summaries(client, meter.id, cus, hour, hour + HOUR)) == [(hour, 4)]
    assert [e["code"] for e in fake.async_errors] == ["meter_event_customer_not_found"]
    assert all(c == cus for c, _ in fake.billed_windows(meter.id))

    # a raw meter sums all its events
    raw = client.v1.billing.meters.create(
        {"display_name": "Raw", "event_name": "raw", "default_aggregation": {"formula": "sum"}}
    )
    for i, v in enumerate(("2", "3")):
        client.v1.billing.meter_events.create(
            {
                "event_name": "raw",
                "payload": {"stripe_customer_id": cus, "value": v},
                "timestamp": hour + i,
            }
        )
    assert values(summaries(client, raw.id, cus, hour, hour + HOUR)) == [(hour, 5)]


def test_summary_delay(client: Any, fake: FakeStripe, world: tuple[Any, str], clock: Clock) -> None:
    meter, cus = world
    hour = int(clock.now) - int(clock.now) % HOUR - HOUR
    fake.summary_delay_seconds = 60
    send(client, cus, "10", hour + 60, "d-1")
    assert values(summaries(client, meter.id, cus, hour, hour + HOUR)) == [(hour, 0)]
    clock.now += 61
    assert values(summaries(client, meter.id, cus, hour, hour + HOUR)) == [(hour, 10)]

    send(client, cus, "3", hour + 120, "d-2")  # a replacement shows only after the delay too
    assert values(summaries(client, meter.id, cus, hour, hour + HOUR)) == [(hour, 10)]
    assert fake.billed_value(meter.id, cus, hour) == 3  # what Stripe keeps changes at once
    clock.now += 60
    assert values(summaries(client, meter.id, cus, hour, hour + HOUR)) == [(hour, 3)]
