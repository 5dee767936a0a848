"""Billing period arithmetic: the cycle anchor of a new subscription and the periods it sets.

A subscription's period boundaries are ``anchor + k * interval`` for every integer ``k`` (months
keep the anchor's day of month, or ``billing_cycle_anchor_config[day_of_month]``, clamped to the
month's last day, as Stripe bills the 31st on the 28th in February and on the 31st in March); its
first period starts at its start date (creation, or ``backdate_start_date``) and ends at the first
boundary after it.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime

from .common import DAY, ApiError, Json

_APPROX = {"day": DAY, "week": 7 * DAY, "month": 30 * DAY, "year": 365 * DAY}


def boundary(anchor: int, recurring: Json, k: int, day: int | None = None) -> int:
    """The ``k``-th period boundary from ``anchor`` (``k`` may be negative)."""
    interval, count = recurring["interval"], recurring["interval_count"]
    if interval in ("day", "week"):
        return anchor + k * count * _APPROX[interval]
    dt = datetime.fromtimestamp(anchor, UTC)
    months = dt.month - 1 + k * count * (12 if interval == "year" else 1)
    year, month = dt.year + months // 12, months % 12 + 1
    clamped = min(day or dt.day, calendar.monthrange(year, month)[1])
    return int(dt.replace(year=year, month=month, day=clamped).timestamp())


def period_holding(sub: Json, recurring: Json, moment: int) -> tuple[int, int]:
    """The subscription's billing period ``[start, end)`` that holds ``moment``."""
    anchor = sub["billing_cycle_anchor"]
    day = (sub.get("billing_cycle_anchor_config") or {}).get("day_of_month")
    k = (moment - anchor) // (_APPROX[recurring["interval"]] * recurring["interval_count"])
    while boundary(anchor, recurring, k, day) > moment:
        k -= 1
    while boundary(anchor, recurring, k + 1, day) <= moment:
        k += 1
    start = max(sub["start_date"], boundary(anchor, recurring, k, day))
    return start, boundary(anchor, recurring, k + 1, day)


def cycle_anchor(p: Json, recurrings: list[Json], start: int, now: int) -> tuple[int, Json | None]:
    """(billing_cycle_anchor, billing_cycle_anchor_config) of a new subscription from its create
    parameters; 400 for what Stripe refuses."""
    config, anchor = p.get("billing_cycle_anchor_config"), p.get("billing_cycle_anchor")
    if config is not None and anchor is not None:
        raise ApiError(
            400,
            "You may only specify one of these parameters: billing_cycle_anchor, "
            "billing_cycle_anchor_config.",
            code="parameters_exclusive",
            param="billing_cycle_anchor",
        )
    if config is not None:
        return _from_config(config, recurrings, start, now)
    if anchor is None:
        return start, None
    if anchor < now:
        raise ApiError(
            400,
            f"billing_cycle_anchor ({anchor}) must be in the future.",
            param="billing_cycle_anchor",
        )
    natural = min(_natural_next(start, rec, now) for rec in recurrings)
    if anchor > natural:
        raise ApiError(
            400,
            f"billing_cycle_anchor cannot be later than next natural billing date ({natural}) "
            "for plan",
            param="billing_cycle_anchor",
        )
    return anchor, None


def _natural_next(start: int, recurring: Json, now: int) -> int:
    """The first boundary after ``now`` of periods anchored at ``start``."""
    k = 1
    while boundary(start, recurring, k) <= now:
        k += 1
    return boundary(start, recurring, k)


_RANGES = {"day_of_month": (1, 31), "hour": (0, 23), "minute": (0, 59), "second": (0, 59)}


def _from_config(
    config: Json, recurrings: list[Json], start: int, now: int
) -> tuple[int, Json | None]:
    """The next occurrence (at or after now) of the configured day of month and time, UTC."""
    if any(rec["interval"] not in ("month", "year") for rec in recurrings):
        raise ApiError(
            400,
            "billing_cycle_anchor_config is only valid with monthly and yearly price intervals.",
            param="billing_cycle_anchor_config",
        )
    for key, (lo, hi) in {**_RANGES, "month": (1, 12)}.items():
        value = config.get(key)
        if value is not None and not lo <= value <= hi:
            raise ApiError(
                400,
                f"Invalid billing_cycle_anchor_config[{key}]: must be between {lo} and {hi}.",
                param=f"billing_cycle_anchor_config[{key}]",
            )
    month = config.get("month")
    if month is not None and any(rec["interval"] != "year" for rec in recurrings):
        raise ApiError(
            400,
            "billing_cycle_anchor_config[month] is only valid with yearly price intervals.",
            param="billing_cycle_anchor_config[month]",
        )
    base = datetime.fromtimestamp(start, UTC)  # unset time fields default to the start's
    h, m, s = (
        config.get(k) if config.get(k) is not None else getattr(base, k)
        for k in ("hour", "minute", "second")
    )
    day = config["day_of_month"]
    today = datetime.fromtimestamp(now, UTC)
    step = {"interval": "year" if month else "month", "interval_count": 1}
    first = datetime(today.year, month or today.month, 1, h, m, s, tzinfo=UTC)
    anchor = boundary(int(first.timestamp()), step, 0, day)
    k = 0
    while anchor < now:
        k += 1
        anchor = boundary(int(first.timestamp()), step, k, day)
    return anchor, {k: config.get(k) for k in ("day_of_month", "hour", "minute", "month", "second")}
