"""Subscriptions (a mixin): create (with a billing cycle anchor, periods.py), update, cancel,
list, and the ``customer.subscription.*`` events they emit.

Emitted as snapshot events: ``customer.subscription.created`` on create (then the subscription's
first invoice, invoices.py), ``customer.subscription.updated`` with ``previous_attributes`` when
an update (of the subscription or of its items) or a new billing period changes it, and
``customer.subscription.deleted`` on cancel.
"""

from __future__ import annotations

import json

from .common import (
    DAY,
    ApiError,
    Json,
    _created_matches,
    _Ctx,
    _dumps,
    _merge_metadata,
    _missing,
    _route,
)
from .periods import cycle_anchor, period_holding


class _Subscriptions:
    """Subscription endpoints and their events; state lives on :class:`FakeStripe`."""

    @staticmethod
    def _sub_copy(sub: Json) -> Json:
        return json.loads(_dumps(sub))

    def _sub_changed(self, sub: Json, before: Json) -> None:
        """Emit ``customer.subscription.updated`` if ``sub`` differs from ``before``."""
        after = self._sub_copy(sub)
        changed = {k: before.get(k) for k, v in after.items() if before.get(k) != v}
        if changed:
            self.emit_event("customer.subscription.updated", sub, previous_attributes=changed)

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
        anchor, anchor_config = cycle_anchor(
            p, [price["recurring"] for price, _ in resolved], start, now
        )
        sub: Json = {
            "id": self._new_id("subscription"),
            "object": "subscription",
            "application": None,
            "application_fee_percent": None,
            "billing_cycle_anchor": anchor,
            "billing_cycle_anchor_config": anchor_config,
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
        customer = self.objects["customer"][customer_id]
        if customer.get("currency") is None:  # Stripe sets it with the first subscription
            customer["currency"] = sub["currency"]
        self._subscription_opened(sub)
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
        before = self._sub_copy(sub)
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
        invoice = self._reset_anchor(sub) if p.get("billing_cycle_anchor") == "now" else None
        self._sub_changed(sub, before)
        if invoice is not None:
            self.emit_event("invoice.created", invoice)
        return sub

    def _reset_anchor(self, sub: Json) -> Json:
        """``billing_cycle_anchor=now``: the current period ends now and is invoiced (a draft
        with reason ``subscription_update`` billing the metered usage up to now); a new period
        of each item's interval starts now."""
        now = self._now()
        spans = [(si_id, price, start, now) for si_id, price, start, _ in self._spans(sub)]
        start = min(si["current_period_start"] for si in sub["items"]["data"])
        invoice = self._new_invoice(sub, "subscription_update", start, now, spans)
        sub["latest_invoice"] = invoice["id"]
        sub["billing_cycle_anchor"] = now
        sub["billing_cycle_anchor_config"] = None
        for si in sub["items"]["data"]:
            si["current_period_start"] = now
            si["current_period_end"] = period_holding(sub, si["price"]["recurring"], now)[1]
        return invoice

    @_route("DELETE", "/v1/subscriptions/{subscription_exposed_id}")
    def _subscription_cancel(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        sub = self._get("subscription", ctx.path_params["subscription_exposed_id"])
        if sub["status"] != "canceled":
            self._cancel(sub, p.get("cancellation_details") or {}, "cancellation_requested")
        return sub

    def _cancel(self, sub: Json, details: Json, reason: str) -> None:
        now = self._now()
        sub.update(
            status="canceled",
            canceled_at=now,
            ended_at=now,
            cancellation_details={
                "comment": details.get("comment") or None,
                "feedback": details.get("feedback") or None,
                "reason": reason,
            },
        )
        self.emit_event("customer.subscription.deleted", sub)

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
