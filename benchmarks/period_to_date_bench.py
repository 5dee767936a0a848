"""Benchmark of period-to-date meters (UNIQUE_COUNT, MAX...): what scheduled runs cost.

    .venv/bin/python benchmarks/period_to_date_bench.py                 # 10,000 customers
    .venv/bin/python benchmarks/period_to_date_bench.py --customers 500 --quick

Fakes and app as in report_bench.py (fakes in a child process with `--latency-ms` per answer and
Stripe's `--rate` limit; the app on a scratch SQLite database, with the real clients). One
UNIQUE_COUNT meter (monthly active users); every customer has a monthly subscription whose period
began on one of `--period-starts` different days of the last four weeks (a BillingPeriod row), and
users active once a day since its start. Scenarios, in order on the same data:

A  first run: a scheduled run over the lookback with nothing reported yet.
B  unchanged run: the same run again; nothing to send.
C  new hour: `--active-percent` of the customers see a new user in the next hour.
D  late usage: `--late-percent` of the customers get a new user 10 hours ago.

After each run it checks, on a sample of customers, that the value Stripe bills for the period
(its latest window) is OpenMeter's unique count over the period. It prints each scenario's time,
OpenMeter requests, Stripe meter events and the app's peak RSS.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.report_bench import (  # noqa: E402
    Fakes,
    RssSampler,
    _fake_command,
    configure_django,
    max_rss_mb,
    subject_of,
)

SLUG = "monthly_active_users"
HOUR = timedelta(hours=1)


def _command(
    command: str, args: Any, stripe_fake: Any, openmeter: Any, tally: Any, handle: Any
) -> Any:
    """The fakes' commands of this benchmark; the others as report_bench answers them."""
    if command == "add_unique_meter":
        openmeter.add_meter(args, aggregation="UNIQUE_COUNT")
        return None
    if command == "ingest_users":  # (customer index, epoch seconds, user number)
        openmeter.ingest_many(
            (SLUG, subject_of(c), datetime.fromtimestamp(t, UTC), float(u)) for c, t, u in args
        )
        return len(args)
    if command == "latest":  # customer id -> the value of its latest window (what Stripe bills)
        meter_id, since = args
        found: dict[str, tuple[int, str]] = {}
        for (customer, start), value in stripe_fake.billed_windows(meter_id).items():
            if start >= since and start > found.get(customer, (-1, ""))[0]:
                found[customer] = (start, str(value))
        return {customer: value for customer, (_, value) in found.items()}
    return _fake_command(command, args, stripe_fake, openmeter, tally, handle)


class PeriodBench:
    def __init__(self, args: argparse.Namespace, fakes: Fakes, sampler: RssSampler) -> None:
        self.args, self.fakes, self.sampler = args, fakes, sampler
        self.now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - 2 * HOUR
        self.starts: dict[int, datetime] = {}  # customer index -> period start
        self.meter: Any = None
        self.stripe_ids: list[str] = []

    def seed(self) -> None:
        from billing.integrations.stripe_sync import sync_object
        from billing.models import (
            BillingPeriod,
            Customer,
            Meter,
            PriceMapping,
            Subscription,
            SyncStatus,
        )

        args = self.args
        t0 = time.perf_counter()
        self.stripe_ids = self.fakes.call("customers", args.customers)
        self.fakes.call("configure", (args.latency_ms / 1000, args.rate))
        self.fakes.call("add_unique_meter", SLUG)
        self.meter = Meter.objects.create(
            name="Monthly active users", openmeter_slug=SLUG, openmeter_aggregation="UNIQUE_COUNT"
        )
        sync_object(self.meter)
        if not self.meter.stripe_meter_id:
            raise SystemExit(f"meter sync failed: {self.meter.sync_error}")
        price = PriceMapping.objects.create(
            meter=self.meter, product_name="MAU", unit_amount_decimal=Decimal(100)
        )
        Customer.objects.bulk_create(
            [
                Customer(
                    name=f"Customer {c}",
                    openmeter_subject=subject_of(c),
                    stripe_customer_id=self.stripe_ids[c],
                    sync_status=SyncStatus.SYNCED,
                )
                for c in range(args.customers)
            ],
            batch_size=2000,
        )
        pks = dict(Customer.objects.values_list("openmeter_subject", "pk"))
        subs = Subscription.objects.bulk_create(
            [
                Subscription(customer_id=pks[subject_of(c)], status="active")
                for c in range(args.customers)
            ],
            batch_size=2000,
        )
        Subscription.prices.through.objects.bulk_create(
            [
                Subscription.prices.through(subscription_id=s.pk, pricemapping_id=price.pk)
                for s in subs
            ],
            batch_size=5000,
        )
        midnight = self.now.replace(hour=0)
        periods = []
        for c, sub in enumerate(subs):
            start = midnight - timedelta(
                days=1 + (c % args.period_starts) * 27 // args.period_starts
            )
            self.starts[c] = start
            periods.append(
                BillingPeriod(
                    subscription=sub, period_start=start, period_end=start + timedelta(days=30)
                )
            )
        BillingPeriod.objects.bulk_create(periods, batch_size=5000)
        rows = []
        for c in range(args.customers):
            day = self.starts[c]
            while day < self.now:  # one user a day, from a pool of 5: repeats across days
                rows.append((c, int((day + timedelta(hours=c % 20)).timestamp()), (day.day % 5)))
                day += timedelta(days=1)
        for at in range(0, len(rows), 200_000):
            self.fakes.call("ingest_users", rows[at : at + 200_000])
        print(
            f"seeded in {time.perf_counter() - t0:.1f}s: {args.customers} customers, "
            f"{args.period_starts} distinct period starts, {len(rows):,} events",
            flush=True,
        )

    def run(self, name: str, now: datetime) -> None:
        from billing import reporting
        from billing.models import Trigger

        self.fakes.call("reset_stats")
        self.sampler.enter(name)
        t0 = time.perf_counter()
        run = reporting.report_usage(trigger=Trigger.SCHEDULE, now=now)
        seconds = time.perf_counter() - t0
        self.sampler.sample()
        stats = self.fakes.call("stats")
        queries = stats["openmeter"].get("query", 0)
        events = stats["stripe"]["by_path"].get("POST /v1/billing/meter_events", 0)
        print(
            f"{name:<16} {seconds:7.1f} s  {queries:5d} OpenMeter queries  {events:6d} meter "
            f"events  run {run.status} (sent {run.events_sent}, unchanged "
            f"{run.events_unchanged})  peak RSS {self.sampler.peaks.get(name, 0):.0f} MB  "
            f"{self.check(now)}",
            flush=True,
        )
        if run.error:
            print(f"  error: {run.error.splitlines()[0]}")

    def check(self, now: datetime) -> str:
        """Stripe's billed value against OpenMeter's unique count, on a sample of customers."""
        from billing.integrations.openmeter import OpenMeterClient

        since = int((now - timedelta(days=40)).timestamp())
        latest = self.fakes.call("latest", (self.meter.stripe_meter_id, since))
        end = now.replace(minute=0)
        sample = range(0, self.args.customers, max(1, self.args.customers // 50))
        wrong = 0
        with OpenMeterClient(base_url=self.fakes.openmeter_url) as client:
            for c in sample:
                rows = client.query(
                    slug=SLUG,
                    start=self.starts[c],
                    end=end,
                    window_size=None,
                    subjects=[subject_of(c)],
                )
                truth = sum((row.value for row in rows), Decimal(0))
                if Decimal(latest.get(self.stripe_ids[c], "0")) != truth:
                    wrong += 1
        return f"billed = OpenMeter for {len(sample) - wrong}/{len(sample)} sampled"

    def new_users(self, *, percent: int, hours_ago: int, now: datetime, user: int) -> int:
        """A user never seen before (`user`) for the first `percent` of the customers."""
        count = max(1, self.args.customers * percent // 100)
        when = now.replace(minute=30) - hours_ago * HOUR
        rows = [(c, int(when.timestamp()), user) for c in range(count)]
        self.fakes.call("ingest_users", rows)
        return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--period-starts", type=int, default=28)
    parser.add_argument("--hours", type=int, default=48, help="REPORT_LOOKBACK_HOURS")
    parser.add_argument("--rate", type=int, default=500, help="Stripe requests per second")
    parser.add_argument("--latency-ms", type=float, default=5.0)
    parser.add_argument("--active-percent", type=int, default=10)
    parser.add_argument("--late-percent", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="500 customers")
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    if args.quick:
        args.customers = min(args.customers, 500)
    args.debug, args.concurrency = False, 0
    fakes = Fakes(handler=_command)
    sampler = RssSampler()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            configure_django(args, fakes, tmp)
            bench = PeriodBench(args, fakes, sampler)
            bench.seed()
            now = bench.now + timedelta(minutes=20)
            bench.run("A first run", now)
            bench.run("B unchanged", now + timedelta(minutes=5))
            nxt = now + HOUR
            bench.new_users(percent=args.active_percent, hours_ago=1, now=nxt, user=1000)
            bench.run("C new hour", nxt)
            late = bench.new_users(percent=args.late_percent, hours_ago=10, now=nxt, user=2000)
            bench.run(f"D late ({late})", nxt + timedelta(minutes=5))
            print(f"peak RSS of the app: {max_rss_mb():.0f} MB")
    finally:
        sampler.stop()
        fakes.stop()


if __name__ == "__main__":
    main()
