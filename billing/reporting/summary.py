"""What a run changed, for people: per meter the change in quantity and its value in money
(run page, dashboard), and per customer and meter what Stripe bills after it, in the seed
example's shape (`report_usage`):

    stripe_customer: cus_..., stripe_price: price_..., meter: tokens_total,
    total_usage: 10.000000, from: ... to: ...   (one line)

That total is what Stripe holds (the ledger) over the run's range of the meter."""

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from billing.formatting import utc_iso
from billing.models import Customer, LogStatus, Meter, ReportedWindow, ReportLog, ReportRun
from billing.pricing import Amounts, PriceBook
from billing.reporting.periods import meter_range


@dataclass(frozen=True, kw_only=True)
class UsageTotal:
    stripe_customer_id: str
    stripe_price_id: str
    meter_slug: str
    total: Decimal
    start: datetime
    end: datetime

    def line(self) -> str:
        return (
            f"stripe_customer: {self.stripe_customer_id}, stripe_price: "
            f"{self.stripe_price_id or '-'}, meter: {self.meter_slug}, total_usage: "
            f"{self.total:.6f}, from: {utc_iso(self.start)} to: {utc_iso(self.end)}"
        )


def usage_totals(*, run: ReportRun) -> list[UsageTotal]:
    """One total per (Stripe customer, meter) with usage in the run's range, by meter and id."""
    meters = Meter.objects.filter(active=True)
    if run.meter_slugs:
        meters = Meter.objects.filter(openmeter_slug__in=run.meter_slugs)
    customer_ids: list[int] | None = None
    if run.customer_subjects:
        customer_ids = list(
            Customer.objects.filter(openmeter_subject__in=run.customer_subjects).values_list(
                "pk", flat=True
            )
        )
    prices = PriceBook.load(customer_ids=customer_ids)
    result = []
    for meter in meters.order_by("openmeter_slug"):
        start, end = meter_range(run=run, meter=meter)
        held = ReportedWindow.objects.filter(
            meter=meter, window_start__gte=start, window_start__lt=end
        )
        if customer_ids is not None:
            held = held.filter(customer_id__in=customer_ids)
        totals: dict[tuple[int, str], Decimal] = defaultdict(Decimal)
        for customer_id, stripe_id, value in held.values_list(
            "customer_id", "stripe_customer_id", "value"
        ).iterator(chunk_size=5000):
            totals[(customer_id, stripe_id)] += value
        for (customer_id, stripe_id), total in sorted(totals.items(), key=lambda kv: kv[0][1]):
            price = prices.price(meter_id=meter.pk, customer_id=customer_id)
            result.append(
                UsageTotal(
                    stripe_customer_id=stripe_id,
                    stripe_price_id=price.stripe_price_id if price else "",
                    meter_slug=meter.openmeter_slug,
                    total=total,
                    start=start,
                    end=end,
                )
            )
    return result


@dataclass(frozen=True, kw_only=True)
class MeterChange:
    meter: Meter
    windows: int
    quantity: Decimal  # new minus old, over the windows the run sent (or would send)
    value: Amounts


def value_changes(*, run: ReportRun) -> list[MeterChange]:
    """Per meter, how much the run changed what Stripe bills, in quantity and money."""
    status = LogStatus.DRY_RUN if run.dry_run else LogStatus.SENT
    deltas: dict[tuple[int, int], Decimal] = defaultdict(Decimal)
    windows: dict[int, int] = defaultdict(int)
    logs = ReportLog.objects.filter(run=run, status=status).values_list(
        "meter_id", "customer_id", "quantity", "previous_quantity"
    )
    # Summed in Python: SQLite sums decimals as floats, and these are amounts to be billed.
    for meter_id, customer_id, new, old in logs.iterator(chunk_size=5000):
        deltas[(meter_id, customer_id)] += new - (old or 0)
        windows[meter_id] += 1
    prices = PriceBook.load(customer_ids={customer_id for _, customer_id in deltas})
    meters = Meter.objects.in_bulk(list(windows))
    quantity: dict[int, Decimal] = defaultdict(Decimal)
    value: dict[int, Amounts] = defaultdict(Amounts)
    for (meter_id, customer_id), delta in deltas.items():
        quantity[meter_id] += delta
        value[meter_id] += prices.value(quantity=delta, meter_id=meter_id, customer_id=customer_id)
    return [
        MeterChange(
            meter=meters[meter_id],
            windows=count,
            quantity=quantity[meter_id],
            value=value[meter_id],
        )
        for meter_id, count in sorted(windows.items(), key=lambda kv: meters[kv[0]].name)
    ]
