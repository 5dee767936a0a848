"""The report log admin at a million rows: changelist times and the CSV export's speed and memory.

    .venv/bin/python benchmarks/reportlog_admin_bench.py              # 1,000,000 rows, ~2 min
    .venv/bin/python benchmarks/reportlog_admin_bench.py --rows 100000 --keep /tmp/bench.sqlite3

Builds a scratch SQLite database (in a temporary directory, or `--keep PATH` to reuse it), bulk-
inserts `--rows` ReportLog rows spread over 30 days, 3 meters and 500 customers (a few percent
failed), then, through Django's test client with a logged-in superuser and DEBUG off:

- times the changelist pages finance staff open (median of `--repeat` requests each);
- exports the whole log as CSV in a child process, so its peak RSS is the export's own, and
  prints rows per second and that peak next to the same process's RSS before the export.

Exit code 0 when every page is under `--max-page-ms` and the export's RSS grew by less than
`--max-rss-growth-mb`, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LOGS = "/admin/billing/reportlog/"
METERS, CUSTOMERS, DAYS = 3, 500, 30


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def configure_django(database: str) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
    os.environ.update(
        {
            "DEBUG": "false",
            "SECRET_KEY": "meterbridge-benchmark-only",
            "ALLOWED_HOSTS": "testserver",
            "SECURE_SSL_REDIRECT": "false",
            "DATABASE_URL": f"sqlite:///{database}",
            "STRIPE_API_KEY": "sk_test_meterbridge_bench",
            "LOG_LEVEL": "WARNING",
        }
    )
    import django

    django.setup()


def populate(rows: int) -> None:
    """Raw executemany in batches: a million model instances would not fit the point."""
    from django.core.management import call_command
    from django.db import connection, transaction

    from billing.models import Customer, Meter, ReportLog, ReportRun

    call_command("migrate", verbosity=0, interactive=False)
    if ReportLog.objects.exists():
        print(f"reusing {ReportLog.objects.count():,} rows")
        return
    started = time.perf_counter()
    # Rows are written directly: saving through the models would sync each one to Stripe.
    Meter.objects.bulk_create(
        Meter(
            name=f"Meter {m}",
            openmeter_slug=f"meter_{m}",
            event_name=f"meter_{m}",
            stripe_meter_id=f"mtr_bench{m}",
            sync_status="synced",
        )
        for m in range(METERS)
    )
    Customer.objects.bulk_create(
        Customer(
            name=f"Customer {c:04d}",
            openmeter_subject=f"cust-{c:04d}",
            stripe_customer_id=f"cus_bench{c:04d}",
            sync_status="synced",
        )
        for c in range(CUSTOMERS)
    )
    meters = list(Meter.objects.values_list("pk", flat=True))
    customers = list(Customer.objects.values_list("pk", flat=True))
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=DAYS)
    hours = DAYS * 24
    runs = ReportRun.objects.bulk_create(
        ReportRun(trigger="schedule", period_start=start, period_end=end, status="succeeded")
        for _ in range(hours)
    )
    run_ids = [r.pk for r in runs]
    per_hour = max(1, rows // hours)
    table = ReportLog._meta.db_table
    sql = (
        f"INSERT INTO {table} (run_id, meter_id, customer_id, stripe_customer_id, event_name, "
        "window_start, window_end, quantity, previous_quantity, identifier, status, "
        "stripe_request_id, error, created_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    )

    def values(first: int, last: int) -> Any:
        for i in range(first, last):
            hour = min(i // per_hour, hours - 1)
            window = start + timedelta(hours=hour)
            failed = i % 37 == 0
            yield (
                run_ids[hour],
                meters[i % METERS],
                customers[(i // METERS) % CUSTOMERS],
                f"cus_bench{(i // METERS) % CUSTOMERS:04d}",
                f"meter_{i % METERS}",
                window.isoformat(),
                (window + timedelta(hours=1)).isoformat(),
                str(1 + i % 1000),
                None if i % 5 else str(i % 1000),
                f"mb_{i:048x}",
                "failed" if failed else "sent",
                "" if failed else f"req_{i:014d}",
                "Stripe answered 500: try again" if failed else "",
                (window + timedelta(hours=1, minutes=5, seconds=i % 600)).isoformat(),
            )

    batch = 50_000
    with connection.cursor() as cursor:
        for first in range(0, rows, batch):
            with transaction.atomic():
                cursor.executemany(sql, values(first, min(rows, first + batch)))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    print(f"inserted {rows:,} rows in {time.perf_counter() - started:.1f} s")


def client() -> Any:
    from django.contrib.auth import get_user_model
    from django.test import Client

    user_model = get_user_model()
    admin = user_model.objects.filter(username="bench").first()
    if admin is None:
        admin = user_model.objects.create_superuser("bench", "bench@example.com", "bench-pw-1")
    c = Client()
    c.force_login(admin)
    return c


def page_times(repeat: int) -> dict[str, float]:
    from billing.models import Customer

    c = client()
    some_customer = Customer.objects.order_by("pk")[7]
    today = datetime.now(UTC)
    midnight = today.replace(hour=0, minute=0, second=0, microsecond=0)
    pages = {
        "changelist": "",
        "page 50": "?p=50",
        "filter status=failed": "?status__exact=failed",
        "filter customer": f"?customer__id__exact={some_customer.pk}",
        "filter meter + status": "?meter__id__exact=1&status__exact=sent",
        # As DateFieldListFilter writes its links.
        "filter date (past 7 days)": "?"
        + urlencode({"created_at__gte": str(midnight - timedelta(days=7))}),
        "date hierarchy: month": f"?created_at__year={today.year}&created_at__month={today.month}",
        "search customer subject": f"?q={some_customer.openmeter_subject}",
        "search identifier": f"?q=mb_{12345:048x}",
    }
    results = {}
    for name, query in pages.items():
        timings = []
        for _ in range(repeat):
            started = time.perf_counter()
            response = c.get(LOGS + query)
            timings.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (name, response.status_code)
        results[name] = statistics.median(timings)
        print(f"  {name:<28} {results[name]:8.1f} ms  (median of {repeat})", flush=True)
    return results


def django_date_hierarchy_ms() -> float:
    """What Django's own date hierarchy would cost: SELECT DISTINCT over each row's day."""
    from billing.models import ReportLog

    today = datetime.now(UTC)
    started = time.perf_counter()
    list(
        ReportLog.objects.filter(
            created_at__year=today.year, created_at__month=today.month
        ).datetimes("created_at", "day")
    )
    return (time.perf_counter() - started) * 1000


def export(query: str) -> dict[str, float]:
    """Runs in the child process: stream the export and count what arrives."""
    from django.http import StreamingHttpResponse

    c = client()
    before = max_rss_mb()
    started = time.perf_counter()
    response = c.get(f"{LOGS}export.csv{query}")
    assert isinstance(response, StreamingHttpResponse)
    size = lines = 0
    for chunk in response.streaming_content:
        size += len(chunk)
        lines += chunk.count(b"\n")
    seconds = time.perf_counter() - started
    return {
        "rows": lines - 1,
        "seconds": seconds,
        "mb": size / 1024 / 1024,
        "rss_before_mb": before,
        "rss_peak_mb": max_rss_mb(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", help="database file to create or reuse")
    parser.add_argument("--max-page-ms", type=float, default=500)
    parser.add_argument("--max-rss-growth-mb", type=float, default=100)
    parser.add_argument("--export-child", help=argparse.SUPPRESS)
    parser.add_argument("--query", default="", help="export only the changelist filtered so")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="meterbridge-bench-") as tmp:
        database = args.export_child or args.keep or f"{tmp}/bench.sqlite3"
        configure_django(database)
        if args.export_child:
            print(json.dumps(export(args.query)))
            return 0
        populate(args.rows)
        print(f"changelist of {LOGS} (DEBUG off, superuser):")
        pages = page_times(args.repeat)
        print(f"  Django's own date hierarchy query would take {django_date_hierarchy_ms():.0f} ms")
        child = subprocess.run(
            [sys.executable, __file__, "--export-child", database, "--query", args.query],
            check=True,
            capture_output=True,
            text=True,
        )
        figures = json.loads(child.stdout.strip().splitlines()[-1])
        rate = figures["rows"] / figures["seconds"]
        growth = figures["rss_peak_mb"] - figures["rss_before_mb"]
        print(
            f"CSV export: {figures['rows']:,.0f} rows, {figures['mb']:.0f} MB in "
            f"{figures['seconds']:.1f} s = {rate:,.0f} rows/s; "
            f"RSS {figures['rss_before_mb']:.0f} MB before, "
            f"peak {figures['rss_peak_mb']:.0f} MB (+{growth:.0f} MB)"
        )
    slow = {name: ms for name, ms in pages.items() if ms > args.max_page_ms}
    ok = not slow and growth < args.max_rss_growth_mb
    print("PASS" if ok else f"FAIL: slow pages {slow}, RSS growth {growth:.0f} MB")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
