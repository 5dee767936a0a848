"""A run split into parts (a meter, or a shard of its customers): the parts together bill every
window exactly once, the run's counters add up its parts, the run ends with its last part, a part
whose worker died is ended by the abandoned-run check, and a schedule slot makes one run."""

from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from billing import tasks
from billing.integrations import stripe_sync
from billing.models import Meter, ReportLog, ReportRun, RunPart, RunStatus, Trigger, UnmappedUsage
from billing.reporting import RunRequest, execute_part, execute_run, fail_abandoned_runs, start_run
from billing.reporting import parts as run_parts
from tests.helpers import Usage, billed, hours_ago, synced_customers, synced_meter
from tests.test_roles import viewer

pytestmark = pytest.mark.django_db


@pytest.fixture
def usage(fake_stripe, fake_openmeter, now, settings):
    settings.REPORT_SHARD_CUSTOMERS = 3
    meters = [synced_meter(fake_openmeter, slug) for slug in ("api_calls", "tokens")]
    customers = synced_customers([f"c{i}" for i in range(10)])
    feed = Usage(fake_openmeter)
    for h in range(1, 4):
        for m, meter in enumerate(meters):
            for i, customer in enumerate(customers):
                feed.add(meter, customer.openmeter_subject, hours_ago(now, h), i + h + m)
            feed.add(meter, "nobody", hours_ago(now, h), 5)  # a subject of no customer
    return meters, customers, feed


def test_shards_of_a_meter_bill_every_window_once(usage, fake_stripe, now):
    meters, customers, feed = usage
    run = execute_run(
        start_run(
            RunRequest(trigger=Trigger.ADMIN, start=hours_ago(now, 3), end=hours_ago(now, 0))
        ),
        fan_out=True,  # queued as tasks (run at once here: the tests' django-q2 is synchronous)
    )
    assert run.status == RunStatus.SUCCEEDED, run.error
    shards = RunPart.objects.filter(run=run, meter__isnull=False)
    # 10 customers, at most 3 a shard: 4 shards (a power of two) per meter.
    assert sorted(shards.values_list("meter__openmeter_slug", "shard", "shards")) == sorted(
        (meter.openmeter_slug, shard, 4) for meter in meters for shard in range(4)
    )
    for meter in meters:
        assert billed(fake_stripe, meter) == feed.windows(meter, customers)
    assert run.events_sent == 2 * 10 * 3 == ReportLog.objects.filter(run=run).count()
    assert run.events_sent == sum(shards.values_list("events_sent", flat=True))
    assert run.windows_checked == sum(shards.values_list("windows_checked", flat=True))
    # The unmapped subject is counted once per meter, not once per shard.
    assert UnmappedUsage.objects.filter(run=run).count() == 2
    assert run.unmapped_subjects == 1 and run.unmapped_quantity == 2 * 3 * 5
    # The run's page says which process did which part, to a viewer too, and changes nothing.
    page = viewer().get(reverse("admin:billing_reportrun_change", args=[run.pk]))
    assert page.status_code == 200
    text = page.content.decode()
    assert "preparation" in text and "api_calls, customers shard 4 of 4" in text
    assert shards.first().worker in text and 'name="parts-0-events_sent"' not in text
    again = execute_run(
        start_run(
            RunRequest(trigger=Trigger.ADMIN, start=hours_ago(now, 3), end=hours_ago(now, 0))
        ),
        fan_out=True,
    )
    assert again.status == RunStatus.SUCCEEDED and again.events_sent == 0
    assert again.events_unchanged == 60


def test_a_part_whose_worker_died_is_ended_and_the_run_closed(
    usage, fake_stripe, now, django_capture_on_commit_callbacks
):
    meters, customers, feed = usage
    period = {"start": hours_ago(now, 3), "end": hours_ago(now, 0)}
    run = start_run(RunRequest(trigger=Trigger.ADMIN, **period))
    preparation = run_parts.begin_preparation(run)
    assert preparation is not None
    planned = run_parts.plan(run=run, meters=meters, customers=len(customers))
    run_parts.end(preparation, run_parts.Tally(part=preparation))
    with django_capture_on_commit_callbacks(execute=True):  # the run's sums, after each write
        for part in planned[1:]:
            execute_part(part)
    # The first part was taken by a worker that died; the others are done.
    RunPart.objects.filter(pk=planned[0].pk).update(
        started_at=timezone.now() - timedelta(hours=2), worker="gone:1"
    )
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING and run.finished_at is None
    assert run.events_sent == sum(p.events_sent for p in RunPart.objects.filter(run=run))
    tasks.scheduled_report()  # first the abandoned-run check, then the hour's lookback
    run.refresh_from_db()
    assert run.status == RunStatus.PARTIAL
    assert "stopped before it finished" in run.error and "report the period again" in run.error
    # The task of the dead worker, delivered again, does nothing: the part has ended.
    sent = run.events_sent
    tasks.execute_run_part(planned[0].pk)
    run.refresh_from_db()
    assert run.events_sent == sent and run.status == RunStatus.PARTIAL
    # The scheduled run's lookback sent what the dead part had not; nothing went twice.
    scheduled = ReportRun.objects.get(trigger=Trigger.SCHEDULE)
    assert scheduled.status == RunStatus.SUCCEEDED
    assert 0 < scheduled.events_sent and sent + scheduled.events_sent == 60
    redo = execute_run(start_run(RunRequest(trigger=Trigger.ADMIN, **period)))
    assert redo.status == RunStatus.SUCCEEDED and redo.events_sent == 0
    for meter in meters:
        assert billed(fake_stripe, meter) == feed.windows(meter, customers)


def test_one_schedule_slot_makes_one_run(usage, fake_stripe, now):
    slot = (now + timedelta(hours=1)).replace(minute=5)
    first = tasks.scheduled_report(intended_date=slot.isoformat())
    second = tasks.scheduled_report(intended_date=slot.isoformat())  # another cluster
    assert first is not None and second is None
    run = ReportRun.objects.get(trigger=Trigger.SCHEDULE)
    assert run.pk == first and run.scheduled_for == slot.astimezone(UTC)
    assert run.status == RunStatus.SUCCEEDED and run.events_sent == 60
    # The next slot is a run of its own.
    later = tasks.scheduled_report(intended_date=(slot + timedelta(hours=1)).isoformat())
    assert later is not None and later != first


def test_a_run_in_one_process_is_not_sharded(usage, fake_stripe, now):
    period = {"start": hours_ago(now, 3), "end": hours_ago(now, 0)}
    run = execute_run(start_run(RunRequest(trigger=Trigger.COMMAND, **period)))
    assert run.status == RunStatus.SUCCEEDED and run.events_sent == 60
    shards = RunPart.objects.filter(run=run, meter__isnull=False)
    assert sorted(shards.values_list("meter__openmeter_slug", "shards")) == [
        ("api_calls", 1),
        ("tokens", 1),
    ]
    assert UnmappedUsage.objects.filter(run=run).count() == 2


def test_a_run_with_nothing_to_do_still_ends(fake_stripe, fake_openmeter, now):
    run = execute_run(
        start_run(RunRequest(trigger=Trigger.ADMIN, start=hours_ago(now, 2), end=hours_ago(now, 0)))
    )
    assert run.status == RunStatus.SUCCEEDED and run.finished_at is not None
    assert list(RunPart.objects.filter(run=run).values_list("meter", flat=True)) == [None]
    assert datetime.now(UTC) - run.finished_at < timedelta(minutes=1)


def test_a_run_whose_last_part_vanished_is_closed_by_the_check(usage, now):
    meters, customers, _ = usage
    run = start_run(
        RunRequest(trigger=Trigger.ADMIN, start=hours_ago(now, 3), end=hours_ago(now, 0))
    )
    preparation = run_parts.begin_preparation(run)
    assert preparation is not None
    planned = run_parts.plan(run=run, meters=meters, customers=len(customers))
    run_parts.end(preparation, run_parts.Tally(part=preparation))
    for part in planned[1:]:
        execute_part(part)
    RunPart.objects.filter(pk=planned[0].pk).delete()  # as when its meter is deleted
    assert tasks.execute_run_part(planned[0].pk) == planned[0].pk  # its task: nothing to do
    run.refresh_from_db()
    assert run.finished_at is None
    ReportRun.objects.filter(pk=run.pk).update(started_at=timezone.now() - timedelta(hours=2))
    assert fail_abandoned_runs() == 1
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.events_sent == sum(
        p.events_sent for p in RunPart.objects.filter(run=run)
    )


def test_shards_of_a_unique_count_meter_bill_each_customer_s_value_to_date(
    fake_stripe, fake_openmeter, now, settings
):
    settings.REPORT_SHARD_CUSTOMERS = 3
    fake_openmeter.add_meter("active_users", aggregation="UNIQUE_COUNT")
    meter = Meter.objects.create(
        name="Active users", openmeter_slug="active_users", openmeter_aggregation="UNIQUE_COUNT"
    )
    assert stripe_sync.sync_object(meter), meter.sync_error
    customers = synced_customers([f"c{i}" for i in range(10)])
    seen: dict[str, list[tuple[datetime, float]]] = {}
    for h in range(1, 4):
        for i, customer in enumerate(customers):
            for user in range(i % 4 + h):  # users 0..n: a new one each hour
                when = hours_ago(now, h) + timedelta(minutes=user)
                fake_openmeter.ingest(
                    meter="active_users", subject=customer.openmeter_subject, time=when, value=user
                )
                seen.setdefault(customer.openmeter_subject, []).append((when, user))
    period = {"start": hours_ago(now, 3), "end": hours_ago(now, 0)}
    run = execute_run(start_run(RunRequest(trigger=Trigger.ADMIN, **period)), fan_out=True)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert RunPart.objects.filter(run=run, meter=meter).count() == 4
    month = hours_ago(now, 1).replace(day=1, hour=0)  # no billing period known: the UTC month
    values = billed(fake_stripe, meter)
    for customer in customers:
        # Stripe bills the period's latest window sent (formula last): the value to date.
        held = {
            start: v for (cus, start), v in values.items() if cus == customer.stripe_customer_id
        }
        users = {u for when, u in seen[customer.openmeter_subject] if when >= month}
        assert held[max(held)] == len(users), customer


@pytest.mark.parametrize("shards", [2, 4, 8, 16])
def test_a_shard_read_by_the_database_holds_the_customers_in_shard_says(usage, shards):
    """A part reads its shard's customers only; the rule in SQL is in_shard's, and the shards
    together hold every customer once."""
    from billing.models import Customer

    _, customers, _ = usage
    customers += synced_customers([f"more{i}" for i in range(20)])
    run = start_run(RunRequest(trigger=Trigger.ADMIN))
    seen: list[int] = []
    for shard in range(shards):
        part = RunPart(run=run, meter=None, shard=shard, shards=shards)
        read = run_parts.in_shard_query(Customer.objects.all(), part)
        expected = [c.pk for c in customers if run_parts.in_shard(c, part)]
        assert sorted(read.values_list("pk", flat=True)) == sorted(expected)
        seen += expected
    assert sorted(seen) == sorted(c.pk for c in customers)
