"""FakeOpenMeter's state file: save_state / load_state keep meters, events, queries and dedupe."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from emulators.openmeter import FakeOpenMeter
from emulators.persist import StateFileError, restore

T0 = datetime(2026, 11, 20, tzinfo=UTC)
QUERIES: list[dict[str, Any]] = [
    {"windowSize": "HOUR", "groupBy": "subject"},
    {"windowSize": "DAY"},
    {"groupBy": ["subject", "region"]},
    {"windowSize": "MINUTE", "subject": "acme"},
]


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def event(event_id: str, subject: str, minutes: int, value: Any, **extra: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "tests",
        "type": extra.pop("type", "api_call"),
        "subject": subject,
        "time": iso(T0 + timedelta(minutes=minutes)),
        "data": {"value": value, "region": extra.pop("region", "eu")},
    }


def results(fake: FakeOpenMeter, slug: str = "api_calls") -> list[Any]:
    """The answers to QUERIES (the meters without a region group use the first two)."""
    out = []
    with httpx.Client(base_url=fake.url, timeout=5) as http:
        for params in QUERIES if slug == "api_calls" else QUERIES[:2]:
            window = {"from": iso(T0), "to": iso(T0 + timedelta(days=2))}
            response = http.get(f"/api/v1/meters/{slug}/query", params={**window, **params})
            assert response.status_code == 200, response.text
            out.append(response.json())
    return out


@pytest.fixture
def fake() -> Iterator[FakeOpenMeter]:
    server = FakeOpenMeter()
    server.add_meter("api_calls", event_type="api_call", group_by={"region": "$.region"})
    server.add_meter("calls_count", aggregation="COUNT", event_type="api_call", value_property=None)
    with server:
        events = [
            event("e1", "acme", 5, 2),
            event("e2", "acme", 65, "0.5", region="us"),
            event("e3", "globex", 1500, 7),
            event("e4", "acme", 10, 3, type="not_metered_yet"),
        ]
        assert httpx.post(server.url + "/api/v1/events", json=events).status_code == 204
        server.ingest(meter="api_calls", subject="initech", time=T0, value=11, event_id="direct-1")
        yield server


def test_round_trip_keeps_meters_queries_and_dedupe(fake: FakeOpenMeter, tmp_path: Path) -> None:
    path = tmp_path / "openmeter.state"
    fake.save_state(str(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    before = results(fake)

    other = FakeOpenMeter()
    assert other.load_state(str(path)) is True
    with other, httpx.Client(base_url=other.url, timeout=5) as http:
        assert other.meter_slugs() == ["api_calls", "calls_count"]
        assert http.get("/api/v1/meters").json() == httpx.get(fake.url + "/api/v1/meters").json()
        assert results(other) == before
        assert results(other, "calls_count") == results(fake, "calls_count")

        # (id, source) pairs seen before the save are still deduplicated
        assert http.post("/api/v1/events", json=[event("e1", "acme", 5, 100)]).status_code == 204
        other.ingest(meter="api_calls", subject="initech", time=T0, value=99, event_id="direct-1")
        assert results(other) == before

        # raw events of a type no meter counted yet still reach a meter added after loading
        other.add_meter("late", event_type="not_metered_yet")
        (row,) = results(other, "late")[1]["data"]
        assert row["value"] == 3

        # new events still aggregate (JSONPath lookups were rebuilt)
        assert http.post("/api/v1/events", json=event("e9", "acme", 6, 4)).status_code == 204
        hourly = results(other)[0]["data"]
        assert {(r["subject"], r["windowStart"]): r["value"] for r in hourly}[
            ("acme", iso(T0))
        ] == 6

    assert FakeOpenMeter().load_state(str(tmp_path / "missing")) is False


def test_corrupt_state_file_is_moved_aside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "openmeter.state"
    path.write_bytes(b"\x80\x05truncated")
    fake = FakeOpenMeter()
    with pytest.raises(StateFileError):
        fake.load_state(str(path))
    assert restore(fake, str(path), name="emulators.openmeter") is False
    assert not path.exists() and (tmp_path / "openmeter.state.bad").exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "openmeter.state.bad" in err
    assert fake.meter_slugs() == []


def test_change_count_moves_with_writes_only(fake: FakeOpenMeter) -> None:
    count = fake.change_count
    results(fake)
    assert fake.change_count == count
    fake.ingest(meter="api_calls", subject="acme", time=T0, value=1)
    assert fake.change_count > count
