"""Invoice items and credit notes (a mixin): the ways to correct what an invoice bills.

``POST /v1/invoiceitems`` books an amount (``amount``, or ``unit_amount_decimal`` x ``quantity``
/ ``quantity_decimal``, or a one-time price's unit amount, rounded as invoice lines are) in the
customer's currency. It stays pending (``invoice`` null) until the customer's next subscription
invoice picks it up (the one of ``subscription`` if given), unless ``invoice`` names a draft to
add it to at once. Emits ``invoiceitem.created``.

``POST /v1/credit_notes`` credits a finalized invoice: ``amount``, or ``lines``
(``invoice_line_item`` lines: an ``amount``, a ``quantity`` at the line's unit price, or all the
line has left, never more; ``custom_line_item`` lines), never more than the
invoice's ``amount_remaining`` (a paid invoice has nothing left: the emulator takes no payments).
The credit lowers the invoice's ``amount_due``; crediting all of it marks the invoice paid. Emits
``credit_note.created`` and ``invoice.updated`` (and ``invoice.paid``).
"""

from __future__ import annotations

import secrets
from decimal import Decimal

from .common import ApiError, Json, _Ctx, _merge_metadata, _route
from .invoice_lines import minor, plain


class _Corrections:
    """Invoice item and credit note endpoints; state lives on :class:`FakeStripe`."""

    # ------------------------------------------------------------------ invoice items

    def _item_amount(self, p: Json) -> tuple[int, str | None, Decimal, Json | None]:
        """(amount, unit_amount_decimal, quantity, price) of an invoice item's parameters."""
        given = [k for k in ("amount", "unit_amount_decimal", "price_data", "pricing") if k in p]
        if len(given) > 1:
            raise ApiError(
                400,
                f"You may only specify one of these parameters: {', '.join(given)}.",
                code="parameters_exclusive",
                param=given[1],
            )
        if "quantity" in p and "quantity_decimal" in p:
            raise ApiError(
                400,
                "You may only specify one of these parameters: quantity, quantity_decimal.",
                code="parameters_exclusive",
                param="quantity_decimal",
            )
        quantity = Decimal(str(p.get("quantity_decimal", p.get("quantity", 1))))
        if quantity < 0:
            raise ApiError(400, "quantity must be non-negative.", param="quantity")
        if "amount" in p:
            if quantity != 1:
                raise ApiError(
                    400, "quantity can only be 1 when amount is given.", param="quantity"
                )
            return p["amount"], str(p["amount"]), quantity, None
        price = None
        unit = p.get("unit_amount_decimal")
        if isinstance(p.get("price_data"), dict):
            data = p["price_data"]
            unit = data.get("unit_amount_decimal", data.get("unit_amount"))
        elif isinstance(p.get("pricing"), dict) and p["pricing"].get("price"):
            price = self._get("price", p["pricing"]["price"], param="pricing[price]", status=400)
            if price["type"] != "one_time":
                raise ApiError(
                    400,
                    "The price specified is set to `type=recurring` but this field only accepts "
                    "prices with `type=one_time`.",
                    param="pricing[price]",
                )
            unit = price["unit_amount_decimal"]
        if unit is None:
            raise ApiError(
                400,
                "Missing required param: amount (or unit_amount_decimal, price_data, pricing).",
                code="parameter_missing",
                param="amount",
            )
        return minor(Decimal(str(unit)) * quantity), plain(Decimal(str(unit))), quantity, price

    @_route("POST", "/v1/invoiceitems")
    def _invoiceitem_create(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        customer_id = p.get("customer")
        if not customer_id:
            raise ApiError(
                400, "Missing required param: customer.", code="parameter_missing", param="customer"
            )
        customer = self._get("customer", customer_id, param="customer", status=400)
        amount, unit, quantity, price = self._item_amount(p)
        currency = str(
            (price or {}).get("currency")
            or (p.get("price_data") or {}).get("currency")
            or p.get("currency")
            or customer.get("currency")
            or ""
        ).lower()
        if not currency:
            raise ApiError(
                400, "Missing required param: currency.", code="parameter_missing", param="currency"
            )
        if customer.get("currency") and currency != customer["currency"]:
            raise ApiError(
                400,
                f"The currency of the invoice item ({currency}) must match the customer's "
                f"currency ({customer['currency']}).",
                param="currency",
            )
        now = self._now()
        period = p.get("period") or {"start": now, "end": now}
        if period["start"] > period["end"]:
            raise ApiError(
                400, "period[end] must be greater than or equal to period[start].", param="period"
            )
        parent = None
        if p.get("subscription"):
            sub = self._get("subscription", p["subscription"], param="subscription", status=400)
            if sub["customer"] != customer_id:
                raise ApiError(
                    400,
                    f"The subscription {sub['id']} does not belong to customer {customer_id}.",
                    param="subscription",
                )
            parent = {
                "type": "subscription_details",
                "subscription_details": {"subscription": sub["id"], "subscription_item": None},
            }
        draft = None
        if p.get("invoice"):
            draft = self._get("invoice", p["invoice"], param="invoice", status=400)
            if draft["status"] != "draft" or draft["customer"] != customer_id:
                raise ApiError(
                    400,
                    f"Invoice items can only be added to draft invoices of the customer; "
                    f"{draft['id']} is {draft['status']}.",
                    param="invoice",
                )
        item: Json = {
            "id": self._new_id("invoiceitem"),
            "object": "invoiceitem",
            "amount": amount,
            "currency": currency,
            "customer": customer_id,
            "customer_account": None,
            "date": now,
            "description": p.get("description") or None,
            "discountable": p.get("discountable", amount >= 0),
            "discounts": [],
            "invoice": draft["id"] if draft else None,
            "invoicing_rules": None,
            "livemode": ctx.livemode,
            "metadata": _merge_metadata({}, p.get("metadata") or {}),
            "net_amount": amount,
            "parent": parent,
            "period": {"end": period["end"], "start": period["start"]},
            "pricing": {
                "type": "price_details",
                "price_details": {"price": price["id"], "product": price["product"]}
                if price
                else None,
                "unit_amount_decimal": unit,
            },
            "proration": False,
            "proration_details": {"credited_items": None, "discount_amounts": []},
            "quantity": int(quantity.to_integral_value()),
            "quantity_decimal": plain(quantity),
            "tax_rates": [],
            "test_clock": None,
        }
        self._put("invoiceitem", item)
        if draft is not None:
            self._refresh(draft)
        self.emit_event("invoiceitem.created", item)
        return item

    @_route("GET", "/v1/invoiceitems/{invoiceitem}")
    def _invoiceitem_retrieve(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        return self._get("invoiceitem", ctx.path_params["invoiceitem"])

    # ------------------------------------------------------------------ credit notes

    def _credit_lines(self, inv: Json, p: Json) -> list[Json]:
        """The credit note's lines from ``lines`` or ``amount``; 400 for what cannot be
        credited."""
        by_id = {line["id"]: line for line in inv["lines"]["data"]}
        credited: dict[str, int] = {}
        for note in self.objects["credit_note"].values():
            for cl in note["lines"]["data"]:
                if note["invoice"] == inv["id"] and cl["invoice_line_item"]:
                    key = cl["invoice_line_item"]
                    credited[key] = credited.get(key, 0) + cl["amount"]
        lines = []
        specs = p.get("lines") or [{"type": "custom_line_item", "unit_amount": p.get("amount")}]
        for i, spec in enumerate(specs):
            param = f"lines[{i}]" if p.get("lines") else "amount"
            out: Json = {
                "id": "cnli_" + secrets.token_hex(12),
                "object": "credit_note_line_item",
                "description": spec.get("description") or p.get("memo"),
                "discount_amount": 0,
                "discount_amounts": [],
                "invoice_line_item": None,
                "livemode": inv["livemode"],
                "metadata": dict(spec.get("metadata") or {}),
                "pretax_credit_amounts": [],
                "quantity": spec.get("quantity", 1),
                "tax_rates": [],
                "taxes": [],
                "type": spec.get("type"),
                "unit_amount": None,
                "unit_amount_decimal": None,
            }
            if spec.get("type") == "invoice_line_item":
                line = by_id.get(spec.get("invoice_line_item") or "")
                if line is None:
                    raise ApiError(
                        400,
                        f"Invalid invoice line item for invoice {inv['id']}: "
                        f"'{spec.get('invoice_line_item')}'.",
                        param=f"{param}[invoice_line_item]",
                    )
                left = line["amount"] - credited.get(line["id"], 0)
                amount = spec.get("amount", left)
                unit = (line.get("pricing") or {}).get("unit_amount_decimal")
                if "quantity" in spec and "amount" not in spec and unit is not None:
                    amount = minor(Decimal(unit) * Decimal(spec["quantity"]))
                if amount > left:
                    raise ApiError(
                        400,
                        f"The credit for line {line['id']} ({amount}) exceeds what the line has "
                        f"left to credit ({left}).",
                        param=f"{param}[amount]",
                    )
                out.update(invoice_line_item=line["id"], description=line["description"])
            else:
                unit = spec.get("unit_amount_decimal", spec.get("unit_amount"))
                if unit is None:
                    raise ApiError(
                        400,
                        "One of amount, lines, or shipping_cost must be provided.",
                        param=param if p.get("lines") else "amount",
                    )
                amount = minor(Decimal(str(unit)) * Decimal(out["quantity"]))
                out.update(unit_amount=minor(Decimal(str(unit))), unit_amount_decimal=str(unit))
            if amount <= 0:
                raise ApiError(400, "A credit note amount must be positive.", param=param)
            out["amount"] = amount
            lines.append(out)
        return lines

    @_route("POST", "/v1/credit_notes")
    def _credit_note_create(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        inv = self._get("invoice", p.get("invoice") or "", param="invoice", status=400)
        if inv["status"] == "draft":
            raise ApiError(
                400,
                f"The invoice {inv['id']} is a draft: credit notes can only be issued for "
                "finalized invoices.",
                param="invoice",
            )
        note_id = self._new_id("credit_note")
        lines = self._credit_lines(inv, p)
        total = sum(line["amount"] for line in lines)
        if p.get("lines") and "amount" in p and p["amount"] != total:
            raise ApiError(
                400,
                f"The amount ({p['amount']}) must equal the sum of the lines ({total}).",
                param="amount",
            )
        left = inv["amount_remaining"] if inv["status"] == "open" else 0
        if total > left:
            raise ApiError(
                400,
                f"The credit note total ({total}) exceeds the amount remaining on invoice "
                f"{inv['id']} ({left}).",
                param="amount" if "amount" in p else "lines",
            )
        count = sum(1 for n in self.objects["credit_note"].values() if n["invoice"] == inv["id"])
        note: Json = {
            "id": note_id,
            "object": "credit_note",
            "amount": total,
            "amount_shipping": 0,
            "created": self._now(),
            "currency": inv["currency"],
            "customer": inv["customer"],
            "customer_account": None,
            "customer_balance_transaction": None,
            "discount_amount": 0,
            "discount_amounts": [],
            "effective_at": p.get("effective_at"),
            "invoice": inv["id"],
            "lines": {
                "object": "list",
                "data": lines,
                "has_more": False,
                "total_count": len(lines),
                "url": f"/v1/credit_notes/{note_id}/lines",
            },
            "livemode": inv["livemode"],
            "memo": p.get("memo") or None,
            "metadata": _merge_metadata({}, p.get("metadata") or {}),
            "number": f"{inv['number']}-CN-{count + 1:02d}",
            "out_of_band_amount": p.get("out_of_band_amount"),
            "pdf": f"{self.url}/_emulator/#{note_id}",
            "post_payment_amount": 0,
            "pre_payment_amount": total,
            "pretax_credit_amounts": [],
            "reason": p.get("reason"),
            "refunds": [],
            "shipping_cost": None,
            "status": "issued",
            "subtotal": total,
            "subtotal_excluding_tax": total,
            "total": total,
            "total_excluding_tax": total,
            "total_taxes": [],
            "type": "pre_payment",
            "voided_at": None,
        }
        self._put("credit_note", note)
        inv["pre_payment_credit_notes_amount"] += total
        inv["amount_due"] -= total
        inv["amount_remaining"] -= total
        self.emit_event("credit_note.created", note)
        self.emit_event("invoice.updated", inv)
        if inv["amount_remaining"] == 0:
            self._mark_paid(inv)
        return note

    @_route("GET", "/v1/credit_notes/{id}")
    def _credit_note_retrieve(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        return self._get("credit_note", ctx.path_params["id"])
