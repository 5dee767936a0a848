"""`python3 dev.py serve` on a fresh database with no Stripe or OpenMeter settings: the demo runs
end to end (emulators, example, usage, first report), Stripe's side equals OpenMeter's per
window, and SIGTERM leaves no process behind."""

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from billing.demo import OTHER_SUBJECTS
from tests.browser import ARTIFACTS
from tests.helpers import ROOT

STARTUP_SECONDS = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def processes_with(marker: str) -> list[int]:
    """Processes whose environment holds `marker` (every child of this serve has it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def finished_scheduled_run(db: Path) -> tuple[str, int] | None:
    if not db.exists():
        return None
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute(
                "SELECT status, events_sent FROM billing_reportrun WHERE trigger = 'schedule' "
                "AND finished_at IS NOT NULL ORDER BY id LIMIT 1"
            ).fetchone()
    except sqlite3.Error:  # not migrated yet
        return None


def logged_in(base: str) -> httpx.Client:
    client = httpx.Client(base_url=base, follow_redirects=True, timeout=20)
    page = client.get("/admin/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token is not None
    client.post(
        "/admin/login/?next=/admin/",
        data={
            "csrfmiddlewaretoken": token.group(1),
            "username": "admin",
            "password": "meterbridge",
        },
    )
    return client


@pytest.fixture
def serve(tmp_path: Path) -> Any:
    if not hasattr(os, "killpg") or not Path("/proc/self/environ").exists():
        pytest.skip("needs Linux process groups and /proc")
    ports = {"web": free_port(), "stripe": free_port(), "openmeter": free_port()}
    marker = f"MB_SERVE_TEST={tmp_path.name}"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"STRIPE_API_KEY", "OPENMETER_URL", "DJANGO_SETTINGS_MODULE", "DEBUG"}
    }
    env.update(
        {
            "MB_SERVE_TEST": tmp_path.name,
            "MB_VENV": sys.prefix,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            "DEMO_STATE_DIR": str(tmp_path / "state"),
            "DEMO_STRIPE_PORT": str(ports["stripe"]),
            "DEMO_OPENMETER_PORT": str(ports["openmeter"]),
            "DEMO_USAGE_INTERVAL": "3600",  # no new usage while the test compares
        }
    )
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "dev.py", "serve", str(ports["web"])],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    yield proc, ports, tmp_path, marker
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    for pid in processes_with(marker):  # never leave a stray behind, even when a test failed
        os.kill(pid, signal.SIGKILL)
    log.close()


def wait_for_first_run(proc: subprocess.Popen[bytes], tmp: Path) -> None:
    """Until the demo's first scheduled report has finished: it must have sent windows."""
    deadline = time.monotonic() + STARTUP_SECONDS
    run = None
    while run is None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(1)
        run = finished_scheduled_run(tmp / "db.sqlite3")
    output = (tmp / "serve.log").read_text(errors="replace")
    assert run is not None, f"no finished run; dev.py exit {proc.poll()}:\n{output[-3000:]}"
    assert run[0] == "succeeded" and run[1] > 0, run


def test_serve_runs_the_demo_and_stops_cleanly(serve):
    proc, ports, tmp, marker = serve
    wait_for_first_run(proc, tmp)

    # The admin home shows it.
    admin = logged_in(f"http://127.0.0.1:{ports['web']}")
    home = admin.get("/admin/").text
    assert "Demo mode." in home and "Succeeded" in home

    # Stripe's side equals OpenMeter's, window by window, for the mapped subjects.
    state = httpx.get(f"http://127.0.0.1:{ports['stripe']}/_emulator/state.json").json()
    subject_of = {c["id"]: c["metadata"]["openmeter_subject"] for c in state["customers"]}
    formulas = {m["event_name"]: m["formula"] for m in state["meters"]}
    assert formulas == {"tokens_total": "sum", "active_users": "last"}  # the demo's two prices
    (tokens,) = [m["id"] for m in state["meters"] if m["event_name"] == "tokens_total"]
    assert any(w["meter"] != tokens for w in state["windows"])  # active users were reported
    billed = {
        (subject_of[w["customer"]], w["window_start"]): Decimal(w["value"])
        for w in state["windows"]
        if w["meter"] == tokens and Decimal(w["value"])
    }
    hours = sorted({ts for _, ts in billed})
    query = httpx.get(
        f"http://127.0.0.1:{ports['openmeter']}/api/v1/meters/tokens_total/query",
        params={
            "from": datetime.fromtimestamp(hours[0], UTC).isoformat().replace("+00:00", "Z"),
            "to": datetime.fromtimestamp(hours[-1] + 3600, UTC).isoformat().replace("+00:00", "Z"),
            "windowSize": "HOUR",
            "groupBy": "subject",
        },
    ).json()
    # Each customer is billed for its own subject and its other ones (the demo's Acme users).
    owner = {subject: subject for subject in subject_of.values()}
    owner.update({user: customer for customer, users in OTHER_SUBJECTS.items() for user in users})
    measured: dict[tuple[str, int], Decimal] = defaultdict(Decimal)
    for row in query["data"]:
        if row["subject"] in owner and row["value"]:
            window = int(datetime.fromisoformat(row["windowStart"]).timestamp())
            measured[(owner[row["subject"]], window)] += Decimal(str(row["value"]))
    assert billed == measured and len(billed) >= 3 * 40

    # SIGTERM stops everything: no process left, every port free again.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    time.sleep(0.5)
    assert processes_with(marker) == []
    for port in ports.values():  # bound as a restarted server would (TIME_WAIT is no owner)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))


def test_a_busy_port_is_said_in_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
        env.update({"MB_VENV": sys.prefix, "DEMO_STATE_DIR": str(tmp_path)})
        result = subprocess.run(
            [sys.executable, "dev.py", "serve", str(port)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Port {port} (for the admin) is in use: is Meterbridge already running? Stop it, "
        "or choose another port: python3 dev.py serve 8080"
    ]


@pytest.mark.browser
def test_the_demo_in_a_browser(serve, browser_page):
    """Log in to the demo, read the dashboard, preview a re-report of a late event in money, and
    look at the Stripe emulator's page. Screenshots go to artifacts/."""
    proc, ports, tmp, _ = serve
    page = browser_page
    wait_for_first_run(proc, tmp)
    base = f"http://127.0.0.1:{ports['web']}"

    page.goto(f"{base}/admin/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "meterbridge")
    page.click('input[type="submit"]')
    page.wait_for_selector("#dashboard")
    assert "Demo mode." in page.inner_text("#demo-banner")
    assert page.inner_text('[data-field="last-run-status"]') == "Succeeded"
    assert int(page.inner_text('[data-field="last-run-sent"]')) >= 3 * 40
    assert "USD" in page.inner_text("#last-run-value")
    assert "umbrella-trial" in page.inner_text("#unmapped")
    page.screenshot(path=str(ARTIFACTS / "demo-dashboard.png"), full_page=True)

    # A late event for Acme, three hours back: 1,000 tokens at $0.01 is +10.00 USD.
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    late = hour.timestamp() - 3 * 3600 + 600
    httpx.post(
        f"http://127.0.0.1:{ports['openmeter']}/api/v1/events",
        json={
            "specversion": "1.0",
            "id": "late-1",
            "source": "browser-test",
            "type": "tokens",
            "subject": "acme",
            "time": datetime.fromtimestamp(late, UTC).isoformat().replace("+00:00", "Z"),
            "data": {"tokens": 1000},
        },
        headers={"Content-Type": "application/cloudevents+json"},
    ).raise_for_status()
    page.goto(f"{base}/admin/billing/customer/")
    page.check('tr:has-text("acme") input.action-select')
    page.select_option('select[name="action"]', "rereport_usage")
    page.click('button[name="index"]')
    page.wait_for_selector("#rereport-form")
    page.check('input[name="preset"][value="last_24_hours"]')
    page.fill("#id_reason", "Late usage from the pipeline")
    page.click("#preview-button")
    page.wait_for_selector("#preview")
    assert page.inner_text("#preview-changed") == "1"
    assert "+1000" in page.inner_text("#preview-totals")
    assert "+10.00 USD" in page.inner_text("#preview-totals")
    page.screenshot(path=str(ARTIFACTS / "demo-preview.png"), full_page=True)

    # Stripe's side, as the emulator shows it.
    page.goto(f"http://127.0.0.1:{ports['stripe']}/")
    body = page.inner_text("body")
    assert "Acme Corp" in body and "AI Tokens" in body and "USD" in body
    page.screenshot(path=str(ARTIFACTS / "demo-stripe-emulator.png"), full_page=True)
