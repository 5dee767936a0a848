"""Re-reporting a chosen period from the admin: what to report, which periods, the preview, the run.

The admin only calls these functions. A preview is a dry run of the reporting engine (no Stripe
call) whose ReportLog rows say, per meter, customer and window, the value Stripe holds and the
value that would replace it. Confirming starts the real run with the preview's period and
selection, so what was shown is what is sent (unless usage changes in between).
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Q, QuerySet
from django_q.tasks import async_task

from billing import reporting, stripe_sync, windows
from billing.models import (
    Customer,
    LogStatus,
    Meter,
    ReportLog,
    ReportRun,
    RunStatus,
    Subscription,
    SyncStatus,
    Trigger,
    Window,
)
from billing.stripe_client import get_client

PREVIEW_WINDOWS_SHOWN = 500  # window-by-window detail is capped; the totals cover everything
PREVIEW_MAX_AGE = timedelta(hours=1)  # an older preview may no longer say what would be sent
BILLING_PERIOD_MAX_SUBSCRIPTIONS = 20  # each one is a Stripe call while the page renders
LEFT_OUT_SHOWN = 50

CUSTOM = "custom"
ZERO = Decimal(0)


# --- the selection ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LeftOut:
    """A selected (or implied) meter or customer that will not be reported, and why."""

    obj: Meter | Customer
    reason: str

    @property
    def kind(self) -> str:
        return "Meter" if isinstance(self.obj, Meter) else "Customer"


@dataclass
class Selection:
    """What a re-report covers. `customers=None` means every active customer in Stripe."""

    meters: list[Meter]
    customers: list[Customer] | None
    left_out: list[LeftOut] = field(default_factory=list)
    left_out_more: int = 0  # left-out rows not listed, beyond LEFT_OUT_SHOWN
    problems: list[str] = field(default_factory=list)
    source_run: ReportRun | None = None

    @property
    def usable(self) -> bool:
        return not self.problems

    def subscriptions(self) -> "QuerySet[Subscription]":
        """The Stripe subscriptions billing this selection: its customers', else its meters'."""
        subs = Subscription.objects.exclude(stripe_subscription_id="").exclude(status="canceled")
        if self.customers is not None:
            return subs.filter(customer__in=self.customers)
        return subs.filter(prices__meter__in=self.meters).distinct()


def unusable_reason(obj: Meter | Customer) -> str | None:
    """Why a meter or customer cannot be reported to Stripe now, or None if it can."""
    if not obj.active:
        return "inactive"
    stripe_id = obj.stripe_meter_id if isinstance(obj, Meter) else obj.stripe_customer_id
    if not stripe_id:
        return "not in Stripe yet: save it or use “Sync to Stripe”"
    if obj.sync_status == SyncStatus.FAILED:
        return f"its last sync to Stripe failed ({obj.sync_error}): fix it and sync again"
    if obj.sync_status != SyncStatus.SYNCED:
        return "its Stripe sync is still pending: use “Sync to Stripe”"
    return None


def _split(objs: Iterable[Any]) -> tuple[list[Any], list[LeftOut]]:
    usable, left_out = [], []
    for obj in objs:
        reason = unusable_reason(obj)
        if reason is None:
            usable.append(obj)
        else:
            left_out.append(LeftOut(obj, reason))
    return usable, left_out


def _all_meters() -> tuple[list[Meter], list[LeftOut]]:
    return _split(Meter.objects.filter(active=True).order_by("name"))


def _all_customers() -> tuple[list[Customer] | None, list[LeftOut]]:
    """Every active customer; None (the engine's "all") unless some of them must be left out."""
    active = Customer.objects.filter(active=True)
    if not active.filter(~Q(sync_status=SyncStatus.SYNCED) | Q(stripe_customer_id="")).exists():
        return None, []
    usable, left_out = _split(active.order_by("name"))
    return usable, left_out


def _finish(selection: Selection, *, what: str) -> Selection:
    if len(selection.left_out) > LEFT_OUT_SHOWN:
        selection.left_out_more = len(selection.left_out) - LEFT_OUT_SHOWN
        selection.left_out = selection.left_out[:LEFT_OUT_SHOWN]
    if not selection.meters:
        selection.problems.append(
            f"Nothing to report: {what} has no active meter that is in Stripe."
        )
    if selection.customers is not None and not selection.customers:
        selection.problems.append(
            f"Nothing to report: {what} has no active customer that is in Stripe."
        )
    return selection


def select_customers(*, customers: Iterable[Customer]) -> Selection:
    """The chosen customers, on every active meter."""
    chosen, left_customers = _split(customers)
    meters, left_meters = _all_meters()
    selection = Selection(meters=meters, customers=chosen, left_out=left_customers + left_meters)
    return _finish(selection, what="the selection")


def select_meters(*, meters: Iterable[Meter]) -> Selection:
    """The chosen meters, for every active customer."""
    chosen, left_meters = _split(meters)
    customers, left_customers = _all_customers()
    selection = Selection(meters=chosen, customers=customers, left_out=left_meters + left_customers)
    return _finish(selection, what="the selection")


def select_like_run(*, run: ReportRun) -> Selection:
    """The meters and customers an earlier run covered (all active ones if it covered all)."""
    try:
        meters, customers = reporting.selected(
            meter_slugs=run.meter_slugs, customer_subjects=run.customer_subjects
        )
    except reporting.ReportInputError as exc:
        return Selection(meters=[], customers=[], problems=[str(exc)], source_run=run)
    if meters:
        chosen_meters, left_meters = _split(meters)
    else:
        chosen_meters, left_meters = _all_meters()
    chosen_customers: list[Customer] | None
    if customers:
        chosen_customers, left_customers = _split(customers)
    else:
        chosen_customers, left_customers = _all_customers()
    selection = Selection(
        meters=chosen_meters,
        customers=chosen_customers,
        left_out=left_meters + left_customers,
        source_run=run,
    )
    return _finish(selection, what=f"run #{run.pk}")


# --- periods ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    key: str
    label: str
    start: datetime | None = None
    end: datetime | None = None
    problem: str = ""  # why it cannot be reported; shown beside it


def coarsest_window(meters: Sequence[Meter]) -> str:
    """Periods must sit on every meter's boundaries: daily ones if any meter is daily."""
    return Window.DAY if any(m.window == Window.DAY for m in meters) else Window.HOUR


def _preset(
    key: str, label: str, start: datetime, end: datetime, *, meters: Sequence[Meter], now: datetime
) -> Preset:
    problem = ""
    if start >= end:
        problem = "no window of it has closed yet"
    else:
        try:
            reporting.validate_period(start=start, end=end, meters=meters, now=now)
        except reporting.ReportInputError as exc:
            problem = str(exc)
    return Preset(key, label, start, end, problem)


def _month_start(moment: datetime) -> datetime:
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def period_presets(*, selection: Selection, now: datetime) -> list[Preset]:
    """The periods offered on the form, aligned to the selected meters' windows."""
    meters = selection.meters
    window = coarsest_window(meters)
    closed = windows.floor(now, window)  # start of the still-open window
    today = windows.floor(now, Window.DAY)
    this_month = _month_start(now)
    last_month = _month_start(this_month - timedelta(days=1))
    presets = []
    if selection.source_run is not None:
        run = selection.source_run
        presets.append(
            _preset(
                "run",
                f"The period of run #{run.pk}",
                run.period_start,
                run.period_end,
                meters=meters,
                now=now,
            )
        )
    presets += [
        _preset(
            "last_24_hours",
            "Last 24 hours",
            windows.floor(now - timedelta(hours=24), window),
            closed,
            meters=meters,
            now=now,
        ),
        _preset("yesterday", "Yesterday", today - timedelta(days=1), today, meters=meters, now=now),
        _preset("this_month", "This month so far", this_month, closed, meters=meters, now=now),
        _preset("last_month", "Last month", last_month, this_month, meters=meters, now=now),
        _billing_period_preset(selection=selection, window=window, now=now),
    ]
    return presets


def _billing_period_preset(*, selection: Selection, window: str, now: datetime) -> Preset:
    label = "Current billing period so far"
    subs = list(selection.subscriptions()[: BILLING_PERIOD_MAX_SUBSCRIPTIONS + 1])
    if not subs:
        return Preset(
            "billing_period", label, problem="no Stripe subscription bills this selection"
        )
    if len(subs) > BILLING_PERIOD_MAX_SUBSCRIPTIONS:
        return Preset(
            "billing_period",
            label,
            problem=f"more than {BILLING_PERIOD_MAX_SUBSCRIPTIONS} subscriptions bill this "
            "selection: select fewer customers or give the period below",
        )
    try:
        period_start = current_period_start(subscriptions=subs)
    except Exception as exc:  # Stripe down must not break the page, only this choice
        return Preset(
            "billing_period",
            label,
            problem=f"could not read it from Stripe: {stripe_sync.error_message(exc)}",
        )
    if len(subs) > 1:
        label += f" (earliest of {len(subs)} subscriptions)"
    # The window that holds the period's start is reported whole: a partial window cannot be sent.
    start = windows.floor(period_start, window)
    return _preset(
        "billing_period",
        label,
        start,
        windows.floor(now, window),
        meters=selection.meters,
        now=now,
    )


def current_period_start(*, subscriptions: Sequence[Subscription]) -> datetime:
    """The earliest start of the subscriptions' current periods, as Stripe holds them (on their
    items). No retries: a slow Stripe must not hold up the page."""
    client = get_client(max_network_retries=0)
    starts = [
        item.current_period_start
        for sub in subscriptions
        for item in client.v1.subscriptions.retrieve(sub.stripe_subscription_id)["items"].data
    ]
    if not starts:
        raise ValueError("the subscriptions have no items in Stripe")
    return datetime.fromtimestamp(min(starts), UTC)


# --- preview ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowChange:
    window_start: datetime
    window_end: datetime
    old: Decimal | None  # None: Stripe holds nothing for this window yet
    new: Decimal

    @property
    def delta(self) -> Decimal:
        return self.new - (self.old or Decimal(0))


@dataclass
class CustomerChanges:
    """One customer's changed windows on one meter."""

    meter: Meter
    customer: Customer
    windows: int
    old_total: Decimal
    new_total: Decimal
    changes: list[WindowChange] = field(default_factory=list)  # capped: see PREVIEW_WINDOWS_SHOWN

    @property
    def delta(self) -> Decimal:
        return self.new_total - self.old_total


@dataclass
class MeterTotals:
    meter: Meter
    windows: int = 0
    customers: int = 0
    old_total: Decimal = Decimal(0)
    new_total: Decimal = Decimal(0)

    @property
    def delta(self) -> Decimal:
        return self.new_total - self.old_total


@dataclass
class Preview:
    run: ReportRun
    rows: list[CustomerChanges]
    meters: list[MeterTotals]
    windows_changed: int
    windows_shown: int

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
    now: datetime | None = None,
) -> Preview:
    """Dry-run the period now, in this process (no Stripe call). Raises ReportInputError."""
    if not selection.usable:
        raise reporting.ReportInputError(" ".join(selection.problems))
    run = reporting.start_run(
        trigger=Trigger.ADMIN,
        start=start,
        end=end,
        meters=selection.meters,
        customers=selection.customers,
        dry_run=True,
        requested_by=requested_by,
        now=now,
    )
    reporting.execute_run(run, now=now)
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
        "meter_id", "customer_id", "window_start", "window_end", "previous_quantity", "quantity"
    )
    # Totals in Python: SQLite sums decimals as floats, and these are the numbers to be billed.
    for meter_id, customer_id, w_start, w_end, old, new in logs.iterator(chunk_size=2000):
        row = rows.get((meter_id, customer_id))
        if row is None:
            meter, customer = meters[meter_id], customers[customer_id]
            row = rows[(meter_id, customer_id)] = CustomerChanges(meter, customer, 0, ZERO, ZERO)
            totals.setdefault(meter_id, MeterTotals(meter)).customers += 1
        row.windows += 1
        row.old_total += old or ZERO
        row.new_total += new
        total = totals[meter_id]
        total.windows += 1
        total.old_total += old or ZERO
        total.new_total += new
        if shown < PREVIEW_WINDOWS_SHOWN:
            row.changes.append(WindowChange(w_start, w_end, old, new))
            shown += 1
    ordered = sorted(rows.values(), key=lambda r: (r.meter.name, r.customer.name, r.customer.pk))
    return Preview(
        run=run,
        rows=ordered,
        meters=sorted(totals.values(), key=lambda t: t.meter.name),
        windows_changed=sum(t.windows for t in totals.values()),
        windows_shown=shown,
    )


# --- the real run -----------------------------------------------------------------------------


def confirm(*, preview_run: ReportRun, requested_by: Any, now: datetime | None = None) -> ReportRun:
    """Start the real run the preview showed, queued for the worker. Raises ReportInputError."""
    now = now or windows.utcnow()
    if (
        not preview_run.dry_run
        or preview_run.trigger != Trigger.ADMIN
        or preview_run.requested_by_id != getattr(requested_by, "pk", None)
    ):
        raise reporting.ReportInputError("That preview is not yours to confirm: preview again.")
    if preview_run.status != RunStatus.SUCCEEDED:
        raise reporting.ReportInputError(
            "The preview did not complete, so it does not say what would be sent: preview again."
        )
    if now - preview_run.started_at > PREVIEW_MAX_AGE:
        raise reporting.ReportInputError(
            "The preview is more than an hour old and usage may have changed: preview again."
        )
    started = _started_from(preview_run)
    if started is not None:  # "Report" pressed twice: one run is enough
        return started
    meters, customers = reporting.selected(
        meter_slugs=preview_run.meter_slugs, customer_subjects=preview_run.customer_subjects
    )
    run = reporting.start_run(
        trigger=Trigger.ADMIN,
        start=preview_run.period_start,
        end=preview_run.period_end,
        meters=meters or None,
        customers=customers or None,
        dry_run=False,
        requested_by=requested_by,
        now=now,
    )
    enqueue(run)
    return run


def _started_from(preview_run: ReportRun) -> ReportRun | None:
    """The real run already started from this preview, if any."""
    candidates = ReportRun.objects.filter(
        trigger=Trigger.ADMIN,
        dry_run=False,
        requested_by_id=preview_run.requested_by_id,
        period_start=preview_run.period_start,
        period_end=preview_run.period_end,
        started_at__gte=preview_run.started_at,
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
        lambda: async_task(
            "billing.tasks.execute_report_run",
            run_id,
            task_name=f"Report run #{run_id}",
            group="report_runs",
        )
    )
