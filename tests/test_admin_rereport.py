"""Re-reporting from the admin, as finance staff do it: choose a period, read the preview, report.

Against the fake Stripe and OpenMeter; django-q runs the queued run inline (sync test settings).
"""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from billing import clock, windows
from billing.integrations import stripe_sync
from billing.models import (
    Customer,
    LogStatus,
    Meter,
    PriceMapping,
    ReportLog,
    ReportRun,
    RunStatus,
    Subscription,
    SyncStatus,
    Trigger,
)
from billing.reporting.presets import period_presets
from billing.reporting.selection import Selection, select_customers
from tests.helpers import Usage, billed, hours_ago, synced_customers, synced_meter

pytestmark = pytest.mark.django_db

CUSTOMERS = "/admin/billing/customer/"
METERS = "/admin/billing/meter/"
RUNS = "/admin/billing/reportrun/"
EVENTS = "/v1/billing/meter_events"
REASON = "OpenMeter usage corrected (ticket FIN-42)"


@pytest.fixture
def setup(fake_stripe, fake_openmeter, frozen):
    meter = synced_meter(fake_openmeter)
    customers = synced_customers(["acme", "globex", "initech"])
    usage = Usage(fake_openmeter)
    for h in range(1, 6):
        for i, customer in enumerate(customers):
            usage.add(meter, customer.openmeter_subject, hours_ago(frozen, h), h * (i + 1))
            usage.add(meter, customer.openmeter_subject, hours_ago(frozen, h), Decimal("0.25"))
    return meter, customers, usage


def make_user(*, rereport_allowed: bool, username: str = "finance") -> Any:
    user = get_user_model().objects.create_user(username, password="pw-12345-xyz", is_staff=True)
    codenames = ["view_customer", "view_meter", "view_reportrun", "view_reportlog"]
    if rereport_allowed:
        codenames.append("rereport_usage")
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def finance(client: Client) -> Client:
    client.force_login(make_user(rereport_allowed=True))
    return client


def utc_input(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")


def open_page(client: Client, url: str, pks: list[int], action: str = "rereport_usage") -> Any:
    return client.post(url, {"action": action, "_selected_action": [str(pk) for pk in pks]})


def preview_post(
    client: Client, url: str, pks: list[int], *, start: datetime, end: datetime, **extra: Any
) -> Any:
    data = {
        "action": "rereport_usage",
        "_selected_action": [str(pk) for pk in pks],
        "step": "preview",
        "preset": "custom",
        "start": utc_input(start),
        "end": utc_input(end),
        "reason": REASON,
        **extra,
    }
    return client.post(url, data)


def confirm_post(client: Client, url: str, pks: list[int], preview_id: int, **extra: Any) -> Any:
    data = {
        "action": "rereport_usage",
        "_selected_action": [str(pk) for pk in pks],
        "step": "confirm",
        "preview": str(preview_id),
        **extra,
    }
    return client.post(url, data)


def form_errors(response: Any) -> str:
    return " ".join(response.context["form"].non_field_errors())


def test_preview_sends_nothing_and_report_sends_exactly_the_previewed_numbers(
    setup, finance, fake_stripe, frozen, django_capture_on_commit_callbacks
):
    meter, customers, usage = setup
    pks = [c.pk for c in customers[:2]]

    page = open_page(finance, CUSTOMERS, pks)
    assert page.status_code == 200
    assert page.templates[0].name == "admin/billing/rereport.html"
    assert b"csrfmiddlewaretoken" in page.content
    assert [c.openmeter_subject for c in page.context["selection"].customers] == ["acme", "globex"]

    start, end = hours_ago(frozen, 6), hours_ago(frozen, 0)
    response = preview_post(finance, CUSTOMERS, pks, start=start, end=end)
    assert response.status_code == 200, form_errors(response)
    preview = response.context["preview"]
    assert preview is not None and preview.complete
    assert fake_stripe.count("POST", EVENTS) == 0  # nothing goes to Stripe before the confirmation
    assert preview.run.dry_run and preview.run.trigger == Trigger.ADMIN
    expected = {
        k: v for k, v in usage.windows(meter, customers[:2]).items() if start.timestamp() <= k[1]
    }
    assert preview.windows_changed == len(expected) == 10
    shown = {
        (row.customer.stripe_customer_id, int(change.window_start.timestamp())): change.new
        for row in preview.rows
        for change in row.changes
    }
    assert shown == expected
    assert [t.new_total for t in preview.meters] == [sum(expected.values())]
    assert all(change.old is None for row in preview.rows for change in row.changes)
    assert b"Report 10 windows to Stripe" in response.content

    with django_capture_on_commit_callbacks(execute=True):
        confirmed = confirm_post(finance, CUSTOMERS, pks, preview.run.pk)
    run = ReportRun.objects.exclude(pk=preview.run.pk).get()
    assert confirmed.status_code == 302
    assert confirmed["Location"] == f"{RUNS}{run.pk}/change/"
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert not run.dry_run and run.trigger == Trigger.ADMIN
    assert run.requested_by.username == "finance"
    assert run.reason == preview.run.reason == REASON  # the why, on the preview and the run
    [entry] = LogEntry.objects.filter(object_id=str(run.pk), user__username="finance")
    assert entry.is_addition() and REASON in entry.change_message
    assert (run.period_start, run.period_end) == (start, end)
    # What the preview showed is what was sent, window by window.
    columns = ("meter_id", "customer_id", "window_start", "quantity", "previous_quantity")
    sent = set(ReportLog.objects.filter(run=run, status=LogStatus.SENT).values_list(*columns))
    previewed = set(ReportLog.objects.filter(run=preview.run).values_list(*columns))
    assert sent == previewed and len(sent) == 10
    assert billed(fake_stripe, meter) == expected


def test_preview_of_a_correction_shows_old_and_new_values(
    setup, finance, fake_stripe, frozen, django_capture_on_commit_callbacks
):
    meter, customers, usage = setup
    acme = customers[0]
    start, end = hours_ago(frozen, 6), hours_ago(frozen, 0)
    response = preview_post(finance, CUSTOMERS, [acme.pk], start=start, end=end)
    with django_capture_on_commit_callbacks(execute=True):
        confirm_post(finance, CUSTOMERS, [acme.pk], response.context["preview"].run.pk)
    usage.add(meter, "acme", hours_ago(frozen, 3), 7)  # a late correction in OpenMeter

    again = preview_post(finance, CUSTOMERS, [acme.pk], start=start, end=end)
    preview = again.context["preview"]
    assert preview.windows_changed == 1
    [row] = preview.rows
    [change] = row.changes
    assert change.window_start == hours_ago(frozen, 3)
    assert (change.old, change.new) == (Decimal("3.25"), Decimal("10.25"))
    assert preview.run.events_unchanged == 4
    assert b"3.25" in again.content and b"10.25" in again.content and b"+7" in again.content
    with django_capture_on_commit_callbacks(execute=True):
        confirm_post(finance, CUSTOMERS, [acme.pk], preview.run.pk)
    assert (
        billed(fake_stripe, meter)[(acme.stripe_customer_id, int(change.window_start.timestamp()))]
        == 10.25
    )


def test_meter_selection_reports_every_active_customer(
    setup, finance, fake_stripe, frozen, django_capture_on_commit_callbacks
):
    meter, customers, usage = setup
    response = preview_post(
        finance, METERS, [meter.pk], start=hours_ago(frozen, 6), end=hours_ago(frozen, 0)
    )
    preview = response.context["preview"]
    assert response.context["selection"].customers is None  # every active customer
    assert preview.windows_changed == 15
    with django_capture_on_commit_callbacks(execute=True):
        confirm_post(finance, METERS, [meter.pk], preview.run.pk)
    assert billed(fake_stripe, meter) == usage.windows(meter, customers)


@pytest.mark.parametrize(
    ("start_hours", "end_hours", "message"),
    [
        (40 * 24, 1, "Stripe only accepts usage from the last 35 days"),
        (3, 0, None),  # valid: ends where the open window starts
        (3, -1, "reaches into the still-open hour window"),
        (3, -30, "The period ends in the future"),
        (-2, -5, "The period ends in the future"),
        (2, 4, "must be before the end"),
    ],
)
def test_periods_stripe_cannot_take_are_refused_on_the_form(
    setup, finance, fake_stripe, frozen, start_hours, end_hours, message
):
    _, customers, _ = setup
    response = preview_post(
        finance,
        CUSTOMERS,
        [customers[0].pk],
        start=hours_ago(frozen, start_hours),
        end=hours_ago(frozen, end_hours),
    )
    assert response.status_code == 200
    if message is None:
        assert response.context["preview"] is not None
        return
    assert message in form_errors(response)
    assert message.encode() in response.content
    assert response.context["preview"] is None
    assert not ReportRun.objects.exists()


def test_a_period_off_the_window_boundaries_says_which_would_work(
    setup, finance, fake_stripe, fake_openmeter, frozen
):
    daily = synced_meter(fake_openmeter, "storage_gb", window="day")
    response = preview_post(
        finance,
        METERS,
        [daily.pk],
        start=hours_ago(frozen, 30),
        end=frozen.replace(hour=0, minute=0),
    )
    assert "is not on a day boundary of meter 'storage_gb': use" in form_errors(response)


def test_custom_period_needs_both_ends(setup, finance, frozen):
    _, customers, _ = setup
    response = finance.post(
        CUSTOMERS,
        {
            "action": "rereport_usage",
            "_selected_action": [str(customers[0].pk)],
            "step": "preview",
            "preset": "custom",
            "start": utc_input(hours_ago(frozen, 3)),
            "reason": REASON,
        },
    )
    assert "Give both the start and the end" in form_errors(response)


@pytest.mark.parametrize("reason", [None, "", "   "])
def test_a_re_report_without_a_reason_is_refused_and_starts_nothing(
    setup, finance, fake_stripe, frozen, reason
):
    _, customers, _ = setup
    data = {
        "action": "rereport_usage",
        "_selected_action": [str(customers[0].pk)],
        "step": "preview",
        "preset": "custom",
        "start": utc_input(hours_ago(frozen, 3)),
        "end": utc_input(hours_ago(frozen, 0)),
    }
    if reason is not None:
        data["reason"] = reason
    response = finance.post(CUSTOMERS, data)
    assert response.status_code == 200
    message = "Give the reason for this re-report"
    assert message in " ".join(response.context["form"].errors["reason"])
    assert message.encode() in response.content
    assert response.context["preview"] is None
    assert not ReportRun.objects.exists()
    assert fake_stripe.count("POST", EVENTS) == 0


def test_a_preview_without_a_reason_cannot_be_confirmed(setup, finance, frozen):
    _, customers, _ = setup
    pks = [customers[0].pk]
    response = preview_post(
        finance, CUSTOMERS, pks, start=hours_ago(frozen, 3), end=hours_ago(frozen, 0)
    )
    preview_run = response.context["preview"].run
    ReportRun.objects.filter(pk=preview_run.pk).update(reason="")  # e.g. made before the rule
    refused = confirm_post(finance, CUSTOMERS, pks, preview_run.pk)
    assert "Say why this period is reported again" in " ".join(refused.context["errors"])
    assert not ReportRun.objects.filter(dry_run=False).exists()


def test_inactive_and_unsynced_are_listed_and_left_out(
    setup, finance, fake_stripe, frozen, django_capture_on_commit_callbacks
):
    _, customers, _ = setup
    _, globex, initech = customers
    Customer.objects.filter(pk=globex.pk).update(active=False)
    Customer.objects.filter(pk=initech.pk).update(
        sync_status=SyncStatus.FAILED, sync_error="Stripe answered 400: bad email"
    )
    pks = [c.pk for c in customers]
    page = open_page(finance, CUSTOMERS, pks)
    left_out = {
        item.obj.openmeter_subject: item.reason for item in page.context["selection"].left_out
    }
    assert left_out == {
        "globex": "inactive",
        "initech": "its last sync to Stripe failed (Stripe answered 400: bad email): fix it and "
        "sync again",
    }
    assert b"Left out" in page.content and b"bad email" in page.content
    response = preview_post(
        finance, CUSTOMERS, pks, start=hours_ago(frozen, 6), end=hours_ago(frozen, 0)
    )
    preview = response.context["preview"]
    assert preview.run.customer_subjects == ["acme"]
    assert {row.customer.openmeter_subject for row in preview.rows} == {"acme"}


def test_a_selection_with_nothing_reportable_is_refused(setup, finance, frozen):
    _, customers, _ = setup
    Customer.objects.filter(pk=customers[0].pk).update(active=False)
    page = open_page(finance, CUSTOMERS, [customers[0].pk])
    assert "Nothing to report: the selection has no active customer that is in Stripe." in (
        page.context["selection"].problems
    )
    assert b"Preview" not in page.content.split(b"errornote")[-1]
    response = preview_post(
        finance, CUSTOMERS, [customers[0].pk], start=hours_ago(frozen, 3), end=hours_ago(frozen, 0)
    )
    assert response.context["preview"] is None
    assert not ReportRun.objects.exists()


def test_an_empty_selection_is_refused_by_the_changelist(setup, finance):
    # As the changelist's "Go" button posts it, with no row ticked.
    response = finance.post(CUSTOMERS, {"action": "rereport_usage", "index": "0"}, follow=True)
    assert "Items must be selected" in " ".join(str(m) for m in response.context["messages"])
    assert not ReportRun.objects.exists()


def test_without_the_permission_the_action_is_hidden_and_posting_is_403(
    setup, client, fake_stripe, frozen
):
    _, customers, _ = setup
    client.force_login(make_user(rereport_allowed=False, username="viewer"))
    page = client.get(CUSTOMERS)
    assert page.status_code == 200
    assert b"rereport_usage" not in page.content
    assert open_page(client, CUSTOMERS, [customers[0].pk]).status_code == 403
    assert open_page(client, METERS, [Meter.objects.get().pk]).status_code == 403
    response = preview_post(
        client, CUSTOMERS, [customers[0].pk], start=hours_ago(frozen, 3), end=hours_ago(frozen, 0)
    )
    assert response.status_code == 403
    assert client.get(f"{RUNS}1/report-again/").status_code == 403
    assert open_page(client, RUNS, [1], action="report_again").status_code == 403
    assert not ReportRun.objects.exists()
    assert fake_stripe.count("POST", EVENTS) == 0


def test_confirming_someone_elses_or_a_stale_preview_is_refused(setup, finance, client, frozen):
    _, customers, _ = setup
    pks = [customers[0].pk]
    response = preview_post(
        finance, CUSTOMERS, pks, start=hours_ago(frozen, 3), end=hours_ago(frozen, 0)
    )
    preview_id = response.context["preview"].run.pk
    other = Client()
    other.force_login(make_user(rereport_allowed=True, username="other"))
    refused = confirm_post(other, CUSTOMERS, pks, preview_id)
    assert "not yours to confirm" in " ".join(refused.context["errors"])
    later = frozen + timedelta(hours=2)
    with clock.frozen(later):
        stale = confirm_post(finance, CUSTOMERS, pks, preview_id)
    assert "more than an hour old" in " ".join(stale.context["errors"])
    assert not ReportRun.objects.filter(dry_run=False).exists()


def test_report_this_period_again_from_a_run(
    setup, finance, fake_stripe, frozen, django_capture_on_commit_callbacks
):
    meter, customers, usage = setup
    acme = customers[0]
    first = preview_post(
        finance, CUSTOMERS, [acme.pk], start=hours_ago(frozen, 4), end=hours_ago(frozen, 1)
    ).context["preview"]
    with django_capture_on_commit_callbacks(execute=True):
        confirm_post(finance, CUSTOMERS, [acme.pk], first.run.pk)
    run = ReportRun.objects.get(dry_run=False)

    detail = finance.get(f"{RUNS}{run.pk}/change/")
    assert f"{RUNS}{run.pk}/report-again/".encode() in detail.content
    page = finance.get(f"{RUNS}{run.pk}/report-again/")
    assert page.status_code == 200
    form = page.context["form"]
    assert form["preset"].value() == "run"
    assert page.context["post_url"] == RUNS
    usage.add(meter, "acme", hours_ago(frozen, 2), 1)
    hidden = dict(page.context["hidden"])
    response = finance.post(
        RUNS, {**hidden, "step": "preview", "preset": "run", "reason": "late usage"}
    )
    preview = response.context["preview"]
    assert preview.run.customer_subjects == ["acme"]
    assert (preview.run.period_start, preview.run.period_end) == (run.period_start, run.period_end)
    assert preview.windows_changed == 1
    with django_capture_on_commit_callbacks(execute=True):
        done = finance.post(RUNS, {**hidden, "step": "confirm", "preview": preview.run.pk})
    assert done.status_code == 302
    assert ReportRun.objects.filter(dry_run=False).latest("pk").reason == "late usage"
    assert billed(fake_stripe, meter)[
        (acme.stripe_customer_id, int(hours_ago(frozen, 2).timestamp()))
    ] == Decimal("3.25")


def test_presets_are_aligned_and_say_why_one_cannot_be_used(fake_stripe, fake_openmeter):
    now = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)
    hourly = synced_meter(fake_openmeter)
    [acme] = synced_customers(["acme"])
    selection = select_customers(customers=[acme])
    presets = {p.key: p for p in period_presets(selection=selection, now=now)}
    hour = datetime(2026, 11, 21, 9, tzinfo=UTC)
    day = datetime(2026, 11, 21, tzinfo=UTC)
    assert (presets["last_24_hours"].start, presets["last_24_hours"].end) == (
        hour - timedelta(hours=24),
        hour,
    )
    assert (presets["yesterday"].start, presets["yesterday"].end) == (day - timedelta(days=1), day)
    assert (presets["this_month"].start, presets["this_month"].end) == (
        datetime(2026, 11, 1, tzinfo=UTC),
        hour,
    )
    assert presets["last_month"].start == datetime(2026, 10, 1, tzinfo=UTC)
    assert "Stripe only accepts usage from the last 35 days" in presets["last_month"].problem
    assert presets["billing_period"].problem == "no Stripe subscription bills this selection"
    assert not any(
        p.problem for k, p in presets.items() if k not in {"last_month", "billing_period"}
    )

    hourly.window = "day"  # a daily meter in the selection puts every preset on whole days
    daily = period_presets(selection=Selection(meters=[hourly], customers=[acme]), now=now)
    assert {(p.start, p.end) for p in daily if p.key == "last_24_hours"} == {
        (day - timedelta(days=1), day)
    }


def test_billing_period_preset_reads_the_subscription_from_stripe(
    fake_stripe, fake_openmeter, frozen
):
    meter = synced_meter(fake_openmeter)
    [acme] = synced_customers(["acme"])
    price = PriceMapping.objects.create(
        meter=meter, product_name="API", unit_amount_decimal=Decimal("0.5")
    )
    stripe_sync.sync_object(price)  # a save syncs only through the admin: sync as it would
    sub = Subscription.objects.create(customer=acme)
    sub.prices.add(price)
    stripe_sync.sync_object(sub)
    sub.refresh_from_db()
    assert sub.stripe_subscription_id, sub.sync_error
    selection = select_customers(customers=[acme])
    [preset] = [
        p for p in period_presets(selection=selection, now=frozen) if p.key == "billing_period"
    ]
    remote = fake_stripe.objects["subscription"][sub.stripe_subscription_id]
    started = datetime.fromtimestamp(remote["items"]["data"][0]["current_period_start"], UTC)
    assert preset.start == windows.floor(started, "hour")
    assert preset.end == windows.floor(frozen, "hour")


def test_the_page_is_csrf_protected(setup, frozen):
    client = Client(enforce_csrf_checks=True)
    client.force_login(make_user(rereport_allowed=True))
    _, customers, _ = setup
    assert open_page(client, CUSTOMERS, [customers[0].pk]).status_code == 403
    assert not ReportRun.objects.exists()


def test_pressing_report_twice_starts_one_run(
    setup, finance, fake_stripe, frozen, django_capture_on_commit_callbacks
):
    _, customers, _ = setup
    pks = [customers[0].pk]
    response = preview_post(
        finance, CUSTOMERS, pks, start=hours_ago(frozen, 3), end=hours_ago(frozen, 0)
    )
    preview_id = response.context["preview"].run.pk
    with django_capture_on_commit_callbacks(execute=True):
        first = confirm_post(finance, CUSTOMERS, pks, preview_id)
        second = confirm_post(finance, CUSTOMERS, pks, preview_id)
    assert first["Location"] == second["Location"]
    assert ReportRun.objects.filter(dry_run=False).count() == 1
    assert fake_stripe.count("POST", EVENTS) == 3


def test_without_the_run_view_permission_the_confirmation_returns_to_the_list(
    setup, client, frozen, django_capture_on_commit_callbacks
):
    _, customers, _ = setup
    user = make_user(rereport_allowed=True)
    user.user_permissions.remove(Permission.objects.get(codename="view_reportrun"))
    client.force_login(user)
    pks = [customers[0].pk]
    response = preview_post(
        client, CUSTOMERS, pks, start=hours_ago(frozen, 3), end=hours_ago(frozen, 0)
    )
    with django_capture_on_commit_callbacks(execute=True):
        done = confirm_post(client, CUSTOMERS, pks, response.context["preview"].run.pk)
    assert done["Location"] == CUSTOMERS
    assert ReportRun.objects.get(dry_run=False).status == RunStatus.SUCCEEDED
