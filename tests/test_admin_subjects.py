"""A customer's subjects in the admin: moving one (preview, then move and re-report) needs
billing.move_subjects and billing.rereport_usage; the inline is read-only once the customer is
billed; the dashboard's unmapped subjects link to "add this subject to a customer"."""

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from billing import reporting
from billing.models import Customer, CustomerSubject, ReportRun, SubjectMove, Trigger
from tests.helpers import billed
from tests.subjects import expected, make_companies

pytestmark = pytest.mark.django_db

MOVE = "/admin/billing/customer/move-subject/"
EVENTS = "/v1/billing/meter_events"
VIEW = ["view_customer", "view_reportrun", "view_subjectmove", "view_customersubject"]


@pytest.fixture
def companies(fake_stripe, fake_openmeter, frozen):
    setup = make_companies(fake_openmeter, frozen)
    run = reporting.report_usage(now=frozen, trigger=Trigger.COMMAND)
    assert run.status == "succeeded", run.error
    return setup


def login(client: Client, *codenames: str) -> Client:
    user = get_user_model().objects.create_user("finance", password="pw-1234-xyz", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=[*VIEW, *codenames]))
    client.force_login(user)
    return client


def preview(client: Client, *, subject: str, to: Customer | None, reason: str = "sold") -> Any:
    return client.post(
        MOVE,
        {
            "step": "preview",
            "subject": subject,
            "to_customer": to.pk if to else "",
            "reason": reason,
        },
    )


def test_preview_then_move_re_reports_both_customers(
    companies, client, fake_stripe, django_capture_on_commit_callbacks
):
    meter, customers, owner, usage = companies
    acme, globex, _ = customers
    login(client, "move_subjects", "rereport_usage")
    page = client.get(MOVE, {"subject": "acme-key2"})
    assert page.status_code == 200 and 'value="acme-key2"' in page.text

    sent_before = fake_stripe.count("POST", EVENTS)
    page = preview(client, subject="acme-key2", to=globex)
    assert page.status_code == 200
    shown = page.context["preview"]
    assert shown.complete and shown.windows_changed > 0
    assert {row.customer for row in shown.rows} == {acme, globex}
    assert 'id="move-button"' in page.text and "Would hold" in page.text
    # Nothing moved or sent yet.
    assert CustomerSubject.objects.get(subject="acme-key2").customer == acme
    assert fake_stripe.count("POST", EVENTS) == sent_before

    with django_capture_on_commit_callbacks(execute=True):
        done = client.post(
            MOVE, {"step": "confirm", "preview": shown.run.pk, "reason": "sold to globex"}
        )
    assert done.status_code == 302 and done.url == "/admin/billing/subjectmove/"
    move = SubjectMove.objects.get()
    assert (move.from_customer, move.to_customer, move.reason) == (acme, globex, "sold to globex")
    assert move.moved_by.username == "finance"
    assert ReportRun.objects.get(pk=move.run_id).status == "succeeded"
    owner["acme-key2"] = globex
    assert billed(fake_stripe, meter) == expected(usage, meter, owner)
    # The same preview cannot be confirmed twice.
    again = client.post(MOVE, {"step": "confirm", "preview": shown.run.pk, "reason": "x"})
    assert "already made" in again.text
    assert SubjectMove.objects.count() == 1


def test_staff_without_the_permission_cannot_move_through_any_page(
    companies, client, fake_stripe, django_capture_on_commit_callbacks
):
    _, customers, _, _ = companies
    acme, globex, _ = customers
    # A preview made by someone allowed, which the other tries to confirm.
    allowed = Client()
    login(allowed, "move_subjects", "rereport_usage")
    shown = preview(allowed, subject="acme-key2", to=globex).context["preview"]

    other = get_user_model().objects.create_user("viewer", password="pw-1234-xyz", is_staff=True)
    # Everything but billing.move_subjects; then that but not billing.rereport_usage.
    other.user_permissions.set(
        Permission.objects.filter(
            codename__in=[*VIEW, "change_customer", "add_customer", "rereport_usage"]
        )
    )
    client.force_login(other)
    sent_before = fake_stripe.count("POST", EVENTS)
    assert client.get(MOVE).status_code == 403
    assert preview(client, subject="acme-key2", to=globex).status_code == 403
    with django_capture_on_commit_callbacks(execute=True):
        answer = client.post(MOVE, {"step": "confirm", "preview": shown.run.pk, "reason": "x"})
    assert answer.status_code == 403
    other.user_permissions.set(
        Permission.objects.filter(codename__in=[*VIEW, "change_customer", "move_subjects"])
    )
    assert client.get(MOVE).status_code == 403
    assert preview(client, subject="acme-key2", to=globex).status_code == 403
    # The customer list offers no move; the change page's inline is read-only (billed customer).
    assert 'id="move-subject"' not in client.get("/admin/billing/customer/").text
    page = client.get(f"/admin/billing/customer/{acme.pk}/change/")
    assert page.status_code == 200 and 'name="subjects-0-subject"' not in page.text
    # Posting the inline anyway changes nothing.
    client.post(
        f"/admin/billing/customer/{acme.pk}/change/",
        {
            "name": acme.name,
            "openmeter_subject": acme.openmeter_subject,
            "active": "on",
            "subjects-TOTAL_FORMS": "1",
            "subjects-INITIAL_FORMS": "0",
            "subjects-0-subject": "globex-key2",
        },
    )
    assert not SubjectMove.objects.exists()
    assert CustomerSubject.objects.get(subject="acme-key2").customer == acme
    assert CustomerSubject.objects.get(subject="globex-key2").customer == globex
    assert fake_stripe.count("POST", EVENTS) == sent_before
    # Someone allowed cannot confirm another's preview either.
    second = Client()
    helper = get_user_model().objects.create_user("mover2", password="pw-1234-xyz", is_staff=True)
    helper.user_permissions.set(
        Permission.objects.filter(codename__in=[*VIEW, "move_subjects", "rereport_usage"])
    )
    second.force_login(helper)
    answer = second.post(MOVE, {"step": "confirm", "preview": shown.run.pk, "reason": "x"})
    assert "not yours" in answer.text and not SubjectMove.objects.exists()


def test_a_new_customer_s_subjects_are_edited_inline(fake_stripe, client):
    login(client, "move_subjects", "add_customer", "change_customer", "add_customersubject")
    answer = client.post(
        "/admin/billing/customer/add/",
        {
            "name": "Umbrella",
            "openmeter_subject": "umbrella-key1",
            "active": "on",
            "subjects-TOTAL_FORMS": "2",
            "subjects-INITIAL_FORMS": "0",
            "subjects-0-subject": "umbrella-key2",
            "subjects-1-subject": "umbrella-key3",
        },
    )
    assert answer.status_code == 302, answer.context["errors"] if answer.context else answer
    customer = Customer.objects.get(openmeter_subject="umbrella-key1")
    assert sorted(customer.subjects.values_list("subject", flat=True)) == [
        "umbrella-key2",
        "umbrella-key3",
    ]


def test_unmapped_subjects_link_to_adding_them_to_a_customer(companies, client):
    login(client, "move_subjects", "rereport_usage", "add_customer")
    page = client.get("/admin/")
    assert "stranger" in page.text
    assert f"{MOVE}?subject=stranger" in page.text


def test_any_subject_finds_its_customer_and_its_report_log(companies, client):
    login(client, "view_reportlog")
    page = client.get("/admin/billing/customer/", {"q": "globex-key3"})
    assert [c.name for c in page.context["cl"].result_list] == ["Globex-Key1"]
    logs = client.get("/admin/billing/reportlog/", {"q": "globex-key3"}).context["cl"].result_list
    assert logs and {log.customer.openmeter_subject for log in logs} == {"globex-key1"}
