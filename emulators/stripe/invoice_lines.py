"""Invoice building blocks: usage quantities, line items, totals and the invoice shell.

Rounding, as Stripe documents it for decimal prices: each line's amount is its quantity times the
price's ``unit_amount_decimal`` (minor units), rounded to a whole minor unit half away from zero
(0.05 x 30 = 1.5 -> 2), and the invoice's subtotal is the sum of the rounded lines. A price's
``transform_quantity`` divides the usage first (rounded up or down to a whole unit). Licensed
items add no line, and a metered price without a unit amount (tiered) bills 0: not emulated.
"""

from __future__ import annotations

import secrets
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Any

from .common import Json, _aggregate, _Event

MULTIPLY = "\N{MULTIPLICATION SIGN}"


def minor(value: Decimal) -> int:
    """A decimal amount in minor units rounded to a whole one, half away from zero."""
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def plain(value: Decimal) -> str:
    """A decimal in plain notation without trailing zeros (``2469``, ``0.5``)."""
    return format(value.normalize(), "f")


def usage_value(meter: Json, buckets: dict[int, list[_Event]], start: int, end: int) -> Decimal:
    """The meter's billed value over ``[start, end)``: a pre-aggregated meter (with an
    ``event_time_window``) adds the latest event of each window whose start lies in the range
    (``last``: the latest window's value); a raw meter applies its formula to the events whose
    timestamp lies in it. Cancelled events have left the buckets already."""
    formula = meter["default_aggregation"]["formula"]
    if meter.get("event_time_window"):
        kept = [
            events[-1] for window, events in buckets.items() if events and start <= window < end
        ]
        if formula == "last":
            return _aggregate("last", kept)
        return sum((ev.value for ev in kept), Decimal(0))
    inside = [ev for events in buckets.values() for ev in events if start <= ev.ts < end]
    return _aggregate(formula, inside)


def billed_units(price: Json, usage: Decimal) -> Decimal:
    """The quantity a price bills for ``usage`` (after ``transform_quantity``)."""
    transform = price.get("transform_quantity")
    if not transform:
        return usage
    rounding = ROUND_CEILING if transform.get("round") == "up" else ROUND_FLOOR
    return (usage / Decimal(transform["divide_by"])).quantize(Decimal(1), rounding=rounding)


def line_id(preview: bool) -> str:
    return ("il_tmp_" if preview else "il_") + secrets.token_hex(12)


def usage_line(
    *,
    line: str,
    invoice: str | None,
    sub_id: str,
    item_id: str,
    price: Json,
    product_name: str,
    usage: Decimal,
    start: int,
    end: int,
    livemode: bool,
) -> Json:
    """The line of a metered subscription item for the period ``[start, end)``."""
    quantity = billed_units(price, usage)
    unit = price.get("unit_amount_decimal")
    amount = minor(quantity * Decimal(unit)) if unit is not None else 0
    integral = quantity == quantity.to_integral_value()
    return {
        "id": line,
        "object": "line_item",
        "amount": amount,
        "currency": price["currency"],
        "description": f"{plain(quantity)} {MULTIPLY} {product_name}",
        "discount_amounts": [],
        "discountable": True,
        "discounts": [],
        "invoice": invoice,
        "livemode": livemode,
        "metadata": {},
        "parent": {
            "type": "subscription_item_details",
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": None,
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": sub_id,
                "subscription_item": item_id,
            },
        },
        "period": {"end": end, "start": start},
        "pretax_credit_amounts": [],
        "pricing": {
            "type": "price_details",
            "price_details": {"price": price["id"], "product": price["product"]},
            "unit_amount_decimal": unit,
        },
        "quantity": int(quantity) if integral else None,
        "quantity_decimal": plain(quantity),
        "subscription": sub_id,
        "subtotal": amount,
        "taxes": [],
    }


def item_line(*, line: str, invoice: str | None, item: Json) -> Json:
    """The line of a pending invoice item picked up by an invoice."""
    sub_id = ((item.get("parent") or {}).get("subscription_details") or {}).get("subscription")
    return {
        "id": line,
        "object": "line_item",
        "amount": item["amount"],
        "currency": item["currency"],
        "description": item["description"],
        "discount_amounts": [],
        "discountable": item["discountable"],
        "discounts": [],
        "invoice": invoice,
        "livemode": item["livemode"],
        "metadata": dict(item["metadata"]),
        "parent": {
            "type": "invoice_item_details",
            "invoice_item_details": {
                "invoice_item": item["id"],
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": sub_id,
            },
            "subscription_item_details": None,
        },
        "period": dict(item["period"]),
        "pretax_credit_amounts": [],
        "pricing": dict(item["pricing"]),
        "quantity": item["quantity"],
        "quantity_decimal": item["quantity_decimal"],
        "subscription": sub_id,
        "subtotal": item["amount"],
        "taxes": [],
    }


def line_key(line: Json) -> str:
    """What a line bills: its subscription item or its invoice item."""
    parent = line["parent"]
    if parent["type"] == "subscription_item_details":
        return str(parent["subscription_item_details"]["subscription_item"])
    return str(parent["invoice_item_details"]["invoice_item"])


def set_totals(inv: Json, balance: int) -> None:
    """Subtotal and total from the lines (no tax, no discount); amount due after the customer
    ``balance`` (negative = credit) and the pre-payment credit notes, never below 0."""
    subtotal = sum(line["amount"] for line in inv["lines"]["data"])
    inv["lines"]["total_count"] = len(inv["lines"]["data"])
    inv.update(
        subtotal=subtotal,
        subtotal_excluding_tax=subtotal,
        total=subtotal,
        total_excluding_tax=subtotal,
        starting_balance=balance,
    )
    due = max(0, subtotal + balance - inv["pre_payment_credit_notes_amount"])
    inv.update(amount_due=due, amount_remaining=due - inv["amount_paid"])


def shell(
    *,
    invoice_id: str,
    customer: Json | None,
    customer_id: str,
    sub: Json | None,
    reason: str,
    currency: str,
    start: int,
    end: int,
    now: int,
    livemode: bool,
) -> Json:
    """A draft invoice without lines (the 2026 shape: the subscription is in ``parent``)."""
    c: dict[str, Any] = customer or {}
    parent = None
    if sub is not None:
        parent = {
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {
                "metadata": dict(sub.get("metadata") or {}),
                "subscription": sub["id"],
                "subscription_proration_date": None,
            },
        }
    zero = dict.fromkeys(
        (
            "amount_due amount_overpaid amount_paid amount_remaining amount_shipping "
            "post_payment_credit_notes_amount pre_payment_credit_notes_amount starting_balance "
            "subtotal subtotal_excluding_tax total total_excluding_tax attempt_count"
        ).split(),
        0,
    )
    return {
        **zero,
        "id": invoice_id,
        "object": "invoice",
        "account_country": "US",
        "account_name": "Fake Stripe",
        "account_tax_ids": None,
        "amount_paid_off_stripe": 0,
        "application": None,
        "attempted": False,
        "auto_advance": True,
        "automatic_tax": {
            "disabled_reason": None,
            "enabled": False,
            "liability": None,
            "provider": None,
            "status": None,
        },
        "automatically_finalizes_at": None,
        "billing_reason": reason,
        "collection_method": (sub or {}).get("collection_method") or "charge_automatically",
        "confirmation_secret": None,
        "created": now,
        "currency": currency,
        "custom_fields": None,
        "customer": customer_id,
        "customer_account": None,
        "customer_address": c.get("address"),
        "customer_email": c.get("email"),
        "customer_name": c.get("name"),
        "customer_phone": c.get("phone"),
        "customer_shipping": c.get("shipping"),
        "customer_tax_exempt": c.get("tax_exempt") or "none",
        "customer_tax_ids": [],
        "default_payment_method": None,
        "default_source": None,
        "default_tax_rates": [],
        "description": None,
        "discounts": [],
        "due_date": None,
        "effective_at": None,
        "ending_balance": None,
        "footer": None,
        "from_invoice": None,
        "hosted_invoice_url": None,
        "invoice_pdf": None,
        "issuer": {"type": "self"},
        "last_finalization_error": None,
        "latest_revision": None,
        "lines": {
            "object": "list",
            "data": [],
            "has_more": False,
            "total_count": 0,
            "url": f"/v1/invoices/{invoice_id}/lines",
        },
        "livemode": livemode,
        "metadata": {},
        "next_payment_attempt": None,
        "number": None,
        "on_behalf_of": None,
        "parent": parent,
        "payment_settings": {
            "default_mandate": None,
            "payment_method_options": None,
            "payment_method_types": None,
        },
        "payments": {
            "object": "list",
            "data": [],
            "has_more": False,
            "total_count": 0,
            "url": "/v1/invoice_payments",
        },
        "period_end": end,
        "period_start": start,
        "receipt_number": None,
        "rendering": None,
        "shipping_cost": None,
        "shipping_details": None,
        "statement_descriptor": None,
        "status": "draft",
        "status_details": None,
        "status_transitions": {
            "finalized_at": None,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        },
        "test_clock": None,
        "threshold_reason": None,
        "total_discount_amounts": [],
        "total_pretax_credit_amounts": [],
        "total_taxes": [],
        "webhooks_delivered_at": None,
    }


def subscription_of(inv: Json) -> str | None:
    details = (inv.get("parent") or {}).get("subscription_details") or {}
    found = details.get("subscription")
    return str(found) if found else None
