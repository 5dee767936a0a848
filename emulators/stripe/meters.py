"""Billing meters: the meter endpoints of FakeStripe (a mixin)."""

from __future__ import annotations

from .common import (
    ApiError,
    Json,
    _Ctx,
    _route,
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

    def _meter_for_event_name(self, event_name: str) -> str | None:
        """The active meter of ``event_name``, else its most recent inactive one, else None."""
        active = self._active_by_event_name.get(event_name)
        if active is not None:
            return active
        named = [
            m["id"] for m in self.objects["billing.meter"].values() if m["event_name"] == event_name
        ]
        return named[-1] if named else None
