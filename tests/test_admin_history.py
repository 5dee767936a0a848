"""The report history in the admin: runs and their progress, the log (read-only, filterable,
searchable, exported as streamed CSV) and the usage charts on customers and meters."""

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import urlencode

import pytest
from django.db import connection
from django.http import StreamingHttpResponse
from django.test.utils import CaptureQueriesContext

from billing import reporting
from billing.models import (
    Customer,
    LogStatus,
    Meter,
    ReportedWindow,
    ReportLog,
    ReportRun,
    RunStatus,
    Trigger,
)
from tests.helpers import Usage, hours_ago, synced_customers, synced_meter

pytestmark = pytest.mark.django_db

RUNS = "/admin/billing/reportrun/"
LOGS = "/admin/billing/reportlog/"


@pytest.fixture
def reported(fake_stripe, fake_openmeter, now, frozen):
    """A real run against the fakes: three customers, five hours of usage, all sent."""
    meter = synced_meter(fake_openmeter)
    customers = synced_customers(["acme", "globex", "initech"])
    usage = Usage(fake_openmeter)
    for h in range(1, 6):
        for i, customer in enumerate(customers):
            usage.add(meter, customer.openmeter_subject, hours_ago(now, h), h + i)
    run = reporting.report_usage(
        trigger=Trigger.COMMAND, start=hours_ago(now, 6), end=hours_ago(now, 0), now=now
    )
    assert run.status == RunStatus.SUCCEEDED, run.error
    return meter, customers, run


def make_logs(meter: Meter, customer: Customer, n: int, **fields: object) -> ReportRun:
    run = ReportRun.objects.create(
        trigger=Trigger.SCHEDULE,
        period_start=datetime(2026, 1, 1, tzinfo=UTC),
        period_end=datetime(2026, 1, 2, tzinfo=UTC),
    )
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ReportLog.objects.bulk_create(
        ReportLog(
            run=run,
            meter=meter,
            customer=customer,
            window_start=start + timedelta(hours=i),
            window_end=start + timedelta(hours=i + 1),
            quantity=Decimal(i),
            identifier=f"mb_{run.pk}_{i}",
            status=LogStatus.SENT,
            stripe_request_id=f"req_{run.pk}_{i}",
            **fields,
        )
        for i in range(n)
    )
    return run


# --- ReportRun -------------------------------------------------------------------------------


def test_run_list_shows_trigger_requester_period_status_counters_and_duration(
    reported, admin_client
):
    _, _, run = reported
    page = admin_client.get(RUNS)
    assert page.status_code == 200
    text = page.content.decode()
    for column in ("Trigger", "Period (UTC)", "Status", "Windows", "Duration"):
        assert column in text
    row = text[text.index(f"#{run.pk}") :]
    assert "Command" in row and "Succeeded" in row and " s<" in row
    assert f"{run.events_sent} sent" in row and "0 unchanged of 18 checked" in row


def test_history_is_read_only_even_for_a_superuser(reported, admin_client):
    _, _, run = reported
    log = ReportLog.objects.first()
    for base, pk in ((RUNS, run.pk), (LOGS, log.pk)):
        assert admin_client.get(f"{base}add/").status_code == 403
        assert admin_client.get(f"{base}{pk}/delete/").status_code == 403
        view = admin_client.get(f"{base}{pk}/change/")
        assert view.status_code == 200
        assert b'name="_save"' not in view.content
        assert admin_client.post(f"{base}{pk}/change/", {}).status_code == 403
    changelist = admin_client.get(LOGS)
    assert b"delete_selected" not in changelist.content
    assert ReportLog.objects.count() == run.events_sent


def test_run_page_follows_a_running_run_and_then_shows_its_log(
    fake_stripe, fake_openmeter, now, admin_client, frozen
):
    meter = synced_meter(fake_openmeter)
    synced_customers(["acme"])
    Usage(fake_openmeter).add(meter, "acme", hours_ago(now, 2), 5)
    request = reporting.RunRequest(
        trigger=Trigger.ADMIN, start=hours_ago(now, 3), end=hours_ago(now, 0)
    )
    run = reporting.start_run(request, now=now)
    page = admin_client.get(f"{RUNS}{run.pk}/change/")
    assert b"billing/run_progress.js" in page.content
    assert b'data-running="true"' in page.content
    progress = admin_client.get(f"{RUNS}{run.pk}/progress/").json()
    assert progress["running"] is True and progress["events_sent"] == 0
    assert progress["duration"].endswith("so far")

    reporting.execute_run(run)
    progress = admin_client.get(f"{RUNS}{run.pk}/progress/").json()
    assert progress == progress | {"running": False, "status": "succeeded", "events_sent": 1}
    page = admin_client.get(f"{RUNS}{run.pk}/change/")
    assert b"billing/run_progress.js" not in page.content
    assert b'class="mb-log"' in page.content and b"req_" in page.content
    assert f"{LOGS}?run__id__exact={run.pk}".encode() in page.content


def test_run_page_shows_errors(fake_stripe, fake_openmeter, now, admin_client, frozen):
    synced_meter(fake_openmeter, "peak")  # a SUM meter in Stripe...
    fake_openmeter.add_meter("peak", aggregation="MAX")  # ...that OpenMeter now takes the max of
    synced_customers(["acme"])
    run = reporting.report_usage(
        trigger=Trigger.COMMAND, start=hours_ago(now, 3), end=hours_ago(now, 0), now=now
    )
    page = admin_client.get(f"{RUNS}{run.pk}/change/").content.decode()
    assert "Failed" in page and "errornote" in page
    assert "OpenMeter now aggregates it with MAX, but its Stripe meter bills with" in page


def test_progress_needs_the_view_permission(reported, client, django_user_model):
    _, _, run = reported
    user = django_user_model.objects.create_user("nobody", password="x-12345-y", is_staff=True)
    client.force_login(user)
    assert client.get(f"{RUNS}{run.pk}/progress/").status_code == 403
    assert client.get(f"{LOGS}export.csv").status_code == 403


# --- ReportLog -------------------------------------------------------------------------------


def test_log_filters_search_date_hierarchy_and_stripe_links(reported, admin_client):
    meter, (acme, globex, _), run = reported
    ReportLog.objects.filter(customer=globex).update(
        status=LogStatus.FAILED, error="Stripe answered 400"
    )

    def listed(query: str) -> list[ReportLog]:
        response = admin_client.get(f"{LOGS}?{query}")
        assert response.status_code == 200, query
        return list(response.context["cl"].result_list)

    assert {log.customer_id for log in listed("status__exact=failed")} == {globex.pk}
    assert {log.customer_id for log in listed(f"customer__id__exact={acme.pk}")} == {acme.pk}
    assert len(listed(f"meter__id__exact={meter.pk}")) == run.events_sent
    today = datetime.now(UTC)
    midnight = today.replace(hour=0, minute=0, second=0, microsecond=0)
    assert len(listed(urlencode({"created_at__gte": str(midnight)}))) == run.events_sent
    assert len(listed(f"created_at__year={today.year}&created_at__month={today.month}")) == 15
    assert len(listed(f"run__id__exact={run.pk}")) == run.events_sent

    assert {log.customer_id for log in listed("q=glob")} == {globex.pk}
    assert {log.customer_id for log in listed(f"q={acme.stripe_customer_id}")} == {acme.pk}
    some = ReportLog.objects.filter(customer=acme).first()
    assert [log.pk for log in listed(f"q={some.identifier}")] == [some.pk]
    assert [log.pk for log in listed(f"q={some.stripe_request_id}")] == [some.pk]

    page = admin_client.get(LOGS).content.decode()
    assert f"https://dashboard.stripe.com/test/customers/{acme.stripe_customer_id}" in page
    assert 'class="toplinks"' in page  # the date hierarchy
    assert "15 report logs" in page


def test_log_changelist_never_counts_the_whole_table(admin_client, fake_stripe, fake_openmeter):
    meter = synced_meter(fake_openmeter)
    [acme] = synced_customers(["acme"])
    make_logs(meter, acme, 250)
    with CaptureQueriesContext(connection) as queries:
        page = admin_client.get(LOGS)
    assert page.status_code == 200
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    log_counts = [sql for sql in counts if "billing_reportlog" in sql]
    assert log_counts and all("LIMIT" in sql.upper() for sql in log_counts), log_counts
    assert not any("DISTINCT" in q["sql"].upper() for q in queries.captured_queries)
    assert "250 report logs" in page.content.decode()


def test_log_changelist_past_the_cap_says_more_than(
    admin_client, fake_stripe, fake_openmeter, monkeypatch
):
    from billing.admin.report_log import CappedCountPaginator

    monkeypatch.setattr(CappedCountPaginator, "cap", 100)
    meter = synced_meter(fake_openmeter)
    [acme] = synced_customers(["acme"])
    make_logs(meter, acme, 150)
    page = admin_client.get(LOGS).content.decode()
    assert "More than 100 report logs" in page
    assert len(admin_client.get(f"{LOGS}?p=2").context["cl"].result_list) == 1


def test_csv_export_streams_the_filtered_list(reported, admin_client):
    meter, (_, globex, _), run = reported
    Customer.objects.filter(pk=globex.pk).update(name="=HYPERLINK(1)")
    response = admin_client.get(f"{LOGS}export.csv?customer__id__exact={globex.pk}")
    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="report-log-')
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    expected = ReportLog.objects.filter(customer=globex).order_by("-created_at", "-id")
    assert [r["identifier"] for r in rows] == [log.identifier for log in expected]
    first = rows[0]
    assert first["customer_subject"] == "globex"
    assert first["customer_name"] == "'=HYPERLINK(1)"  # a spreadsheet must not run it
    assert first["meter"] == meter.openmeter_slug
    assert first["stripe_customer_id"] == globex.stripe_customer_id
    assert first["status"] == "sent" and first["stripe_request_id"].startswith("req_")
    assert first["window_start_utc"].endswith(":00:00Z")
    assert Decimal(first["value"]) == expected[0].quantity
    assert first["run"] == str(run.pk)


def test_the_history_says_who_asked_and_why(
    fake_stripe, fake_openmeter, now, frozen, admin_client, admin_user
):
    meter = synced_meter(fake_openmeter)
    synced_customers(["acme"])
    Usage(fake_openmeter).add(meter, "acme", hours_ago(now, 2), 4)
    reason = "=Usage corrected in OpenMeter, ticket FIN-42 " + "x" * 100
    run = reporting.report_usage(
        trigger=Trigger.ADMIN,
        start=hours_ago(now, 3),
        end=hours_ago(now, 0),
        requested_by=admin_user,
        reason=reason,
        now=now,
    )
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert ReportRun.objects.get(pk=run.pk).reason == reason
    run_list = admin_client.get(RUNS).content.decode()
    assert "by admin" in run_list and "=Usage corrected in OpenMeter, ticket FIN-42" in run_list
    assert f"“{reason}”" not in run_list and "x…”" in run_list  # shortened in the list...
    assert reason in admin_client.get(f"{RUNS}{run.pk}/change/").content.decode()  # ...not here
    assert admin_client.get(RUNS, {"q": "FIN-42"}).context["cl"].result_count == 1
    log = ReportLog.objects.get(run=run)
    log_list = admin_client.get(LOGS).content.decode()
    assert "admin: <span" in log_list and "ticket FIN-42" in log_list
    log_page = admin_client.get(f"{LOGS}{log.pk}/change/").content.decode()
    assert reason in log_page and "Requested by" in log_page
    response = admin_client.get(f"{LOGS}export.csv")
    [row] = csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode()))
    assert row["requested_by"] == "admin"
    assert row["run_reason"] == "'" + reason  # what a spreadsheet would run is kept as text


def test_csv_export_reads_in_chunks(admin_client, fake_stripe, fake_openmeter, monkeypatch):
    from billing import csv_export

    monkeypatch.setattr(csv_export, "CHUNK_ROWS", 100)
    meter = synced_meter(fake_openmeter)
    [acme] = synced_customers(["acme"])
    make_logs(meter, acme, 250)
    response = admin_client.get(f"{LOGS}export.csv")
    chunks = list(response.streaming_content)
    assert len(chunks) == 3  # header + 100, 100, 50 rows: never the whole table at once
    assert sum(chunk.count(b"\n") for chunk in chunks) == 251


# --- usage charts ------------------------------------------------------------------------------


def test_customer_and_meter_pages_chart_the_reported_usage_per_day(
    reported, admin_client, fake_openmeter, now
):
    meter, (acme, _, _), _ = reported
    other = synced_meter(fake_openmeter, "storage_gb", window="day")
    ReportedWindow.objects.create(
        meter=other,
        customer=acme,
        stripe_customer_id=acme.stripe_customer_id,
        window_start=now.replace(hour=0, minute=0) - timedelta(days=3),
        value=Decimal("42.5"),
    )
    ReportedWindow.objects.create(  # older than 30 days: not drawn
        meter=other,
        customer=acme,
        stripe_customer_id=acme.stripe_customer_id,
        window_start=now.replace(hour=0, minute=0) - timedelta(days=31),
        value=Decimal(1000),
    )
    acme_sent = sum(
        ReportedWindow.objects.filter(meter=meter, customer=acme).values_list("value", flat=True)
    )

    page = admin_client.get(f"/admin/billing/customer/{acme.pk}/change/").content.decode()
    assert page.count('<svg class="mb-chart"') == 2  # one per meter
    day = (now - timedelta(days=3)).date().isoformat()
    assert f"{day}: 42.5</title>" in page
    assert f"total {acme_sent.normalize():f}" in page
    assert "1000" not in page.split('id="usage-charts"')[1]

    meter_page = admin_client.get(f"/admin/billing/meter/{meter.pk}/change/").content.decode()
    assert meter_page.count('<svg class="mb-chart"') == 1
    all_sent = sum(ReportedWindow.objects.filter(meter=meter).values_list("value", flat=True))
    assert f"total {all_sent.normalize():f}" in meter_page
    assert "cdn" not in meter_page.lower()

    empty = admin_client.get(f"/admin/billing/meter/{other.pk}/change/")
    assert empty.status_code == 200
    new = synced_customers(["newco"])[0]
    assert (
        "No usage reported"
        in admin_client.get(f"/admin/billing/customer/{new.pk}/change/").content.decode()
    )
