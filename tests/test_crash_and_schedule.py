"""A report_usage killed with SIGKILL halfway, then run again; the hourly schedule; the broker."""

import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection

from billing import tasks
from billing.models import LogStatus, ReportLog, ReportRun, RunStatus
from billing.schedule import SCHEDULE_FUNC, SCHEDULE_NAME
from tests.helpers import (
    STRIPE_KEY,
    Usage,
    billed,
    setting_in_subprocess,
    synced_customers,
    synced_meter,
)

ROOT = Path(__file__).resolve().parent.parent


def database_url() -> str:
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    auth = f"{s['USER']}:{s.get('PASSWORD') or ''}"
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def app_env(fake_stripe, fake_openmeter, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DEBUG": "true",
        "DATABASE_URL": database_url(),
        "STRIPE_API_KEY": STRIPE_KEY,
        "STRIPE_API_BASE": fake_stripe.url,
        "STRIPE_METER_EVENTS_API_BASE": fake_stripe.url,
        "OPENMETER_URL": fake_openmeter.url,
        "STRIPE_RETRY_BACKOFF_SECONDS": "0.01",
    }
    env.update(extra)
    return env


@pytest.mark.django_db(transaction=True)
def test_run_killed_halfway_then_rerun_bills_exactly_once(fake_stripe, fake_openmeter):
    now = datetime.now(UTC)
    meter = synced_meter(fake_openmeter)
    customers = synced_customers([f"customer{i}" for i in range(10)])
    usage = Usage(fake_openmeter)
    top = now.replace(minute=0, second=0, microsecond=0)
    for h in range(1, 7):
        for i, c in enumerate(customers):
            usage.add(meter, c.openmeter_subject, top - timedelta(hours=h, minutes=-5), h + i)
    expected = usage.windows(meter, customers)
    start, end = (
        (top - timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        top.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    command = [sys.executable, "manage.py", "report_usage", "--from", start, "--to", end]

    fake_stripe.latency = 0.02
    halfway = threading.Event()
    fake_stripe.on_meter_event(
        lambda _event: len(fake_stripe.meter_events) >= len(expected) // 2 and halfway.set()
    )
    env = app_env(
        fake_stripe,
        fake_openmeter,
        STRIPE_MAX_REQUESTS_PER_SECOND="50",
        STRIPE_SEND_CONCURRENCY="4",
    )
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert halfway.wait(60), proc.communicate(timeout=5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    fake_stripe.on_meter_event(None)
    accepted_before_kill = len(fake_stripe.meter_events)
    assert 0 < accepted_before_kill < len(expected)
    recorded = ReportLog.objects.filter(status=LogStatus.SENT).count()
    assert recorded < len(expected)  # the crash lost some outcomes: exactly the hard case
    assert ReportRun.objects.get().status == RunStatus.RUNNING  # killed: never finished

    fake_stripe.latency = 0
    rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert billed(fake_stripe, meter) == expected
    # Every window is recorded as sent exactly once after the crash, whatever the kill lost.
    latest = ReportRun.objects.order_by("-pk").first()
    assert latest.status == RunStatus.SUCCEEDED
    sent = ReportLog.objects.filter(status=LogStatus.SENT)
    assert sent.values("meter", "customer", "window_start").distinct().count() == len(expected)
    # Nothing sent twice by the re-run beyond what the crash had left unrecorded.
    assert len(fake_stripe.meter_events) <= len(expected)
    # A third run finds nothing to do.
    third = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0 and " 0 sent" in third.stdout, third.stdout


@pytest.mark.django_db(transaction=True)
def test_schedule_exists_exactly_once_after_many_migrates(settings):
    from django_q.models import Schedule

    for _ in range(3):
        call_command("migrate", verbosity=0)
    schedules = Schedule.objects.filter(name=SCHEDULE_NAME)
    assert schedules.count() == 1
    schedule = schedules.get()
    assert (schedule.func, schedule.cron, schedule.schedule_type) == (
        SCHEDULE_FUNC,
        "5 * * * *",
        Schedule.CRON,
    )
    assert schedule.intended_date_kwarg == "intended_date"
    assert schedule.next_run is not None and schedule.next_run.minute == 5
    settings.REPORT_SCHEDULE_CRON = "15 */2 * * *"
    call_command("migrate", verbosity=0)
    assert Schedule.objects.get(name=SCHEDULE_NAME).cron == "15 */2 * * *"


@pytest.mark.django_db
def test_scheduled_task_reports_the_windows_of_its_intended_time(
    fake_stripe, fake_openmeter, settings
):
    settings.REPORT_LOOKBACK_HOURS = 3
    meter = synced_meter(fake_openmeter)
    customers = synced_customers(["acme"])
    usage = Usage(fake_openmeter)
    intended = datetime.now(UTC).replace(minute=5, second=0, microsecond=0) - timedelta(hours=5)
    top = intended.replace(minute=0)
    for h in range(0, 6):
        usage.add(meter, "acme", top - timedelta(hours=h) + timedelta(minutes=1), 10 + h)
    usage.add(meter, "acme", top + timedelta(hours=1, minutes=1), 99)  # after the intended slot
    # Run late (now is hours after the slot): it still covers [slot-3h, slot).
    run = ReportRun.objects.get(pk=tasks.scheduled_report(intended_date=intended.isoformat()))
    assert run.trigger == "schedule" and run.status == RunStatus.SUCCEEDED
    assert (run.period_start, run.period_end) == (top - timedelta(hours=3), top)
    sent = billed(fake_stripe, meter)
    cid = customers[0].stripe_customer_id
    assert sent == {(cid, int((top - timedelta(hours=h)).timestamp())): 10 + h for h in (1, 2, 3)}


def q_cluster(**env: str) -> dict[str, Any]:
    """Q_CLUSTER as the app's settings build it from the given environment."""
    base = {**os.environ, "DEBUG": "true"}
    base.pop("REDIS_URL", None)
    return dict(setting_in_subprocess("Q_CLUSTER", {**base, **env}))


def test_q_cluster_uses_orm_by_default_and_redis_when_set():
    orm = q_cluster()
    assert orm["orm"] == "default" and "redis" not in orm
    red = q_cluster(REDIS_URL="redis://127.0.0.1:6379/3")
    assert red["redis"] == "redis://127.0.0.1:6379/3" and "orm" not in red
    assert orm["retry"] > orm["timeout"] and orm["max_attempts"] >= 1


@pytest.mark.django_db
def test_scheduled_task_closes_runs_abandoned_by_a_dead_worker(fake_stripe, fake_openmeter):
    from django.utils import timezone

    top = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    stale = ReportRun.objects.create(
        trigger="admin", period_start=top - timedelta(hours=2), period_end=top
    )
    fresh = ReportRun.objects.create(
        trigger="admin", period_start=top - timedelta(hours=2), period_end=top
    )
    ReportRun.objects.filter(pk=stale.pk).update(started_at=timezone.now() - timedelta(hours=2))
    tasks.scheduled_report()
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert stale.status == RunStatus.FAILED and "report the period again" in stale.error
    assert fresh.status == RunStatus.RUNNING  # still within its task's time
    # A worker that picks the abandoned run up late does not run it.
    tasks.execute_report_run(stale.pk)
    stale.refresh_from_db()
    assert stale.status == RunStatus.FAILED and stale.events_sent == 0
