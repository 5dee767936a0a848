"""What report_usage and reconcile share: --from/--to (ISO 8601, UTC), --meter and --customer,
read into checked values or a CommandError / ReportInputError with a one-line reason."""

from datetime import UTC, date, datetime
from typing import Any

from django.core.management.base import CommandError, CommandParser

from billing import reporting
from billing.models import Customer, Meter
from billing.reporting.periods import reportable_range


def add_selection_arguments(parser: CommandParser) -> None:
    parser.add_argument("--from", dest="start", help="start (inclusive), ISO 8601, UTC")
    parser.add_argument("--to", dest="end", help="end (exclusive), ISO 8601, UTC")
    parser.add_argument("--meter", action="append", default=[], help="OpenMeter slug")
    parser.add_argument("--customer", action="append", default=[], help="OpenMeter subject")


def parse_selection(
    options: dict[str, Any],
) -> tuple[datetime | None, datetime | None, list[Meter], list[Customer]]:
    start = parse_moment(options["start"]) if options["start"] else None
    end = parse_moment(options["end"]) if options["end"] else None
    meters, customers = reporting.selected(
        meter_slugs=options["meter"], customer_subjects=options["customer"]
    )
    return start, end, meters, customers


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
