"""The fake Stripe in a process of its own, for tests that measure when requests arrive: in the
test's own process a stall of the GIL would delay the fake's stamps too, and bunch them."""

import multiprocessing
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import pytest

START_TIMEOUT = 60.0


def _serve(conn: Connection) -> None:
    from emulators.stripe import FakeStripe

    fake = FakeStripe().start()
    conn.send(fake.url)
    while True:
        command, args = conn.recv()
        if command == "stop":
            fake.stop()
            conn.send(None)
            return
        if command == "arrivals":  # (method, path prefix) -> sorted arrival times
            method, prefix = args
            pairs = zip(fake.requests, fake.arrivals, strict=True)
            conn.send(sorted(t for (m, p), t in pairs if m == method and p.startswith(prefix)))
            continue
        conn.send(getattr(fake, command)(*args))


class StripeProcess:
    def __init__(self) -> None:
        self._conn, child = multiprocessing.get_context("spawn").Pipe()
        self._proc = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(child,), daemon=True
        )
        self._proc.start()
        if not self._conn.poll(START_TIMEOUT):
            self._proc.kill()
            raise RuntimeError("the fake Stripe's process did not start")
        self.url: str = self._conn.recv()

    def call(self, command: str, *args: Any) -> Any:
        self._conn.send((command, args))
        return self._conn.recv()

    def stop(self) -> None:
        try:
            self.call("stop")
        finally:
            self._proc.join(timeout=10)


@pytest.fixture
def stripe_process(settings: Any) -> Iterator[StripeProcess]:
    from tests.helpers import STRIPE_KEY

    process = StripeProcess()
    settings.STRIPE_API_KEY = STRIPE_KEY
    settings.STRIPE_API_BASE = process.url
    settings.STRIPE_METER_EVENTS_API_BASE = process.url
    yield process
    process.stop()
