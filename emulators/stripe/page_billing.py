"""The billing sections of the emulator's read-only page (``page.py``): upcoming invoices computed
now, the invoices Stripe created (draft, open, paid, with totals), invoice items, credit notes."""

from __future__ import annotations

from decimal import Decimal

from .page_html import Name, code, e, status, table, td
from .snapshot import Json, decimals, money, utc


def _unit_price(unit: str | None, currency: str) -> str:
    if unit is None:
        return "not per unit"
    places = decimals(currency)
    major = Decimal(unit).scaleb(-places).normalize()
    if int(major.as_tuple().exponent) > -places:  # at least the currency's decimals
        major = major.quantize(Decimal(1).scaleb(-places))
    return f"{format(major, 'f')} {currency.upper()}"


def _span(start: int, end: int) -> str:
    return f"{e(utc(start))} &ndash; {e(utc(end))}"


def upcoming_invoices(invoices: list[Json], who: Name, meter_name: Name) -> str:
    if not invoices:
        return '<p class="muted">No active subscriptions.</p>'
    out = []
    for inv in invoices:
        rows = [
            [
                td(meter_name(line["meter"]) if line["meter"] else e(line["description"])),
                td(_span(line["period_start"], line["period_end"]), "t"),
                td(e(line["quantity"]), "num"),
                td(e(_unit_price(line["unit_amount_decimal"], inv["currency"])), "num"),
                td(e(line["display"]), "num"),
            ]
            for line in inv["lines"]
        ]
        rows.append(
            [
                '<td colspan=4 class="total">Total now</td>',
                td(f'<span class="total">{e(inv["display"])}</span>', "num"),
            ]
        )
        out.append(f"<h3>{code(inv['subscription'])} · {who(inv['customer'])}</h3>")
        out.append(table(["Meter", "Period", "Quantity", "Unit price", "Amount"], rows, ""))
    return "\n".join(out)


def created_invoices(invoices: list[Json], who: Name) -> str:
    rows = []
    for inv in invoices:
        when = (
            f"finalizes {e(utc(inv['automatically_finalizes_at']))}"
            if inv["status"] == "draft"
            else f"finalized {e(utc(inv['finalized_at']))}"
        )
        lines = "<br>".join(
            f"{e(line['description'])}: {e(line['display'])}" for line in inv["lines"]
        )
        credit = money(inv["credited"], inv["currency"])
        credited = f"<br>credited {e(credit)}" if inv["credited"] else ""
        rows.append(
            [
                td(f'<span id="{e(inv["id"])}">{code(inv["id"])}</span> {e(inv["number"])}'),
                td(who(inv["customer"])),
                td(f"{status(inv['status'])}<br>{when}", "t"),
                td(f"{e(inv['billing_reason'])}<br>{code(inv['subscription'])}"),
                td(_span(inv["period_start"], inv["period_end"]), "t"),
                td(lines),
                td(f'<span class="total">{e(inv["display"])}</span>', "num"),
                td(f"{e(inv['display_due'])}{credited}", "num"),
            ]
        )
    headers = ["Invoice", "Customer", "Status", "Reason", "Period", "Lines", "Total", "Due"]
    return table(headers, rows, "No invoices.")


def invoice_items(items: list[Json], who: Name) -> str:
    rows = [
        [
            td(code(i["id"])),
            td(who(i["customer"])),
            td(e(i["description"])),
            td(_span(i["period_start"], i["period_end"]), "t"),
            td(e(i["display"]), "num"),
            td(code(i["invoice"]) if i["invoice"] else '<span class="muted">pending</span>'),
        ]
        for i in items
    ]
    headers = ["Invoice item", "Customer", "Description", "Period", "Amount", "Invoice"]
    return table(headers, rows, "No invoice items.")


def credit_notes(notes: list[Json], who: Name) -> str:
    rows = [
        [
            td(f'<span id="{e(n["id"])}">{code(n["id"])}</span> {e(n["number"])}'),
            td(who(n["customer"])),
            td(code(n["invoice"])),
            td(e(n["reason"] or "")),
            td(e(n["memo"] or "")),
            td(e(n["display"]), "num"),
            td(e(utc(n["created"])), "t"),
        ]
        for n in notes
    ]
    headers = ["Credit note", "Customer", "Invoice", "Reason", "Memo", "Amount", "Created (UTC)"]
    return table(headers, rows, "No credit notes.")
