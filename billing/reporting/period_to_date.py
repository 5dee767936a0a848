"""Change detection for period-to-date meters (UNIQUE_COUNT, MAX, MIN, LATEST, AVG; see
billing.aggregations): each window's value is OpenMeter's aggregate over [the customer's billing
period start, the window's end), and Stripe (formula `last`) bills the period's last window.

Stripe holds a step: the value of the latest window sent so far in the period. A window is sent
only where OpenMeter's value differs from that step (or from the value sent for that very window),
so an hour in which nothing changed the period's value sends nothing.

Reads are per group of customers sharing a period start and range (period_starts), never per
customer (except a customer with several subjects, whose aggregate is read for its subjects
together). A chosen period reads every window exactly: MAX, MIN and LATEST from one windowed query
and the value before it; UNIQUE_COUNT and AVG with one query per window. A lookback reads, newest
window first, the period-to-date value of the customers still changing, and stops for a customer at
the first window whose value equals what Stripe holds: an unchanged run costs one query per period
start. A late event that leaves the newest value as it was (a user counted again later in the
period) does not change the bill; the windows in between are corrected when the period is
re-reported.
"""

from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import Max

from billing import windows
from billing.integrations.openmeter import CUSTOMER_FILTER_MAX, OpenMeterClient
from billing.models import Customer, Meter, ReportedWindow
from billing.reporting.detect import (
    ROWS_PER_QUERY,
    STATE_FILTER_MAX,
    SUBJECT_FILTER_MAX,
    Change,
    Held,
    MeterPass,
    decide,
)
from billing.reporting.period_starts import Segment, customer_segments
from billing.reporting.values import quantize

ZERO = Decimal(0)
FOLDED = {"MAX": max, "MIN": min}  # LATEST folds to the newest window with a value
IN_LIST_MAX = 500  # ids per IN list: SQLite limits a query's parameters
# (window start, values per customer id, complete): complete means a customer missing from the
# values has none (zero); otherwise it was not read and keeps what Stripe holds.
Values = tuple[datetime, dict[int, Decimal], bool]


@dataclass
class PeriodToDatePass(MeterPass):
    aggregation: str = "UNIQUE_COUNT"
    every_window_exact: bool = True  # False: a chosen period is walked back as a lookback is

    def every_window(self) -> Iterator[Change]:
        """A chosen period: every window of every customer, exactly (or walked back)."""
        yield from self.report(exact=self.every_window_exact)

    def by_range(self) -> Iterator[Change]:
        """A lookback: newest window first, as far back as values changed."""
        yield from self.report(exact=False)

    def report(self, *, exact: bool) -> Iterator[Change]:
        if not self.filtered:
            self.count_unmapped(self.range_totals(self.start, self.end, []))
        refused = set(unreadable(self.everyone, self.subjects_of, self.aggregation))
        for customer in refused:
            self.tally.errors.append(
                f"Customer '{customer.openmeter_subject}' skipped on meter "
                f"'{self.meter.openmeter_slug}': its {len(self.subjects_of[customer.pk])} "
                f"subjects' {self.aggregation} can only be read together through its OpenMeter "
                "customer (filtering by subject reads them one by one). Link it to its OpenMeter "
                "customer (Customers > Import from OpenMeter)."
            )
        groups = customer_segments(
            meter=self.meter,
            customers=[c for c in self.everyone if c not in refused],
            start=self.start,
            end=self.end,
        )
        # Newest ranges first: fresh usage is sent while older ranges are compared.
        for segment in sorted(groups, key=lambda s: (s.high, s.low), reverse=True):
            group = groups[segment]
            ledger = Ledger.read(self, segment, group)
            if exact:
                values = self.exact_values(segment, group)
            else:
                values = self.walk_back(segment, group, ledger)
            yield from self.changes_of(segment, group, values, ledger)

    # --- reading OpenMeter ------------------------------------------------------------------

    def read(
        self, start: datetime, end: datetime, customers: list[Customer], *, windowed: bool
    ) -> Iterator[tuple[int, datetime, Decimal]]:
        """(customer id, window start, value) over [start, end), per window or one total."""
        values = read_customers(
            openmeter=self.openmeter,
            meter=self.meter,
            aggregation=self.aggregation,
            customers=customers,
            subjects_of=self.subjects_of,
            start=start,
            end=end,
            window_size=self.om_window if windowed else None,
        )
        for (pk, window_start), value in values.items():
            yield pk, window_start, value

    def to_date(
        self, segment: Segment, end: datetime, customers: list[Customer]
    ) -> dict[int, Decimal]:
        """Each customer's aggregate over [period start, end)."""
        if end <= segment.period_start:
            return {}
        return {
            pk: quantize(value)
            for pk, _, value in self.read(segment.period_start, end, customers, windowed=False)
        }

    def exact_values(self, segment: Segment, group: list[Customer]) -> Iterator[Values]:
        """Every window's value of every customer of the group (missing: zero), oldest first."""
        step = self.step
        if self.aggregation not in FOLDED and self.aggregation != "LATEST":
            for window_start in windows.iter_windows(segment.low, segment.high, self.meter.window):
                yield window_start, self.to_date(segment, window_start + step, group), True
            return
        carried = self.to_date(segment, segment.low, group)
        chunk = step * max(1, ROWS_PER_QUERY // max(1, len(group)))
        low = segment.low
        while low < segment.high:
            high = min(segment.high, low + chunk)
            per_window: dict[datetime, dict[int, Decimal]] = defaultdict(dict)
            for pk, window_start, value in self.read(low, high, group, windowed=True):
                per_window[window_start][pk] = quantize(value)
            for window_start in windows.iter_windows(low, high, self.meter.window):
                for pk, value in per_window.get(window_start, {}).items():
                    fold = FOLDED.get(self.aggregation)
                    before = carried.get(pk)
                    carried[pk] = value if fold is None or before is None else fold(before, value)
                yield window_start, dict(carried), True
            low = high

    def walk_back(
        self, segment: Segment, group: list[Customer], ledger: "Ledger"
    ) -> Iterator[Values]:
        """The values of the windows that changed, found newest first (see the module)."""
        by_pk = {c.pk: c for c in group}
        changing = list(group)
        found: dict[datetime, dict[int, Decimal]] = {}
        for window_start in reversed(
            list(windows.iter_windows(segment.low, segment.high, self.meter.window))
        ):
            values = self.to_date(segment, window_start + self.step, changing)
            found[window_start] = {c.pk: values.get(c.pk, ZERO) for c in changing}
            changing = [
                by_pk[pk]
                for pk, value in found[window_start].items()
                if pk in ledger.dirty or value != ledger.holds(pk, window_start)
            ]
            if not changing:
                break
        for window_start in sorted(found):
            yield window_start, found[window_start], False

    # --- deciding ---------------------------------------------------------------------------

    def changes_of(
        self,
        segment: Segment,
        group: list[Customer],
        values: Iterator[Values],
        ledger: "Ledger",
    ) -> Iterator[Change]:
        """The windows to send, oldest first: a value that differs from Stripe's step."""
        by_pk = {c.pk: c for c in group}
        step_value = dict(ledger.before)
        held = ledger.held
        resent = 0
        read = iter(values)
        pending = next(read, None)
        for window_start in windows.iter_windows(segment.low, segment.high, self.meter.window):
            computed: dict[int, Decimal] = {}
            complete = False
            if pending is not None and pending[0] == window_start:
                _, computed, complete = pending
                pending = next(read, None)
            for pk, customer in by_pk.items():
                here = held.get((pk, window_start))
                value = computed.get(pk)
                if value is None and not complete:  # not read: as Stripe holds it
                    if here is not None:
                        step_value[pk] = here.value
                    continue
                value = value if value is not None else ZERO
                if here is not None:
                    decision = decide(value=value, held=here)
                    if decision is not None:
                        resent += 1
                        yield Change(customer, window_start, value, *decision, segment.period_start)
                elif value != step_value.get(pk, ZERO):
                    yield Change(customer, window_start, value, None, 0, segment.period_start)
                step_value[pk] = value
        self.tally.events_unchanged += len(held) - resent


def unreadable(
    customers: list[Customer], subjects_of: Mapping[int, list[str]], aggregation: str
) -> list[Customer]:
    """Customers whose aggregate cannot be read: several subjects, no OpenMeter customer to read
    them together by, and an aggregation that cannot be folded from each subject's (MAX and MIN
    can; a unique count, average or latest value cannot)."""
    if aggregation in FOLDED:
        return []
    return [c for c in customers if len(subjects_of[c.pk]) > 1 and not c.openmeter_customer_id]


def read_customers(
    *,
    openmeter: OpenMeterClient,
    meter: Meter,
    aggregation: str,
    customers: list[Customer],
    subjects_of: Mapping[int, list[str]],
    start: datetime,
    end: datetime,
    window_size: str | None,
) -> dict[tuple[int, datetime], Decimal]:
    """Each customer's aggregate over [start, end), per window or (window_size None) one total,
    keyed by (customer id, window start). A customer with one subject, or several folded (MAX,
    MIN), is read by subject; one with several otherwise through its OpenMeter customer, which
    OpenMeter aggregates over all its subjects."""
    by_subject: dict[str, int] = {}
    linked: dict[str, int] = {}
    for customer in customers:
        keys = subjects_of[customer.pk]
        if len(keys) > 1 and aggregation not in FOLDED and customer.openmeter_customer_id:
            linked[customer.openmeter_customer_id] = customer.pk
        else:
            by_subject.update(dict.fromkeys(keys, customer.pk))
    fold = FOLDED.get(aggregation)
    values: dict[tuple[int, datetime], Decimal] = {}
    if by_subject:
        named = list(by_subject) if len(by_subject) <= SUBJECT_FILTER_MAX else []
        for row in openmeter.query(
            slug=meter.openmeter_slug,
            start=start,
            end=end,
            window_size=window_size,
            subjects=named,
        ):
            pk = by_subject.get(row.subject)
            if pk is None:
                continue
            key = (pk, row.window_start)
            held = values.get(key)
            # Several subjects of one customer: only MAX and MIN come here (see above).
            values[key] = row.value if held is None or fold is None else fold(held, row.value)
    ids = list(linked)
    for at in range(0, len(ids), CUSTOMER_FILTER_MAX):
        for row in openmeter.query(
            slug=meter.openmeter_slug,
            start=start,
            end=end,
            window_size=window_size,
            customers=ids[at : at + CUSTOMER_FILTER_MAX],
        ):
            pk = linked.get(row.customer_id)
            if pk is not None:
                values[(pk, row.window_start)] = row.value
    return values


class Ledger:
    """What Stripe holds for a group of customers in a billing period, from ReportedWindow."""

    def __init__(
        self, held: Mapping[tuple[int, datetime], Held], before: Mapping[int, Decimal]
    ) -> None:
        self.held = held
        self.by_customer: dict[int, list[tuple[datetime, Held]]] = defaultdict(list)
        for (pk, window_start), value in sorted(held.items(), key=lambda kv: kv[0][1]):
            self.by_customer[pk].append((window_start, value))
        self.before = before
        self.dirty = {pk for (pk, _), h in held.items() if h.needs_resend}

    @classmethod
    def read(
        cls, meter_pass: PeriodToDatePass, segment: Segment, group: list[Customer]
    ) -> "Ledger":
        ids = {c.pk: c for c in group}
        before = sent_before(
            meter=meter_pass.meter,
            customer_ids=list(ids),
            start=segment.period_start,
            end=segment.low,
        )
        return cls(meter_pass.held_windows(segment.low, segment.high, ids), before)

    def holds(self, pk: int, window_start: datetime) -> Decimal:
        """The value Stripe bills for the period as of this window: the latest sent at or
        before it (in the period)."""
        value = self.before.get(pk, ZERO)
        for held_start, held in self.by_customer.get(pk, ()):
            if held_start > window_start:
                break
            value = held.value
        return value


def sent_before(
    *, meter: Meter, customer_ids: list[int], start: datetime, end: datetime
) -> dict[int, Decimal]:
    """Per customer: the value of its latest window sent in [start, end): for a period-to-date
    meter, what Stripe bills for the period so far."""
    if start >= end or not customer_ids:
        return {}
    rows = ReportedWindow.objects.filter(meter=meter, window_start__gte=start, window_start__lt=end)
    if len(customer_ids) <= STATE_FILTER_MAX:
        rows = rows.filter(customer_id__in=customer_ids)
    wanted = set(customer_ids)
    latest: dict[datetime, list[int]] = defaultdict(list)
    for row in rows.values("customer_id").annotate(last=Max("window_start")).order_by():
        if row["customer_id"] in wanted:
            latest[row["last"]].append(row["customer_id"])
    found: dict[int, Decimal] = {}
    for window_start, ids in latest.items():  # few: most share the latest window
        for at in range(0, len(ids), IN_LIST_MAX):
            for pk, value in ReportedWindow.objects.filter(
                meter=meter, window_start=window_start, customer_id__in=ids[at : at + IN_LIST_MAX]
            ).values_list("customer_id", "value"):
                found[pk] = value
    return found
