"""Companies with several OpenMeter subjects each, and what Stripe must bill them."""

from collections import defaultdict
from datetime import timedelta
from decimal import Decimal

from billing.models import Customer, CustomerSubject
from tests.helpers import Usage, hours_ago, synced_customers, synced_meter

KEYS = ("key1", "key2", "key3")


def expected(usage: Usage, meter, owner: dict[str, Customer]) -> dict[tuple[str, int], Decimal]:
    """What Stripe must bill: per customer and window, the sum over the subjects it has now."""
    result: dict[tuple[str, int], Decimal] = defaultdict(Decimal)
    for (slug, subject, start), value in usage.expected.items():
        customer = owner.get(subject)
        if slug == meter.openmeter_slug and customer is not None:
            result[(customer.stripe_customer_id, int(start.timestamp()))] += value
    return {k: v for k, v in result.items() if v != 0}


def make_companies(fake_openmeter, now):
    """Three customers with three subjects each (their own and two more), usage under all;
    synced meter, customers, {subject: customer} and the usage."""
    meter = synced_meter(fake_openmeter)
    customers = synced_customers(["acme-key1", "globex-key1", "initech-key1"])
    owner: dict[str, Customer] = {}
    for customer in customers:
        company = customer.openmeter_subject.split("-")[0]
        owner[customer.openmeter_subject] = customer
        for key in KEYS[1:]:
            row = CustomerSubject.objects.create(customer=customer, subject=f"{company}-{key}")
            owner[row.subject] = customer
    usage = Usage(fake_openmeter)
    for h in range(1, 7):
        for n, subject in enumerate(sorted(owner)):
            if (h + n) % 4:
                usage.add(meter, subject, hours_ago(now, h) + timedelta(minutes=5), h + n)
    usage.add(meter, "stranger", hours_ago(now, 2), 5)  # nobody's: unmapped
    return meter, customers, owner, usage
