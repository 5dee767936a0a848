"""Throughput benchmark: the reconciliation engine against the fakes, at Stripe's rate limit.

    .venv/bin/python benchmarks/reconcile_bench.py            # the issue's size, ~3 min
    .venv/bin/python benchmarks/reconcile_bench.py --quick    # 1,000 customers, ~20 s
    .venv/bin/python benchmarks/reconcile_bench.py --customers 10000 --meters 3 --hours 48 \\
        --rate 500 --latency-ms 5
    .venv/bin/python benchmarks/reconcile_bench.py --profile /tmp/reconcile.prof   # + cProfile

It reuses report_bench.py's machinery: the fake Stripe and the fake OpenMeter run in a child
process, with `--latency-ms` on every answer and the fake Stripe answering 429 to whatever goes
beyond `--rate` requests in any second; the app (this process) uses a scratch SQLite database and
the real stripe-python and httpx clients; the seed is report_bench's (`Bench.seed`).

Setup: `--hours` closed hours of usage for `--customers` x `--meters` in OpenMeter; the ledger
(ReportedWindow) holds the same values, as if reported; the fake Stripe holds the same values per
(meter, customer, window), loaded straight into its meter buckets (what its event summaries read;
not its event log or identifier index: nothing here sends meter events). Then the differences the
reconciliation must find, each in one window of one meter:

- `--diff-percent` of the customers get a late OpenMeter event  -> expected `unsent`;
- another `--diff-percent` get a different value in the fake Stripe -> expected `drift`;

every other window is expected `match`; RECONCILE_SETTLE_MINUTES=0, so nothing is `settling`.

The measured run is `start_reconciliation` + `execute_reconciliation` over the default lookback
(RECONCILE_LOOKBACK_HOURS = `--hours`): one summaries request per customer and meter. It prints
the requests, the time, the achieved rate as a share of STRIPE_MAX_REQUESTS_PER_SECOND (summaries
answered per second of the whole reconciliation), the busiest second, the 429s, where the reading
paused (the main thread's OpenMeter and ledger loads), and the app's peak RSS; then it checks that
the Reconciliation's counters and items are exactly the expected ones.

Exit code: 0 when the rate target (>= 90 % of the configured rate) is met and the classification
is exact; 1 otherwise. With --quick, 1 only when the classification is wrong or the fakes fail.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.report_bench import (  # noqa: E402  (after the path is set)
    HOUR,
    Bench,
    Fakes,
    FakesError,
    RssSampler,
    Scenario,
    _fake_command,
    _Tally,
    configure_django,
    machine,
    max_rss_mb,
    value_of,
)

TARGET_READ_FRACTION = 0.90  # of STRIPE_MAX_REQUESTS_PER_SECOND, over the whole reconciliation
REFERENCE_RSS_MB = 300.0  # report_bench's target for the app, shown for comparison
LATE_EXTRA = 5  # added in OpenMeter to an unsent window
DRIFT_EXTRA = 3  # added in the fake Stripe to a drifting window
GAP_S = 0.25  # a pause in reading at least this long is reported
TIMELINE_S = 5  # seconds per step of the printed reading rate


def is_summaries_path(path: str) -> bool:
    return path.startswith("/v1/billing/meters/") and path.endswith("/event_summaries")


# --- the fakes' process: report_bench's commands, and these ------------------------------------


def _reconcile_command(
    command: str, args: Any, stripe_fake: Any, openmeter: Any, tally: _Tally, handle: Any
) -> Any:
    if command == "load_billed":
        return _load_billed(stripe_fake, *args)
    if command == "reset_stats":  # also forget the fake's own arrival log (busiest second)
        with stripe_fake._lock:
            stripe_fake.requests.clear()
            stripe_fake.arrivals.clear()
    if command == "read_stats":  # the summaries' arrivals and the pauses between their answers
        with stripe_fake._lock:
            arrivals = sorted(
                t
                for (method, path), t in zip(
                    stripe_fake.requests, stripe_fake.arrivals, strict=True
                )
                if method == "GET" and is_summaries_path(path)
            )
        with tally.lock:
            answered = sorted(tally.event_times)
        gaps = [(a, b - a) for a, b in pairwise(answered) if b - a >= GAP_S]
        timeline = [0] * (int((arrivals[-1] - arrivals[0]) // TIMELINE_S) + 1) if arrivals else []
        for t in arrivals:
            timeline[int((t - arrivals[0]) // TIMELINE_S)] += 1
        return {
            "arrival_peak": _busiest(arrivals),
            "arrivals": len(arrivals),
            "gaps": gaps,
            "timeline": [n / TIMELINE_S for n in timeline],
        }
    return _fake_command(command, args, stripe_fake, openmeter, tally, handle)


def _busiest(times: list[float]) -> int:
    busiest, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= 1.0:
            lo += 1
        busiest = max(busiest, hi - lo + 1)
    return busiest


def _load_billed(
    stripe_fake: Any,
    meter_ids: list[str],
    customer_ids: list[str],
    hours: list[int],
    changed: dict[tuple[int, int, int], int],
) -> int:
    """One received event per (meter, customer, hour) with `value_of` (or `changed`'s value for
    (meter index, customer index, hour)), straight into the fake's buckets: what Stripe holds
    after the windows were reported, long enough ago to be visible in summaries. Events share
    their Decimal values and, per meter, one record (the fake's event log is not filled)."""
    from emulators.stripe.common import _Event

    decimals: dict[int, Decimal] = {}
    loaded = 0
    with stripe_fake._lock:
        received = stripe_fake.clock() - 2 * HOUR
        seq = stripe_fake._seq
        for m, meter_id in enumerate(meter_ids):
            meter = stripe_fake.objects["billing.meter"][meter_id]
            event_name = meter["event_name"]
            record = {"event_name": event_name, "meter": meter_id, "bulk_loaded": True}
            by_customer = stripe_fake._buckets.setdefault(meter_id, {})
            for c, customer in enumerate(customer_ids):
                windows = by_customer.setdefault(customer, {})
                for hour in hours:
                    value = changed.get((m, c, hour))
                    if value is None:
                        value = value_of(c, m, hour)
                    amount = decimals.get(value)
                    if amount is None:
                        amount = decimals[value] = Decimal(value)
                    start = hour * HOUR
                    seq += 1
                    windows.setdefault(start, []).append(
                        _Event(
                            meter=meter_id,
                            event_name=event_name,
                            customer=customer,
                            window=start,
                            ts=start,
                            value=amount,
                            seq=seq,
                            identifier=f"bench-{seq}",
                            received_at=received,
                            record=record,
                        )
                    )
                    loaded += 1
        stripe_fake._seq = seq
    return loaded


# --- the app's process -------------------------------------------------------------------------


class Plan:
    """Which windows differ, and what the reconciliation must then find."""

    def __init__(self, args: argparse.Namespace, history: list[int]) -> None:
        step = max(3, round(100 / args.diff_percent))
        self.history = history
        # (meter index, customer index, hour) -> kind
        self.expected: dict[tuple[int, int, int], str] = {}
        self.late: list[tuple[int, int, int, int]] = []  # OpenMeter rows (m, c, hour, extra)
        self.changed: dict[tuple[int, int, int], int] = {}  # fake Stripe's value instead
        for c in range(1, args.customers, step):
            m, hour = c % args.meters, history[(c // step) % len(history)]
            self.late.append((m, c, hour, LATE_EXTRA))
            self.expected[(m, c, hour)] = "unsent"
        for c in range(2, args.customers, step):
            m, hour = (c + 1) % args.meters, history[(c * 7) % len(history)]
            self.changed[(m, c, hour)] = value_of(c, m, hour) + DRIFT_EXTRA
            self.expected[(m, c, hour)] = "drift"
        self.windows = args.customers * args.meters * len(history)
        self.unsent = len(self.late)
        self.drift = len(self.changed)
        self.matched = self.windows - self.unsent - self.drift

    def counts(self) -> dict[str, int]:
        return {
            "windows_compared": self.windows,
            "matched": self.matched,
            "unsent": self.unsent,
            "drift": self.drift,
            "settling": 0,
        }


class MainThreadTimer:
    """How long the reconciliation's own thread spends loading each meter (OpenMeter and the
    ledger, all its steps) and judging summaries: a timing wrapper around
    MeterComparison.loading and .judge,
    removed afterwards (measurement only; nothing in billing/ changes)."""

    def __init__(self) -> None:
        self.loads: list[tuple[str, float]] = []
        self.judge_s = 0.0
        self.judged = 0
        self.cpu_s = 0.0  # CPU time of the whole app process (every thread) during the run

    @contextmanager
    def installed(self) -> Iterator[None]:
        from billing.reconcile.compare import MeterComparison

        loading, judge = MeterComparison.loading, MeterComparison.judge

        def timed_loading(comparison: Any, client: Any) -> Iterator[None]:
            spent = 0.0
            steps = loading(comparison, client)
            try:
                while True:
                    t0 = time.perf_counter()
                    try:
                        next(steps)
                    except StopIteration:
                        return
                    finally:
                        spent += time.perf_counter() - t0
                    yield
            finally:
                self.loads.append((comparison.meter.openmeter_slug, spent))

        def timed_judge(comparison: Any, customer: Any, summaries: Any) -> None:
            t0 = time.perf_counter()
            try:
                judge(comparison, customer, summaries)
            finally:
                self.judge_s += time.perf_counter() - t0
                self.judged += 1

        MeterComparison.loading = timed_loading  # type: ignore[method-assign,assignment]
        MeterComparison.judge = timed_judge  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            MeterComparison.loading = loading  # type: ignore[method-assign]
            MeterComparison.judge = judge  # type: ignore[method-assign]


class ReconcileBench(Bench):
    def __init__(self, args: argparse.Namespace, fakes: Fakes, sampler: RssSampler) -> None:
        super().__init__(args, fakes, sampler)
        self.history = list(range(self.hour_a - args.hours + 1, self.hour_a + 1))
        self.plan = Plan(args, self.history)
        self.problems: list[str] = []  # where the classification differs from the plan

    def prepare(self) -> None:
        """report_bench's seed with every hour reported, the fake Stripe holding the same values
        (but the planned drift), and the planned late usage in OpenMeter."""
        self.seed(unreported=0)
        t0 = time.perf_counter()
        meter_ids = [meter.stripe_meter_id for meter in self.meters]
        loaded = self.fakes.call(
            "load_billed", (meter_ids, self.stripe_ids, self.history, self.plan.changed)
        )
        self.log(
            f"fake Stripe loaded in {time.perf_counter() - t0:.1f}s: {loaded:,} meter events "
            f"(one per meter, customer and hour), {len(self.plan.changed):,} of them with a "
            f"different value (+{DRIFT_EXTRA})"
        )
        t0 = time.perf_counter()
        self.fakes.call("ingest_rows", self.plan.late)
        self.log(
            f"late usage in OpenMeter in {time.perf_counter() - t0:.1f}s: "
            f"{len(self.plan.late):,} events (+{LATE_EXTRA}), one window each"
        )
        p = self.plan
        self.log(
            f"expected: {p.windows:,} windows compared = {p.matched:,} match + {p.unsent:,} "
            f"unsent + {p.drift:,} drift (0 settling)"
        )

    def reconcile(self, profile: str = "") -> tuple[Scenario, Any, MainThreadTimer, dict[str, Any]]:
        from billing.models import Trigger
        from billing.reconcile import (
            ReconcileRequest,
            execute_reconciliation,
            start_reconciliation,
        )

        now = datetime.fromtimestamp((self.hour_a + 1) * HOUR, UTC) + timedelta(minutes=5)
        timer = MainThreadTimer()
        profiler = cProfile.Profile() if profile else None
        self.fakes.call("reset_stats")
        self.sampler.enter("reconcile")
        started = time.monotonic()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        with timer.installed():
            if profiler is not None:
                profiler.enable()
            check = start_reconciliation(ReconcileRequest(trigger=Trigger.SCHEDULE), now=now)
            check = execute_reconciliation(check)
            if profiler is not None:
                profiler.disable()
        seconds = time.perf_counter() - t0
        timer.cpu_s = time.process_time() - cpu0
        ended = time.monotonic()
        self.sampler.enter("after")
        stats = self.fakes.call("stats")
        reads = self.fakes.call("read_stats")
        reads.update(started=started, ended=ended)
        check.refresh_from_db()
        result = Scenario(
            name="reconciliation",
            seconds=seconds,
            events=stats["stripe"].get("event_requests", 0),  # summaries answered 200
            stripe=stats["stripe"],
            openmeter=stats["openmeter"],
            status=f"{check.status}, {check.stripe_requests:,} Stripe requests by the app's count",
            note=check.error.splitlines()[0] if check.error else "",
            rss_mb=self.sampler.peaks.get("reconcile", 0.0),
        )
        if profiler is not None:
            profiler.dump_stats(profile)
        return result, check, timer, reads

    def check(self, check: Any) -> None:
        """The counters and the items against the plan; differences go to `problems`."""
        from billing.models import ReconcileStatus, ReportedWindow

        p = self.plan
        got = {name: getattr(check, name) for name in p.counts()}
        for name, want in p.counts().items():
            if got[name] != want:
                self.problems.append(f"{name}: {got[name]:,} (expected {want:,})")
        if check.status != ReconcileStatus.SUCCEEDED:
            self.problems.append(f"status {check.status}: {check.error.splitlines()[:1]}")
        if check.stripe_requests != self.args.customers * self.args.meters:
            self.problems.append(
                f"{check.stripe_requests:,} Stripe requests by the app's count "
                f"(expected {self.args.customers * self.args.meters:,}: no retries)"
            )
        meter_of = {meter.pk: m for m, meter in enumerate(self.meters)}
        customer_of = {pk: c for c, pk in enumerate(self.customer_pks)}
        found: dict[tuple[int, int, int], str] = {}
        wrong_values = 0
        for meter_pk, customer_pk, start, kind, om, sent, billed in check.items.values_list(
            "meter_id",
            "customer_id",
            "window_start",
            "kind",
            "openmeter_value",
            "sent_value",
            "stripe_value",
        ):
            key = (meter_of[meter_pk], customer_of[customer_pk], int(start.timestamp()) // HOUR)
            found[key] = str(kind)
            m, c, hour = key
            base = value_of(c, m, hour)
            planned = {
                "unsent": (base + LATE_EXTRA, base, base),
                "drift": (base, base, base + DRIFT_EXTRA),
            }.get(str(kind))
            if planned is None or (om, sent, billed) != tuple(Decimal(v) for v in planned):
                wrong_values += 1
        if found != p.expected:
            missing = len(p.expected.keys() - found.keys())
            extra = len(found.keys() - p.expected.keys())
            other = sum(1 for k in found.keys() & p.expected.keys() if found[k] != p.expected[k])
            self.problems.append(
                f"items: {missing} expected windows missing, {extra} unexpected, "
                f"{other} of another kind"
            )
        if wrong_values:
            self.problems.append(f"items: {wrong_values} with other values than planned")
        marked = ReportedWindow.objects.filter(needs_resend=True).count()
        if marked != p.drift:
            self.problems.append(f"ledger: {marked:,} windows marked to resend, not {p.drift:,}")
        self.log(
            f"  counters: compared {got['windows_compared']:,}, matched {got['matched']:,}, "
            f"unsent {got['unsent']:,}, drift {got['drift']:,}, settling {got['settling']:,}; "
            f"items {len(found):,}; ledger windows marked to resend {marked:,}"
        )
        self.log(
            "  classification: "
            + ("exactly as planned" if not self.problems else "WRONG: " + "; ".join(self.problems))
        )

    def describe(
        self, s: Scenario, timer: MainThreadTimer, reads: dict[str, Any], limit: float
    ) -> None:
        by_status = s.stripe.get("by_status", {})
        rate = s.events_per_s
        self.log(
            f"reconciliation: {s.seconds:.2f}s, {s.events:,} summaries read, {rate:,.0f} "
            f"requests/s = {rate / limit:.1%} of the configured rate ({limit:g}/s)"
        )
        self.log(f"  run: {s.status}" + (f"; {s.note}" if s.note else ""))
        self.log(
            f"  Stripe requests: {s.stripe.get('total', 0):,} {by_status or ''}; "
            f"429s: {by_status.get(429, 0)}; OpenMeter requests: {s.om_requests()} "
            f"{s.openmeter or ''}"
        )
        read_rate = s.send_phase_rate()
        if read_rate is not None:
            self.log(
                f"  reading: {read_rate:,.0f} requests/s between the first answer and the last "
                f"({read_rate / limit:.1%}); busiest second {s.stripe['peak_1s']} answered, "
                f"{reads['arrival_peak']} arrived (limit {limit:g})"
            )
        first, last = s.stripe.get("first_event"), s.stripe.get("last_event")
        if first and last:
            gaps = reads["gaps"]
            paused = sum(length for _, length in gaps)
            self.log(
                f"  before the first answer {first - reads['started']:.2f}s, after the last "
                f"{reads['ended'] - last:.2f}s; {len(gaps)} pause(s) >= {GAP_S:g}s in reading, "
                f"{paused:.2f}s in all"
                + (": " + ", ".join(f"{length:.2f}s" for _, length in gaps) if gaps else "")
            )
        self.log(
            f"  reading rate per {TIMELINE_S} s (requests/s): "
            + " ".join(f"{rate:.0f}" for rate in reads["timeline"])
        )
        loads = ", ".join(f"{slug} {sec:.2f}s" for slug, sec in timer.loads)
        self.log(
            f"  main thread: loading OpenMeter + ledger per meter (its steps' time): {loads} "
            f"({sum(sec for _, sec in timer.loads):.2f}s); judging {timer.judged:,} customers' "
            f"summaries {timer.judge_s:.2f}s"
        )
        self.log(
            f"  app process CPU: {timer.cpu_s:.1f}s in {s.seconds:.1f}s "
            f"({timer.cpu_s / s.seconds:.0%} of one core; the GIL lets Python use one), "
            f"{timer.cpu_s / max(1, s.events) * 1000:.2f} ms per summaries request"
        )
        self.log(f"  peak RSS during the run: {s.rss_mb:.0f} MB")


def print_profile(path: str, top: int = 25) -> None:
    out = io.StringIO()
    stats = pstats.Stats(path, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    print(f"\nPROFILE of the reconciliation's own thread ({path}; the pool's threads not shown)")
    print(out.getvalue())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=None, help="default 10000 (quick: 1000)")
    parser.add_argument("--meters", type=int, default=3)
    parser.add_argument("--hours", type=int, default=48, help="history and lookback, in hours")
    parser.add_argument("--rate", type=float, default=500, help="STRIPE_MAX_REQUESTS_PER_SECOND")
    parser.add_argument("--latency-ms", type=float, default=5.0, help="added to every answer")
    parser.add_argument("--concurrency", type=int, default=0, help="STRIPE_READ_CONCURRENCY")
    parser.add_argument(
        "--diff-percent",
        type=float,
        default=1.0,
        help="customers with an unsent window, and as many others with a drifting one",
    )
    parser.add_argument("--database-url", default="", help="default: SQLite in a temp dir")
    parser.add_argument(
        "--debug",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="DEBUG=true (default) or false",
    )
    parser.add_argument("--profile", default="", help="cProfile the run into this file, print it")
    parser.add_argument("--quick", action="store_true", help="1000 customers, ~20 s")
    args = parser.parse_args(argv)
    if args.customers is None:
        args.customers = 1000 if args.quick else 10000
    if not 0 < args.diff_percent <= 33:
        parser.error("--diff-percent must be in (0, 33]")
    if args.customers < 3 or args.meters < 1 or args.hours < 1:
        parser.error("at least 3 customers, 1 meter and 1 hour")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"machine: {machine()}")
    print(
        f"sizes: {args.customers:,} customers x {args.meters} meters x {args.hours} h reconciled; "
        f"rate {args.rate:g}/s (app and fake Stripe), latency {args.latency_ms:g} ms per answer",
        flush=True,
    )
    os.environ["RECONCILE_LOOKBACK_HOURS"] = str(args.hours)
    os.environ["RECONCILE_SETTLE_MINUTES"] = "0"
    if args.concurrency:
        os.environ["STRIPE_READ_CONCURRENCY"] = str(args.concurrency)
    try:
        fakes = Fakes(handler=_reconcile_command, timed=is_summaries_path)
    except FakesError as exc:
        print(f"reconcile_bench: error: {exc}", file=sys.stderr, flush=True)
        return 1
    sampler = RssSampler()
    try:
        with tempfile.TemporaryDirectory(prefix="meterbridge-bench-") as tmp:
            configure_django(args, fakes, tmp)
            from django.conf import settings

            bench = ReconcileBench(args, fakes, sampler)
            bench.prepare()
            result, check, timer, reads = bench.reconcile(args.profile)
            bench.describe(result, timer, reads, settings.STRIPE_MAX_REQUESTS_PER_SECOND)
            bench.check(check)
            concurrency = settings.STRIPE_READ_CONCURRENCY
    except FakesError as exc:
        print(f"reconcile_bench: error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        sampler.stop()
        fakes.stop()
    if args.profile:
        print_profile(args.profile)
    return summary(args, bench, result, check, reads, sampler, concurrency)


def summary(
    args: argparse.Namespace,
    bench: ReconcileBench,
    s: Scenario,
    check: Any,
    reads: dict[str, Any],
    sampler: RssSampler,
    concurrency: int,
) -> int:
    p = bench.plan
    rate = s.events_per_s
    by_status = s.stripe.get("by_status", {})
    rows: list[tuple[str, str, str, bool | None]] = [
        (
            "requests (summaries, one per customer and meter)",
            f"{s.stripe.get('total', 0):,} to the fake ({s.events:,} answered 200); "
            f"{args.customers * args.meters:,} needed",
            "",
            None,
        ),
        ("time (start + execute)", f"{s.seconds:.1f}s", "", None),
        (
            "achieved rate",
            f"{rate:,.0f}/s = {rate / args.rate:.1%} of {args.rate:g}/s "
            f"(STRIPE_READ_CONCURRENCY {concurrency})",
            f">= {TARGET_READ_FRACTION:.0%}",
            rate >= TARGET_READ_FRACTION * args.rate,
        ),
        (
            "busiest second, 429s",
            f"{s.stripe.get('peak_1s', 0)} answered / {reads['arrival_peak']} arrived, "
            f"{by_status.get(429, 0)} x 429",
            f"<= {args.rate:g}, 0",
            None,
        ),
        (
            "peak RSS, app process",
            f"{max_rss_mb():.0f} MB (ru_maxrss, seeding included); "
            f"before the run {sampler.peaks.get('setup', 0.0):.0f} MB, "
            f"during it {sampler.peaks.get('reconcile', 0.0):.0f} MB",
            f"(report_bench's target <= {REFERENCE_RSS_MB:g} MB)",
            None,
        ),
        (
            "classification",
            f"matched {check.matched:,} / unsent {check.unsent:,} / drift {check.drift:,} / "
            f"settling {check.settling:,} (expected {p.matched:,} / {p.unsent:,} / "
            f"{p.drift:,} / 0)",
            "exact",
            not bench.problems,
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print("\nSUMMARY")
    for name, value, target, ok in rows:
        mark = "" if ok is None else ("PASS" if ok else "FAIL")
        print(f"  {name:<{width}}  {value}  {target}  {mark}".rstrip())
    failed = [r[0] for r in rows if r[3] is False]
    print(f"\n{'all targets met' if not failed else 'missed: ' + ', '.join(failed)}")
    if args.quick:
        print("(--quick is a smoke run: the rate target is for 10,000 customers x 3 meters)")
        return 1 if bench.problems else 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
