"""Keep the hourly report and daily reconciliation schedules and the two finance groups in place
after every `migrate`. (Stripe sync is explicit: see stripe_sync.sync_after_commit.)"""

from typing import Any

from django.db.models.signals import post_migrate
from django.dispatch import receiver


@receiver(post_migrate, dispatch_uid="meterbridge-schedule")
def _ensure_schedule(sender: Any, apps: Any = None, **kwargs: Any) -> None:
    if getattr(sender, "name", None) != "billing":
        return
    from billing.schedule import ensure_reconcile_schedule, ensure_report_schedule

    ensure_report_schedule()
    ensure_reconcile_schedule()


@receiver(post_migrate, dispatch_uid="meterbridge-roles")
def _ensure_roles(sender: Any, using: str = "default", **kwargs: Any) -> None:
    """The Finance viewer and Finance operator groups (billing.roles), with their permissions:
    ensure_roles creates the permissions it grants first, whatever order post_migrate runs in."""
    if getattr(sender, "name", None) != "billing":
        return
    from billing.roles import ensure_roles

    ensure_roles(using=using)
