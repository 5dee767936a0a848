"""The hourly report schedule: exactly one row, whatever number of times `migrate` runs."""

from django.conf import settings

from billing.queue import ensure_schedule

SCHEDULE_NAME = "Report usage to Stripe"
SCHEDULE_FUNC = "billing.tasks.scheduled_report"


def ensure_report_schedule() -> None:
    ensure_schedule(
        name=SCHEDULE_NAME,
        func=SCHEDULE_FUNC,
        cron=settings.REPORT_SCHEDULE_CRON,
        intended_date_kwarg="intended_date",
    )
