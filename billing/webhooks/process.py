"""Processing a stored event, once: a thin event's full data is fetched from Stripe
(GET /v2/core/events/{id}) and kept beside the notification; then its handler runs."""

import logging
from collections.abc import Callable
from typing import Any

from django.db import transaction

from billing import clock
from billing.closing import invoices
from billing.integrations.stripe_client import get_client
from billing.integrations.stripe_errors import describe
from billing.models import WebhookEvent
from billing.webhooks import meter_errors

logger = logging.getLogger(__name__)

HANDLERS: dict[str, Callable[[WebhookEvent, dict[str, Any]], None]] = {
    "v1.billing.meter.error_report_triggered": meter_errors.handle,
    "v1.billing.meter.no_meter_found": meter_errors.handle,
    "customer.subscription.updated": invoices.subscription_changed,
    "customer.subscription.deleted": invoices.subscription_changed,
    "invoice.created": invoices.invoice_created,
    "invoice.finalized": invoices.invoice_finalized,
}


def full_event(stored: WebhookEvent) -> dict[str, Any]:
    """The event with its data: as received (snapshot), or fetched once from Stripe (thin)."""
    payload: dict[str, Any] = stored.payload
    if stored.api_mode == WebhookEvent.ApiMode.SNAPSHOT:
        return payload
    if "event" not in payload:
        fetched = get_client().v2.core.events.retrieve(stored.stripe_event_id)
        payload = stored.payload = {**payload, "event": fetched.to_dict()}
        WebhookEvent.objects.filter(pk=stored.pk).update(payload=payload)
    full: dict[str, Any] = payload["event"]
    return full


def process(*, webhook_event_id: int) -> None:
    """Handle one stored event. A replay (already processed) changes nothing; a failure is kept
    on the row with its reason and can be retried."""
    stored = WebhookEvent.objects.get(pk=webhook_event_id)
    if stored.processed_at is not None:
        return
    handler = HANDLERS.get(stored.type)
    try:
        if handler is not None:
            event = full_event(stored)
            with transaction.atomic():
                handler(stored, event)
        error = ""
    except Exception as exc:
        logger.exception("Stripe event %s could not be processed", stored.stripe_event_id)
        error = describe(exc)
    WebhookEvent.objects.filter(pk=stored.pk).update(
        processed_at=None if error else clock.now(), error=error
    )
