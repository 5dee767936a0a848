"""End to end in real Chromium, as finance staff work: log in, create a meter, a customer and a
price through the admin forms, re-report usage with a preview and a confirmation, then watch a
run finish on its page. Screenshots go to artifacts/."""

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from billing import reporting
from billing.models import (
    Customer,
    Meter,
    PriceMapping,
    ReportLog,
    ReportRun,
    RunStatus,
    SubjectMove,
    Trigger,
)
from tests.browser import ARTIFACTS
from tests.helpers import Usage, billed
from tests.subjects import expected, make_companies

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "finance-pw-2026"


def save(page: Any) -> None:
    """Save an add form; the admin then goes back to the list."""
    page.click('input[name="_save"]')
    page.wait_for_url(re.compile(r".*/admin/billing/\w+/$"))


def test_finance_rereports_usage_end_to_end(live_server, browser_page, fake_stripe, fake_openmeter):
    page = browser_page
    base = live_server.url
    get_user_model().objects.create_superuser("finance", "finance@example.com", PASSWORD)
    fake_openmeter.add_meter("api_calls", aggregation="SUM")

    # Log in.
    page.goto(f"{base}/admin/")
    page.fill("#id_username", "finance")
    page.fill("#id_password", PASSWORD)
    page.click('input[type="submit"]')
    page.wait_for_selector("#site-name")

    # A meter, a customer and a price, through the admin forms; each syncs to Stripe on save.
    page.goto(f"{base}/admin/billing/meter/add/")
    page.fill("#id_name", "API calls")
    page.fill("#id_openmeter_slug", "api_calls")
    page.select_option("#id_window", "hour")
    save(page)
    assert "Synced to Stripe" in page.inner_text(".messagelist")
    page.goto(f"{base}/admin/billing/customer/add/")
    page.fill("#id_name", "Acme Corp")
    page.fill("#id_email", "billing@acme.example")
    page.fill("#id_openmeter_subject", "acme")
    save(page)
    page.goto(f"{base}/admin/billing/pricemapping/add/")
    page.select_option("#id_meter", label="API calls (api_calls)")
    page.fill("#id_product_name", "API usage")
    page.fill("#id_unit_amount_decimal", "0.5")
    save(page)
    meter, customer = Meter.objects.get(), Customer.objects.get()
    price = PriceMapping.objects.get()
    assert meter.stripe_meter_id and customer.stripe_customer_id and price.stripe_price_id

    # Usage in OpenMeter over the last hours.
    usage = Usage(fake_openmeter)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    for h in range(1, 5):
        usage.add(meter, "acme", hour - timedelta(hours=h) + timedelta(minutes=10), 10 * h)
        usage.add(meter, "acme", hour - timedelta(hours=h) + timedelta(minutes=40), Decimal("0.5"))

    # Re-report usage… on the customer, with a preview.
    page.goto(f"{base}/admin/billing/customer/")
    page.check(f'input.action-select[value="{customer.pk}"]')
    page.select_option('select[name="action"]', "rereport_usage")
    page.click('button[name="index"]')
    page.wait_for_selector("#rereport-form")
    page.check('input[name="preset"][value="last_24_hours"]')
    page.fill("#id_reason", "Usage corrected in OpenMeter")
    page.click("#preview-button")
    page.wait_for_selector("#preview")
    assert page.inner_text("#preview-changed") == "4"
    windows = page.locator("#preview-windows tr.mb-window")
    assert windows.count() == 4
    new_values = sorted(Decimal(v) for v in windows.locator(".mb-new").all_inner_texts())
    assert new_values == [Decimal("10.5"), Decimal("20.5"), Decimal("30.5"), Decimal("40.5")]
    assert "102" in page.inner_text("#preview-totals")
    assert fake_stripe.count("POST", "/v1/billing/meter_events") == 0
    page.screenshot(path=str(ARTIFACTS / "rereport-preview.png"), full_page=True)

    # Report: the run is queued (inline in the tests) and its page shows it finished.
    page.click("#report-button")
    page.wait_for_url(re.compile(r".*/admin/billing/reportrun/\d+/change/$"))
    page.wait_for_selector(".mb-status-succeeded")
    assert page.locator("#run-logs tr.mb-log").count() == 4
    assert "req_" in page.inner_text("#run-logs")
    parts = page.inner_text("#parts-group")  # who did what: the preparation, then the meter
    assert "preparation" in parts and meter.openmeter_slug in parts
    page.screenshot(path=str(ARTIFACTS / "report-run.png"), full_page=True)
    run = ReportRun.objects.get(dry_run=False)
    assert run.requested_by.username == "finance" and run.trigger == Trigger.ADMIN
    assert run.reason == "Usage corrected in OpenMeter"
    sent = sorted(ReportLog.objects.filter(run=run).values_list("quantity", flat=True))
    assert sent == new_values  # what the preview showed is what was sent
    assert billed(fake_stripe, meter) == usage.windows(meter, [customer])

    # A run page follows a run while it works, and shows its log once it is done.
    usage.add(meter, "acme", hour - timedelta(hours=2), 5)
    running = reporting.start_run(
        reporting.RunRequest(
            trigger=Trigger.ADMIN,
            start=hour - timedelta(hours=6),
            end=hour,
            requested_by=run.requested_by,
        )
    )
    page.goto(f"{base}/admin/billing/reportrun/{running.pk}/change/")
    assert page.inner_text('[data-field="status_label"]') == "Running"
    reporting.execute_run(running)
    assert ReportRun.objects.get(pk=running.pk).status == RunStatus.SUCCEEDED
    page.wait_for_selector(".mb-status-succeeded", timeout=10_000)  # polled, then reloaded
    assert page.inner_text('[data-field="events_sent"]') == "1"
    assert page.locator("#run-logs tr.mb-log").count() == 1

    # The history: the runs, the log list with its CSV export, and the customer's usage chart.
    page.goto(f"{base}/admin/billing/reportrun/")
    assert page.locator("#result_list tbody tr").count() == 3  # the preview and two runs
    page.screenshot(path=str(ARTIFACTS / "report-runs.png"), full_page=True)
    page.goto(f"{base}/admin/billing/reportlog/")
    assert page.locator("#result_list tbody tr").count() == 9  # 4 previewed, 4 + 1 sent
    page.screenshot(path=str(ARTIFACTS / "report-log.png"), full_page=True)
    page.click('#changelist-filter a:has-text("Sent")')
    page.wait_for_url(re.compile(r".*status__exact=sent"), wait_until="load")
    from playwright.sync_api import expect  # the fixture has checked that playwright is there

    expect(page.locator("#result_list tbody tr")).to_have_count(5)
    with page.expect_download() as download:
        page.click("#export-csv")
    assert download.value.suggested_filename.startswith("report-log-")
    page.goto(f"{base}/admin/billing/customer/{customer.pk}/change/")
    assert page.locator("#usage-charts svg.mb-chart").count() == 1
    page.screenshot(path=str(ARTIFACTS / "customer-usage.png"), full_page=True)


def test_finance_moves_a_subject_with_a_preview(
    live_server, browser_page, fake_stripe, fake_openmeter
):
    page = browser_page
    base = live_server.url
    get_user_model().objects.create_superuser("finance", "finance@example.com", PASSWORD)
    meter, customers, owner, usage = make_companies(fake_openmeter, datetime.now(UTC))
    PriceMapping.objects.create(meter=meter, product_name="API usage", unit_amount_decimal=50)
    assert reporting.report_usage(trigger=Trigger.COMMAND).status == RunStatus.SUCCEEDED
    acme, globex, _ = customers

    page.goto(f"{base}/admin/")
    page.fill("#id_username", "finance")
    page.fill("#id_password", PASSWORD)
    page.click('input[type="submit"]')
    page.wait_for_selector("#site-name")
    # From the dashboard's unmapped subjects, and from the customer list.
    assert page.locator("a.mb-add-subject").count() == 1
    page.goto(f"{base}/admin/billing/customer/")
    page.click("#move-subject")
    page.fill("#id_subject", "acme-key2")
    page.select_option("#id_to_customer", str(globex.pk))
    page.fill("#id_reason", "Key sold to Globex")
    page.click("#preview-button")
    page.wait_for_selector("#preview")
    page.screenshot(path=str(ARTIFACTS / "move-subject-preview.png"), full_page=True)
    assert "USD" in page.inner_text("#preview-totals")
    assert not SubjectMove.objects.exists()
    page.click("#move-button")
    page.wait_for_url(re.compile(r".*/admin/billing/subjectmove/(#preview)?$"))
    page.screenshot(path=str(ARTIFACTS / "subject-moves.png"), full_page=True)
    assert "Moved acme-key2" in page.inner_text(".messagelist")
    owner["acme-key2"] = globex
    assert billed(fake_stripe, meter) == expected(usage, meter, owner)
    page.goto(f"{base}/admin/billing/customer/{acme.pk}/change/")
    page.screenshot(path=str(ARTIFACTS / "customer-subjects.png"), full_page=True)
    assert "acme-key3" in page.inner_text("#subjects-group")
