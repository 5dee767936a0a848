"""The report log as CSV, streamed: rows go from the database cursor to the client in chunks,
so exporting a million rows takes the memory of one chunk, not of a million model instances."""

import csv
import io
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import QuerySet
from django.http import StreamingHttpResponse

from billing import clock
from billing.formatting import plain_decimal, utc_iso, utc_stamp
from billing.models import ReportLog

CHUNK_ROWS = 2000

# (column heading, values_list path): joined columns come in the same query, not per row.
COLUMNS = [
    ("logged_at_utc", "created_at"),
    ("run", "run_id"),
    ("meter", "meter__openmeter_slug"),
    ("customer_subject", "customer__openmeter_subject"),
    ("customer_name", "customer__name"),
    ("stripe_customer_id", "customer__stripe_customer_id"),
    ("window_start_utc", "window_start"),
    ("window_end_utc", "window_end"),
    ("previous_value", "previous_quantity"),
    ("value", "quantity"),
    ("status", "status"),
    ("identifier", "identifier"),
    ("stripe_request_id", "stripe_request_id"),
    ("error", "error"),
]
# A spreadsheet runs a cell starting with one of these as a formula: CSV injection.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return utc_iso(value)
    if isinstance(value, Decimal):
        return plain_decimal(value)
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def report_log_download(queryset: "QuerySet[ReportLog]") -> StreamingHttpResponse:
    """The rows as a CSV file download, streamed, named for the moment it was made."""
    response = StreamingHttpResponse(
        report_log_csv(queryset), content_type="text/csv; charset=utf-8"
    )
    filename = f"report-log-{utc_stamp(clock.now())}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def report_log_csv(queryset: "QuerySet[ReportLog]") -> Iterator[str]:
    """The queryset's rows as CSV text, one chunk of CHUNK_ROWS rows per item, header first."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([heading for heading, _ in COLUMNS])
    rows = queryset.values_list(*(path for _, path in COLUMNS)).iterator(chunk_size=CHUNK_ROWS)
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
