"""The fake OpenMeter's customers (emulators/contracts/openmeter/openapi.v1-subset.yaml): create,
get, list, and meter queries filtered by customer (``filterCustomerId``)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from emulators.openmeter import FakeOpenMeter

T0 = datetime(2026, 11, 20, tzinfo=UTC)
ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")
CUSTOMERS = "/api/v1/customers"


@pytest.fixture
def http(fake_openmeter: FakeOpenMeter) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake_openmeter.url, timeout=5) as client:
        yield client


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"]
    return body


def query(http: httpx.Client, slug: str = "api_calls", **params: Any) -> list[dict[str, Any]]:
    """The rows of a query over T0's day (whole hours: the bucketed path for SUM/COUNT/AVG)."""
    window = {"from": iso(T0), "to": iso(T0 + timedelta(days=1))}
    response = http.get(f"/api/v1/meters/{slug}/query", params={**window, **params})
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def per_customer_and_subject(rows: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    """Rows grouped by customer and subject, summed over their windows."""
    totals: dict[tuple[str, str], float] = {}
    for row in rows:
        key = (row["customerId"], row["subject"])
        totals[key] = totals.get(key, 0) + row["value"]
    return totals


def by_customer(rows: list[dict[str, Any]]) -> dict[str, float]:
    assert all(row["subject"] is None for row in rows)
    values = {row["customerId"]: row["value"] for row in rows}
    assert len(values) == len(rows)
    return values


# --- create, get, list ----------------------------------------------------------------------------


def test_created_customer_is_returned_by_id_and_by_key(fake_openmeter, http):
    response = http.post(
        CUSTOMERS,
        json={
            "name": "ACME Inc.",
            "key": "acme",
            "primaryEmail": "billing@acme.test",
            "currency": "EUR",
            "metadata": {"crm": "42"},
            "usageAttribution": {"subjectKeys": ["acme-api", "acme-batch"]},
        },
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert ULID.match(created["id"])
    assert created["name"] == "ACME Inc." and created["key"] == "acme"
    assert created["primaryEmail"] == "billing@acme.test"
    assert created["currency"] == "EUR" and created["metadata"] == {"crm": "42"}
    assert created["usageAttribution"] == {"subjectKeys": ["acme-api", "acme-batch"]}
    assert created["createdAt"] == created["updatedAt"]
    assert datetime.fromisoformat(created["createdAt"]).tzinfo is not None

    for id_or_key in (created["id"], "acme"):
        got = http.get(f"{CUSTOMERS}/{id_or_key}")
        assert got.status_code == 200, got.text
        assert got.json() == {**created, "subscriptions": []}  # expanded by default; none here
    assert fake_openmeter.customers() == [created]


def test_add_customer_needs_a_key_or_subject_keys(fake_openmeter):
    only_key = fake_openmeter.add_customer(name="Globex", key="globex")
    assert only_key["usageAttribution"] == {"subjectKeys": []} and "primaryEmail" not in only_key
    with_email = fake_openmeter.add_customer(
        name="Initech", subject_keys=["initech"], email="ap@initech.test"
    )
    assert with_email["primaryEmail"] == "ap@initech.test" and "key" not in with_email
    with pytest.raises(ValueError, match=r"either key or usageAttribution\.subjectKeys"):
        fake_openmeter.add_customer(name="Nobody")
    assert [c["name"] for c in fake_openmeter.customers()] == ["Globex", "Initech"]


def test_invalid_create_bodies_are_refused_with_400(http):
    bodies: list[Any] = [
        {"key": "no-name"},
        {"name": "", "key": "empty-name"},
        {"name": "x" * 257, "key": "long-name"},
        {"name": "No attribution"},
        {"name": "Empty attribution", "usageAttribution": {"subjectKeys": []}},
        {"name": "Empty subject", "usageAttribution": {"subjectKeys": [""]}},
        {"name": "Empty key", "key": ""},
        {"name": "Bad currency", "key": "c", "currency": "eur"},
        ["not", "an", "object"],
    ]
    for body in bodies:
        problem(http.post(CUSTOMERS, json=body), 400)
    problem(http.post(CUSTOMERS, content=b"name=x", headers={"Content-Type": "text/plain"}), 400)
    problem(http.post(CUSTOMERS, content=b"{", headers={"Content-Type": "application/json"}), 400)
    assert http.get(CUSTOMERS).json()["totalCount"] == 0


def test_a_taken_key_or_subject_key_is_a_conflict(fake_openmeter, http):
    fake_openmeter.add_customer(name="ACME", key="acme", subject_keys=["s1", "s2"])
    key_taken = http.post(CUSTOMERS, json={"name": "Other", "key": "acme"})
    assert "acme" in problem(key_taken, 409)["detail"]
    subject_taken = http.post(
        CUSTOMERS, json={"name": "Other", "usageAttribution": {"subjectKeys": ["s3", "s2"]}}
    )
    assert "s2" in problem(subject_taken, 409)["detail"]
    with pytest.raises(ValueError, match="already"):
        fake_openmeter.add_customer(name="Other", subject_keys=["s1"])
    # nothing was created, and s3 stays free
    assert [c["name"] for c in fake_openmeter.customers()] == ["ACME"]
    fake_openmeter.add_customer(name="Other", subject_keys=["s3"])


def test_unknown_customer_is_404(fake_openmeter, http):
    fake_openmeter.add_customer(name="ACME", key="acme")
    for id_or_key in ("globex", "01G65Z755AFWAKHE12NY0CQ9FH"):
        assert id_or_key in problem(http.get(f"{CUSTOMERS}/{id_or_key}"), 404)["detail"]
    problem(http.get(f"{CUSTOMERS}/{'k' * 257}"), 400)
    problem(http.get(f"{CUSTOMERS}/acme", params={"expand": "invoices"}), 400)
    problem(http.delete(f"{CUSTOMERS}/acme"), 405)
    with pytest.raises(KeyError):
        fake_openmeter.set_subject_keys("globex", ["s1"])


def test_list_is_paginated_and_ordered(fake_openmeter, http):
    names = ["delta", "alpha", "echo", "charlie", "bravo"]
    made = [fake_openmeter.add_customer(name=n, key=f"key-{n}") for n in names]

    first = http.get(CUSTOMERS).json()
    assert (first["totalCount"], first["page"], first["pageSize"]) == (5, 1, 100)
    assert [c["name"] for c in first["items"]] == sorted(names)  # OpenMeter's default: by name
    assert all(c["subscriptions"] == [] for c in first["items"])

    page = http.get(CUSTOMERS, params={"page": 2, "pageSize": 2}).json()
    assert (page["totalCount"], page["page"], page["pageSize"]) == (5, 2, 2)
    assert [c["name"] for c in page["items"]] == ["charlie", "delta"]
    last = http.get(CUSTOMERS, params={"page": 3, "pageSize": 2}).json()
    assert [c["name"] for c in last["items"]] == ["echo"]
    beyond = http.get(CUSTOMERS, params={"page": 4, "pageSize": 2}).json()
    assert beyond["items"] == [] and beyond["totalCount"] == 5

    desc = http.get(CUSTOMERS, params={"order": "DESC"}).json()["items"]
    assert [c["name"] for c in desc] == sorted(names, reverse=True)
    created = http.get(CUSTOMERS, params={"orderBy": "createdAt"}).json()["items"]
    assert [c["id"] for c in created] == [c["id"] for c in made]
    ids = http.get(CUSTOMERS, params={"orderBy": "id"}).json()["items"]
    assert [c["id"] for c in ids] == sorted(c["id"] for c in made)

    assert http.get(CUSTOMERS, params={"pageSize": 1000}).status_code == 200
    for params in (
        {"pageSize": 1001},
        {"pageSize": 0},
        {"page": 0},
        {"page": "one"},
        {"order": "UP"},
        {"orderBy": "key"},
        {"includeDeleted": "maybe"},
        {"limit": 10},
    ):
        problem(http.get(CUSTOMERS, params=params), 400)


def test_list_filters_are_case_insensitive_partial_matches(fake_openmeter, http):
    fake_openmeter.add_customer(name="ACME Inc.", key="acme-eu", subject_keys=["acme-api"])
    fake_openmeter.add_customer(
        name="Globex", key="globex", subject_keys=["globex-1", "globex-2"], email="ap@globex.test"
    )
    fake_openmeter.add_customer(name="Initech", subject_keys=["initech"])

    def names(**params: Any) -> list[str]:
        body = http.get(CUSTOMERS, params=params).json()
        assert body["totalCount"] == len(body["items"])
        return [c["name"] for c in body["items"]]

    assert names(key="ACME") == ["ACME Inc."]
    assert names(name="e") == ["ACME Inc.", "Globex", "Initech"]
    assert names(name="inc") == ["ACME Inc."]
    assert names(subject="GLOBEX-2") == ["Globex"]
    assert names(subject="api") == ["ACME Inc."]
    assert names(primaryEmail="globex") == ["Globex"]
    assert names(key="globex", name="acme") == []
    assert names(planKey="pro") == []  # no customer has a subscription in the emulator
    assert names(includeDeleted="true", expand="subscriptions") == [
        "ACME Inc.",
        "Globex",
        "Initech",
    ]


# --- meter queries by customer --------------------------------------------------------------------


def usage(fake: FakeOpenMeter, slug: str, events: dict[str, list[float]]) -> None:
    """Ingest each subject's values one minute apart, from T0 + 1 h."""
    for subject, values in events.items():
        for i, value in enumerate(values):
            moment = T0 + timedelta(hours=1, minutes=i)
            fake.ingest(meter=slug, subject=subject, time=moment, value=value)


@pytest.fixture
def acme_and_globex(fake_openmeter: FakeOpenMeter) -> tuple[str, str]:
    """A SUM meter; ACME with three subjects, Globex with one plus usage under its key; usage of
    a subject nobody has."""
    fake = fake_openmeter
    fake.add_meter("api_calls", event_type="api_call")
    acme = fake.add_customer(name="ACME", key="acme", subject_keys=["a1", "a2", "a3"])["id"]
    globex = fake.add_customer(name="Globex", key="globex", subject_keys=["g1"])["id"]
    usage(fake, "api_calls", {"a1": [1, 2], "a2": [10], "a3": [100, 200], "g1": [1000]})
    usage(fake, "api_calls", {"globex": [5000], "stray": [7]})
    return acme, globex


@pytest.mark.parametrize(
    "shape",
    [{}, {"windowSize": "DAY"}, {"windowSize": "MINUTE"}, {"windowTimeZone": "Europe/Berlin"}],
    ids=["whole-range", "bucketed-day", "raw-minute", "raw-time-zone"],
)
def test_filter_customer_id_sums_each_customers_subjects(acme_and_globex, http, shape):
    acme, globex = acme_and_globex

    def totals(**params: Any) -> dict[str, float]:
        totals: dict[str, float] = {}
        for row in query(http, **shape, **params):
            assert row["subject"] is None and row["groupBy"] == {}
            totals[row["customerId"]] = totals.get(row["customerId"], 0) + row["value"]
        return totals

    assert totals(filterCustomerId=acme) == {acme: 313}
    # the customer's key counts as one of its subjects
    assert totals(filterCustomerId=[acme, globex]) == {acme: 313, globex: 6000}
    assert totals(filterCustomerId=[globex, globex], groupBy="customer_id") == {globex: 6000}
    # filterCustomerId and subject both apply; subject also groups by subject
    rows = query(http, **shape, filterCustomerId=[acme, globex], subject=["a3", "g1", "stray"])
    assert per_customer_and_subject(rows) == {(acme, "a3"): 300, (globex, "g1"): 1000}


def test_filter_customer_id_with_group_by_subject_gives_a_row_per_customer_and_subject(
    acme_and_globex, http
):
    acme, globex = acme_and_globex
    for shape in ({}, {"windowSize": "MINUTE"}):
        rows = query(http, **shape, filterCustomerId=[acme, globex], groupBy="subject")
        assert per_customer_and_subject(rows) == {
            (acme, "a1"): 3,
            (acme, "a2"): 10,
            (acme, "a3"): 300,
            (globex, "g1"): 1000,
            (globex, "globex"): 5000,
        }


def test_rows_carry_customer_id_only_when_grouped_by_customer(acme_and_globex, http):
    for params in ({}, {"groupBy": "subject"}, {"windowSize": "MINUTE"}):
        rows = query(http, **params)
        assert rows and all("customerId" not in row for row in rows)
    assert sum(row["value"] for row in query(http)) == 6320  # everyone's usage, stray included


def test_a_moved_subject_takes_its_past_usage_to_its_new_customer(
    fake_openmeter, acme_and_globex, http
):
    acme, globex = acme_and_globex
    with pytest.raises(ValueError, match="already"):  # a3 is still ACME's
        fake_openmeter.set_subject_keys(globex, ["g1", "a3"])
    fake_openmeter.set_subject_keys(acme, ["a1", "a2"])
    fake_openmeter.set_subject_keys("globex", ["g1", "a3"])  # by key

    both = [acme, globex]
    assert by_customer(query(http, filterCustomerId=both)) == {acme: 13, globex: 6300}
    kolkata = query(http, filterCustomerId=both, windowSize="HOUR", windowTimeZone="Asia/Kolkata")
    assert sum(r["value"] for r in kolkata if r["customerId"] == globex) == 6300  # raw events

    moved = fake_openmeter.customers()[1]
    assert moved["usageAttribution"] == {"subjectKeys": ["g1", "a3"]}
    assert datetime.fromisoformat(moved["updatedAt"]) >= datetime.fromisoformat(moved["createdAt"])
    assert http.get(f"{CUSTOMERS}/{globex}").json()["usageAttribution"] == {
        "subjectKeys": ["g1", "a3"]
    }
    assert [c["name"] for c in http.get(CUSTOMERS, params={"subject": "a3"}).json()["items"]] == [
        "Globex"
    ]
    # a customer without a key keeps at least one subject key
    keyless = fake_openmeter.add_customer(name="Keyless", subject_keys=["k1"])["id"]
    with pytest.raises(ValueError, match="either key"):
        fake_openmeter.set_subject_keys(keyless, [])
    fake_openmeter.set_subject_keys(acme, [])  # ACME keeps its key
    assert by_customer(query(http, filterCustomerId=acme)) == {}


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [
        ("SUM", 23),
        ("COUNT", 5),
        ("AVG", 4.6),  # over the 5 events, not the mean of the subjects' means (5.5)
        ("MIN", 1),
        ("MAX", 10),
        ("UNIQUE_COUNT", 4),  # 1, 2, 8, 10: not 2 + 2 + 1
        ("LATEST", 2),  # the latest event of all the customer's subjects
    ],
)
def test_customer_aggregates_are_computed_over_its_events(
    fake_openmeter, http, aggregation, expected
):
    fake = fake_openmeter
    fake.add_meter("m", aggregation=aggregation, event_type="m")
    customer = fake.add_customer(name="ACME", subject_keys=["x", "y", "z"])["id"]
    fake.ingest(meter="m", subject="x", time=T0 + timedelta(minutes=1), value=1)
    fake.ingest(meter="m", subject="x", time=T0 + timedelta(minutes=5), value=2)
    fake.ingest(meter="m", subject="y", time=T0 + timedelta(minutes=2), value=2)
    fake.ingest(meter="m", subject="y", time=T0 + timedelta(minutes=3), value=8)
    fake.ingest(meter="m", subject="z", time=T0 + timedelta(minutes=4), value=10)
    for shape in ({}, {"windowSize": "DAY"}, {"windowSize": "MINUTE"}):
        rows = query(http, "m", **shape, filterCustomerId=customer)
        if shape.get("windowSize") == "MINUTE":
            assert len(rows) == 5
            continue
        assert [(r["customerId"], r["subject"], r["value"]) for r in rows] == [
            (customer, None, pytest.approx(expected))
        ]


def test_filter_customer_id_limits(fake_openmeter, acme_and_globex, http):
    acme, _ = acme_and_globex
    path = "/api/v1/meters/api_calls/query"
    unknown = "01G65Z755AFWAKHE12NY0CQ9FH"
    missing = http.get(path, params={"filterCustomerId": [acme, unknown]})
    assert unknown in problem(missing, 404)["detail"]
    # ids only: a customer's key is not accepted
    problem(http.get(path, params={"filterCustomerId": "acme"}), 404)
    many = [fake_openmeter.add_customer(name=f"c{i}", key=f"c{i}")["id"] for i in range(99)]
    assert by_customer(query(http, filterCustomerId=[acme, *many])) == {acme: 313}
    too_many = http.get(path, params={"filterCustomerId": [acme, *many, acme]})
    assert "filterCustomerId" in problem(too_many, 400)["detail"]
    no_filter = http.get(path, params={"groupBy": "customer_id"})
    assert "customer filter is required" in problem(no_filter, 400)["detail"]


# --- auth, faults, reset, state -------------------------------------------------------------------


def test_customers_obey_the_token_and_injected_faults(fake_openmeter, http):
    fake_openmeter.token = "secret"
    try:
        problem(http.get(CUSTOMERS), 401)
        problem(http.post(CUSTOMERS, json={"name": "ACME", "key": "acme"}), 401)
        auth = {"Authorization": "Bearer secret"}
        fake_openmeter.fail_next(1, status=503)
        problem(http.post(CUSTOMERS, json={"name": "ACME", "key": "acme"}, headers=auth), 503)
        assert fake_openmeter.customers() == []
        created = http.post(CUSTOMERS, json={"name": "ACME", "key": "acme"}, headers=auth)
        assert created.status_code == 201
        assert http.get(f"{CUSTOMERS}/acme", headers=auth).status_code == 200
        assert fake_openmeter.count(CUSTOMERS) == 5
    finally:
        fake_openmeter.token = None


def test_reset_forgets_customers(fake_openmeter):
    fake_openmeter.add_customer(name="ACME", key="acme", subject_keys=["a1"])
    fake_openmeter.reset()
    assert fake_openmeter.customers() == []
    fake_openmeter.add_customer(name="ACME again", key="acme", subject_keys=["a1"])


def test_customers_are_kept_in_the_state_file(tmp_path: Path):
    path = str(tmp_path / "openmeter.state")
    before = FakeOpenMeter()
    acme = before.add_customer(name="ACME", key="acme", subject_keys=["a1"])
    before.save_state(path)
    after = FakeOpenMeter()
    assert after.load_state(path)
    assert after.customers() == [acme]
    with pytest.raises(ValueError, match="already"):
        after.add_customer(name="Other", subject_keys=["a1"])
