"""Reconciliation: Stripe's own totals (meter event summaries) beside the ledger and OpenMeter.
Late usage is `unsent`, an event written behind Meterbridge's back is `drift`, a recent send is
`settling`; drift is healed by reporting the period again."""

from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command

from billing import reporting
from billing.formatting import utc_iso
from billing.models import ItemKind, Reconciliation, ReportedWindow, Trigger
from tests.helpers import billed, hours_ago
from tests.reconciling import write_behind_our_back

pytestmark = pytest.mark.django_db
SUMMARIES = "/v1/billing/meters/"


def run_command(*args: str) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    try:
        call_command(*args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def test_after_a_report_every_window_matches(reported, fake_stripe):
    code, out, _ = run_command("reconcile")
    assert code == 0, out
    check = Reconciliation.objects.get()
    assert (check.drift, check.unsent, check.settling) == (0, 0, 0)
    assert check.matched == check.windows_compared == 3 * 72  # 72 h lookback, 3 customers
    assert "meter api_calls: 0 drift, 0 unsent, 0 settling, 216 match of 216 windows" in out
    # one summaries request per customer and meter (one page each)
    assert fake_stripe.count("GET", SUMMARIES) == 3 == check.stripe_requests


def test_late_usage_is_unsent_and_a_foreign_event_is_drift(reported, fake_stripe, frozen):
    meter, (_, globex, _), usage = reported
    usage.add(meter, "acme", hours_ago(frozen, 2), 5)  # late: OpenMeter moved on
    write_behind_our_back(fake_stripe, meter, globex, hours_ago(frozen, 3), "999")

    code, out, _ = run_command("reconcile")

    assert code == 1
    assert "meter api_calls: 1 drift, 1 unsent, 0 settling, 214 match of 216 windows" in out
    drift_line = f"drift: meter api_calls, customer globex ({globex.stripe_customer_id}), window "
    assert f"{drift_line}{utc_iso(hours_ago(frozen, 3))}: OpenMeter 4, sent 4, Stripe 999" in out
    assert "unsent: meter api_calls, customer acme" in out
    items = {
        (i.customer.openmeter_subject, i.kind): i for i in Reconciliation.objects.get().items.all()
    }
    assert set(items) == {("acme", ItemKind.UNSENT), ("globex", ItemKind.DRIFT)}
    drift = items[("globex", ItemKind.DRIFT)]
    assert drift.window_start == hours_ago(frozen, 3)
    assert (drift.stripe_value, drift.sent_value, drift.openmeter_value) == (
        Decimal(999),
        Decimal(4),
        Decimal(4),
    )
    unsent = items[("acme", ItemKind.UNSENT)]
    assert (unsent.openmeter_value, unsent.sent_value, unsent.stripe_value) == (
        Decimal(7),
        Decimal(2),
        Decimal(2),
    )
    held = ReportedWindow.objects.get(customer=globex, window_start=hours_ago(frozen, 3))
    assert held.needs_resend  # the ledger says: send it again


def test_reporting_the_period_again_heals_drift(reported, fake_stripe, frozen):
    meter, customers, usage = reported
    usage.add(meter, "acme", hours_ago(frozen, 2), 5)
    write_behind_our_back(fake_stripe, meter, customers[1], hours_ago(frozen, 3), "999")
    assert run_command("reconcile")[0] == 1

    start, end = hours_ago(frozen, 6), hours_ago(frozen, 0)
    code, out, _ = run_command("report_usage", "--from", start.isoformat(), "--to", end.isoformat())
    assert code == 0, out

    code, out, _ = run_command("reconcile")
    assert code == 0, out
    assert Reconciliation.objects.order_by("pk").last().drift == 0
    assert billed(fake_stripe, meter) == usage.windows(meter, customers)


def test_a_window_only_something_else_wrote_is_drift_and_heals_to_zero(
    reported, fake_stripe, frozen
):
    meter, customers, _ = reported
    quiet = hours_ago(frozen, 10)  # no usage: Meterbridge never sent this window
    write_behind_our_back(fake_stripe, meter, customers[0], quiet, "42")
    code, out, _ = run_command("reconcile")
    assert code == 1 and "1 drift" in out
    reporting.report_usage(trigger=Trigger.SCHEDULE, now=frozen)  # the next scheduled run
    assert fake_stripe.billed_value(
        meter.stripe_meter_id, customers[0].stripe_customer_id, int(quiet.timestamp())
    ) == Decimal(0)
    assert run_command("reconcile")[0] == 0


def test_a_recent_send_is_settling_not_drift(reported, fake_stripe, frozen, settings):
    meter, customers, _ = reported
    settings.RECONCILE_SETTLE_MINUTES = 15  # the report above was sent just now
    write_behind_our_back(fake_stripe, meter, customers[1], hours_ago(frozen, 3), "999")
    code, out, _ = run_command("reconcile")
    assert code == 0 and "0 drift, 0 unsent, 1 settling" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--from", "2026-13-01", "--to", "2026-12-02"], "is not an ISO 8601 date"),
        (["--from", "2026-11-20"], "Give both --from and --to"),
        (["--meter", "nope"], "Unknown meter(s): nope."),
    ],
)
def test_bad_input_exits_2_with_one_line_and_reads_nothing(reported, fake_stripe, args, message):
    before = len(fake_stripe.requests)
    code, out, err = run_command("reconcile", *args)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [f"error: {message}"] or message in err
    assert len(err.strip().splitlines()) == 1
    assert len(fake_stripe.requests) == before and not Reconciliation.objects.exists()


def test_a_chosen_period_and_customer(reported, fake_stripe, frozen):
    start, end = hours_ago(frozen, 4), hours_ago(frozen, 1)
    code, out, _ = run_command(
        "reconcile", "--from", start.isoformat(), "--to", end.isoformat(), "--customer", "acme"
    )
    assert code == 0, out
    check = Reconciliation.objects.get()
    assert check.windows_compared == 3 and check.period_end - check.period_start == timedelta(
        hours=3
    )
    assert fake_stripe.count("GET", SUMMARIES) == 1


def test_429s_and_500s_while_reading_are_retried_and_change_nothing(reported, fake_stripe):
    fake_stripe.rate_limit_next(4, path_prefix=SUMMARIES)
    fake_stripe.fail_next(2, status=500, path_prefix=SUMMARIES)
    code, out, _ = run_command("reconcile")
    assert code == 0, out
    check = Reconciliation.objects.get()
    assert check.status == "succeeded" and check.matched == check.windows_compared == 216
    assert fake_stripe.count("GET", SUMMARIES) == 3 + 6 == check.stripe_requests


def test_a_customer_stripe_cannot_read_fails_the_check_and_is_named(reported, fake_stripe):
    fake_stripe.fail_next(1, status=403, path_prefix=SUMMARIES)
    code, out, _ = run_command("reconcile")
    assert code == 1, out
    check = Reconciliation.objects.get()
    assert check.status == "failed" and check.windows_compared == 2 * 72  # the two others
    (line,) = check.error.splitlines()
    assert "Stripe could not be read: Stripe answered 403" in line
    assert any(f"customer '{s}'" in line for s in ("acme", "globex", "initech"))


def test_more_windows_than_a_page_are_read_page_by_page(reported, fake_stripe, frozen):
    meter, _, usage = reported
    start, end = hours_ago(frozen, 150), hours_ago(frozen, 0)
    for h in range(6, 151):
        usage.add(meter, "acme", hours_ago(frozen, h), h)
    period = ("--from", start.isoformat(), "--to", end.isoformat(), "--customer", "acme")
    assert run_command("report_usage", *period)[0] == 0
    usage.add(meter, "acme", hours_ago(frozen, 140), 9)  # late, after the report
    code, out, _ = run_command("reconcile", *period)
    assert code == 0, out  # unsent is not drift
    check = Reconciliation.objects.get()
    assert (check.windows_compared, check.matched, check.unsent) == (150, 149, 1)
    assert fake_stripe.count("GET", SUMMARIES) == 2  # 100 windows, then 50
    (item,) = check.items.all()
    assert (item.window_start, item.openmeter_value, item.stripe_value) == (
        hours_ago(frozen, 140),
        Decimal(140 + 9),
        Decimal(140),
    )


def test_fractional_values_match_as_sent(reported, fake_stripe, frozen):
    meter, _, usage = reported
    usage.add(meter, "globex", hours_ago(frozen, 9), "1234567890.123456")
    usage.add(meter, "initech", hours_ago(frozen, 8), "0.000001")
    assert reporting.report_usage(trigger=Trigger.SCHEDULE, now=frozen).events_sent == 2
    code, out, _ = run_command("reconcile")
    assert code == 0, out
    check = Reconciliation.objects.get()
    assert (check.matched, check.unsent, check.drift) == (216, 0, 0)
