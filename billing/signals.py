"""Keep the hourly schedule in place after every `migrate`. (Stripe sync is explicit: see
billing.integrations.stripe_sync.sync_after_commit.)"""

from typing import Any

from django.db.models.signals import post_migrate
from django.dispatch import receiver


@receiver(post_migrate, dispatch_uid="meterbridge-schedule")
def _ensure_schedule(sender: Any, apps: Any = None, **kwargs: Any) -> None:
    if getattr(sender, "name", None) != "billing":
        return
    from billing.schedule import ensure_report_schedule

    ensure_report_schedule()
