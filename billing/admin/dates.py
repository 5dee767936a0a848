"""The admin's date hierarchy (?created_at__year=...&__month=...&__day=...) read safely.

Django turns the chosen year, month or day into a [start, end) range with datetime arithmetic
that raises an uncaught ValueError or OverflowError at the calendar's ends (year 9999's "next
year", the day after 9999-12-31), a 500. Here any value whose range cannot be computed, with a
day's margin for time-zone conversion, is an IncorrectLookupParameters, which the changelist and
the CSV export answer with Django's "?e=1" redirect.
"""

from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.http import HttpRequest


def hierarchy_range(
    year: str | None, month: str | None = None, day: str | None = None
) -> tuple[datetime, datetime]:
    """The UTC [start, end) of the chosen year, month or day; IncorrectLookupParameters if it
    is not a date or lies at the very ends of the calendar."""
    try:
        start = datetime(int(year or ""), int(month or 1), int(day or 1), tzinfo=UTC)
        if day:
            end = start + timedelta(days=1)
        elif month:
            end = (start + timedelta(days=32)).replace(day=1)
        else:
            end = start.replace(year=start.year + 1)
    except (ValueError, OverflowError) as exc:
        raise IncorrectLookupParameters(exc) from exc
    if start.date() <= date.min or end.date() >= date.max:  # a day's room for any time zone
        raise IncorrectLookupParameters(f"{start.date()} is at the end of the calendar.")
    return start, end


class BoundedDateChangeList(ChangeList):
    """A ChangeList whose date hierarchy parameters are checked before Django computes with
    them."""

    def get_filters(self, request: HttpRequest) -> Any:
        field = self.date_hierarchy
        if field:
            year = self.params.get(f"{field}__year")
            if year is not None:
                hierarchy_range(
                    year, self.params.get(f"{field}__month"), self.params.get(f"{field}__day")
                )
        return super().get_filters(request)
