"""One meter's reconciliation: OpenMeter's values and the ledger loaded once, then each
customer's Stripe summaries judged as they arrive, non-matching windows kept as
ReconciliationItem rows, drift marked in the ledger to be resent.

Memory holds one meter's values as one tuple per customer (a value per window); where the ledger
holds what OpenMeter measures (nearly everywhere) both share the value object. Tuples, not lists:
Python's garbage collector never scans a tuple of numbers, while each full collection traversed
every list, stopping the reading threads for 0.1 s about once a second."""

from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection, transaction

from billing import subjects, windows
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
from billing.reporting.detect import OPENMETER_WINDOW, Change

ZERO = Decimal(0)
FLUSH_EVERY = 2000  # items per insert
PROGRESS_EVERY = 500  # customers: the counters on the page move at least this often
ERRORS_KEPT = 20  # per meter: one line per customer Stripe could not be read for, at most
STEP_ROWS = 1000  # rows loaded per step of `loading` (a few milliseconds)
# Rows per OpenMeter answer: each answer is decoded in one step, holding the GIL throughout, so
# they are smaller than reporting's (the reading threads wait for it).
QUERY_ROWS = 5_000


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
    windows: list[datetime] = field(default_factory=list)
    # Stripe customer id -> a value per window: OpenMeter's (ZERO where none) and the ledger's
    # (None where nothing was sent); built as lists while loading.
    openmeter: dict[str, tuple[Decimal, ...]] = field(default_factory=dict)
    ledger: dict[str, tuple[Decimal | None, ...]] = field(default_factory=dict)
    _measured: dict[str, list[Decimal]] = field(default_factory=dict)
    _sent: dict[str, list[Decimal | None]] = field(default_factory=dict)
    # When windows were sent after `settled_before` (Stripe may not show them yet).
    recent: dict[tuple[str, int], datetime] = field(default_factory=dict)
    items: list[ReconciliationItem] = field(default_factory=list)
    drift: list[tuple[Customer, datetime, Decimal, bool]] = field(default_factory=list)
    unreadable: int = 0
    judged: int = 0  # customers
    corrections: CorrectionCollector | None = None

    def load(self, client: OpenMeterClient) -> None:
        """OpenMeter's value and the ledger's, per (Stripe customer, window) of the range."""
        for _ in self.loading(client):
            pass

    def loading(self, client: OpenMeterClient) -> Iterator[None]:
        """`load` in steps of about STEP_ROWS rows (it yields between them), so that the next
        meter can be loaded a little at a time between judging this one's summaries."""
        self.windows = list(windows.iter_windows(self.start, self.end, self.meter.window))
        position = {window_start: j for j, window_start in enumerate(self.windows)}
        if self.meter.period_to_date:
            # Its windows hold values to date where they changed, not each window's usage: the
            # report run compares them with OpenMeter; here Stripe is compared with what was
            # sent (drift), and a window with nothing sent should hold nothing in Stripe.
            yield from self._load_ledger()
            self._measured = {
                cus: [ZERO if v is None else v for v in sent] for cus, sent in self._sent.items()
            }
        else:
            yield from self._load_openmeter(client, position)
            yield from self._load_ledger()
        recent = ReportedWindow.objects.filter(
            meter=self.meter,
            window_start__gte=self.start,
            window_start__lt=self.end,
            updated_at__gt=self.settled_before,
        ).values_list("stripe_customer_id", "window_start", "updated_at")
        self.recent = {(cus, position[w]): at for cus, w, at in recent if w in position}
        self.openmeter = {cus: tuple(values) for cus, values in self._measured.items()}
        self.ledger = {cus: tuple(values) for cus, values in self._sent.items()}
        self._measured, self._sent = {}, {}
        self.corrections = CorrectionCollector(
            run=None, meter=self.meter, start=self.start, end=self.end
        )

    def _load_openmeter(
        self, client: OpenMeterClient, position: dict[datetime, int]
    ) -> Iterator[None]:
        owners = subjects.owners(self.customers)
        by_subject = {subject: c.stripe_customer_id for subject, c in owners.items()}
        windows_per_query = max(1, QUERY_ROWS // max(1, len(self.customers)))
        size = len(self.windows)
        values = self._measured
        rows = client.query(
            slug=self.meter.openmeter_slug,
            start=self.start,
            end=self.end,
            window_size=OPENMETER_WINDOW[self.meter.window],
            chunk=self.meter.window_length * windows_per_query,
        )
        for n, row in enumerate(rows, start=1):
            cus = by_subject.get(row.subject)
            j = position.get(row.window_start)
            if cus is not None and j is not None and row.value:
                held = values.get(cus)
                if held is None:
                    held = values[cus] = [ZERO] * size
                held[j] = row.value if held[j] is ZERO else held[j] + row.value
            if n % STEP_ROWS == 0:
                yield

    def _load_ledger(self) -> Iterator[None]:
        """Window by window, straight from the database cursor: Django's per-row conversion (a
        datetime and a Decimal for each of hundreds of thousands of rows) cost more than all the
        rest of a meter's loading. Each window's rows are fetched whole, so that no cursor stays
        open while the caller writes between steps."""
        scope = {c.stripe_customer_id for c in self.customers}
        size = len(self.windows)
        for j, window_start in enumerate(self.windows):
            query = (
                ReportedWindow.objects.filter(meter=self.meter, window_start=window_start)
                .values_list("stripe_customer_id", "value")
                .query
            )
            sql, params = query.sql_with_params()
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                rows = cursor.fetchall()
            for first in range(0, len(rows), STEP_ROWS):
                for cus, held in rows[first : first + STEP_ROWS]:
                    if cus in scope:
                        self._hold_sent(cus, j, held, size)
                yield

    def _hold_sent(self, cus: str, j: int, held: Any, size: int) -> None:
        sent = self._sent.get(cus)
        if sent is None:
            sent = self._sent[cus] = [None] * size
        measured = self._measured.get(cus)
        if measured is not None and measured[j] == held:
            sent[j] = measured[j]  # the same value: share OpenMeter's object
        else:
            sent[j] = _stored_decimal(held)

    def judge(self, customer: Customer, summaries: CustomerSummaries) -> None:
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
        size = len(self.windows)
        measured = self.openmeter.get(cus) or (ZERO,) * size
        sent = self.ledger.get(cus) or (None,) * size
        values = [ZERO] * size
        first = int(self.start.timestamp())
        step = int(self.meter.window_length.total_seconds())
        for epoch, value in summaries.values.items():
            j, off = divmod(epoch - first, step)
            if not off and 0 <= j < size:
                values[j] = value
        billed = tuple(values)
        if billed == measured and sent == measured:  # every window matches: the common case
            self.counts[MATCH] += size
        else:
            for j in range(size):
                self._judge_window(customer, j, measured[j], sent[j], billed[j])
        if len(self.items) >= FLUSH_EVERY or self.judged % PROGRESS_EVERY == 0:
            self.flush()

    def _judge_window(
        self, customer: Customer, j: int, om: Decimal, sent: Decimal | None, stripe: Decimal
    ) -> None:
        cus = customer.stripe_customer_id
        kind = classify(
            openmeter=om,
            sent=sent,
            stripe=stripe,
            sent_at=self.recent.get((cus, j)),
            settled_before=self.settled_before,
        )
        self.counts[kind] += 1
        if kind == MATCH:
            return
        window_start = self.windows[j]
        self.items.append(
            ReconciliationItem(
                reconciliation=self.reconciliation,
                meter=self.meter,
                customer=customer,
                window_start=window_start,
                openmeter_value=om,
                sent_value=sent,
                stripe_value=stripe,
                kind=kind,
            )
        )
        if kind == DRIFT:
            self.drift.append((customer, window_start, stripe, sent is not None))
        elif kind == UNSENT and self.corrections is not None:
            # Late usage in a period whose invoice is final: a correction, not a send.
            self.corrections.hold(Change(customer, window_start, om, sent, 0))

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
        self.openmeter, self.ledger, self.recent = {}, {}, {}  # the next meter needs the memory
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
        for customer, window_start, stripe_value, held in self.drift:
            cus = customer.stripe_customer_id
            if held:
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


def _stored_decimal(held: Any) -> Decimal:
    """A DecimalField's value as the database cursor returns it: a Decimal (PostgreSQL), or an
    int or float (SQLite keeps decimals as numbers; repr is the shortest text of the float)."""
    if isinstance(held, Decimal):
        return held
    if isinstance(held, float):
        return Decimal(repr(held))
    return Decimal(held)
