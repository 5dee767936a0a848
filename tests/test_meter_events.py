"""Which Stripe answers mean "Stripe already has this event"."""

import stripe

from billing.meter_events import format_value, is_duplicate_identifier


def error(message: str, *, code: str | None = None, status: int = 400) -> stripe.StripeError:
    return stripe.InvalidRequestError(message, None, code=code, http_status=status)


def test_duplicate_identifier_answers_count_as_delivered():
    assert is_duplicate_identifier(error("An event already exists with identifier mb_1."))
    assert is_duplicate_identifier(error("Duplicate.", code="duplicate_meter_event"))


def test_other_refusals_are_failures():
    assert not is_duplicate_identifier(error("Invalid payload: value must be numeric."))
    assert not is_duplicate_identifier(error("A meter with this event name already exists."))
    assert not is_duplicate_identifier(
        error("An event already exists with identifier mb_1.", status=500)
    )


def test_values_go_to_stripe_as_plain_decimal_strings():
    from decimal import Decimal

    assert format_value(Decimal("1.500000000000")) == "1.5"
    assert format_value(Decimal("1E+3")) == "1000"
    assert format_value(Decimal("0E-12")) == "0"
