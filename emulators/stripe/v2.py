"""The v2 meter event endpoints of FakeStripe: sessions, the stream, events, adjustments."""

from __future__ import annotations

import secrets
from typing import Any

from . import contract
from .common import (
    MAX_STREAM_EVENTS,
    SESSION_TTL_SECONDS,
    V2_TO_REPORT_CODE,
    ApiError,
    Json,
    _Ctx,
    _route,
    rfc3339,
)


class _V2:
    """v2 meter event endpoints (JSON bodies); state lives on :class:`FakeStripe`."""

    # ------------------------------------------------------------------ v2 meter events

    @_route("POST", "/v2/billing/meter_event_session")
    def _v2_session(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        now = self.clock()
        mode = "live" if ctx.livemode else "test"
        token = f"mes_auth_{mode}_{secrets.token_hex(24)}"
        expires_at = now + SESSION_TTL_SECONDS
        self._sessions[token] = (expires_at, ctx.livemode)
        return {
            "object": "v2.billing.meter_event_session",
            "id": f"bmes_{mode}_{secrets.token_hex(12)}",
            "authentication_token": token,
            "created": rfc3339(now),
            "expires_at": rfc3339(expires_at),
            "livemode": ctx.livemode,
        }

    @staticmethod
    def _v2_timestamp(value: Any) -> int | None:
        if value is None:
            return None
        dt = contract.parse_rfc3339(value) if isinstance(value, str) else None
        if dt is None:
            raise ApiError(
                400,
                f"Invalid timestamp: {value!r}; must be an RFC 3339 date-time.",
                code="parameter_invalid_string",
                param="timestamp",
            )
        return int(dt.timestamp() // 1)

    @_route("POST", "/v2/billing/meter_event_stream")
    def _v2_stream(self, ctx: _Ctx, p: Json, accepted: list[Json]) -> Json:
        events = p.get("events")
        if not isinstance(events, list):
            raise ApiError(400, "Missing required param: events.", code="parameter_missing")
        if len(events) > MAX_STREAM_EVENTS:
            raise ApiError(
                400,
                f"events: at most {MAX_STREAM_EVENTS} events per request (got {len(events)}).",
                code="invalid_array_length",
            )
        for event in events:
            try:
                if not isinstance(event, dict):
                    raise ApiError(400, "Each event must be an object.", code="invalid_event")
                self._ingest(
                    api="v2",
                    event_name=str(event.get("event_name", "")),
                    payload=event.get("payload"),
                    timestamp=self._v2_timestamp(event.get("timestamp")),
                    identifier=event.get("identifier"),
                    accepted=accepted,
                )
            except ApiError as e:  # validation is asynchronous: reported later, not answered
                name = event.get("event_name") if isinstance(event, dict) else None
                self._async_error(
                    V2_TO_REPORT_CODE.get(e.code or "", e.code or "invalid_event"),
                    e.message,
                    event=event,
                    identifier=event.get("identifier") if isinstance(event, dict) else None,
                    api="v2",
                    meter=self._meter_for_event_name(str(name)) if name else None,
                )
        return {}

    @_route("POST", "/v2/billing/meter_events")
    def _v2_meter_event(self, ctx: _Ctx, p: Json, accepted: list[Json]) -> Json:
        record = self._ingest(
            api="v2",
            event_name=str(p.get("event_name", "")),
            payload=p.get("payload"),
            timestamp=self._v2_timestamp(p.get("timestamp")),
            identifier=p.get("identifier"),
            accepted=accepted,
        )
        return {
            "object": "v2.billing.meter_event",
            "created": rfc3339(self.clock()),
            "event_name": record["event_name"],
            "identifier": record["identifier"],
            "livemode": ctx.livemode,
            "payload": record["payload"],
            "timestamp": rfc3339(record["timestamp"]),
        }

    @_route("POST", "/v2/billing/meter_event_adjustments")
    def _v2_adjustment(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        event_name, identifier, status = self._adjust(ctx, p)
        return {
            "object": "v2.billing.meter_event_adjustment",
            "id": "mtradj_" + secrets.token_hex(12),
            "cancel": {"identifier": identifier},
            "created": rfc3339(self.clock()),
            "event_name": event_name,
            "livemode": ctx.livemode,
            "status": status,
            "type": "cancel",
        }
