"""How each OpenMeter aggregation is billed in Stripe: the one rule. Pure functions.

SUM and COUNT add up: each window carries its own usage and Stripe's meter (formula `sum`) adds
the windows of the period. UNIQUE_COUNT, MAX, MIN, LATEST and AVG do not add up over a period
(a user active on two days is one monthly active user): each window carries the aggregate from
the customer's billing period start to the window's end, and Stripe's meter (formula `last`)
bills the value of the period's last window, which is the period's aggregate.
"""

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal

ADDITIVE = frozenset({"SUM", "COUNT"})
PERIOD_TO_DATE = frozenset({"UNIQUE_COUNT", "MAX", "MIN", "LATEST", "AVG"})
# What a period-to-date meter bills, for the person who keeps it.
_BILLED = {
    "UNIQUE_COUNT": "the period's unique count",
    "MAX": "the period's maximum",
    "MIN": "the period's minimum",
    "LATEST": "the period's latest value",
    "AVG": "the period's average",
}


def normal(aggregation: str) -> str:
    """Meters kept before the aggregation was read count as SUM (only SUM and COUNT were
    accepted then)."""
    return (aggregation or "SUM").upper()


def is_period_to_date(aggregation: str) -> bool:
    return normal(aggregation) in PERIOD_TO_DATE


def stripe_formula(aggregation: str) -> str:
    """The formula of the Stripe meter that bills an OpenMeter meter with this aggregation."""
    return "last" if is_period_to_date(aggregation) else "sum"


def problem(aggregation: str) -> str | None:
    """Why an OpenMeter meter with this aggregation cannot be billed, or None if it can."""
    if normal(aggregation) in ADDITIVE | PERIOD_TO_DATE:
        return None
    known = ", ".join(sorted(ADDITIVE | PERIOD_TO_DATE))
    return f"OpenMeter aggregates it with {normal(aggregation)}; Meterbridge bills {known}."


def billed_text(aggregation: str) -> str:
    """What the Stripe meter bills per billing period, in words."""
    kind = normal(aggregation)
    if kind in _BILLED:
        return (
            f"{_BILLED[kind]}, from the start of each customer's billing period (each window "
            "carries the value from the period start to its end; Stripe bills the last one)"
        )
    return "the period's total: the sum of every window's usage"


def billed_value(*, aggregation: str, values: Mapping[datetime, Decimal]) -> Decimal:
    """What Stripe bills for a period from the values it holds per window start."""
    if not values:
        return Decimal(0)
    if is_period_to_date(aggregation):
        return values[max(values)]
    return sum(values.values(), Decimal(0))
