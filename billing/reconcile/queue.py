"""Start a reconciliation in the background (the admin's action, a webhook's meter errors)."""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db import transaction

from billing.models import Meter, Reconciliation, Trigger
from billing.queue import enqueue
from billing.reconcile.runs import ReconcileRequest, start_reconciliation


def queue_reconciliation(
    *,
    meters: Sequence[Meter],
    requested_by: Any = None,
    trigger: str = Trigger.ADMIN,
    period: tuple[datetime, datetime] | None = None,
) -> Reconciliation:
    """Create the reconciliation (raises ReportInputError for a period that cannot be read) and
    hand it to the worker once its row is committed."""
    start, end = period if period is not None else (None, None)
    check = start_reconciliation(
        ReconcileRequest(
            trigger=trigger, meters=meters, requested_by=requested_by, start=start, end=end
        )
    )
    check_id = check.pk
    transaction.on_commit(
        lambda: enqueue(
            "billing.tasks.execute_reconciliation",
            check_id,
            task_name=f"Reconciliation #{check_id}",
            group="reconciliations",
        )
    )
    return check
