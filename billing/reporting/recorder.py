"""Sends one meter's changes and records each outcome: ReportLog rows (the audit trail) and
ReportedWindow (what Stripe holds), written together in one transaction per batch."""

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from django.db import transaction

from billing import clock
from billing.integrations.meter_events import MeterEvent, Sender, SendResult
from billing.models import LogStatus, Meter, ReportedWindow, ReportLog, ReportRun
from billing.reporting.bulk import Rows
from billing.reporting.detect import Change
from billing.reporting.tally import Tally
from billing.reporting.values import make_identifier

logger = logging.getLogger(__name__)

# Results are written in one transaction per batch: at least FLUSH_EVERY of them, at most
# FLUSH_MAX, and a full FLUSH_SECONDS apart in between, so a fast stream commits once a second or
# so (each commit costs an fsync) while a slow run still shows its progress every 2 seconds.
# What was sent but not yet written is sent again by the next run, under the same identifiers.
FLUSH_EVERY = 500
FLUSH_MAX = 10_000
FLUSH_SECONDS = 2.0
STAMP_SECONDS = 0.1  # a log row's created_at: the clock is read again after this long

LOG_FIELDS = (
    "run",
    "meter",
    "customer",
    "stripe_customer_id",
    "event_name",
    "window_start",
    "window_end",
    "quantity",
    "previous_quantity",
    "period_start",
    "identifier",
    "status",
    "stripe_request_id",
    "error",
    "created_at",
)
STATE_FIELDS = (
    "meter",
    "customer",
    "stripe_customer_id",
    "window_start",
    "value",
    "sent_count",
    "needs_resend",
    "updated_at",
)


class Recorder:
    def __init__(self, *, run: ReportRun, meter: Meter, tally: Tally) -> None:
        self.run, self.meter, self.tally = run, meter, tally
        self.step = meter.window_length
        self.logs: list[tuple[Any, ...]] = []  # ReportLog rows in LOG_FIELDS order
        self.states: list[tuple[Change, bool]] = []  # (change, delivered)
        self.db = Rows()
        self.flushed_at = time.monotonic()
        # Read once, not per event.
        self.run_id, self.meter_id, self.event_name = run.pk, meter.pk, meter.event_name
        self._bounds: dict[datetime, tuple[Any, Any]] = {}
        self._stamp: Any = None
        self._stamped_at = 0.0

    def bounds(self, window_start: datetime) -> tuple[Any, Any]:
        """A window's start and end as the database takes them (computed once per window)."""
        found = self._bounds.get(window_start)
        if found is None:
            end = window_start + self.step
            found = self._bounds[window_start] = (self.db.moment(window_start), self.db.moment(end))
        return found

    def stamp(self) -> Any:
        """Now, as the database takes it: when a result is recorded (to a tenth of a second)."""
        at = time.monotonic()
        if self._stamp is None or at - self._stamped_at >= STAMP_SECONDS:
            self._stamp, self._stamped_at = self.db.moment(clock.now()), at
        return self._stamp

    def identifier(self, change: Change) -> str:
        return make_identifier(
            event_name=self.event_name,
            stripe_customer_id=change.customer.stripe_customer_id,
            window_start=change.window_start,
            value=change.value,
            revision=change.revision,
        )

    def dry_run(self, changes: Iterable[Change]) -> None:
        """Log what would be sent; send nothing."""
        for change in changes:
            self.log(change, self.identifier(change), LogStatus.DRY_RUN)
            self.tally.events_sent += 1
            self.flush_if_due()

    def send(self, changes: Iterable[Change], sender: Sender) -> None:
        """Send the changes as they come: the sender pulls them lazily while it sends."""

        def events() -> Iterator[MeterEvent]:
            for change in changes:
                yield MeterEvent(
                    key=change,
                    event_name=self.event_name,
                    stripe_customer_id=change.customer.stripe_customer_id,
                    value=change.value,
                    timestamp=change.window_start,
                    identifier=self.identifier(change),
                )
                self.flush_if_due()

        # The sender counts its 429s (thread-safely); the run shows them as they come.
        before = self.tally.rate_limited - sender.rate_limited
        try:
            for result in sender.send(events()):
                self.tally.rate_limited = before + sender.rate_limited
                self.result(result)
        finally:
            self.tally.rate_limited = before + sender.rate_limited

    def result(self, result: SendResult) -> None:
        change: Change = result.event.key
        status = LogStatus.SENT if result.delivered else LogStatus.FAILED
        self.log(
            change,
            result.event.identifier,
            status,
            request_id=result.request_id,
            error="" if result.delivered else result.error,
        )
        self.states.append((change, result.delivered))
        self.flush_if_due()

    def log(
        self,
        change: Change,
        identifier: str,
        status: str,
        *,
        request_id: str = "",
        error: str = "",
    ) -> None:
        if status == LogStatus.FAILED:
            self.tally.events_failed += 1
        elif status == LogStatus.SENT:
            self.tally.events_sent += 1
        customer = change.customer
        self.logs.append(
            (
                self.run_id,
                self.meter_id,
                customer.id,
                customer.stripe_customer_id,
                self.event_name,
                *self.bounds(change.window_start),
                self.db.decimal(change.value),
                None if change.previous is None else self.db.decimal(change.previous),
                None if change.period_start is None else self.db.moment(change.period_start),
                identifier,
                status,
                request_id[:100],
                error,
                self.stamp(),
            )
        )

    def flush_if_due(self) -> None:
        pending = len(self.logs)
        if pending >= FLUSH_MAX or (
            pending >= FLUSH_EVERY and time.monotonic() - self.flushed_at >= FLUSH_SECONDS
        ):
            self.flush()

    def flush(self) -> None:
        self.flushed_at = time.monotonic()
        if not self.logs and not self.states:
            return
        with transaction.atomic():
            self.db.insert(ReportLog, LOG_FIELDS, self.logs)
            self.write_states()
            self.tally.save()
        self.logs, self.states = [], []
        logger.info(
            "Run %s: %d sent, %d unchanged, %d failed so far",
            self.run.pk,
            self.tally.events_sent,
            self.tally.events_unchanged,
            self.tally.events_failed,
        )

    def write_states(self) -> None:
        sent = [c for c, ok in self.states if ok]
        failed = [c for c, ok in self.states if not ok and c.previous is not None]
        now = clock.now()
        if sent:
            stamp = self.db.moment(now)
            self.db.insert(
                ReportedWindow,
                STATE_FIELDS,
                [
                    (
                        self.meter_id,
                        c.customer.id,
                        c.customer.stripe_customer_id,
                        self.bounds(c.window_start)[0],
                        self.db.decimal(c.value),
                        c.revision + 1,
                        False,
                        stamp,
                    )
                    for c in sent
                ],
                conflict=("meter", "stripe_customer_id", "window_start"),
            )
        if failed:
            # Stripe may or may not hold the failed value: make the next run send again.
            by_window: dict[datetime, list[str]] = defaultdict(list)
            for c in failed:
                by_window[c.window_start].append(c.customer.stripe_customer_id)
            for window_start, stripe_ids in by_window.items():
                ReportedWindow.objects.filter(
                    meter=self.meter, window_start=window_start, stripe_customer_id__in=stripe_ids
                ).update(needs_resend=True, updated_at=now)
