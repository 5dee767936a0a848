"""Change-detection decisions and meter event identifiers."""

from datetime import UTC, datetime
from decimal import Decimal

from billing.reporting.detect import Held, HeldTotal, decide, differs
from billing.reporting.values import make_identifier, quantize, totals_match

W = datetime(2026, 11, 20, 13, tzinfo=UTC)


def ident(value: str, revision: int = 0, customer: str = "cus_1") -> str:
    return make_identifier(
        event_name="api_calls",
        stripe_customer_id=customer,
        window_start=W,
        value=Decimal(value),
        revision=revision,
    )


def test_identifiers_repeat_for_a_rerun_and_change_with_the_value_or_revision():
    assert ident("5") == ident("5.000")  # a re-run after a crash repeats it: Stripe dedupes
    assert ident("5") != ident("6")
    assert ident("5", revision=0) != ident("5", revision=2)  # A -> B -> A gets a new one
    assert ident("5", customer="cus_1") != ident("5", customer="cus_2")
    assert ident("5").startswith("mb_") and len(ident("5")) <= 100


def test_nothing_held_and_no_usage_sends_nothing():
    assert decide(value=Decimal(0), held=None) is None
    assert decide(value=Decimal(3), held=None) == (None, 0)


def test_an_equal_window_is_unchanged_unless_a_send_failed_since():
    held = Held(Decimal(3), sent_count=1, needs_resend=False)
    assert decide(value=Decimal(3), held=held) is None
    dirty = Held(Decimal(3), sent_count=1, needs_resend=True)
    assert decide(value=Decimal(3), held=dirty) == (Decimal(3), 1)


def test_a_changed_window_is_sent_even_back_to_zero():
    held = Held(Decimal(3), sent_count=2, needs_resend=False)
    assert decide(value=Decimal(4), held=held) == (Decimal(3), 2)
    assert decide(value=Decimal(0), held=held) == (Decimal(3), 2)


def test_range_totals_compare_with_float_tolerance():
    assert totals_match(Decimal("0.30000000000000004"), Decimal("0.3"))
    assert not totals_match(Decimal("1.001"), Decimal("1"))
    assert not differs(Decimal("10"), HeldTotal(Decimal("10"), nonzero=1, dirty=0))
    assert not differs(Decimal("0.30000000000000004"), HeldTotal(Decimal("0.3"), 1, 0))
    assert differs(Decimal("10"), HeldTotal(Decimal("9"), nonzero=1, dirty=0))
    assert differs(Decimal("10"), HeldTotal(Decimal("10"), nonzero=1, dirty=1))
    assert differs(Decimal("1"), None) and not differs(None, None)


def test_quantize_keeps_twelve_places():
    assert quantize(Decimal("1.23456789012345")) == Decimal("1.234567890123")
