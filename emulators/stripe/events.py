"""The events FakeStripe emits (a mixin): snapshot and thin events, ``GET /v2/core/events/{id}``,
the webhook endpoint objects (``/v1/webhook_endpoints``) and the asynchronous meter event error
reports.

:meth:`emit_event` is the one way to emit. Every event is kept in ``fake.events`` (oldest first)
and queued for the matching webhook destinations (``webhooks.py``):

- snapshot (v1) events: ``{"id": "evt_…", "object": "event", "api_version", "created": <epoch>,
  "data": {"object": <a copy of the object as it is now>, "previous_attributes": <the changed
  fields' old values, ``*.updated`` events only>}, "livemode": false, "pending_webhooks":
  <matching destinations>, "request": {"id", "idempotency_key"}, "type"}``, posted whole.
- thin (v2) events: ``{"id": "evt_test_…", "object": "v2.core.event", "context": null, "created":
  <RFC 3339>, "data": {…}, "livemode": false, "reason": null | {"type": "request", "request": {"id",
  "idempotency_key"}}, "related_object": null | {"id", "type", "url"}, "type"}``. Destinations get
  the notification (the event without ``data``; ``related_object`` left out when null); the full
  event is at ``GET /v2/core/events/{id}``.

Meter events that Stripe validates asynchronously (the v2 stream's rejections, and events for a
customer Stripe does not know, on any endpoint) are recorded in ``fake.async_errors``; those whose
code is one of Stripe's error report codes also wait for :meth:`flush_error_reports`, which emits
one thin ``v1.billing.meter.error_report_triggered`` per meter (``related_object`` = the meter) and
one ``v1.billing.meter.no_meter_found`` for the event names without a meter.
"""

from __future__ import annotations

import json
import secrets
import threading
import uuid
from typing import Any

from .common import (
    API_VERSION,
    MAX_SAMPLE_ERRORS,
    REPORT_CODES,
    ApiError,
    Json,
    _Ctx,
    _dumps,
    _merge_metadata,
    _route,
    rfc3339,
    run_every,
)

ERROR_REPORT = "v1.billing.meter.error_report_triggered"
NO_METER_FOUND = "v1.billing.meter.no_meter_found"


class _Events:
    """emit_event, the v2 events endpoint and the error reports; state lives on FakeStripe."""

    events: list[Json]
    async_errors: list[Json]
    _error_reports: list[Json]
    _report_timer: threading.Event | None

    def emit_event(
        self,
        type: str,
        data_object: Json,
        *,
        thin: bool = False,
        related_object: Json | None = None,
        previous_attributes: Json | None = None,
    ) -> Json:
        """Store an event and queue it for every matching webhook destination; return it.

        Snapshot (``thin=False``): ``data.object`` is a copy of ``data_object`` as it is now.
        Thin: ``data`` is ``data_object``; ``related_object`` is ``{"id", "type", "url"}`` or
        None. ``previous_attributes`` (snapshot only) goes to ``data.previous_attributes``.
        Emitted while a request is served, the event carries that request in ``request``
        (snapshot) or ``reason`` (thin), its deliveries start once the request has answered, and
        it is dropped if the request fails.
        """
        with self._lock:
            data = json.loads(_dumps(data_object))  # a copy, in JSON types
            request = self._request_info  # (request id, idempotency key) while serving one
            destinations = self._destinations_for(type, thin)
            event: Json
            if thin:
                reason = None
                if request is not None:
                    ids = {"id": request[0], "idempotency_key": request[1] or ""}
                    reason = {"type": "request", "request": ids}
                event = {
                    "id": "evt_test_" + secrets.token_hex(24),
                    "object": "v2.core.event",
                    "context": None,
                    "created": rfc3339(self.clock()),
                    "data": data,
                    "livemode": False,
                    "reason": reason,
                    "related_object": related_object,
                    "type": type,
                }
                notification = {k: v for k, v in event.items() if k != "data"}
                if related_object is None:
                    del notification["related_object"]
                payload = _dumps(notification)
            else:
                body: Json = {"object": data}
                if previous_attributes is not None:
                    body["previous_attributes"] = json.loads(_dumps(previous_attributes))
                event = {
                    "id": "evt_" + secrets.token_hex(12),
                    "object": "event",
                    "api_version": API_VERSION,
                    "created": self._now(),
                    "data": body,
                    "livemode": False,
                    "pending_webhooks": len(destinations),
                    "request": {
                        "id": request[0] if request else None,
                        "idempotency_key": request[1] if request else None,
                    },
                    "type": type,
                }
                payload = _dumps(event)
            self.events.append(event)
            self._changes += 1
            self._queue_deliveries(event, payload, destinations)
            return event

    @_route("GET", "/v2/core/events/{id}")
    def _v2_event_retrieve(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        event_id = ctx.path_params["id"]
        for event in reversed(self.events):
            if event["id"] == event_id and event["object"] == "v2.core.event":
                return dict(event)
        raise ApiError(404, f"No such event: '{event_id}'", code="not_found")

    # ------------------------------------------------------------------ webhook endpoints

    @_route("POST", "/v1/webhook_endpoints")
    def _webhook_create(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        obj: Json = {
            "id": self._new_id("webhook_endpoint"),
            "object": "webhook_endpoint",
            "api_version": p.get("api_version"),
            "application": None,
            "created": self._now(),
            "description": p.get("description") or None,
            "enabled_events": p.get("enabled_events", []),
            "livemode": ctx.livemode,
            "metadata": _merge_metadata({}, p.get("metadata", {})),
            "secret": "whsec_" + secrets.token_hex(16),
            "status": "enabled",
            "url": p.get("url"),
        }
        self._put("webhook_endpoint", obj)
        return obj

    @_route("GET", "/v1/webhook_endpoints")
    def _webhook_list(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        items = [
            {k: v for k, v in we.items() if k != "secret"}
            for we in self._newest_first("webhook_endpoint")
        ]
        return self._list(ctx, items, p, "/v1/webhook_endpoints")

    # ------------------------------------------------------------------ asynchronous errors

    def _async_error(
        self,
        code: str,
        message: str,
        *,
        event: Any,
        identifier: str | None,
        api: str,
        meter: str | None,
    ) -> Json:
        """Record a meter event (or adjustment) that Stripe rejects after answering 200."""
        entry: Json = {
            "code": code,
            "message": message,
            "identifier": identifier or str(uuid.uuid4()),
            "event": event,
            "api": api,
            "meter": meter,
            "received_at": self.clock(),
        }
        self.async_errors.append(entry)
        if code in REPORT_CODES:
            self._error_reports.append(entry)
        return entry

    def flush_error_reports(self) -> list[Json]:
        """Emit the error reports of the asynchronous errors recorded since the last flush (one
        event per meter, one for the event names without a meter); return those events."""
        with self._lock:
            pending, self._error_reports = self._error_reports, []
            by_meter: dict[str | None, list[Json]] = {}
            for entry in pending:
                by_meter.setdefault(entry["meter"], []).append(entry)
            emitted = []
            for meter_id, entries in by_meter.items():
                data = _report_data(entries)
                if meter_id is None:
                    emitted.append(self.emit_event(NO_METER_FOUND, data, thin=True))
                    continue
                related = {
                    "id": meter_id,
                    "type": "billing.meter",
                    "url": f"/v1/billing/meters/{meter_id}",
                }
                emitted.append(
                    self.emit_event(ERROR_REPORT, data, thin=True, related_object=related)
                )
            return emitted

    def flush_error_reports_every(self, seconds: float | None) -> None:
        """Call :meth:`flush_error_reports` every ``seconds`` on a daemon thread (the CLI's
        ``--error-report-seconds``); None or 0 stops it, and so does :meth:`stop`."""
        run_every(
            self,
            "_report_timer",
            seconds,
            self.flush_error_reports,
            name="fake-stripe-error-reports",
        )


def _report_data(entries: list[Json]) -> Json:
    """The ``data`` of an error report over ``entries`` (one meter, or no meter)."""
    by_code: dict[str, list[Json]] = {}
    for entry in entries:
        by_code.setdefault(entry["code"], []).append(entry)
    count = len(entries)
    arrivals = [entry["received_at"] for entry in entries]
    return {
        "developer_message_summary": "There is 1 invalid event"
        if count == 1
        else f"There are {count} invalid events",
        "reason": {
            "error_count": count,
            "error_types": [
                {
                    "code": code,
                    "error_count": len(group),
                    "sample_errors": [
                        {"error_message": e["message"], "request": {"identifier": e["identifier"]}}
                        for e in group[:MAX_SAMPLE_ERRORS]
                    ],
                }
                for code, group in by_code.items()
            ],
        },
        "validation_end": rfc3339(max(arrivals)),
        "validation_start": rfc3339(min(arrivals)),
    }
