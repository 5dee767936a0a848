"""Stripe's billing cycle, as its webhooks tell it: a subscription's period moves on
(`customer.subscription.updated` / `.deleted`); a period ends and Stripe drafts its invoice
(`invoice.created`): Meterbridge at once reports that customer's usage of the whole period, so the
draft holds every window before Stripe finalizes it; the invoice is final (`invoice.finalized`):
the period is closed, and later usage for it becomes a correction."""

import logging
from datetime import UTC, datetime
from typing import Any

from django.db import transaction

from billing import clock, windows
from billing.closing.periods import record_periods
from billing.models import (
    BillingPeriod,
    Meter,
    PeriodStatus,
    Subscription,
    Trigger,
    WebhookEvent,
)
from billing.reporting.periods import ReportInputError
from billing.reporting.preview import enqueue
from billing.reporting.runs import RunRequest, start_run

logger = logging.getLogger(__name__)
# Invoices that bill a usage period: the end of a cycle, and an update that ends the period early
# (billing_cycle_anchor=now: an upgrade, a new anchor).
CLOSING = frozenset({"subscription_cycle", "subscription_update"})


def _moment(value: Any) -> datetime:
    return datetime.fromtimestamp(int(value), UTC)


def _object(event: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = (event.get("data") or {}).get("object") or {}
    return found


def subscription_changed(stored: WebhookEvent, event: dict[str, Any]) -> None:
    remote = _object(event)
    subscription = Subscription.objects.filter(stripe_subscription_id=remote.get("id")).first()
    if subscription is None:
        return  # not one of Meterbridge's
    record_periods(subscription=subscription, stripe_subscription=remote)
    if remote.get("status") and remote["status"] != subscription.status:
        Subscription.objects.filter(pk=subscription.pk).update(status=remote["status"])


def invoice_created(stored: WebhookEvent, event: dict[str, Any]) -> None:
    invoice = _object(event)
    if invoice.get("billing_reason") not in CLOSING or invoice.get("status") != "draft":
        return
    period = _period_of(invoice)
    if period is None:
        return
    BillingPeriod.objects.filter(pk=period.pk).update(
        status=PeriodStatus.INVOICING,
        stripe_invoice_id=invoice.get("id", ""),
        invoice_status="draft",
        invoicing_at=clock.now(),
    )
    close_period(period=period, invoice_id=str(invoice.get("id", "")))


def invoice_finalized(stored: WebhookEvent, event: dict[str, Any]) -> None:
    invoice = _object(event)
    if invoice.get("billing_reason") not in CLOSING:
        return  # the first invoice of a subscription bills no usage period
    period = BillingPeriod.objects.filter(stripe_invoice_id=invoice.get("id")).first()
    if period is None:
        period = _period_of(invoice)
    if period is None:
        return
    BillingPeriod.objects.filter(pk=period.pk).update(
        status=PeriodStatus.CLOSED,
        stripe_invoice_id=invoice.get("id", ""),
        invoice_status=invoice.get("status") or "open",
        invoice_total=invoice.get("total"),
        invoice_currency=invoice.get("currency") or "",
        closed_at=clock.now(),
    )


def _period_of(invoice: dict[str, Any]) -> BillingPeriod | None:
    """The period a subscription invoice bills: its metered lines' period (the invoice's own
    period_start/end otherwise)."""
    # API 2026: the subscription is under parent.subscription_details (top level before).
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    stripe_id = details.get("subscription") or invoice.get("subscription") or ""
    subscription = Subscription.objects.filter(stripe_subscription_id=stripe_id).first()
    if subscription is None:
        return None
    start, end = invoice.get("period_start"), invoice.get("period_end")
    for line in (invoice.get("lines") or {}).get("data") or []:
        span = line.get("period") or {}
        if span.get("start") is not None and span.get("end") is not None:
            start, end = span["start"], span["end"]
            break
    if start is None or end is None:
        return None
    if invoice.get("billing_reason") == "subscription_cycle":
        cycle, _ = BillingPeriod.objects.get_or_create(
            subscription=subscription,
            period_start=_moment(start),
            defaults={"period_end": _moment(end)},
        )
        return cycle
    # An update invoices a period only when it ends one early (a new billing cycle anchor):
    # a known period then ends at the change. Other update invoices (prorations) bill no usage.
    ended = BillingPeriod.objects.filter(
        subscription=subscription, period_start=_moment(start)
    ).first()
    if ended is not None and ended.period_end != _moment(end):
        ended.period_end = _moment(end)
        BillingPeriod.objects.filter(pk=ended.pk).update(period_end=ended.period_end)
    return ended


def close_period(*, period: BillingPeriod, invoice_id: str) -> None:
    """Report the customer's usage of every window of the period, in the background, now."""
    subscription = period.subscription
    meters = list(Meter.objects.filter(prices__subscriptions=subscription).distinct())
    if not meters:
        return
    now = clock.now()
    window = max((m.window for m in meters), key=windows.length)
    # The windows whose start (their events' timestamp) lies in the period, closed ones only.
    start = max(
        windows.ceil(period.period_start, window),
        max(windows.oldest_reportable(m.window, now=now) for m in meters),
    )
    end = min(windows.ceil(period.period_end, window), windows.floor(now, window))
    if start >= end:
        return
    request = RunRequest(
        trigger=Trigger.WEBHOOK,
        start=start,
        end=end,
        meters=meters,
        customers=[subscription.customer],
        reason=f"Closing the billing period before Stripe finalizes invoice {invoice_id}.",
    )
    try:
        run = start_run(request, now=now)
    except ReportInputError as exc:
        logger.warning("The period %s could not be closed: %s", period, exc)
        return
    BillingPeriod.objects.filter(pk=period.pk).update(close_run=run)
    transaction.on_commit(lambda: enqueue(run))
