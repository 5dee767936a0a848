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
import stripe

from tests.emulators.receiver import Receiver

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


def test_stripe_cli_webhooks_error_reports_and_events_survive_restart(tmp_path: Path) -> None:
    state, receiver = tmp_path / "stripe.state", Receiver()
    flags = ["--state", str(state), "--webhook", f"{receiver.url},thin"]
    flags += ["--webhook-secret", "whsec_cli", "--error-report-seconds", "0.1"]
    try:
        with serve("emulators.stripe", *flags) as (url, _):
            meter = httpx.post(
                f"{url}/v1/billing/meters",
                data={
                    "display_name": "Calls",
                    "event_name": "calls",
                    "default_aggregation[formula]": "sum",
                },
                headers=KEY,
            ).json()
            answer = httpx.post(
                f"{url}/v1/billing/meter_events",
                data={
                    "event_name": "calls",
                    "payload[stripe_customer_id]": "cus_nobody",
                    "payload[value]": "3",
                },
                headers=KEY,
            )
            assert answer.status_code == 200  # rejected later, asynchronously
            deadline = time.monotonic() + 10
            while not receiver.received and time.monotonic() < deadline:
                time.sleep(0.05)
            ((headers, body),) = receiver.received
            client = stripe.StripeClient("sk_test_cli1234", base_addresses={"api": url})
            note = client.parse_event_notification(body, headers["Stripe-Signature"], "whsec_cli")
            assert note.type == "v1.billing.meter.error_report_triggered"
            assert note.related_object.id == meter["id"]
        with serve("emulators.stripe", "--state", str(state)) as (url, _):
            again = httpx.get(f"{url}/v2/core/events/{note.id}", headers=KEY)
            assert again.status_code == 200
            assert again.json()["data"]["reason"]["error_count"] == 1
            assert note.id in httpx.get(url + "/").text
    finally:
        receiver.close()


def test_stripe_cli_closes_periods_and_finalizes_after_the_grace() -> None:
    flags = ["--invoice-grace", "0.3", "--billing-seconds", "0.05"]
    with serve("emulators.stripe", *flags) as (url, _):
        client = stripe.StripeClient("sk_test_cli1234", base_addresses={"api": url})
        meter = client.v1.billing.meters.create(
            {
                "display_name": "Calls",
                "event_name": "calls",
                "default_aggregation": {"formula": "sum"},
            }
        )
        price = client.v1.prices.create(
            {
                "currency": "usd",
                "unit_amount": 2,
                "product_data": {"name": "Calls"},
                "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
            }
        )
        customer = client.v1.customers.create({})
        sub = client.v1.subscriptions.create(
            {"customer": customer.id, "items": [{"price": price.id}]}
        )
        client.v1.billing.meter_events.create(
            {"event_name": "calls", "payload": {"stripe_customer_id": customer.id, "value": "21"}}
        )
        draft = httpx.post(f"{url}/_emulator/subscriptions/{sub.id}/advance").json()
        assert (draft["status"], draft["total"]) == ("draft", 42)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if client.v1.invoices.retrieve(draft["id"]).status != "draft":
                break
            time.sleep(0.05)
        final = client.v1.invoices.retrieve(draft["id"])
        assert (final.status, final.amount_due) == ("open", 42)


def test_stripe_cli_rejects_unpaired_webhook_secrets() -> None:
    hooks = ["--webhook", "http://127.0.0.1:1/a", "--webhook", "http://127.0.0.1:1/b"]
    three = ["--webhook-secret", "s1", "--webhook-secret", "s2", "--webhook-secret", "s3"]
    proc = subprocess.run(
        [sys.executable, "-m", "emulators.stripe", *hooks, *three],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "once per --webhook" in proc.stderr


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
