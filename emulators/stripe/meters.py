"""Billing meters and v1 meter events: the usage rules of FakeStripe (a mixin)."""

from __future__ import annotations

import hashlib
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

from .common import (
    IDENTIFIER_TTL_SECONDS,
    MAX_FUTURE_SECONDS,
    MAX_PAST_SECONDS,
    WINDOW_SECONDS,
    ApiError,
    Json,
    _aggregate,
    _Ctx,
    _Event,
    _route,
    rfc3339,
)


class _Meters:
    """Billing meter and meter event endpoints; state lives on :class:`FakeStripe`."""

    # ------------------------------------------------------------------ billing meters

    @_route("POST", "/v1/billing/meters")
    def _meter_create(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        event_name = p.get("event_name", "")
        if event_name in self._active_by_event_name:
            raise ApiError(
                400,
                f"An active meter with event_name `{event_name}` already exists "
                f"({self._active_by_event_name[event_name]}).",
                code="resource_already_exists",
                param="event_name",
            )
        now = self._now()
        mapping = p.get("customer_mapping") or {}
        meter_id = self._new_id("billing.meter", ctx.livemode)
        obj: Json = {
            "id": meter_id,
            "object": "billing.meter",
            "created": now,
            "customer_mapping": {
                "event_payload_key": mapping.get("event_payload_key", "stripe_customer_id"),
                "type": mapping.get("type", "by_id"),
            },
            "default_aggregation": {
                "formula": (p.get("default_aggregation") or {}).get("formula", "sum")
            },
            "display_name": p.get("display_name", ""),
            "event_name": event_name,
            "event_time_window": p.get("event_time_window"),
            "livemode": ctx.livemode,
            "status": "active",
            "status_transitions": {"deactivated_at": None},
            "updated": now,
            "value_settings": {
                "event_payload_key": (p.get("value_settings") or {}).get(
                    "event_payload_key", "value"
                )
            },
        }
        self._put("billing.meter", obj)
        self._active_by_event_name[event_name] = meter_id
        return obj

    @_route("GET", "/v1/billing/meters/{id}")
    def _meter_retrieve(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        return self._get("billing.meter", ctx.path_params["id"])

    @_route("POST", "/v1/billing/meters/{id}")
    def _meter_update(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        obj = self._get("billing.meter", ctx.path_params["id"])
        if "display_name" in p:
            obj["display_name"] = p["display_name"]
            obj["updated"] = self._now()
        return obj

    @_route("POST", "/v1/billing/meters/{id}/deactivate")
    def _meter_deactivate(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        obj = self._get("billing.meter", ctx.path_params["id"])
        if obj["status"] == "active":
            now = self._now()
            obj.update(status="inactive", updated=now, status_transitions={"deactivated_at": now})
            if self._active_by_event_name.get(obj["event_name"]) == obj["id"]:
                del self._active_by_event_name[obj["event_name"]]
        return obj

    @_route("POST", "/v1/billing/meters/{id}/reactivate")
    def _meter_reactivate(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        obj = self._get("billing.meter", ctx.path_params["id"])
        if obj["status"] != "active":
            other = self._active_by_event_name.get(obj["event_name"])
            if other is not None:
                raise ApiError(
                    400,
                    f"An active meter with event_name `{obj['event_name']}` already exists "
                    f"({other}).",
                    code="resource_already_exists",
                )
            obj.update(
                status="active", updated=self._now(), status_transitions={"deactivated_at": None}
            )
            self._active_by_event_name[obj["event_name"]] = obj["id"]
        return obj

    @_route("GET", "/v1/billing/meters")
    def _meter_list(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        items = [
            m
            for m in self._newest_first("billing.meter")
            if "status" not in p or m["status"] == p["status"]
        ]
        return self._list(ctx, items, p, "/v1/billing/meters")

    @_route("GET", "/v1/billing/meters/{id}/event_summaries")
    def _meter_event_summaries(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        meter_id = ctx.path_params["id"]
        meter = self._get("billing.meter", meter_id)
        customer = p.get("customer")
        start, end = p.get("start_time"), p.get("end_time")
        for key, value in (("customer", customer), ("start_time", start), ("end_time", end)):
            if value is None:
                raise ApiError(
                    400, f"Missing required param: {key}.", code="parameter_missing", param=key
                )
        assert isinstance(start, int) and isinstance(end, int) and isinstance(customer, str)
        grouping = p.get("value_grouping_window")
        step = WINDOW_SECONDS.get(grouping or "", 60)
        for key, value in (("start_time", start), ("end_time", end)):
            if value % step:
                unit = grouping or "minute"
                raise ApiError(
                    400,
                    f"{key} must be aligned to the {unit} boundary (got {value}).",
                    param=key,
                )
        if start >= end:
            raise ApiError(400, "start_time must be before end_time.", param="start_time")

        windows = self._buckets.get(meter_id, {}).get(customer, {})
        if meter.get("event_time_window"):
            events = [evs[-1] for evs in windows.values() if evs]
        else:
            events = [ev for evs in windows.values() for ev in evs]
        events = [ev for ev in events if start <= ev.ts < end]
        formula = meter["default_aggregation"]["formula"]
        pre_aggregated = bool(meter.get("event_time_window"))

        def value_of(group: list[_Event]) -> Decimal:
            if pre_aggregated and formula != "last":
                return sum((ev.value for ev in group), Decimal(0))
            return _aggregate(formula, group)

        summaries: list[Json] = []

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
            for s in sorted(groups):
                summaries.append(summary(s, s + size, groups[s]))
        else:
            summaries.append(summary(start, end, events))
        return self._list(ctx, summaries, p, f"/v1/billing/meters/{meter_id}/event_summaries")

    # ------------------------------------------------------------------ meter events

    def _ingest(
        self,
        *,
        api: str,
        event_name: str,
        payload: Any,
        timestamp: int | None,
        identifier: str | None,
        accepted: list[Json],
    ) -> Json:
        """Apply Stripe's meter event rules; store the event or raise ApiError."""
        v1 = api == "v1"
        meter_id = self._active_by_event_name.get(event_name)
        if meter_id is None:
            if any(m["event_name"] == event_name for m in self.objects["billing.meter"].values()):
                raise ApiError(
                    400,
                    f"The meter for event_name `{event_name}` is inactive (archived).",
                    code="archived_meter",
                    param="event_name",
                )
            raise ApiError(
                400,
                f"No active meter was found matching event_name `{event_name}`.",
                code="no_meter",
                param="event_name",
            )
        meter = self.objects["billing.meter"][meter_id]
        if not isinstance(payload, dict):
            payload = {}
        customer_key = meter["customer_mapping"]["event_payload_key"]
        value_key = meter["value_settings"]["event_payload_key"]
        customer = payload.get(customer_key)
        if not isinstance(customer, str) or not customer:
            raise ApiError(
                400,
                f"The payload must carry the meter's customer mapping key `{customer_key}` "
                f"(meter {meter_id}).",
                code="meter_event_no_customer_defined" if v1 else "payload_no_customer_defined",
                param=f"payload[{customer_key}]",
            )
        raw_value = payload.get(value_key)
        if raw_value is None and meter["default_aggregation"]["formula"] == "count":
            value = Decimal(1)
        elif raw_value is None:
            raise ApiError(
                400,
                f"The payload must carry the meter's value key `{value_key}` (meter {meter_id}).",
                code="meter_event_invalid_value" if v1 else "payload_no_value_defined",
                param=f"payload[{value_key}]",
            )
        else:
            try:
                value = Decimal(raw_value) if isinstance(raw_value, str) else Decimal("NaN")
            except InvalidOperation:
                value = Decimal("NaN")
            if not value.is_finite():
                raise ApiError(
                    400,
                    f"The value `{raw_value}` of payload key `{value_key}` is not a number: "
                    'send a decimal string such as "12.5".',
                    code="meter_event_invalid_value" if v1 else "payload_invalid_value",
                    param=f"payload[{value_key}]",
                )
        now = self.clock()
        ts = int(now) if timestamp is None else int(timestamp)
        if ts < now - MAX_PAST_SECONDS:
            raise ApiError(
                400,
                f"The timestamp {ts} ({rfc3339(ts)}) is too far in the past: meter events must "
                "have a timestamp within the past 35 days.",
                code="timestamp_too_far_in_past",
                param="timestamp",
            )
        if ts > now + MAX_FUTURE_SECONDS:
            raise ApiError(
                400,
                f"The timestamp {ts} ({rfc3339(ts)}) is too far in the future: meter events can "
                "be at most 5 minutes in the future.",
                code="timestamp_in_future",
                param="timestamp",
            )
        if not identifier:
            identifier = str(uuid.uuid4())
        previous = self._identifiers.get(identifier)
        if previous is not None and now - previous.received_at < IDENTIFIER_TTL_SECONDS:
            raise ApiError(
                400,
                f"An event already exists with identifier {identifier}.",
                code=None if v1 else "duplicate_meter_event",
                headers={"Stripe-Should-Retry": "false"},
            )
        window = ts - ts % self._window_size(meter)
        record: Json = {
            "event_name": event_name,
            "identifier": identifier,
            "payload": dict(payload),
            "timestamp": ts,
            "api": api,
            "meter": meter_id,
            "customer": customer,
            "received_at": now,
            "canceled": False,
        }
        self._seq += 1
        event = _Event(
            meter=meter_id,
            event_name=event_name,
            customer=customer,
            window=window,
            ts=ts,
            value=value,
            seq=self._seq,
            identifier=identifier,
            received_at=now,
            record=record,
        )
        self._buckets.setdefault(meter_id, {}).setdefault(customer, {}).setdefault(
            window, []
        ).append(event)
        self._identifiers[identifier] = event
        self.meter_events.append(record)
        accepted.append(record)
        return record

    def _cancel_event(self, event_name: str, identifier: str) -> bool:
        event = self._identifiers.get(identifier)
        if (
            event is None
            or event.canceled
            or event.event_name != event_name
            or self.clock() - event.received_at >= IDENTIFIER_TTL_SECONDS
        ):
            return False
        windows = self._buckets[event.meter][event.customer]
        bucket = windows[event.window]
        bucket.remove(event)
        if not bucket:
            del windows[event.window]
        event.canceled = True
        event.record["canceled"] = True
        return True

    @_route("POST", "/v1/billing/meter_events")
    def _meter_event_create(self, ctx: _Ctx, p: Json, accepted: list[Json]) -> Json:
        timestamp = p.get("timestamp")
        if timestamp is not None and not isinstance(timestamp, int):
            raise ApiError(400, f"Invalid integer: {timestamp}", param="timestamp")
        record = self._ingest(
            api="v1",
            event_name=str(p.get("event_name", "")),
            payload=p.get("payload"),
            timestamp=timestamp,
            identifier=p.get("identifier"),
            accepted=accepted,
        )
        return {
            "object": "billing.meter_event",
            "created": self._now(),
            "event_name": record["event_name"],
            "identifier": record["identifier"],
            "livemode": ctx.livemode,
            "payload": record["payload"],
            "timestamp": record["timestamp"],
        }

    def _adjust(self, ctx: _Ctx, p: Json) -> tuple[str, str, str]:
        event_name = str(p.get("event_name", ""))
        cancel = p.get("cancel") or {}
        identifier = cancel.get("identifier") if isinstance(cancel, dict) else None
        if not identifier:
            raise ApiError(
                400,
                "Missing required param: cancel[identifier].",
                code="parameter_missing",
                param="cancel[identifier]",
            )
        if not any(m["event_name"] == event_name for m in self.objects["billing.meter"].values()):
            raise ApiError(
                400,
                f"No meter was found matching event_name `{event_name}`.",
                code="no_meter",
                param="event_name",
            )
        if self._cancel_event(event_name, identifier):
            return event_name, identifier, "complete"
        self.async_errors.append(
            {
                "code": "meter_event_adjustment_not_applied",
                "message": f"No meter event with identifier {identifier} for `{event_name}` "
                "was received in the last 24 hours.",
                "event": dict(p),
                "api": ctx.api,
                "received_at": self.clock(),
            }
        )
        return event_name, identifier, "pending"

    @_route("POST", "/v1/billing/meter_event_adjustments")
    def _meter_event_adjustment(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        event_name, identifier, status = self._adjust(ctx, p)
        return {
            "object": "billing.meter_event_adjustment",
            "cancel": {"identifier": identifier},
            "event_name": event_name,
            "livemode": ctx.livemode,
            "status": status,
            "type": "cancel",
        }
