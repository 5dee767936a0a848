"""The Stripe emulator's read-only page: what it holds, for a person watching a demo.

``GET /`` and ``GET /_emulator/`` answer HTML, ``GET /_emulator/state.json`` the same data as
JSON (see ``snapshot.py``). No authentication, no contract checks, not counted in
``FakeStripe.requests``, served even while the fake is ``down``. Times are UTC.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .page_billing import created_invoices, credit_notes, invoice_items, upcoming_invoices
from .page_html import Name as _Name
from .page_html import code as _code
from .page_html import e as _e
from .page_html import status as _status
from .page_html import table as _table
from .page_html import td as _td
from .snapshot import Json, snapshot, utc

if TYPE_CHECKING:
    from .fake import FakeStripe

PAGE_PATHS = frozenset({"/", "/_emulator", "/_emulator/"})
STATE_PATH = "/_emulator/state.json"
WINDOWS_SHOWN = 72  # per customer and meter, newest first


_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5rem auto;max-width:72rem;padding:0 1rem;
color:#1a1f36;background:#f6f8fa}
h1{font-size:1.4rem;margin:0 0 .2rem}h2{font-size:1.1rem;margin:1.8rem 0 .5rem}
h3{font-size:.95rem;margin:1.1rem 0 .3rem}
table{border-collapse:collapse;background:#fff;width:100%;margin-bottom:.4rem}
th,td{border:1px solid #e3e8ee;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f0f3f7;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.t{white-space:nowrap}td .name{display:block}table.narrow{width:auto;min-width:24rem}
code{font:12px ui-monospace,monospace;overflow-wrap:anywhere}
.muted{color:#697386}.total{font-weight:600}
.status-active,.status-paid{color:#0a7d32}.status-canceled,.status-inactive{color:#a2282c}
.status-draft{color:#8a5a00}.status-open{color:#1f5fbf}
"""


def respond(fake: FakeStripe, raw_path: str) -> tuple[str, bytes] | None:
    """(content type, body) for the page's paths; None for any other path."""
    path = raw_path.partition("?")[0]
    if path == STATE_PATH:
        return "application/json", json.dumps(snapshot(fake), indent=1).encode()
    if path in PAGE_PATHS:
        return "text/html; charset=utf-8", render(snapshot(fake), fake.url).encode()
    return None


def render(data: Json, url: str = "") -> str:
    """The page for a :func:`snapshot`."""
    names = {c["id"]: c["name"] for c in data["customers"]}
    meters = {m["id"]: m for m in data["meters"]}

    def who(customer_id: str) -> str:
        name = names.get(customer_id)
        return _code(customer_id) + (f' <span class="name">{_e(name)}</span>' if name else "")

    def meter_name(meter_id: str) -> str:
        m = meters.get(meter_id)
        return (f"{_e(m['display_name'])} " if m else "") + _code(meter_id)

    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<title>Fake Stripe</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Fake Stripe</h1>",
        f'<p class="muted">{_e(url)} · now {_e(utc(data["now"]))} UTC · read-only view · '
        f'<a href="{STATE_PATH}">state.json</a></p>',
        "<h2>Customers</h2>",
        _table(
            ["Customer", "Name", "Email", "Metadata", "Created"],
            [
                [
                    _td(_code(c["id"])),
                    _td(_e(c["name"])),
                    _td(_e(c["email"])),
                    _td("<br>".join(f"{_e(k)} = {_e(v)}" for k, v in c["metadata"].items())),
                    _td(_e(utc(c["created"])), "t"),
                ]
                for c in data["customers"]
            ],
            "No customers.",
        ),
        "<h2>Subscriptions</h2>",
        _subscriptions(data["subscriptions"], who, meter_name),
        "<h2>Upcoming invoices (current period, usage so far)</h2>",
        upcoming_invoices(data["invoices"], who, meter_name),
        "<h2>Invoices</h2>",
        created_invoices(data["invoices_created"], who),
        "<h2>Invoice items</h2>",
        invoice_items(data["invoice_items"], who),
        "<h2>Credit notes</h2>",
        credit_notes(data["credit_notes"], who),
        "<h2>Meters</h2>",
        _table(
            ["Meter", "Display name", "Event name", "Window", "Formula", "Status"],
            [
                [
                    _td(_code(m["id"])),
                    _td(_e(m["display_name"])),
                    _td(_code(m["event_name"])),
                    _td(_e(m["event_time_window"] or "none")),
                    _td(_e(m["formula"])),
                    _td(_status(m["status"])),
                ]
                for m in data["meters"]
            ],
            "No meters.",
        ),
        "<h2>Usage per window (billed value: the latest event per customer and window)</h2>",
        _usage(data["windows"], who, meter_name),
        "<h2>Recent events</h2>",
        _events(data),
        "<h2>Webhook deliveries</h2>",
        _table(
            ["Time (UTC)", "Destination", "Event", "Attempt", "Answer"],
            [
                [
                    _td(_e(utc(d["at"])), "t"),
                    _td(_code(d["url"])),
                    _td(f"{_e(d['type'])} {_code(d['event_id'])}"),
                    _td(_e(d["attempt"]), "num"),
                    _td(_e(d["status"] if d["status"] is not None else d["error"])),
                ]
                for d in data["deliveries"]
            ],
            "No webhook deliveries.",
        ),
        "</body></html>",
    ]
    return "\n".join(parts)


def _subscriptions(subs: list[Json], who: _Name, meter_name: _Name) -> str:
    rows: list[list[str]] = []
    for s in subs:
        for i, item in enumerate(s["items"]):
            first = i == 0
            usage = (
                f"metered: {meter_name(item['meter'])}"
                if item["meter"]
                else f"{_e(item['usage_type'] or 'one-off')} &times; {_e(item['quantity'])}"
            )
            rows.append(
                [
                    _td(_code(s["id"]) if first else ""),
                    _td(who(s["customer"]) if first else ""),
                    _td(_status(s["status"]) if first else ""),
                    _td(_code(item["price"])),
                    _td(usage),
                    _td(_e(utc(item["current_period_start"])), "t"),
                    _td(_e(utc(item["current_period_end"])), "t"),
                ]
            )
    headers = ["Subscription", "Customer", "Status", "Price", "Usage", "Period start", "Period end"]
    return _table(headers, rows, "No subscriptions.")


def _usage(windows: list[Json], who: _Name, meter_name: _Name) -> str:
    groups: dict[tuple[str, str], list[Json]] = {}
    for w in windows:  # already newest first
        groups.setdefault((w["customer"], w["meter"]), []).append(w)
    if not groups:
        return '<p class="muted">No usage.</p>'
    out = []
    for (customer, meter_id), rows in sorted(groups.items()):
        out.append(f"<h3>{who(customer)} · {meter_name(meter_id)}</h3>")
        shown = rows[:WINDOWS_SHOWN]
        out.append(
            _table(
                ["Window start (UTC)", "Value"],
                [[_td(_e(utc(w["window_start"])), "t"), _td(_e(w["value"]), "num")] for w in shown],
                "",
                "narrow",
            )
        )
        hidden = len(rows) - len(shown)
        if hidden:
            out.append(f'<p class="muted">{hidden} older windows not shown.</p>')
    return "\n".join(out)


def _events(data: Json) -> str:
    pending = data["pending_error_reports"]
    note = (
        f'<p class="muted">{pending} asynchronous meter event errors not reported yet.</p>'
        if pending
        else ""
    )
    rows = [
        [
            _td(_e(utc(ev["created"])), "t"),
            _td(_e(ev["type"])),
            _td("thin" if ev["thin"] else "snapshot"),
            _td(_code(ev["id"])),
            _td(_code(ev["related"])),
        ]
        for ev in data["events"]
    ]
    return note + _table(["Created (UTC)", "Type", "Kind", "Event", "About"], rows, "No events.")
