"""Numbers and times turned into text: what Stripe is sent and what people read."""

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from billing.formatting import (
    money,
    plain_decimal,
    quantity,
    signed_quantity,
    utc_iso,
    utc_iso_millis,
    utc_minute,
    utc_stamp,
)


def test_values_go_to_stripe_as_plain_decimal_strings():
    assert plain_decimal(Decimal("1.500000000000")) == "1.5"
    assert plain_decimal(Decimal("1E+3")) == "1000"
    assert plain_decimal(Decimal("0E-12")) == "0"
    assert plain_decimal(Decimal("-0.000")) == "0"
    assert plain_decimal(Decimal("0.000000000001")) == "0.000000000001"


def test_quantities_on_pages():
    assert quantity(None) == "—"
    assert quantity(Decimal("12.500000000000")) == "12.5"
    assert signed_quantity(Decimal("2")) == "+2"
    assert signed_quantity(Decimal("-2.50")) == "-2.5"
    assert signed_quantity(Decimal("0.000")) == "0"


def test_money_from_minor_units():
    assert money(minor_units=Decimal("1234.5"), currency="usd") == "12.345 USD"
    assert money(minor_units=Decimal("50"), currency="usd") == "0.50 USD"
    assert money(minor_units=Decimal("1"), currency="eur") == "0.01 EUR"
    assert money(minor_units=Decimal("0.5"), currency="usd") == "0.005 USD"
    assert money(minor_units=Decimal("-250"), currency="usd") == "-2.50 USD"
    assert money(minor_units=Decimal("500"), currency="jpy") == "500 JPY"


def test_times_are_shown_in_utc_whatever_their_zone():
    moment = datetime(2026, 11, 20, 14, 5, 7, tzinfo=timezone(timedelta(hours=1)))
    assert utc_minute(moment) == "2026-11-20 13:05"
    assert utc_iso(moment) == "2026-11-20T13:05:07Z"
    assert utc_iso_millis(moment) == "2026-11-20T13:05:07.000Z"
    assert utc_stamp(moment) == "20261120T1305Z"
    assert utc_minute(None) == "—"
    assert utc_iso(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00Z"
