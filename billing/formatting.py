"""Numbers and times as people and Stripe read them: one place for every conversion to text."""

from datetime import UTC, datetime
from decimal import Decimal

EMPTY = "—"
# Currencies whose minor unit is the unit itself (Stripe's zero-decimal currencies).
ZERO_DECIMAL_CURRENCIES = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()
)


def plain_decimal(value: Decimal) -> str:
    """A decimal without exponent or trailing zeros: 12.500000000000 -> "12.5", 1E+2 -> "100".

    This is the form Stripe takes meter event values and unit amounts in."""
    text = format(value.normalize(), "f")
    return "0" if text in {"-0", ""} else text


def quantity(value: Decimal | None) -> str:
    """A stored quantity for a page: plain, or a dash when there is none."""
    return EMPTY if value is None else plain_decimal(value)


def signed_quantity(value: Decimal) -> str:
    text = plain_decimal(value)
    return text if text.startswith("-") or text == "0" else f"+{text}"


def money(*, minor_units: Decimal, currency: str) -> str:
    """An amount kept in the currency's minor unit (as Stripe takes it) as money a person reads:
    1234.5 usd -> "12.345 USD", 50 usd -> "0.50 USD", 500 jpy -> "500 JPY"."""
    if currency.lower() in ZERO_DECIMAL_CURRENCIES:
        return f"{plain_decimal(minor_units)} {currency.upper()}"
    whole, _, fraction = plain_decimal(minor_units / 100).partition(".")
    return f"{whole}.{fraction.ljust(2, '0')} {currency.upper()}"


def utc_minute(moment: datetime | None) -> str:
    """For pages: 2026-11-20 13:00 (UTC)."""
    return EMPTY if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def utc_second(moment: datetime | None) -> str:
    """For pages where seconds matter (a run's parts): 2026-11-20 13:00:05 (UTC)."""
    return EMPTY if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def utc_iso(moment: datetime) -> str:
    """For messages, exports and APIs: 2026-11-20T13:00:00Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_iso_millis(moment: datetime) -> str:
    """Stripe's v2 timestamps: 2026-11-20T13:00:00.000Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def utc_stamp(moment: datetime) -> str:
    """For file names: 20261120T1300Z."""
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%MZ")
