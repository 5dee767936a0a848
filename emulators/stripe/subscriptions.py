"""Subscriptions, subscription items and webhook endpoints of FakeStripe (a mixin)."""

from __future__ import annotations

import secrets

from .common import (
    DAY,
    ApiError,
    Json,
    _add_interval,
    _created_matches,
    _Ctx,
    _merge_metadata,
    _missing,
    _pname,
    _route,
)


class _Subscriptions:
    """Subscription, subscription item and webhook endpoint endpoints."""

    # ------------------------------------------------------------------ subscriptions

    def _item_price(self, ctx: _Ctx, item: Json, param: str) -> Json:
        """Resolve an item's ``price``/``price_data`` (``param`` = "items[0]" or "" top-level)."""
        if isinstance(item.get("price_data"), dict):
            return self._make_price(ctx, dict(item["price_data"]), _pname(param, "price_data"))
        price_id = item.get("price")
        name = _pname(param, "price")
        if not price_id:
            raise ApiError(
                400, f"Missing required param: {name}.", code="parameter_missing", param=name
            )
        price = self._get("price", price_id, param=name, status=400)
        if not price["active"]:
            raise ApiError(
                400,
                "The price specified is inactive. This field only accepts active prices.",
                param=name,
            )
        if price["type"] != "recurring":
            raise ApiError(
                400,
                "The price specified is set to `type=one_time` but this field only accepts "
                "prices with `type=recurring`.",
                param=name,
            )
        return price

    @staticmethod
    def _check_quantity(price: Json, item: Json, param: str) -> None:
        if price["recurring"]["usage_type"] == "metered" and "quantity" in item:
            where = f" Remove quantity from `{param}`." if param else ""
            raise ApiError(
                400,
                f"Quantity should not be specified where usage_type is `metered`.{where}",
                param=_pname(param, "quantity"),
            )

    def _new_item(self, ctx: _Ctx, sub: Json, price: Json, item: Json) -> Json:
        now = self._now()
        rec = price["recurring"]
        # The item's period is the subscription's billing cycle that holds now: periods run from
        # the cycle anchor (creation, or a backdated start) in steps of the price's interval.
        start = sub["billing_cycle_anchor"]
        end = _add_interval(start, rec["interval"], rec["interval_count"])
        while end <= now:
            start, end = end, _add_interval(end, rec["interval"], rec["interval_count"])
        si: Json = {
            "id": self._new_id("subscription_item"),
            "object": "subscription_item",
            "billing_thresholds": None,
            "created": now,
            "current_period_end": end,
            "current_period_start": start,
            "discounts": [],
            "metadata": _merge_metadata({}, item.get("metadata", {})),
            "price": price,
            "subscription": sub["id"],
            "tax_rates": [],
        }
        if rec["usage_type"] != "metered":
            si["quantity"] = item.get("quantity", 1)
        self._put("subscription_item", si)
        return si

    @staticmethod
    def _refresh_items(sub: Json, items: list[Json]) -> None:
        sub["items"] = {
            "object": "list",
            "data": items,
            "has_more": False,
            "total_count": len(items),
            "url": f"/v1/subscription_items?subscription={sub['id']}",
        }

    def _check_new_prices(self, sub_currency: str | None, prices: list[tuple[Json, str]]) -> None:
        seen: set[str] = set()
        currency = sub_currency
        for price, param in prices:
            if price["id"] in seen:
                raise ApiError(
                    400,
                    f"Cannot add multiple subscription items with the same price: {price['id']}.",
                    param=f"{param}[price]",
                )
            seen.add(price["id"])
            if currency is None:
                currency = price["currency"]
            elif price["currency"] != currency:
                raise ApiError(
                    400,
                    "All prices on a subscription must have the same currency "
                    f"({currency} vs {price['currency']}).",
                    param=f"{param}[price]",
                )

    @_route("POST", "/v1/subscriptions")
    def _subscription_create(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        customer_id = p.get("customer")
        if not customer_id:
            raise ApiError(
                400, "Missing required param: customer.", code="parameter_missing", param="customer"
            )
        self._get("customer", customer_id, param="customer", status=400)
        items = p.get("items") or []
        if not items:
            raise ApiError(
                400, "Missing required param: items.", code="parameter_missing", param="items"
            )
        resolved: list[tuple[Json, str]] = []
        for i, item in enumerate(items):
            param = f"items[{i}]"
            price = self._item_price(ctx, item, param)
            self._check_quantity(price, item, param)
            resolved.append((price, param))
        self._check_new_prices(None, resolved)

        now = self._now()
        trial_days = p.get("trial_period_days")
        start = p.get("backdate_start_date", now)
        if start > now:
            raise ApiError(
                400,
                "backdate_start_date must be in the past.",
                param="backdate_start_date",
            )
        sub: Json = {
            "id": self._new_id("subscription"),
            "object": "subscription",
            "application": None,
            "application_fee_percent": None,
            "automatic_tax": {"enabled": False, "liability": None},
            "billing_cycle_anchor": p.get("billing_cycle_anchor", start),
            "billing_cycle_anchor_config": None,
            "billing_mode": {"type": (p.get("billing_mode") or {}).get("type", "classic")},
            "billing_thresholds": None,
            "cancel_at": p.get("cancel_at") if isinstance(p.get("cancel_at"), int) else None,
            "cancel_at_period_end": p.get("cancel_at_period_end", False),
            "canceled_at": None,
            "cancellation_details": {"comment": None, "feedback": None, "reason": None},
            "collection_method": p.get("collection_method", "charge_automatically"),
            "created": now,
            "currency": resolved[0][0]["currency"],
            "customer": customer_id,
            "days_until_due": p.get("days_until_due"),
            "default_payment_method": p.get("default_payment_method"),
            "default_source": None,
            "default_tax_rates": [],
            "description": p.get("description"),
            "discounts": [],
            "ended_at": None,
            "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
            "items": {},
            "latest_invoice": None,
            "livemode": ctx.livemode,
            "metadata": _merge_metadata({}, p.get("metadata", {})),
            "next_pending_invoice_item_invoice": None,
            "on_behalf_of": None,
            "pause_collection": None,
            "payment_settings": None,
            "pending_invoice_item_interval": None,
            "pending_setup_intent": None,
            "pending_update": None,
            "schedule": None,
            "start_date": start,
            "status": "trialing" if trial_days else "active",
            "test_clock": None,
            "transfer_data": None,
            "trial_end": now + trial_days * DAY if trial_days else None,
            "trial_settings": None,
            "trial_start": now if trial_days else None,
        }
        created = [
            self._new_item(ctx, sub, price, items[i]) for i, (price, _) in enumerate(resolved)
        ]
        self._refresh_items(sub, created)
        self._put("subscription", sub)
        return sub

    @_route("GET", "/v1/subscriptions/{subscription_exposed_id}")
    def _subscription_retrieve(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        return self._get("subscription", ctx.path_params["subscription_exposed_id"])

    @_route("POST", "/v1/subscriptions/{subscription_exposed_id}")
    def _subscription_update(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        sub = self._get("subscription", ctx.path_params["subscription_exposed_id"])
        if sub["status"] == "canceled" and set(p) - {"metadata", "cancellation_details", "expand"}:
            raise ApiError(
                400,
                "A canceled subscription can only update its cancellation_details and metadata.",
            )
        current: list[Json] = list(sub["items"]["data"])
        by_id = {si["id"]: si for si in current}
        updates: list[tuple[Json, Json, str, Json | None]] = []  # (si, item, param, new price)
        deletions: set[str] = set()
        additions: list[tuple[Json, Json, str]] = []
        for i, item in enumerate(p.get("items") or []):
            param = f"items[{i}]"
            if item.get("id"):
                si = by_id.get(item["id"])
                if si is None:
                    raise _missing("subscription_item", item["id"], param=f"{param}[id]")
                if item.get("deleted"):
                    deletions.add(si["id"])
                    continue
                price = (
                    self._item_price(ctx, item, param)
                    if item.get("price") or item.get("price_data")
                    else None
                )
                self._check_quantity(price or si["price"], item, param)
                updates.append((si, item, param, price))
            else:
                price = self._item_price(ctx, item, param)
                self._check_quantity(price, item, param)
                additions.append((price, item, param))
        remaining = [si for si in current if si["id"] not in deletions]
        if not remaining and not additions and current:
            raise ApiError(
                400,
                "A subscription must have at least one active plan. To cancel a subscription, "
                "please use the cancel API endpoint on /v1/subscriptions.",
                param="items",
            )
        final_prices = [(price or si["price"], param) for si, _, param, price in updates] + [
            (price, param) for price, _, param in additions
        ]
        untouched = [si for si in remaining if si["id"] not in {u[0]["id"] for u in updates}]
        self._check_new_prices(None, [(si["price"], "items") for si in untouched] + final_prices)
        for si, item, _, price in updates:
            if price is not None:
                si["price"] = price
                if price["recurring"]["usage_type"] == "metered":
                    si.pop("quantity", None)
                else:
                    si.setdefault("quantity", 1)
            if "quantity" in item:
                si["quantity"] = item["quantity"]
            if "metadata" in item:
                si["metadata"] = _merge_metadata(si["metadata"], item["metadata"])
        for si_id in deletions:
            self.objects["subscription_item"].pop(si_id, None)
        for price, item, _ in additions:
            remaining.append(self._new_item(ctx, sub, price, item))
        self._refresh_items(sub, remaining)
        for key in ("cancel_at_period_end", "collection_method", "days_until_due", "description"):
            if key in p:
                sub[key] = None if p[key] == "" else p[key]
        if "cancel_at" in p:
            sub["cancel_at"] = p["cancel_at"] if isinstance(p["cancel_at"], int) else None
        if "metadata" in p:
            sub["metadata"] = _merge_metadata(sub["metadata"], p["metadata"])
        if isinstance(p.get("cancellation_details"), dict):
            sub["cancellation_details"].update(p["cancellation_details"])
        return sub

    @_route("DELETE", "/v1/subscriptions/{subscription_exposed_id}")
    def _subscription_cancel(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        sub = self._get("subscription", ctx.path_params["subscription_exposed_id"])
        if sub["status"] != "canceled":
            now = self._now()
            details = p.get("cancellation_details") or {}
            sub.update(
                status="canceled",
                canceled_at=now,
                ended_at=now,
                cancellation_details={
                    "comment": details.get("comment") or None,
                    "feedback": details.get("feedback") or None,
                    "reason": "cancellation_requested",
                },
            )
        return sub

    @_route("GET", "/v1/subscriptions")
    def _subscription_list(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        status = p.get("status")

        def keep(sub: Json) -> bool:
            if status is None and sub["status"] == "canceled":
                return False
            if status == "ended" and sub["status"] != "canceled":
                return False
            if status not in (None, "all", "ended") and sub["status"] != status:
                return False
            if "customer" in p and sub["customer"] != p["customer"]:
                return False
            if "price" in p and all(si["price"]["id"] != p["price"] for si in sub["items"]["data"]):
                return False
            return _created_matches(sub["created"], p.get("created"))

        items = [sub for sub in self._newest_first("subscription") if keep(sub)]
        return self._list(ctx, items, p, "/v1/subscriptions")

    # ------------------------------------------------------------------ subscription items

    @_route("GET", "/v1/subscription_items")
    def _si_list(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        sub_id = p.get("subscription")
        if not sub_id:
            raise ApiError(
                400,
                "Missing required param: subscription.",
                code="parameter_missing",
                param="subscription",
            )
        sub = self._get("subscription", sub_id, param="subscription", status=400)
        return self._list(ctx, list(sub["items"]["data"]), p, "/v1/subscription_items")

    @_route("POST", "/v1/subscription_items")
    def _si_create(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        sub_id = p.get("subscription")
        if not sub_id:
            raise ApiError(
                400,
                "Missing required param: subscription.",
                code="parameter_missing",
                param="subscription",
            )
        sub = self._get("subscription", sub_id, param="subscription", status=400)
        if sub["status"] == "canceled":
            raise ApiError(400, "You cannot add items to a canceled subscription.")
        price = self._item_price(ctx, p, "")
        self._check_quantity(price, p, "")
        self._check_new_prices(
            None, [(si["price"], "price") for si in sub["items"]["data"]] + [(price, "")]
        )
        si = self._new_item(ctx, sub, price, p)
        self._refresh_items(sub, [*sub["items"]["data"], si])
        return si

    @_route("GET", "/v1/subscription_items/{item}")
    def _si_retrieve(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        return self._get("subscription_item", ctx.path_params["item"])

    @_route("POST", "/v1/subscription_items/{item}")
    def _si_update(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        si = self._get("subscription_item", ctx.path_params["item"])
        sub = self.objects["subscription"][si["subscription"]]
        price = si["price"]
        if p.get("price") or p.get("price_data"):
            price = self._item_price(ctx, p, "")
            others = [o for o in sub["items"]["data"] if o["id"] != si["id"]]
            self._check_new_prices(None, [(o["price"], "price") for o in others] + [(price, "")])
        self._check_quantity(price, p, "")
        if price is not si["price"]:
            si["price"] = price
            if price["recurring"]["usage_type"] == "metered":
                si.pop("quantity", None)
            else:
                si.setdefault("quantity", 1)
        if "quantity" in p:
            si["quantity"] = p["quantity"]
        if "metadata" in p:
            si["metadata"] = _merge_metadata(si["metadata"], p["metadata"])
        return si

    @_route("DELETE", "/v1/subscription_items/{item}")
    def _si_delete(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        si = self._get("subscription_item", ctx.path_params["item"])
        sub = self.objects["subscription"][si["subscription"]]
        remaining = [o for o in sub["items"]["data"] if o["id"] != si["id"]]
        if not remaining:
            raise ApiError(
                400,
                "A subscription must have at least one active plan. To cancel a subscription, "
                "please use the cancel API endpoint on /v1/subscriptions.",
            )
        del self.objects["subscription_item"][si["id"]]
        self._refresh_items(sub, remaining)
        return {"id": si["id"], "object": "subscription_item", "deleted": True}

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
