"""Several workers, one account: three `qcluster` processes on PostgreSQL and Redis share one
scheduled run of several meters (split into shards) and one Stripe rate limit; one `qcluster`
with the ORM broker (no Redis) does the same run alone, as before the run was split.

The fake Stripe refuses with 429 whatever goes beyond the configured rate in any second; every
window must end up exact, none sent twice, the busiest second at or under the limit, at least 80 %
of it sustained, and the run's parts done by more than one process when there are several. Two
tasks for the same schedule slot (two clusters starting it) make one run.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection

from billing.models import LogStatus, ReportLog, ReportRun, RunPart, RunStatus, Trigger
from tests.helpers import (
    STRIPE_KEY,
    Usage,
    billed,
    hours_ago,
    skip_or_fail,
    synced_customers,
    synced_meter,
)

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RATE = 40
CLUSTERS = 3
CUSTOMERS = 48
HOURS = 4
METERS = ("api_calls", "tokens", "storage_gb")
EVENTS = "/v1/billing/meter_events"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def redis_url() -> str:
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: runs in the PostgreSQL pass of .ci/run")
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError:
        skip_or_fail("Redis is not running on 127.0.0.1:6379")
    return REDIS_URL


def database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    host, port = db["HOST"] or "127.0.0.1", db["PORT"] or 5432
    return f"postgres://{db['USER']}@{host}:{port}/{db['NAME']}"


def cluster_env(fake_stripe, fake_openmeter, redis_url: str | None) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DEBUG": "true",
        "DATABASE_URL": database_url(),
        "Q_CLUSTER_NAME": f"meterbridge-test-{uuid.uuid4().hex[:8]}",
        "Q_WORKERS": "1",
        "STRIPE_API_KEY": STRIPE_KEY,
        "STRIPE_API_BASE": fake_stripe.url,
        "STRIPE_METER_EVENTS_API_BASE": fake_stripe.url,
        "STRIPE_MAX_REQUESTS_PER_SECOND": str(RATE),
        "OPENMETER_URL": fake_openmeter.url,
        "REPORT_SHARD_CUSTOMERS": "16",
    }
    env.pop("REDIS_URL", None)
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


def enqueue(env: dict[str, str], code: str) -> None:
    subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=60,
    )


def scheduled_run_on_clusters(
    *, count: int, redis_url: str | None, fake_stripe, fake_openmeter, now, tmp_path
) -> tuple[ReportRun, Counter[str]]:
    """Usage of CUSTOMERS x METERS over HOURS; `count` qcluster processes; the scheduled task
    queued twice for one slot. Checks what every such run must show; returns the run and the
    parts each process did."""
    meters = [synced_meter(fake_openmeter, slug) for slug in METERS]
    customers = synced_customers([f"customer-{i:02d}" for i in range(CUSTOMERS)])
    usage = Usage(fake_openmeter)
    for h in range(1, HOURS + 1):
        for m, meter in enumerate(meters):
            for i, customer in enumerate(customers):
                when = hours_ago(now, h) + timedelta(minutes=7)
                usage.add(meter, customer.openmeter_subject, when, h + i + m)
    fake_stripe.rate_limit_per_second = RATE
    events_before = fake_stripe.count("POST", EVENTS)

    env = cluster_env(fake_stripe, fake_openmeter, redis_url)
    logs = [open(tmp_path / f"qcluster-{n}.log", "w") for n in range(count)]
    clusters = [
        subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for log in logs
    ]
    try:
        # Two clusters start the same schedule slot: one run, made by whichever comes first.
        slot = (now + timedelta(hours=1)).replace(minute=5).isoformat()
        task = f"async_task('billing.tasks.scheduled_report', intended_date='{slot}')"
        enqueue(env, f"from django_q.tasks import async_task; {task}; {task}")
        deadline = time.monotonic() + 180
        run = None
        while time.monotonic() < deadline:
            run = ReportRun.objects.filter(trigger=Trigger.SCHEDULE).first()
            if run is not None and run.finished_at is not None:
                break
            time.sleep(0.5)
    finally:
        for process in clusters:  # the run has ended: nothing of theirs needs a clean stop
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        for log in logs:
            log.close()
    output = "\n".join((tmp_path / f"qcluster-{n}.log").read_text()[-3000:] for n in range(count))
    assert run is not None and run.finished_at is not None, output
    assert ReportRun.objects.filter(trigger=Trigger.SCHEDULE).count() == 1

    parts = RunPart.objects.filter(run=run).order_by("pk")
    timeline = "\n".join(
        f"{p}: {p.worker} {p.started_at:%H:%M:%S.%f}-{p.finished_at:%H:%M:%S.%f} "
        f"sent {p.events_sent}"
        for p in parts
    )
    assert run.status == RunStatus.SUCCEEDED, run.error
    expected_events = CUSTOMERS * len(METERS) * HOURS
    assert run.events_sent == expected_events
    # The fake refused nothing: the limit held across processes.
    assert run.rate_limited == 0, timeline
    for meter in meters:
        assert billed(fake_stripe, meter) == usage.windows(meter, customers), meter.openmeter_slug
    # No window sent twice: one event and one log row per window.
    assert fake_stripe.count("POST", EVENTS) - events_before == expected_events
    sent = Counter(
        ReportLog.objects.filter(run=run, status=LogStatus.SENT).values_list(
            "meter_id", "customer_id", "window_start"
        )
    )
    assert len(sent) == expected_events and set(sent.values()) == {1}

    busiest = fake_stripe.busiest_second("POST", EVENTS)
    assert busiest <= RATE
    arrivals = sorted(
        t
        for (method, path), t in zip(fake_stripe.requests, fake_stripe.arrivals, strict=True)
        if method == "POST" and path.startswith(EVENTS)
    )
    sustained = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    assert sustained >= 0.8 * RATE, f"{sustained:.1f}/s\n{timeline}"

    shards = parts.filter(meter__isnull=False)
    assert shards.count() == len(METERS) * 4  # 48 customers, at most 16 a shard
    workers = Counter(shards.values_list("worker", flat=True))
    print(
        f"{count} cluster(s): {len(arrivals)} events, busiest second {busiest}, "
        f"{sustained:.1f}/s sustained, parts per worker {sorted(workers.values())}"
    )
    return run, workers


def test_three_clusters_share_one_scheduled_run_and_one_rate_limit(
    redis_url, fake_stripe, fake_openmeter, now, tmp_path
):
    _, workers = scheduled_run_on_clusters(
        count=3,
        redis_url=redis_url,
        fake_stripe=fake_stripe,
        fake_openmeter=fake_openmeter,
        now=now,
        tmp_path=tmp_path,
    )
    assert len(workers) >= 2, workers  # the work was spread


def test_one_cluster_on_the_orm_broker_does_the_whole_run(
    fake_stripe, fake_openmeter, now, tmp_path
):
    _, workers = scheduled_run_on_clusters(
        count=1,
        redis_url=None,
        fake_stripe=fake_stripe,
        fake_openmeter=fake_openmeter,
        now=now,
        tmp_path=tmp_path,
    )
    assert len(workers) == 1


def test_report_usage_can_hand_its_parts_to_the_workers(fake_stripe, fake_openmeter, now, tmp_path):
    meters = [synced_meter(fake_openmeter, slug) for slug in METERS[:2]]
    customers = synced_customers([f"customer-{i:02d}" for i in range(20)])
    usage = Usage(fake_openmeter)
    for h in (1, 2):
        for meter in meters:
            for i, customer in enumerate(customers):
                usage.add(meter, customer.openmeter_subject, hours_ago(now, h), i + h)
    env = cluster_env(fake_stripe, fake_openmeter, None)
    with (tmp_path / "qcluster.log").open("w") as log:
        cluster = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            period = [
                "--from",
                hours_ago(now, 2).isoformat(),
                "--to",
                hours_ago(now, 0).isoformat(),
            ]
            done = subprocess.run(
                [sys.executable, "manage.py", "report_usage", "--workers", *period],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            os.killpg(cluster.pid, signal.SIGKILL)
            cluster.wait(timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "parts queued for the workers" in done.stdout
    assert "succeeded" in done.stdout and "80 sent" in done.stdout
    run = ReportRun.objects.get(trigger=Trigger.COMMAND)
    assert RunPart.objects.filter(run=run, meter__isnull=False).count() == 2 * 2  # 20 > 16
    for meter in meters:
        assert billed(fake_stripe, meter) == usage.windows(meter, customers)
