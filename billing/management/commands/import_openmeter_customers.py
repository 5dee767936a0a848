"""python manage.py import_openmeter_customers: create or link a Customer per OpenMeter customer,
billed for its subject keys."""

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from billing.integrations.openmeter import OpenMeterError
from billing.models import RunStatus, Trigger
from billing.openmeter_import import Outcome, import_customers
from billing.reporting import execute_run


class Command(BaseCommand):
    help = (
        "List OpenMeter's customers and create, link or update the matching Customers with "
        "their subject keys; a customer linked differently is left alone. Says per customer "
        "what was done. Exit 0: done; 1: OpenMeter could not be read or the re-report failed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="say what would be done; change nothing"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        dry_run = options["dry_run"]

        def progress(outcome: Outcome) -> None:
            self.stdout.write(outcome.line())

        try:
            result = import_customers(dry_run=dry_run, trigger=Trigger.COMMAND, progress=progress)
        except OpenMeterError as exc:
            self.stderr.write(f"error: {exc}")
            sys.exit(1)
        prefix = "Dry run, nothing changed: would be " if dry_run else ""
        self.stdout.write(f"{prefix}{result.summary()}.")
        for problem in result.problems:
            self.stderr.write(problem)
        if result.run is not None:
            run = execute_run(result.run, follow=False)  # the import has just followed
            self.stdout.write(
                f"Re-reported the customers that gained subjects: run #{run.pk} {run.status}, "
                f"{run.events_sent} sent, {run.events_unchanged} unchanged."
            )
            if run.status != RunStatus.SUCCEEDED:
                self.stderr.write(run.error)
                sys.exit(1)
