"""Sync to Stripe after the saving transaction commits; keep the hourly schedule in place."""

from typing import Any

from django.db import models, transaction
from django.db.models.signals import m2m_changed, post_migrate, post_save
from django.dispatch import receiver

from billing.models import Customer, Meter, PriceMapping, Subscription
from billing.stripe_sync import sync_by_pk


def _sync_after_commit(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    if kwargs.get("raw"):  # loaddata
        return
    pk = instance.pk
    transaction.on_commit(lambda: sync_by_pk(sender, pk))


for _model in (Meter, Customer, PriceMapping, Subscription):
    post_save.connect(_sync_after_commit, sender=_model, dispatch_uid=f"sync-{_model.__name__}")


@receiver(m2m_changed, sender=Subscription.prices.through, dispatch_uid="sync-subscription-prices")
def _subscription_prices_changed(instance: models.Model, action: str, **kwargs: Any) -> None:
    # The M2M is written after the row: the subscription can only get its items now.
    if action in {"post_add", "post_remove", "post_clear"} and isinstance(instance, Subscription):
        _sync_after_commit(Subscription, instance)


@receiver(post_migrate, dispatch_uid="meterbridge-schedule")
def _ensure_schedule(sender: Any, apps: Any = None, **kwargs: Any) -> None:
    if getattr(sender, "name", None) != "billing":
        return
    from billing.schedule import ensure_report_schedule

    ensure_report_schedule()
