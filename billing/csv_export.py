"""History as CSV (the report log, a reconciliation's windows), streamed: rows go from the
database cursor to the client in chunks, so exporting a million rows takes the memory of one
chunk, not of a million model instances."""

import csv
import io
import re
import unicodedata
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import QuerySet
from django.http import StreamingHttpResponse

from billing import clock
from billing.formatting import plain_decimal, utc_iso, utc_stamp
from billing.models import ReconciliationItem, ReportLog

CHUNK_ROWS = 2000

# (column heading, values_list path): joined columns come in the same query, not per row.
COLUMNS = [
    ("logged_at_utc", "created_at"),
    ("run", "run_id"),
    ("requested_by", "run__requested_by__username"),
    ("run_reason", "run__reason"),
    ("meter", "meter__openmeter_slug"),
    ("customer_subject", "customer__openmeter_subject"),
    ("customer_name", "customer__name"),
    ("stripe_customer_id", "customer__stripe_customer_id"),
    ("window_start_utc", "window_start"),
    ("window_end_utc", "window_end"),
    ("billing_period_from_utc", "period_start"),
    ("previous_value", "previous_quantity"),
    ("value", "quantity"),
    ("status", "status"),
    ("identifier", "identifier"),
    ("stripe_request_id", "stripe_request_id"),
    ("error", "error"),
]
RECONCILIATION_COLUMNS = [
    ("reconciliation", "reconciliation_id"),
    ("meter", "meter__openmeter_slug"),
    ("customer_subject", "customer__openmeter_subject"),
    ("customer_name", "customer__name"),
    ("stripe_customer_id", "customer__stripe_customer_id"),
    ("window_start_utc", "window_start"),
    ("kind", "kind"),
    ("openmeter_value", "openmeter_value"),
    ("sent_value", "sent_value"),
    ("stripe_value", "stripe_value"),
]
Columns = list[tuple[str, str]]
# CSV injection: a spreadsheet runs a cell as a formula when, once it has dropped what it does
# not show (spaces, zero-width and other format characters) and folded full-width and small
# forms (U+FF1D FULLWIDTH EQUALS SIGN, U+FE66 SMALL EQUALS SIGN...) to ASCII, the cell starts
# with one of these...
_FORMULA_START = ("=", "+", "-", "@")
# ...or when a field separator a spreadsheet may split on is followed by one (`x;=1+1`)...
_FORMULA_AFTER_SEPARATOR = re.compile(r"[;,|\t\r\n]\s*[=+\-@]")
# ...or when it holds a dynamic data exchange call (`cmd|' /C calc'!A0`, `DDE(...)`).
_DDE = re.compile(r"\|\s*'[^']*'\s*!|\bdde(?:auto)?\b", re.IGNORECASE)


def _as_shown(text: str) -> str:
    """The text as a spreadsheet reads it: compatibility forms folded, format characters
    (zero-width spaces and joiners, direction marks, word joiner, byte order mark) dropped."""
    folded = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in folded if unicodedata.category(ch) != "Cf")


def is_formula(text: str) -> bool:
    """Whether a spreadsheet could evaluate this cell (see _FORMULA_START)."""
    if text.startswith(("\t", "\r")):
        return True
    shown = _as_shown(text)
    return (
        shown.lstrip().startswith(_FORMULA_START)
        or _FORMULA_AFTER_SEPARATOR.search(shown) is not None
        or _DDE.search(shown) is not None
    )


def cell(value: Any) -> Any:
    """A value as the CSV writes it. Only text is guarded: numbers (Decimal quantities, ids)
    are written as numbers, so a negative value stays a number."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return utc_iso(value)
    if isinstance(value, Decimal):
        return plain_decimal(value)
    if isinstance(value, str) and is_formula(value):
        return "'" + value  # shown as text, never evaluated
    return value


def report_log_download(queryset: "QuerySet[ReportLog]") -> StreamingHttpResponse:
    return download(queryset, columns=COLUMNS, name="report-log")


def reconciliation_download(queryset: "QuerySet[ReconciliationItem]") -> StreamingHttpResponse:
    return download(queryset, columns=RECONCILIATION_COLUMNS, name="reconciliation")


def download(queryset: "QuerySet[Any]", *, columns: Columns, name: str) -> StreamingHttpResponse:
    """The rows as a CSV file download, streamed, named for the moment it was made."""
    response = StreamingHttpResponse(
        rows_csv(queryset, columns=columns), content_type="text/csv; charset=utf-8"
    )
    filename = f"{name}-{utc_stamp(clock.now())}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def rows_csv(queryset: "QuerySet[Any]", *, columns: Columns = COLUMNS) -> Iterator[str]:
    """The queryset's rows as CSV text, one chunk of CHUNK_ROWS rows per item, header first."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([heading for heading, _ in columns])
    rows = queryset.values_list(*(path for _, path in columns)).iterator(chunk_size=CHUNK_ROWS)
    count = 0
    for row in rows:
        writer.writerow([cell(v) for v in row])
        count += 1
        if count % CHUNK_ROWS == 0:
            yield _take(buffer)
    yield _take(buffer)


def _take(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text
