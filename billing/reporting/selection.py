"""What a re-report covers: the chosen meters and customers, and those left out with the reason."""

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Q, QuerySet

from billing.models import Customer, Meter, ReportRun, Subscription, SyncStatus
from billing.reporting.periods import ReportInputError
from billing.reporting.runs import selected

LEFT_OUT_SHOWN = 50


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
    initial: dict[str, Any] = field(default_factory=dict)  # what the period form starts with

    @property
    def usable(self) -> bool:
        return not self.problems

    def subscriptions(self) -> "QuerySet[Subscription]":
        """The Stripe subscriptions billing this selection: its customers', else its meters'."""
        subs = Subscription.objects.exclude(stripe_subscription_id="").exclude(status="canceled")
        if self.customers is not None:
            return subs.filter(customer__in=self.customers)
        return subs.filter(prices__meter__in=self.meters).distinct()


def _split(objs: Iterable[Any]) -> tuple[list[Any], list[LeftOut]]:
    usable, left_out = [], []
    for obj in objs:
        reason = obj.reportable_reason()
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
        meters, customers = selected(
            meter_slugs=run.meter_slugs, customer_subjects=run.customer_subjects
        )
    except ReportInputError as exc:
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


def select_listed(
    *, meters: Iterable[Meter], customers: Iterable[Customer], what: str
) -> Selection:
    """Exactly these meters and customers (a reconciliation's drifting ones, say)."""
    chosen_meters, left_meters = _split(meters)
    chosen_customers, left_customers = _split(customers)
    selection = Selection(
        meters=chosen_meters, customers=chosen_customers, left_out=left_meters + left_customers
    )
    return _finish(selection, what=what)
