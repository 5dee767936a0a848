"""One meter's reconciliation: OpenMeter's values and the ledger loaded once, then each
customer's Stripe summaries judged as they arrive (so memory holds one meter, not all of them),
non-matching windows kept as ReconciliationItem rows, drift marked in the ledger to be resent."""

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import transaction

from billing import windows
from billing.closing.corrections import CorrectionCollector
from billing.integrations.openmeter import OpenMeterClient
from billing.integrations.summaries import CustomerSummaries
from billing.models import (
    Customer,
    ItemKind,
    Meter,
    Reconciliation,
    ReconciliationItem,
    ReportedWindow,
)
from billing.reconcile.classify import DRIFT, MATCH, UNSENT, classify
from billing.reporting.detect import OPENMETER_WINDOW, ROWS_PER_QUERY, Change

ZERO = Decimal(0)
FLUSH_EVERY = 2000  # items per insert
PROGRESS_EVERY = 500  # customers: the counters on the page move at least this often
ERRORS_KEPT = 20  # per meter: one line per customer Stripe could not be read for, at most


@dataclass(kw_only=True)
class MeterComparison:
    reconciliation: Reconciliation
    meter: Meter
    customers: list[Customer]
    start: datetime
    end: datetime
    settled_before: datetime
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    openmeter: dict[tuple[str, datetime], Decimal] = field(default_factory=dict)
    ledger: dict[tuple[str, datetime], tuple[Decimal, datetime]] = field(default_factory=dict)
    items: list[ReconciliationItem] = field(default_factory=list)
    drift: list[tuple[Customer, datetime, Decimal]] = field(default_factory=list)
    unreadable: int = 0
    judged: int = 0  # customers
    corrections: CorrectionCollector | None = None

    def load(self, client: OpenMeterClient) -> None:
        """OpenMeter's value and the ledger's, per (Stripe customer, window) of the range."""
        by_subject = {c.openmeter_subject: c for c in self.customers}
        windows_per_query = max(1, ROWS_PER_QUERY // max(1, len(self.customers)))
        values: dict[tuple[str, datetime], Decimal] = defaultdict(Decimal)
        for row in client.query(
            slug=self.meter.openmeter_slug,
            start=self.start,
            end=self.end,
            window_size=OPENMETER_WINDOW[self.meter.window],
            chunk=self.meter.window_length * windows_per_query,
        ):
            customer = by_subject.get(row.subject)
            if customer is not None and row.value:
                values[(customer.stripe_customer_id, row.window_start)] += row.value
        self.openmeter = dict(values)
        held = ReportedWindow.objects.filter(
            meter=self.meter, window_start__gte=self.start, window_start__lt=self.end
        ).values_list("stripe_customer_id", "window_start", "value", "updated_at")
        self.ledger = {(cus, w): (value, at) for cus, w, value, at in held.iterator(5000)}
        self.corrections = CorrectionCollector(
            run=None, meter=self.meter, start=self.start, end=self.end
        )

    def judge(self, summaries: CustomerSummaries) -> None:
        customer: Customer = summaries.request.key
        self.judged += 1
        if summaries.error:
            self.unreadable += 1
            if self.unreadable <= ERRORS_KEPT:
                self.errors.append(
                    f"Meter '{self.meter.openmeter_slug}', customer "
                    f"'{customer.openmeter_subject}': Stripe could not be read: {summaries.error}"
                )
            return
        cus = customer.stripe_customer_id
        for window_start in windows.iter_windows(self.start, self.end, self.meter.window):
            held = self.ledger.get((cus, window_start))
            om = self.openmeter.get((cus, window_start), ZERO)
            stripe = summaries.values.get(window_start, ZERO)
            kind = classify(
                openmeter=om,
                sent=None if held is None else held[0],
                stripe=stripe,
                sent_at=None if held is None else held[1],
                settled_before=self.settled_before,
            )
            self.counts[kind] += 1
            if kind == MATCH:
                continue
            self.items.append(
                ReconciliationItem(
                    reconciliation=self.reconciliation,
                    meter=self.meter,
                    customer=customer,
                    window_start=window_start,
                    openmeter_value=om,
                    sent_value=None if held is None else held[0],
                    stripe_value=stripe,
                    kind=kind,
                )
            )
            if kind == DRIFT:
                self.drift.append((customer, window_start, stripe))
            elif kind == UNSENT and self.corrections is not None:
                # Late usage in a period whose invoice is final: a correction, not a send.
                previous = None if held is None else held[0]
                self.corrections.hold(Change(customer, window_start, om, previous, 0))
        if len(self.items) >= FLUSH_EVERY or self.judged % PROGRESS_EVERY == 0:
            self.flush()

    def flush(self) -> None:
        """Write the items and drift marks so far, and move the counters on the page."""
        with transaction.atomic():
            ReconciliationItem.objects.bulk_create(self.items, batch_size=1000)
            self._mark_drift()
            done = dict(self.counts)
            self.reconciliation.meter_counts = {
                **(self.reconciliation.meter_counts or {}),
                self.meter.openmeter_slug: {**done, "compared": sum(done.values())},
            }
            totals = _totals(self.reconciliation.meter_counts)
            for name, value in totals.items():
                setattr(self.reconciliation, name, value)
            Reconciliation.objects.filter(pk=self.reconciliation.pk).update(
                meter_counts=self.reconciliation.meter_counts,
                stripe_requests=self.reconciliation.stripe_requests,
                **totals,
            )
        self.items, self.drift = [], []

    def finish(self) -> None:
        self.flush()
        if self.corrections is not None:
            self.corrections.save()
        if self.unreadable > ERRORS_KEPT:
            self.errors.append(
                f"Meter '{self.meter.openmeter_slug}': {self.unreadable} customers could not be "
                "read from Stripe in all."
            )

    def _mark_drift(self) -> None:
        """Drift heals by sending OpenMeter's value again: flag the ledger's window so the next
        run (or a re-report) sends it. Where Meterbridge never sent anything, the ledger records
        what Stripe holds, flagged, so that the next run overwrites it."""
        by_window: dict[datetime, list[str]] = defaultdict(list)
        missing: list[ReportedWindow] = []
        for customer, window_start, stripe_value in self.drift:
            cus = customer.stripe_customer_id
            if (cus, window_start) in self.ledger:
                by_window[window_start].append(cus)
            else:
                missing.append(
                    ReportedWindow(
                        meter=self.meter,
                        customer=customer,
                        stripe_customer_id=cus,
                        window_start=window_start,
                        value=stripe_value,
                        sent_count=0,
                        needs_resend=True,
                    )
                )
        for window_start, ids in by_window.items():
            ReportedWindow.objects.filter(
                meter=self.meter, window_start=window_start, stripe_customer_id__in=ids
            ).update(needs_resend=True)  # updated_at (when it was sent) stays: no auto_now here
        ReportedWindow.objects.bulk_create(missing, ignore_conflicts=True, batch_size=1000)


def _totals(meter_counts: dict[str, Any]) -> dict[str, int]:
    totals = {"windows_compared": 0, "matched": 0, "unsent": 0, "drift": 0, "settling": 0}
    for counts in meter_counts.values():
        totals["windows_compared"] += int(counts.get("compared", 0))
        totals["matched"] += int(counts.get(MATCH, 0))
        for kind in (ItemKind.UNSENT, ItemKind.DRIFT, ItemKind.SETTLING):
            totals[str(kind)] += int(counts.get(str(kind), 0))
    return totals
