"""python manage.py report_usage: report usage to Stripe from a shell or cron."""

import sys
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing import reporting
from billing.formatting import plain_decimal, utc_minute
from billing.management.selection import add_selection_arguments, parse_selection
from billing.models import ReportRun, RunStatus, Trigger
from billing.reporting.summary import usage_totals

POLL_SECONDS = 0.5
PROGRESS_SECONDS = 10.0


class Command(BaseCommand):
    help = (
        "Report usage from OpenMeter to Stripe for [--from, --to) (default: the last "
        "REPORT_LOOKBACK_HOURS of closed windows). Exit 0: all sent or unchanged; 1: some "
        "windows failed; 2: bad input, nothing sent."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_selection_arguments(parser)
        parser.add_argument(
            "--dry-run", action="store_true", help="send nothing; log what would be sent"
        )
        parser.add_argument(
            "--workers",
            action="store_true",
            help="queue the run's parts for the qcluster workers (which must be running) and "
            "wait for them, instead of doing every part in this process",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            start, end, meters, customers = parse_selection(options)
            request = reporting.RunRequest(
                trigger=Trigger.COMMAND,
                start=start,
                end=end,
                meters=meters,
                customers=customers,
                dry_run=options["dry_run"],
            )
            run = reporting.start_run(request)
        except (CommandError, reporting.ReportInputError) as exc:
            self.stderr.write(f"error: {exc}")
            sys.exit(2)
        run = reporting.execute_run(run, fan_out=options["workers"])
        if run.finished_at is None:
            run = self.wait_for_workers(run)
        verb = "would send" if run.dry_run else "sent"
        self.stdout.write(
            f"Run #{run.pk} {run.status}: {utc_minute(run.period_start)} to "
            f"{utc_minute(run.period_end)} UTC; {run.windows_checked} windows checked, "
            f"{run.events_sent} {verb}, {run.events_unchanged} unchanged, "
            f"{run.events_failed} failed; {run.rate_limited} rate-limited answer(s) (429) "
            f"waited out; {run.unmapped_subjects} unmapped subject(s) with "
            f"{plain_decimal(run.unmapped_quantity)} usage."
        )
        if not run.dry_run:
            for total in usage_totals(run=run):
                self.stdout.write(total.line())
        if run.error:
            self.stderr.write(run.error)
        if run.status != RunStatus.SUCCEEDED:
            sys.exit(1)

    def wait_for_workers(self, run: ReportRun) -> ReportRun:
        """Until the workers end the run's last part, with a line of progress now and then.
        Interrupting leaves the run to the workers."""
        self.stdout.write(
            f"Run #{run.pk}: parts queued for the workers; waiting (Ctrl-C leaves it to them)."
        )
        said = time.monotonic()
        while run.finished_at is None:
            time.sleep(POLL_SECONDS)
            run.refresh_from_db()
            if time.monotonic() - said >= PROGRESS_SECONDS:
                said = time.monotonic()
                left = run.parts.filter(finished_at__isnull=True).count()
                self.stdout.write(
                    f"Run #{run.pk}: {left} part(s) to go; {run.events_sent} sent so far."
                )
        return run
