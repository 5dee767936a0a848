"""Customers with many OpenMeter subjects: each window bills the sum over the customer's subjects,
and a subject that moves to another customer moves its usage with it, shown first, re-reported,
audited: nothing billed twice, nothing dropped."""

from datetime import timedelta

import pytest
from django.core.management import call_command

from billing import reporting
from billing.formatting import money, utc_minute
from billing.models import (
    Customer,
    CustomerSubject,
    LogStatus,
    PriceMapping,
    ReportLog,
    RunStatus,
    SubjectMove,
    Trigger,
)
from billing.reporting.preview import confirm
from billing.subject_moves import move_subject, plan_move, preview_move
from tests.helpers import billed, hours_ago
from tests.subjects import expected, make_companies

pytestmark = pytest.mark.django_db


@pytest.fixture
def companies(fake_stripe, fake_openmeter, frozen):
    return make_companies(fake_openmeter, frozen)


def lookback(now):
    return reporting.report_usage(now=now, trigger=Trigger.COMMAND)


def test_each_window_bills_the_sum_over_the_customers_subjects(companies, fake_stripe, frozen):
    meter, _, owner, usage = companies
    run = lookback(frozen)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert billed(fake_stripe, meter) == expected(usage, meter, owner)
    assert run.unmapped_subjects == 1 and run.unmapped_quantity == 5
    # One event per customer and window, whatever the number of subjects.
    assert run.events_sent == len(expected(usage, meter, owner))
    assert lookback(frozen).events_sent == 0


def test_a_period_run_and_a_customer_named_by_any_of_its_subjects(companies, fake_stripe, frozen):
    meter, _, owner, usage = companies
    run = reporting.report_usage(
        now=frozen,
        trigger=Trigger.COMMAND,
        start=hours_ago(frozen, 8),
        end=hours_ago(frozen, 0),
        customers=reporting.selected(customer_subjects=["globex-key3"])[1],
    )
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.customer_subjects == ["globex-key1"]
    globex = {s: c for s, c in owner.items() if c.openmeter_subject == "globex-key1"}
    assert billed(fake_stripe, meter) == expected(usage, meter, globex)


def test_a_moved_subject_moves_its_usage_shown_first_then_re_reported(
    companies, fake_stripe, fake_openmeter, frozen, capsys
):
    meter, customers, owner, usage = companies
    acme, globex, _ = customers
    PriceMapping.objects.create(meter=meter, product_name="API", unit_amount_decimal=50)
    assert lookback(frozen).status == RunStatus.SUCCEEDED
    before = billed(fake_stripe, meter)

    # The dry run shows the windows that change, and changes nothing.
    call_command(
        "move_subject", "acme-key2", "--to", "globex-key3", "--reason", "sold", "--dry-run"
    )
    shown = capsys.readouterr().out
    assert "Would move subject 'acme-key2' from Acme-Key1 to Globex-Key1" in shown
    assert "api_calls / Acme-Key1" in shown and "api_calls / Globex-Key1" in shown
    # Each changed window in money (50 cents a unit): acme-key2's usage leaves Acme for Globex.
    moved = {
        start: value
        for (slug, subject, start), value in usage.expected.items()
        if subject == "acme-key2" and value
    }
    lines = shown.splitlines()
    for start, value in moved.items():
        amount = money(minor_units=value * 50, currency="usd")
        at = [line for line in lines if line.strip().startswith(utc_minute(start))]
        assert any(f"(-{amount})" in line for line in at), (start, at)
        assert any(f"(+{amount})" in line for line in at), (start, at)
    assert CustomerSubject.objects.get(subject="acme-key2").customer == acme
    assert billed(fake_stripe, meter) == before

    call_command("move_subject", "acme-key2", "--to", "globex-key3", "--reason", "sold")
    owner["acme-key2"] = globex
    assert billed(fake_stripe, meter) == expected(usage, meter, owner)
    move = SubjectMove.objects.get()
    assert (move.subject, move.from_customer, move.to_customer) == ("acme-key2", acme, globex)
    assert move.preview_run.dry_run and move.run.status == RunStatus.SUCCEEDED
    assert move.reason == "sold"

    # Late events under the moved subject (in an old window) and a new hour: a re-run bills
    # them to its new customer; then an unchanged re-run sends nothing.
    usage.add(meter, "acme-key2", hours_ago(frozen, 5) + timedelta(minutes=40), 7)
    usage.add(meter, "acme-key3", hours_ago(frozen, 1) + timedelta(minutes=41), 2)
    assert lookback(frozen).status == RunStatus.SUCCEEDED
    assert billed(fake_stripe, meter) == expected(usage, meter, owner)
    assert lookback(frozen).events_sent == 0
    # Every value Stripe received is in the history; none was sent twice for a window.
    sent = ReportLog.objects.filter(status=LogStatus.SENT)
    assert sent.count() == len(set(sent.values_list("identifier", flat=True)))


def test_moving_to_no_customer_and_back(companies, fake_stripe, frozen):
    meter, customers, owner, usage = companies
    initech = customers[2]
    assert lookback(frozen).status == RunStatus.SUCCEEDED
    _, done = move_subject(subject="initech-key3", to_customer=None, reason="key revoked")
    assert done is not None and done.to_customer is None
    del owner["initech-key3"]
    assert billed(fake_stripe, meter) == expected(usage, meter, owner)
    assert not CustomerSubject.objects.filter(subject="initech-key3").exists()
    # Its usage is unmapped now, and a lookback does not bill it to anyone.
    assert lookback(frozen).unmapped_subjects == 2
    _, done = move_subject(subject="initech-key3", to_customer=initech, reason="restored")
    assert done is not None and done.from_customer is None
    owner["initech-key3"] = initech
    assert billed(fake_stripe, meter) == expected(usage, meter, owner)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["acme-key1", "--to", "globex-key1"], "own subject of customer Acme-Key1"),
        (["acme-key2", "--to", "nobody"], "Unknown customer subject(s): nobody"),
        (["acme-key2", "--to", "acme-key3"], "already billed to Acme-Key1"),
        (["stranger", "--to-none"], "not billed to any customer"),
        (["acme-key2", "--to", "globex-key1", "--reason", " "], "Say why the subject moves"),
    ],
)
def test_a_bad_move_says_why_and_changes_nothing(
    companies, fake_stripe, frozen, capsys, args, message
):
    if "--reason" not in args:
        args = [*args, "--reason", "test"]
    with pytest.raises(SystemExit) as exit_info:
        call_command("move_subject", *args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not SubjectMove.objects.exists()
    assert CustomerSubject.objects.get(subject="acme-key2").customer.openmeter_subject == (
        "acme-key1"
    )
    assert fake_stripe.count("POST", "/v1/billing/meter_events") == 0


def test_a_move_preview_cannot_be_confirmed_as_a_plain_re_report(companies, frozen, admin_user):
    _, customers, _, _ = companies
    move = plan_move(subject="acme-key2", to_customer=customers[1])
    preview = preview_move(move=move, requested_by=admin_user, reason="r", trigger=Trigger.ADMIN)
    with pytest.raises(reporting.ReportInputError, match="subject move"):
        confirm(preview_run=preview.run, requested_by=admin_user)


def test_a_move_to_a_customer_not_in_stripe_says_to_edit_it_on_its_page(companies, frozen):
    newcomer = Customer.objects.create(name="Newcomer", openmeter_subject="newcomer")
    with pytest.raises(reporting.ReportInputError, match="edit its other subjects on its page"):
        plan_move(subject="acme-key2", to_customer=newcomer)
    assert CustomerSubject.objects.get(subject="acme-key2").customer.name == "Acme-Key1"
