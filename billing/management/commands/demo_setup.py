"""python manage.py demo_setup: demo mode's first start (run by `dev.py serve`, not by hand).

Creates the seed's example with three customers on the local emulators, feeds the OpenMeter
emulator the last 48 hours of usage, and queues the first report so it runs within a minute."""

import sys
from typing import Any

import httpx
from django.core.management.base import BaseCommand

from billing import demo
from billing.integrations.openmeter import OpenMeterError
from billing.queue import enqueue
from billing.schedule import SCHEDULE_FUNC


class Command(BaseCommand):
    help = "Demo mode only: create the example on the local emulators and feed usage."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            example = demo.ensure_example()
            fed = demo.backfill()
        except demo.DemoRefused as exc:
            self.stderr.write(f"error: {exc}")
            sys.exit(2)
        except (OpenMeterError, httpx.HTTPError) as exc:
            self.stderr.write(f"error: the OpenMeter emulator did not take the demo usage: {exc}")
            sys.exit(1)
        for warning in example.warnings:
            self.stderr.write(f"warning: {warning}")
        for outcome in example.failures:
            self.stderr.write(f"warning: {outcome.obj} not synced: {outcome.error}")
        self.stdout.write(
            f"Demo: meter '{example.meter.name}', {len(example.customers)} customers with "
            f"subscriptions; {fed} usage events fed to the OpenMeter emulator"
            + (" (it already had usage)" if not fed else "")
            + "."
        )
        enqueue(SCHEDULE_FUNC, task_name="Demo: first report", group="report_runs")
        self.stdout.write("Demo: the first report is queued; it runs as soon as the worker starts.")
