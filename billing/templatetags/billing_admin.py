"""Template helpers for the billing admin: numbers and times as finance staff read them."""

from datetime import UTC, date
from typing import Any

from django import template
from django.contrib.admin.views.main import ChangeList
from django.utils import formats
from django.utils.text import capfirst

from billing import formatting
from billing.admin.dates import hierarchy_range
from billing.pricing import Amounts

register = template.Library()


# Numbers and times are turned into text in billing.formatting; these only name them here.
register.filter("quantity", formatting.quantity)
register.filter("signed_quantity", formatting.signed_quantity)
register.filter("utc", formatting.utc_minute)


@register.filter
def money_change(amounts: Amounts) -> str:
    """A difference in money: "+12.34 USD", "-0.50 USD", a dash without a price."""
    return amounts.text(signed=True)


@register.inclusion_tag("admin/date_hierarchy.html")
def indexed_date_hierarchy(cl: ChangeList) -> dict[str, Any]:
    """Django's date hierarchy without its SELECT DISTINCT over every row (seconds at a million).

    The links span the first to the last date in the whole table within the chosen year or
    month, read from the two ends of the column's index; the list's other filters are left out
    of it (they could make the database walk far along the index), so a link may lead to an
    empty list.
    """
    field = cl.date_hierarchy
    year, month, day = (cl.params.get(f"{field}__{part}") for part in ("year", "month", "day"))

    def link(filters: dict[str, Any]) -> str:
        return cl.get_query_string(filters, [f"{field}__"])

    dates = cl.model._default_manager.values_list(field, flat=True)
    if year:
        start, end = hierarchy_range(year, month, day)  # the changelist checked them
        dates = dates.filter(**{f"{field}__gte": start, f"{field}__lt": end})
    first_at, last_at = dates.order_by(field).first(), dates.order_by(f"-{field}").first()
    if first_at is None or last_at is None:  # nothing here: offer the way back only
        back = {"link": link({}), "title": "All dates"}
        return {"show": bool(year), "back": back, "choices": []}
    first, last = first_at.astimezone(UTC).date(), last_at.astimezone(UTC).date()
    if not (year or month or day) and first.year == last.year:
        year = str(first.year)
        if first.month == last.month:
            month = str(first.month)
    y_key, m_key, d_key = f"{field}__year", f"{field}__month", f"{field}__day"
    if year and month and day:
        chosen = date(int(year), int(month), int(day))
        return {
            "show": True,
            "back": {"link": link({y_key: year, m_key: month}), "title": _month(chosen)},
            "choices": [{"title": capfirst(formats.date_format(chosen, "MONTH_DAY_FORMAT"))}],
        }
    if year and month:
        days = [date(first.year, first.month, d) for d in range(first.day, last.day + 1)]
        return {
            "show": True,
            "back": {"link": link({y_key: year}), "title": str(year)},
            "choices": [
                {
                    "link": link({y_key: year, m_key: month, d_key: d.day}),
                    "title": capfirst(formats.date_format(d, "MONTH_DAY_FORMAT")),
                }
                for d in days
            ],
        }
    if year:
        return {
            "show": True,
            "back": {"link": link({}), "title": "All dates"},
            "choices": [
                {
                    "link": link({y_key: year, m_key: m}),
                    "title": _month(date(int(year), m, 1)),
                }
                for m in range(first.month, last.month + 1)
            ],
        }
    return {
        "show": True,
        "back": None,
        "choices": [
            {"link": link({y_key: str(y)}), "title": str(y)}
            for y in range(first.year, last.year + 1)
        ],
    }


def _month(day: date) -> str:
    return capfirst(formats.date_format(day, "YEAR_MONTH_FORMAT"))
