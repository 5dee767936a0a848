"""Fixtures: the loopback fakes of Stripe and OpenMeter, and the app pointed at them."""

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from emulators.openmeter import FakeOpenMeter
from emulators.stripe import FakeStripe

STRIPE_KEY = "sk_test_meterbridge_tests"
IN_CI = os.environ.get("CI") == "true"


def skip_or_fail(reason: str) -> None:
    """Outside CI a missing service skips with its reason; in CI it is a failure."""
    if IN_CI:
        pytest.fail(f"{reason} (required in CI)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def stripe_server() -> Iterator[FakeStripe]:
    server = FakeStripe().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def openmeter_server() -> Iterator[FakeOpenMeter]:
    server = FakeOpenMeter().start()
    yield server
    server.stop()


@pytest.fixture
def fake_stripe(stripe_server: FakeStripe, settings: Any) -> FakeStripe:
    stripe_server.reset()
    settings.STRIPE_API_KEY = STRIPE_KEY
    settings.STRIPE_API_BASE = stripe_server.url
    settings.STRIPE_METER_EVENTS_API_BASE = stripe_server.url
    return stripe_server


@pytest.fixture
def fake_openmeter(openmeter_server: FakeOpenMeter, settings: Any) -> FakeOpenMeter:
    openmeter_server.reset()
    settings.OPENMETER_URL = openmeter_server.url
    settings.OPENMETER_API_TOKEN = None
    return openmeter_server


@pytest.fixture
def now() -> datetime:
    """A fixed 'now' inside the current hour, so tests pick whole windows deterministically."""
    return datetime.now(UTC).replace(minute=30, second=0, microsecond=0)


def hours_ago(now: datetime, n: int) -> datetime:
    return now.replace(minute=0) - timedelta(hours=n)


def as_decimal(value: Any) -> Decimal:
    return Decimal(str(value))
