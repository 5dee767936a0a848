"""Usage that changes after its period's invoice is final is billed nowhere by a meter event, so
none is sent: the change becomes a Correction (proposed), booked in Stripe once a person with
`billing.approve_correction` approves it.

Booking: an invoice item on the customer's next invoice, positive for under-billing and negative
for over-billing. One mechanism whatever the finalized invoice's payment state (a credit note would
need a refund or a balance credit once it is paid), and Stripe shows it on the next invoice with its
description; the idempotency key is the correction's, so booking twice books once."""

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.db import transaction

from billing import aggregations, clock
from billing.closing.periods import ClosedPeriod, settled_periods
from billing.formatting import plain_decimal, signed_quantity
from billing.integrations.stripe_client import get_client
from billing.integrations.stripe_errors import describe
from billing.models import (
    BillingPeriod,
    Correction,
    CorrectionStatus,
    Customer,
    Meter,
    ReportedWindow,
    ReportRun,
)
from billing.reporting.detect import Change

logger = logging.getLogger(__name__)

SETTLED = (CorrectionStatus.APPROVED, CorrectionStatus.BOOKED)


class CorrectionRefused(Exception):
    """The decision cannot be taken; the message says why."""


@dataclass
class CorrectionCollector:
    """Between change detection and sending: changes of windows a meter event can no longer
    bill (a closed period, or older than Stripe's 35 days: periods.settled_periods) are held
    back (no meter event) and turned into corrections at the end of the meter's pass."""

    run: ReportRun | None  # None: found by a reconciliation
    meter: Meter
    start: datetime
    end: datetime
    held: dict[tuple[int, int], list[Change]] = field(default_factory=lambda: defaultdict(list))
    periods: dict[int, list[ClosedPeriod]] = field(default_factory=dict)
    now: datetime = field(default_factory=clock.now)

    def __post_init__(self) -> None:
        self.periods = settled_periods(
            meter=self.meter, start=self.start, end=self.end, now=self.now
        )

    def split(self, changes: Iterable[Change]) -> Iterator[Change]:
        """The changes that may be sent; the others are kept for `save`."""
        for change in changes:
            if not self.hold(change):
                yield change

    def hold(self, change: Change) -> bool:
        """Keep the change for `save` if a meter event can no longer bill its window."""
        closed = self._closed(change)
        if closed is not None:
            self.held[(change.customer.id, closed.period.pk)].append(change)
        return closed is not None

    def _closed(self, change: Change) -> ClosedPeriod | None:
        for closed in self.periods.get(change.customer.id, ()):
            if closed.holds(change.window_start):
                return closed
        return None

    def save(self) -> list[Correction]:
        """One proposed correction per (customer, period) whose usage differs from what was
        billed and booked, created or brought up to date (never duplicated)."""
        if self.run is not None and self.run.dry_run:
            return []
        found = []
        for (_, period_id), changes in self.held.items():
            period = BillingPeriod.objects.select_related("subscription").get(pk=period_id)
            correction = propose(run=self.run, meter=self.meter, period=period, changes=changes)
            if correction is not None:
                found.append(correction)
        return found


def propose(
    *, run: ReportRun | None, meter: Meter, period: BillingPeriod, changes: list[Change]
) -> Correction | None:
    customer = changes[0].customer
    held = held_values(
        meter=meter,
        customer=customer,
        start=period.period_start,
        end=period.period_end,
    )
    aggregation = meter.openmeter_aggregation
    billed = aggregations.billed_value(aggregation=aggregation, values=held)
    mine = Correction.objects.filter(customer=customer, meter=meter, billing_period=period)
    booked = sum((c.quantity for c in mine.filter(status__in=SETTLED)), Decimal(0))
    before = billed + booked
    # The period's value once the changes are in: a period-to-date meter's is its last window's.
    held.update({c.window_start: c.value for c in changes})
    after = aggregations.billed_value(aggregation=aggregation, values=held)
    if after == before:
        return None
    if mine.filter(status=CorrectionStatus.REJECTED, quantity_after=after).exists():
        return None  # someone already decided against billing exactly this
    price = period.subscription.prices.filter(meter=meter).order_by("pk").first()
    if price is None:
        return None
    fields: dict[str, Any] = {
        "quantity_before": before,
        "quantity_after": after,
        "amount": (after - before) * price.unit_amount_decimal,
        "currency": price.currency,
        "unit_amount_decimal": price.unit_amount_decimal,
        "detected_by_run": run,
    }
    correction, created = Correction.objects.update_or_create(
        customer=customer,
        meter=meter,
        billing_period=period,
        status=CorrectionStatus.PROPOSED,
        defaults=fields,
    )
    if created:
        logger.warning(
            "Usage of %s on %s changed after the invoice of %s was final: correction #%s "
            "proposed (%s)",
            customer.openmeter_subject,
            meter.openmeter_slug,
            period,
            correction.pk,
            signed_quantity(after - before),
        )
    return correction


def held_values(
    *, meter: Meter, customer: Customer, start: datetime, end: datetime
) -> dict[datetime, Decimal]:
    """What Stripe holds for the customer per window over [start, end), from the ledger. By the
    customer's row too: its index reads this customer's windows alone (the ledger's key is
    ordered window first)."""
    return dict(
        ReportedWindow.objects.filter(
            customer_id=customer.id,
            meter=meter,
            stripe_customer_id=customer.stripe_customer_id,
            window_start__gte=start,
            window_start__lt=end,
        ).values_list("window_start", "value")
    )


def held_billed(*, meter: Meter, customer: Customer, start: datetime, end: datetime) -> Decimal:
    """What Stripe bills the customer for [start, end) from what it holds (billed_value: summed
    in Python, as SQLite sums decimals as floats)."""
    values = held_values(meter=meter, customer=customer, start=start, end=end)
    return aggregations.billed_value(aggregation=meter.openmeter_aggregation, values=values)


def minor_units(amount: Decimal) -> int:
    return int(amount.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def description(correction: Correction) -> str:
    """For the invoice: "Usage correction: AI Tokens, 1 Nov 2026 - 30 Nov 2026: +1,234 AI Tokens"
    (with an en dash and a minus sign)."""
    period = correction.billing_period
    last = period.period_end - timedelta(seconds=1)
    span = f"{period.period_start:%-d %b %Y}\N{EN DASH}{last:%-d %b %Y}"
    quantity = correction.quantity
    shown = f"{abs(quantity).normalize():,f}"
    sign = "+" if quantity > 0 else "\N{MINUS SIGN}"
    name = correction.meter.name
    return f"Usage correction: {name}, {span}: {sign}{shown} {name}"


def decide(*, correction: Correction, user: Any, approve: bool, reason: str) -> Correction:
    """Approve (and book) or reject a proposed correction. Raises CorrectionRefused."""
    reason = reason.strip()
    if not reason:
        raise CorrectionRefused("Give the reason for the decision: it is kept on the correction.")
    with transaction.atomic():
        locked = Correction.objects.select_for_update().get(pk=correction.pk)
        if locked.status != CorrectionStatus.PROPOSED:
            raise CorrectionRefused(
                f"Correction #{locked.pk} is {locked.get_status_display().lower()}: only a "
                "proposed correction can be decided."
            )
        if locked.requested_by_id is not None and locked.requested_by_id == user.pk:
            raise CorrectionRefused("The person who asked for a correction cannot approve it.")
        locked.status = CorrectionStatus.APPROVED if approve else CorrectionStatus.REJECTED
        locked.decided_by, locked.decided_at, locked.reason = user, clock.now(), reason
        locked.save(update_fields=["status", "decided_by", "decided_at", "reason"])
    return book(correction=locked) if approve else locked


def book(*, correction: Correction) -> Correction:
    """Book an approved (or failed) correction in Stripe, idempotently."""
    if correction.status not in (CorrectionStatus.APPROVED, CorrectionStatus.FAILED):
        return correction
    params = {
        "customer": correction.customer.stripe_customer_id,
        "amount": minor_units(correction.amount),
        "currency": correction.currency,
        "description": description(correction),
        "period": {  # Stripe's end is inclusive
            "start": int(correction.billing_period.period_start.timestamp()),
            "end": int(correction.billing_period.period_end.timestamp()) - 1,
        },
        "metadata": {
            "meterbridge_correction": str(correction.pk),
            "quantity": plain_decimal(correction.quantity),
        },
    }
    try:
        item = get_client().v1.invoice_items.create(
            params,  # type: ignore[arg-type]
            options={"idempotency_key": f"meterbridge-correction-{correction.pk}-book"},
        )
    except Exception as exc:  # a Stripe error or an unexpected answer: kept, can be retried
        correction.status, correction.error = CorrectionStatus.FAILED, describe(exc)
        correction.save(update_fields=["status", "error"])
        return correction
    correction.status, correction.stripe_object_id = CorrectionStatus.BOOKED, item.id
    correction.booked_at, correction.error = clock.now(), ""
    correction.save(update_fields=["status", "stripe_object_id", "booked_at", "error"])
    return correction
