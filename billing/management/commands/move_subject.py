"""python manage.py move_subject: bill an OpenMeter subject's usage to another customer (or to
none), showing first which windows change and re-reporting them."""

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from billing.formatting import plain_decimal, utc_minute
from billing.models import Customer, RunStatus, Trigger
from billing.reporting import ReportInputError, selected
from billing.reporting.preview import Preview
from billing.subject_moves import move_subject, plan_move, preview_move


class Command(BaseCommand):
    help = (
        "Move an OpenMeter subject to another customer (--to, any subject of that customer) or "
        "to none (--to-none). Shows each changed window's total (old -> new, in money), then "
        "moves it and re-reports both customers' windows of the last 35 days. Exit 0: done; "
        "1: the preview or the re-report failed; 2: bad input, nothing changed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("subject", help="the OpenMeter subject key to move")
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--to", help="a subject of the customer that gets the usage")
        target.add_argument("--to-none", action="store_true", help="bill it to no customer")
        parser.add_argument("--reason", required=True, help="why: kept in the audit")
        parser.add_argument(
            "--dry-run", action="store_true", help="show what would change; change nothing"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            to_customer = self._customer(options["to"]) if options["to"] else None
            if options["dry_run"]:
                move = plan_move(subject=options["subject"], to_customer=to_customer)
                preview = preview_move(
                    move=move, requested_by=None, reason=options["reason"], trigger=Trigger.COMMAND
                )
                self._show(preview, heading=f"Would move {move.describe()}")
                if not preview.complete:
                    sys.exit(1)
                return
            preview, done = move_subject(
                subject=options["subject"], to_customer=to_customer, reason=options["reason"]
            )
        except ReportInputError as exc:
            self.stderr.write(f"error: {exc}")
            sys.exit(2)
        self._show(preview, heading="Preview")
        if done is None or done.run is None:
            self.stderr.write("The preview did not complete: nothing was moved.")
            sys.exit(1)
        run = done.run
        self.stdout.write(
            f"Moved '{done.subject}' (audit #{done.pk}). Run #{run.pk} {run.status}: "
            f"{run.events_sent} sent, {run.events_unchanged} unchanged, {run.events_failed} failed."
        )
        if run.error:
            self.stderr.write(run.error)
        if run.status != RunStatus.SUCCEEDED:
            sys.exit(1)

    def _customer(self, subject: str) -> Customer:
        _, customers = selected(customer_subjects=[subject])
        return customers[0]

    def _show(self, preview: Preview, *, heading: str) -> None:
        run = preview.run
        self.stdout.write(
            f"{heading}: windows {utc_minute(run.period_start)} to {utc_minute(run.period_end)} "
            f"UTC, {preview.windows_changed} window(s) change."
        )
        for row in preview.rows:
            self.stdout.write(
                f"  {row.meter.openmeter_slug} / {row.customer.name}: {row.windows} window(s), "
                f"{plain_decimal(row.old_total)} -> {plain_decimal(row.new_total)} "
                f"({row.value_change.text(signed=True)})"
            )
            for change in row.changes[:20]:
                old = plain_decimal(change.old) if change.old is not None else "nothing"
                self.stdout.write(
                    f"    {utc_minute(change.window_start)}: {old} -> {plain_decimal(change.new)}"
                    f" ({change.value_change.text(signed=True)})"
                )
        if run.error:
            self.stderr.write(run.error)
