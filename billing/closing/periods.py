"""Billing periods as Stripe holds them: each subscription item's current period, kept as
BillingPeriod rows when a subscription is synced and when Stripe says it changed."""

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from billing import windows
from billing.models import BillingPeriod, Meter, PeriodStatus, Subscription


def _moment(value: Any) -> datetime:
    return datetime.fromtimestamp(int(value), UTC)


def record_periods(*, subscription: Subscription, stripe_subscription: dict[str, Any]) -> None:
    """Keep the subscription's current period(s) from its Stripe object (items carry them)."""
    items = (stripe_subscription.get("items") or {}).get("data") or []
    if not any(item.get("current_period_start") is not None for item in items):
        items = [stripe_subscription]  # API versions before 2025-03-31 keep it on the subscription
    seen = set()
    for item in items:
        start, end = item.get("current_period_start"), item.get("current_period_end")
        if start is None or end is None or (start, end) in seen:
            continue
        seen.add((start, end))
        period, created = BillingPeriod.objects.get_or_create(
            subscription=subscription,
            period_start=_moment(start),
            defaults={"period_end": _moment(end)},
        )
        if not created and period.period_end != _moment(end):
            BillingPeriod.objects.filter(pk=period.pk).update(period_end=_moment(end))


@dataclass(frozen=True)
class ClosedPeriod:
    period: BillingPeriod
    start: datetime
    end: datetime

    def holds(self, moment: datetime) -> bool:
        return self.start <= moment < self.end


def settled_periods(
    *, meter: Meter, start: datetime, end: datetime, now: datetime
) -> dict[int, list[ClosedPeriod]]:
    """Per customer id: where in [start, end) a meter event can no longer change the bill, in
    periods of subscriptions that bill `meter`. Stripe bills a window in the period its timestamp
    (the window's start) falls in, so:

    - a period whose invoice is final, whole;
    - the part older than Stripe accepts (35 days) of any other period: Stripe refuses the
      event, so such a change too can only be billed by an invoice item."""
    oldest = windows.oldest_reportable(meter.window, now=now)
    rows = BillingPeriod.objects.filter(
        subscription__prices__meter=meter,
        period_start__lt=end,
        period_end__gt=start,
    ).select_related("subscription")
    if start >= oldest:  # nothing too old: only closed periods count
        rows = rows.filter(status=PeriodStatus.CLOSED)
    found: dict[int, list[ClosedPeriod]] = defaultdict(list)
    for period in rows.distinct():
        closed = period.status == PeriodStatus.CLOSED
        until = period.period_end if closed else min(period.period_end, oldest)
        if period.period_start < until:
            found[period.subscription.customer_id].append(
                ClosedPeriod(period, period.period_start, until)
            )
    return dict(found)
