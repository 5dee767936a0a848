"""python manage.py report_usage: report usage to Stripe from a shell or cron."""

import sys
from datetime import UTC, date, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing import reporting
from billing.formatting import plain_decimal, utc_minute
from billing.models import RunStatus, Trigger
from billing.reporting.periods import reportable_range
from billing.reporting.summary import usage_totals


def parse_moment(text: str) -> datetime:
    """ISO 8601 date (midnight UTC) or date-time (no offset means UTC)."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(
            f"'{text}' is not an ISO 8601 date or date-time (e.g. 2026-11-20 or "
            "2026-11-20T13:00:00Z)."
        ) from None
    try:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:  # an offset pushing it off the calendar (year 1 or 9999)
        raise CommandError(
            f"'{text}' is outside the range Meterbridge reports ({reportable_range()})."
        ) from None


class Command(BaseCommand):
    help = (
        "Report usage from OpenMeter to Stripe for [--from, --to) (default: the last "
        "REPORT_LOOKBACK_HOURS of closed windows). Exit 0: all sent or unchanged; 1: some "
        "windows failed; 2: bad input, nothing sent."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--from", dest="start", help="start (inclusive), ISO 8601, UTC")
        parser.add_argument("--to", dest="end", help="end (exclusive), ISO 8601, UTC")
        parser.add_argument("--meter", action="append", default=[], help="OpenMeter slug")
        parser.add_argument("--customer", action="append", default=[], help="OpenMeter subject")
        parser.add_argument(
            "--dry-run", action="store_true", help="send nothing; log what would be sent"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            start = parse_moment(options["start"]) if options["start"] else None
            end = parse_moment(options["end"]) if options["end"] else None
            meters, customers = reporting.selected(
                meter_slugs=options["meter"], customer_subjects=options["customer"]
            )
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
