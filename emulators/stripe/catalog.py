"""Customers and products: the catalogue endpoints of FakeStripe (a mixin; prices: prices.py)."""

from __future__ import annotations

import secrets

from .common import (
    ApiError,
    Json,
    _created_matches,
    _Ctx,
    _merge_metadata,
    _route,
)


class _Catalog:
    """Customer and product endpoints; state lives on :class:`FakeStripe`."""

    # ------------------------------------------------------------------ customers

    _CUSTOMER_FIELDS = (
        "address",
        "balance",
        "business_name",
        "description",
        "email",
        "individual_name",
        "invoice_prefix",
        "name",
        "next_invoice_sequence",
        "phone",
        "preferred_locales",
        "shipping",
        "tax_exempt",
    )

    def _apply_customer(self, obj: Json, p: Json) -> None:
        for key in self._CUSTOMER_FIELDS:
            if key in p:
                obj[key] = None if p[key] == "" else p[key]
        if obj.get("tax_exempt") is None:
            obj["tax_exempt"] = "none"
        if "metadata" in p:
            obj["metadata"] = _merge_metadata(obj["metadata"], p["metadata"])
        settings = p.get("invoice_settings")
        if isinstance(settings, dict):
            for key, value in settings.items():
                obj["invoice_settings"][key] = None if value == "" else value

    @_route("POST", "/v1/customers")
    def _customer_create(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        cid = self._new_id("customer")
        obj: Json = {
            "id": cid,
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": self._now(),
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": None,
            "discount": None,
            "email": None,
            "invoice_prefix": secrets.token_hex(4).upper(),
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": ctx.livemode,
            "metadata": {},
            "name": None,
            "next_invoice_sequence": 1,
            "phone": None,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }
        self._apply_customer(obj, p)
        self._put("customer", obj)
        return obj

    @_route("GET", "/v1/customers/{customer}")
    def _customer_retrieve(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        cid = ctx.path_params["customer"]
        if cid in self._deleted["customer"]:
            return {"id": cid, "object": "customer", "deleted": True}
        return self._get("customer", cid)

    @_route("POST", "/v1/customers/{customer}")
    def _customer_update(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        obj = self._get("customer", ctx.path_params["customer"])
        self._apply_customer(obj, p)
        return obj

    @_route("DELETE", "/v1/customers/{customer}")
    def _customer_delete(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        cid = ctx.path_params["customer"]
        self._get("customer", cid)
        del self.objects["customer"][cid]
        self._deleted["customer"].add(cid)
        for sub in self.objects["subscription"].values():
            if sub["customer"] == cid and sub["status"] != "canceled":
                self._cancel(sub, {}, "cancellation_requested")
        return {"id": cid, "object": "customer", "deleted": True}

    @_route("GET", "/v1/customers")
    def _customer_list(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        items = [
            c
            for c in self._newest_first("customer")
            if ("email" not in p or c["email"] == p["email"])
            and _created_matches(c["created"], p.get("created"))
        ]
        return self._list(ctx, items, p, "/v1/customers")

    # ------------------------------------------------------------------ products

    _PRODUCT_FIELDS = (
        "active",
        "description",
        "images",
        "marketing_features",
        "name",
        "package_dimensions",
        "shippable",
        "statement_descriptor",
        "tax_code",
        "unit_label",
        "url",
    )

    def _make_product(self, ctx: _Ctx, p: Json, *, param: str = "id") -> Json:
        pid = p.get("id") or self._new_id("product")
        if pid in self.objects["product"] or pid in self._deleted["product"]:
            raise ApiError(
                400, f"Product already exists: {pid}", code="resource_already_exists", param=param
            )
        now = self._now()
        obj: Json = {
            "id": pid,
            "object": "product",
            "active": True,
            "created": now,
            "default_price": None,
            "description": None,
            "images": [],
            "livemode": ctx.livemode,
            "marketing_features": [],
            "metadata": _merge_metadata({}, p.get("metadata", {})),
            "name": p.get("name", ""),
            "package_dimensions": None,
            "shippable": None,
            "statement_descriptor": None,
            "tax_code": None,
            "type": "service",
            "unit_label": None,
            "updated": now,
            "url": None,
        }
        for key in self._PRODUCT_FIELDS:
            if key in p:
                obj[key] = None if p[key] == "" else p[key]
        self._put("product", obj)
        return obj

    @_route("POST", "/v1/products")
    def _product_create(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        obj = self._make_product(ctx, p)
        dpd = p.get("default_price_data")
        if isinstance(dpd, dict):
            price = self._make_price(ctx, {**dpd, "product": obj["id"]}, "default_price_data")
            obj["default_price"] = price["id"]
        return obj

    @_route("GET", "/v1/products/{id}")
    def _product_retrieve(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        return self._get("product", ctx.path_params["id"])

    @_route("POST", "/v1/products/{id}")
    def _product_update(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        obj = self._get("product", ctx.path_params["id"])
        if p.get("default_price"):
            price = self._get("price", p["default_price"], param="default_price", status=400)
            if price["product"] != obj["id"]:
                raise ApiError(
                    400,
                    f"The price {price['id']} does not belong to product {obj['id']}.",
                    param="default_price",
                )
            obj["default_price"] = price["id"]
        for key in self._PRODUCT_FIELDS:
            if key in p:
                obj[key] = None if p[key] == "" else p[key]
        if "metadata" in p:
            obj["metadata"] = _merge_metadata(obj["metadata"], p["metadata"])
        obj["updated"] = self._now()
        return obj

    @_route("DELETE", "/v1/products/{id}")
    def _product_delete(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        pid = ctx.path_params["id"]
        self._get("product", pid)
        if any(price["product"] == pid for price in self.objects["price"].values()):
            raise ApiError(
                400,
                "This product cannot be deleted because it has one or more user-created prices.",
            )
        del self.objects["product"][pid]
        self._deleted["product"].add(pid)
        return {"id": pid, "object": "product", "deleted": True}

    @_route("GET", "/v1/products")
    def _product_list(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        ids = set(p["ids"]) if "ids" in p else None
        items = [
            prod
            for prod in self._newest_first("product")
            if ("active" not in p or prod["active"] == p["active"])
            and (ids is None or prod["id"] in ids)
            and ("shippable" not in p or prod["shippable"] == p["shippable"])
            and ("url" not in p or prod["url"] == p["url"])
            and _created_matches(prod["created"], p.get("created"))
        ]
        return self._list(ctx, items, p, "/v1/products")
