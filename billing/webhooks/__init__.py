"""Stripe webhooks. `endpoint`: POST /stripe/webhook/ checks the signature, stores each event once
(WebhookEvent) and answers at once; `process`: a django-q2 task fetches a thin event's full data
and hands it to its handler (`meter_errors` for Stripe's asynchronous meter event rejections).
Event types without a handler are stored and left alone."""

from billing.webhooks.endpoint import stripe_webhook
from billing.webhooks.process import process

__all__ = ["process", "stripe_webhook"]
