"""Customers from OpenMeter: each OpenMeter customer becomes (or is linked to) a Customer billed
for its subject keys (`usageAttribution.subjectKeys`).

Per OpenMeter customer, one outcome:
- created: no Customer has its id or any of its subjects; one is made (and synced to Stripe),
  its own subject being the OpenMeter key (else its first subject key, else its id);
- linked: exactly one unlinked Customer has one of its subjects; it gets the OpenMeter id;
- updated: its Customer gains subject keys (new ones, or ones OpenMeter moved to it from another
  linked customer);
- unchanged: nothing to do;
- left alone: linking would overwrite something (a Customer linked to another OpenMeter
  customer, subjects billed to several customers, or to a customer that is not linked).

A Customer linked to a different OpenMeter customer is never relinked, and a subject of a
customer that is not linked to OpenMeter is never taken (`move_subject` moves it). The subjects
themselves are then taken up as every sending run takes them up (billing/openmeter_attribution):
audited, and the customers they touch re-reported by one run over the windows Stripe accepts.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from billing import clock
from billing.integrations.openmeter import CustomerInfo, OpenMeterClient
from billing.integrations.stripe_sync import sync_object
from billing.models import Customer, CustomerSubject, ReportRun
from billing.openmeter_attribution import follow_openmeter
from billing.reporting.runs import start_followup_run

CREATED, LINKED, UPDATED, UNCHANGED, LEFT_ALONE = (
    "created",
    "linked",
    "updated",
    "unchanged",
    "left alone",
)


@dataclass
class Outcome:
    openmeter_id: str
    name: str
    action: str
    detail: str = ""
    customer: Customer | None = None

    def line(self) -> str:
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.action:<10} {self.name} (OpenMeter {self.openmeter_id}){detail}"


@dataclass
class ImportResult:
    outcomes: list[Outcome] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # subjects left where they are, and why
    run: ReportRun | None = None  # the re-report of customers whose subjects changed

    def counts(self) -> dict[str, int]:
        result = dict.fromkeys((CREATED, LINKED, UPDATED, UNCHANGED, LEFT_ALONE), 0)
        for outcome in self.outcomes:
            result[outcome.action] += 1
        return result

    def summary(self) -> str:
        return ", ".join(f"{n} {action}" for action, n in self.counts().items())


def import_customers(
    *,
    dry_run: bool,
    trigger: str,
    requested_by: Any = None,
    progress: Callable[[Outcome], None] | None = None,
    now: datetime | None = None,
) -> ImportResult:
    """Read every OpenMeter customer and create or link the Customers, then take up their
    subject keys (nothing is written with `dry_run`). The re-report run, if any, is started,
    not executed: the caller runs or queues it."""
    now = now or clock.now()
    result = ImportResult()
    index = _Index.load()
    with OpenMeterClient.from_settings() as client:
        for info in client.list_customers():
            outcome = _import_one(info, index, dry_run=dry_run)
            result.outcomes.append(outcome)
            if progress is not None:
                progress(outcome)
        if dry_run:
            return result
        followed = follow_openmeter(client=client, now=now)
    result.problems = followed.problems
    result.run = start_followup_run(followed=followed, trigger=trigger, requested_by=requested_by)
    return result


def link_customer(*, customer: Customer, info: CustomerInfo) -> None:
    """Link `customer` to the OpenMeter customer; its subject keys are taken up by the next
    sending run (or the import)."""
    Customer.objects.filter(pk=customer.pk).update(openmeter_customer_id=info.id)
    customer.openmeter_customer_id = info.id


@dataclass
class _Index:
    """Who is linked and who holds which subject: read once per import (not per OpenMeter
    customer), and kept current as the import creates and links."""

    linked: dict[str, Customer]  # OpenMeter customer id (or key) -> its Customer
    holders: dict[str, Customer]  # subject -> the customer it is billed to

    @classmethod
    def load(cls) -> "_Index":
        customers = {c.pk: c for c in Customer.objects.all()}
        holders = {c.openmeter_subject: c for c in customers.values()}
        for subject, pk in CustomerSubject.objects.values_list("subject", "customer_id"):
            holders[subject] = customers[pk]
        linked = {c.openmeter_customer_id: c for c in customers.values() if c.openmeter_customer_id}
        return cls(linked, holders)

    def linked_to(self, info: CustomerInfo) -> Customer | None:
        found = self.linked.get(info.id)
        return found if found is not None or not info.key else self.linked.get(info.key)


def _import_one(info: CustomerInfo, index: _Index, *, dry_run: bool) -> Outcome:
    outcome = Outcome(openmeter_id=info.id, name=info.name, action=UNCHANGED)
    keys = [info.key, *info.subject_keys] if info.key else list(info.subject_keys)
    holders = {key: index.holders[key] for key in keys if key in index.holders}
    linked = index.linked_to(info)
    if linked is None:
        candidates = {c.pk: c for c in holders.values()}
        if not candidates:
            return _create(info, outcome, index, dry_run=dry_run)
        if len(candidates) > 1:
            names = ", ".join(sorted(c.name for c in candidates.values()))
            outcome.action = LEFT_ALONE
            outcome.detail = f"its subjects are billed to several customers ({names})"
            return outcome
        (linked,) = candidates.values()
        if linked.openmeter_customer_id:
            outcome.action, outcome.customer = LEFT_ALONE, linked
            outcome.detail = (
                f"{linked.name} is linked to OpenMeter customer {linked.openmeter_customer_id}"
            )
            return outcome
        outcome.action = LINKED
        if not dry_run:
            link_customer(customer=linked, info=info)
            index.linked[info.id] = linked
    outcome.customer = linked
    gains, kept = [], []
    for subject in info.subject_keys:
        holder = holders.get(subject)
        if holder is None or (holder.pk != linked.pk and holder.openmeter_customer_id):
            gains.append(subject)
        elif holder.pk != linked.pk:
            kept.append(f"{subject} stays with {holder.name} (move it with move_subject)")
    notes = [f"to {linked.name}"] if outcome.action == LINKED else []
    if gains:
        notes.append(f"subject(s) {', '.join(gains)}")
        if outcome.action == UNCHANGED:
            outcome.action = UPDATED
    notes += kept
    outcome.detail = "; ".join(notes)
    return outcome


def _create(info: CustomerInfo, outcome: Outcome, index: _Index, *, dry_run: bool) -> Outcome:
    own = info.key or (info.subject_keys[0] if info.subject_keys else info.id)
    outcome.action = CREATED
    outcome.detail = f"subjects {', '.join(dict.fromkeys([own, *info.subject_keys]))}"
    if dry_run:
        return outcome
    customer = Customer.objects.create(
        name=info.name[:256],
        email=info.email or "",
        openmeter_subject=own,
        openmeter_customer_id=info.id,
    )
    outcome.customer = index.linked[info.id] = index.holders[own] = customer
    synced = sync_object(customer)
    if not synced:
        outcome.detail += f"; not in Stripe yet: {synced.error}"
    return outcome
