"""The billing part of the emulator's snapshot (``snapshot.py``): upcoming invoices computed now,
the invoices Stripe created, invoice items and credit notes, as plain JSON data.

An upcoming invoice is what ``POST /v1/invoices/create_preview`` answers for an active
subscription: per metered item the billed value of its meter over the item's current period,
times the price's ``unit_amount_decimal``, rounded half up to a minor unit per line
(``invoice_lines.py``), plus the customer's pending invoice items.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .invoice_lines import subscription_of

if TYPE_CHECKING:
    from .fake import FakeStripe

Json = dict[str, Any]


# Stripe's zero-decimal and three-decimal currencies; all others have two decimals.
ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())
THREE_DECIMAL = frozenset("bhd jod kwd omr tnd".split())


def decimals(currency: str) -> int:
    code = currency.lower()
    return 0 if code in ZERO_DECIMAL else 3 if code in THREE_DECIMAL else 2


def money(minor: int, currency: str) -> str:
    """Minor units as money: ``money(1234, "usd") == "12.34 USD"``, ``money(500, "jpy") ==
    "500 JPY"``."""
    places = decimals(currency)
    major = Decimal(minor).scaleb(-places)
    return f"{major:.{places}f} {currency.upper()}"


def billing(fake: FakeStripe, subs: list[Json]) -> Json:
    """Upcoming invoices (active subscriptions, newest first), created invoices, invoice items
    and credit notes (newest first). Call with ``fake._lock`` held."""
    upcoming = [
        _upcoming(fake, fake._preview(s["customer"], s)) for s in subs if s["status"] == "active"
    ]
    return {
        "invoices": upcoming,
        "invoices_created": [_created(fake._refresh(i)) for i in fake._newest_first("invoice")],
        "invoice_items": [_item(i) for i in fake._newest_first("invoiceitem")],
        "credit_notes": [_note(n) for n in fake._newest_first("credit_note")],
    }


def _meter_of(fake: FakeStripe, line: Json) -> str | None:
    details = (line.get("pricing") or {}).get("price_details") or {}
    price = fake.objects["price"].get(details.get("price") or "")
    return ((price or {}).get("recurring") or {}).get("meter")


def _line(fake: FakeStripe, line: Json, currency: str) -> Json:
    parent = line["parent"]
    usage = parent["type"] == "subscription_item_details"
    details = (line.get("pricing") or {}).get("price_details") or {}
    return {
        "id": line["id"],
        "item": parent["subscription_item_details"]["subscription_item"]
        if usage
        else parent["invoice_item_details"]["invoice_item"],
        "price": details.get("price"),
        "meter": _meter_of(fake, line) if usage else None,
        "description": line.get("description"),
        "period_start": line["period"]["start"],
        "period_end": line["period"]["end"],
        "quantity": line["quantity_decimal"],
        "unit_amount_decimal": (line.get("pricing") or {}).get("unit_amount_decimal"),
        "amount": line["amount"],
        "display": money(line["amount"], currency),
    }


def _upcoming(fake: FakeStripe, inv: Json) -> Json:
    currency = inv["currency"]
    return {
        "subscription": subscription_of(inv),
        "customer": inv["customer"],
        "currency": currency,
        "period_start": inv["period_start"],
        "period_end": inv["period_end"],
        "amount": inv["total"],
        "display": money(inv["total"], currency),
        "amount_due": inv["amount_due"],
        "lines": [_line(fake, line, currency) for line in inv["lines"]["data"]],
    }


def _created(inv: Json) -> Json:
    currency = inv["currency"]
    return {
        "id": inv["id"],
        "number": inv["number"],
        "customer": inv["customer"],
        "subscription": subscription_of(inv),
        "status": inv["status"],
        "billing_reason": inv["billing_reason"],
        "currency": currency,
        "period_start": inv["period_start"],
        "period_end": inv["period_end"],
        "created": inv["created"],
        "automatically_finalizes_at": inv["automatically_finalizes_at"],
        "finalized_at": inv["status_transitions"]["finalized_at"],
        "total": inv["total"],
        "amount_due": inv["amount_due"],
        "amount_remaining": inv["amount_remaining"],
        "credited": inv["pre_payment_credit_notes_amount"],
        "display": money(inv["total"], currency),
        "display_due": money(inv["amount_due"], currency),
        "lines": [
            {
                "id": line["id"],
                "description": line.get("description"),
                "period_start": line["period"]["start"],
                "period_end": line["period"]["end"],
                "quantity": line["quantity_decimal"],
                "amount": line["amount"],
                "display": money(line["amount"], currency),
            }
            for line in inv["lines"]["data"]
        ],
    }


def _item(item: Json) -> Json:
    parent = (item.get("parent") or {}).get("subscription_details") or {}
    return {
        "id": item["id"],
        "customer": item["customer"],
        "invoice": item["invoice"],
        "subscription": parent.get("subscription"),
        "description": item["description"],
        "period_start": item["period"]["start"],
        "period_end": item["period"]["end"],
        "created": item["date"],
        "amount": item["amount"],
        "currency": item["currency"],
        "display": money(item["amount"], item["currency"]),
        "metadata": dict(item["metadata"]),
    }


def _note(note: Json) -> Json:
    return {
        "id": note["id"],
        "number": note["number"],
        "invoice": note["invoice"],
        "customer": note["customer"],
        "reason": note["reason"],
        "memo": note["memo"],
        "created": note["created"],
        "total": note["total"],
        "currency": note["currency"],
        "display": money(note["total"], note["currency"]),
        "lines": [
            {"description": line["description"], "amount": line["amount"]}
            for line in note["lines"]["data"]
        ],
    }
