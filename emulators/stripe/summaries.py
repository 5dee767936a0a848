"""Billing meter event summaries, ``GET /v1/billing/meters/{id}/event_summaries`` (a mixin).

Stripe's rules, as the fake applies them:

- ``customer``, ``start_time`` and ``end_time`` are required, ``start_time < end_time``, both
  aligned to the minute, and to the hour or the UTC day when ``value_grouping_window`` is ``hour``
  or ``day`` (400 otherwise).
- Only accepted events count: rejected ones (400s, and the asynchronous rejections of
  ``async_errors``) never enter the windows; cancelled ones (adjustments) leave them.
- A meter with an ``event_time_window`` (pre-aggregated) keeps the latest received event per
  customer and window; a raw meter aggregates all its events with its formula. An event belongs
  to the summary whose range holds its timestamp.
- Summaries are eventually consistent: an event counts once ``summary_delay_seconds`` (Stripe
  time, ``clock``) have passed since it arrived; until then its window shows what it showed
  before. Cancellations apply at once.
- Without ``value_grouping_window``: one summary for ``[start_time, end_time)``; with it, one per
  hour or day that holds events, oldest first. Paginated like the other lists (``limit``,
  ``starting_after``, ``ending_before``, ``has_more``).
"""

from __future__ import annotations

import hashlib
from decimal import Decimal

from .common import WINDOW_SECONDS, ApiError, Json, _aggregate, _Ctx, _Event, _route


class _Summaries:
    """The event summaries endpoint; state lives on :class:`FakeStripe`."""

    summary_delay_seconds: float

    @_route("GET", "/v1/billing/meters/{id}/event_summaries")
    def _meter_event_summaries(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        meter_id = ctx.path_params["id"]
        meter = self._get("billing.meter", meter_id)
        customer, start, end = p.get("customer"), p.get("start_time"), p.get("end_time")
        for key, value in (("customer", customer), ("start_time", start), ("end_time", end)):
            if value is None or value == "":
                raise ApiError(
                    400, f"Missing required param: {key}.", code="parameter_missing", param=key
                )
        assert isinstance(start, int) and isinstance(end, int) and isinstance(customer, str)
        grouping = p.get("value_grouping_window")
        step = WINDOW_SECONDS.get(grouping or "", 60)
        for key, value in (("start_time", start), ("end_time", end)):
            if value % step:
                unit = "UTC day" if grouping == "day" else grouping or "minute"
                raise ApiError(
                    400,
                    f"{key} must be aligned to the {unit} boundary (got {value}).",
                    param=key,
                )
        if start >= end:
            raise ApiError(400, "start_time must be before end_time.", param="start_time")

        events = [ev for ev in self._summarized(meter, customer) if start <= ev.ts < end]
        pre_aggregated = bool(meter.get("event_time_window"))
        formula = meter["default_aggregation"]["formula"]

        def value_of(group: list[_Event]) -> Decimal:
            if pre_aggregated and formula != "last":
                return sum((ev.value for ev in group), Decimal(0))
            return _aggregate(formula, group)

        def summary(s: int, e: int, group: list[_Event]) -> Json:
            digest = hashlib.sha1(f"{meter_id}|{customer}|{s}|{e}".encode()).hexdigest()[:24]
            return {
                "id": "mtrusum_" + digest,
                "object": "billing.meter_event_summary",
                "aggregated_value": value_of(group),
                "end_time": e,
                "livemode": ctx.livemode,
                "meter": meter_id,
                "start_time": s,
            }

        if grouping:
            size = WINDOW_SECONDS[grouping]
            groups: dict[int, list[_Event]] = {}
            for ev in events:
                groups.setdefault(ev.ts - ev.ts % size, []).append(ev)
            summaries = [summary(s, s + size, groups[s]) for s in sorted(groups)]
        else:
            summaries = [summary(start, end, events)]
        return self._list(ctx, summaries, p, f"/v1/billing/meters/{meter_id}/event_summaries")

    def _summarized(self, meter: Json, customer: str) -> list[_Event]:
        """The customer's events that count in summaries now: for a pre-aggregated meter the
        latest visible event of each window, for a raw meter every visible event."""
        windows = self._buckets.get(meter["id"], {}).get(customer, {})
        delay = self.summary_delay_seconds
        cutoff = self.clock() - delay
        out: list[_Event] = []
        for bucket in windows.values():
            visible = [ev for ev in bucket if ev.received_at <= cutoff] if delay > 0 else bucket
            if not visible:
                continue
            if meter.get("event_time_window"):
                out.append(visible[-1])  # the latest received one wins its window
            else:
                out.extend(visible)
        return out
