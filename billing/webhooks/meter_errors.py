"""Stripe's asynchronous meter event rejections (`v1.billing.meter.error_report_triggered`,
`v1.billing.meter.no_meter_found`): each error type is kept with its count and Stripe's message,
each sample matched by its identifier to the ReportLog row that sent it (the log itself is never
changed), and, because Stripe only sends samples, the meter is reconciled over the windows sent
while Stripe was validating, so that every rejected window is found and healed."""

import logging
from datetime import datetime
from typing import Any

from django.db.models import Max, Min

from billing import clock, windows
from billing.models import LogStatus, Meter, MeterEventError, ReportLog, Trigger, WebhookEvent
from billing.reconcile.queue import queue_reconciliation
from billing.reporting.periods import ReportInputError

logger = logging.getLogger(__name__)


def _moment(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=clock.now().tzinfo)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def handle(stored: WebhookEvent, event: dict[str, Any]) -> None:
    data = event.get("data") or {}
    related = event.get("related_object") or {}
    meter = None
    if related.get("id"):
        meter = Meter.objects.filter(stripe_meter_id=related["id"]).first()
    start, end = _moment(data.get("validation_start")), _moment(data.get("validation_end"))
    rows = []
    for error_type in (data.get("reason") or {}).get("error_types") or []:
        fields = {
            "webhook_event": stored,
            "code": str(error_type.get("code") or "unknown"),
            "count": int(error_type.get("error_count") or 0),
            "validation_start": start,
            "validation_end": end,
        }
        samples = error_type.get("sample_errors") or [{}]
        for sample in samples:
            identifier = str((sample.get("request") or {}).get("identifier") or "")
            log = None
            if identifier:
                log = ReportLog.objects.filter(identifier=identifier).order_by("-pk").first()
            rows.append(
                MeterEventError(
                    **fields,
                    meter=meter or (log.meter if log else None),
                    event_name=log.event_name if log else "",
                    message=str(sample.get("error_message") or ""),
                    identifier=identifier[:100],
                    report_log=log,
                )
            )
    MeterEventError.objects.bulk_create(rows)
    for found in {row.meter for row in rows if row.meter is not None} | ({meter} - {None}):
        assert found is not None
        _reconcile_later(meter=found, validation_start=start, validation_end=end)


def _reconcile_later(
    *, meter: Meter, validation_start: datetime | None, validation_end: datetime | None
) -> None:
    """Queue a reconciliation of `meter` over the windows sent while Stripe validated (the
    default lookback when those cannot be told)."""
    sent = ReportLog.objects.filter(meter=meter, status=LogStatus.SENT)
    if validation_start is not None and validation_end is not None:
        sent = sent.filter(created_at__gte=validation_start, created_at__lte=validation_end)
    bounds = sent.aggregate(low=Min("window_start"), high=Max("window_end"))
    period = None
    if bounds["low"] is not None and bounds["high"] is not None:
        now = clock.now()
        oldest = windows.oldest_reportable(meter.window, now=now)
        period = (
            max(windows.floor(bounds["low"], meter.window), oldest),
            min(bounds["high"], windows.floor(now, meter.window)),
        )
    try:
        queue_reconciliation(meters=[meter], trigger=Trigger.WEBHOOK, period=period)
    except ReportInputError:  # those windows cannot be read as a period
        queue_reconciliation(meters=[meter], trigger=Trigger.WEBHOOK)
