"""The reporting engine: windows -> OpenMeter usage -> changed values -> Stripe -> ReportLog.

DESIGN.md, "How usage reaches Stripe", is the algorithm. In short: Stripe's pre-aggregated meters
keep only the latest event per customer and UTC window, so sending a window's complete value *sets*
it. A run compares each window with the value Stripe last accepted (ReportedWindow, written with
the ReportLog rows) and sends only what changed, with a deterministic identifier so a re-run after
a crash cannot count twice.

To keep an unchanged hourly run cheap, each meter is first asked for one total per subject over the
whole range; only customers whose total differs from what Stripe holds get the per-window detail.
For SUM meters of non-negative values and COUNT meters, windows only grow, so equal totals mean
equal windows. Re-reports of a chosen period (admin, command with --from/--to) compare every window.
"""

import decimal
import hashlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from billing import windows
from billing.locks import meter_lock
from billing.meter_events import MeterEvent, SendResult, make_sender
from billing.models import (
    Customer,
    LogStatus,
    Meter,
    ReportedWindow,
    ReportLog,
    ReportRun,
    RunStatus,
    Trigger,
    Window,
)
from billing.openmeter import OpenMeterClient, OpenMeterError
from billing.redaction import redact

logger = logging.getLogger(__name__)

ADDITIVE_AGGREGATIONS = {"SUM", "COUNT"}
OPENMETER_WINDOW = {Window.HOUR: "HOUR", Window.DAY: "DAY"}
ROWS_PER_QUERY = 50_000  # bounds one OpenMeter answer (and the memory it takes)
SUBJECT_FILTER_MAX = 100  # above this many subjects, query all and filter here
FLUSH_EVERY = 500
_QUANTUM = Decimal("1e-12")
_CONTEXT = decimal.Context(prec=40)


class ReportInputError(ValueError):
    """The request cannot be run as given; the message says why and what would work."""


def quantize(value: Decimal) -> Decimal:
    return value.quantize(_QUANTUM, context=_CONTEXT)


def _totals_match(a: Decimal, b: Decimal) -> bool:
    # OpenMeter sums in floating point; a float's last digit is not a change in usage.
    return abs(a - b) <= Decimal("1e-9") * max(Decimal(1), abs(a))


def make_identifier(
    *, meter: Meter, stripe_customer_id: str, window_start: datetime, value: Decimal, revision: int
) -> str:
    """Deterministic: a re-run repeats it (Stripe dedupes), a real change gets a new one."""
    text = (
        f"{meter.event_name}|{stripe_customer_id}|{int(window_start.timestamp())}|"
        f"{quantize(value)}|{revision}"
    )
    return f"mb_{hashlib.sha256(text.encode()).hexdigest()[:48]}"


# --- input checks ------------------------------------------------------------------------------


def validate_period(
    *, start: datetime, end: datetime, meters: Sequence[Meter], now: datetime
) -> None:
    """Refuse a period Stripe cannot take or the meters cannot be reported for, saying why."""
    if start >= end:
        raise ReportInputError(f"The start ({_fmt(start)}) must be before the end ({_fmt(end)}).")
    for meter in meters:
        for label, moment in (("start", start), ("end", end)):
            if not windows.is_aligned(moment, meter.window):
                below = windows.floor(moment, meter.window)
                above = below + windows.WINDOW_LENGTH[Window(meter.window)]
                raise ReportInputError(
                    f"The {label} {_fmt(moment)} is not on a {meter.window} boundary of meter "
                    f"'{meter.openmeter_slug}': use {_fmt(below)} or {_fmt(above)}."
                )
        open_window = windows.floor(now, meter.window)
        if end > open_window:
            raise ReportInputError(
                f"The period reaches into the still-open {meter.window} window of meter "
                f"'{meter.openmeter_slug}' (it started {_fmt(open_window)}): end at "
                f"{_fmt(open_window)} or earlier."
            )
        oldest = windows.oldest_reportable(meter.window, now=now)
        if start < oldest:
            raise ReportInputError(
                f"Stripe only accepts usage from the last 35 days: start at {_fmt(oldest)} or "
                "later."
            )


def _fmt(moment: datetime) -> str:
    return moment.astimezone(windows.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the run -----------------------------------------------------------------------------------


@dataclass
class _Counters:
    windows_checked: int = 0
    events_sent: int = 0
    events_unchanged: int = 0
    events_failed: int = 0
    unmapped: dict[str, Decimal] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def start_run(
    *,
    trigger: str,
    start: datetime | None = None,
    end: datetime | None = None,
    meters: Sequence[Meter] | None = None,
    customers: Sequence[Customer] | None = None,
    dry_run: bool = False,
    requested_by: Any = None,
    now: datetime | None = None,
) -> ReportRun:
    """Check the request and create its ReportRun (status running). Raises ReportInputError.

    Without start/end, the period is the scheduled lookback: each meter's closed windows of the
    last REPORT_LOOKBACK_HOURS before `now`.
    """
    now = now or windows.utcnow()
    if (start is None) != (end is None):
        raise ReportInputError("Give both a start and an end, or neither.")
    chosen = list(meters) if meters else list(Meter.objects.filter(active=True))
    if start is not None and end is not None:
        validate_period(start=start, end=end, meters=chosen, now=now)
        period = (start, end)
    else:
        ranges = [windows.scheduled_range(m.window, now=now) for m in chosen] or [
            windows.scheduled_range(Window.HOUR, now=now)
        ]
        period = (min(r[0] for r in ranges), max(r[1] for r in ranges))
    return ReportRun.objects.create(
        trigger=trigger,
        requested_by=requested_by,
        period_start=period[0],
        period_end=period[1],
        dry_run=dry_run,
        meter_slugs=[m.openmeter_slug for m in meters] if meters else [],
        customer_subjects=[c.openmeter_subject for c in customers] if customers else [],
    )


def execute_run(run: ReportRun, *, now: datetime | None = None) -> ReportRun:
    """Report the run's period. Never raises for a Stripe or OpenMeter failure: it is recorded."""
    now = now or windows.utcnow()
    counters = _Counters()
    explicit = run.trigger != Trigger.SCHEDULE
    meters = Meter.objects.filter(active=True)
    if run.meter_slugs:
        meters = Meter.objects.filter(openmeter_slug__in=run.meter_slugs)
    customers = Customer.objects.filter(active=True)
    if run.customer_subjects:
        customers = customers.filter(openmeter_subject__in=run.customer_subjects)
    by_subject = {c.openmeter_subject: c for c in customers}
    try:
        with OpenMeterClient.from_settings() as openmeter:
            for meter in meters.order_by("pk"):
                if explicit:
                    start, end = run.period_start, run.period_end
                else:
                    start, end = windows.scheduled_range(meter.window, now=now)
                _report_meter(
                    run=run,
                    meter=meter,
                    start=start,
                    end=end,
                    customers=by_subject,
                    filtered=bool(run.customer_subjects),
                    full_check=explicit,
                    openmeter=openmeter,
                    counters=counters,
                )
    except Exception as exc:  # the run must end with a status, whatever happened
        logger.exception("Report run %s crashed", run.pk)
        counters.errors.append(f"Unexpected error: {redact(str(exc))}")
    _finish(run, counters)
    return run


def report_usage(**kwargs: Any) -> ReportRun:
    """start_run + execute_run: the synchronous path used by the command and the schedule."""
    now = kwargs.get("now")
    return execute_run(start_run(**kwargs), now=now)


def fail_abandoned_runs() -> int:
    """Close runs still 'running' past the task timeout: their worker died or never started.

    Their sends are safe to repeat (identifiers), so the message asks for the period again.
    """
    limit = timezone.now() - timedelta(seconds=settings.REPORT_TASK_TIMEOUT + 10 * 60)
    return ReportRun.objects.filter(
        status=RunStatus.RUNNING, finished_at__isnull=True, started_at__lt=limit
    ).update(
        status=RunStatus.FAILED,
        finished_at=timezone.now(),
        error="The run stopped before it finished (its worker was killed, timed out or never "
        "started). What it sent is recorded; report the period again to complete it.",
    )


def _report_meter(
    *,
    run: ReportRun,
    meter: Meter,
    start: datetime,
    end: datetime,
    customers: dict[str, Customer],
    filtered: bool,
    full_check: bool,
    openmeter: OpenMeterClient,
    counters: _Counters,
) -> None:
    slug = meter.openmeter_slug
    if not meter.stripe_meter_id and not run.dry_run:
        counters.errors.append(
            f"Meter '{slug}' skipped: it is not in Stripe yet (sync status: {meter.sync_status})."
        )
        return
    if start >= end:
        return
    try:
        info = openmeter.get_meter(slug)
    except OpenMeterError as exc:
        counters.errors.append(redact(str(exc)))
        return
    if info.aggregation.upper() not in ADDITIVE_AGGREGATIONS:
        counters.errors.append(
            f"Meter '{slug}' skipped: OpenMeter aggregates it with {info.aggregation}. Only SUM "
            "and COUNT meters can be billed per window (per-window values of other aggregations "
            "cannot be added up over a billing period)."
        )
        return
    if run.dry_run:
        _compare_and_send(
            run, meter, start, end, customers, filtered, full_check, openmeter, counters
        )
        return
    with meter_lock(meter.pk, wait=settings.REPORT_LOCK_WAIT_SECONDS) as held:
        if not held:
            message = (
                f"Meter '{slug}' skipped: another run is reporting it right now; "
                "the next run will cover these windows."
            )
            logger.warning(message)
            counters.errors.append(message)
            return
        _compare_and_send(
            run, meter, start, end, customers, filtered, full_check, openmeter, counters
        )


@dataclass(frozen=True)
class _Change:
    customer: Customer
    window_start: datetime
    value: Decimal
    previous: Decimal | None
    revision: int


def _compare_and_send(
    run: ReportRun,
    meter: Meter,
    start: datetime,
    end: datetime,
    customers: dict[str, Customer],
    filtered: bool,
    full_check: bool,
    openmeter: OpenMeterClient,
    counters: _Counters,
) -> None:
    slug = meter.openmeter_slug
    om_window = OPENMETER_WINDOW[Window(meter.window)]
    subjects = list(customers) if filtered and len(customers) <= SUBJECT_FILTER_MAX else []
    n_windows = sum(1 for _ in windows.iter_windows(start, end, meter.window))
    counters.windows_checked += n_windows * len(customers)
    try:
        if full_check:
            # A chosen period: compare every window of every customer.
            totals = _range_totals(openmeter, slug, start, end, subjects, om_window)
            _count_unmapped(totals, customers, filtered, counters)
            changes = _windowed_changes(
                meter,
                start,
                end,
                om_window,
                list(customers.values()),
                len(totals),
                openmeter,
                counters,
            )
        else:
            changes = _changes_by_range(
                meter, start, end, om_window, customers, subjects, filtered, openmeter, counters
            )
        recorder = _Recorder(run, meter, counters)
        try:
            recorder.process(changes, None if run.dry_run else make_sender())
        finally:
            recorder.flush()  # what was sent before an error is recorded too
    except OpenMeterError as exc:
        counters.errors.append(redact(str(exc)))


def _totals(
    openmeter: OpenMeterClient,
    slug: str,
    start: datetime,
    end: datetime,
    subjects: list[str],
    window_size: str | None = None,
) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    for row in openmeter.query(
        slug=slug, start=start, end=end, window_size=window_size, subjects=subjects
    ):
        totals[row.subject] = totals.get(row.subject, Decimal(0)) + row.value
    return totals


def _range_totals(
    openmeter: OpenMeterClient,
    slug: str,
    start: datetime,
    end: datetime,
    subjects: list[str],
    om_window: str,
) -> dict[str, Decimal]:
    """One total per subject over [start, end)."""
    try:
        return _totals(openmeter, slug, start, end, subjects)
    except OpenMeterError as exc:
        if exc.status != 400:
            raise
        # An OpenMeter that refuses a query without windowSize: total the windows instead.
        logger.warning("Meter '%s': totals query refused (%s); summing windows", slug, exc)
        return _totals(openmeter, slug, start, end, subjects, window_size=om_window)


def _count_unmapped(
    totals: dict[str, Decimal],
    customers: dict[str, Customer],
    filtered: bool,
    counters: _Counters,
) -> None:
    if filtered:
        return
    for subject, total in totals.items():
        if subject not in customers and total != 0:
            counters.unmapped[subject] = counters.unmapped.get(subject, Decimal(0)) + total


def _held(
    meter: Meter, start: datetime, end: datetime, customers: list[Customer]
) -> dict[int, Mapping[str, Any]]:
    """What Stripe holds per customer over [start, end): total, non-zero and dirty windows."""
    state = ReportedWindow.objects.filter(
        meter=meter, window_start__gte=start, window_start__lt=end
    )
    if len(customers) <= 1000:
        state = state.filter(customer_id__in=[c.pk for c in customers])
    return {
        row["customer_id"]: row
        for row in state.values("customer_id").annotate(
            total=Sum("value"),
            nonzero=Count("id", filter=~Q(value=0)),
            dirty=Count("id", filter=Q(needs_resend=True)),
        )
    }


def _differs(om_total: Decimal | None, mine: Mapping[str, Any] | None) -> bool:
    """Whether a customer's usage over a range may differ from what Stripe holds for it."""
    total = quantize(om_total or Decimal(0))
    if mine is None:
        return total != 0
    return bool(mine["dirty"]) or not _totals_match(total, mine["total"] or Decimal(0))


def _changes_by_range(
    meter: Meter,
    start: datetime,
    end: datetime,
    om_window: str,
    customers: dict[str, Customer],
    subjects: list[str],
    filtered: bool,
    openmeter: OpenMeterClient,
    counters: _Counters,
) -> Iterator[_Change]:
    """The changed windows of a scheduled run, found by comparing totals over ranges.

    Two totals per subject first: the newest window alone, and the rest of the lookback. For
    SUM meters of non-negative values and COUNT meters windows only grow, so equal totals mean
    equal windows: an unchanged run ends there. The newest window's totals are its values, so a
    new hour is sent without any window-by-window query. A rest that differs is read window by
    window for the customers that differ in it; when they are many, it is first cut into ranges
    of 1, 1, 2, 4, 8... windows from the newest, each compared by totals, so that only ranges
    with changes are read window by window. The cost follows what changed, not customers x
    windows.
    """
    step = windows.WINDOW_LENGTH[Window(meter.window)]
    everyone = list(customers.values())
    newest = max(start, end - step)
    # (low, high, candidates, top): the top ranges cover [start, end) once.
    todo = [(newest, end, everyone, True)]
    if start < newest:
        todo.append((start, newest, everyone, True))
    n_subjects = len(customers)
    while todo:
        low, high, candidates, top = todo.pop(0)
        if top:
            query_subjects = subjects
        elif len(candidates) <= SUBJECT_FILTER_MAX:
            query_subjects = [c.openmeter_subject for c in candidates]
        else:
            query_subjects = []
        totals = _range_totals(
            openmeter, meter.openmeter_slug, low, high, query_subjects, om_window
        )
        if top:
            _count_unmapped(totals, customers, filtered, counters)
            n_subjects = max(n_subjects, len(totals))
        held = _held(meter, low, high, candidates)
        differing: list[Customer] = []
        for customer in candidates:
            mine = held.get(customer.pk)
            if _differs(totals.get(customer.openmeter_subject), mine):
                differing.append(customer)
            elif mine is not None:
                counters.events_unchanged += mine["nonzero"]
        logger.info(
            "Meter '%s' %s..%s: %d of %d customers changed",
            meter.openmeter_slug,
            _fmt(low),
            _fmt(high),
            len(differing),
            len(candidates),
        )
        if not differing:
            continue
        if high - low == step:  # one window: each total is that window's value
            by_subject = {c.openmeter_subject: c for c in differing}
            usage = {(c.pk, low): totals.get(c.openmeter_subject, Decimal(0)) for c in differing}
            yield from _changes(meter, low, high, by_subject, usage, counters)
        elif top and len(differing) > SUBJECT_FILTER_MAX:
            todo[0:0] = [(lo, hi, differing, False) for lo, hi in _recent_first(low, high, step)]
        else:
            yield from _windowed_changes(
                meter, low, high, om_window, differing, n_subjects, openmeter, counters
            )


def _recent_first(
    start: datetime, end: datetime, step: timedelta
) -> list[tuple[datetime, datetime]]:
    """[start, end) cut from the end into ranges of 1, 1, 2, 4, 8... windows, newest first."""
    ranges: list[tuple[datetime, datetime]] = []
    high, size = end, 1
    while high > start:
        low = max(start, high - step * size)
        ranges.append((low, high))
        high = low
        if len(ranges) > 1:
            size *= 2
    return ranges


def _windowed_changes(
    meter: Meter,
    start: datetime,
    end: datetime,
    om_window: str,
    customers: list[Customer],
    n_subjects: int,
    openmeter: OpenMeterClient,
    counters: _Counters,
) -> Iterator[_Change]:
    """The changed windows of `customers` in [start, end), from windowed queries in chunks."""
    by_subject = {c.openmeter_subject: c for c in customers}
    use_filter = len(customers) <= SUBJECT_FILTER_MAX
    per_query = len(customers) if use_filter else max(n_subjects, len(customers))
    step = windows.WINDOW_LENGTH[Window(meter.window)]
    chunk = step * max(1, ROWS_PER_QUERY // max(1, per_query))
    bounds = []
    chunk_start = start
    while chunk_start < end:
        bounds.append((chunk_start, min(end, chunk_start + chunk)))
        chunk_start += chunk
    # Newest chunk first: fresh usage sits in the latest windows, so sending starts at once
    # and overlaps the comparison of the older chunks.
    for chunk_start, chunk_end in reversed(bounds):
        usage: dict[tuple[int, datetime], Decimal] = defaultdict(Decimal)
        for row in openmeter.query(
            slug=meter.openmeter_slug,
            start=chunk_start,
            end=chunk_end,
            window_size=om_window,
            subjects=list(by_subject) if use_filter else [],
        ):
            customer = by_subject.get(row.subject)
            if customer is not None:
                usage[(customer.pk, row.window_start)] += row.value
        yield from _changes(meter, chunk_start, chunk_end, by_subject, usage, counters)


def _changes(
    meter: Meter,
    start: datetime,
    end: datetime,
    by_subject: dict[str, Customer],
    usage: dict[tuple[int, datetime], Decimal],
    counters: _Counters,
) -> Iterator[_Change]:
    ids = {c.pk: c for c in by_subject.values()}
    state = ReportedWindow.objects.filter(
        meter=meter, window_start__gte=start, window_start__lt=end
    )
    if len(ids) <= 1000:
        state = state.filter(customer_id__in=list(ids))
    # Tuples, not model instances: a chunk holds tens of thousands of windows.
    held = {
        (customer_id, window_start): (value, sent_count, needs_resend)
        for customer_id, window_start, value, sent_count, needs_resend in state.values_list(
            "customer_id", "window_start", "value", "sent_count", "needs_resend"
        )
        if customer_id in ids
    }
    for key in sorted(set(usage) | set(held), key=lambda k: (k[1], k[0])):
        value = quantize(usage.get(key, Decimal(0)))
        previous = held.get(key)
        if previous is None:
            if value == 0:
                continue
            yield _Change(ids[key[0]], key[1], value, None, 0)
        elif previous[0] == value and not previous[2]:
            counters.events_unchanged += 1
        else:
            yield _Change(ids[key[0]], key[1], value, previous[0], previous[1])


class _Recorder:
    """Sends changes and writes their outcome in batches: ReportLog rows and ReportedWindow."""

    def __init__(self, run: ReportRun, meter: Meter, counters: _Counters) -> None:
        self.run, self.meter, self.counters = run, meter, counters
        self.step = windows.WINDOW_LENGTH[Window(meter.window)]
        self.logs: list[tuple[Any, ...]] = []  # ReportLog rows in _LOG_FIELDS order
        self.states: list[tuple[_Change, bool]] = []
        self.db = _Rows()
        self.run_tag = uuid.uuid4().hex[:12]

    def process(self, changes: Iterable[_Change], sender: Any) -> None:
        """Send the changes as they come (lazily: the sender pulls while it sends)."""

        def events() -> Iterator[MeterEvent]:
            for change in changes:
                customer = change.customer
                identifier = make_identifier(
                    meter=self.meter,
                    stripe_customer_id=customer.stripe_customer_id or f"local-{customer.pk}",
                    window_start=change.window_start,
                    value=change.value,
                    revision=change.revision,
                )
                if sender is None:
                    self._log(change, identifier, LogStatus.DRY_RUN)
                    self.counters.events_sent += 1
                elif not customer.stripe_customer_id:
                    self._log(
                        change,
                        identifier,
                        LogStatus.FAILED,
                        error=f"Customer '{customer.name}' has no Stripe customer id: "
                        "sync it first.",
                    )
                else:
                    yield MeterEvent(
                        key=change,
                        event_name=self.meter.event_name,
                        stripe_customer_id=customer.stripe_customer_id,
                        value=change.value,
                        timestamp=change.window_start,
                        identifier=identifier,
                    )
                if len(self.logs) >= FLUSH_EVERY:
                    self.flush()

        if sender is None:
            for _ in events():
                pass  # a dry run only logs
            return
        for result in sender.send(events(), run_tag=self.run_tag):
            self._result(result)

    def _result(self, result: SendResult) -> None:
        change: _Change = result.event.key
        if result.delivered:
            self._log(change, result.event.identifier, LogStatus.SENT, request_id=result.request_id)
            self.states.append((change, True))
        else:
            self._log(
                change,
                result.event.identifier,
                LogStatus.FAILED,
                request_id=result.request_id,
                error=result.error,
            )
            self.states.append((change, False))
        if len(self.logs) >= FLUSH_EVERY:
            self.flush()

    def _log(
        self,
        change: _Change,
        identifier: str,
        status: str,
        *,
        request_id: str = "",
        error: str = "",
    ) -> None:
        if status == LogStatus.FAILED:
            self.counters.events_failed += 1
        elif status == LogStatus.SENT:
            self.counters.events_sent += 1
        self.logs.append(
            (
                self.run.pk,
                self.meter.pk,
                change.customer.pk,
                self.db.moment(change.window_start),
                self.db.moment(change.window_start + self.step),
                self.db.decimal(change.value),
                None if change.previous is None else self.db.decimal(change.previous),
                identifier,
                status,
                request_id[:100],
                error,
            )
        )

    def flush(self) -> None:
        if not self.logs and not self.states:
            return
        with transaction.atomic():
            now = self.db.moment(timezone.now())
            self.db.insert(ReportLog, _LOG_FIELDS, [(*row, now) for row in self.logs])
            self._write_states()
            _save_counters(self.run, self.counters)
        self.logs, self.states = [], []
        logger.info(
            "Run %s: %d sent, %d unchanged, %d failed so far",
            self.run.pk,
            self.counters.events_sent,
            self.counters.events_unchanged,
            self.counters.events_failed,
        )

    def _write_states(self) -> None:
        sent = [c for c, ok in self.states if ok]
        failed = [c for c, ok in self.states if not ok and c.previous is not None]
        now = timezone.now()
        if sent:
            stamp = self.db.moment(now)
            self.db.insert(
                ReportedWindow,
                _STATE_FIELDS,
                [
                    (
                        self.meter.pk,
                        c.customer.pk,
                        self.db.moment(c.window_start),
                        self.db.decimal(c.value),
                        c.revision + 1,
                        False,
                        stamp,
                    )
                    for c in sent
                ],
                conflict=("meter", "customer", "window_start"),
            )
        if failed:
            # Stripe may or may not hold the failed value: make the next run send again.
            by_window: dict[datetime, list[int]] = defaultdict(list)
            for c in failed:
                by_window[c.window_start].append(c.customer.pk)
            for window_start, customer_ids in by_window.items():
                ReportedWindow.objects.filter(
                    meter=self.meter, window_start=window_start, customer_id__in=customer_ids
                ).update(needs_resend=True, updated_at=now)


_LOG_FIELDS = (
    "run",
    "meter",
    "customer",
    "window_start",
    "window_end",
    "quantity",
    "previous_quantity",
    "identifier",
    "status",
    "stripe_request_id",
    "error",
    "created_at",
)
_STATE_FIELDS = (
    "meter",
    "customer",
    "window_start",
    "value",
    "sent_count",
    "needs_resend",
    "updated_at",
)


class _Rows:
    """Bulk writes of plain rows: the ORM's bulk_create spends ~100 us per row preparing values
    (30,000 events: 3 s); here a value is adapted once (one window start serves 10,000 rows)
    and the rows go to executemany. INSERT ... ON CONFLICT: SQLite 3.24+ and PostgreSQL."""

    def __init__(self) -> None:
        self.ops = connection.ops
        self._moments: dict[datetime, Any] = {}
        self._sql: dict[tuple[Any, ...], str] = {}

    def moment(self, value: datetime) -> Any:
        adapted = self._moments.get(value)
        if adapted is None:
            if len(self._moments) > 10_000:
                self._moments.clear()
            adapted = self._moments[value] = self.ops.adapt_datetimefield_value(value)
        return adapted

    def decimal(self, value: Decimal) -> Any:
        return self.ops.adapt_decimalfield_value(value)

    def insert(
        self,
        model: type[models.Model],
        fields: Sequence[str],
        rows: list[tuple[Any, ...]],
        *,
        conflict: Sequence[str] = (),
    ) -> None:
        if not rows:
            return
        key = (model, tuple(fields), tuple(conflict))
        sql = self._sql.get(key)
        if sql is None:
            sql = self._sql[key] = _insert_sql(model, fields, conflict)
        with connection.cursor() as cursor:
            for i in range(0, len(rows), 500):
                cursor.executemany(sql, rows[i : i + 500])


def _insert_sql(model: type[models.Model], fields: Sequence[str], conflict: Sequence[str]) -> str:
    """Names come from the model, values are parameters."""
    opts = model._meta
    qn = connection.ops.quote_name

    def column(name: str) -> str:
        field = opts.get_field(name)
        assert isinstance(field, models.Field) and field.column
        return qn(field.column)

    columns = [column(name) for name in fields]
    sql = f"INSERT INTO {qn(opts.db_table)} ({', '.join(columns)}) VALUES "  # noqa: S608
    sql += f"({', '.join(['%s'] * len(columns))})"
    if conflict:
        keys = [column(name) for name in conflict]
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in keys)
        sql += f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
    return sql


def _save_counters(run: ReportRun, counters: _Counters) -> None:
    run.windows_checked = counters.windows_checked
    run.events_sent = counters.events_sent
    run.events_unchanged = counters.events_unchanged
    run.events_failed = counters.events_failed
    run.unmapped_subjects = len(counters.unmapped)
    run.unmapped_quantity = quantize(sum(counters.unmapped.values(), Decimal(0)))
    ReportRun.objects.filter(pk=run.pk).update(
        windows_checked=run.windows_checked,
        events_sent=run.events_sent,
        events_unchanged=run.events_unchanged,
        events_failed=run.events_failed,
        unmapped_subjects=run.unmapped_subjects,
        unmapped_quantity=run.unmapped_quantity,
    )


def _finish(run: ReportRun, counters: _Counters) -> None:
    _save_counters(run, counters)
    failures = counters.events_failed > 0 or bool(counters.errors)
    if not failures:
        status = RunStatus.SUCCEEDED
    elif counters.events_sent == 0:
        status = RunStatus.FAILED
    else:
        status = RunStatus.PARTIAL
    if counters.events_failed:
        counters.errors.append(
            f"{counters.events_failed} window(s) could not be sent; see the report log. "
            "The next run sends them again."
        )
    run.status = status
    run.error = "\n".join(counters.errors)
    run.finished_at = timezone.now()
    ReportRun.objects.filter(pk=run.pk).update(
        status=run.status, error=run.error, finished_at=run.finished_at
    )


def selected(
    *, meter_slugs: Iterable[str] = (), customer_subjects: Iterable[str] = ()
) -> tuple[list[Meter], list[Customer]]:
    """Look up meters and customers by slug/subject; unknown ones are a ReportInputError."""
    slugs, subjects = list(meter_slugs), list(customer_subjects)
    meters = list(Meter.objects.filter(openmeter_slug__in=slugs)) if slugs else []
    missing = sorted(set(slugs) - {m.openmeter_slug for m in meters})
    if missing:
        raise ReportInputError(f"Unknown meter(s): {', '.join(missing)}.")
    customers = list(Customer.objects.filter(openmeter_subject__in=subjects)) if subjects else []
    missing = sorted(set(subjects) - {c.openmeter_subject for c in customers})
    if missing:
        raise ReportInputError(f"Unknown customer subject(s): {', '.join(missing)}.")
    return meters, customers
