"""Subscription items (a mixin): the item endpoints and the helpers that resolve an item's price
and give a new item its billing period."""

from __future__ import annotations

from .common import (
    ApiError,
    Json,
    _Ctx,
    _merge_metadata,
    _pname,
    _route,
)
from .periods import period_holding


class _SubscriptionItems:
    """Subscription item endpoints and helpers; state lives on :class:`FakeStripe`."""

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
        # An item shares the period of the subscription's other items; the first ones get the
        # period that holds now (periods.py).
        others = sub["items"].get("data") if sub.get("items") else None
        if others:
            start, end = others[0]["current_period_start"], others[0]["current_period_end"]
        else:
            start, end = period_holding(sub, rec, now)
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

    # ------------------------------------------------------------------ endpoints

    def _subscription_param(self, p: Json) -> Json:
        """The subscription named by the required ``subscription`` parameter."""
        sub_id = p.get("subscription")
        if not sub_id:
            raise ApiError(
                400,
                "Missing required param: subscription.",
                code="parameter_missing",
                param="subscription",
            )
        return self._get("subscription", sub_id, param="subscription", status=400)

    @_route("GET", "/v1/subscription_items")
    def _si_list(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        sub = self._subscription_param(p)
        return self._list(ctx, list(sub["items"]["data"]), p, "/v1/subscription_items")

    @_route("POST", "/v1/subscription_items")
    def _si_create(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        sub = self._subscription_param(p)
        if sub["status"] == "canceled":
            raise ApiError(400, "You cannot add items to a canceled subscription.")
        price = self._item_price(ctx, p, "")
        self._check_quantity(price, p, "")
        self._check_new_prices(
            None, [(si["price"], "price") for si in sub["items"]["data"]] + [(price, "")]
        )
        before = self._sub_copy(sub)
        si = self._new_item(ctx, sub, price, p)
        self._refresh_items(sub, [*sub["items"]["data"], si])
        self._sub_changed(sub, before)
        return si

    @_route("GET", "/v1/subscription_items/{item}")
    def _si_retrieve(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        return self._get("subscription_item", ctx.path_params["item"])

    @_route("POST", "/v1/subscription_items/{item}")
    def _si_update(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        si = self._get("subscription_item", ctx.path_params["item"])
        sub = self.objects["subscription"][si["subscription"]]
        before = self._sub_copy(sub)
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
        self._sub_changed(sub, before)
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
        before = self._sub_copy(sub)
        del self.objects["subscription_item"][si["id"]]
        self._refresh_items(sub, remaining)
        self._sub_changed(sub, before)
        return {"id": si["id"], "object": "subscription_item", "deleted": True}
