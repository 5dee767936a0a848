"""Reported usage per UTC day, drawn as inline SVG on the server (the admin works offline).

"Reported" is what Stripe holds: ReportedWindow keeps one row per meter, customer and window with
the latest value sent, so summing it per day gives the usage Stripe bills for that day.
"""

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.db.models import Max, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from billing import aggregations
from billing.formatting import quantity
from billing.models import Customer, Meter, ReportedWindow

DAYS = 30
WIDTH, HEIGHT = 720, 180
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 12, 28  # room for the axis labels


@dataclass(frozen=True)
class DailyUsage:
    meter: Meter
    days: list[date]
    values: list[Decimal]

    @property
    def total(self) -> Decimal:
        return sum(self.values, Decimal(0))

    @property
    def summary(self) -> str:
        """The figure beside the chart: the total, or for a period-to-date meter (whose days do
        not add up) the latest day's value."""
        if self.meter.period_to_date:
            latest = next((v for v in reversed(self.values) if v), Decimal(0))
            return f"latest {quantity(latest)}"
        return f"total {quantity(self.total)}"

    @property
    def title(self) -> str:
        if self.meter.period_to_date:
            return (
                f"{self.meter.name}: value to date per UTC day (each customer's highest that day, "
                "added up), last 30 days"
            )
        return f"{self.meter.name}: reported usage per UTC day, last 30 days"


def last_days(*, today: date, days: int = DAYS) -> list[date]:
    """The `days` UTC days ending with today (still open, so partial)."""
    return [today - timedelta(days=n) for n in range(days - 1, -1, -1)]


def _daily(rows: "QuerySet[ReportedWindow]", *, today: date) -> dict[int, dict[date, Decimal]]:
    """Per meter and day: the sum of the values Stripe holds; for a period-to-date meter (whose
    windows hold values to date) the sum over customers of each one's highest value that day."""
    days = last_days(today=today)
    start = datetime.combine(days[0], datetime.min.time(), UTC)
    rows = rows.filter(window_start__gte=start).annotate(day=TruncDate("window_start", tzinfo=UTC))
    to_date = [
        pk
        for pk, aggregation in Meter.objects.values_list("pk", "openmeter_aggregation")
        if aggregations.is_period_to_date(aggregation)
    ]
    per_meter: dict[int, dict[date, Decimal]] = {}
    totals = (
        rows.exclude(meter_id__in=to_date)
        .values("meter_id", "day")
        .annotate(total=Sum("value"))
        .order_by()
    )
    for row in totals:
        per_meter.setdefault(row["meter_id"], {})[row["day"]] = row["total"]
    peaks = (
        rows.filter(meter_id__in=to_date)
        .values("meter_id", "customer_id", "day")
        .annotate(peak=Max("value"))
        .order_by()
    )
    for peak in peaks:
        days_of = per_meter.setdefault(peak["meter_id"], {})
        days_of[peak["day"]] = days_of.get(peak["day"], Decimal(0)) + peak["peak"]
    return per_meter


def meter_usage(*, meter: Meter, today: date) -> DailyUsage:
    """All customers' reported usage of one meter, per day."""
    per_day = _daily(ReportedWindow.objects.filter(meter=meter), today=today).get(meter.pk, {})
    days = last_days(today=today)
    return DailyUsage(meter, days, [per_day.get(d, Decimal(0)) for d in days])


def customer_usage(*, customer: Customer, today: date) -> list[DailyUsage]:
    """One customer's reported usage per day, one series per meter it has usage on."""
    per_meter = _daily(ReportedWindow.objects.filter(customer=customer), today=today)
    days = last_days(today=today)
    meters = Meter.objects.filter(pk__in=per_meter).order_by("name")
    return [DailyUsage(m, days, [per_meter[m.pk].get(d, Decimal(0)) for d in days]) for m in meters]


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above value: a readable axis top."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power


def number(value: Decimal | float) -> str:
    """At most 6 decimals, thousands separated: chart labels, not invoices."""
    rounded = round(Decimal(str(value)), 6).normalize()
    text = f"{rounded:,f}"
    return "0" if text in {"-0", "0"} else text


def bar_chart(usage: DailyUsage, *, title: str) -> SafeString:
    """A 30-bar SVG: one bar per UTC day, the value in each bar's tooltip, and a y axis."""
    top = nice_ceiling(float(max(usage.values, default=Decimal(0))))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / len(usage.days)

    def y(value: float) -> float:
        return TOP + plot_h - plot_h * max(0.0, value) / top

    def px(value: float) -> str:  # format_html escapes to text first, so no format specs there
        return f"{value:.1f}"

    grid = format_html_join(
        "",
        '<line class="grid" x1="{}" x2="{}" y1="{}" y2="{}"></line>'
        '<text class="axis" x="{}" y="{}" text-anchor="end">{}</text>',
        (
            (LEFT, WIDTH - RIGHT, px(y(v)), px(y(v)), LEFT - 6, px(y(v) + 4), number(v))
            for v in (0, top / 2, top)
        ),
    )
    bars = format_html_join(
        "",
        '<rect class="bar{}" x="{}" y="{}" width="{}" height="{}" fill="#79aec8">'
        "<title>{}: {}</title></rect>",
        (
            (
                " today" if i == len(usage.days) - 1 else "",
                px(LEFT + i * slot + 1),
                px(y(float(value))),
                px(max(slot - 2, 1)),
                px(TOP + plot_h - y(float(value))),
                day.isoformat() + (" (so far)" if i == len(usage.days) - 1 else ""),
                number(value),
            )
            for i, (day, value) in enumerate(zip(usage.days, usage.values, strict=True))
        ),
    )
    labels = format_html_join(
        "",
        '<text class="axis" x="{}" y="{}" text-anchor="middle">{}</text>',
        (
            (px(LEFT + (i + 0.5) * slot), HEIGHT - 8, day.strftime("%b %d"))
            for i, day in enumerate(usage.days)
            if (len(usage.days) - 1 - i) % 5 == 0  # today, and every fifth day before it
        ),
    )
    return format_html(
        '<svg class="mb-chart" viewBox="0 0 {} {}" width="100%" role="img" aria-label="{}" '
        'xmlns="http://www.w3.org/2000/svg"><title>{}</title>{}{}{}</svg>',
        WIDTH,
        HEIGHT,
        title,
        title,
        grid,
        bars,
        labels,
    )
