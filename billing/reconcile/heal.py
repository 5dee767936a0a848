"""What to report again after a reconciliation: the drifting windows' meters, customers and
the period that covers them, for the admin's re-report (preview first, as always)."""

from datetime import datetime

from django.db.models import Max, Min

from billing import windows
from billing.models import Customer, ItemKind, Meter, Reconciliation
from billing.reporting.periods import coarsest_window
from billing.reporting.selection import Selection, select_listed


def drift_rereport(
    *, reconciliation: Reconciliation
) -> tuple[Selection, tuple[datetime, datetime] | None]:
    """The selection and period of a re-report that sends OpenMeter's value to every drifting
    window (None when nothing drifts)."""
    drift = reconciliation.items.filter(kind=ItemKind.DRIFT)
    meters = list(Meter.objects.filter(pk__in=drift.values("meter_id")).order_by("name"))
    customers = list(Customer.objects.filter(pk__in=drift.values("customer_id")).order_by("name"))
    selection = select_listed(
        meters=meters, customers=customers, what=f"reconciliation #{reconciliation.pk}"
    )
    bounds = drift.aggregate(low=Min("window_start"), high=Max("window_start"))
    if bounds["low"] is None or not meters:
        return selection, None
    window = coarsest_window(meters)
    start = windows.floor(bounds["low"], window)
    end = windows.floor(bounds["high"], window) + windows.length(window)
    return selection, (start, end)
