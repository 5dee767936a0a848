"""Least privilege in the admin (issue 9): the Finance viewer and Finance operator groups, the
permissions behind every admin action and the LogEntry each one leaves, django-q2's admin
read-only but for superusers, and the rows that cannot be deleted.

As the independent check does it: as staff with only view permissions, and as staff with edit
but without `billing.rereport_usage`, every action offered on the billing and django-q2 lists is
posted; nothing may change in Stripe, no task may be queued and no report may start.
"""

import copy
import io
import os
import sqlite3
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command
from django.db.models import ProtectedError
from django.test import Client
from django_q.models import OrmQ, Schedule, Task

from billing import reporting
from billing.integrations import stripe_sync
from billing.models import (
    ArchivedPrice,
    PriceMapping,
    ReportLog,
    ReportRun,
    Subscription,
    Trigger,
)
from billing.roles import OPERATOR, VIEWER, ensure_roles, role_permissions
from billing.schedule import SCHEDULE_NAME, ensure_report_schedule
from tests.helpers import Usage, hours_ago, synced_customers, synced_meter

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
APPS = ("billing", "django_q")
EVENTS = "/v1/billing/meter_events"
PASSWORD = "pw-12345-xyz"


# --- the world the actions are posted against ---------------------------------------------------


@pytest.fixture
def world(fake_stripe, fake_openmeter, frozen) -> dict[str, Any]:
    """Everything the lists show: synced rows, a price with an archived one, a subscription on
    it, a finished report run, and django-q2's records of a finished and a failed report."""
    meter = synced_meter(fake_openmeter)
    customers = synced_customers(["acme", "globex"])
    price = PriceMapping.objects.create(
        meter=meter, product_name="API", unit_amount_decimal=Decimal("0.5")
    )
    assert stripe_sync.sync_object(price)
    sub = Subscription.objects.create(customer=customers[0])
    sub.prices.add(price)
    assert stripe_sync.sync_object(sub)
    price.unit_amount_decimal = Decimal("0.6")  # a new Stripe price: the old one is archived
    price.save()
    assert stripe_sync.sync_object(price)
    assert ArchivedPrice.objects.filter(price_mapping=price).exists()
    usage = Usage(fake_openmeter)
    for h in range(1, 4):
        usage.add(meter, "acme", hours_ago(frozen, h), h)
    run = reporting.report_usage(
        trigger=Trigger.SCHEDULE, start=hours_ago(frozen, 4), end=hours_ago(frozen, 0), now=frozen
    )
    ensure_report_schedule()
    finished = {"started": frozen, "stopped": frozen + timedelta(seconds=2)}
    success = Task.objects.create(
        id=uuid4().hex,
        name="scheduled report",
        func="billing.tasks.scheduled_report",
        kwargs={"intended_date": (frozen - timedelta(days=20)).isoformat()},
        result=run.pk,
        group="report_runs",
        success=True,
        **finished,
    )
    failure = Task.objects.create(
        id=uuid4().hex,
        name=f"Report run #{run.pk}",
        func="billing.tasks.execute_report_run",
        args=(run.pk,),
        result="Traceback: ...",
        group="report_runs",
        success=False,
        **finished,
    )
    return {"sub": sub, "price": price, "run": run, "success": success, "failure": failure}


def make_staff(username: str, perms: set[tuple[str, str]] = frozenset(), **groups: Any) -> Any:
    user = get_user_model().objects.create_user(username, password=PASSWORD, is_staff=True)
    for name in groups.get("groups", ()):
        user.groups.add(Group.objects.get(name=name))
    for app_label, codename in perms:
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return user


def login(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def viewer() -> Client:
    return login(make_staff("viewer", groups=[VIEWER]))


def operator_without_rereport() -> Client:
    """Staff with edit rights but without billing.rereport_usage."""
    perms = role_permissions()[OPERATOR] - {("billing", "rereport_usage")}
    return login(make_staff("editor", perms))


def changelists() -> list[tuple[str, Any]]:
    """Every changelist of the billing and django-q2 admins, with its model."""
    return sorted(
        (f"/admin/{m._meta.app_label}/{m._meta.model_name}/", m)
        for m in admin.site._registry
        if m._meta.app_label in APPS
    )


def offered(client: Client, url: str) -> list[str]:
    """The actions the changelist offers this user."""
    response = client.get(url)
    assert response.status_code == 200, url
    form = response.context["action_form"]
    return [name for name, _ in form.fields["action"].choices if name] if form else []


def every_action(url: str) -> list[str]:
    """Every action of a changelist, as a superuser is offered them; the cancel last."""
    superuser = get_user_model().objects.filter(is_superuser=True).first()
    if superuser is None:
        superuser = get_user_model().objects.create_superuser("root", "r@example.com", PASSWORD)
    names = offered(login(superuser), url)
    return sorted(names, key=lambda name: name == "cancel_in_stripe")


def post_action(client: Client, url: str, model: Any, action: str) -> list[int]:
    """Post the action on every row, with whatever its next steps post (the delete
    confirmation, the re-report preview and confirmation); returns the status codes."""
    pks = [str(pk) for pk in model._default_manager.values_list("pk", flat=True)]
    base = {"action": action, "_selected_action": pks, "index": "0"}
    preview = ReportRun.objects.filter(dry_run=True).first()
    steps = [
        base,
        {**base, "post": "yes"},
        {**base, "step": "preview", "preset": "last_24_hours", "reason": "probe"},
        {**base, "step": "confirm", "preview": str(preview.pk if preview else 0)},
    ]
    return [client.post(url, data).status_code for data in steps]


def state(fake_stripe: Any) -> dict[str, Any]:
    """Every billing and django-q2 row, and what the fake Stripe holds and was asked."""
    rows = {
        model._meta.label: list(model._default_manager.order_by("pk").values())
        for app_label in APPS
        for model in apps.get_app_config(app_label).get_models()
        if not model._meta.proxy
    }
    return {
        "rows": rows,
        "stripe": copy.deepcopy(fake_stripe.objects),
        "stripe_requests": len(fake_stripe.requests),
    }


# --- the groups --------------------------------------------------------------------------------


def codes(group_name: str) -> set[tuple[str, str]]:
    return {
        (p.content_type.app_label, p.codename)
        for p in Group.objects.get(name=group_name).permissions.select_related("content_type")
    }


def test_migrate_made_both_groups_with_their_permissions():
    # The test database was made by `migrate`: its post_migrate hook made the groups.
    views = {
        (m._meta.app_label, f"view_{m._meta.model_name}")
        for app_label in APPS
        for m in apps.get_app_config(app_label).get_models()
    }
    assert ("django_q", "view_success") in views and ("billing", "view_reportlog") in views
    assert codes(VIEWER) == views
    edits = {
        ("billing", f"{action}_{model}")
        for model in ("meter", "customer", "customersubject", "pricemapping", "subscription")
        for action in ("add", "change")
    }
    assert codes(OPERATOR) == views | edits | {
        ("billing", "rereport_usage"),
        ("billing", "move_subjects"),
    }
    assert not any(code.startswith("delete_") for _, code in codes(OPERATOR))


def test_ensure_roles_is_idempotent_and_puts_the_groups_back():
    assert all("up to date" in str(change) for change in ensure_roles())
    operator, viewer_group = Group.objects.get(name=OPERATOR), Group.objects.get(name=VIEWER)
    operator.permissions.add(Permission.objects.get(codename="delete_meter"))
    viewer_group.permissions.remove(Permission.objects.get(codename="view_reportlog"))
    out = io.StringIO()
    call_command("ensure_roles", stdout=out)
    lines = out.getvalue().splitlines()
    wanted = role_permissions()
    assert lines == [
        f"{VIEWER}: added billing.view_reportlog ({len(wanted[VIEWER])} permission(s)).",
        f"{OPERATOR}: removed billing.delete_meter ({len(wanted[OPERATOR])} permission(s)).",
    ]
    assert codes(VIEWER) == role_permissions()[VIEWER]
    assert codes(OPERATOR) == role_permissions()[OPERATOR]
    Group.objects.filter(name=VIEWER).delete()
    out = io.StringIO()
    call_command("ensure_roles", stdout=out)
    assert f"{VIEWER}: created with" in out.getvalue()
    assert codes(VIEWER) == role_permissions()[VIEWER]


def test_migrate_on_a_fresh_database_gives_both_groups_their_permissions(tmp_path):
    db = tmp_path / "fresh.sqlite3"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DEBUG": "true",
        "DATABASE_URL": f"sqlite:///{db}",
    }
    manage = [sys.executable, "manage.py"]
    done = subprocess.run(
        [*manage, "migrate", "-v0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(db) as conn:
        granted = dict(
            conn.execute(
                "SELECT g.name, COUNT(*) FROM auth_group g JOIN auth_group_permissions gp "
                "ON gp.group_id = g.id GROUP BY g.name"
            ).fetchall()
        )
    wanted = role_permissions()
    assert granted == {VIEWER: len(wanted[VIEWER]), OPERATOR: len(wanted[OPERATOR])}
    again = subprocess.run(
        [*manage, "ensure_roles"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        f"{VIEWER}: up to date ({len(wanted[VIEWER])} permission(s)).",
        f"{OPERATOR}: up to date ({len(wanted[OPERATOR])} permission(s)).",
    ]


# --- every action, as a viewer and as an editor without the re-report permission -------------


def test_a_viewer_is_offered_no_action_and_posting_each_changes_nothing(world, fake_stripe):
    client = viewer()
    lists = changelists()
    assert {url for url, _ in lists} >= {
        "/admin/billing/meter/",
        "/admin/billing/subscription/",
        "/admin/django_q/success/",
        "/admin/django_q/schedule/",
    }
    for url, _ in lists:
        assert offered(client, url) == [], url  # the lists show, without any action
    before = state(fake_stripe)
    logged = LogEntry.objects.count()
    for url, model in lists:
        for action in every_action(url):
            statuses = post_action(client, url, model, action)
            assert set(statuses) <= {200, 302, 403}, (url, action, statuses)
            if model._meta.app_label == "django_q" or action in {"rereport_usage", "report_again"}:
                assert set(statuses) == {403}, (url, action, statuses)
    assert state(fake_stripe) == before  # nothing changed here or in Stripe
    assert OrmQ.objects.count() == 0  # nothing queued
    assert LogEntry.objects.count() == logged
    # What they may do: read the history and export it.
    assert client.get("/admin/billing/reportlog/export.csv").status_code == 200


def test_an_editor_without_rereport_runs_the_edits_logged_and_starts_no_report(world, fake_stripe):
    client = operator_without_rereport()
    sub, price = world["sub"], world["price"]
    offers = {url: offered(client, url) for url, _ in changelists()}
    assert offers["/admin/billing/subscription/"] == [
        "sync_to_stripe",
        "cancel_in_stripe",
        "move_to_current_prices",
    ]
    assert offers["/admin/billing/meter/"] == ["sync_to_stripe"]  # no re-report, no delete
    assert offers["/admin/django_q/success/"] == []
    runs, logs, tasks = ReportRun.objects.count(), ReportLog.objects.count(), Task.objects.count()
    events = fake_stripe.count("POST", EVENTS)
    before = state(fake_stripe)["rows"]
    for url, model in changelists():
        for action in every_action(url):
            statuses = post_action(client, url, model, action)
            if model._meta.app_label == "django_q" or action in {"rereport_usage", "report_again"}:
                assert set(statuses) == {403}, (url, action, statuses)
    # No report started, none queued, no meter event sent, nothing deleted.
    assert (ReportRun.objects.count(), ReportLog.objects.count()) == (runs, logs)
    assert Task.objects.count() == tasks and OrmQ.objects.count() == 0
    assert fake_stripe.count("POST", EVENTS) == events
    after = state(fake_stripe)["rows"]
    for label in ("billing.Meter", "billing.Customer", "billing.PriceMapping"):
        assert [r["id"] for r in after[label]] == [r["id"] for r in before[label]]
    for label in ("billing.ReportRun", "billing.ReportLog", "django_q.Schedule", "django_q.Task"):
        assert after[label] == before[label], label
    # What the edits did, each with a LogEntry naming the user and what changed.
    sub.refresh_from_db()
    assert sub.status == "canceled"
    assert fake_stripe.objects["subscription"][sub.stripe_subscription_id]["status"] == "canceled"
    entries = LogEntry.objects.filter(user__username="editor", action_flag=CHANGE)
    messages = {(e.content_type.model, e.object_id, e.change_message) for e in entries}
    assert ("subscription", str(sub.pk), "Canceled in Stripe.") in messages
    assert ("subscription", str(sub.pk), "Moved 1 item(s) to the current prices.") in messages
    assert ("pricemapping", str(price.pk), "Synced to Stripe.") in messages
    for model in ("meter", "customer", "pricemapping", "subscription"):
        assert any(m == model and "Synced to Stripe" in text for m, _, text in messages), model


def test_a_failed_sync_is_logged_with_its_error(world, fake_stripe):
    client = operator_without_rereport()
    sub = world["sub"]
    sub.stripe_subscription_id = "sub_does_not_exist"
    sub.save(update_fields=["stripe_subscription_id"])
    client.post(
        "/admin/billing/subscription/",
        {"action": "cancel_in_stripe", "_selected_action": [str(sub.pk)], "index": "0"},
    )
    [entry] = LogEntry.objects.filter(user__username="editor")
    assert entry.change_message.startswith("Cancel in Stripe: failed: ")
    assert "sub_does_not_exist" in entry.change_message


# --- django-q2's admin -----------------------------------------------------------------------


def test_queue_admin_is_read_only_for_staff_whatever_their_permissions(world):
    every_q_perm = {
        ("django_q", p.codename)
        for p in Permission.objects.filter(content_type__app_label="django_q")
    }
    client = login(make_staff("queue-staff", every_q_perm | role_permissions()[OPERATOR]))
    success, schedule = world["success"], Schedule.objects.get(name=SCHEDULE_NAME)
    schedules = set(Schedule.objects.values_list("pk", "func"))
    tasks = Task.objects.count()
    for url in (
        "/admin/django_q/success/",
        "/admin/django_q/failure/",
        "/admin/django_q/schedule/",
    ):
        page = client.get(url)
        assert page.status_code == 200
        assert page.context["action_form"] is None  # no "Resubmit", no "Delete selected"
    assert client.get(f"/admin/django_q/success/{success.pk}/change/").status_code == 200
    for action in ("resubmit_task", "delete_selected"):
        for url, pk in (
            ("/admin/django_q/success/", success.pk),
            ("/admin/django_q/failure/", world["failure"].pk),
        ):
            data = {"action": action, "_selected_action": [pk], "index": "0", "post": "yes"}
            assert client.post(url, data).status_code == 403
    assert client.get("/admin/django_q/schedule/add/").status_code == 403
    hijack = {
        "name": "x",
        "func": "os.system",
        "args": "'touch /tmp/owned'",
        "schedule_type": "O",
        "repeats": "-1",
        "next_run_0": "2026-01-01",
        "next_run_1": "00:00:00",
    }
    assert client.post("/admin/django_q/schedule/add/", hijack).status_code == 403
    change = f"/admin/django_q/schedule/{schedule.pk}/change/"
    assert client.get(change).status_code == 200  # shown read-only
    assert client.post(change, hijack).status_code == 403
    assert (
        client.post(f"/admin/django_q/schedule/{schedule.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    assert (
        client.post(f"/admin/django_q/success/{success.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    assert set(Schedule.objects.values_list("pk", "func")) == schedules  # nothing added or changed
    assert Task.objects.count() == tasks and OrmQ.objects.count() == 0
    assert not ReportRun.objects.exclude(pk=world["run"].pk).exists()


def test_superusers_keep_django_q2s_admin(world, admin_client):
    assert "resubmit_task" in offered(admin_client, "/admin/django_q/success/")
    assert admin_client.get("/admin/django_q/schedule/add/").status_code == 200


# --- rows that cannot be deleted ---------------------------------------------------------------


def test_an_active_subscription_cannot_be_deleted_until_canceled(world, admin_client, fake_stripe):
    sub = world["sub"]
    page = admin_client.get(f"/admin/billing/subscription/{sub.pk}/delete/", follow=True)
    text = " ".join(str(m) for m in page.context["messages"])
    assert "still active in Stripe" in text and "Cancel in Stripe" in text
    admin_client.post(f"/admin/billing/subscription/{sub.pk}/delete/", {"post": "yes"})
    bulk = {"action": "delete_selected", "_selected_action": [str(sub.pk)], "index": "0"}
    refused = admin_client.post(
        "/admin/billing/subscription/", {**bulk, "post": "yes"}, follow=True
    )
    text = " ".join(str(m) for m in refused.context["messages"])
    assert "Nothing deleted" in text and "Cancel in Stripe" in text
    assert Subscription.objects.filter(pk=sub.pk).exists()
    assert fake_stripe.objects["subscription"][sub.stripe_subscription_id]["status"] == "active"

    admin_client.post("/admin/billing/subscription/", {**bulk, "action": "cancel_in_stripe"})
    confirm = admin_client.post("/admin/billing/subscription/", bulk)
    assert confirm.status_code == 200  # Django's confirmation page
    admin_client.post("/admin/billing/subscription/", {**bulk, "post": "yes"})
    assert not Subscription.objects.filter(pk=sub.pk).exists()


def test_price_history_cannot_be_deleted(world, admin_client):
    price = world["price"]
    assert admin_client.get(f"/admin/billing/pricemapping/{price.pk}/delete/").status_code == 302
    bulk = {"action": "delete_selected", "_selected_action": [str(price.pk)], "post": "yes"}
    admin_client.post("/admin/billing/pricemapping/", bulk)
    assert PriceMapping.objects.filter(pk=price.pk).exists()
    archived = ArchivedPrice.objects.filter(price_mapping=price)
    assert archived.exists()
    with pytest.raises(ProtectedError):
        PriceMapping.objects.filter(pk=price.pk).delete()  # the model protects it too
    assert archived.exists()
    # A price never in Stripe, without history, can go.
    draft = PriceMapping.objects.create(
        meter=price.meter, product_name="Draft", unit_amount_decimal=Decimal("1")
    )
    admin_client.post("/admin/billing/pricemapping/", {**bulk, "_selected_action": [str(draft.pk)]})
    assert not PriceMapping.objects.filter(pk=draft.pk).exists()
