"""Where each customer's billing period starts, for period-to-date meters (billing.aggregations).

Stripe bills a window in the period its start falls in, so a period's first window is the first
whole window at or after the period's start. The periods are the BillingPeriod rows of the
customer's subscriptions that bill the meter. A window is in the period with the latest start at
or before it; past the end of the latest known period, in the next one (which starts at that end:
Stripe renews periods back to back). A customer with no known period is billed per UTC calendar
month.
"""

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise

from billing import windows
from billing.models import BillingPeriod, Customer, Meter

CUSTOMER_FILTER_MAX = 1000  # above this many customers, read the meter's periods and filter here


@dataclass(frozen=True, order=True)
class Segment:
    """Windows [low, high) of one billing period, whose first window starts at period_start."""

    period_start: datetime
    low: datetime
    high: datetime


def period_boundaries(*, meter: Meter, customers: Iterable[Customer]) -> dict[int, list[datetime]]:
    """Per customer id: the sorted first windows of its known billing periods (and of the one
    after the latest)."""
    ids = [c.pk for c in customers]
    rows = BillingPeriod.objects.filter(subscription__prices__meter=meter)
    if len(ids) <= CUSTOMER_FILTER_MAX:
        rows = rows.filter(subscription__customer_id__in=ids)
    periods: dict[int, list[tuple[datetime, datetime]]] = defaultdict(list)
    for customer_id, start, end in rows.values_list(
        "subscription__customer_id", "period_start", "period_end"
    ).distinct():
        periods[customer_id].append((start, end))
    found = {}
    for customer_id, spans in periods.items():
        latest = max(spans)
        starts = {windows.ceil(start, meter.window) for start, _ in spans}
        starts.add(windows.ceil(latest[1], meter.window))
        found[customer_id] = sorted(starts)
    return found


def period_start(boundaries: list[datetime], window_start: datetime) -> datetime:
    """The first window of the billing period that holds the window starting at window_start."""
    at = bisect_right(boundaries, window_start)
    if at:
        return boundaries[at - 1]
    return windows.month_start(window_start)


def segments(
    *, boundaries: list[datetime], start: datetime, end: datetime, window: str
) -> list[Segment]:
    """[start, end) cut where a billing period begins."""
    cuts = {b for b in boundaries if start < b < end}
    first = boundaries[0] if boundaries else end
    month = windows.month_start(start)
    while True:  # before any known period: UTC calendar months
        month = windows.month_start(month + windows.length(windows.DAY) * 32)
        if month >= min(end, first):
            break
        cuts.add(windows.ceil(month, window))
    points = [start, *sorted(cuts), end]
    return [
        Segment(period_start(boundaries, low), low, high)
        for low, high in pairwise(points)
        if low < high
    ]


def customer_segments(
    *, meter: Meter, customers: list[Customer], start: datetime, end: datetime
) -> dict[Segment, list[Customer]]:
    """The customers sharing each (period start, range): each group is read with one query."""
    known = period_boundaries(meter=meter, customers=customers)
    groups: dict[Segment, list[Customer]] = defaultdict(list)
    for customer in customers:
        for segment in segments(
            boundaries=known.get(customer.pk, []), start=start, end=end, window=meter.window
        ):
            groups[segment].append(customer)
    return dict(groups)
