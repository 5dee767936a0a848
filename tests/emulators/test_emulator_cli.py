"""`python -m emulators.stripe|openmeter --port 0 --state PATH`: the state survives restarts."""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
KEY = {"Authorization": "Bearer sk_test_cli1234"}


@contextmanager
def serve(module: str, *args: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Run the emulator; yield its URL and process; SIGTERM it and check it exits cleanly."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--port", "0", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        line = ""
        while not line and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.1)
            if ready:
                line = proc.stdout.readline()
                break
            assert proc.poll() is None, proc.communicate()[1]
        assert " listening on http://" in line, line
        yield line.rsplit(" ", 1)[1].strip(), proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, proc.communicate()[1]


def test_stripe_state_survives_restart(tmp_path: Path) -> None:
    state = tmp_path / "stripe.state"
    state.write_bytes(b"garbage from an older version")
    with serve("emulators.stripe", "--state", str(state)) as (url, proc):
        response = httpx.post(f"{url}/v1/customers", data={"name": "Persisted Ltd"}, headers=KEY)
        assert response.status_code == 200
        customer = response.json()["id"]
    assert proc.stderr is not None
    assert "ignoring state file" in proc.stderr.read()
    assert (tmp_path / "stripe.state.bad").read_bytes() == b"garbage from an older version"
    assert state.exists()

    with serve("emulators.stripe", "--state", str(state)) as (url, _):
        again = httpx.get(f"{url}/v1/customers/{customer}", headers=KEY)
        assert again.status_code == 200 and again.json()["name"] == "Persisted Ltd"
        assert "Persisted Ltd" in httpx.get(url + "/").text


def test_openmeter_state_survives_restart_and_keeps_loaded_meters(tmp_path: Path) -> None:
    state = tmp_path / "openmeter.state"
    event = {
        "specversion": "1.0",
        "id": "ev-1",
        "source": "cli",
        "type": "api_call",
        "subject": "acme",
        "time": "2026-11-20T13:05:00Z",
        "data": {"value": "2.5"},
    }
    query = {"from": "2026-11-20T13:00:00Z", "to": "2026-11-20T14:00:00Z"}
    with serve(
        "emulators.openmeter", "--meter", "api_calls:SUM:api_call", "--state", str(state)
    ) as (url, _):
        assert httpx.post(url + "/api/v1/events", json=event).status_code == 204

    args = ["--meter", "api_calls:COUNT:api_call", "--meter", "extra", "--state", str(state)]
    with serve("emulators.openmeter", *args) as (url, _):
        meters = {m["slug"]: m for m in httpx.get(url + "/api/v1/meters").json()}
        assert set(meters) == {"api_calls", "extra"}
        assert meters["api_calls"]["aggregation"] == "SUM"  # as loaded, not as --meter says
        body = httpx.get(url + "/api/v1/meters/api_calls/query", params=query).json()
        assert [row["value"] for row in body["data"]] == [2.5]
        assert httpx.post(url + "/api/v1/events", json=event).status_code == 204  # a duplicate
        body = httpx.get(url + "/api/v1/meters/api_calls/query", params=query).json()
        assert [row["value"] for row in body["data"]] == [2.5]
