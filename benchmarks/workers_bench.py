"""Scale-out benchmark: one run shared by 1, 2 and 4 `qcluster` processes on PostgreSQL and Redis.

    .venv/bin/python benchmarks/workers_bench.py                 # 2,000 customers x 3 meters
    .venv/bin/python benchmarks/workers_bench.py --customers 10000 --workers 1,2,4 --rate 500

Needs PostgreSQL and Redis (default 127.0.0.1, as on the project's machines): it makes a scratch
database `meterbridge_workers_bench` and uses its own django-q2 queue name. The fakes run in a
child process (report_bench.Fakes, 5 ms added to every answer). For each number of processes
(each `qcluster` with one worker), one hour of every customer's usage is reported by a run that
the admin would start (`execute_report_run` queued in Redis), whose parts (meter x shard of
REPORT_SHARD_CUSTOMERS customers) the processes share:

rate   the fake Stripe refuses with 429 anything beyond `--rate` requests in any second, the app
       is configured with the same rate: throughput should hold near the limit whatever the
       number of processes (they share one limiter through Redis), with no 429;
cpu    no limit and no added latency (the app's limit set far above what the fake can take):
       what the processes can send together when only CPU bounds them.

Printed per scenario and number of processes: events, seconds from the run's start to its end,
events/s over that time and over the sending (first event to last), the busiest second at the
fake, 429s, parts done by each process, peak RSS of each worker process, and whether the fake
Stripe holds exactly OpenMeter's values for that hour.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.report_bench import (  # noqa: E402 (the repository root must be on the path)
    HOUR,
    Bench,
    Fakes,
    RssSampler,
    configure_django,
    machine,
)

DATABASE = "meterbridge_workers_bench"
UNLIMITED_RATE = 100_000.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--meters", type=int, default=3)
    parser.add_argument("--workers", default="1,2,4", help="numbers of qcluster processes")
    parser.add_argument("--rate", type=float, default=500, help="STRIPE_MAX_REQUESTS_PER_SECOND")
    parser.add_argument("--latency-ms", type=float, default=5.0)
    parser.add_argument("--shard-customers", type=int, default=500)
    parser.add_argument("--scenarios", default="rate,cpu")
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    # What report_bench's seeding reads.
    args.subjects, args.hours, args.debug, args.concurrency = 1, 8, False, None
    args.database_url = f"{args.postgres}/{DATABASE}"
    return args


def scratch_database(args: argparse.Namespace) -> None:
    import psycopg

    with psycopg.connect(f"{args.postgres}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DATABASE}")


def worker_pids(cluster_pid: int) -> list[int]:
    """The processes of a qcluster (its workers, monitor and pusher), from /proc."""
    found, todo = [], [cluster_pid]
    while todo:
        pid = todo.pop()
        found.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            todo.extend(int(child) for child in task.read_text().split())
    return found


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Clusters:
    """`count` qcluster processes, one worker each, on the benchmark's database and queue."""

    def __init__(self, count: int, env: dict[str, str], logs: Path) -> None:
        self.logs = [(logs / f"qcluster-{count}-{n}.log").open("w") for n in range(count)]
        self.processes = [
            subprocess.Popen(
                [sys.executable, "manage.py", "qcluster"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            for log in self.logs
        ]

    def peak_rss(self) -> list[float]:
        """Peak RSS of the largest process of each cluster (its worker)."""
        return [
            max(peak_rss_mb(pid) for pid in worker_pids(process.pid)) for process in self.processes
        ]

    def stop(self) -> None:
        for process in self.processes:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        for log in self.logs:
            log.close()


def report_hour(bench: Bench, hour: int, clusters: Clusters) -> dict[str, Any]:
    from datetime import UTC, datetime, timedelta

    from django_q.tasks import async_task

    from billing.models import ReportRun, RunPart, Trigger
    from billing.reporting import RunRequest, start_run

    start = datetime.fromtimestamp(hour * HOUR, UTC)
    bench.fakes.call("reset_stats")
    run = start_run(RunRequest(trigger=Trigger.ADMIN, start=start, end=start + timedelta(hours=1)))
    async_task("billing.tasks.execute_report_run", run.pk)
    while True:
        run = ReportRun.objects.get(pk=run.pk)
        if run.finished_at is not None:
            break
        time.sleep(0.2)
    stats = bench.fakes.call("stats")["stripe"]
    seconds = (run.finished_at - run.started_at).total_seconds()
    workers = Counter(
        RunPart.objects.filter(run=run, meter__isnull=False).values_list("worker", flat=True)
    )
    first, last, requests = stats["first_event"], stats["last_event"], stats["event_requests"]
    return {
        "sending": (requests - 1) / (last - first) if requests > 1 and last > first else 0.0,
        "status": run.status,
        "events": run.events_sent,
        "seconds": seconds,
        "per_s": run.events_sent / seconds,
        "busiest": stats["peak_1s"],
        "429": stats["by_status"].get(429, 0),
        "parts": sorted(workers.values(), reverse=True),
        "rss": clusters.peak_rss(),
        "billed": bench._check_billed(hour),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    scenarios = args.scenarios.split(",")
    print(f"Machine: {machine()}")
    scratch_database(args)
    fakes = Fakes()
    sampler = RssSampler()
    queue = f"meterbridge-bench-{uuid.uuid4().hex[:8]}"
    os.environ.update(
        {
            "REDIS_URL": args.redis_url,
            "Q_CLUSTER_NAME": queue,
            "Q_WORKERS": "1",
            "REPORT_SHARD_CUSTOMERS": str(args.shard_customers),
        }
    )
    ok = True
    try:
        with tempfile.TemporaryDirectory() as tmp:
            configure_django(args, fakes, tmp)
            bench = Bench(args, fakes, sampler)
            rounds = len(counts) * len(scenarios)
            bench.seed(unreported=rounds)
            hour = bench.hour_a - rounds + 1
            for scenario in scenarios:
                limited = scenario == "rate"
                rate = args.rate if limited else UNLIMITED_RATE
                latency = args.latency_ms / 1000 if limited else 0.0
                fakes.call("configure", (latency, rate if limited else None))
                env = {
                    **os.environ,
                    "STRIPE_MAX_REQUESTS_PER_SECOND": str(rate),
                    "LOG_LEVEL": "WARNING",
                }
                for count in counts:
                    clusters = Clusters(count, env, Path(tmp))
                    time.sleep(3)  # let every cluster reach the queue before the run is there
                    try:
                        result = report_hour(bench, hour, clusters)
                    finally:
                        clusters.stop()
                    hour += 1
                    ok = ok and "OK" in result["billed"] and result["429"] == 0
                    share = (
                        f" = {result['sending'] / args.rate:.1%} of the limit" if limited else ""
                    )
                    print(
                        f"{scenario:4} {count} process(es): {result['events']:,} events in "
                        f"{result['seconds']:.1f} s = {result['per_s']:.0f}/s from the run's start "
                        f"to its end; {result['sending']:.0f}/s from the first event to the last"
                        f"{share}, busiest second {result['busiest']}, 429s {result['429']}, "
                        f"parts per process {result['parts']}, peak RSS per process "
                        f"{', '.join(f'{mb:.0f}' for mb in result['rss'])} MB; {result['status']}; "
                        f"{result['billed']}",
                        flush=True,
                    )
    finally:
        fakes.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
