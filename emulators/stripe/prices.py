"""Prices: the price endpoints of FakeStripe (a mixin), and the price builder that products
(``default_price_data``) and subscription items (``price_data``) use too."""

from __future__ import annotations

from decimal import Decimal

from .common import (
    ApiError,
    Json,
    _created_matches,
    _Ctx,
    _merge_metadata,
    _route,
)


class _Prices:
    """Price endpoints; state lives on :class:`FakeStripe`."""

    def _make_price(self, ctx: _Ctx, p: Json, prefix: str = "") -> Json:
        def name(key: str) -> str:
            return f"{prefix}[{key}]" if prefix else key

        product_id, product_data = p.get("product"), p.get("product_data")
        if product_id and product_data:
            raise ApiError(
                400,
                "You may only specify one of these parameters: product, product_data.",
                code="parameters_exclusive",
                param=name("product"),
            )
        if product_data:
            product = self._make_product(ctx, product_data, param=name("product_data[id]"))
        elif product_id:
            product = self._get("product", product_id, param=name("product"), status=400)
        else:
            raise ApiError(
                400,
                f"Missing required param: {name('product')}.",
                code="parameter_missing",
                param=name("product"),
            )

        recurring: Json | None = None
        rec = p.get("recurring")
        if isinstance(rec, dict):
            usage_type = rec.get("usage_type", "licensed")
            meter_id = rec.get("meter")
            if usage_type == "metered":
                if not meter_id:
                    raise ApiError(
                        400,
                        "Metered prices must be backed by a billing meter: pass "
                        f"{name('recurring')}[meter] with the id of an active meter.",
                        code="parameter_missing",
                        param=name("recurring") + "[meter]",
                    )
                meter = self._get(
                    "billing.meter", meter_id, param=name("recurring") + "[meter]", status=400
                )
                if meter["status"] != "active":
                    raise ApiError(
                        400,
                        f"The billing meter '{meter_id}' is inactive: metered prices need an "
                        "active meter.",
                        param=name("recurring") + "[meter]",
                    )
            elif meter_id:
                raise ApiError(
                    400,
                    f"{name('recurring')}[meter] can only be set when "
                    f"{name('recurring')}[usage_type] is metered.",
                    param=name("recurring") + "[meter]",
                )
            recurring = {
                "interval": rec.get("interval", "month"),
                "interval_count": rec.get("interval_count", 1),
                "meter": meter_id,
                "trial_period_days": None,
                "usage_type": usage_type,
            }

        billing_scheme = p.get("billing_scheme", "per_unit")
        unit_amount = p.get("unit_amount")
        unit_amount_decimal = p.get("unit_amount_decimal")
        if unit_amount is not None and unit_amount_decimal is not None:
            raise ApiError(
                400,
                "You may only specify one of these parameters: unit_amount, unit_amount_decimal.",
                code="parameters_exclusive",
                param=name("unit_amount"),
            )
        if billing_scheme == "per_unit":
            if (
                unit_amount is None
                and unit_amount_decimal is None
                and not p.get("custom_unit_amount")
            ):
                raise ApiError(
                    400,
                    f"Missing required param: {name('unit_amount')}.",
                    code="parameter_missing",
                    param=name("unit_amount"),
                )
        elif not p.get("tiers") or not p.get("tiers_mode"):
            missing = "tiers" if not p.get("tiers") else "tiers_mode"
            raise ApiError(
                400,
                f"Missing required param: {name(missing)}.",
                code="parameter_missing",
                param=name(missing),
            )
        if unit_amount is not None:
            unit_amount_decimal = str(unit_amount)
        elif unit_amount_decimal is not None:
            dec = Decimal(unit_amount_decimal)
            unit_amount = int(dec) if dec == dec.to_integral_value() else None

        price_id = self._new_id("price")
        obj: Json = {
            "id": price_id,
            "object": "price",
            "active": p.get("active", True),
            "billing_scheme": billing_scheme,
            "created": self._now(),
            "currency": str(p.get("currency", "usd")).lower(),
            "custom_unit_amount": p.get("custom_unit_amount"),
            "livemode": ctx.livemode,
            "lookup_key": p.get("lookup_key"),
            "metadata": _merge_metadata({}, p.get("metadata", {})),
            "nickname": p.get("nickname"),
            "product": product["id"],
            "recurring": recurring,
            "tax_behavior": p.get("tax_behavior", "unspecified"),
            "tiers_mode": p.get("tiers_mode"),
            "transform_quantity": p.get("transform_quantity"),
            "type": "recurring" if recurring else "one_time",
            "unit_amount": unit_amount,
            "unit_amount_decimal": unit_amount_decimal,
        }
        self._put("price", obj)
        return obj

    @_route("POST", "/v1/prices")
    def _price_create(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        return self._make_price(ctx, p)

    @_route("GET", "/v1/prices/{price}")
    def _price_retrieve(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        return self._get("price", ctx.path_params["price"])

    @_route("POST", "/v1/prices/{price}")
    def _price_update(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        obj = self._get("price", ctx.path_params["price"])
        for key in ("active", "nickname", "lookup_key"):
            if key in p:
                obj[key] = None if p[key] == "" else p[key]
        if "tax_behavior" in p and p["tax_behavior"] != obj["tax_behavior"]:
            if obj["tax_behavior"] not in (None, "unspecified"):
                raise ApiError(
                    400,
                    "tax_behavior cannot be changed once it is set to exclusive or inclusive.",
                    param="tax_behavior",
                )
            obj["tax_behavior"] = p["tax_behavior"]
        if "metadata" in p:
            obj["metadata"] = _merge_metadata(obj["metadata"], p["metadata"])
        return obj

    @_route("GET", "/v1/prices")
    def _price_list(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        rec_filter = p.get("recurring") or {}
        lookup_keys = set(p["lookup_keys"]) if "lookup_keys" in p else None

        def keep(price: Json) -> bool:
            if "active" in p and price["active"] != p["active"]:
                return False
            if "product" in p and price["product"] != p["product"]:
                return False
            if "type" in p and price["type"] != p["type"]:
                return False
            if "currency" in p and price["currency"] != str(p["currency"]).lower():
                return False
            if lookup_keys is not None and price["lookup_key"] not in lookup_keys:
                return False
            if not _created_matches(price["created"], p.get("created")):
                return False
            if rec_filter:
                rec = price["recurring"]
                if rec is None:
                    return False
                return all(rec.get(k) == v for k, v in rec_filter.items())
            return True

        items = [price for price in self._newest_first("price") if keep(price)]
        return self._list(ctx, items, p, "/v1/prices")
