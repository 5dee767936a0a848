"""Throughput benchmark: the reporting engine against the fakes, at Stripe's rate limit.

    .venv/bin/python benchmarks/report_bench.py            # the issue's sizes, a few minutes
    .venv/bin/python benchmarks/report_bench.py --quick    # ~30 s smoke run
    .venv/bin/python benchmarks/report_bench.py --customers 10000 --meters 3 --hours 48 \\
        --rate 500 --latency-ms 5

The fake Stripe and the fake OpenMeter run in a child process (their CPU, GIL and memory stay out
of the app's figures), with `--latency-ms` on every answer and the fake Stripe refusing with 429
whatever goes beyond `--rate` requests in any second. The app (this process) uses a scratch
SQLite database in a temporary directory (or `--database-url`) and the real stripe-python and
httpx clients. Scenarios, in this order on the same fakes:

A  first run of one new hour: `--hours` of usage in OpenMeter, all but the newest hour already
   reported (ReportedWindow holds the same values), one scheduled run sends customers x meters
   v1 meter events at the configured rate.
B  unchanged run: the same scheduled run again over the whole lookback; nothing to send.
C  v2 stream: the next hour arrives; a scheduled run with STRIPE_METER_EVENT_STREAM=true.
E  late usage: `--late-percent` of the customers get more usage in an hour reported 10 hours
   earlier; a scheduled run (v1) finds and sends only those windows.
D  the seed example's algorithm on A's hour: for each (customer, meter), sequentially, one
   OpenMeter query for that subject and one v1 meter event with a plain StripeClient. On a sample
   of `--seed-sample` pairs, extrapolated linearly (0 runs every pair).

`--skip A` seeds the ledger with every hour reported, so that B can be measured at sizes where
A would send for long (`--customers 100000 --skip ACDE`: the unchanged run alone).

It prints each scenario's figures, the app's peak RSS and a summary against the issue's targets.
The exit code is 0 when every target passed, 1 otherwise (with --quick, 1 only when Stripe does not
hold exactly OpenMeter's values, or when the fakes fail to start).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

API_KEY = "sk_test_meterbridge_bench"
HOUR = 3600
MB = 1024 * 1024

# The targets (section 5).
TARGET_V1_FRACTION = 0.90
TARGET_V2_EVENTS_PER_S = 8000.0
TARGET_UNCHANGED_S = 15.0
TARGET_RSS_MB = 300.0

# The fakes' process: how long it may take to start, and to answer one command (the longest,
# ingesting the whole history, takes seconds). A dead process is noticed within POLL_S.
FAKES_START_TIMEOUT_S = 60.0
FAKES_CALL_TIMEOUT_S = 600.0
FAKES_POLL_S = 0.1


def subject_of(c: int) -> str:
    return f"cust-{c:06d}"


def subjects_of(c: int, n: int) -> list[str]:
    """The customer's subjects with `--subjects-per-customer n`: its own and n - 1 more."""
    return [subject_of(c)] + [f"{subject_of(c)}-k{j}" for j in range(1, n)]


def value_of(c: int, m: int, hour: int) -> int:
    """The usage of customer c in meter m in the hour starting at hour*3600 (never zero)."""
    return 1 + (c * 31 + m * 17 + hour * 7) % 100


def slug_of(m: int) -> str:
    return f"bench_meter_{m}"


# --- the fakes' process ------------------------------------------------------------------------


class _Tally:
    """What the fake Stripe answered, by path and status, with the time of each meter event."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # the fake serves each connection on its own thread
        self.reset()

    def reset(self) -> None:
        self.by_path: Counter[str] = Counter()
        self.by_status: Counter[int] = Counter()
        self.event_times: list[float] = []  # monotonic time each accepted events request ended

    def summary(self) -> dict[str, Any]:
        times = sorted(self.event_times)
        peak, lo = 0, 0
        for hi, t in enumerate(times):  # most requests answered within any 1-second window
            while t - times[lo] >= 1.0:
                lo += 1
            peak = max(peak, hi - lo + 1)
        return {
            "by_path": dict(self.by_path),
            "by_status": dict(self.by_status),
            "total": sum(self.by_path.values()),
            "event_requests": len(times),
            "first_event": times[0] if times else None,
            "last_event": times[-1] if times else None,
            "peak_1s": peak,
        }


# What the tally times by default: the requests that carry meter events.
EVENT_PATHS = frozenset({"/v1/billing/meter_events", "/v2/billing/meter_event_stream"})

# A command handler of the fakes' process: (command, args, stripe_fake, openmeter, tally, handle)
# -> the answer. Another benchmark passes its own (a module-level function, so that it pickles),
# answering its commands and handing the others to `_fake_command`.
FakeCommand = Callable[[str, Any, Any, Any, _Tally, Any], Any]


def is_event_path(path: str) -> bool:
    return path in EVENT_PATHS


def _fakes_main(
    conn: Any, handler: FakeCommand | None = None, timed: Callable[[str], bool] | None = None
) -> None:
    """Child process: serve both fakes and obey the benchmark's commands on `conn`. `handler`
    answers them (default `_fake_command`); the tally times the 200s to paths where `timed` holds
    (default: the meter event paths)."""
    run_command = handler or _fake_command
    is_timed = timed or is_event_path
    try:
        from emulators.openmeter import FakeOpenMeter
        from emulators.stripe import FakeStripe

        stripe_fake = FakeStripe().start()
        openmeter = FakeOpenMeter().start()
    except BaseException as exc:  # tell the parent why instead of leaving it waiting
        conn.send(RuntimeError(f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None
    tally = _Tally()
    handle = stripe_fake._handle

    def counted(method: str, raw_path: str, headers: Any, body: bytes) -> Any:
        result = handle(method, raw_path, headers, body)
        path = raw_path.partition("?")[0]
        with tally.lock:
            tally.by_path[f"{method} {path}"] += 1
            if result is not None:
                tally.by_status[result[0]] += 1
                if result[0] == 200 and is_timed(path):
                    tally.event_times.append(time.monotonic())
        return result

    stripe_fake._handle = counted  # type: ignore[method-assign]  # counts, changes nothing
    conn.send({"stripe": stripe_fake.url, "openmeter": openmeter.url, "pid": os.getpid()})
    while True:
        command, args = conn.recv()
        try:
            if command == "stop":
                stripe_fake.stop()
                openmeter.stop()
                conn.send(None)
                return
            conn.send(run_command(command, args, stripe_fake, openmeter, tally, handle))
        except Exception as exc:  # report it to the parent rather than hang it
            conn.send(RuntimeError(f"{command}: {exc!r}"))


def _fake_command(
    command: str, args: Any, stripe_fake: Any, openmeter: Any, tally: _Tally, handle: Any
) -> Any:
    if command == "customers":  # Stripe customers, through the fake's own request handler
        headers = {"Authorization": f"Bearer {API_KEY}"}
        ids = []
        for c in range(args):
            body = urlencode({"name": f"Customer {c}", "metadata[subject]": subject_of(c)})
            status, payload, _ = handle("POST", "/v1/customers", headers, body.encode())
            if status != 200:
                raise RuntimeError(payload.decode())
            ids.append(json.loads(payload)["id"])
        return ids
    if command == "configure":
        latency, rate = args
        stripe_fake.latency = openmeter.latency = latency
        stripe_fake.rate_limit_per_second = rate
        return None
    if command == "add_meter":
        openmeter.add_meter(args, aggregation="SUM")
        return None
    if command == "ingest":
        customers, meters, hours, per_customer = args
        openmeter.ingest_many(_usage(customers, meters, hours, per_customer))
        return customers * meters * len(hours) * per_customer
    if command == "ingest_rows":  # (meter index, customer index, hour, value)
        openmeter.ingest_many(
            (slug_of(m), subject_of(c), datetime.fromtimestamp(h * HOUR + 1800, UTC), float(v))
            for m, c, h, v in args
        )
        return len(args)
    if command == "stats":
        with openmeter._lock:
            om = Counter(_om_kind(path) for _, path in openmeter.requests)
        with tally.lock:
            return {"stripe": tally.summary(), "openmeter": dict(om)}
    if command == "reset_stats":
        with tally.lock:
            tally.reset()
        with openmeter._lock:
            openmeter.requests.clear()
            openmeter.request_headers.clear()
        return None
    if command == "billed":  # windows the fake Stripe holds for the hour `args`, and their sum
        count, total = 0, Decimal(0)
        with stripe_fake._lock:
            for meter_id in stripe_fake._buckets:
                for (_, start), value in stripe_fake.billed_windows(meter_id).items():
                    if start == args * HOUR:
                        count += 1
                        total += value
            errors = len(stripe_fake.async_errors)
        return count, str(total), errors
    raise ValueError(f"unknown command {command!r}")


def _om_kind(path: str) -> str:
    path = path.partition("?")[0]
    return "query" if path.endswith("/query") else "meter" if "/meters/" in path else path


def _usage(
    customers: int, meters: int, hours: list[int], per_customer: int
) -> Iterator[tuple[str, str, datetime, float]]:
    """Each customer's value_of split in whole units over its subjects (the first takes the
    remainder), so that the customer's total per window stays value_of."""
    subjects = [subjects_of(c, per_customer) for c in range(customers)]
    offsets = [timedelta(seconds=(c * 37) % HOUR) for c in range(customers)]
    for m in range(meters):
        slug = slug_of(m)
        for hour in hours:
            base = datetime.fromtimestamp(hour * HOUR, UTC)
            for c in range(customers):
                value = value_of(c, m, hour)
                share = value // per_customer
                for j, subject in enumerate(subjects[c]):
                    part = share + (value % per_customer if j == 0 else 0)
                    yield slug, subject, base + offsets[c], float(part)


class FakesError(RuntimeError):
    """The fakes' process failed to start, died, or stopped answering."""


class Fakes:
    """The parent's handle on the fakes' process."""

    def __init__(
        self,
        start_timeout: float = FAKES_START_TIMEOUT_S,
        *,
        handler: FakeCommand | None = None,
        timed: Callable[[str], bool] | None = None,
    ) -> None:
        """Start the fakes' process; `handler` and `timed` as in `_fakes_main` (module-level
        functions: they are pickled into the child)."""
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_fakes_main, args=(child, handler, timed), daemon=True, name="fakes"
        )
        self.process.start()
        self.responsive = True  # False once a command went unanswered: stop() then terminates
        child.close()  # the child holds the only other end now: its death ends the pipe
        try:
            info = self._receive("start", start_timeout)
            if isinstance(info, Exception):
                raise FakesError(f"the fakes' process failed to start: {info}")
        except FakesError:
            self.stop()
            raise
        self.stripe_url, self.openmeter_url, self.pid = (
            info["stripe"],
            info["openmeter"],
            info["pid"],
        )

    def _receive(self, what: str, timeout: float) -> Any:
        """The child's next message; FakesError if it exits or stays silent for `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.conn.poll(FAKES_POLL_S):
                    return self.conn.recv()
            except (EOFError, OSError):  # the child closed the pipe: it is exiting
                self.process.join(timeout=5)
                raise FakesError(self._gone(what)) from None
            if not self.process.is_alive():
                raise FakesError(self._gone(what))
            if time.monotonic() >= deadline:
                self.responsive = False
                raise FakesError(
                    f"the fakes' process (pid {self.process.pid}) did not answer {what} "
                    f"within {timeout:g} s"
                )

    def _gone(self, what: str) -> str:
        code = self.process.exitcode
        return f"the fakes' process died during {what} (exit code {code})"

    def call(self, command: str, args: Any = None, timeout: float = FAKES_CALL_TIMEOUT_S) -> Any:
        if not self.process.is_alive():
            raise FakesError(self._gone(f"{command!r} (before it was sent)"))
        try:
            self.conn.send((command, args))
        except OSError:
            raise FakesError(self._gone(repr(command))) from None
        result = self._receive(repr(command), timeout)
        if isinstance(result, Exception):
            raise result
        return result

    def stop(self) -> None:
        """Ask the child to stop; terminate, then kill it if it does not. Never blocks for long."""
        if self.responsive and self.process.is_alive() and not self.conn.closed:
            try:
                self.call("stop", timeout=10)
            except (FakesError, RuntimeError, OSError):
                pass
            self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self.conn.close()


# --- the app's process -------------------------------------------------------------------------


class RssSampler:
    """Peak resident memory of this process per phase (sampled), besides ru_maxrss."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.phase = "setup"
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss")
        self._thread.start()

    def current_mb(self) -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page / MB

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        rss = self.current_mb()
        if rss > self.peaks.get(self.phase, 0.0):
            self.peaks[self.phase] = rss

    def enter(self, phase: str) -> None:
        self.sample()
        self.phase = phase
        self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def configure_django(args: argparse.Namespace, fakes: Fakes, tmp: str) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
    os.environ.update(
        {
            "DEBUG": "true" if args.debug else "false",
            "SECRET_KEY": "meterbridge-benchmark-only",
            "ALLOWED_HOSTS": "localhost",
            "DATABASE_URL": args.database_url or f"sqlite:///{tmp}/bench.sqlite3",
            "STRIPE_API_KEY": API_KEY,
            "STRIPE_API_BASE": fakes.stripe_url,
            "STRIPE_METER_EVENTS_API_BASE": fakes.stripe_url,
            "STRIPE_METER_EVENT_STREAM": "false",
            "STRIPE_MAX_REQUESTS_PER_SECOND": str(args.rate),
            "OPENMETER_URL": fakes.openmeter_url,
            "OPENMETER_API_TOKEN": "",
            "REPORT_LOOKBACK_HOURS": str(args.hours),
            "REPORT_LOCK_WAIT_SECONDS": "5",
            "LOG_LEVEL": "WARNING",
        }
    )
    if args.concurrency:
        os.environ["STRIPE_SEND_CONCURRENCY"] = str(args.concurrency)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


@dataclass
class Scenario:
    name: str
    seconds: float = 0.0
    events: int = 0
    stripe: dict[str, Any] = field(default_factory=dict)
    openmeter: dict[str, int] = field(default_factory=dict)
    status: str = ""
    note: str = ""
    rss_mb: float = 0.0
    rss_before_mb: float = 0.0
    cpu_s: float = 0.0  # the app process's CPU time (all its threads), steadier than wall time

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def send_phase_rate(self) -> float | None:
        first, last, n = (
            self.stripe.get("first_event"),
            self.stripe.get("last_event"),
            self.stripe.get("event_requests", 0),
        )
        if not first or not last or n < 2 or last <= first:
            return None
        return (n - 1) / (last - first)

    def om_requests(self) -> int:
        return sum(self.openmeter.values())


class Bench:
    def __init__(self, args: argparse.Namespace, fakes: Fakes, sampler: RssSampler) -> None:
        self.args, self.fakes, self.sampler = args, fakes, sampler
        self.top = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        # A's new hour ends two hours ago, so that C's new hour is closed in real time too.
        self.hour_a = int(self.top.timestamp()) // HOUR - 2
        self.hour_c = self.hour_a + 1
        self.meters: list[Any] = []
        self.customer_pks: list[int] = []
        self.stripe_ids: list[str] = []
        self.mismatches: list[int] = []  # hours whose billed values differ from OpenMeter's

    def log(self, text: str) -> None:
        print(text, flush=True)

    # setup

    def seed(self, *, unreported: int = 1) -> None:
        """Customers and meters (in both the app and the fakes), `--hours` of usage in OpenMeter
        ending with `hour_a`, and the ledger holding all but the newest `unreported` hours."""
        from billing.integrations.stripe_sync import sync_object
        from billing.models import Customer, CustomerSubject, Meter, SyncStatus

        args = self.args
        t0 = time.perf_counter()
        self.stripe_ids = self.fakes.call("customers", args.customers)
        self.fakes.call("configure", (args.latency_ms / 1000, args.rate))
        for m in range(args.meters):
            self.fakes.call("add_meter", slug_of(m))
            meter = Meter.objects.create(name=f"Bench meter {m}", openmeter_slug=slug_of(m))
            sync_object(meter)  # nothing syncs behind a save
            if not meter.stripe_meter_id:
                raise SystemExit(f"meter sync failed: {meter.sync_error}")
            self.meters.append(meter)
        now = datetime.now(UTC)
        Customer.objects.bulk_create(
            [
                Customer(
                    name=f"Customer {c}",
                    openmeter_subject=subject_of(c),
                    stripe_customer_id=self.stripe_ids[c],
                    sync_status=SyncStatus.SYNCED,
                    synced_at=now,
                )
                for c in range(args.customers)
            ],
            batch_size=2000,
        )
        by_subject = dict(Customer.objects.values_list("openmeter_subject", "pk"))
        self.customer_pks = [by_subject[subject_of(c)] for c in range(args.customers)]
        CustomerSubject.objects.bulk_create(
            [
                CustomerSubject(customer_id=self.customer_pks[c], subject=subject)
                for c in range(args.customers)
                for subject in subjects_of(c, args.subjects)[1:]
            ],
            batch_size=5000,
        )
        history = list(range(self.hour_a - args.hours + 1, self.hour_a + 1))
        n = self.fakes.call("ingest", (args.customers, args.meters, history, args.subjects))
        rows = self._reported(history[: len(history) - unreported])
        self.log(
            f"seeded in {time.perf_counter() - t0:.1f}s: {args.customers} customers, "
            f"{args.meters} meters (synced through the app: "
            f"{args.meters} Stripe calls), {n:,} usage events over {len(history)} h in OpenMeter, "
            f"{rows:,} windows already reported"
        )

    def _reported(self, hours: list[int]) -> int:
        """ReportedWindow rows for `hours`, with the values OpenMeter has (raw bulk insert)."""
        from django.db import connection, transaction

        from billing.models import ReportedWindow

        ops = connection.ops
        table = connection.ops.quote_name(ReportedWindow._meta.db_table)
        sql = (
            f"INSERT INTO {table} (meter_id, customer_id, stripe_customer_id, window_start, value, "
            "sent_count, needs_resend, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        )
        stamp = ops.adapt_datetimefield_value(datetime.now(UTC))
        total = 0
        with transaction.atomic(), connection.cursor() as cursor:
            for m, meter in enumerate(self.meters):
                for hour in hours:
                    start = ops.adapt_datetimefield_value(datetime.fromtimestamp(hour * HOUR, UTC))
                    batch = [
                        (
                            meter.pk,
                            pk,
                            self.stripe_ids[c],
                            start,
                            value_of(c, m, hour),
                            1,
                            False,
                            stamp,
                        )
                        for c, pk in enumerate(self.customer_pks)
                    ]
                    cursor.executemany(sql, batch)
                    total += len(batch)
        return total

    # scenarios

    def _run(self, name: str, now: datetime) -> Scenario:
        from billing import reporting
        from billing.models import Trigger

        self.fakes.call("reset_stats")
        self.sampler.enter(name)
        before = self.sampler.current_mb()
        t0, cpu0 = time.perf_counter(), time.process_time()
        run = reporting.report_usage(trigger=Trigger.SCHEDULE, now=now)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        self.sampler.sample()
        stats = self.fakes.call("stats")
        result = Scenario(
            name=name,
            seconds=seconds,
            events=run.events_sent,
            stripe=stats["stripe"],
            openmeter=stats["openmeter"],
            status=f"{run.status} (sent {run.events_sent}, unchanged {run.events_unchanged}, "
            f"failed {run.events_failed})",
            rss_mb=self.sampler.peaks.get(name, 0.0),
            rss_before_mb=before,
            cpu_s=cpu,
        )
        if run.error:
            result.note = run.error.splitlines()[0]
        return result

    def _check_billed(self, hour: int, expected: dict[tuple[int, int], int] | None = None) -> str:
        """What the fake Stripe holds for `hour` against `expected` ((meter, customer) -> value;
        default: every customer's usage that hour)."""
        count, total, errors = self.fakes.call("billed", hour)
        if expected is None:
            expected = {
                (m, c): value_of(c, m, hour)
                for m in range(self.args.meters)
                for c in range(self.args.customers)
            }
        want = sum(expected.values())
        ok = count == len(expected) and Decimal(total) == want
        if not ok:
            self.mismatches.append(hour)
        return (
            f"fake Stripe holds {count:,} windows for that hour, sum {Decimal(total):f} "
            f"(expected {len(expected):,} windows, sum {want:,}): "
            f"{'OK' if ok else 'MISMATCH'}; async errors: {errors}"
        )

    def scenario_a(self) -> Scenario:
        now = datetime.fromtimestamp((self.hour_a + 1) * HOUR, UTC) + timedelta(minutes=5)
        result = self._run("A first run (v1)", now)
        self.log(self._describe(result, rate=True))
        self.log(f"  {self._check_billed(self.hour_a)}")
        return result

    def scenario_b(self) -> Scenario:
        now = datetime.fromtimestamp((self.hour_a + 1) * HOUR, UTC) + timedelta(minutes=5)
        result = self._run("B unchanged run", now)
        self.log(self._describe(result))
        return result

    def scenario_c(self) -> Scenario:
        from django.conf import settings

        self.fakes.call(
            "ingest", (self.args.customers, self.args.meters, [self.hour_c], self.args.subjects)
        )
        now = datetime.fromtimestamp((self.hour_c + 1) * HOUR, UTC) + timedelta(minutes=5)
        settings.STRIPE_METER_EVENT_STREAM = True
        try:
            result = self._run("C first run (v2 stream)", now)
        finally:
            settings.STRIPE_METER_EVENT_STREAM = False
        self.log(self._describe(result))
        self.log(f"  {self._check_billed(self.hour_c)}")
        return result

    def scenario_e(self) -> Scenario:
        """Late usage: a few customers get more usage in an hour reported long ago."""
        args = self.args
        late = max(1, args.customers * args.late_percent // 100)
        hour = self.hour_c - 10
        extra = 5
        rows = [(m, c, hour, extra) for m in range(args.meters) for c in range(late)]
        self.fakes.call("ingest_rows", rows)
        now = datetime.fromtimestamp((self.hour_c + 1) * HOUR, UTC) + timedelta(minutes=5)
        result = self._run(f"E late usage ({late} customers, 10 h back)", now)
        self.log(self._describe(result))
        expected = {(m, c): value_of(c, m, hour) + extra for m, c, _, _ in rows}
        self.log(f"  {self._check_billed(hour, expected)}")
        return result

    def scenario_d(self) -> tuple[Scenario, int, int]:
        """The seed example: per (customer, meter), one subject query and one meter event."""
        import httpx
        import stripe

        args = self.args
        pairs_total = args.customers * args.meters
        sample = pairs_total if args.seed_sample <= 0 else min(args.seed_sample, pairs_total)
        per_meter = -(-sample // args.meters)
        pairs = [(c, m) for c in range(per_meter) for m in range(args.meters)][:sample]
        start = datetime.fromtimestamp(self.hour_a * HOUR, UTC)
        params_time = {
            "from": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "to": (start + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        client = stripe.StripeClient(
            API_KEY,
            base_addresses={"api": self.fakes.stripe_url},
            http_client=stripe.HTTPXClient(allow_sync_methods=True),
        )
        self.fakes.call("reset_stats")
        self.sampler.enter("D seed algorithm")
        before = self.sampler.current_mb()
        failures = 0
        t0 = time.perf_counter()
        with httpx.Client(base_url=self.fakes.openmeter_url, timeout=30) as openmeter:
            for c, m in pairs:
                response = openmeter.get(
                    f"/api/v1/meters/{slug_of(m)}/query",
                    params={**params_time, "windowSize": "HOUR", "subject": subject_of(c)},
                )
                response.raise_for_status()
                value = sum(Decimal(str(row["value"])) for row in response.json()["data"])
                try:
                    client.v1.billing.meter_events.create(
                        {
                            "event_name": self.meters[m].event_name,
                            "payload": {
                                "stripe_customer_id": self.stripe_ids[c],
                                "value": str(value),
                            },
                            "timestamp": int(start.timestamp()),
                        }
                    )
                except stripe.StripeError:
                    failures += 1
        seconds = time.perf_counter() - t0
        stats = self.fakes.call("stats")
        result = Scenario(
            name="D seed algorithm",
            seconds=seconds,
            events=len(pairs) - failures,
            stripe=stats["stripe"],
            openmeter=stats["openmeter"],
            status=f"{len(pairs)} pairs, {failures} failed",
            rss_mb=self.sampler.peaks.get("D seed algorithm", 0.0),
            rss_before_mb=before,
        )
        return result, sample, pairs_total

    def _describe(self, s: Scenario, *, rate: bool = False) -> str:
        stripe_requests = s.stripe.get("total", 0)
        lines = [
            f"{s.name}: {s.seconds:.2f}s, {s.events:,} events, {s.events_per_s:,.0f} events/s"
            + (f" (app CPU {s.cpu_s:.2f}s)" if s.cpu_s else ""),
            f"  run: {s.status}" + (f"; {s.note}" if s.note else ""),
            f"  OpenMeter requests: {s.om_requests()} {s.openmeter or ''}; Stripe requests: "
            f"{stripe_requests} {s.stripe.get('by_status') or ''}",
        ]
        send_rate = s.send_phase_rate()
        if send_rate is not None:
            lines.append(
                f"  send phase: {s.stripe['event_requests']:,} event requests, "
                f"{send_rate:,.0f} requests/s between the first and the last; busiest second "
                f"{s.stripe['peak_1s']} requests (limit {self.args.rate:g})"
            )
        if rate:
            lines.append(
                f"  {s.events_per_s / self.args.rate:.1%} of the configured rate "
                f"({self.args.rate:g}/s)"
            )
        lines.append(
            f"  peak RSS during the run: {s.rss_mb:.0f} MB ({s.rss_before_mb:.0f} MB before it)"
        )
        return "\n".join(lines)


def machine() -> str:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPU ({model}), Python {platform.python_version()}, {platform.system()}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=None, help="default 10000 (quick: 1000)")
    parser.add_argument("--meters", type=int, default=3)
    parser.add_argument(
        "--subjects", type=int, default=1, help="OpenMeter subjects per customer (usage split)"
    )
    parser.add_argument("--hours", type=int, default=48, help="lookback and history, in hours")
    parser.add_argument("--rate", type=float, default=500, help="STRIPE_MAX_REQUESTS_PER_SECOND")
    parser.add_argument("--latency-ms", type=float, default=5.0, help="added to every answer")
    parser.add_argument(
        "--seed-sample",
        type=int,
        default=None,
        help="pairs for the seed algorithm, extrapolated (0: all); default 1000 (quick: 200)",
    )
    parser.add_argument(
        "--late-percent", type=int, default=2, help="customers with late usage in scenario E"
    )
    parser.add_argument("--concurrency", type=int, default=0, help="STRIPE_SEND_CONCURRENCY")
    parser.add_argument("--database-url", default="", help="default: SQLite in a temp dir")
    parser.add_argument(
        "--debug",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="DEBUG=true (default) or false; the figures differ by under 5%%",
    )
    parser.add_argument("--quick", action="store_true", help="1000 customers, ~30 s")
    parser.add_argument("--skip", default="", help="scenarios to skip, e.g. 'CDE' (B always runs)")
    args = parser.parse_args(argv)
    if args.customers is None:
        args.customers = 1000 if args.quick else 10000
    if args.seed_sample is None:
        args.seed_sample = 200 if args.quick else 1000
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"machine: {machine()}")
    print(
        f"sizes: {args.customers:,} customers ({args.subjects} subject(s) each) x {args.meters} "
        f"meters, {args.hours} h lookback; "
        f"rate {args.rate:g}/s (app and fake Stripe), latency {args.latency_ms:g} ms per answer",
        flush=True,
    )
    try:
        fakes = Fakes()
    except FakesError as exc:
        print(f"report_bench: error: {exc}", file=sys.stderr, flush=True)
        return 1
    sampler = RssSampler()
    try:
        with tempfile.TemporaryDirectory(prefix="meterbridge-bench-") as tmp:
            configure_django(args, fakes, tmp)
            bench = Bench(args, fakes, sampler)
            skip_a = "A" in args.skip.upper()
            bench.seed(unreported=0 if skip_a else 1)  # without A, B finds everything reported
            a = bench.scenario_a() if not skip_a else None
            b = bench.scenario_b()
            c = bench.scenario_c() if "C" not in args.skip.upper() else None
            e = bench.scenario_e() if "E" not in args.skip.upper() else None
            d = bench.scenario_d() if "D" not in args.skip.upper() else None
    except FakesError as exc:
        print(f"report_bench: error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        sampler.stop()
        fakes.stop()
    return summary(args, a, b, c, d, e, sampler, bench.mismatches)


def summary(
    args: argparse.Namespace,
    a: Scenario | None,
    b: Scenario,
    c: Scenario | None,
    d: tuple[Scenario, int, int] | None,
    e: Scenario | None,
    sampler: RssSampler,
    mismatches: list[int],
) -> int:
    run_peak = max((v for k, v in sampler.peaks.items() if k != "setup"), default=0.0)
    overall = max_rss_mb()
    rows: list[tuple[str, str, str, bool | None]] = []
    if a is not None:
        rows.append(
            (
                "A first run, v1 (events/s)",
                f"{a.events_per_s:,.0f}/s = {a.events_per_s / args.rate:.1%} of {args.rate:g}/s "
                f"({a.events:,} in {a.seconds:.1f}s)",
                f">= {TARGET_V1_FRACTION:.0%}",
                a.events_per_s >= TARGET_V1_FRACTION * args.rate,
            )
        )
    rows.append(
        (
            "B unchanged run (time)",
            f"{b.seconds:.2f}s",
            f"<= {TARGET_UNCHANGED_S:g}s",
            b.seconds <= TARGET_UNCHANGED_S,
        )
    )
    rows.append(
        (
            "B OpenMeter / Stripe requests",
            f"{b.om_requests()} / {b.stripe.get('total', 0)}",
            f"~meters ({args.meters}) / 0",
            b.om_requests() <= 4 * args.meters and b.stripe.get("total", 0) == 0,
        )
    )
    if c is not None:
        rows.append(
            (
                "C first run, v2 stream (events/s)",
                f"{c.events_per_s:,.0f}/s ({c.events:,} in {c.seconds:.2f}s, "
                f"{c.stripe.get('total', 0)} requests)",
                f">= {TARGET_V2_EVENTS_PER_S:,.0f}/s",
                c.events_per_s >= TARGET_V2_EVENTS_PER_S,
            )
        )
    if e is not None:
        rows.append(
            (
                "E late usage (time, requests)",
                f"{e.seconds:.2f}s, {e.events:,} events, {e.om_requests()} OpenMeter / "
                f"{e.stripe.get('total', 0)} Stripe requests",
                "",
                None,
            )
        )
    rows.append(
        (
            "peak RSS, app process",
            f"{overall:.0f} MB (ru_maxrss); runs {run_peak:.0f} MB",
            f"<= {TARGET_RSS_MB:g} MB",
            overall <= TARGET_RSS_MB,
        )
    )
    if a is not None:
        a_limit = a.stripe.get("peak_1s", 0)
        rows.append(
            (
                "A rate never exceeded",
                f"busiest second {a_limit}, 429s {a.stripe.get('by_status', {}).get(429, 0)}",
                f"<= {args.rate:g}",
                a_limit <= args.rate,
            )
        )
    if d is not None:
        seed, sample, total = d
        factor = total / sample
        seed_time = seed.seconds * factor
        extrapolated = " (extrapolated)" if sample < total else ""
        rows.append(
            (
                f"D seed algorithm, {sample:,} of {total:,} pairs",
                f"{seed.seconds:.1f}s measured; {total:,} pairs: {seed_time:,.0f}s{extrapolated}, "
                f"{seed.om_requests() * factor:,.0f} OpenMeter + "
                f"{seed.stripe.get('total', 0) * factor:,.0f} Stripe requests{extrapolated}",
                "",
                None,
            )
        )
        if c is not None:
            rows.append(
                (
                    "app (C, v2 stream) vs seed",
                    f"{seed_time / c.seconds:.0f}x faster ({c.seconds:.1f}s vs {seed_time:,.0f}s)",
                    "",
                    None,
                )
            )
        if a is not None:
            rows.append(
                (
                    "app (A) vs seed on the same hour",
                    f"{seed_time / a.seconds:.1f}x faster ({a.seconds:.1f}s vs {seed_time:,.0f}s); "
                    f"OpenMeter requests {a.om_requests()} vs {seed.om_requests() * factor:,.0f}",
                    "",
                    None,
                )
            )
    rows.append(
        (
            "billed = measured (A, C, E)",
            "every window" if not mismatches else f"MISMATCH in {len(mismatches)} hour(s)",
            "exact",
            not mismatches,
        )
    )
    width = max(len(r[0]) for r in rows)
    print("\nSUMMARY")
    for name, value, target, ok in rows:
        mark = "" if ok is None else ("PASS" if ok else "FAIL")
        print(f"  {name:<{width}}  {value}  {target}  {mark}".rstrip())
    failed = [r[0] for r in rows if r[3] is False]
    print(f"\n{'all targets met' if not failed else 'missed: ' + ', '.join(failed)}")
    if args.quick:
        # A smoke run: the speed targets are for 10,000 customers x 3 meters; exactness counts.
        print("(--quick is a smoke run: the targets are for 10,000 customers x 3 meters)")
        return 1 if mismatches else 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
