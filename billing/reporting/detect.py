"""Change detection: which (customer, window) values differ from what Stripe holds.

A period run compares every window of every customer. A lookback run first compares totals over
ranges: for SUM meters of non-negative values and COUNT meters windows only grow, so equal totals
mean equal windows and an unchanged run ends after a couple of queries. See `MeterPass.by_range`.
"""

import itertools
import logging
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

from django.db.models import Count, Q, Sum

from billing import subjects, windows
from billing.formatting import utc_iso
from billing.integrations.openmeter import OpenMeterClient, OpenMeterError
from billing.models import Customer, Meter, ReportedWindow
from billing.reporting.tally import Tally
from billing.reporting.values import quantize, totals_match

logger = logging.getLogger(__name__)

OPENMETER_WINDOW = {windows.HOUR: "HOUR", windows.DAY: "DAY"}
ROWS_PER_QUERY = 50_000  # bounds one OpenMeter answer (and the memory it takes)
# Up to this many subjects, queries name them (split into a few requests by URL length): far
# fewer rows than every subject's answer. Above, query all and filter here.
SUBJECT_FILTER_MAX = 1000
STATE_FILTER_MAX = 1000  # above this many customers, read the meter's state and filter here
ZERO = Decimal(0)


class Change(NamedTuple):
    """A window whose value must be sent: `previous` is what Stripe holds (None: nothing).

    A named tuple: a run makes one per event, and a frozen dataclass takes three times as long."""

    customer: Customer
    window_start: datetime
    value: Decimal
    previous: Decimal | None
    revision: int  # values already sent for this window
    # Period-to-date meters: the first window of the billing period the value is counted from.
    period_start: datetime | None = None


class Held(NamedTuple):
    """What the ledger says Stripe holds for one window."""

    value: Decimal
    sent_count: int
    needs_resend: bool


def decide(*, value: Decimal, held: Held | None) -> tuple[Decimal | None, int] | None:
    """Whether a window with usage `value` must be sent: None if not, else (previous, revision).

    Nothing held and zero usage: nothing to send. Held and equal, with no failed send since:
    unchanged. Anything else, a window that went back to zero included, is sent."""
    if held is None:
        return None if value == 0 else (None, 0)
    if held.value == value and not held.needs_resend:
        return None
    return held.value, held.sent_count


class HeldTotal(NamedTuple):
    """What the ledger says Stripe holds for one customer over a range."""

    total: Decimal | None
    nonzero: int  # windows holding a value other than zero
    dirty: int  # windows to send again (a send failed)


def differs(om_total: Decimal | None, mine: HeldTotal | None) -> bool:
    """Whether a customer's usage over a range may differ from what Stripe holds for it."""
    total = quantize(om_total or Decimal(0))
    if mine is None:
        return total != 0
    if mine.dirty:
        return True
    held = mine.total or Decimal(0)
    return total != held and not totals_match(total, held)  # equal: the common case, cheaper


@dataclass(frozen=True)
class RangeCheck:
    """A range of a lookback run to compare by totals, for these candidate customers.

    `top` ranges together cover the run's whole range once: their totals count unmapped usage."""

    low: datetime
    high: datetime
    candidates: list[Customer]
    top: bool


@dataclass
class MeterPass:
    """One meter's comparison over [start, end) for a set of customers."""

    meter: Meter
    start: datetime
    end: datetime
    customers: dict[str, Customer]  # by OpenMeter subject: a customer may have several
    filtered: bool  # the run was asked for these customers only (no unmapped counting)
    openmeter: OpenMeterClient
    tally: Tally
    everyone: list[Customer] = field(init=False)
    subjects_of: dict[int, list[str]] = field(init=False)

    def __post_init__(self) -> None:
        self.subjects_of = subjects.grouped(self.customers)
        # Customers are read by `id` here and in the recorder, not by the `pk` property: a run
        # reads it some 15 times per customer (470,000 times for 10,000 x 3: 0.2 s).
        unique = {c.id: c for c in self.customers.values()}
        self.everyone = list(unique.values())

    @property
    def step(self) -> Any:
        return self.meter.window_length

    @property
    def om_window(self) -> str:
        return OPENMETER_WINDOW[self.meter.window]

    def query_subjects(self) -> list[str]:
        few = self.filtered and len(self.customers) <= SUBJECT_FILTER_MAX
        return list(self.customers) if few else []

    def every_window(self) -> Iterator[Change]:
        """A chosen period: compare every window of every customer."""
        totals = self.range_totals(self.start, self.end, self.query_subjects())
        self.count_unmapped(totals)
        yield from self.windowed_changes(self.start, self.end, self.everyone, len(totals))

    def by_range(self) -> Iterator[Change]:
        """A lookback: the changed windows, found by comparing totals over ranges.

        Two totals per subject first: the newest window alone, and the rest of the lookback. The
        newest window's totals are its values, so a new hour is sent without a windowed query.
        A rest that differs is read window by window for the customers that differ in it; when
        they are many, it is first cut into ranges of 1, 1, 2, 4, 8... windows from the newest,
        each compared by totals, so that only ranges with changes are read window by window.
        The cost follows what changed, not customers x windows.
        """
        everyone = self.everyone
        newest = max(self.start, self.end - self.step)
        todo = deque([RangeCheck(newest, self.end, everyone, top=True)])
        if self.start < newest:
            todo.append(RangeCheck(self.start, newest, everyone, top=True))
        n_subjects = len(self.customers)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="openmeter") as reader:
            while todo:
                check = todo.popleft()
                totals, differing = self.compare(check, reader)
                if check.top:
                    n_subjects = max(n_subjects, len(totals))
                if not differing:
                    pass  # the range is unchanged
                elif check.high - check.low == self.step:  # one window: a total is its value
                    usage = {(c.id, check.low): self.customer_total(totals, c) for c in differing}
                    yield from self.changes(check.low, check.high, differing, usage)
                elif check.top and len(differing) > SUBJECT_FILTER_MAX:
                    todo.extendleft(
                        RangeCheck(low, high, differing, top=False)
                        for low, high in reversed(
                            windows.recent_first(check.low, check.high, self.step)
                        )
                    )
                else:
                    yield from self.windowed_changes(check.low, check.high, differing, n_subjects)
                # Dropped before the next range's totals come in: one range's at a time.
                del totals, differing

    def compare(
        self, check: RangeCheck, reader: ThreadPoolExecutor
    ) -> tuple[dict[str, Decimal], list[Customer]]:
        """OpenMeter's totals over the range, and the candidates whose totals differ from what
        Stripe holds. OpenMeter totals the range (on `reader`) while the database totals the
        ledger: the two waits overlap; the ledger's rows are compared once OpenMeter's are in."""
        asked = reader.submit(self.range_totals, check.low, check.high, self.subjects_for(check))
        held = self.held_totals(check.low, check.high, check.candidates)
        first = next(held, None)  # runs the query
        totals = asked.result()
        if check.top:
            self.count_unmapped(totals)
        rows = held if first is None else itertools.chain([first], held)
        return totals, self.differing(check, totals, rows)

    def subjects_for(self, check: RangeCheck) -> list[str]:
        if check.top:
            return self.query_subjects()
        keys = [s for c in check.candidates for s in self.subjects_of[c.id]]
        return keys if len(keys) <= SUBJECT_FILTER_MAX else []

    def customer_total(self, totals: Mapping[str, Decimal], customer: Customer) -> Decimal:
        """The customer's usage: the sum over its subjects (SUM and COUNT add up)."""
        subjects = self.subjects_of[customer.id]
        if len(subjects) == 1:  # most customers: the same sum, without a generator
            return ZERO + totals.get(subjects[0], ZERO)
        return sum((totals.get(s, ZERO) for s in subjects), ZERO)

    def differing(
        self,
        check: RangeCheck,
        totals: dict[str, Decimal],
        held: Iterable[tuple[int, HeldTotal]],
    ) -> list[Customer]:
        """The candidates whose totals may differ, in their order; `held` as from held_totals."""
        pending = {c.id: c for c in check.candidates}  # left: those Stripe holds nothing for
        changed: set[int] = set()
        unchanged = 0
        for pk, mine in held:
            customer = pending.pop(pk, None)
            if customer is None:  # not a candidate (the query was not filtered by customer)
                continue
            if differs(self.customer_total(totals, customer), mine):
                changed.add(pk)
            else:
                unchanged += mine.nonzero
        changed.update(
            pk for pk, c in pending.items() if differs(self.customer_total(totals, c), None)
        )
        result = [c for c in check.candidates if c.id in changed]
        self.tally.events_unchanged += unchanged
        logger.info(
            "Meter '%s' %s..%s: %d of %d customers changed",
            self.meter.openmeter_slug,
            utc_iso(check.low),
            utc_iso(check.high),
            len(result),
            len(check.candidates),
        )
        return result

    def range_totals(
        self, start: datetime, end: datetime, subjects: list[str]
    ) -> dict[str, Decimal]:
        """One total per subject over [start, end)."""
        try:
            return self.totals(start, end, subjects, window_size=None)
        except OpenMeterError as exc:
            if exc.status != 400:
                raise
            # An OpenMeter that refuses a query without windowSize: total the windows instead.
            logger.warning(
                "Meter '%s': totals query refused (%s); summing windows",
                self.meter.openmeter_slug,
                exc,
            )
            return self.totals(start, end, subjects, window_size=self.om_window)

    def totals(
        self, start: datetime, end: datetime, subjects: list[str], *, window_size: str | None
    ) -> dict[str, Decimal]:
        totals: dict[str, Decimal] = {}
        for row in self.openmeter.query(
            slug=self.meter.openmeter_slug,
            start=start,
            end=end,
            window_size=window_size,
            subjects=subjects,
        ):
            totals[row.subject] = totals.get(row.subject, ZERO) + row.value
        return totals

    def count_unmapped(self, totals: dict[str, Decimal]) -> None:
        if self.filtered:
            return
        for subject, total in totals.items():
            if subject not in self.customers and total != 0:
                self.tally.add_unmapped(meter_id=self.meter.pk, subject=subject, value=total)

    def held_totals(
        self, start: datetime, end: datetime, customers: list[Customer]
    ) -> Iterator[tuple[int, HeldTotal]]:
        """What Stripe holds per customer over [start, end): total, non-zero and dirty windows,
        streamed (a lookback has a row per customer: 100,000s)."""
        state = ReportedWindow.objects.filter(
            meter=self.meter, window_start__gte=start, window_start__lt=end
        )
        if len(customers) <= STATE_FILTER_MAX:
            state = state.filter(customer_id__in=[c.id for c in customers])
        rows = (
            state.values("customer_id")
            .annotate(
                total=Sum("value"),
                nonzero=Count("id", filter=~Q(value=0)),
                dirty=Count("id", filter=Q(needs_resend=True)),
            )
            .values_list("customer_id", "total", "nonzero", "dirty")
        )
        for pk, total, nonzero, dirty in rows.iterator(chunk_size=2000):
            yield pk, HeldTotal(total, nonzero, dirty)

    def windowed_changes(
        self, start: datetime, end: datetime, customers: list[Customer], n_subjects: int
    ) -> Iterator[Change]:
        """The changed windows of `customers` in [start, end), from windowed queries in chunks."""
        by_subject = {s: c for c in customers for s in self.subjects_of[c.id]}
        use_filter = len(by_subject) <= SUBJECT_FILTER_MAX
        per_query = len(by_subject) if use_filter else max(n_subjects, len(by_subject))
        chunk = self.step * max(1, ROWS_PER_QUERY // max(1, per_query))
        bounds = []
        chunk_start = start
        while chunk_start < end:
            bounds.append((chunk_start, min(end, chunk_start + chunk)))
            chunk_start += chunk
        # Newest chunk first: fresh usage sits in the latest windows, so sending starts at once
        # and overlaps the comparison of the older chunks.
        for chunk_start, chunk_end in reversed(bounds):
            usage: dict[tuple[int, datetime], Decimal] = defaultdict(Decimal)
            for row in self.openmeter.query(
                slug=self.meter.openmeter_slug,
                start=chunk_start,
                end=chunk_end,
                window_size=self.om_window,
                subjects=list(by_subject) if use_filter else [],
            ):
                customer = by_subject.get(row.subject)
                if customer is not None:
                    usage[(customer.id, row.window_start)] += row.value
            yield from self.changes(chunk_start, chunk_end, customers, usage)

    def changes(
        self,
        start: datetime,
        end: datetime,
        customers: list[Customer],
        usage: Mapping[tuple[int, datetime], Decimal],
    ) -> Iterator[Change]:
        ids = {c.id: c for c in customers}
        held = self.held_windows(start, end, ids)
        for key in sorted(set(usage) | set(held), key=lambda k: (k[1], k[0])):
            value = quantize(usage.get(key, Decimal(0)))
            previous = held.get(key)
            decision = decide(value=value, held=previous)
            if decision is None:
                if previous is not None:
                    self.tally.events_unchanged += 1
                continue
            yield Change(ids[key[0]], key[1], value, *decision)

    def held_windows(
        self, start: datetime, end: datetime, ids: Mapping[int, Customer]
    ) -> dict[tuple[int, datetime], Held]:
        state = ReportedWindow.objects.filter(
            meter=self.meter, window_start__gte=start, window_start__lt=end
        )
        if len(ids) <= STATE_FILTER_MAX:
            state = state.filter(customer_id__in=list(ids))
        # Tuples, not model instances: a chunk holds tens of thousands of windows.
        return {
            (customer_id, window_start): Held(value, sent_count, needs_resend)
            for customer_id, window_start, value, sent_count, needs_resend in state.values_list(
                "customer_id", "window_start", "value", "sent_count", "needs_resend"
            )
            if customer_id in ids
        }
