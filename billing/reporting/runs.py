"""A run's life: start (check the request, create the ReportRun), prepare it (moves followed,
what may be billed, its parts), do each part (a meter or a shard of its customers, under their
locks), and closing runs whose worker died. The run ends with its last part (parts.py)."""

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from billing import aggregations, clock, subjects, windows
from billing.closing.corrections import CorrectionCollector
from billing.integrations.meter_events import make_sender
from billing.integrations.openmeter import OpenMeterClient, OpenMeterError
from billing.models import (
    Customer,
    CustomerSubject,
    Meter,
    ReportRun,
    RunMode,
    RunPart,
    RunStatus,
    SubjectMove,
    Trigger,
)
from billing.openmeter_attribution import Followed, follow_openmeter
from billing.queue import enqueue
from billing.redaction import redact
from billing.reporting import parts
from billing.reporting.detect import MeterPass
from billing.reporting.locks import meter_lock, slot_of
from billing.reporting.period_to_date import PeriodToDatePass
from billing.reporting.periods import (
    ReportInputError,
    meter_range,
    plan_coverage,
    recent_period,
)
from billing.reporting.recorder import Recorder
from billing.reporting.tally import Tally

logger = logging.getLogger(__name__)

MOVED_SHOWN = 20  # subjects named in the reason of a run re-reporting moves


@dataclass(frozen=True, kw_only=True)
class RunRequest:
    """What someone asked a run to report. Without start and end: the lookback."""

    trigger: str
    start: datetime | None = None
    end: datetime | None = None
    meters: Sequence[Meter] | None = None  # None: every active meter
    customers: Sequence[Customer] | None = None  # None: every active customer
    dry_run: bool = False
    requested_by: Any = None
    reason: str = ""  # why it was asked for: required for a re-report from the admin
    # A dry run that previews subject moves: {subject: customer pk or None} as if saved.
    assumed_subjects: Mapping[str, int | None] | None = None
    scheduled_for: datetime | None = None  # the schedule slot of a scheduled run (one run each)


class RunAlreadyStarted(Exception):
    """Another cluster started the run of this schedule slot already."""


def start_run(request: RunRequest, *, now: datetime | None = None) -> ReportRun:
    """Check the request and create its ReportRun (status running). Raises ReportInputError.

    With start and end, the run covers that period; without, it is a lookback: each meter's
    closed windows of the last REPORT_LOOKBACK_HOURS before `now`, whatever the trigger.
    """
    now = now or clock.now()
    meters, customers = request.meters, request.customers
    chosen = list(meters) if meters else list(Meter.objects.filter(active=True))
    coverage = plan_coverage(start=request.start, end=request.end, meters=chosen, now=now)
    fields = dict(
        trigger=request.trigger,
        requested_by=request.requested_by,
        reason=request.reason,
        mode=coverage.mode,
        period_start=coverage.start,
        period_end=coverage.end,
        dry_run=request.dry_run,
        meter_slugs=[m.openmeter_slug for m in meters] if meters else [],
        customer_subjects=[c.openmeter_subject for c in customers] if customers else [],
        assumed_subjects=dict(request.assumed_subjects or {}),
        scheduled_for=request.scheduled_for,
    )
    try:
        with transaction.atomic():
            return ReportRun.objects.create(**fields)
    except IntegrityError:
        if request.scheduled_for is None:
            raise
        raise RunAlreadyStarted(f"The run scheduled for {request.scheduled_for} exists.") from None


def execute_run(run: ReportRun, *, follow: bool = True, fan_out: bool = False) -> ReportRun:
    """Report what the run covers. Never raises for a Stripe or OpenMeter failure: it is
    recorded on the run. A run that sends first takes up subject moves made in OpenMeter,
    unless `follow` is False (its caller has just done so).

    The run is prepared here (moves followed, what may be billed, its parts planned); its parts
    are then done here one after the other, or with `fan_out` queued as tasks that any worker
    takes. The run ends when its last part does."""
    preparation = parts.begin_preparation(run)
    customers: dict[str, Customer] = {}
    if preparation is None:
        logger.warning("Report run %s was prepared already; not preparing it twice.", run.pk)
        run.refresh_from_db()
        return run
    tally = Tally(part=preparation)
    planned: list[RunPart] = []
    try:
        if follow and not run.dry_run:
            _follow_openmeter(run, tally)
        meters = _reportable_meters(run, tally)
        customers = _reportable_customers(run, tally)
        planned = parts.plan(
            run=run,
            meters=meters,
            customers=len({c.id for c in customers.values()}),
            shard=fan_out,
        )
    except Exception as exc:  # the run must end with a status, whatever happened
        logger.exception("Report run %s crashed", run.pk)
        tally.errors.append(f"Unexpected error: {redact(str(exc))}")
    parts.end(preparation, tally)
    for part in planned:
        if fan_out:
            _enqueue_part(part)
        else:
            execute_part(part, everyone=customers)
    run.refresh_from_db()
    return run


def _enqueue_part(part: RunPart) -> None:
    try:
        enqueue(
            "billing.tasks.execute_run_part",
            part.pk,
            task_name=f"Report run #{part.run_id}, part #{part.pk}",
            group="report_runs",
        )
    except Exception as exc:  # the broker is down: the part ends failed, the run can end
        logger.exception("Run part %s could not be queued", part.pk)
        parts.end(part, Tally(part=part, errors=[f"Could not be queued: {redact(str(exc))}"]))


def execute_part(part: RunPart, *, everyone: dict[str, Customer] | None = None) -> None:
    """Do one part of a run: a meter, or one shard of its customers. Ends the part (and the run,
    if it was the last) whatever happens. `everyone`: the run's customers by subject, when the
    caller has them (else read again: the preparation may have been another process's)."""
    if not parts.start(part):
        logger.warning("Run part %s already ended; not doing it twice.", part.pk)
        return
    run, meter = part.run, part.meter
    tally = Tally(part=part)
    try:
        assert meter is not None, "the preparation is not a part to execute"
        # One shard of a meter counts its usage under subjects of no customer: it needs them all.
        counts_unmapped = part.shards > 1 and part.shard == 0 and not run.customer_subjects
        if everyone is None:  # what was skipped is the preparation's to say
            everyone = _reportable_customers(run, Tally(), part=None if counts_unmapped else part)
        start, end = meter_range(run=run, meter=meter)
        with OpenMeterClient.from_settings() as openmeter:
            _report_meter(
                run=run,
                meter=meter,
                pass_fields={
                    "start": start,
                    "end": end,
                    "customers": parts.shard_of(everyone, part),
                    "filtered": bool(run.customer_subjects) or part.shards > 1,
                    "openmeter": openmeter,
                    "tally": tally,
                },
            )
            if counts_unmapped:  # the other shards compare their own customers only
                whole = MeterPass(
                    meter=meter,
                    start=start,
                    end=end,
                    customers=everyone,
                    filtered=False,
                    openmeter=openmeter,
                    tally=tally,
                )
                whole.count_unmapped(whole.range_totals(start, end, []))
    except Exception as exc:  # the part must end, whatever happened
        logger.exception("Report run %s, part %s crashed", run.pk, part.pk)
        tally.errors.append(f"Unexpected error: {redact(str(exc))}")
    parts.end(part, tally)


def _follow_openmeter(run: ReportRun, tally: Tally) -> None:
    """Take up subject moves made in OpenMeter (billing/openmeter_attribution.py): first
    re-report the customers they touch."""
    try:
        with OpenMeterClient.from_settings() as client:
            followed = follow_openmeter(client=client, now=clock.now())
    except OpenMeterError as exc:
        tally.errors.append(f"OpenMeter's customers could not be read: {redact(str(exc))}")
        return
    tally.errors.extend(followed.problems)
    rerun = start_followup_run(followed=followed, trigger=run.trigger, requested_by=None)
    if rerun is not None:
        execute_run(rerun, follow=False)
        if rerun.status != RunStatus.SUCCEEDED:
            tally.errors.append(
                f"Run #{rerun.pk}, re-reporting subjects moved in OpenMeter, failed."
            )


def start_followup_run(*, followed: Followed, trigger: str, requested_by: Any) -> ReportRun | None:
    """The run (started, not executed) re-reporting the customers whose subjects changed, over
    every window Stripe still accepts, linked from their SubjectMove rows. None: no change."""
    usable = [c for c in followed.customers if c.reportable_reason() is None]
    if not followed.moves or not usable:
        return None
    start, end = recent_period(now=clock.now())
    subjects = sorted({m.subject for m in followed.moves})
    moved = ", ".join(subjects[:MOVED_SHOWN])
    if len(subjects) > MOVED_SHOWN:
        moved += f" and {len(subjects) - MOVED_SHOWN} more"
    rerun = start_run(
        RunRequest(
            trigger=trigger,
            start=start,
            end=end,
            customers=usable,
            requested_by=requested_by,
            reason=f"Subjects of OpenMeter customers changed: {moved}",
        )
    )
    pks = [m.pk for m in followed.moves]
    for i in range(0, len(pks), 500):  # SQLite limits a query's parameters
        SubjectMove.objects.filter(pk__in=pks[i : i + 500]).update(run=rerun)
    return rerun


def report_usage(*, now: datetime | None = None, **request: Any) -> ReportRun:
    """start_run + execute_run, for a RunRequest given as keywords: the synchronous path of the
    command and the schedule."""
    return execute_run(start_run(RunRequest(**request), now=now))


def _reportable_meters(run: ReportRun, tally: Tally) -> list[Meter]:
    """The run's meters that may be billed; the others are errors on the run."""
    meters = Meter.objects.filter(active=True)
    if run.meter_slugs:
        meters = Meter.objects.filter(openmeter_slug__in=run.meter_slugs)
    usable = []
    for meter in meters.order_by("pk"):
        reason = meter.reportable_reason()
        if reason is None:
            usable.append(meter)
        else:
            tally.errors.append(f"Meter '{meter.openmeter_slug}' skipped: {reason}.")
    return usable


# What a run reads of each customer: who it is in OpenMeter and Stripe, and whether it may be
# billed. A run holds every active customer at once (100,000 in full rows: ~25 MB more).
REPORTING_FIELDS = (
    "id",
    "openmeter_subject",
    "stripe_customer_id",
    "openmeter_customer_id",
    "active",
    "sync_status",
    "sync_error",
)


def _reportable_customers(
    run: ReportRun, tally: Tally, *, part: RunPart | None = None
) -> dict[str, Customer]:
    """The run's customers that may be billed, by subject; the others are errors on the run.
    `part`: that part's shard of them only (the database leaves out the others)."""
    customers = Customer.objects.filter(active=True).only(*REPORTING_FIELDS)
    if part is not None:
        customers = parts.in_shard_query(customers, part)
    if run.customer_subjects:
        customers = customers.filter(openmeter_subject__in=run.customer_subjects)
    usable = []
    for customer in customers:
        reason = customer.reportable_reason()
        if reason is None:
            usable.append(customer)
        else:
            tally.errors.append(f"Customer '{customer.openmeter_subject}' skipped: {reason}.")
    return subjects.owners(usable, assumed=run.assumed_subjects)


def _report_meter(*, run: ReportRun, meter: Meter, pass_fields: dict[str, Any]) -> None:
    tally: Tally = pass_fields["tally"]
    if pass_fields["start"] >= pass_fields["end"]:
        return
    try:
        info = pass_fields["openmeter"].get_meter(meter.openmeter_slug)
    except OpenMeterError as exc:
        tally.errors.append(redact(str(exc)))
        return
    problem = Meter.aggregation_problem(info.aggregation)
    billed = aggregations.stripe_formula(meter.openmeter_aggregation)
    if problem is None and aggregations.stripe_formula(info.aggregation) != billed:
        problem = (
            f"OpenMeter now aggregates it with {info.aggregation.upper()}, but its Stripe meter "
            f"bills with formula '{billed}', which Stripe cannot change. Create a new meter."
        )
    if problem:
        tally.errors.append(f"Meter '{meter.openmeter_slug}' skipped: {problem}")
        return
    meter_pass: MeterPass
    if aggregations.is_period_to_date(info.aggregation):
        # Closing a period (the only runs Stripe's webhooks start) needs the period's value, its
        # last window, exact: walking back from it reads a few windows, not every one.
        meter_pass = PeriodToDatePass(
            meter=meter,
            aggregation=info.aggregation.upper(),
            every_window_exact=run.trigger != Trigger.WEBHOOK,
            **pass_fields,
        )
    else:
        meter_pass = MeterPass(meter=meter, **pass_fields)
    if run.dry_run:
        _compare_and_send(run=run, meter_pass=meter_pass)
        return
    slots = {slot_of(customer.id) for customer in meter_pass.everyone}
    with meter_lock(meter.pk, wait=settings.REPORT_LOCK_WAIT_SECONDS, slots=slots) as held:
        if not held:
            message = (
                f"Meter '{meter.openmeter_slug}' skipped: another run is reporting it right now; "
                "the next run will cover these windows."
            )
            logger.warning(message)
            tally.errors.append(message)
            return
        _compare_and_send(run=run, meter_pass=meter_pass)


def _compare_and_send(*, run: ReportRun, meter_pass: MeterPass) -> None:
    tally = meter_pass.tally
    n_windows = windows.count(meter_pass.start, meter_pass.end, meter_pass.meter.window)
    tally.windows_checked += n_windows * len(meter_pass.everyone)
    recorder = Recorder(run=run, meter=meter_pass.meter, tally=tally)
    # Windows of periods whose invoice is final are not sent (Stripe would bill them nowhere):
    # their changes become corrections, proposed for approval.
    corrections = CorrectionCollector(
        run=run, meter=meter_pass.meter, start=meter_pass.start, end=meter_pass.end
    )
    try:
        changes = meter_pass.every_window() if run.mode == RunMode.PERIOD else meter_pass.by_range()
        changes = corrections.split(changes)
        if run.dry_run:
            recorder.dry_run(changes)
        else:
            recorder.send(changes, make_sender())
    except OpenMeterError as exc:
        tally.errors.append(redact(str(exc)))
    finally:
        recorder.flush()  # what was sent before an error is recorded too
    corrections.save()


def fail_abandoned_runs() -> int:
    """Close runs still 'running' past the task timeout: a part's worker died, or never started.

    Their sends are safe to repeat (identifiers), so the message asks for the period again.
    """
    return parts.fail_abandoned(older_than=settings.REPORT_TASK_TIMEOUT + 10 * 60)


def selected(
    *, meter_slugs: Iterable[str] = (), customer_subjects: Iterable[str] = ()
) -> tuple[list[Meter], list[Customer]]:
    """Look up meters and customers by slug/subject; unknown ones are a ReportInputError."""
    slugs, subjects = list(meter_slugs), list(customer_subjects)
    meters = list(Meter.objects.filter(openmeter_slug__in=slugs)) if slugs else []
    missing = sorted(set(slugs) - {m.openmeter_slug for m in meters})
    if missing:
        raise ReportInputError(f"Unknown meter(s): {', '.join(missing)}.")
    customers = list(Customer.objects.filter(openmeter_subject__in=subjects)) if subjects else []
    missing = sorted(set(subjects) - {c.openmeter_subject for c in customers})
    if missing:  # any of a customer's subjects names it
        held = Customer.objects.filter(subjects__subject__in=missing).distinct()
        customers += [c for c in held if c not in customers]
        missing = sorted(
            set(missing)
            - set(
                CustomerSubject.objects.filter(subject__in=missing).values_list(
                    "subject", flat=True
                )
            )
        )
    if missing:
        raise ReportInputError(f"Unknown customer subject(s): {', '.join(missing)}.")
    return meters, customers
