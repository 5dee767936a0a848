"""A run's parts: planned (one per meter, or per shard of a meter's customers when they are many),
started and ended by whichever worker takes them, and the run finished by the last one to end.

Each part writes its own counters; the run's are their sums (tally.sum_parts), so a part that is
done again after its worker died does not count twice.
"""

import logging
import os
import socket
from collections.abc import Mapping, Sequence
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q, QuerySet

from billing import clock
from billing.models import Customer, Meter, ReportRun, RunPart, RunStatus
from billing.reporting.locks import LOCK_SLOTS, slot_of
from billing.reporting.tally import COUNTERS, Tally, sum_parts, sum_unmapped

logger = logging.getLogger(__name__)

ABANDONED_PART = (
    "This part stopped before it finished (its worker was killed, timed out or never took it). "
    "What it sent is recorded; report the period again to complete it."
)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def shard_count(customers: int) -> int:
    """Shards of a meter's customers: a power of two (so shards map onto lock slots evenly),
    REPORT_SHARD_CUSTOMERS customers or fewer each, at most LOCK_SLOTS."""
    shards = 1
    while shards < LOCK_SLOTS and customers > shards * settings.REPORT_SHARD_CUSTOMERS:
        shards *= 2
    return shards


def in_shard(customer: Customer, part: RunPart) -> bool:
    return slot_of(customer.id) % part.shards == part.shard


def in_shard_query(customers: QuerySet[Customer], part: RunPart) -> QuerySet[Customer]:
    """in_shard, in the database: the shard count divides LOCK_SLOTS, so a customer's lock slot
    modulo the shard count is its id modulo the shard count."""
    if part.shards == 1:
        return customers
    return customers.alias(shard_key=F("id") % part.shards).filter(shard_key=part.shard)


def shard_of(customers: Mapping[str, Customer], part: RunPart) -> dict[str, Customer]:
    """The part's customers, by subject (a customer may have several)."""
    if part.shards == 1:
        return dict(customers)
    return {subject: c for subject, c in customers.items() if in_shard(c, part)}


def plan(
    *, run: ReportRun, meters: Sequence[Meter], customers: int, shard: bool = True
) -> list[RunPart]:
    """The run's parts: per meter, and per shard of `customers` when `shard` (parts done one
    after the other in one process gain nothing from shards)."""
    shards = shard_count(customers) if shard else 1
    return RunPart.objects.bulk_create(
        RunPart(run=run, meter=meter, shard=shard, shards=shards)
        for meter in meters
        for shard in range(shards)
    )


def begin_preparation(run: ReportRun) -> RunPart | None:
    """The part that prepares the run; None if the run was prepared already (its task came
    twice)."""
    with transaction.atomic():
        ReportRun.objects.select_for_update().filter(pk=run.pk).first()
        if RunPart.objects.filter(run=run, meter__isnull=True).exists():
            return None
        return RunPart.objects.create(
            run=run, meter=None, started_at=clock.now(), worker=worker_name()
        )


def start(part: RunPart) -> bool:
    """Mark the part taken by this process; False if it already ended."""
    taken = RunPart.objects.filter(pk=part.pk, finished_at__isnull=True).update(
        started_at=clock.now(), worker=worker_name()
    )
    return taken == 1


def end(part: RunPart, tally: Tally) -> None:
    """Record the part's outcome once, then finish the run if this was its last part."""
    with transaction.atomic():
        ended = RunPart.objects.filter(pk=part.pk, finished_at__isnull=True).update(
            **{name: getattr(tally, name) for name in COUNTERS},
            error="\n".join(tally.errors),
            finished_at=clock.now(),
        )
        if ended:
            tally.save_unmapped()
    finish_if_done(run_id=part.run_id)


def finish_if_done(*, run_id: int) -> None:
    with transaction.atomic():
        run = ReportRun.objects.select_for_update().get(pk=run_id)
        if run.finished_at is not None or run.parts.filter(finished_at__isnull=True).exists():
            return
        _finish(run)


def _finish(run: ReportRun) -> None:
    sum_parts(run_id=run.pk)
    run.refresh_from_db(fields=COUNTERS)
    sum_unmapped(run)
    errors: list[str] = []
    for error in run.parts.order_by("pk").values_list("error", flat=True):
        for line in error.splitlines():
            if line not in errors:  # shards of one meter may say the same thing
                errors.append(line)
    if run.events_failed:
        errors.append(
            f"{run.events_failed} window(s) could not be sent; see the report log. "
            "The next run sends them again."
        )
    if not errors:
        run.status = RunStatus.SUCCEEDED
    elif run.events_sent == 0:
        run.status = RunStatus.FAILED
    else:
        run.status = RunStatus.PARTIAL
    run.error = "\n".join(errors)
    run.finished_at = clock.now()
    ReportRun.objects.filter(pk=run.pk).update(
        status=run.status, error=run.error, finished_at=run.finished_at
    )


def fail_abandoned(*, older_than: float) -> int:
    """End the parts no worker finished within `older_than` seconds (killed, timed out, or never
    taken), and close runs that never made parts. Returns how many of the runs that were
    running are closed now."""
    now = clock.now()
    limit = now - timedelta(seconds=older_than)
    running = set(
        ReportRun.objects.filter(status=RunStatus.RUNNING, finished_at__isnull=True).values_list(
            "pk", flat=True
        )
    )
    stale = RunPart.objects.filter(run__in=running, finished_at__isnull=True).filter(
        Q(started_at__lt=limit) | Q(started_at__isnull=True, created_at__lt=limit)
    )
    for part in stale:
        logger.warning("Run part %s abandoned (worker %s).", part.pk, part.worker or "none")
        end(part, Tally(part=part, errors=[ABANDONED_PART]))
    # Runs whose parts all ended without finishing them (a part's meter was deleted meanwhile).
    for run_id in (
        ReportRun.objects.filter(
            pk__in=running, finished_at__isnull=True, started_at__lt=limit, parts__isnull=False
        )
        .values_list("pk", flat=True)
        .distinct()
    ):
        finish_if_done(run_id=run_id)
    partless = ReportRun.objects.filter(
        pk__in=running, parts__isnull=True, started_at__lt=limit
    ).update(
        status=RunStatus.FAILED,
        finished_at=now,
        error="The run stopped before it finished (its worker was killed, timed out or never "
        "started). What it sent is recorded; report the period again to complete it.",
    )
    if partless:
        logger.warning("Closed %s run(s) without parts whose worker never came back.", partless)
    return ReportRun.objects.filter(pk__in=running, finished_at__isnull=False).count()
