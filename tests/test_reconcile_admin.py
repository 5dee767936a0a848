"""Reconciliation in the admin: started from the meter list (permission), read-only pages with
totals in money and a CSV, and "Report drifting windows again…" through the re-report preview."""

import re
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from billing import reconcile
from billing.integrations import stripe_sync
from billing.models import PriceMapping, Reconciliation, ReportRun, Trigger
from billing.roles import OPERATOR, VIEWER
from tests.helpers import hours_ago
from tests.reconciling import write_behind_our_back

pytestmark = pytest.mark.django_db


def staff(username: str, group: str) -> Any:
    user = get_user_model().objects.create_user(username, password="pw-12345-xyz", is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def drifted(reported, fake_stripe, frozen):
    meter, customers, _ = reported
    price = PriceMapping.objects.create(
        meter=meter, product_name="Calls", unit_amount_decimal=Decimal(2)
    )
    assert stripe_sync.sync_object(price), price.sync_error
    write_behind_our_back(fake_stripe, meter, customers[1], hours_ago(frozen, 3), "104")
    check = reconcile.execute_reconciliation(
        reconcile.start_reconciliation(reconcile.ReconcileRequest(trigger=Trigger.COMMAND))
    )
    assert check.drift == 1
    return check


def test_an_operator_reconciles_meters_from_their_list(
    client, reported, fake_stripe, django_capture_on_commit_callbacks
):
    meter = reported[0]
    user = staff("operator", OPERATOR)
    client.force_login(user)
    with django_capture_on_commit_callbacks(execute=True):  # the worker runs it (in-process)
        response = client.post(
            "/admin/billing/meter/",
            {"action": "reconcile_with_stripe", "_selected_action": [str(meter.pk)]},
        )
    check = Reconciliation.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/admin/billing/reconciliation/{check.pk}/change/"
    assert check.requested_by == user and check.trigger == Trigger.ADMIN
    assert check.finished_at is not None and check.matched == check.windows_compared > 0


def test_a_viewer_cannot_start_one(client, reported, fake_stripe):
    meter = reported[0]
    client.force_login(staff("viewer", VIEWER))
    page = client.get("/admin/billing/meter/")
    assert "reconcile_with_stripe" not in page.content.decode()
    response = client.post(
        "/admin/billing/meter/",
        {"action": "reconcile_with_stripe", "_selected_action": [str(meter.pk)]},
    )
    assert response.status_code == 403
    assert not Reconciliation.objects.exists()
    assert fake_stripe.count("GET", "/v1/billing/meters/") == 0


def test_the_page_shows_the_drift_its_value_and_a_csv(client, drifted):
    client.force_login(staff("viewer", VIEWER))
    page = client.get(f"/admin/billing/reconciliation/{drifted.pk}/change/")
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.content.decode()))
    # Stripe holds 104 where 4 was sent and OpenMeter has 4: 100 calls over, at 2 cents each.
    assert re.search(r"api_calls 216 215 0 1 0 -100 -2.00 USD", text), text
    assert "Drift (Stripe differs from what was sent)" in text
    assert "report_drift_again" not in page.content.decode()  # a viewer may not re-report
    csv = client.get(f"/admin/billing/reconciliation/{drifted.pk}/items.csv")
    lines = b"".join(csv.streaming_content).decode().splitlines()
    assert lines[0].startswith("reconciliation,meter,customer_subject")
    assert len(lines) == 2 and ",globex," in lines[1] and ",drift,4,4,104" in lines[1]
    # read-only for everyone, superusers included
    assert client.post(f"/admin/billing/reconciliation/{drifted.pk}/delete/").status_code == 403


def test_report_drifting_windows_again_goes_through_the_preview(client, drifted, frozen):
    client.force_login(staff("operator", OPERATOR))
    page = client.post(
        "/admin/billing/reconciliation/",
        {"action": "report_drift_again", "_selected_action": [str(drifted.pk)]},
    )
    assert page.status_code == 200 and "Re-report usage to Stripe" in page.content.decode()
    form = page.context["form"]
    assert form.initial["start"] == hours_ago(frozen, 3)
    assert form.initial["end"] == hours_ago(frozen, 2)
    assert page.context["selection"].customers[0].openmeter_subject == "globex"
    preview = client.post(
        "/admin/billing/reconciliation/",
        {
            "action": "report_drift_again",
            "_selected_action": [str(drifted.pk)],
            "step": "preview",
            "preset": "custom",
            "start": hours_ago(frozen, 3).strftime("%Y-%m-%dT%H:%M"),
            "end": hours_ago(frozen, 2).strftime("%Y-%m-%dT%H:%M"),
            "reason": "Drift found by reconciliation",
        },
    )
    shown = preview.context["preview"]
    assert shown is not None and shown.windows_changed == 1
    row = shown.rows[0]
    assert (row.old_total, row.new_total) == (Decimal(4), Decimal(4))  # resent though equal
    assert not ReportRun.objects.filter(dry_run=False, trigger=Trigger.ADMIN).exists()


def test_without_rereport_the_drift_action_is_refused(client, drifted):
    client.force_login(staff("viewer", VIEWER))
    response = client.post(
        "/admin/billing/reconciliation/",
        {"action": "report_drift_again", "_selected_action": [str(drifted.pk)]},
    )
    assert response.status_code == 403
