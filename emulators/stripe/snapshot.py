"""What FakeStripe holds, as plain JSON data: the content of ``/_emulator/state.json`` and of the
read-only page at ``/`` (``page.py``).

Window values come from :meth:`FakeStripe.billed_windows` (the value Stripe keeps per customer and
window). The invoices, invoice items and credit notes come from ``snapshot_billing.py``: each
active subscription's upcoming invoice computed now (what ``create_preview`` answers), and the
invoices Stripe created.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .snapshot_billing import billing, decimals, money

if TYPE_CHECKING:
    from .fake import FakeStripe

Json = dict[str, Any]
__all__ = ["decimals", "money", "number", "snapshot", "utc"]


def number(value: Decimal) -> str:
    """A decimal in plain notation (``1E+3`` reads ``1000``)."""
    return format(value, "f")


def utc(ts: float | None) -> str:
    """Epoch seconds as ``2026-11-20 13:00`` (UTC); empty for None."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


EVENTS_SHOWN = 20  # recent emitted events and webhook delivery attempts


def snapshot(fake: FakeStripe) -> Json:
    """Customers, subscriptions, meters, billed windows (newest first), upcoming and created
    invoices, invoice items, credit notes, and the latest emitted events and webhook delivery
    attempts (newest first)."""
    deliveries = fake._deliverer.recorded()[-EVENTS_SHOWN:]
    with fake._lock:
        events = [_event(e) for e in fake.events[-EVENTS_SHOWN:]]
        pending_reports = len(fake._error_reports)
        now = int(fake.clock())
        meters = list(fake.objects["billing.meter"].values())
        billed = {m["id"]: fake.billed_windows(m["id"]) for m in meters}
        customers = [_customer(c) for c in fake._newest_first("customer")]
        subs = fake._newest_first("subscription")
        subscriptions = [_subscription(s) for s in subs]
        invoicing = billing(fake, subs)
        meter_rows = [_meter(m) for m in reversed(meters)]
    windows = [
        {"customer": customer, "meter": meter_id, "window_start": start, "value": number(value)}
        for meter_id, values in billed.items()
        for (customer, start), value in values.items()
    ]
    windows.sort(key=lambda w: (-w["window_start"], w["customer"], w["meter"]))
    return {
        "now": now,
        "customers": customers,
        "subscriptions": subscriptions,
        "meters": meter_rows,
        "windows": windows,
        **invoicing,
        "events": events[::-1],
        "pending_error_reports": pending_reports,
        "deliveries": [
            {k: d[k] for k in ("at", "url", "event_id", "type", "attempt", "status", "error")}
            for d in reversed(deliveries)
        ],
    }


def _event(e: Json) -> Json:
    """An emitted event in a line: thin ones carry an RFC 3339 ``created``."""
    created = e["created"]
    if isinstance(created, str):
        created = datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    related = e.get("related_object") or {}
    return {
        "id": e["id"],
        "type": e["type"],
        "thin": e["object"] == "v2.core.event",
        "created": created,
        "related": related.get("id"),
    }


def _customer(c: Json) -> Json:
    return {
        "id": c["id"],
        "name": c.get("name"),
        "email": c.get("email"),
        "metadata": dict(c.get("metadata") or {}),
        "created": c.get("created"),
    }


def _meter(m: Json) -> Json:
    return {
        "id": m["id"],
        "display_name": m.get("display_name"),
        "event_name": m.get("event_name"),
        "event_time_window": m.get("event_time_window"),
        "formula": (m.get("default_aggregation") or {}).get("formula"),
        "status": m.get("status"),
    }


def _subscription(s: Json) -> Json:
    items = []
    for si in s["items"]["data"]:
        price = si["price"]
        recurring = price.get("recurring") or {}
        items.append(
            {
                "id": si["id"],
                "price": price["id"],
                "product": price.get("product"),
                "usage_type": recurring.get("usage_type"),
                "meter": recurring.get("meter"),
                "unit_amount_decimal": price.get("unit_amount_decimal"),
                "quantity": si.get("quantity"),
                "current_period_start": si.get("current_period_start"),
                "current_period_end": si.get("current_period_end"),
            }
        )
    return {
        "id": s["id"],
        "customer": s["customer"],
        "status": s["status"],
        "currency": s.get("currency"),
        "created": s.get("created"),
        "items": items,
    }
