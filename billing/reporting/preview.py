"""A re-report's preview (a dry run, read back as old -> new per window) and the real run it
confirms, queued for the worker. What was shown is what is sent, unless usage changes between."""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Min, QuerySet

from billing import clock
from billing.models import (
    Customer,
    LogStatus,
    Meter,
    ReportLog,
    ReportRun,
    RunStatus,
    Trigger,
)
from billing.pricing import Amounts, PriceBook
from billing.queue import enqueue as queue_task
from billing.reporting.period_to_date import sent_before
from billing.reporting.periods import ReportInputError
from billing.reporting.runs import RunRequest, execute_run, selected, start_run
from billing.reporting.selection import Selection

PREVIEW_WINDOWS_SHOWN = 500  # window-by-window detail is capped; the totals cover everything
PREVIEW_MAX_AGE = timedelta(hours=1)  # an older preview may no longer say what would be sent
ZERO = Decimal(0)
REASON_REQUIRED = "Say why this period is reported again: the reason is kept on the run."


@dataclass
class WindowChange:
    window_start: datetime
    window_end: datetime
    old: Decimal | None  # None: Stripe holds nothing for this window yet
    new: Decimal
    value_change: Amounts = field(default_factory=Amounts)  # the difference as money
    # Period-to-date meters: what Stripe bills for the period as of this window before the
    # change (the latest value sent in the period up to it), which `delta` is measured from.
    before: Decimal | None = None

    @property
    def delta(self) -> Decimal:
        base = self.before if self.before is not None else self.old
        return self.new - (base or Decimal(0))


@dataclass
class CustomerChanges:
    """One customer's changed windows on one meter."""

    meter: Meter
    customer: Customer
    windows: int
    old_total: Decimal
    new_total: Decimal
    changes: list[WindowChange] = field(default_factory=list)  # capped: see PREVIEW_WINDOWS_SHOWN
    value_change: Amounts = field(default_factory=Amounts)  # the difference as money

    delta = property(lambda self: self.new_total - self.old_total)


@dataclass
class MeterTotals:
    meter: Meter
    windows: int = 0
    customers: int = 0
    old_total: Decimal = Decimal(0)
    new_total: Decimal = Decimal(0)
    value_change: Amounts = field(default_factory=Amounts)

    delta = property(lambda self: self.new_total - self.old_total)


@dataclass
class Preview:
    run: ReportRun
    rows: list[CustomerChanges]
    meters: list[MeterTotals]
    windows_changed: int
    windows_shown: int

    @property
    def has_values_to_date(self) -> bool:
        return any(total.meter.period_to_date for total in self.meters)

    @property
    def complete(self) -> bool:
        """A preview that failed somewhere does not say what a run would send."""
        return self.run.status == RunStatus.SUCCEEDED


def preview(
    *,
    selection: Selection,
    start: datetime,
    end: datetime,
    requested_by: Any,
    reason: str,
    now: datetime | None = None,
) -> Preview:
    """Dry-run the period now, in this process (no Stripe call). Raises ReportInputError.

    `reason` (why the period is reported again) is required: it is kept on the dry run, and
    `confirm` carries it to the real run, so the history says who, why and what."""
    if not selection.usable:
        raise ReportInputError(" ".join(selection.problems))
    reason = reason.strip()
    if not reason:
        raise ReportInputError(REASON_REQUIRED)
    request = RunRequest(
        trigger=Trigger.ADMIN,
        start=start,
        end=end,
        meters=selection.meters,
        customers=selection.customers,
        dry_run=True,
        requested_by=requested_by,
        reason=reason,
    )
    run = start_run(request, now=now)
    execute_run(run)
    return load_preview(run=run)


def load_preview(*, run: ReportRun) -> Preview:
    """Read a dry run's ReportLog rows in one streamed pass: exact totals, a capped detail."""
    rows: dict[tuple[int, int], CustomerChanges] = {}
    totals: dict[int, MeterTotals] = {}
    shown = 0
    mine = ReportLog.objects.filter(run=run, status=LogStatus.DRY_RUN)
    meters = Meter.objects.filter(pk__in=mine.values("meter_id")).in_bulk()
    customers = Customer.objects.filter(pk__in=mine.values("customer_id")).in_bulk()
    logs = mine.order_by("meter_id", "customer_id", "window_start").values_list(
        "meter_id",
        "customer_id",
        "window_start",
        "window_end",
        "previous_quantity",
        "quantity",
        "period_start",
    )
    steps = _steps_before(mine)  # period-to-date: Stripe's value so far, per period
    # Totals in Python: SQLite sums decimals as floats, and these are the numbers to be billed.
    for meter_id, customer_id, w_start, w_end, old, new, period in logs.iterator(chunk_size=2000):
        row = rows.get((meter_id, customer_id))
        if row is None:
            meter, customer = meters[meter_id], customers[customer_id]
            row = rows[(meter_id, customer_id)] = CustomerChanges(meter, customer, 0, ZERO, ZERO)
            totals.setdefault(meter_id, MeterTotals(meter)).customers += 1
        row.windows += 1
        totals[meter_id].windows += 1
        change = WindowChange(w_start, w_end, old, new)
        if period is None:  # a window of its own: the period's value is the sum
            row.old_total += old or ZERO
            row.new_total += new
        else:  # the period's value is its latest window's: the row shows the newest change
            key = (meter_id, customer_id, period)
            change.before = old if old is not None else steps.get(key, ZERO)
            steps[key] = new
            row.old_total, row.new_total = change.before, new
        if shown < PREVIEW_WINDOWS_SHOWN:
            row.changes.append(change)
            shown += 1
    for row in rows.values():
        totals[row.meter.pk].old_total += row.old_total
        totals[row.meter.pk].new_total += row.new_total
    prices = PriceBook.load(customer_ids=customers)
    for (meter_id, customer_id), row in rows.items():
        row.value_change = prices.value(
            quantity=row.delta, meter_id=meter_id, customer_id=customer_id
        )
        for change in row.changes:
            change.value_change = prices.value(
                quantity=change.delta, meter_id=meter_id, customer_id=customer_id
            )
        totals[meter_id].value_change += row.value_change
    ordered = sorted(rows.values(), key=lambda r: (r.meter.name, r.customer.name, r.customer.pk))
    return Preview(
        run=run,
        rows=ordered,
        meters=sorted(totals.values(), key=lambda t: t.meter.name),
        windows_changed=sum(t.windows for t in totals.values()),
        windows_shown=shown,
    )


def _steps_before(logs: "QuerySet[ReportLog]") -> dict[tuple[int, int, datetime], Decimal]:
    """Per (meter, customer, period start) of a dry run's period-to-date rows: what Stripe bills
    for the period before the first window the run changes. One ledger read per distinct (meter,
    period, first window), not per customer."""
    firsts: dict[tuple[int, datetime, datetime], list[int]] = defaultdict(list)
    for row in (
        logs.exclude(period_start=None)
        .values("meter_id", "customer_id", "period_start")
        .annotate(first=Min("window_start"))
        .order_by()
    ):
        period = row["period_start"]
        if period is not None:
            firsts[(row["meter_id"], period, row["first"])].append(row["customer_id"])
    meters = Meter.objects.in_bulk({meter_id for meter_id, _, _ in firsts})
    steps: dict[tuple[int, int, datetime], Decimal] = {}
    for (meter_id, period, first), customer_ids in firsts.items():
        found = sent_before(
            meter=meters[meter_id], customer_ids=customer_ids, start=period, end=first
        )
        for customer_id, value in found.items():
            steps[(meter_id, customer_id, period)] = value
    return steps


# --- the real run -----------------------------------------------------------------------------


def confirm(*, preview_run: ReportRun, requested_by: Any, now: datetime | None = None) -> ReportRun:
    """Start the real run the preview showed, queued for the worker. Raises ReportInputError."""
    now = now or clock.now()
    if (
        not preview_run.dry_run
        or preview_run.trigger != Trigger.ADMIN
        or preview_run.requested_by_id != getattr(requested_by, "pk", None)
    ):
        raise ReportInputError("That preview is not yours to confirm: preview again.")
    if not preview_run.reason.strip():
        raise ReportInputError(f"{REASON_REQUIRED} Preview again with a reason.")
    if preview_run.assumed_subjects:
        raise ReportInputError("That preview shows a subject move: confirm it on its own page.")
    check_current(preview_run, now=now)
    started = _started_from(preview_run)
    if started is not None:  # "Report" pressed twice: one run is enough
        return started
    meters, customers = selected(
        meter_slugs=preview_run.meter_slugs, customer_subjects=preview_run.customer_subjects
    )
    request = RunRequest(
        trigger=Trigger.ADMIN,
        start=preview_run.period_start,
        end=preview_run.period_end,
        meters=meters or None,
        customers=customers or None,
        requested_by=requested_by,
        reason=preview_run.reason,
    )
    run = start_run(request, now=now)
    enqueue(run)
    return run


def check_current(preview_run: ReportRun, *, now: datetime) -> None:
    """Refuse a preview that does not say what a run would do now: one that did not complete,
    or is more than PREVIEW_MAX_AGE old. Raises ReportInputError."""
    if preview_run.status != RunStatus.SUCCEEDED:
        raise ReportInputError(
            "The preview did not complete, so it does not say what would change: preview again."
        )
    if now - preview_run.started_at > PREVIEW_MAX_AGE:
        raise ReportInputError(
            "The preview is more than an hour old and usage may have changed: preview again."
        )


def _started_from(preview_run: ReportRun) -> ReportRun | None:
    """The real run already started from this preview, if any."""
    candidates = ReportRun.objects.filter(
        trigger=Trigger.ADMIN,
        dry_run=False,
        requested_by_id=preview_run.requested_by_id,
        period_start=preview_run.period_start,
        period_end=preview_run.period_end,
        pk__gt=preview_run.pk,  # started after the preview
    ).order_by("pk")
    for run in candidates:
        if set(run.meter_slugs) == set(preview_run.meter_slugs) and set(
            run.customer_subjects
        ) == set(preview_run.customer_subjects):
            return run
    return None


def enqueue(run: ReportRun) -> None:
    """Hand the run to the django-q2 worker once the run's row is committed and visible to it."""
    run_id = run.pk
    transaction.on_commit(
        lambda: queue_task(
            "billing.tasks.execute_report_run",
            run_id,
            task_name=f"Report run #{run_id}",
            group="report_runs",
        )
    )
