"""Fixtures: the loopback fakes of Stripe and OpenMeter, and the app pointed at them."""

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from billing import clock
from emulators.openmeter import FakeOpenMeter
from emulators.stripe import FakeStripe
from tests.browser import browser_page  # noqa: F401 (a fixture for the browser tests)
from tests.helpers import STRIPE_KEY
from tests.reconciling import reported  # noqa: F401 (a fixture for the reconciliation tests)
from tests.stripe_process import stripe_process  # noqa: F401 (the fake Stripe in its own process)


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
def frozen(now: datetime) -> Iterator[datetime]:
    """The app's clock stopped at `now`: admin, engine and presets read the same time."""
    with clock.frozen(now):
        yield now


@pytest.fixture
def now() -> datetime:
    """A fixed 'now' inside the current hour, so tests pick whole windows deterministically."""
    return datetime.now(UTC).replace(minute=30, second=0, microsecond=0)
