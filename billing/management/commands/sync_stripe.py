"""python manage.py sync_stripe: push every pending or failed row to Stripe."""

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from billing.integrations.stripe_sync import sync_pending


class Command(BaseCommand):
    help = "Sync every pending or failed Meter, Customer, PriceMapping and Subscription to Stripe."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--all", action="store_true", help="also re-sync rows already synced")

    def handle(self, *args: Any, **options: Any) -> None:
        results = sync_pending(include_synced=options["all"])
        failed = 0
        for outcome in results:
            obj = outcome.obj
            label = f"{type(obj).__name__} #{obj.pk} {obj}"
            if outcome.synced:
                self.stdout.write(f"synced  {label}")
            else:
                failed += 1
                self.stdout.write(f"FAILED  {label}: {outcome.error}")
        self.stdout.write(
            f"{len(results) - failed} synced, {failed} failed, {len(results)} in all."
        )
        if failed:
            sys.exit(1)
