"""Test helpers: synced meters and customers in the fake Stripe, usage in the fake OpenMeter, and
the small functions several test modules share."""

import json
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from billing.integrations import stripe_sync
from billing.models import Customer, Meter
from emulators.stripe.webhooks import sign

ROOT = Path(__file__).resolve().parent.parent
STRIPE_KEY = "sk_test_meterbridge_tests"
IN_CI = os.environ.get("CI") == "true"


def skip_or_fail(reason: str) -> None:
    """Outside CI a missing service skips with its reason; in CI it is a failure."""
    if IN_CI:
        pytest.fail(f"{reason} (required in CI)")
    pytest.skip(reason)


def setting_in_subprocess(name: str, env: dict[str, str]) -> Any:
    """A setting as project.settings builds it, in a fresh process, from exactly `env`."""
    code = f"import json; from django.conf import settings; print(json.dumps(settings.{name}))"
    result = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "project.settings"},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def hours_ago(now: datetime, n: int) -> datetime:
    return now.replace(minute=0) - timedelta(hours=n)


def synced_meter(
    fake_openmeter: Any, slug: str = "api_calls", *, window: str = "hour", aggregation: str = "SUM"
) -> Meter:
    fake_openmeter.add_meter(slug, aggregation=aggregation)
    meter = Meter.objects.create(
        name=slug.replace("_", " ").title(), openmeter_slug=slug, window=window
    )
    assert stripe_sync.sync_object(meter), meter.sync_error
    return meter


def synced_customers(subjects: Iterable[str]) -> list[Customer]:
    result = []
    for subject in subjects:
        customer = Customer.objects.create(name=subject.title(), openmeter_subject=subject)
        assert stripe_sync.sync_object(customer), customer.sync_error
        result.append(customer)
    return result


class Usage:
    """Feeds the fake OpenMeter and keeps its own sums, the truth the tests compare Stripe with."""

    def __init__(self, fake_openmeter: Any) -> None:
        self.fake = fake_openmeter
        self.expected: dict[tuple[str, str, datetime], Decimal] = defaultdict(Decimal)

    def add(self, meter: Meter, subject: str, when: datetime, value: Any = 1) -> None:
        self.fake.ingest(meter=meter.openmeter_slug, subject=subject, time=when, value=value)
        start = when.replace(minute=0, second=0, microsecond=0)
        if meter.window == "day":
            start = start.replace(hour=0)
        self.expected[(meter.openmeter_slug, subject, start)] += Decimal(str(value))

    def windows(self, meter: Meter, customers: list[Customer]) -> dict[tuple[str, int], Decimal]:
        """(stripe customer id, window epoch) -> value, for non-zero windows of mapped customers."""
        ids = {c.openmeter_subject: c.stripe_customer_id for c in customers}
        return {
            (ids[subject], int(start.timestamp())): value
            for (slug, subject, start), value in self.expected.items()
            if slug == meter.openmeter_slug and subject in ids and value != 0
        }


def billed(fake_stripe: Any, meter: Meter) -> dict[tuple[str, int], Decimal]:
    return {
        k: Decimal(v)
        for k, v in fake_stripe.billed_windows(meter.stripe_meter_id).items()
        if Decimal(v) != 0
    }


def deliver_newest(
    client: Any, fake_stripe: Any, event_type: str, capture: Any, *, secret: str
) -> dict[str, Any]:
    """Post the newest event of `event_type` the fake Stripe emitted to the webhook, signed with
    `secret`, and run what it queues (`capture`: django_capture_on_commit_callbacks)."""
    event: dict[str, Any] = [e for e in fake_stripe.events if e["type"] == event_type][-1]
    payload = json.dumps(event).encode()
    with capture(execute=True):
        response = client.post(
            "/stripe/webhook/",
            data=payload,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=sign(payload, secret),
        )
    assert response.status_code == 200
    return event
