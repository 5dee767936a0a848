"""Values as the ledger keeps them, and the identifiers meter events carry. Pure functions."""

import decimal
import hashlib
from datetime import datetime
from decimal import Decimal

_QUANTUM = Decimal("1e-12")  # the ledger's 12 decimal places
_CONTEXT = decimal.Context(prec=40)


def quantize(value: Decimal) -> Decimal:
    return value.quantize(_QUANTUM, context=_CONTEXT)


def totals_match(a: Decimal, b: Decimal) -> bool:
    """OpenMeter sums in floating point; a float's last digit is not a change in usage."""
    return abs(a - b) <= Decimal("1e-9") * max(Decimal(1), abs(a))


def make_identifier(
    *,
    event_name: str,
    stripe_customer_id: str,
    window_start: datetime,
    value: Decimal,
    revision: int,
) -> str:
    """Deterministic: a re-run repeats it (Stripe dedupes), a real change gets a new one.

    `revision` is how many values were already sent for the window, so a window that goes
    A -> B -> A within Stripe's 24-hour dedupe gets a new identifier for the second A."""
    text = (
        f"{event_name}|{stripe_customer_id}|{int(window_start.timestamp())}|"
        f"{quantize(value)}|{revision}"
    )
    return f"mb_{hashlib.sha256(text.encode()).hexdigest()[:48]}"
