"""POST /stripe/webhook/: outside the admin, no session, CSRF-exempt; Stripe's signature is the
authentication. A bad or missing signature is a bare 400 and changes nothing."""

import json
import logging
from dataclasses import dataclass
from typing import Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing.integrations.stripe_client import StripeNotConfigured, get_client
from billing.models import WebhookEvent
from billing.queue import enqueue

logger = logging.getLogger(__name__)

TOLERANCE_SECONDS = 300  # Stripe's default: a signature older than five minutes is refused


@dataclass(frozen=True)
class Verified:
    event_id: str
    type: str
    api_mode: str
    payload: dict[str, Any]


def signing_secrets() -> list[str]:
    """STRIPE_WEBHOOK_SECRET: one secret per webhook endpoint or event destination."""
    return [s.strip() for s in (settings.STRIPE_WEBHOOK_SECRET or "").split(",") if s.strip()]


def verify(*, payload: bytes, header: str) -> Verified | None:
    """The event, if one of the secrets signed it (stripe-python checks); None otherwise."""
    secrets = signing_secrets()
    if not header or not secrets:
        if not secrets:
            logger.warning("A Stripe webhook arrived but STRIPE_WEBHOOK_SECRET is not set.")
        return None
    try:
        body = json.loads(payload)
        client = get_client()
    except (ValueError, StripeNotConfigured) as exc:
        logger.warning("Stripe webhook refused: %s", exc)
        return None
    thin = isinstance(body, dict) and body.get("object") == "v2.core.event"
    for secret in secrets:
        try:
            if thin:
                note = client.parse_event_notification(payload, header, secret, TOLERANCE_SECONDS)
                return Verified(note.id, note.type, WebhookEvent.ApiMode.THIN, body)
            event = client.construct_event(payload, header, secret, TOLERANCE_SECONDS)
            return Verified(event.id, event.type, WebhookEvent.ApiMode.SNAPSHOT, body)
        except stripe.SignatureVerificationError:
            continue
        except (ValueError, KeyError, AttributeError) as exc:  # signed, but not an event
            logger.warning("Stripe webhook refused: %s", exc)
            return None
    return None


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    verified = verify(payload=request.body, header=request.headers.get("Stripe-Signature", ""))
    if verified is None:
        return HttpResponse(status=400)
    try:
        with transaction.atomic():
            stored, created = WebhookEvent.objects.get_or_create(
                stripe_event_id=verified.event_id,
                defaults={
                    "type": verified.type,
                    "api_mode": verified.api_mode,
                    "payload": verified.payload,
                },
            )
    except IntegrityError:  # the same event arriving twice at once: the other one stored it
        return JsonResponse({"received": True, "duplicate": True})
    if created:
        pk = stored.pk
        transaction.on_commit(
            lambda: enqueue(
                "billing.tasks.process_webhook_event",
                pk,
                task_name=f"Stripe event {verified.event_id}",
                group="webhooks",
            )
        )
    return JsonResponse({"received": True, "duplicate": not created})
