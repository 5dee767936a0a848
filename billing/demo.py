"""Demo mode: the seed's example on the local emulators, fed with generated usage, so a newcomer
sees the whole job run without any account (`python3 dev.py serve` with no Stripe settings).

Only ever against loopback emulators: `check_demo_allowed` refuses anything else, so demo data
can never reach a real Stripe account or OpenMeter."""

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from urllib.parse import urlsplit

import httpx
from django.conf import settings

from billing import clock, windows
from billing.example import METER_SLUG, Example, ExampleCustomer, add_price, create_example
from billing.formatting import utc_iso
from billing.integrations.openmeter import CustomerInfo, OpenMeterClient, OpenMeterNotFound
from billing.models import CustomerSubject
from billing.openmeter_import import link_customer

CUSTOMERS = (
    ExampleCustomer(name="Acme Corp", email="billing@acme.example", subject="acme"),
    ExampleCustomer(name="Globex", email="finance@globex.example", subject="globex"),
    ExampleCustomer(name="Initech", email="ap@initech.example", subject="initech"),
)
# Acme's usage also arrives per user: one customer billed for several OpenMeter subjects.
OTHER_SUBJECTS = {"acme": ("acme-alice", "acme-bob")}
UNMAPPED_SUBJECT = "umbrella-trial"  # usage under a subject no customer has: "unmapped usage"
EVENT_TYPE = "tokens"  # the emulator's meter `tokens_total` sums `data.tokens` of these events
# ...and `active_users` counts the unique `data.user` of the same events: billed per month as the
# period's unique count (Stripe meter formula `last`), $5 per active user.
USERS_SLUG, USERS_NAME, USER_CENTS = "active_users", "Active users", Decimal(500)
USERS_PER_SUBJECT = {"acme": 6, "acme-alice": 1, "acme-bob": 1, "globex": 4, "initech": 3}
BACKFILL_HOURS = 48
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class DemoRefused(Exception):
    """Demo data is only made in demo mode, against loopback emulators."""


def check_demo_allowed() -> None:
    if not settings.DEMO_MODE:
        raise DemoRefused("Not in demo mode: demo data is only created by `dev.py serve`.")
    for name in ("STRIPE_API_BASE", "OPENMETER_URL"):
        host = urlsplit(getattr(settings, name)).hostname or ""
        if host not in LOOPBACK:
            raise DemoRefused(f"{name} is not a local emulator ({host}): no demo data made.")


def ensure_example(*, now: datetime | None = None) -> Example:
    """The seed's example with three customers, created once (running again changes nothing).
    Their subscriptions start at midnight UTC before the generated history, so the emulator's
    open invoices bill it."""
    check_demo_allowed()
    now = now or clock.now()
    bill_from = windows.floor(now - timedelta(hours=BACKFILL_HOURS), windows.DAY)
    example = create_example(customers=CUSTOMERS, bill_from=bill_from)
    add_price(example, slug=USERS_SLUG, name=USERS_NAME, unit_amount=USER_CENTS)
    for customer in example.customers:
        others = OTHER_SUBJECTS.get(customer.openmeter_subject, ())
        for subject in others:
            CustomerSubject.objects.get_or_create(subject=subject, defaults={"customer": customer})
        if others and not customer.openmeter_customer_id:
            # Its users' unique count over all its subjects is read through its OpenMeter
            # customer (a unique count over several subjects is not the sum of theirs).
            keys = [customer.openmeter_subject, *others]
            link_customer(customer=customer, info=_openmeter_customer(customer.name, keys))
    return example


def _openmeter_customer(name: str, subject_keys: list[str]) -> CustomerInfo:
    """The emulator's customer with these subject keys (its key is the first), created once."""
    with OpenMeterClient.from_settings() as client:
        try:
            return client.get_customer(subject_keys[0])
        except OpenMeterNotFound:
            pass
        response = httpx.post(
            settings.OPENMETER_URL.rstrip("/") + "/api/v1/customers",
            json={
                "name": name,
                "key": subject_keys[0],
                "usageAttribution": {"subjectKeys": subject_keys},
            },
            timeout=10,
        )
        response.raise_for_status()
        return client.get_customer(subject_keys[0])


def subjects_of(spec: ExampleCustomer) -> tuple[str, ...]:
    return (spec.subject, *OTHER_SUBJECTS.get(spec.subject, ()))


@dataclass(frozen=True)
class Event:
    subject: str
    time: datetime
    tokens: int

    @property
    def user(self) -> str:
        """Who used the tokens: one of a few users per subject, the same ones day after day."""
        pool = USERS_PER_SUBJECT.get(self.subject, 2)
        return f"{self.subject}-user-{(self.tokens * 7 + self.time.hour) % pool + 1}"

    def cloudevent(self) -> dict[str, object]:
        return {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": "meterbridge-demo",
            "type": EVENT_TYPE,
            "subject": self.subject,
            "time": utc_iso(self.time),
            "data": {"tokens": self.tokens, "user": self.user},
        }


def _tokens(rng: random.Random, hour: int) -> int:
    """A working day's shape: busier from 08:00 to 18:00 UTC."""
    base = 400 if 8 <= hour < 18 else 120
    return rng.randint(base // 2, base * 2)


def history(*, now: datetime, rng: random.Random) -> Iterator[Event]:
    """The last BACKFILL_HOURS of usage: a few events per customer and hour, some unmapped."""
    start = windows.floor(now, windows.HOUR) - timedelta(hours=BACKFILL_HOURS)
    for h in range(BACKFILL_HOURS):
        hour = start + timedelta(hours=h)
        for spec in CUSTOMERS:
            for _ in range(rng.randint(1, 4)):
                moment = hour + timedelta(seconds=rng.randrange(3600))
                yield Event(rng.choice(subjects_of(spec)), moment, _tokens(rng, hour.hour))
        if h % 6 == 0:
            yield Event(UNMAPPED_SUBJECT, hour + timedelta(minutes=7), rng.randint(50, 300))


def live(*, now: datetime, rng: random.Random) -> list[Event]:
    """What arrives in a few seconds: now and then usage, sometimes unmapped, sometimes late
    (timestamped hours ago, as a delayed pipeline delivers it: the next run corrects that hour)."""
    events = []
    for spec in CUSTOMERS:
        if rng.random() < 0.6:
            subject = rng.choice(subjects_of(spec))
            events.append(Event(subject, now, _tokens(rng, now.hour) // 20 + 1))
    if rng.random() < 0.05:
        events.append(Event(UNMAPPED_SUBJECT, now, rng.randint(5, 50)))
    if rng.random() < 0.03:
        late = now - timedelta(hours=rng.randint(1, 6), minutes=rng.randint(0, 59))
        events.append(Event(rng.choice(CUSTOMERS).subject, late, rng.randint(100, 500)))
    return events


def send(events: list[Event]) -> None:
    """Post events to the OpenMeter emulator's ingest endpoint (one batch)."""
    if not events:
        return
    check_demo_allowed()
    response = httpx.post(
        settings.OPENMETER_URL.rstrip("/") + "/api/v1/events",
        json=[e.cloudevent() for e in events],
        headers={"Content-Type": "application/cloudevents-batch+json"},
        timeout=10,
    )
    response.raise_for_status()


def backfill(*, now: datetime | None = None, seed: int = 7) -> int:
    """Feed the last 48 hours once: nothing is added when the emulator already has usage (a
    restarted demo keeps its emulator state). Returns the number of events sent."""
    check_demo_allowed()
    now = now or clock.now()
    start = windows.floor(now, windows.HOUR) - timedelta(hours=BACKFILL_HOURS)
    end = start + timedelta(hours=BACKFILL_HOURS + 1)
    with OpenMeterClient.from_settings() as client:
        rows = client.query(slug=METER_SLUG, start=start, end=end, window_size=None)
        if any(row.value != Decimal(0) for row in rows):
            return 0
    events = list(history(now=now, rng=random.Random(seed)))
    for i in range(0, len(events), 500):
        send(events[i : i + 500])
    return len(events)
