"""django-q2 entry points: thin wrappers over the reporting, reconciliation and webhook services."""

import logging
from datetime import datetime

from billing import reconcile, reporting, webhooks
from billing.models import Reconciliation, ReportRun, RunPart, RunStatus, Trigger

logger = logging.getLogger(__name__)


def scheduled_report(intended_date: str | None = None, **_: object) -> int | None:
    """The hourly report. It covers the windows before its *intended* run time, so a late or
    retried run reports exactly the windows its schedule slot was meant to, and a slot is
    reported once however many clusters start it. Its parts are queued for any worker."""
    abandoned = reporting.fail_abandoned_runs()
    if abandoned:
        logger.warning("Closed %s abandoned report run(s).", abandoned)
    now = datetime.fromisoformat(intended_date) if intended_date else None
    try:
        run = reporting.start_run(
            reporting.RunRequest(trigger=Trigger.SCHEDULE, scheduled_for=now), now=now
        )
    except reporting.RunAlreadyStarted:
        logger.info("The report scheduled for %s was started by another cluster.", now)
        return None
    run = reporting.execute_run(run, fan_out=True)
    logger.info(
        "Scheduled report run %s: %s, %s part(s) queued", run.pk, run.status, run.parts.count() - 1
    )
    return run.pk


def execute_report_run(run_id: int) -> int:
    """Runs a ReportRun created by the admin (start_run), in the worker: prepares it and queues
    its parts."""
    run = ReportRun.objects.get(pk=run_id)
    if run.status != RunStatus.RUNNING or run.finished_at is not None:
        logger.warning("Report run %s already finished; not running it twice.", run_id)
        return run_id
    reporting.execute_run(run, fan_out=True)
    return run_id


def execute_run_part(part_id: int) -> int:
    """One part of a run (a meter, or a shard of its customers), in whichever worker took it."""
    part = RunPart.objects.select_related("run", "meter").filter(pk=part_id).first()
    if part is None:  # its meter was deleted since the run was prepared
        logger.warning("Run part %s no longer exists; nothing to do.", part_id)
        return part_id
    reporting.execute_part(part)
    return part_id


def scheduled_reconciliation(intended_date: str | None = None, **_: object) -> int:
    """The daily reconciliation of the last RECONCILE_LOOKBACK_HOURS of closed windows."""
    now = datetime.fromisoformat(intended_date) if intended_date else None
    check = reconcile.start_reconciliation(
        reconcile.ReconcileRequest(trigger=Trigger.SCHEDULE), now=now
    )
    check = reconcile.execute_reconciliation(check)
    logger.info(
        "Scheduled reconciliation %s: %s, %s drift, %s unsent",
        check.pk,
        check.status,
        check.drift,
        check.unsent,
    )
    return check.pk


def execute_reconciliation(reconciliation_id: int) -> int:
    """Runs a Reconciliation created by the admin or a webhook (start_reconciliation)."""
    check = Reconciliation.objects.get(pk=reconciliation_id)
    if check.finished_at is not None:
        logger.warning("Reconciliation %s already finished; not running it twice.", check.pk)
        return check.pk
    reconcile.execute_reconciliation(check)
    return check.pk


def process_webhook_event(webhook_event_id: int) -> int:
    """Handles a stored Stripe event (billing.webhooks)."""
    webhooks.process(webhook_event_id=webhook_event_id)
    return webhook_event_id
