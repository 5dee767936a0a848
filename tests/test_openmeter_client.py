"""The OpenMeter client against the fake OpenMeter (no Django settings needed)."""

from __future__ import annotations

import logging
import socket
import sys
import types
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from billing.integrations.openmeter import (
    MeterInfo,
    OpenMeterClient,
    OpenMeterError,
    OpenMeterNotFound,
    UsageRow,
)
from emulators.openmeter import FakeOpenMeter

T0 = datetime(2026, 11, 20, tzinfo=UTC)
HOUR = timedelta(hours=1)
TOKEN = "om_s3cr3t_token_value"


@pytest.fixture
def fake(openmeter_server: FakeOpenMeter) -> FakeOpenMeter:
    """The session's fake OpenMeter (tests/conftest.py), reset, with one meter."""
    openmeter_server.reset()
    openmeter_server.add_meter("api_calls", event_type="api_call")
    return openmeter_server


@pytest.fixture
def client(fake: FakeOpenMeter) -> Iterator[OpenMeterClient]:
    with OpenMeterClient(base_url=fake.url, max_retries=3, backoff=0.01, timeout=5) as om:
        yield om


def query_params(path: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(path).query, keep_blank_values=True)


# --- rows -----------------------------------------------------------------------------------------


def test_rows_are_typed_with_exact_decimals(fake, client):
    fake.ingest(meter="api_calls", subject="acme", time=T0 + timedelta(minutes=5), value=0.1)
    fake.ingest(meter="api_calls", subject="acme", time=T0 + timedelta(minutes=6), value=0.2)
    fake.ingest(meter="api_calls", subject="globex", time=T0 + HOUR, value=5)
    fake.ingest(meter="api_calls", subject="acme", time=T0 + 2 * HOUR, value=Decimal("1.25"))

    rows = list(client.query(slug="api_calls", start=T0, end=T0 + 3 * HOUR))

    assert rows == [
        UsageRow("acme", T0, T0 + HOUR, Decimal("0.3")),
        UsageRow("globex", T0 + HOUR, T0 + 2 * HOUR, Decimal("5")),
        UsageRow("acme", T0 + 2 * HOUR, T0 + 3 * HOUR, Decimal("1.25")),
    ]
    first = rows[0]
    assert isinstance(first.value, Decimal) and str(first.value) == "0.3"
    assert first.window_start.tzinfo is not None and first.window_start.utcoffset() == timedelta(0)
    assert str(rows[1].value) == "5"


def test_query_sends_the_documented_parameters(fake, client):
    list(
        client.query(
            slug="api_calls",
            start=T0 + timedelta(hours=13),
            end=T0 + timedelta(hours=15),
            window_size="hour",
            subjects=["acme", "globex"],
        )
    )
    (method, path) = fake.requests[-1]
    assert method == "GET"
    assert urlsplit(path).path == "/api/v1/meters/api_calls/query"
    assert query_params(path) == {
        "from": ["2026-11-20T13:00:00Z"],
        "to": ["2026-11-20T15:00:00Z"],
        "windowSize": ["HOUR"],
        "windowTimeZone": ["UTC"],
        "groupBy": ["subject"],
        "subject": ["acme", "globex"],
    }
    assert "authorization" not in fake.request_headers[-1]


def test_a_query_by_customer_aggregates_its_subjects_together(fake, client):
    """A unique count over two subjects is not the sum of theirs: by customer, OpenMeter reads
    all the customer's subjects as one (filterCustomerId, no groupBy=subject)."""
    fake.add_meter("users", aggregation="UNIQUE_COUNT", event_type="login")
    for subject, user in (("acme", 1), ("acme-bot", 1), ("acme-bot", 2), ("globex", 1)):
        fake.ingest(meter="users", subject=subject, time=T0 + timedelta(minutes=user), value=user)
    acme = fake.add_customer(name="Acme", key="acme", subject_keys=["acme", "acme-bot"])
    rows = list(
        client.query(
            slug="users", start=T0, end=T0 + HOUR, window_size=None, customers=[acme["id"]]
        )
    )
    assert [(row.customer_id, row.subject, row.value) for row in rows] == [
        (acme["id"], "", Decimal(2))
    ]
    params = query_params(fake.requests[-1][1])
    assert params["filterCustomerId"] == [acme["id"]] and "groupBy" not in params
    with pytest.raises(ValueError, match="at most 100 customers"):
        client.query(slug="users", start=T0, end=T0 + HOUR, customers=[f"c{n}" for n in range(101)])


def test_non_utc_inputs_are_sent_as_utc(fake, client):
    cet = datetime(2026, 11, 20, 15, tzinfo=timezone(timedelta(hours=1)))
    list(client.query(slug="api_calls", start=cet, end=cet + HOUR, window_size="DAY"))
    params = query_params(fake.requests[-1][1])
    assert params["from"] == ["2026-11-20T14:00:00Z"]
    assert params["windowSize"] == ["DAY"]


def test_totals_without_window_are_one_request(fake, client):
    for hour in range(48):
        fake.ingest(meter="api_calls", subject="acme", time=T0 + hour * HOUR, value=2)
    fake.ingest(meter="api_calls", subject="globex", time=T0, value=1)
    end = T0 + 48 * HOUR
    rows = list(client.query(slug="api_calls", start=T0, end=end, window_size=None, chunk=6 * HOUR))
    assert rows == [
        UsageRow("acme", T0, end, Decimal("96")),
        UsageRow("globex", T0, end, Decimal("1")),
    ]
    assert fake.count("/api/v1/meters/api_calls/query") == 1
    assert "windowSize" not in query_params(fake.requests[-1][1])


def test_chunking_gives_the_same_rows_with_one_request_per_chunk(fake, client):
    batch = [
        ("api_calls", f"customer-{s}", T0 + timedelta(hours=h, minutes=7 * s), (s + 1) * 0.1)
        for h in range(48)
        for s in range(5)
    ]
    fake.ingest_many(batch)
    end = T0 + 48 * HOUR
    whole = list(client.query(slug="api_calls", start=T0, end=end))
    assert fake.count("/api/v1/meters/api_calls/query") == 1
    assert len(whole) == 48 * 5

    chunked = list(client.query(slug="api_calls", start=T0, end=end, chunk=6 * HOUR))
    assert fake.count("/api/v1/meters/api_calls/query") == 1 + 8
    assert chunked == whole

    # the last chunk is cut at `end`; chunks are aligned to `start`
    fake.requests.clear()
    odd = list(client.query(slug="api_calls", start=T0, end=T0 + 10 * HOUR, chunk=4 * HOUR))
    assert odd == [r for r in whole if r.window_start < T0 + 10 * HOUR]
    ranges = [(query_params(p)["from"][0], query_params(p)["to"][0]) for _, p in fake.requests]
    assert ranges == [
        ("2026-11-20T00:00:00Z", "2026-11-20T04:00:00Z"),
        ("2026-11-20T04:00:00Z", "2026-11-20T08:00:00Z"),
        ("2026-11-20T08:00:00Z", "2026-11-20T10:00:00Z"),
    ]


def test_query_is_lazy_and_streams_chunk_by_chunk(fake, client):
    fake.ingest(meter="api_calls", subject="a", time=T0, value=1)
    fake.ingest(meter="api_calls", subject="a", time=T0 + 5 * HOUR, value=1)
    rows = client.query(slug="api_calls", start=T0, end=T0 + 6 * HOUR, chunk=2 * HOUR)
    assert fake.count("/api/v1/meters") == 0
    assert next(rows).window_start == T0
    assert fake.count("/api/v1/meters") == 1
    assert [r.window_start for r in rows] == [T0 + 5 * HOUR]
    assert fake.count("/api/v1/meters") == 3


def test_bad_arguments_raise_value_error_before_any_request(fake, client):
    with pytest.raises(ValueError, match="before"):
        client.query(slug="api_calls", start=T0, end=T0)
    with pytest.raises(ValueError, match="window_size"):
        client.query(slug="api_calls", start=T0, end=T0 + HOUR, window_size="WEEK")
    with pytest.raises(ValueError, match="whole number"):
        client.query(slug="api_calls", start=T0, end=T0 + HOUR, chunk=timedelta(minutes=90))
    with pytest.raises(ValueError, match="whole number"):
        client.query(slug="api_calls", start=T0, end=T0 + HOUR, window_size="DAY", chunk=6 * HOUR)
    assert fake.requests == []


def test_get_meter(fake, client):
    fake.add_meter("tokens", aggregation="COUNT", event_type="prompt", value_property=None)
    assert client.get_meter("tokens") == MeterInfo(
        slug="tokens", aggregation="COUNT", event_type="prompt", window_size=None
    )
    assert [m.slug for m in client.list_meters()] == ["api_calls", "tokens"]


# --- errors and retries ---------------------------------------------------------------------------


def test_unknown_meter_is_not_found(fake, client):
    with pytest.raises(OpenMeterNotFound) as info:
        client.get_meter("no_such_meter")
    assert str(info.value) == (
        "OpenMeter meter 'no_such_meter': HTTP 404: meter not found: no_such_meter"
    )
    assert info.value.status == 404 and info.value.slug == "no_such_meter"
    with pytest.raises(OpenMeterNotFound):
        list(client.query(slug="no_such_meter", start=T0, end=T0 + HOUR))
    assert fake.count("/api/v1/meters/no_such_meter") == 2  # no retries on 404


def test_retries_5xx_then_succeeds(fake, client):
    fake.ingest(meter="api_calls", subject="a", time=T0, value=3)
    fake.fail_next(2, status=500)
    rows = list(client.query(slug="api_calls", start=T0, end=T0 + HOUR))
    assert rows == [UsageRow("a", T0, T0 + HOUR, Decimal("3"))]
    assert fake.count("/api/v1/meters/api_calls/query") == 3


def test_retries_429_honouring_retry_after(fake, client):
    fake.fail_next(1, status=429, retry_after=0.05)
    sleeps: list[float] = []
    client._sleep = sleeps.append
    assert list(client.query(slug="api_calls", start=T0, end=T0 + HOUR)) == []
    assert sleeps == [0.05]
    assert fake.count("/api/v1/meters/api_calls/query") == 2


def test_backoff_grows_exponentially(fake):
    om = OpenMeterClient(base_url=fake.url, max_retries=3, backoff=1.0)
    sleeps: list[float] = []
    om._sleep = sleeps.append
    fake.fail_next(10, status=502)
    with pytest.raises(OpenMeterError):
        om.get_meter("api_calls")
    assert len(sleeps) == 3
    for sleep, base in zip(sleeps, (1, 2, 4), strict=True):
        assert base <= sleep <= base * 1.1
    om.close()


def test_gives_up_after_max_retries_with_a_clear_message(fake, client):
    fake.fail_next(100, status=503)
    with pytest.raises(OpenMeterError) as info:
        list(client.query(slug="api_calls", start=T0, end=T0 + HOUR))
    assert str(info.value) == (
        "OpenMeter meter 'api_calls': HTTP 503: injected failure (503) (gave up after 4 attempts)"
    )
    assert info.value.status == 503
    assert fake.count("/api/v1/meters/api_calls/query") == 4  # 1 + max_retries


def test_400_detail_surfaces_without_retry(fake, client):
    fake.fail_next(1, status=400)
    with pytest.raises(OpenMeterError) as info:
        list(client.query(slug="api_calls", start=T0, end=T0 + HOUR))
    assert not isinstance(info.value, OpenMeterNotFound)
    assert str(info.value) == "OpenMeter meter 'api_calls': HTTP 400: injected failure (400)"
    assert fake.count("/api/v1/meters/api_calls/query") == 1


def test_400_problem_detail_from_the_server():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            400,
            json={
                "type": "about:blank",
                "title": "Bad Request",
                "status": 400,
                "detail": "invalid group by: subject2",
            },
            headers={"Content-Type": "application/problem+json"},
        )

    with (
        OpenMeterClient(
            base_url="http://openmeter.test", transport=httpx.MockTransport(handler)
        ) as om,
        pytest.raises(OpenMeterError) as info,
    ):
        list(om.query(slug="api_calls", start=T0, end=T0 + HOUR))
    assert str(info.value) == "OpenMeter meter 'api_calls': HTTP 400: invalid group by: subject2"
    assert info.value.detail == "invalid group by: subject2"


def test_rows_without_subject_are_skipped_and_bad_bodies_are_errors():
    answers = iter(
        [
            {
                "data": [
                    {
                        "value": 1.5,
                        "windowStart": "2026-11-20T00:00:00.000000000Z",
                        "windowEnd": "2026-11-20T01:00:00+00:00",
                        "subject": "a",
                        "groupBy": {},
                    },
                    {
                        "value": 9,
                        "windowStart": "2026-11-20T00:00:00Z",
                        "windowEnd": "2026-11-20T01:00:00Z",
                        "subject": None,
                        "groupBy": {},
                    },
                ]
            },
            {"rows": []},
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=next(answers))

    with OpenMeterClient(
        base_url="http://openmeter.test", transport=httpx.MockTransport(handler)
    ) as om:
        assert list(om.query(slug="m", start=T0, end=T0 + HOUR)) == [
            UsageRow("a", T0, T0 + HOUR, Decimal("1.5"))
        ]
        with pytest.raises(OpenMeterError, match="unexpected response"):
            list(om.query(slug="m", start=T0, end=T0 + HOUR))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"<html>busy</html>", "expected JSON"),
        # Rows are read one at a time: a broken end still fails the whole answer.
        (
            b'{"data":[{"value":1,"windowStart":"2026-11-20T00:00:00Z",'
            b'"windowEnd":"2026-11-20T01:00:00Z","subject":"a"}],"to":',
            "expected JSON",
        ),
        (b'{"windowSize":"HOUR"}', 'expected a MeterQueryResult with "data"'),
        (b'{"data":{"value":1}}', 'expected a MeterQueryResult with "data"'),
    ],
)
def test_a_broken_answer_fails_the_query_with_what_was_expected(body: bytes, expected: str):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    with OpenMeterClient(
        base_url="http://openmeter.test", transport=httpx.MockTransport(handler)
    ) as om:
        with pytest.raises(OpenMeterError, match=expected):
            list(om.query(slug="m", start=T0, end=T0 + HOUR))


# --- the token ------------------------------------------------------------------------------------


def test_token_is_sent_as_bearer_and_never_shown(caplog):
    caplog.set_level(logging.DEBUG)
    with FakeOpenMeter(token=TOKEN) as fake:
        fake.add_meter("api_calls")
        fake.ingest(meter="api_calls", subject="a", time=T0, value=1)
        with OpenMeterClient(base_url=fake.url, token=TOKEN, backoff=0.01, max_retries=1) as om:
            assert len(list(om.query(slug="api_calls", start=T0, end=T0 + HOUR))) == 1
            assert fake.request_headers[-1]["authorization"] == f"Bearer {TOKEN}"
            assert TOKEN not in repr(om)

            fake.fail_next(5, status=500)
            with pytest.raises(OpenMeterError) as failed:
                list(om.query(slug="api_calls", start=T0, end=T0 + HOUR))
            assert TOKEN not in str(failed.value)

        wrong = "om_wrong_token_value"
        with OpenMeterClient(base_url=fake.url, token=wrong, backoff=0.01) as om:
            with pytest.raises(OpenMeterError) as denied:
                om.get_meter("api_calls")
            assert str(denied.value).startswith("OpenMeter meter 'api_calls': HTTP 401: ")
            assert wrong not in str(denied.value)
    assert TOKEN not in caplog.text
    assert "retry 1 of 1" in caplog.text


def test_a_token_echoed_by_the_server_is_redacted():
    def handler(request: httpx.Request) -> httpx.Response:
        auth = request.headers["Authorization"]
        return httpx.Response(401, json={"detail": f"bad credentials: {auth}"})

    with (
        OpenMeterClient(
            base_url="http://openmeter.test", token=TOKEN, transport=httpx.MockTransport(handler)
        ) as om,
        pytest.raises(OpenMeterError) as info,
    ):
        om.get_meter("api_calls")
    assert TOKEN not in str(info.value) and TOKEN not in (info.value.detail or "")
    assert "[redacted]" in str(info.value)


# --- the network ----------------------------------------------------------------------------------


def test_server_down_raises_after_retries(fake, client):
    fake.down = True
    with pytest.raises(OpenMeterError) as info:
        list(client.query(slug="api_calls", start=T0, end=T0 + HOUR))
    message = str(info.value)
    assert message.startswith("OpenMeter meter 'api_calls': connection error: ")
    assert message.endswith("(gave up after 4 attempts)")
    assert info.value.status is None
    assert fake.count("/api/v1/meters/api_calls/query") == 4


def test_connection_refused_raises_after_retries():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    om = OpenMeterClient(base_url=f"http://127.0.0.1:{port}", max_retries=2, backoff=0.01)
    with pytest.raises(OpenMeterError, match=r"connection error: ConnectError.*after 3 attempts"):
        om.get_meter("api_calls")
    om.close()


def test_timeouts_are_retried_then_reported(fake):
    fake.latency = 0.3
    with OpenMeterClient(base_url=fake.url, timeout=0.05, max_retries=1, backoff=0.01) as om:
        with pytest.raises(OpenMeterError, match=r"'api_calls': timed out after 0.05s"):
            om.get_meter("api_calls")
    assert fake.count("/api/v1/meters/api_calls") == 2


# --- settings -------------------------------------------------------------------------------------


def test_from_settings_reads_the_openmeter_settings(monkeypatch):
    settings = types.SimpleNamespace(
        OPENMETER_URL="http://openmeter.local:8888/", OPENMETER_API_TOKEN="", OPENMETER_TIMEOUT=7
    )
    conf = types.ModuleType("django.conf")
    conf.settings = settings  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "django.conf", conf)
    with OpenMeterClient.from_settings() as om:
        assert om.base_url == "http://openmeter.local:8888"
        assert om._token is None
        assert om._timeout == 7.0
    settings.OPENMETER_API_TOKEN = TOKEN
    with OpenMeterClient.from_settings() as om:
        assert om._http.headers["Authorization"] == f"Bearer {TOKEN}"
