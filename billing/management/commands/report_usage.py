"""python manage.py report_usage: report usage to Stripe from a shell or cron."""

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing import reporting
from billing.formatting import plain_decimal, utc_minute
from billing.management.selection import add_selection_arguments, parse_selection
from billing.models import RunStatus, Trigger
from billing.reporting.summary import usage_totals


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
        run = reporting.execute_run(run)
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
