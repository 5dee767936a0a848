"""python manage.py demo_usage: demo mode's usage generator (run by `dev.py serve`).

Every few seconds it sends the OpenMeter emulator new usage of the demo's customers, now and then
usage of a subject no customer has, and sometimes a late event for an hour already reported."""

import random
import signal
import sys
import time
from typing import Any

import httpx
from django.core.management.base import BaseCommand, CommandParser

from billing import clock, demo


class Command(BaseCommand):
    help = "Demo mode only: feed generated usage to the OpenMeter emulator until stopped."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--interval", type=float, default=5.0, help="seconds between batches")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            demo.check_demo_allowed()
        except demo.DemoRefused as exc:
            self.stderr.write(f"error: {exc}")
            sys.exit(2)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        rng = random.Random()
        while True:
            time.sleep(options["interval"])
            try:
                demo.send(demo.live(now=clock.now(), rng=rng))
            except httpx.HTTPError as exc:  # the emulator restarting: try again next time
                self.stderr.write(f"demo usage: {exc}")
