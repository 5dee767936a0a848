"""Customers linked to OpenMeter customers: the import (command and admin), the subject keys
OpenMeter attributes to them billed as theirs, and a subject moved in OpenMeter followed by the
next run: audited, both customers re-reported, each billed the sum over its subjects."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import call_command

from billing import openmeter_attribution, reporting
from billing.integrations.stripe_sync import sync_object
from billing.models import Customer, CustomerSubject, RunStatus, SubjectMove, Trigger
from tests.helpers import Usage, billed, hours_ago, synced_meter
from tests.subjects import expected

pytestmark = pytest.mark.django_db

COMPANIES = {"acme": ["acme-a", "acme-b", "acme-c"], "globex": ["globex-a", "globex-b"]}
IMPORT = "/admin/billing/customer/import-openmeter/"


@pytest.fixture
def openmeter_customers(fake_openmeter):
    return {
        key: fake_openmeter.add_customer(name=key.title(), key=key, subject_keys=subjects)
        for key, subjects in COMPANIES.items()
    }


def owners() -> dict[str, Customer]:
    result = {c.openmeter_subject: c for c in Customer.objects.all()}
    result.update({row.subject: row.customer for row in CustomerSubject.objects.all()})
    return result


def test_import_creates_customers_with_their_subjects_and_a_rerun_changes_nothing(
    openmeter_customers, fake_stripe, capsys
):
    call_command("import_openmeter_customers", "--dry-run")
    said = capsys.readouterr().out
    assert "created" in said and "Acme" in said and "acme-a, acme-b, acme-c" in said
    assert "would be 2 created" in said
    assert not Customer.objects.exists()

    call_command("import_openmeter_customers")
    said = capsys.readouterr().out
    assert "2 created" in said
    acme = Customer.objects.get(openmeter_customer_id=openmeter_customers["acme"]["id"])
    assert acme.openmeter_subject == "acme" and acme.stripe_customer_id
    assert sorted(acme.subjects.values_list("subject", flat=True)) == COMPANIES["acme"]
    assert SubjectMove.objects.filter(to_customer=acme, from_customer=None).count() == 3

    call_command("import_openmeter_customers")
    assert "2 unchanged" in capsys.readouterr().out
    assert Customer.objects.count() == 2 and SubjectMove.objects.count() == 5


def test_import_links_an_existing_customer_and_leaves_a_differently_linked_one_alone(
    openmeter_customers, fake_openmeter, fake_stripe, capsys
):
    existing = Customer.objects.create(name="ACME Corp", openmeter_subject="acme-b")
    other = Customer.objects.create(
        name="Globex here", openmeter_subject="globex", openmeter_customer_id="01OTHER"
    )
    call_command("import_openmeter_customers")
    said = capsys.readouterr().out
    assert "linked" in said and "to ACME Corp" in said
    assert "left alone" in said and "Globex here is linked to OpenMeter customer 01OTHER" in said
    existing.refresh_from_db()
    other.refresh_from_db()
    assert existing.openmeter_customer_id == openmeter_customers["acme"]["id"]
    assert other.openmeter_customer_id == "01OTHER"  # not overwritten
    # Its OpenMeter subject keys, and the OpenMeter key (OpenMeter attributes that usage too).
    assert sorted(existing.subjects.values_list("subject", flat=True)) == [
        "acme",
        "acme-a",
        "acme-c",
    ]
    assert not other.subjects.exists()


def test_import_from_the_admin_needs_add_and_change_customer_and_rereport(
    openmeter_customers, fake_stripe, client
):
    user = get_user_model().objects.create_user("finance", password="pw-1234-xyz", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename="view_customer"))
    client.force_login(user)
    assert client.get(IMPORT).status_code == 403
    assert client.post(IMPORT).status_code == 403
    bystander = Customer.objects.create(name="Bystander", openmeter_subject="bystander")
    action = {"action": "import_from_openmeter", "_selected_action": [str(bystander.pk)]}
    answer = client.post("/admin/billing/customer/", action)
    assert answer.get("Location") != IMPORT
    assert Customer.objects.count() == 1

    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["add_customer", "change_customer"])
    )
    assert client.get(IMPORT).status_code == 403  # the import may re-report: needs that too
    user.user_permissions.add(Permission.objects.get(codename="rereport_usage"))
    user = get_user_model().objects.get(pk=user.pk)  # permissions are cached on the instance
    client.force_login(user)
    assert client.post("/admin/billing/customer/", action).get("Location") == IMPORT
    page = client.get(IMPORT)
    assert page.status_code == 200 and "Would be: 2 created" in page.text
    assert Customer.objects.count() == 1
    page = client.post(IMPORT)
    assert page.status_code == 200 and "2 created" in page.text
    assert Customer.objects.count() == 3


def test_a_subject_moved_in_openmeter_moves_its_usage_at_the_next_run(
    openmeter_customers, fake_openmeter, fake_stripe, frozen
):
    meter = synced_meter(fake_openmeter)
    call_command("import_openmeter_customers")
    usage = Usage(fake_openmeter)
    subjects = [s for keys in COMPANIES.values() for s in keys]
    for h in range(1, 6):
        for n, subject in enumerate(subjects):
            usage.add(meter, subject, hours_ago(frozen, h) + timedelta(minutes=n), h + n)
    run = reporting.report_usage(now=frozen, trigger=Trigger.COMMAND)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert billed(fake_stripe, meter) == expected(usage, meter, owners())
    acme_rows_before = sum(v for (c, _), v in billed(fake_stripe, meter).items())

    # In OpenMeter, acme-c moves to Globex; then late usage arrives under it.
    fake_openmeter.set_subject_keys("acme", ["acme-a", "acme-b"])
    fake_openmeter.set_subject_keys("globex", ["globex-a", "globex-b", "acme-c"])
    usage.add(meter, "acme-c", hours_ago(frozen, 3) + timedelta(minutes=59), Decimal(4))
    run = reporting.report_usage(now=frozen, trigger=Trigger.SCHEDULE)
    assert run.status == RunStatus.SUCCEEDED, run.error
    mapping = owners()
    assert mapping["acme-c"].openmeter_subject == "globex"
    assert billed(fake_stripe, meter) == expected(usage, meter, mapping)
    assert sum(billed(fake_stripe, meter).values()) == acme_rows_before + 4
    move = SubjectMove.objects.get(subject="acme-c", from_customer__isnull=False)
    assert move.from_customer.openmeter_subject == "acme"
    assert move.run is not None and move.run.status == RunStatus.SUCCEEDED
    # The unchanged re-run sends nothing.
    assert reporting.report_usage(now=frozen, trigger=Trigger.SCHEDULE).events_sent == 0


def test_a_customer_linked_by_key_is_billed_for_its_openmeter_subjects(
    openmeter_customers, fake_openmeter, fake_stripe, frozen
):
    meter = synced_meter(fake_openmeter)
    customer = Customer.objects.create(
        name="Acme", openmeter_subject="acme", openmeter_customer_id="acme"
    )
    assert sync_object(customer)
    usage = Usage(fake_openmeter)
    for subject in COMPANIES["acme"]:
        usage.add(meter, subject, hours_ago(frozen, 2), 3)
    run = reporting.report_usage(now=frozen, trigger=Trigger.COMMAND)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert billed(fake_stripe, meter) == {
        (customer.stripe_customer_id, int(hours_ago(frozen, 2).timestamp())): Decimal(9)
    }


def test_many_linked_customers_are_read_from_the_paginated_list(
    openmeter_customers, fake_openmeter, fake_stripe, monkeypatch
):
    monkeypatch.setattr(openmeter_attribution, "FEW_LINKED", 0)
    call_command("import_openmeter_customers")
    assert owners()["acme-c"].openmeter_subject == "acme"
    fake_openmeter.set_subject_keys("acme", ["acme-a", "acme-b"])
    fake_openmeter.set_subject_keys("globex", ["globex-a", "globex-b", "acme-c"])
    lists_before = fake_openmeter.count("/api/v1/customers")
    call_command("import_openmeter_customers")
    assert owners()["acme-c"].openmeter_subject == "globex"
    # One list for the import, one for following OpenMeter's attribution: no GET per customer.
    assert fake_openmeter.count("/api/v1/customers") - lists_before == 2
    assert SubjectMove.objects.filter(subject="acme-c", from_customer__isnull=False).count() == 1
