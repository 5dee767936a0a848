"""A reconciliation's life: start (check the request), execute (meter by meter: OpenMeter, the
ledger and Stripe's summaries side by side), heal (drift marked to be sent again), finish."""

import gc
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings

from billing import clock, windows
from billing.integrations.openmeter import OpenMeterClient
from billing.integrations.summaries import SummaryReader, SummaryRequest
from billing.models import (
    Customer,
    Meter,
    ReconcileStatus,
    Reconciliation,
    RunMode,
    Window,
)
from billing.reconcile.compare import MeterComparison
from billing.reconcile.loading import MeterLoads
from billing.redaction import redact
from billing.reporting.periods import ReportInputError, validate_period

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ReconcileRequest:
    """What someone asked to reconcile. Without start and end: the default lookback."""

    trigger: str
    start: datetime | None = None
    end: datetime | None = None
    meters: Sequence[Meter] | None = None  # None: every active meter
    customers: Sequence[Customer] | None = None  # None: every active customer
    requested_by: Any = None


def lookback_range(window: str, *, now: datetime) -> tuple[datetime, datetime]:
    return windows.lookback_range(window, now=now, hours=settings.RECONCILE_LOOKBACK_HOURS)


def start_reconciliation(
    request: ReconcileRequest, *, now: datetime | None = None
) -> Reconciliation:
    """Check the request and create its Reconciliation (running). Raises ReportInputError."""
    now = now or clock.now()
    chosen = list(request.meters) if request.meters else list(Meter.objects.filter(active=True))
    if (request.start is None) != (request.end is None):
        raise ReportInputError("Give both --from and --to, or neither.")
    if request.start is not None and request.end is not None:
        validate_period(start=request.start, end=request.end, meters=chosen, now=now, sending=False)
        mode, start, end = RunMode.PERIOD, request.start, request.end
    else:
        ranges = [lookback_range(m.window, now=now) for m in chosen] or [
            lookback_range(Window.HOUR, now=now)
        ]
        mode = RunMode.LOOKBACK
        start, end = min(r[0] for r in ranges), max(r[1] for r in ranges)
    return Reconciliation.objects.create(
        trigger=request.trigger,
        requested_by=request.requested_by,
        mode=mode,
        period_start=start,
        period_end=end,
        meter_slugs=[m.openmeter_slug for m in request.meters] if request.meters else [],
        customer_subjects=(
            [c.openmeter_subject for c in request.customers] if request.customers else []
        ),
    )


def meter_range(*, reconciliation: Reconciliation, meter: Meter) -> tuple[datetime, datetime]:
    if reconciliation.mode == RunMode.LOOKBACK:
        return lookback_range(meter.window, now=reconciliation.period_end)
    return reconciliation.period_start, reconciliation.period_end


def execute_reconciliation(reconciliation: Reconciliation) -> Reconciliation:
    """Compare every covered window. Never raises for a Stripe or OpenMeter failure: it is kept
    on the reconciliation, which then ends failed."""
    errors: list[str] = []
    try:
        meters, customers = _reconcilable(reconciliation, errors)
        # Every full garbage collection scans every long-lived object, holding the interpreter
        # while the reading threads wait: 0.1 s about once a second with 10,000 customers. What
        # exists now (modules, the customers) lives to the end, so collections skip it.
        gc.freeze()
        with OpenMeterClient.from_settings() as openmeter:
            _compare(
                reconciliation=reconciliation,
                meters=meters,
                customers=customers,
                openmeter=openmeter,
                errors=errors,
            )
    except Exception as exc:  # the reconciliation must end with a status, whatever happened
        logger.exception("Reconciliation %s crashed", reconciliation.pk)
        errors.append(f"Unexpected error: {redact(str(exc))}")
    finally:
        gc.unfreeze()
    _finish(reconciliation, errors)
    return reconciliation


def _compare(
    *,
    reconciliation: Reconciliation,
    meters: list[Meter],
    customers: list[Customer],
    openmeter: OpenMeterClient,
    errors: list[str],
) -> None:
    """One stream of summaries requests over every (meter, customer), meter after meter, read
    ahead by the pool (up to LOOKAHEAD_SECONDS of them) while this thread loads and judges; each
    meter's values are loaded as loading.py says and released once it is judged."""
    settled_before = clock.now() - timedelta(minutes=settings.RECONCILE_SETTLE_MINUTES)
    ranges = {meter.pk: meter_range(reconciliation=reconciliation, meter=meter) for meter in meters}

    def comparison_of(meter: Meter) -> MeterComparison:
        start, end = ranges[meter.pk]
        return MeterComparison(
            reconciliation=reconciliation,
            meter=meter,
            customers=customers,
            start=start,
            end=end,
            settled_before=settled_before,
        )

    def requests() -> Iterator[SummaryRequest]:
        for meter in meters:
            start, end = ranges[meter.pk]
            for customer in customers:
                yield SummaryRequest(
                    key=(meter, customer),
                    meter_id=meter.stripe_meter_id,
                    stripe_customer_id=customer.stripe_customer_id,
                    start=start,
                    end=end,
                    window=meter.window,
                )

    loads = MeterLoads(meters=meters, make=comparison_of, openmeter=openmeter, errors=errors)
    reader = SummaryReader(concurrency=settings.STRIPE_READ_CONCURRENCY)
    for summaries in reader.read(requests()):
        reconciliation.stripe_requests = reader.requests
        meter, customer = summaries.request.key
        comparison = loads.get(meter)
        if comparison is not None:  # else nothing to judge against; the error is kept
            comparison.judge(customer, summaries)
            if comparison.judged == len(customers):
                comparison.finish()
                errors.extend(comparison.errors)
        loads.advance()


def _reconcilable(
    reconciliation: Reconciliation, errors: list[str]
) -> tuple[list[Meter], list[Customer]]:
    """The same rule as reporting: active rows whose last sync to Stripe succeeded."""
    meters = Meter.objects.filter(active=True)
    if reconciliation.meter_slugs:
        meters = Meter.objects.filter(openmeter_slug__in=reconciliation.meter_slugs)
    customers = Customer.objects.filter(active=True)
    if reconciliation.customer_subjects:
        customers = customers.filter(openmeter_subject__in=reconciliation.customer_subjects)
    usable_meters, usable_customers = [], []
    for meter in meters.order_by("openmeter_slug"):
        reason = meter.reportable_reason()
        if reason is None:
            usable_meters.append(meter)
        else:
            errors.append(f"Meter '{meter.openmeter_slug}' not compared: {reason}.")
    for customer in customers.order_by("pk"):
        if customer.reportable_reason() is None:
            usable_customers.append(customer)
    return usable_meters, usable_customers


def _finish(reconciliation: Reconciliation, errors: list[str]) -> None:
    reconciliation.refresh_from_db(fields=["windows_compared", "drift", "meter_counts"])
    reconciliation.status = ReconcileStatus.FAILED if errors else ReconcileStatus.SUCCEEDED
    reconciliation.error = "\n".join(errors)
    reconciliation.finished_at = clock.now()
    Reconciliation.objects.filter(pk=reconciliation.pk).update(
        status=reconciliation.status,
        error=reconciliation.error,
        finished_at=reconciliation.finished_at,
        stripe_requests=reconciliation.stripe_requests,
    )
