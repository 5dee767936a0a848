"""The periods a re-report offers, aligned to the selected meters' windows and checked."""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from billing import windows
from billing.integrations.stripe_client import get_client
from billing.integrations.stripe_errors import describe
from billing.models import Meter, Subscription, Window
from billing.reporting.periods import ReportInputError, coarsest_window, validate_period
from billing.reporting.selection import Selection

BILLING_PERIOD_MAX_SUBSCRIPTIONS = 20  # each one is a Stripe call while the page renders
CUSTOM = "custom"  # the form's choice for a period typed in


@dataclass(frozen=True)
class Preset:
    key: str
    label: str
    start: datetime | None = None
    end: datetime | None = None
    problem: str = ""  # why it cannot be reported; shown beside it


def _checked(preset: Preset, *, meters: Sequence[Meter], now: datetime) -> Preset:
    """The preset with the reason it cannot be reported, if there is one."""
    assert preset.start is not None and preset.end is not None
    if preset.start >= preset.end:
        return replace(preset, problem="no window of it has closed yet")
    try:
        validate_period(start=preset.start, end=preset.end, meters=meters, now=now)
    except ReportInputError as exc:
        return replace(preset, problem=str(exc))
    return preset


def _month_start(moment: datetime) -> datetime:
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def period_presets(*, selection: Selection, now: datetime) -> list[Preset]:
    """The periods offered on the form, aligned to the selected meters' windows."""
    meters = selection.meters
    window = coarsest_window(meters)
    closed = windows.floor(now, window)  # start of the still-open window
    today = windows.floor(now, Window.DAY)
    this_month = _month_start(now)
    last_month = _month_start(this_month - timedelta(days=1))
    presets = []
    if selection.source_run is not None:
        run = selection.source_run
        presets.append(
            Preset("run", f"The period of run #{run.pk}", run.period_start, run.period_end)
        )
    presets += [
        Preset(
            "last_24_hours",
            "Last 24 hours",
            windows.floor(now - timedelta(hours=24), window),
            closed,
        ),
        Preset("yesterday", "Yesterday", today - timedelta(days=1), today),
        Preset("this_month", "This month so far", this_month, closed),
        Preset("last_month", "Last month", last_month, this_month),
    ]
    checked = [_checked(p, meters=meters, now=now) for p in presets]
    return [*checked, _billing_period_preset(selection=selection, window=window, now=now)]


def _billing_period_preset(*, selection: Selection, window: str, now: datetime) -> Preset:
    label = "Current billing period so far"
    subs = list(selection.subscriptions()[: BILLING_PERIOD_MAX_SUBSCRIPTIONS + 1])
    if not subs:
        return Preset(
            "billing_period", label, problem="no Stripe subscription bills this selection"
        )
    if len(subs) > BILLING_PERIOD_MAX_SUBSCRIPTIONS:
        return Preset(
            "billing_period",
            label,
            problem=f"more than {BILLING_PERIOD_MAX_SUBSCRIPTIONS} subscriptions bill this "
            "selection: select fewer customers or give the period below",
        )
    try:
        period_start = current_period_start(subscriptions=subs)
    except Exception as exc:  # Stripe down must not break the page, only this choice
        return Preset(
            "billing_period",
            label,
            problem=f"could not read it from Stripe: {describe(exc)}",
        )
    if len(subs) > 1:
        label += f" (earliest of {len(subs)} subscriptions)"
    # The window that holds the period's start is reported whole: a partial window cannot be sent.
    start = windows.floor(period_start, window)
    preset = Preset("billing_period", label, start, windows.floor(now, window))
    return _checked(preset, meters=selection.meters, now=now)


def current_period_start(*, subscriptions: Sequence[Subscription]) -> datetime:
    """The earliest start of the subscriptions' current periods, as Stripe holds them (on their
    items). No retries: a slow Stripe must not hold up the page."""
    client = get_client(max_network_retries=0)
    starts = [
        item.current_period_start
        for sub in subscriptions
        for item in client.v1.subscriptions.retrieve(sub.stripe_subscription_id)["items"].data
    ]
    if not starts:
        raise ValueError("the subscriptions have no items in Stripe")
    return datetime.fromtimestamp(min(starts), UTC)
