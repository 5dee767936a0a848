"""python manage.py reconcile: Stripe's own totals beside the ledger and OpenMeter."""

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing import reconcile
from billing.formatting import quantity, utc_iso, utc_minute
from billing.management.selection import add_selection_arguments, parse_selection
from billing.models import ReconcileStatus, Reconciliation, Trigger
from billing.reporting import ReportInputError

WINDOWS_LISTED = 50


class Command(BaseCommand):
    help = (
        "Compare, per meter, customer and window, Stripe's meter event summaries with what "
        "Meterbridge sent and OpenMeter now, for [--from, --to) (default: the last "
        "RECONCILE_LOOKBACK_HOURS of closed windows). Drifting windows are marked to be sent "
        "again. Exit 0: no drift; 1: drift found (or Stripe/OpenMeter could not be read); "
        "2: bad input, nothing read."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_selection_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            start, end, meters, customers = parse_selection(options)
            check = reconcile.start_reconciliation(
                reconcile.ReconcileRequest(
                    trigger=Trigger.COMMAND,
                    start=start,
                    end=end,
                    meters=meters,
                    customers=customers,
                )
            )
        except (CommandError, ReportInputError) as exc:
            self.stderr.write(f"error: {exc}")
            sys.exit(2)
        check = reconcile.execute_reconciliation(check)
        self.stdout.write(
            f"Reconciliation #{check.pk} {check.status}: {utc_minute(check.period_start)} to "
            f"{utc_minute(check.period_end)} UTC; {check.windows_compared} windows compared: "
            f"{check.matched} match, {check.unsent} unsent, {check.drift} drift, "
            f"{check.settling} settling; {check.stripe_requests} Stripe requests."
        )
        for slug, counts in sorted((check.meter_counts or {}).items()):
            self.stdout.write(
                f"meter {slug}: {counts.get('drift', 0)} drift, {counts.get('unsent', 0)} "
                f"unsent, {counts.get('settling', 0)} settling, {counts.get('match', 0)} match "
                f"of {counts.get('compared', 0)} windows"
            )
        self._list_windows(check)
        if check.error:
            self.stderr.write(check.error)
        if check.drift:
            self.stdout.write(
                "Drifting windows are marked to be sent again: the next run (or "
                "report_usage --from/--to over the period) sends OpenMeter's value."
            )
        if check.drift or check.status != ReconcileStatus.SUCCEEDED:
            sys.exit(1)

    def _list_windows(self, check: Reconciliation) -> None:
        """One line per window that does not match (the first WINDOWS_LISTED; the admin and
        its CSV have them all)."""
        items = check.items.select_related("meter", "customer").order_by(
            "kind", "meter_id", "customer_id", "window_start"
        )
        for item in items[:WINDOWS_LISTED]:
            self.stdout.write(
                f"{item.kind}: meter {item.meter.openmeter_slug}, customer "
                f"{item.customer.openmeter_subject} ({item.customer.stripe_customer_id}), window "
                f"{utc_iso(item.window_start)}: OpenMeter {quantity(item.openmeter_value)}, sent "
                f"{quantity(item.sent_value)}, Stripe {quantity(item.stripe_value)}"
            )
        more = check.items.count() - WINDOWS_LISTED
        if more > 0:
            self.stdout.write(f"... and {more} more windows: see reconciliation #{check.pk}.")
