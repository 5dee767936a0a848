"""The hourly report and the daily reconciliation: exactly one schedule row each, whatever
number of times `migrate` runs."""

from django.conf import settings

from billing.queue import ensure_schedule

SCHEDULE_NAME = "Report usage to Stripe"
SCHEDULE_FUNC = "billing.tasks.scheduled_report"
RECONCILE_SCHEDULE_NAME = "Reconcile Stripe with OpenMeter"
RECONCILE_SCHEDULE_FUNC = "billing.tasks.scheduled_reconciliation"


def ensure_report_schedule() -> None:
    ensure_schedule(
        name=SCHEDULE_NAME,
        func=SCHEDULE_FUNC,
        cron=settings.REPORT_SCHEDULE_CRON,
        intended_date_kwarg="intended_date",
    )


def ensure_reconcile_schedule() -> None:
    ensure_schedule(
        name=RECONCILE_SCHEDULE_NAME,
        func=RECONCILE_SCHEDULE_FUNC,
        cron=settings.RECONCILE_SCHEDULE_CRON,
        intended_date_kwarg="intended_date",
    )
