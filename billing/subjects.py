"""Which customer each OpenMeter subject's usage is billed to: the one rule every run, preview,
reconciliation and projection reads.

A customer's subjects are its own `openmeter_subject` and its `CustomerSubject` rows (the subject
keys of an OpenMeter customer are kept as such rows). A subject names one customer at most.
"""

from collections.abc import Iterable, Mapping

from billing.models import Customer, CustomerSubject


def owners(
    customers: Iterable[Customer], *, assumed: Mapping[str, int | None] | None = None
) -> dict[str, Customer]:
    """Subject key -> the customer (of `customers`) its usage is billed to.

    `assumed` previews moves: {subject: customer pk, or None for no customer}, as if saved."""
    by_pk = {c.id: c for c in customers}
    result = {c.openmeter_subject: c for c in by_pk.values()}
    rows = CustomerSubject.objects.order_by("pk").values_list("subject", "customer_id")
    if len(by_pk) <= 1000:  # few customers: let the database filter
        rows = rows.filter(customer_id__in=list(by_pk))
    for subject, customer_id in rows.iterator(chunk_size=5000):
        customer = by_pk.get(customer_id)
        if customer is not None:
            result.setdefault(subject, customer)
    for subject, owner_id in (assumed or {}).items():
        result.pop(subject, None)
        if owner_id is not None and owner_id in by_pk:
            result[subject] = by_pk[owner_id]
    return result


def subjects_of(customer: Customer) -> list[str]:
    """The customer's subject keys, its own first."""
    extra = customer.subjects.exclude(subject=customer.openmeter_subject)
    return [customer.openmeter_subject, *extra.values_list("subject", flat=True)]


def owner_of(subject: str) -> Customer | None:
    """The customer whose usage the subject is, if any (active or not)."""
    found = Customer.objects.filter(openmeter_subject=subject).first()
    if found is not None:
        return found
    row = CustomerSubject.objects.filter(subject=subject).select_related("customer").first()
    return row.customer if row is not None else None


def grouped(by_subject: Mapping[str, Customer]) -> dict[int, list[str]]:
    """Customer pk -> its subjects in `by_subject`."""
    result: dict[int, list[str]] = {}
    for subject, customer in by_subject.items():
        result.setdefault(customer.id, []).append(subject)
    return result
