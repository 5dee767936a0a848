"""Push Meter, Customer, PriceMapping and Subscription rows to Stripe.

Each `sync_*` function makes Stripe match the row and records the outcome on the row. A failure
never loses the row: it is kept with `sync_status=failed` and the reason, and `sync_stripe` (or the
admin action) retries it later. Creates carry an idempotency key derived from the row and what is
being created, so a retried create returns the first object instead of making a second one.
"""

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import stripe
from django.db import models, transaction

from billing import aggregations, clock, windows
from billing.closing.periods import record_periods
from billing.formatting import plain_decimal
from billing.integrations.openmeter import OpenMeterClient, OpenMeterError
from billing.integrations.stripe_client import StripeNotConfigured, get_client
from billing.integrations.stripe_errors import describe
from billing.models import (
    ArchivedPrice,
    Customer,
    Meter,
    PriceMapping,
    StripeSynced,
    Subscription,
    SyncStatus,
)

logger = logging.getLogger(__name__)


class SyncRefused(Exception):
    """The row cannot be synced as it is; the message tells the user what to change."""


@dataclass(frozen=True)
class SyncOutcome:
    """How one sync went. True when the row is synced."""

    obj: StripeSynced
    synced: bool
    error: str = ""

    def __bool__(self) -> bool:
        return self.synced


def idempotency_key(kind: str, pk: int, action: str, params: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()
    return f"meterbridge-{kind}-{pk}-{action}-{digest[:24]}"


def _record(obj: StripeSynced, **fields: Any) -> None:
    """Keep what Stripe answered on the row at once: a later failure must not lose it."""
    for name, value in fields.items():
        setattr(obj, name, value)
    obj.save(update_fields=[*fields, "updated_at"])


def sync_object(obj: StripeSynced) -> SyncOutcome:
    """Make Stripe match one row and record the outcome on it."""
    try:
        SYNCERS[type(obj)](obj)
    except (StripeNotConfigured, SyncRefused, stripe.StripeError) as exc:
        _record(obj, sync_status=SyncStatus.FAILED, sync_error=describe(exc))
        logger.warning("Stripe sync of %s %s failed: %s", type(obj).__name__, obj.pk, exc)
        return SyncOutcome(obj, False, obj.sync_error)
    except Exception as exc:  # a bug or an unexpected answer must still leave the row marked
        logger.exception("Stripe sync of %s %s crashed", type(obj).__name__, obj.pk)
        _record(obj, sync_status=SyncStatus.FAILED, sync_error=f"Unexpected error: {describe(exc)}")
        return SyncOutcome(obj, False, obj.sync_error)
    _record(obj, sync_status=SyncStatus.SYNCED, sync_error="", synced_at=clock.now())
    return SyncOutcome(obj, True)


def sync_after_commit(
    obj: StripeSynced, *, then: Callable[[SyncOutcome], None] | None = None
) -> None:
    """Sync the row once the saving transaction commits (with its many-to-many relations
    written), then hand the outcome to `then`. Called once per save by whoever saved it:
    the admin, a command, a service. Outside a transaction it syncs at once."""
    model, pk = type(obj), obj.pk

    def sync() -> None:
        fresh = model._default_manager.filter(pk=pk).first()
        if fresh is None:  # deleted in the meantime
            return
        outcome = sync_object(fresh)
        if then is not None:
            then(outcome)

    transaction.on_commit(sync)


# --- Meter -------------------------------------------------------------------------------------


def meter_create_params(meter: Meter) -> dict[str, Any]:
    return {
        "display_name": meter.name,
        "event_name": meter.event_name,
        "default_aggregation": {
            "formula": aggregations.stripe_formula(meter.openmeter_aggregation)
        },
        "event_time_window": meter.window,
        "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
        "value_settings": {"event_payload_key": "value"},
    }


def _read_aggregation(meter: Meter) -> None:
    """The OpenMeter aggregation decides the Stripe meter's formula, which Stripe cannot change:
    a meter saved while OpenMeter did not answer reads it now, or is not created in Stripe."""
    if meter.openmeter_aggregation:
        return
    try:
        with OpenMeterClient.from_settings() as openmeter:
            info = openmeter.get_meter(meter.openmeter_slug)
    except OpenMeterError as exc:
        raise SyncRefused(
            f"OpenMeter's aggregation of '{meter.openmeter_slug}' decides the Stripe meter's "
            f"formula and could not be read ({exc}). Sync again once OpenMeter answers."
        ) from None
    problem = aggregations.problem(info.aggregation)
    if problem:
        raise SyncRefused(problem)
    meter.openmeter_aggregation = info.aggregation.upper()
    Meter.objects.filter(pk=meter.pk).update(openmeter_aggregation=meter.openmeter_aggregation)


def sync_meter(meter: Meter) -> None:
    client = get_client()
    if not meter.stripe_meter_id:
        _read_aggregation(meter)
        params = meter_create_params(meter)
        created = client.v1.billing.meters.create(
            params,  # type: ignore[arg-type]
            options={"idempotency_key": idempotency_key("meter", meter.pk, "create", params)},
        )
        _record(meter, stripe_meter_id=created.id)
        status = created.status
    else:
        current = client.v1.billing.meters.retrieve(meter.stripe_meter_id)
        if current.event_name != meter.event_name:
            raise SyncRefused(
                f"Stripe meter {meter.stripe_meter_id} has event name '{current.event_name}', "
                f"not '{meter.event_name}'. Stripe cannot change a meter's event name."
            )
        if (current.event_time_window or "") != meter.window:
            raise SyncRefused(
                f"Stripe meter {meter.stripe_meter_id} aggregates per "
                f"'{current.event_time_window or 'event'}', not per '{meter.window}'. "
                "Stripe cannot change a meter's window: create a new meter instead."
            )
        formula = aggregations.stripe_formula(meter.openmeter_aggregation)
        if current.default_aggregation.formula != formula:
            raise SyncRefused(
                f"Stripe meter {meter.stripe_meter_id} bills with formula "
                f"'{current.default_aggregation.formula}', but an OpenMeter meter aggregated with "
                f"{aggregations.normal(meter.openmeter_aggregation)} needs '{formula}'. Stripe "
                "cannot change a meter's formula: create a new meter instead."
            )
        status = current.status
        if current.display_name != meter.name:
            status = client.v1.billing.meters.update(
                meter.stripe_meter_id, {"display_name": meter.name}
            ).status
    if meter.active and status == "inactive":
        client.v1.billing.meters.reactivate(meter.stripe_meter_id)
    elif not meter.active and status == "active":
        client.v1.billing.meters.deactivate(meter.stripe_meter_id)


# --- Customer ----------------------------------------------------------------------------------


def link_refusal(remote: dict[str, Any], openmeter_subject: str) -> str | None:
    """Why a Stripe customer (its JSON) cannot be linked to this OpenMeter subject, or None.

    The one rule for the admin's link check and the first sync of a linked customer: a deleted
    customer, or one whose metadata names another subject, is another customer's."""
    cid = remote.get("id", "")
    if remote.get("deleted"):
        return f"Stripe customer {cid} was deleted."
    subject = (remote.get("metadata") or {}).get("openmeter_subject")
    if subject and subject != openmeter_subject:
        return (
            f"Stripe customer {cid} belongs to OpenMeter subject '{subject}' (its metadata "
            f"says so), not '{openmeter_subject}': linking it would overwrite another "
            "customer. Link the customer of that subject, or pick another Stripe customer."
        )
    return None


def sync_customer(customer: Customer) -> None:
    client = get_client()
    params: dict[str, Any] = {
        "name": customer.name,
        "metadata": {"openmeter_subject": customer.openmeter_subject},
    }
    if customer.email:
        params["email"] = customer.email
    if customer.stripe_customer_id:
        if customer.synced_at is None:
            # Linked by hand and never synced: never overwrite another subject's customer.
            problem = link_refusal(
                client.v1.customers.retrieve(customer.stripe_customer_id).to_dict(),
                customer.openmeter_subject,
            )
            if problem:
                raise SyncRefused(problem)
        client.v1.customers.update(customer.stripe_customer_id, params)  # type: ignore[arg-type]
        return
    created = client.v1.customers.create(
        params,  # type: ignore[arg-type]
        options={"idempotency_key": idempotency_key("customer", customer.pk, "create", params)},
    )
    _record(customer, stripe_customer_id=created.id)


# --- PriceMapping ------------------------------------------------------------------------------


def _price_params(price: PriceMapping, product_id: str) -> dict[str, Any]:
    return {
        "currency": price.currency,
        "unit_amount_decimal": plain_decimal(price.unit_amount_decimal),
        "product": product_id,
        "recurring": {
            "interval": price.interval,
            "usage_type": "metered",
            "meter": price.meter.stripe_meter_id,
        },
        "metadata": {"meterbridge_price_mapping": str(price.pk)},
    }


def sync_price(price: PriceMapping) -> None:
    meter = price.meter
    if not meter.stripe_meter_id:
        raise SyncRefused(f"The meter '{meter.name}' is not in Stripe yet: sync the meter first.")
    client = get_client()

    if price.stripe_product_id:
        client.v1.products.update(price.stripe_product_id, {"name": price.product_name})
    else:
        params = {"name": price.product_name}
        product = client.v1.products.create(
            params,  # type: ignore[arg-type]
            options={"idempotency_key": idempotency_key("product", price.pk, "create", params)},
        )
        _record(price, stripe_product_id=product.id)

    wanted = (price.unit_amount_decimal, price.currency, price.interval)
    if price.stripe_price_id and price.stripe_price_amount is None:
        # A price id typed in by hand: learn what it is before deciding whether it fits.
        linked = client.v1.prices.retrieve(price.stripe_price_id)
        recurring = linked.recurring
        if recurring is None or recurring.usage_type != "metered":
            raise SyncRefused(f"Stripe price {price.stripe_price_id} is not a metered price.")
        if recurring.meter != meter.stripe_meter_id:
            raise SyncRefused(
                f"Stripe price {price.stripe_price_id} bills meter {recurring.meter}, "
                f"not {meter.stripe_meter_id}."
            )
        _record(
            price,
            stripe_price_amount=Decimal(linked.unit_amount_decimal or 0),
            stripe_price_currency=linked.currency,
            stripe_price_interval=recurring.interval,
        )

    current = (price.stripe_price_amount, price.stripe_price_currency, price.stripe_price_interval)
    if not price.stripe_price_id or current != wanted:
        params = _price_params(price, price.stripe_product_id)
        created = client.v1.prices.create(
            params,  # type: ignore[arg-type]
            options={"idempotency_key": idempotency_key("price", price.pk, "create", params)},
        )
        old_id = price.stripe_price_id
        with transaction.atomic():
            if old_id:
                ArchivedPrice.objects.get_or_create(
                    stripe_price_id=old_id,
                    defaults={
                        "price_mapping": price,
                        "unit_amount_decimal": price.stripe_price_amount or Decimal(0),
                        "currency": price.stripe_price_currency,
                        "replaced_by": created.id,
                    },
                )
            _record(
                price,
                stripe_price_id=created.id,
                stripe_price_amount=price.unit_amount_decimal,
                stripe_price_currency=price.currency,
                stripe_price_interval=price.interval,
            )
        if old_id:
            # Stripe prices are immutable: the old one is archived, subscriptions keep it.
            client.v1.prices.update(old_id, {"active": False})
    if not price.active:
        client.v1.prices.update(price.stripe_price_id, {"active": False})
    elif price.stripe_price_id:
        client.v1.prices.update(price.stripe_price_id, {"active": True})


# --- Subscription ------------------------------------------------------------------------------


def _mapping_price_ids(mapping: PriceMapping) -> set[str]:
    """Every Stripe price that belongs to a mapping: the current one and the archived ones."""
    ids = set(mapping.archived_prices.values_list("stripe_price_id", flat=True))
    ids.add(mapping.stripe_price_id)
    return ids


def sync_subscription(sub: Subscription) -> None:
    client = get_client()
    if sub.cancel_requested:
        if sub.stripe_subscription_id and sub.status != "canceled":
            canceled = client.v1.subscriptions.cancel(sub.stripe_subscription_id)
            _record(sub, status=canceled.status)
        elif not sub.stripe_subscription_id:
            _record(sub, status="canceled")
        return

    customer = sub.customer
    if not customer.stripe_customer_id:
        raise SyncRefused(f"The customer '{customer.name}' is not in Stripe yet: sync it first.")
    mappings = list(sub.prices.select_related("meter"))
    if not mappings:
        raise SyncRefused("Select at least one price for the subscription.")
    unsynced = [m.product_name for m in mappings if not m.stripe_price_id]
    if unsynced:
        raise SyncRefused(f"These prices are not in Stripe yet: {', '.join(unsynced)}.")

    if not sub.stripe_subscription_id:
        items = [{"price": m.stripe_price_id} for m in mappings]  # metered: no quantity
        params: dict[str, Any] = {
            "customer": customer.stripe_customer_id,
            "items": items,
            "metadata": {"meterbridge_subscription": str(sub.pk)},
        }
        # Periods start at 00:00 UTC (from the start day, or the earlier "bill usage from"
        # day), so every hourly and daily window lies inside one billing period.
        start = windows.floor(sub.bill_from or clock.now(), windows.DAY)
        params["backdate_start_date"] = int(start.timestamp())
        if all(m.interval in ("month", "year") for m in mappings):
            params["billing_cycle_anchor_config"] = {
                "day_of_month": start.day,
                "hour": 0,
                "minute": 0,
                "second": 0,
            }
        else:  # Stripe takes an anchor config for monthly and yearly prices only
            next_midnight = windows.floor(clock.now(), windows.DAY) + windows.length(windows.DAY)
            params["billing_cycle_anchor"] = int(next_midnight.timestamp())
        created = client.v1.subscriptions.create(
            params,  # type: ignore[arg-type]
            options={"idempotency_key": idempotency_key("subscription", sub.pk, "create", params)},
        )
        item_map = {item.price.id: item.id for item in created["items"].data}
        _record(
            sub, stripe_subscription_id=created.id, status=created.status, stripe_items=item_map
        )
        record_periods(subscription=sub, stripe_subscription=created.to_dict())
        return

    # Existing subscription: add items for newly selected prices, remove deselected ones.
    remote = client.v1.subscriptions.retrieve(sub.stripe_subscription_id)
    item_map = {item.price.id: item.id for item in remote["items"].data}
    wanted_ids: set[str] = set()
    for mapping in mappings:
        ids = _mapping_price_ids(mapping)
        wanted_ids |= ids
        if not ids & item_map.keys():
            added = client.v1.subscription_items.create(
                {"subscription": sub.stripe_subscription_id, "price": mapping.stripe_price_id},
                options={
                    "idempotency_key": idempotency_key(
                        "subscription", sub.pk, "add", {"price": mapping.stripe_price_id}
                    )
                },
            )
            item_map[mapping.stripe_price_id] = added.id
    for price_id, item_id in list(item_map.items()):
        if price_id not in wanted_ids:
            client.v1.subscription_items.delete(item_id)
            del item_map[price_id]
    _record(sub, status=remote.status, stripe_items=item_map)
    record_periods(subscription=sub, stripe_subscription=remote.to_dict())


def subscriptions_on_archived_prices() -> "models.QuerySet[Subscription]":
    archived = list(ArchivedPrice.objects.values_list("stripe_price_id", flat=True))
    query = models.Q()
    for price_id in archived:
        query |= models.Q(stripe_items__has_key=price_id)
    if not archived:
        return Subscription.objects.none()
    return Subscription.objects.filter(query).exclude(status="canceled")


def move_to_current_prices(sub: Subscription) -> int:
    """Move the subscription's items from archived prices to their mapping's current price."""
    client = get_client()
    archived = {
        a.stripe_price_id: a.price_mapping.stripe_price_id
        for a in ArchivedPrice.objects.select_related("price_mapping").filter(
            stripe_price_id__in=list(sub.stripe_items)
        )
    }
    moved = 0
    item_map = dict(sub.stripe_items)
    for old_price, new_price in archived.items():
        item_id = item_map.pop(old_price)
        client.v1.subscription_items.update(item_id, {"price": new_price})
        item_map[new_price] = item_id
        moved += 1
    _record(sub, stripe_items=item_map)
    return moved


# Every synced model and its sync, in dependency order: a price needs its meter, a
# subscription its customer and prices.
SYNCERS: dict[type[StripeSynced], Callable[[Any], None]] = {
    Meter: sync_meter,
    Customer: sync_customer,
    PriceMapping: sync_price,
    Subscription: sync_subscription,
}


def sync_pending(*, include_synced: bool = False) -> list[SyncOutcome]:
    """Sync every pending or failed row, dependencies first."""
    results: list[SyncOutcome] = []
    for model in SYNCERS:
        rows = model._default_manager.all()
        if not include_synced:
            rows = rows.exclude(sync_status=SyncStatus.SYNCED)
        for obj in rows.order_by("pk"):
            results.append(sync_object(obj))
    return results
