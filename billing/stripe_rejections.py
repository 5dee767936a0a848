"""Meter events Stripe rejected after accepting them (MeterEventError), as the run, customer
and dashboard pages list them."""

from datetime import datetime, timedelta
from typing import Any

from django.db.models import QuerySet

from billing.models import MeterEventError

SHOWN = 50  # a page lists the newest; the "rejected by Stripe" list has them all


def rejections(**filters: Any) -> list[MeterEventError]:
    """The newest rejections matching `filters` (e.g. report_log__run=run)."""
    found = MeterEventError.objects.filter(**filters).select_related(
        "meter", "report_log", "report_log__customer"
    )
    return list(found.order_by("-created_at", "-pk")[:SHOWN])


def recent(*, now: datetime, days: int = 35) -> "QuerySet[MeterEventError]":
    return MeterEventError.objects.filter(created_at__gte=now - timedelta(days=days))
