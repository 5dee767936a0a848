"""The hourly report schedule: exactly one row, whatever number of times `migrate` runs."""

from django.conf import settings

SCHEDULE_NAME = "Report usage to Stripe"
SCHEDULE_FUNC = "billing.tasks.scheduled_report"


def ensure_report_schedule() -> None:
    from django_q.models import Schedule

    defaults = {
        "func": SCHEDULE_FUNC,
        "schedule_type": Schedule.CRON,
        "cron": settings.REPORT_SCHEDULE_CRON,
        "repeats": -1,
        "intended_date_kwarg": "intended_date",
    }
    # Schedule.name is not unique: remove strays left by older setups, then update the one.
    keep = Schedule.objects.filter(name=SCHEDULE_NAME).order_by("pk").first()
    if keep is not None:
        Schedule.objects.filter(name=SCHEDULE_NAME).exclude(pk=keep.pk).delete()
    schedule, _ = Schedule.objects.update_or_create(name=SCHEDULE_NAME, defaults=defaults)
    if schedule.next_run is None or schedule.cron != settings.REPORT_SCHEDULE_CRON:
        schedule.next_run = schedule.calculate_next_run()
        schedule.save(update_fields=["next_run"])
