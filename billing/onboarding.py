"""New customers for OpenMeter subjects that have usage but no customer yet (the dashboard's
"unmapped usage"), created and synced to Stripe like any other customer."""

from collections.abc import Iterable
from dataclasses import dataclass

from billing.integrations.stripe_sync import sync_object
from billing.models import Customer
from billing.subjects import owner_of


@dataclass(frozen=True, kw_only=True)
class Outcome:
    subject: str
    customer: Customer | None  # None: not created (see message)
    message: str
    synced: bool = False


def create_customers(*, subjects: Iterable[str]) -> list[Outcome]:
    """One customer per subject, named after it (rename it later); each synced to Stripe at
    once. A subject that already has a customer is left alone."""
    outcomes = []
    for subject in dict.fromkeys(s.strip() for s in subjects if s.strip()):
        max_length = Customer._meta.get_field("openmeter_subject").max_length or 255
        if len(subject) > max_length:
            outcomes.append(Outcome(subject=subject, customer=None, message="subject too long"))
            continue
        if owner_of(subject) is not None:
            outcomes.append(
                Outcome(subject=subject, customer=None, message="already has a customer")
            )
            continue
        customer = Customer.objects.create(name=subject, openmeter_subject=subject)
        synced = sync_object(customer)
        message = "created and synced to Stripe" if synced else f"created; {synced.error}"
        outcomes.append(
            Outcome(subject=subject, customer=customer, message=message, synced=bool(synced))
        )
    return outcomes
