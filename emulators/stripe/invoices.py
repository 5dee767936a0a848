"""Invoices (a mixin): how FakeStripe drafts, recomputes and finalizes them, and the invoice
endpoints (``GET /v1/invoices``, ``GET /v1/invoices/{invoice}``, ``POST
/v1/invoices/{invoice}/finalize``, ``POST /v1/invoices/create_preview``).

A subscription invoice bills, per metered item, the meter's billed value over the invoice's period
(``invoice_lines.py``), plus the customer's pending invoice items. While it is a draft its usage
lines are recomputed whenever it is read or finalized, so usage that arrives late for the period
still counts; once finalized (``status`` ``open``, or ``paid`` when nothing is due) its lines and
totals are fixed. Finalizing applies the customer's balance (a credit left by a negative invoice),
numbers the invoice ``<customer invoice_prefix>-<0001>``, and emits ``invoice.finalized`` (and
``invoice.paid`` when nothing is due).
"""

from __future__ import annotations

import secrets

from .common import DAY, ApiError, Json, _created_matches, _Ctx, _route
from .invoice_lines import (
    item_line,
    line_id,
    line_key,
    set_totals,
    shell,
    subscription_of,
    usage_line,
)

Span = tuple[str, Json, int, int]  # (subscription item id, price, start, end)


class _Invoices:
    """Invoice drafting, finalization and endpoints; state lives on :class:`FakeStripe`."""

    invoice_grace_seconds: float

    # ------------------------------------------------------------------ building

    def _balance(self, customer_id: str) -> int:
        customer = self.objects["customer"].get(customer_id)
        return int(customer.get("balance") or 0) if customer else 0

    def _usage_lines(self, inv: Json, spans: list[Span], ids: dict[str, str]) -> list[Json]:
        """Lines for (subscription item id, price, start, end) of metered items."""
        preview = inv["id"].startswith("upcoming_")
        lines = []
        for item_id, price, start, end in spans:
            product = self.objects["product"].get(price["product"]) or {}
            lines.append(
                usage_line(
                    line=ids.get(item_id) or line_id(preview),
                    invoice=None if preview else inv["id"],
                    sub_id=subscription_of(inv) or "",
                    item_id=item_id,
                    price=price,
                    product_name=product.get("name") or price["product"],
                    usage=self.billed_quantity(
                        price["recurring"]["meter"], inv["customer"], start, end
                    ),
                    start=start,
                    end=end,
                    livemode=inv["livemode"],
                )
            )
        return lines

    def _pending_items(self, customer_id: str, currency: str, sub_id: str | None) -> list[Json]:
        """The customer's invoice items no invoice has picked up yet that this subscription's
        next invoice takes (same currency; none reserved for another subscription)."""
        out = []
        for item in self.objects["invoiceitem"].values():
            reserved = ((item.get("parent") or {}).get("subscription_details") or {}).get(
                "subscription"
            )
            if (
                item["invoice"] is None
                and item["customer"] == customer_id
                and item["currency"] == currency
                and reserved in (None, sub_id)
            ):
                out.append(item)
        return out

    def _compose(self, inv: Json, spans: list[Span]) -> None:
        """Set the invoice's lines (usage, then its invoice items) and totals, keeping line ids."""
        ids = {line_key(line): line["id"] for line in inv["lines"]["data"]}
        lines = self._usage_lines(inv, spans, ids)
        preview = inv["id"].startswith("upcoming_")
        if preview:  # a preview shows the pending items; a stored invoice the ones it took
            items = self._pending_items(inv["customer"], inv["currency"], subscription_of(inv))
        else:
            items = [i for i in self.objects["invoiceitem"].values() if i["invoice"] == inv["id"]]
        for item in items:
            line = ids.get(item["id"]) or line_id(preview)
            lines.append(item_line(line=line, invoice=None if preview else inv["id"], item=item))
        inv["lines"]["data"] = lines
        set_totals(inv, self._balance(inv["customer"]))

    @staticmethod
    def _spans(sub: Json) -> list[Span]:
        """(item id, price, start, end) of the subscription's metered items' current periods."""
        return [
            (si["id"], si["price"], si["current_period_start"], si["current_period_end"])
            for si in sub["items"]["data"]
            if (si["price"].get("recurring") or {}).get("meter")
        ]

    def _new_invoice(self, sub: Json, reason: str, start: int, end: int, spans: list[Span]) -> Json:
        """Store a draft subscription invoice that takes the pending invoice items."""
        now = self._now()
        inv = shell(
            invoice_id=self._new_id("invoice"),
            customer=self.objects["customer"].get(sub["customer"]),
            customer_id=sub["customer"],
            sub=sub,
            reason=reason,
            currency=sub["currency"],
            start=start,
            end=end,
            now=now,
            livemode=sub["livemode"],
        )
        inv["automatically_finalizes_at"] = now + int(self.invoice_grace_seconds)
        for item in self._pending_items(sub["customer"], sub["currency"], sub["id"]):
            item["invoice"] = inv["id"]
        self._put("invoice", inv)
        self._compose(inv, spans)
        return inv

    def _refresh(self, inv: Json) -> Json:
        """A draft's lines recomputed from the usage and items as they are now."""
        if inv["status"] == "draft":
            spans = [
                (
                    line["parent"]["subscription_item_details"]["subscription_item"],
                    self.objects["price"][line["pricing"]["price_details"]["price"]],
                    line["period"]["start"],
                    line["period"]["end"],
                )
                for line in inv["lines"]["data"]
                if line["parent"]["type"] == "subscription_item_details"
            ]
            self._compose(inv, spans)
        return inv

    def _finalize(self, inv: Json) -> Json:
        """Fix a draft's lines and totals, apply the customer balance, number it, emit."""
        self._refresh(inv)
        now = self._now()
        customer = self.objects["customer"].get(inv["customer"])
        due = inv["total"] + inv["starting_balance"]
        inv["ending_balance"] = min(due, 0)
        if customer is not None:
            customer["balance"] = min(due, 0)  # a credit left over stays on the customer
            seq = int(customer.get("next_invoice_sequence") or 1)
            customer["next_invoice_sequence"] = seq + 1
            inv["number"] = f"{customer['invoice_prefix']}-{seq:04d}"
        else:  # a deleted customer: a fresh prefix
            inv["number"] = f"{secrets.token_hex(4).upper()}-0001"
        inv["status_transitions"]["finalized_at"] = now
        inv.update(status="open", effective_at=now, automatically_finalizes_at=None)
        if inv["collection_method"] == "send_invoice":
            sub = self.objects["subscription"].get(subscription_of(inv) or "") or {}
            inv["due_date"] = now + int(sub.get("days_until_due") or 30) * DAY
        self.emit_event("invoice.finalized", inv)
        if inv["amount_due"] == 0:
            self._mark_paid(inv)
        return inv

    def _mark_paid(self, inv: Json) -> None:
        inv["status"] = "paid"
        inv["status_transitions"]["paid_at"] = self._now()
        self.emit_event("invoice.paid", inv)

    def _preview(self, customer_id: str, sub: Json | None) -> Json:
        """The upcoming invoice: the subscription's current period so far, and the pending
        invoice items; not stored."""
        if sub is not None:
            start, end = self._current_period(sub)
            currency = sub["currency"]
        else:
            start = end = self._now()
            customer = self.objects["customer"].get(customer_id) or {}
            currency = customer.get("currency") or "usd"
        inv = shell(
            invoice_id="upcoming_in_" + secrets.token_hex(12),
            customer=self.objects["customer"].get(customer_id),
            customer_id=customer_id,
            sub=sub,
            reason="upcoming",
            currency=currency,
            start=start,
            end=end,
            now=self._now(),
            livemode=bool(sub and sub["livemode"]),
        )
        inv["next_payment_attempt"] = end
        self._compose(inv, self._spans(sub) if sub is not None else [])
        return inv

    @staticmethod
    def _current_period(sub: Json) -> tuple[int, int]:
        items = sub["items"]["data"]
        return items[0]["current_period_start"], items[0]["current_period_end"]

    # ------------------------------------------------------------------ endpoints

    @_route("GET", "/v1/invoices/{invoice}")
    def _invoice_retrieve(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        return self._refresh(self._get("invoice", ctx.path_params["invoice"]))

    @_route("GET", "/v1/invoices")
    def _invoice_list(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        def keep(inv: Json) -> bool:
            for key, value in (("customer", inv["customer"]), ("status", inv["status"])):
                if key in p and p[key] != value:
                    return False
            if "subscription" in p and subscription_of(inv) != p["subscription"]:
                return False
            if "collection_method" in p and inv["collection_method"] != p["collection_method"]:
                return False
            if "due_date" in p and (
                inv["due_date"] is None or not _created_matches(inv["due_date"], p["due_date"])
            ):
                return False
            return _created_matches(inv["created"], p.get("created"))

        found = [self._refresh(inv) for inv in self._newest_first("invoice") if keep(inv)]
        return self._list(ctx, found, p, "/v1/invoices")

    @_route("POST", "/v1/invoices/{invoice}/finalize")
    def _invoice_finalize(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        inv = self._get("invoice", ctx.path_params["invoice"])
        if inv["status"] != "draft":
            raise ApiError(
                400,
                "This invoice is already finalized, you can't re-finalize a non-draft invoice.",
            )
        if "auto_advance" in p:
            inv["auto_advance"] = p["auto_advance"]
        return self._finalize(inv)

    @_route("POST", "/v1/invoices/create_preview")
    def _invoice_preview(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        customer_id, sub_id = p.get("customer"), p.get("subscription")
        sub = None
        if sub_id:
            sub = self._get("subscription", sub_id, param="subscription", status=400)
            if sub["status"] == "canceled":
                raise ApiError(
                    404,
                    f"No upcoming invoices for subscription: {sub_id}",
                    code="invoice_upcoming_none",
                )
            if customer_id and customer_id != sub["customer"]:
                raise ApiError(
                    400,
                    f"The subscription {sub_id} does not belong to customer {customer_id}.",
                    param="subscription",
                )
            customer_id = sub["customer"]
        elif customer_id:
            self._get("customer", customer_id, param="customer", status=400)
            active = [
                s
                for s in self.objects["subscription"].values()
                if s["customer"] == customer_id and s["status"] in ("active", "trialing")
            ]
            if active:  # the subscription that renews first
                sub = min(active, key=lambda s: self._current_period(s)[1])
        else:
            raise ApiError(
                400, "Missing required param: customer.", code="parameter_missing", param="customer"
            )
        preview = self._preview(customer_id, sub)
        if sub is None and not preview["lines"]["data"]:
            raise ApiError(
                404,
                f"No upcoming invoices for customer: {customer_id}",
                code="invoice_upcoming_none",
            )
        return preview
