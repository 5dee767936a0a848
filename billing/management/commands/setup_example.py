"""python manage.py setup_example: the seed example's setup on a Stripe account.

Creates (or finds) the meter "AI Tokens" (OpenMeter `tokens_total`), its price at $0.01 per token,
monthly, a customer and its subscription, syncs them to Stripe and prints their dashboard links.
"""

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from billing.example import ExampleCustomer, create_example


class Command(BaseCommand):
    help = (
        "Create the seed example in Stripe: AI Tokens at $0.01 per token (monthly), a customer "
        "and a subscription. Safe to run again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", default="Example Customer", help="the customer's name")
        parser.add_argument("--email", default="customer@example.com", help="the customer's email")
        parser.add_argument(
            "--subject", default="example-user", help="the OpenMeter subject of its usage"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        customer = ExampleCustomer(
            name=options["name"], email=options["email"], subject=options["subject"]
        )
        example = create_example(customers=[customer])
        for warning in example.warnings:
            self.stderr.write(f"warning: {warning}")
        for outcome in example.failures:
            obj = outcome.obj
            self.stderr.write(f"error: {type(obj).__name__} '{obj}' not synced: {outcome.error}")
        if example.failures:
            self.stderr.write("Fix the cause, then run setup_example (or sync_stripe) again.")
            sys.exit(1)
        for what, url in example.links():
            self.stdout.write(f"{what}: {url}")
        self.stdout.write(
            f"Report usage of OpenMeter meter '{example.meter.openmeter_slug}' for subject "
            f"'{customer.subject}', then run: python manage.py report_usage"
        )
