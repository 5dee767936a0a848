"""Following OpenMeter's usage attribution for customers linked to an OpenMeter customer.

A Customer with an `openmeter_customer_id` is billed for the subject keys OpenMeter attributes
to that OpenMeter customer (`usageAttribution.subjectKeys`, and its key). Before each run that
sends, they are read from OpenMeter and kept as CustomerSubject rows:

- a key no customer has yet is added to the linked customer;
- a key another *linked* customer has (it moved in OpenMeter) moves to this one.

Each such change is audited (SubjectMove) and the customers it touches are re-reported over the
windows Stripe still accepts, as a move made here is: usage follows its subject, nothing is
billed twice. A key held here by a customer that is not linked to OpenMeter, or that is some
customer's own subject, is left alone (and logged): only `move_subject` moves those. A key that
OpenMeter no longer attributes to anyone stays where it is.
"""

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction

from billing.integrations.openmeter import CustomerInfo, OpenMeterClient, OpenMeterNotFound
from billing.models import Customer, CustomerSubject, SubjectMove

logger = logging.getLogger(__name__)

FEW_LINKED = 20  # up to this many linked customers, read each one; above, list them all
BATCH = 500  # rows per bulk write or `__in` list (SQLite limits a query's parameters)
REASON = "Subject keys of OpenMeter customer {id}"


@dataclass(frozen=True)
class Followed:
    """What following OpenMeter changed: the audited moves and the customers they touch."""

    moves: list[SubjectMove]
    customers: list[Customer]
    problems: list[str]


def follow_openmeter(*, client: OpenMeterClient, now: datetime) -> Followed:
    """Bring linked customers' subjects in line with OpenMeter's attribution (see the module)."""
    linked = {
        c.openmeter_customer_id: c for c in Customer.objects.exclude(openmeter_customer_id="")
    }
    if not linked:
        return Followed([], [], [])
    problems: list[str] = []
    wanted: dict[str, tuple[Customer, CustomerInfo]] = {}
    for info in _read(client, linked, problems):
        customer = linked.get(info.id) or (linked.get(info.key) if info.key else None)
        if customer is not None:
            # OpenMeter also attributes usage whose subject is the customer's key.
            for key in (info.key, *info.subject_keys) if info.key else info.subject_keys:
                wanted[key] = (customer, info)
    # Read whole, not with `__in`: a first import can want tens of thousands of keys.
    own = {
        s: pk for s, pk in Customer.objects.values_list("openmeter_subject", "pk") if s in wanted
    }
    rows = {
        s: pk
        for s, pk in CustomerSubject.objects.values_list("subject", "customer_id")
        if s in wanted
    }
    linked_pks = {c.pk for c in linked.values()}
    by_pk = {c.pk: c for c in linked.values()}
    new_rows: list[CustomerSubject] = []
    moved: dict[int, list[str]] = {}  # customer pk -> subjects it takes from another
    moves: list[SubjectMove] = []
    touched: dict[int, Customer] = {}
    for subject, (customer, info) in wanted.items():
        holder_pk = own.get(subject, rows.get(subject))
        if holder_pk == customer.pk:
            continue
        if subject in own or (holder_pk is not None and holder_pk not in linked_pks):
            problems.append(
                f"OpenMeter attributes subject '{subject}' to {customer.name}, but it is billed "
                f"to another customer here: `move_subject {subject} --to "
                f"{customer.openmeter_subject}` moves it."
            )
            continue
        before = by_pk[holder_pk] if holder_pk is not None else None
        if before is None:
            new_rows.append(CustomerSubject(customer=customer, subject=subject, added_at=now))
        else:
            moved.setdefault(customer.pk, []).append(subject)
        moves.append(
            SubjectMove(
                subject=subject,
                from_customer=before,
                to_customer=customer,
                reason=REASON.format(id=info.id),
                moved_at=now,
            )
        )
        for touched_customer in (before, customer):
            if touched_customer is not None:
                touched[touched_customer.pk] = touched_customer
    with transaction.atomic():
        CustomerSubject.objects.bulk_create(new_rows, batch_size=BATCH)
        for customer_pk, subjects in moved.items():
            for i in range(0, len(subjects), BATCH):
                CustomerSubject.objects.filter(subject__in=subjects[i : i + BATCH]).update(
                    customer_id=customer_pk, added_at=now
                )
        moves = SubjectMove.objects.bulk_create(moves, batch_size=BATCH)
    for problem in problems:
        logger.warning(problem)
    return Followed(moves, list(touched.values()), problems)


def _read(
    client: OpenMeterClient, linked: dict[str, Customer], problems: list[str]
) -> Iterable[CustomerInfo]:
    if len(linked) > FEW_LINKED:
        return list(client.list_customers(page_size=1000))
    found = []
    for id_or_key, customer in linked.items():
        try:
            found.append(client.get_customer(id_or_key))
        except OpenMeterNotFound:
            problems.append(
                f"Customer {customer.name} is linked to OpenMeter customer '{id_or_key}', which "
                "OpenMeter does not have: its subjects stay as they are."
            )
    return found
