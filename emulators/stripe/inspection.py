"""What FakeStripe bills, for tests and the page (a mixin): the value kept per window, totals,
the billed value over a period, and request counts."""

from __future__ import annotations

from decimal import Decimal

from .common import HOUR, WINDOW_SECONDS, Json, _aggregate, _Event
from .invoice_lines import usage_value


class _Inspection:
    """Read-only views of the state; state lives on :class:`FakeStripe`."""

    def billed_value(self, meter_id: str, customer_id: str, window_start: int) -> Decimal | None:
        """What Stripe keeps for that window: the latest received event's value on a meter with an
        ``event_time_window`` (raw meters: the formula over that hour's events); None if none.
        The ``billed_*`` methods count every accepted event at once (no summary delay)."""
        with self._lock:
            meter = self.objects["billing.meter"].get(meter_id)
            if meter is None:
                return None
            size = self._window_size(meter)
            start = int(window_start) - int(window_start) % size
            events = self._buckets.get(meter_id, {}).get(customer_id, {}).get(start)
            return self._bucket_value(meter, events) if events else None

    def billed_windows(self, meter_id: str) -> dict[tuple[str, int], Decimal]:
        """(customer id, window start epoch) -> value kept for it, for every non-empty window."""
        with self._lock:
            meter = self.objects["billing.meter"].get(meter_id)
            if meter is None:
                return {}
            return {
                (customer, start): self._bucket_value(meter, events)
                for customer, windows in self._buckets.get(meter_id, {}).items()
                for start, events in windows.items()
                if events
            }

    def billed_total(self, meter_id: str, customer_id: str) -> Decimal:
        with self._lock:
            meter = self.objects["billing.meter"].get(meter_id)
            if meter is None:
                return Decimal(0)
            windows = self._buckets.get(meter_id, {}).get(customer_id, {})
            return sum((self._bucket_value(meter, ev) for ev in windows.values() if ev), Decimal(0))

    def busiest_second(self, method: str, path_prefix: str) -> int:
        """The most matching requests that arrived within any one second."""
        with self._lock:
            times = sorted(
                t
                for (m, p), t in zip(self.requests, self.arrivals, strict=True)
                if m == method and p.startswith(path_prefix)
            )
        busiest, lo = 0, 0
        for hi, t in enumerate(times):
            while t - times[lo] >= 1.0:
                lo += 1
            busiest = max(busiest, hi - lo + 1)
        return busiest

    def count(self, method: str, path_prefix: str) -> int:
        method = method.upper()
        with self._lock:
            return sum(1 for m, p in self.requests if m == method and p.startswith(path_prefix))

    def billed_quantity(self, meter_id: str, customer_id: str, start: int, end: int) -> Decimal:
        """The meter's billed value for the customer over ``[start, end)``: what an invoice line
        of that period bills (before the price's ``transform_quantity``)."""
        with self._lock:
            meter = self.objects["billing.meter"].get(meter_id)
            if meter is None:
                return Decimal(0)
            buckets = self._buckets.get(meter_id, {}).get(customer_id, {})
            return usage_value(meter, buckets, start, end)

    @staticmethod
    def _window_size(meter: Json) -> int:
        return WINDOW_SECONDS.get(meter.get("event_time_window") or "", HOUR)

    @staticmethod
    def _bucket_value(meter: Json, events: list[_Event]) -> Decimal:
        formula = meter["default_aggregation"]["formula"]
        if meter.get("event_time_window"):
            return events[-1].value  # pre-aggregated: latest received event wins
        return _aggregate(formula, events)
