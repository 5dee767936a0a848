"""The fake OpenMeter behaves like the spec in emulators/contracts/openmeter/ says."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from emulators.openmeter import FakeOpenMeter

T0 = datetime(2026, 11, 20, tzinfo=UTC)
QUERY = "/api/v1/meters/api_calls/query"


@pytest.fixture
def fake(openmeter_server: FakeOpenMeter) -> FakeOpenMeter:
    """The session's fake OpenMeter (tests/conftest.py), reset, with one meter."""
    openmeter_server.reset()
    openmeter_server.add_meter("api_calls", event_type="api_call")
    return openmeter_server


@pytest.fixture
def http(fake: FakeOpenMeter) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, timeout=5) as client:
        yield client


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def query(
    http: httpx.Client, path: str = QUERY, *, start: datetime, end: datetime, **params: Any
) -> dict[str, Any]:
    response = http.get(path, params={"from": iso(start), "to": iso(end), **params})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


def cloud_event(event_id: str, subject: str, time: datetime, data: Any, **extra: Any) -> dict:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "tests",
        "type": "api_call",
        "subject": subject,
        "time": iso(time),
        "data": data,
        **extra,
    }


def rows(body: dict[str, Any]) -> list[tuple[str, str, str | None, float]]:
    return [(r["windowStart"], r["windowEnd"], r["subject"], r["value"]) for r in body["data"]]


# --- ingestion ------------------------------------------------------------------------------------


def test_post_single_and_batch_cloudevents_are_aggregated_and_deduplicated(fake, http):
    single = cloud_event("e1", "acme", T0 + timedelta(minutes=1), {"value": 2})
    response = http.post(
        "/api/v1/events",
        content=httpx.Request("POST", "/", json=single).content,
        headers={"Content-Type": "application/cloudevents+json"},
    )
    assert response.status_code == 204
    assert response.content == b""
    batch = [
        cloud_event("e1", "acme", T0 + timedelta(minutes=2), {"value": 100}),  # duplicate id+source
        cloud_event("e1", "acme", T0 + timedelta(minutes=3), {"value": 3}, source="other"),
        cloud_event("e2", "acme", T0 + timedelta(minutes=4), {"value": "0.5"}),  # string value
        cloud_event("e3", "globex", T0 + timedelta(minutes=5), {"value": 7}),
        cloud_event("e4", "globex", T0 + timedelta(minutes=6), {"value": 1}, type="other_type"),
    ]
    response = http.post(
        "/api/v1/events",
        content=httpx.Request("POST", "/", json=batch).content,
        headers={"Content-Type": "application/cloudevents-batch+json"},
    )
    assert response.status_code == 204
    body = query(http, start=T0, end=T0 + timedelta(hours=1), groupBy="subject")
    assert {r["subject"]: r["value"] for r in body["data"]} == {"acme": 5.5, "globex": 7}


def test_post_rejects_malformed_events(fake, http):
    bad = cloud_event("e1", "acme", T0, {"value": 1})
    del bad["subject"]
    response = http.post("/api/v1/events", json=bad)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert "subject" in response.json()["detail"]
    response = http.post(
        "/api/v1/events",
        content=b'{"not": "a batch"}',
        headers={"Content-Type": "application/cloudevents-batch+json"},
    )
    assert response.status_code == 400


def test_value_property_paths_and_missing_values(fake, http):
    fake.add_meter("tokens", event_type="prompt", value_property="$.usage.tokens")
    events = [
        cloud_event("p1", "acme", T0, {"usage": {"tokens": 10}}, type="prompt"),
        cloud_event("p2", "acme", T0, {"usage": {}}, type="prompt"),  # no value: not summed
        cloud_event("p3", "acme", T0, {"usage": {"tokens": "2.5"}}, type="prompt"),
    ]
    assert http.post("/api/v1/events", json=events).status_code == 204
    body = query(http, "/api/v1/meters/tokens/query", start=T0, end=T0 + timedelta(hours=1))
    assert rows(body) == [(iso(T0), iso(T0 + timedelta(hours=1)), None, 12.5)]


def test_meter_added_later_sees_events_already_posted(fake, http):
    assert http.post("/api/v1/events", json=cloud_event("x", "acme", T0, {"n": 4}, type="late"))
    fake.add_meter("late_meter", event_type="late", value_property="$.n")
    body = query(http, "/api/v1/meters/late_meter/query", start=T0, end=T0 + timedelta(days=1))
    assert [r["value"] for r in body["data"]] == [4]


# --- windows and boundaries -----------------------------------------------------------------------


def test_hourly_and_daily_windows_per_subject(fake, http):
    for hour, subject, value in [(0, "a", 1), (0, "a", 2), (1, "a", 4), (1, "b", 8), (25, "a", 16)]:
        fake.ingest(
            meter="api_calls", subject=subject, time=T0 + timedelta(hours=hour), value=value
        )
    end = T0 + timedelta(days=2)
    hourly = query(http, start=T0, end=end, windowSize="HOUR", groupBy="subject")
    assert hourly["windowSize"] == "HOUR"
    assert hourly["from"] == iso(T0) and hourly["to"] == iso(end)
    h = lambda n: iso(T0 + timedelta(hours=n))  # noqa: E731
    assert rows(hourly) == [
        (h(0), h(1), "a", 3),
        (h(1), h(2), "a", 4),
        (h(1), h(2), "b", 8),
        (h(25), h(26), "a", 16),
    ]
    daily = query(http, start=T0, end=end, windowSize="DAY", groupBy="subject")
    assert rows(daily) == [(h(0), h(24), "a", 7), (h(0), h(24), "b", 8), (h(24), h(48), "a", 16)]
    total = query(http, start=T0, end=end, groupBy="subject")
    assert "windowSize" not in total
    assert rows(total) == [(h(0), h(48), "a", 23), (h(0), h(48), "b", 8)]
    # without groupBy: one row over all subjects, subject null, groupBy {}
    (row,) = query(http, start=T0, end=end)["data"]
    assert row == {
        "value": 31,
        "windowStart": iso(T0),
        "windowEnd": iso(end),
        "subject": None,
        "groupBy": {},
    }


def test_range_is_half_open(fake, http):
    one = timedelta(hours=1)
    fake.ingest(meter="api_calls", subject="a", time=T0, value=1)  # at `from`: in
    fake.ingest(meter="api_calls", subject="a", time=T0 + one - timedelta(microseconds=1), value=2)
    fake.ingest(meter="api_calls", subject="a", time=T0 + one, value=4)  # at `to`: out
    body = query(http, start=T0, end=T0 + one, windowSize="HOUR", groupBy="subject")
    assert rows(body) == [(iso(T0), iso(T0 + one), "a", 3)]
    # an event on a window boundary opens the next window
    body = query(http, start=T0, end=T0 + 2 * one, windowSize="HOUR", groupBy="subject")
    assert [r["value"] for r in body["data"]] == [3, 4]


def test_unaligned_range_counts_only_events_inside_and_keeps_tumbling_windows(fake, http):
    for minute in (10, 40, 70):
        fake.ingest(
            meter="api_calls", subject="a", time=T0 + timedelta(minutes=minute), value=minute
        )
    start, end = T0 + timedelta(minutes=30), T0 + timedelta(minutes=90)
    body = query(http, start=start, end=end, windowSize="HOUR", groupBy="subject")
    hour = timedelta(hours=1)
    assert rows(body) == [
        (iso(T0), iso(T0 + hour), "a", 40),
        (iso(T0 + hour), iso(T0 + 2 * hour), "a", 70),
    ]
    (row,) = query(http, start=start, end=end, groupBy="subject")["data"]
    assert (row["windowStart"], row["windowEnd"], row["value"]) == (iso(start), iso(end), 110)


def test_only_windows_with_events_are_returned_and_subject_filter(fake, http):
    fake.ingest(meter="api_calls", subject="a", time=T0 + timedelta(hours=3), value=1)
    fake.ingest(meter="api_calls", subject="b", time=T0 + timedelta(hours=5), value=2)
    fake.ingest(meter="api_calls", subject="c", time=T0 + timedelta(hours=5), value=4)
    body = query(
        http,
        start=T0,
        end=T0 + timedelta(days=1),
        windowSize="HOUR",
        subject=["c", "a", "nobody"],
    )
    assert [(r["subject"], r["value"]) for r in body["data"]] == [("a", 1), ("c", 4)]


def test_sums_are_exact_decimals(fake, http):
    for _ in range(10):
        fake.ingest(meter="api_calls", subject="a", time=T0, value=0.1)
    fake.ingest(meter="api_calls", subject="b", time=T0, value=0.1)
    fake.ingest(meter="api_calls", subject="b", time=T0 + timedelta(hours=1), value=0.2)
    body = query(http, start=T0, end=T0 + timedelta(days=1), groupBy="subject")
    assert {r["subject"]: r["value"] for r in body["data"]} == {"a": 1.0, "b": 0.3}
    assert (
        '"value":0.3,'
        in http.get(
            QUERY, params={"from": iso(T0), "to": iso(T0 + timedelta(days=1)), "groupBy": "subject"}
        ).text
    )


# --- aggregations ---------------------------------------------------------------------------------


def test_count_meter_counts_events_whatever_their_value(fake, http):
    fake.add_meter("requests", aggregation="COUNT", event_type="api_call", value_property=None)
    events = [
        cloud_event(f"c{i}", "acme", T0 + timedelta(minutes=i), {"value": i} if i % 2 else {})
        for i in range(5)
    ]
    assert http.post("/api/v1/events", json=events).status_code == 204
    fake.ingest(meter="requests", subject="acme", time=T0 + timedelta(hours=2), value=99)
    path = "/api/v1/meters/requests/query"
    body = query(http, path, start=T0, end=T0 + timedelta(days=1), windowSize="HOUR")
    assert [r["value"] for r in body["data"]] == [5, 1]
    # SUM over the same events skips the ones without a value
    body = query(http, start=T0, end=T0 + timedelta(days=1))
    assert [r["value"] for r in body["data"]] == [4]


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [("SUM", 10), ("COUNT", 4), ("AVG", 2.5), ("MIN", 1), ("MAX", 4), ("LATEST", 3)],
)
def test_other_aggregations(fake, http, aggregation, expected):
    fake.add_meter("m", aggregation=aggregation, event_type="t")
    for minute, value in [(1, 1), (2, 4), (4, 3), (3, 2)]:
        fake.ingest(event_type="t", subject="a", time=T0 + timedelta(minutes=minute), value=value)
    for end in (T0 + timedelta(hours=1), T0 + timedelta(minutes=30)):  # fast and raw paths
        body = query(http, "/api/v1/meters/m/query", start=T0, end=end, groupBy="subject")
        assert [r["value"] for r in body["data"]] == [expected]


def test_unique_count_and_group_by_keys(fake, http):
    fake.add_meter(
        "users",
        aggregation="UNIQUE_COUNT",
        event_type="login",
        value_property="$.user",
        group_by={"region": "$.region"},
    )
    logins = [("u1", "eu"), ("u2", "eu"), ("u1", "eu"), ("u3", "us")]
    events = [
        cloud_event(f"l{i}", "acme", T0, {"user": u, "region": r}, type="login")
        for i, (u, r) in enumerate(logins)
    ]
    assert http.post("/api/v1/events", json=events).status_code == 204
    path = "/api/v1/meters/users/query"
    end = T0 + timedelta(hours=1)
    assert [r["value"] for r in query(http, path, start=T0, end=end)["data"]] == [3]
    body = query(http, path, start=T0, end=end, groupBy=["subject", "region"])
    assert [(r["groupBy"], r["value"]) for r in body["data"]] == [
        ({"region": "eu"}, 2),
        ({"region": "us"}, 1),
    ]
    body = query(http, path, start=T0, end=end, **{"filterGroupBy[region]": "us"})
    assert [r["value"] for r in body["data"]] == [1]


def test_fast_path_matches_a_plain_recomputation(fake, http):
    rng = random.Random(7)
    fake.add_meter("random_meter", event_type="r")
    expected_hourly: dict[tuple[int, str], float] = defaultdict(float)
    batch = []
    for _ in range(3000):
        hour = rng.randrange(72)
        moment = T0 + timedelta(hours=hour, seconds=rng.randrange(3600))
        subject = f"s{rng.randrange(40)}"
        value = rng.randrange(1, 1000) / 100
        batch.append(("random_meter", subject, moment, value))
        expected_hourly[(hour, subject)] += value
    fake.ingest_many(batch)
    path = "/api/v1/meters/random_meter/query"
    start, end = T0 + timedelta(hours=5), T0 + timedelta(hours=50)
    hourly = query(http, path, start=start, end=end, windowSize="HOUR", groupBy="subject")
    got = {
        (
            int((datetime.fromisoformat(r["windowStart"]) - T0).total_seconds()) // 3600,
            r["subject"],
        ): r["value"]
        for r in hourly["data"]
    }
    want = {k: round(v, 2) for k, v in expected_hourly.items() if 5 <= k[0] < 50}
    assert got == pytest.approx(want)
    daily = query(http, path, start=start, end=end, windowSize="DAY", groupBy="subject")
    per_day: dict[tuple[str, str], float] = defaultdict(float)
    for (hour, subject), value in want.items():
        per_day[(iso(T0 + timedelta(days=hour // 24)), subject)] += value
    assert {(r["windowStart"], r["subject"]): r["value"] for r in daily["data"]} == pytest.approx(
        dict(per_day)
    )
    # MINUTE windows go through the raw scan; their sum per subject must agree
    minutely = query(http, path, start=start, end=end, windowSize="MINUTE", groupBy="subject")
    total = query(http, path, start=start, end=end, groupBy="subject")
    per_subject: dict[str, float] = defaultdict(float)
    for r in minutely["data"]:
        per_subject[r["subject"]] += r["value"]
    assert {r["subject"]: r["value"] for r in total["data"]} == pytest.approx(dict(per_subject))


# --- validation -----------------------------------------------------------------------------------


def assert_problem(response: httpx.Response, status: int, text: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["type"] and body["title"]
    assert text in body["detail"]


@pytest.mark.parametrize(
    ("params", "text"),
    [
        ({"bogus": "1"}, 'unknown query parameter "bogus"'),
        ({"window_size": "HOUR"}, "unknown query parameter"),
        ({"windowSize": "WEEK"}, 'parameter "windowSize"'),
        ({"windowSize": "hour"}, "allowed values"),
        ({"from": "2026-11-20"}, 'parameter "from"'),
        ({"to": "yesterday"}, 'parameter "to"'),
        ({"from": "2026-11-20 00:00:00Z"}, 'parameter "from"'),
        ({"to": "2026-11-19T00:00:00Z"}, "from must be before to"),
        ({"to": "2026-11-20T00:00:00Z"}, "from and to cannot be equal"),
        ({"groupBy": "model"}, "invalid group by: model"),
        ({"filterGroupBy[model]": "x"}, "invalid group by filter: model"),
        ({"windowTimeZone": "Mars/Olympus"}, "invalid time zone"),
        ({"clientId": "x" * 37}, "clientId"),
    ],
)
def test_query_validation_errors_are_problem_json(fake, http, params, text):
    base = {"from": "2026-11-20T00:00:00Z", "to": "2026-11-21T00:00:00Z"}
    assert_problem(http.get(QUERY, params={**base, **params}), 400, text)


def test_query_accepts_every_documented_parameter(fake, http):
    params = {
        "from": "2026-11-20T01:00:00+01:00",
        "to": "2026-11-21T00:00:00.000Z",
        "windowSize": "DAY",
        "windowTimeZone": "UTC",
        "subject": ["a", "b"],
        "groupBy": "subject",
        "clientId": "abc",
    }
    assert http.get(QUERY, params=params).status_code == 200


def test_other_time_zones_and_month_windows(fake, http):
    fake.ingest(meter="api_calls", subject="a", time=datetime(2026, 11, 19, 23, 30, tzinfo=UTC))
    fake.ingest(meter="api_calls", subject="a", time=datetime(2026, 11, 20, 12, tzinfo=UTC))
    start, end = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    body = query(http, start=start, end=end, windowSize="DAY", windowTimeZone="Europe/Budapest")
    # 23:30 UTC is already Nov 20 in Budapest (UTC+1): both events fall in one local day
    assert rows(body) == [("2026-11-19T23:00:00Z", "2026-11-20T23:00:00Z", None, 2)]
    body = query(http, start=start, end=end, windowSize="MONTH")
    assert rows(body) == [(iso(start), iso(end), None, 2)]


def test_meters_endpoints(fake, http):
    fake.add_meter("tokens", aggregation="COUNT", event_type="prompt", group_by={"m": "$.model"})
    listed = http.get("/api/v1/meters").json()
    assert [m["slug"] for m in listed] == ["api_calls", "tokens"]
    meter = http.get("/api/v1/meters/tokens").json()
    assert meter["slug"] == "tokens"
    assert meter["aggregation"] == "COUNT"
    assert meter["eventType"] == "prompt"
    assert meter["groupBy"] == {"m": "$.model"}
    assert len(meter["id"]) == 26 and meter["createdAt"].endswith("Z")
    assert http.get(f"/api/v1/meters/{meter['id']}").json()["slug"] == "tokens"
    assert_problem(http.get("/api/v1/meters/unknown_meter"), 404, "unknown_meter")
    assert_problem(http.get("/api/v1/meters/unknown_meter/query"), 404, "unknown_meter")
    assert_problem(http.get("/api/v1/meters/Not-A-Slug"), 400, "meterIdOrSlug")
    assert_problem(http.get("/api/v1/meters", params={"limit": "3"}), 400, "limit")
    fake.ingest(meter="tokens", subject="zed", time=T0)
    assert http.get("/api/v1/meters/tokens/subjects").json() == ["zed"]


# --- auth, faults, bookkeeping --------------------------------------------------------------------


def test_token_is_required_when_set():
    with FakeOpenMeter(token="s3cret-token") as fake:
        fake.add_meter("api_calls")
        with httpx.Client(base_url=fake.url) as http:
            assert_problem(http.get("/api/v1/meters"), 401, "token")
            wrong = http.get("/api/v1/meters", headers={"Authorization": "Bearer nope"})
            assert_problem(wrong, 401, "token")
            good = http.get("/api/v1/meters", headers={"Authorization": "Bearer s3cret-token"})
            assert good.status_code == 200
        assert fake.request_headers[-1]["authorization"] == "Bearer s3cret-token"


def test_fail_next_latency_down_and_request_log(fake, http):
    fake.fail_next(2, status=503)
    assert http.get("/api/v1/meters").status_code == 503
    assert_problem(http.get("/api/v1/meters"), 503, "injected")
    assert http.get("/api/v1/meters").status_code == 200
    fake.fail_next(1, status=429)
    throttled = http.get("/api/v1/meters")
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "0"

    fake.latency = 0.2
    started = datetime.now(UTC)
    assert http.get("/api/v1/meters").status_code == 200
    assert datetime.now(UTC) - started >= timedelta(seconds=0.2)
    fake.latency = 0

    fake.down = True
    with pytest.raises(httpx.TransportError):
        http.get("/api/v1/meters")
    fake.down = False
    assert http.get("/api/v1/meters/api_calls").status_code == 200

    assert fake.count("/api/v1/meters") == 7
    assert fake.count("/api/v1/meters/api_calls") == 1
    assert fake.requests[-1] == ("GET", "/api/v1/meters/api_calls")
