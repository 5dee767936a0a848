"""How one window is judged: OpenMeter now, the value Meterbridge last sent (its ledger), and
Stripe's own aggregate. Pure: the unit tests read like the rules."""

from datetime import datetime
from decimal import Decimal

MATCH, UNSENT, DRIFT, SETTLING = "match", "unsent", "drift", "settling"
ZERO = Decimal(0)


def classify(
    *,
    openmeter: Decimal,
    sent: Decimal | None,
    stripe: Decimal,
    sent_at: datetime | None,
    settled_before: datetime,
) -> str:
    """match: all three agree. drift: Stripe differs from what was sent (rejected, adjusted, or
    written by something else), unless it was sent after `settled_before`: then settling, as
    Stripe's summaries are eventually consistent. unsent: Stripe holds what was sent but OpenMeter
    has moved on (late usage; the next run sends it)."""
    held = ZERO if sent is None else sent
    if stripe != held:
        if sent_at is not None and sent_at > settled_before:
            return SETTLING
        return DRIFT
    if openmeter != held:
        return UNSENT
    return MATCH
