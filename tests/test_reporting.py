"""The reporting engine against the fake Stripe and OpenMeter: what Stripe bills per window equals
what OpenMeter measured, after first runs, re-runs, late events, faults and outages."""

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection

from billing import clock, reporting
from billing.integrations.meter_events import MeterEvent, V2StreamSender, make_sender
from billing.models import LogStatus, ReportLog, ReportRun, RunMode, RunStatus, Trigger
from billing.reporting import detect
from billing.reporting.locks import meter_lock
from tests.helpers import Usage, billed, hours_ago, synced_customers, synced_meter

pytestmark = pytest.mark.django_db

EVENTS = "/v1/billing/meter_events"


@pytest.fixture
def setup(fake_stripe, fake_openmeter, now):
    meter = synced_meter(fake_openmeter)
    customers = synced_customers(["acme", "globex", "initech"])
    usage = Usage(fake_openmeter)
    for h in range(1, 7):
        for i, customer in enumerate(customers):
            if (h + i) % 3:  # some windows without usage
                usage.add(
                    meter,
                    customer.openmeter_subject,
                    hours_ago(now, h) + timedelta(minutes=7),
                    h * (i + 1),
                )
                usage.add(
                    meter,
                    customer.openmeter_subject,
                    hours_ago(now, h) + timedelta(minutes=50),
                    Decimal("0.25"),
                )
    return meter, customers, usage


def run(now, **kwargs):
    kwargs.setdefault("trigger", Trigger.COMMAND)
    kwargs.setdefault("start", hours_ago(now, 8))
    kwargs.setdefault("end", hours_ago(now, 0))
    return reporting.report_usage(now=now, **kwargs)


def test_first_run_bills_exactly_what_openmeter_measured(setup, fake_stripe, now):
    meter, customers, usage = setup
    result = run(now)
    assert result.status == RunStatus.SUCCEEDED, result.error
    expected = usage.windows(meter, customers)
    assert billed(fake_stripe, meter) == expected
    assert result.events_sent == len(expected) == fake_stripe.count("POST", EVENTS)
    assert result.windows_checked == 8 * 3
    logs = ReportLog.objects.filter(run=result)
    assert logs.count() == len(expected)
    assert {log.status for log in logs} == {LogStatus.SENT}
    assert all(log.stripe_request_id.startswith("req_") for log in logs)
    # Each event is stamped with its window start and carries the value as a decimal string.
    event = fake_stripe.meter_events[0]
    assert event["timestamp"] % 3600 == 0
    assert event["payload"]["value"] == str(Decimal(event["payload"]["value"]))


def test_second_run_sends_nothing(setup, fake_stripe, now):
    meter, customers, usage = setup
    run(now)
    sent_before = fake_stripe.count("POST", EVENTS)
    second = run(now)
    assert second.status == RunStatus.SUCCEEDED
    assert second.events_sent == 0
    assert second.events_unchanged == len(usage.windows(meter, customers))
    assert fake_stripe.count("POST", EVENTS) == sent_before
    # The scheduled path (totals first) also sends nothing.
    scheduled = reporting.report_usage(trigger=Trigger.SCHEDULE, now=now)
    assert scheduled.events_sent == 0 and scheduled.status == RunStatus.SUCCEEDED
    assert fake_stripe.count("POST", EVENTS) == sent_before


def test_late_event_resends_only_its_window(setup, fake_stripe, now):
    meter, customers, usage = setup
    run(now)
    sent_before = fake_stripe.count("POST", EVENTS)
    usage.add(meter, "globex", hours_ago(now, 3) + timedelta(minutes=59), 40)
    for trigger in (Trigger.SCHEDULE, Trigger.COMMAND):
        result = (
            run(now, trigger=trigger)
            if trigger == Trigger.COMMAND
            else reporting.report_usage(trigger=trigger, now=now)
        )
        assert result.status == RunStatus.SUCCEEDED
    assert fake_stripe.count("POST", EVENTS) == sent_before + 1
    assert billed(fake_stripe, meter) == usage.windows(meter, customers)
    log = ReportLog.objects.filter(status=LogStatus.SENT).order_by("-id").first()
    assert log.customer.openmeter_subject == "globex"
    assert log.window_start == hours_ago(now, 3)
    assert log.quantity - log.previous_quantity == 40


def test_value_going_back_gets_a_new_identifier(fake_stripe, fake_openmeter, now):
    """A window that goes A -> B -> A within 24 h must end at A in Stripe, not stay at B."""
    meter = synced_meter(fake_openmeter)
    customers = synced_customers(["acme"])
    usage = Usage(fake_openmeter)
    when = hours_ago(now, 2) + timedelta(minutes=5)
    usage.add(meter, "acme", when, 5)
    run(now)
    usage.add(meter, "acme", when, 3)
    run(now)
    usage.add(meter, "acme", when, -3)
    third = run(now)
    assert third.events_sent == 1 and third.status == RunStatus.SUCCEEDED, third.error
    assert billed(fake_stripe, meter) == usage.windows(meter, customers)
    identifiers = list(ReportLog.objects.values_list("identifier", flat=True))
    assert len(set(identifiers)) == 3


def test_429_storms_and_500s_still_deliver_every_window(setup, fake_stripe, now):
    meter, customers, usage = setup
    fake_stripe.rate_limit_next(25, path_prefix=EVENTS)
    fake_stripe.fail_next(10, status=500, path_prefix=EVENTS)
    result = run(now)
    assert result.status == RunStatus.SUCCEEDED, result.error
    assert billed(fake_stripe, meter) == usage.windows(meter, customers)
    assert fake_stripe.count("POST", EVENTS) >= result.events_sent + 35


def test_permanent_failure_is_recorded_and_retried_next_run(setup, fake_stripe, now, settings):
    meter, customers, usage = setup
    settings.STRIPE_SEND_MAX_ATTEMPTS = 2
    fake_stripe.fail_next(10_000, status=500, path_prefix=EVENTS)
    failed = run(now)
    assert failed.status == RunStatus.FAILED
    assert failed.events_failed == len(usage.windows(meter, customers))
    assert ReportLog.objects.filter(status=LogStatus.FAILED).count() == failed.events_failed
    assert "could not be sent" in failed.error
    fake_stripe.fail_next(0, path_prefix=EVENTS)
    retried = run(now)
    assert retried.status == RunStatus.SUCCEEDED, retried.error
    assert retried.events_sent == failed.events_failed
    assert billed(fake_stripe, meter) == usage.windows(meter, customers)


def test_rate_limit_should_retry_false_is_still_retried(setup, fake_stripe, now):
    """A 429 was not processed: `Stripe-Should-Retry: false` only means "not at once"."""
    meter, customers, usage = setup
    fake_stripe.rate_limit_next(3, should_retry=False, path_prefix=EVENTS)
    result = run(now)
    assert result.status == RunStatus.SUCCEEDED, result.error
    assert result.events_failed == 0 and result.rate_limited == 3
    assert billed(fake_stripe, meter) == usage.windows(meter, customers)


def test_other_client_errors_are_final(setup, fake_stripe, now):
    fake_stripe.fail_next(1, status=400, path_prefix=EVENTS)
    result = run(now)
    assert result.events_failed == 1
    assert result.status == RunStatus.PARTIAL
    again = run(now)
    assert again.events_sent == 1 and again.status == RunStatus.SUCCEEDED


def test_openmeter_outage_fails_the_run_and_the_next_catches_up(
    setup, fake_stripe, fake_openmeter, now
):
    meter, customers, usage = setup
    fake_openmeter.down = True
    failed = run(now)
    assert failed.status == RunStatus.FAILED
    assert "api_calls" in failed.error and "OpenMeter" in failed.error
    assert fake_stripe.count("POST", EVENTS) == 0
    fake_openmeter.down = False
    caught_up = run(now)
    assert caught_up.status == RunStatus.SUCCEEDED
    assert billed(fake_stripe, meter) == usage.windows(meter, customers)


def test_unmapped_subjects_are_counted(setup, fake_stripe, now):
    meter, _, usage = setup
    usage.add(meter, "stranger", hours_ago(now, 2), 7)
    usage.add(meter, "stranger", hours_ago(now, 3), 3)
    usage.add(meter, "another", hours_ago(now, 3), 1)
    result = run(now)
    assert result.unmapped_subjects == 2
    assert result.unmapped_quantity == 11
    assert result.status == RunStatus.SUCCEEDED


def test_dry_run_sends_nothing_and_logs_what_would_be_sent(setup, fake_stripe, now):
    meter, customers, usage = setup
    result = run(now, dry_run=True)
    assert fake_stripe.count("POST", EVENTS) == 0
    logs = ReportLog.objects.filter(run=result)
    assert {log.status for log in logs} == {LogStatus.DRY_RUN}
    assert logs.count() == len(usage.windows(meter, customers))
    # A dry run does not count as sent: the real run still sends everything.
    real = run(now)
    assert real.events_sent == logs.count()
    assert sorted(
        ReportLog.objects.filter(run=real).values_list("identifier", "quantity")
    ) == sorted(logs.values_list("identifier", "quantity"))


def test_customer_not_in_stripe_is_skipped_with_reason_others_proceed(
    setup, fake_stripe, fake_openmeter, now
):
    from billing.models import Customer, SyncStatus

    meter, customers, usage = setup
    Customer.objects.create(name="Lonely", openmeter_subject="lonely")
    Customer.objects.create(
        name="Broken",
        openmeter_subject="broken",
        stripe_customer_id="cus_broken1",
        sync_status=SyncStatus.FAILED,
        sync_error="Stripe answered 400: bad email",
    )
    usage.add(meter, "lonely", hours_ago(now, 2), 4)
    usage.add(meter, "broken", hours_ago(now, 2), 4)
    result = run(now)
    assert result.status == RunStatus.PARTIAL
    assert "Customer 'lonely' skipped: it is not in Stripe yet" in result.error
    assert "Customer 'broken' skipped: its last sync to Stripe failed" in result.error
    assert not ReportLog.objects.filter(customer__openmeter_subject__in=["lonely", "broken"])
    assert billed(fake_stripe, meter) == usage.windows(meter, customers)


def test_unsynced_and_non_additive_meters_are_refused_with_reason(
    setup, fake_stripe, fake_openmeter, now
):
    from billing.models import Meter

    Meter.objects.create(name="Unsynced", openmeter_slug="unsynced")
    Meter.objects.filter(openmeter_slug="unsynced").update(stripe_meter_id="")
    fake_openmeter.add_meter("peak", aggregation="MAX")
    peak = Meter.objects.create(name="Peak", openmeter_slug="peak")
    Meter.objects.filter(pk=peak.pk).update(stripe_meter_id="mtr_fake123", sync_status="synced")
    result = run(now)
    assert result.status == RunStatus.PARTIAL
    assert "'unsynced' skipped: it is not in Stripe yet" in result.error
    assert "'peak' skipped: OpenMeter now aggregates it with MAX" in result.error
    assert result.events_sent > 0


def test_a_meter_held_by_another_run_is_skipped_with_reason(setup, fake_stripe, now, settings):
    """Another run (here a thread with its own database connection) holds the meter."""
    meter, _, _ = setup
    settings.REPORT_LOCK_WAIT_SECONDS = 0.3
    holding, release = threading.Event(), threading.Event()

    def other_run() -> None:
        with meter_lock(meter.pk, wait=0) as held:
            assert held
            holding.set()
            release.wait(30)
        connection.close()

    thread = threading.Thread(target=other_run)
    thread.start()
    assert holding.wait(10)
    try:
        result = run(now)
    finally:
        release.set()
        thread.join()
    assert "another run is reporting it right now" in result.error
    assert fake_stripe.count("POST", EVENTS) == 0
    assert run(now).events_sent > 0


def test_daily_meter_reports_whole_days(fake_stripe, fake_openmeter, now):
    meter = synced_meter(fake_openmeter, "storage_gb", window="day")
    customers = synced_customers(["acme"])
    usage = Usage(fake_openmeter)
    day = now.replace(hour=0, minute=0)
    usage.add(meter, "acme", day - timedelta(days=2) + timedelta(hours=3), 10)
    usage.add(meter, "acme", day - timedelta(days=2) + timedelta(hours=20), 5)
    usage.add(meter, "acme", day - timedelta(days=1) + timedelta(hours=1), 2)
    result = reporting.report_usage(
        trigger=Trigger.COMMAND, start=day - timedelta(days=3), end=day, now=now
    )
    assert result.status == RunStatus.SUCCEEDED
    assert billed(fake_stripe, meter) == usage.windows(meter, customers)


def test_a_lookback_reports_each_meters_own_closed_windows(fake_stripe, fake_openmeter, now):
    """report_usage without --from/--to, hourly and daily meters: the open day is not billed."""
    hourly = synced_meter(fake_openmeter, "api_calls")
    daily = synced_meter(fake_openmeter, "storage_gb", window="day")
    customers = synced_customers(["acme"])
    usage = Usage(fake_openmeter)
    day = now.replace(hour=0, minute=0)
    usage.add(daily, "acme", day - timedelta(days=1) + timedelta(hours=5), 7)
    usage.add(hourly, "acme", hours_ago(now, 2), 3)
    open_day = Usage(fake_openmeter)
    open_day.add(daily, "acme", day, 11)  # today: still open
    with clock.frozen(now):
        call_command("report_usage")
    run_ = ReportRun.objects.get()
    assert run_.mode == RunMode.LOOKBACK and run_.status == RunStatus.SUCCEEDED, run_.error
    assert billed(fake_stripe, daily) == usage.windows(daily, customers)
    assert billed(fake_stripe, hourly) == usage.windows(hourly, customers)
    assert not ReportLog.objects.filter(meter=daily, window_start__gte=day).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--from", "2026-11-20T13:00:00Z", "--to", "2026-11-20T12:00:00Z"],
            "must be before the end",
        ),
        (
            ["--from", "{h3}:30:00Z", "--to", "{h1}:00:00Z"],
            "is not on a hour boundary of meter 'api_calls': use",
        ),
        (
            ["--from", "{old}", "--to", "{h1}:00:00Z"],
            "Stripe only accepts usage from the last 35 days",
        ),
        (["--from", "{h3}:00:00Z", "--to", "{h0}:00:00Z"], "still-open hour window"),
        (["--meter", "nope"], "Unknown meter(s): nope"),
        (["--customer", "ghost"], "Unknown customer subject(s): ghost"),
        (["--from", "yesterday", "--to", "today"], "is not an ISO 8601 date"),
        (["--from", "{h3}:00:00Z"], "Give both a start and an end"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_sends_nothing(
    setup, fake_stripe, now, capsys, args, message
):
    from datetime import UTC, datetime

    real_now = datetime.now(UTC)
    values = {
        "h0": (real_now + timedelta(hours=1)).strftime("%Y-%m-%dT%H"),
        "h1": (real_now - timedelta(hours=1)).strftime("%Y-%m-%dT%H"),
        "h3": (real_now - timedelta(hours=3)).strftime("%Y-%m-%dT%H"),
        "old": (real_now - timedelta(days=40)).strftime("%Y-%m-%d"),
    }
    with pytest.raises(SystemExit) as exited:
        call_command("report_usage", *[a.format(**values) for a in args])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert fake_stripe.count("POST", EVENTS) == 0
    assert not ReportRun.objects.exists()


def test_command_summary_and_exit_codes(setup, fake_stripe, fake_openmeter, capsys):
    call_command("report_usage")  # the scheduled range, real clock: succeeds, exit 0
    out = capsys.readouterr().out
    assert "succeeded" in out and "sent" in out
    fake_openmeter.down = True
    with pytest.raises(SystemExit) as exited:
        call_command("report_usage")
    assert exited.value.code == 1
    fake_openmeter.down = False


def test_v2_stream_bills_the_same(setup, fake_stripe, now, settings):
    meter, customers, usage = setup
    settings.STRIPE_METER_EVENT_STREAM = True
    result = run(now)
    assert result.status == RunStatus.SUCCEEDED, result.error
    assert fake_stripe.count("POST", "/v2/billing/meter_event_stream") == 1  # 100 per batch
    assert fake_stripe.count("POST", EVENTS) == 0
    assert billed(fake_stripe, meter) == usage.windows(meter, customers)
    usage.add(meter, "acme", hours_ago(now, 2), 9)
    assert run(now).events_sent == 1
    assert billed(fake_stripe, meter) == usage.windows(meter, customers)
    assert not fake_stripe.async_errors


def test_v2_stream_renews_a_session_stripe_says_expired(setup, fake_stripe, now, settings):
    meter, customers, _ = setup
    settings.STRIPE_METER_EVENT_STREAM = True
    sender = make_sender()
    assert isinstance(sender, V2StreamSender)

    def event(value: int) -> MeterEvent:
        return MeterEvent(
            key=value,
            event_name=meter.event_name,
            stripe_customer_id=customers[0].stripe_customer_id,
            value=Decimal(value),
            timestamp=hours_ago(now, 2),
            identifier=f"test-{value}",
        )

    assert all(r.delivered for r in sender.send([event(1)]))
    real_clock = fake_stripe.clock
    fake_stripe.clock = lambda: real_clock() + 16 * 60  # the token's 15 minutes are over
    try:
        results = list(sender.send([event(2)]))
    finally:
        fake_stripe.clock = real_clock
    assert [r.delivered for r in results] == [True], results
    assert fake_stripe.count("POST", "/v2/billing/meter_event_session") == 2
    key = (customers[0].stripe_customer_id, int(hours_ago(now, 2).timestamp()))
    assert fake_stripe.billed_windows(meter.stripe_meter_id)[key] == 2


def test_sending_never_exceeds_the_configured_rate(stripe_process, fake_openmeter, now, settings):
    """Arrivals are stamped by the fake Stripe in its own process, as Stripe counts them."""
    settings.STRIPE_MAX_REQUESTS_PER_SECOND = 40
    settings.STRIPE_SEND_CONCURRENCY = 16
    meter = synced_meter(fake_openmeter)
    customers = synced_customers([f"c{i}" for i in range(30)])
    usage = Usage(fake_openmeter)
    for h in range(1, 5):
        for c in customers:
            usage.add(meter, c.openmeter_subject, hours_ago(now, h), h)
    result = run(now)
    assert result.events_sent == 120 and result.status == RunStatus.SUCCEEDED
    assert stripe_process.call("count", "POST", "/v1/billing/meter_events") == 120
    assert stripe_process.call("busiest_second", "POST", "/v1/billing/meter_events") <= 40
    windows = stripe_process.call("billed_windows", meter.stripe_meter_id)
    assert {k: Decimal(v) for k, v in windows.items()} == usage.windows(meter, customers)
    arrivals = stripe_process.call("arrivals", "POST", "/v1/billing/meter_events")
    assert arrivals[-1] - arrivals[0] >= (120 - 40) / 40 * 0.9  # paced, not bursted


def test_an_openmeter_refusing_unwindowed_totals_falls_back_to_windows(
    setup, fake_stripe, fake_openmeter, now
):
    meter, customers, usage = setup
    fake_openmeter.require_window_size = True
    usage.add(meter, "stranger", hours_ago(now, 2), 7)
    first = reporting.report_usage(trigger=Trigger.SCHEDULE, now=now)
    assert first.status == RunStatus.SUCCEEDED, first.error
    assert first.unmapped_subjects == 1 and first.unmapped_quantity == 7
    assert billed(fake_stripe, meter) == usage.windows(meter, customers)
    assert reporting.report_usage(trigger=Trigger.SCHEDULE, now=now).events_sent == 0


def test_scheduled_run_finds_late_usage_by_ranges_when_many_customers_changed(
    setup, fake_stripe, fake_openmeter, now, monkeypatch
):
    """With many customers changed, the scheduled run narrows the lookback by range totals."""
    monkeypatch.setattr(detect, "SUBJECT_FILTER_MAX", 0)
    meter, customers, usage = setup
    first = reporting.report_usage(trigger=Trigger.SCHEDULE, now=now)
    assert first.status == RunStatus.SUCCEEDED, first.error
    assert billed(fake_stripe, meter) == usage.windows(meter, customers)
    sent_before = fake_stripe.count("POST", EVENTS)
    # Late usage in an old window (and the newest one) for every customer.
    for customer in customers:
        usage.add(meter, customer.openmeter_subject, hours_ago(now, 5) + timedelta(minutes=3), 2)
        usage.add(meter, customer.openmeter_subject, hours_ago(now, 1) + timedelta(minutes=3), 1)
    queries_before = fake_openmeter.count("/api/v1/meters/api_calls/query")
    late = reporting.report_usage(trigger=Trigger.SCHEDULE, now=now)
    assert late.status == RunStatus.SUCCEEDED, late.error
    assert late.events_sent == 6
    assert fake_stripe.count("POST", EVENTS) == sent_before + 6
    assert billed(fake_stripe, meter) == usage.windows(meter, customers)
    # Range totals, not one query per customer or per window.
    assert fake_openmeter.count("/api/v1/meters/api_calls/query") - queries_before <= 12
    assert reporting.report_usage(trigger=Trigger.SCHEDULE, now=now).events_sent == 0


def test_a_run_reads_its_customers_in_one_query_whatever_their_number(
    setup, fake_stripe, fake_openmeter, now
):
    """A run reads only the customer fields it needs, in one query: a field it uses but does
    not read would cost a query per customer (skipped customers and their reason included).
    PostgreSQL's lock slots (a query each, at most 16 per meter) are not counted."""
    from django.test.utils import CaptureQueriesContext

    from billing.models import Customer, SyncStatus

    run(now)

    def queries_of_an_unchanged_run() -> tuple[ReportRun, int]:
        with CaptureQueriesContext(connection) as queries:
            result = run(now)
        assert result.events_sent == 0
        return result, sum("advisory" not in q["sql"] for q in queries.captured_queries)

    _, before = queries_of_an_unchanged_run()
    synced_customers([f"more-{i}" for i in range(8)])
    for i in range(3):
        Customer.objects.create(
            name=f"Broken {i}",
            openmeter_subject=f"broken-{i}",
            stripe_customer_id=f"cus_broken{i}",
            sync_status=SyncStatus.FAILED,
            sync_error="Stripe answered 400: bad email",
        )
    result, after = queries_of_an_unchanged_run()
    assert "Customer 'broken-2' skipped: its last sync to Stripe failed" in result.error
    assert after == before


def test_v2_stream_batch_refused_is_recorded_failed_with_stripes_words_and_sent_again(
    setup, fake_stripe, now, settings
):
    meter, customers, usage = setup
    settings.STRIPE_METER_EVENT_STREAM = True
    fake_stripe.fail_next(1, status=400, path_prefix="/v2/billing/meter_event_stream")
    first = run(now)
    assert first.status != RunStatus.SUCCEEDED
    failed = ReportLog.objects.filter(run=first, status=LogStatus.FAILED)
    assert failed.count() == first.events_failed == len(usage.windows(meter, customers))
    for log in failed:  # what Stripe said, and which request, for a person to follow up
        assert log.stripe_request_id.startswith("req_")
        assert log.error == (
            f"Stripe answered 400: fake_stripe injected fault. (request {log.stripe_request_id})"
        )
    assert billed(fake_stripe, meter) == {}
    again = run(now)
    assert again.status == RunStatus.SUCCEEDED, again.error
    assert billed(fake_stripe, meter) == usage.windows(meter, customers)
