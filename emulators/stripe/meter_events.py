"""v1 meter events and adjustments, and the meter event rules both APIs share (a mixin).

``_ingest`` applies Stripe's rules to one meter event: an active meter for its ``event_name``,
the meter's customer and value payload keys, a finite value of at most 15 significant digits, a
timestamp within the past 35 days and at most 5 minutes ahead, an identifier not seen in the past
24 hours. Breaking one raises ApiError (a 400, or an asynchronous error on the v2 stream). A
customer id that names no customer passes here and is rejected asynchronously (``events.py``).
"""

from __future__ import annotations

import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

from .common import (
    IDENTIFIER_TTL_SECONDS,
    MAX_FUTURE_SECONDS,
    MAX_PAST_SECONDS,
    MAX_VALUE_DIGITS,
    ApiError,
    Json,
    _Ctx,
    _Event,
    _route,
    rfc3339,
)


class _MeterEvents:
    """v1 meter event and adjustment endpoints, and the rules; state lives on FakeStripe."""

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
        """Apply Stripe's meter event rules; store the event or raise ApiError. An event for a
        customer Stripe does not know passes (Stripe finds that out later): it is recorded as an
        asynchronous error and not stored. Returns the event's record either way."""
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
            if _digits(value) > MAX_VALUE_DIGITS:
                raise ApiError(
                    400,
                    f"The value in the event payload can have at most {MAX_VALUE_DIGITS} digits. "
                    f"Received `{raw_value}`.",
                    code="meter_event_value_too_many_digits",
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
        if customer not in self.objects["customer"]:
            # accepted here, rejected by Stripe's asynchronous validation: not stored, not billed
            self._async_error(
                "meter_event_customer_not_found",
                f"No such customer: '{customer}'",
                event={"event_name": event_name, "payload": dict(payload), "timestamp": ts},
                identifier=identifier,
                api=api,
                meter=meter_id,
            )
            return {
                "event_name": event_name,
                "identifier": identifier,
                "payload": dict(payload),
                "timestamp": ts,
            }
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
        self._async_error(
            "meter_event_adjustment_not_applied",
            f"No meter event with identifier {identifier} for `{event_name}` was received in "
            "the last 24 hours.",
            event=dict(p),
            identifier=identifier,
            api=ctx.api,
            meter=self._meter_for_event_name(event_name),
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


def _digits(value: Decimal) -> int:
    """Significant digits of a meter event value (trailing zeros after the point do not count)."""
    exponent = value.normalize().as_tuple().exponent
    if isinstance(exponent, int) and exponent > 0:
        value = value.quantize(Decimal(1))  # 1E+3 -> 1000: zeros before the point count
    else:
        value = value.normalize()
    return len(value.as_tuple().digits)
