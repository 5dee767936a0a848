"""Send meter events to Stripe as fast as the rate limit allows, and no faster.

Two transports: v1 `POST /v1/billing/meter_events`, one event per request, sent concurrently;
and the v2 meter event stream (`STRIPE_METER_EVENT_STREAM=true`), up to 100 events per request
authenticated by a 15-minute session token. Both draw from one token bucket per process (see
ratelimit.py), and both retry 429s and 5xx with backoff until an event is delivered or its
failure is final. Requests run on a thread pool that works up to LOOKAHEAD_SECONDS ahead of the
caller, so the caller's own work (reading the next chunk, writing results) does not stall sending.

Senders never touch the database: they take events and yield results, and the reporting engine
records them. That keeps database writes in one thread (SQLite allows one writer).
"""

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import stripe
from django.conf import settings

from billing.formatting import plain_decimal, utc_iso_millis
from billing.integrations.ratelimit import TokenBucket
from billing.integrations.stripe_client import get_client
from billing.integrations.stripe_errors import describe, is_duplicate, retryable

logger = logging.getLogger(__name__)

V2_BATCH_SIZE = 100
# How far the senders work ahead of the caller: seconds of sending at the full rate, capped in
# events so that memory stays bounded whatever the rate.
LOOKAHEAD_SECONDS = 10.0
MAX_PENDING_EVENTS = 10_000
RATE_LIMITED_PAUSE = 0.1  # seconds every sender waits after a 429 without Retry-After
MAX_RETRY_AFTER_PAUSE = 30.0  # seconds: the longest Retry-After the whole process honours
# A 429 is not a failure of the event: Stripe did not process it. Rate-limited tries do not use
# up STRIPE_SEND_MAX_ATTEMPTS; they have their own budget, in time from the event's first 429,
# long enough to outlast any storm the adaptive bucket (ratelimit.py) has not already calmed.
RATE_LIMIT_BUDGET_SECONDS = 300.0
RATE_LIMIT_MAX_DELAY = 10.0  # seconds: the longest backoff between two rate-limited tries
T = TypeVar("T")


@dataclass(frozen=True)
class MeterEvent:
    key: Any  # the caller's handle for this event (returned with its result)
    event_name: str
    stripe_customer_id: str
    value: Decimal
    timestamp: datetime
    identifier: str

    def payload(self) -> dict[str, str]:
        return {"stripe_customer_id": self.stripe_customer_id, "value": plain_decimal(self.value)}


@dataclass(frozen=True)
class SendResult:
    event: MeterEvent
    delivered: bool
    request_id: str = ""
    error: str = ""


class _Base:
    events_per_job = 1

    def __init__(
        self,
        *,
        rate: float | None = None,
        max_attempts: int | None = None,
        backoff: float | None = None,
        concurrency: int | None = None,
        rate_limit_budget: float = RATE_LIMIT_BUDGET_SECONDS,
    ) -> None:
        self.rate = rate or settings.STRIPE_MAX_REQUESTS_PER_SECOND
        self.bucket = TokenBucket.shared(self.rate)  # one budget for the whole process
        self.max_attempts = max_attempts or settings.STRIPE_SEND_MAX_ATTEMPTS
        self.backoff = settings.STRIPE_RETRY_BACKOFF_SECONDS if backoff is None else backoff
        self.concurrency = concurrency or settings.STRIPE_SEND_CONCURRENCY
        self.client = get_client(max_network_retries=0)  # retries go through the bucket
        self.rate_limit_budget = rate_limit_budget
        self.requests = 0
        self.rate_limited = 0  # 429s answered to this sender (waited out or not)
        self._count_lock = threading.Lock()

    def _call(self, func: Callable[[], T]) -> T:
        """Call Stripe through the bucket, retrying what can be retried. Raises the last error.

        5xx, 409 and connection errors: up to `max_attempts` tries, exponential backoff. 429s:
        retried with exponential backoff and jitter (at least Retry-After) until
        `rate_limit_budget` seconds after the first one, without using up those tries; each
        also slows the whole process (bucket.throttle, bucket.pause).
        """
        failures = 0  # tries that failed for a reason other than a rate limit
        limited = 0
        limited_since = 0.0
        while True:
            self.bucket.acquire()
            with self._count_lock:
                self.requests += 1
            try:
                return func()
            except stripe.StripeError as exc:
                retry = retryable(exc)
                if retry is None:
                    raise
                if retry.rate_limited:
                    with self._count_lock:
                        self.rate_limited += 1
                    limited += 1
                    if limited == 1:
                        limited_since = time.monotonic()
                    elif time.monotonic() - limited_since >= self.rate_limit_budget:
                        raise
                    # Too fast for Stripe: slow every sender of the process, not only this one,
                    # or the others run into the same limit.
                    self.bucket.throttle()
                    backoff = min(RATE_LIMIT_MAX_DELAY, self.backoff * 2 ** min(limited - 1, 16))
                    if retry.retry_after is not None:
                        wait = min(retry.retry_after, MAX_RETRY_AFTER_PAUSE)
                        self.bucket.pause(wait)
                        time.sleep(wait + backoff * random.random())  # never before Retry-After
                    else:
                        self.bucket.pause(min(backoff, RATE_LIMITED_PAUSE))
                        time.sleep(backoff * (0.5 + random.random()))  # jitter spreads a storm
                    continue
                failures += 1
                if failures >= self.max_attempts:
                    raise
                delay = retry.retry_after or min(30.0, self.backoff * 2 ** (failures - 1))
                time.sleep(delay * (0.5 + random.random()))

    def _run_concurrently(
        self, jobs: Iterable[Any], work: Callable[[Any], list[SendResult]]
    ) -> Iterator[SendResult]:
        """Run `work` over `jobs` on the pool, yielding results as they complete.

        `jobs` is iterated in the caller's thread (it may read the database). Up to `lookahead`
        jobs are submitted ahead of their results, so the pool keeps sending while the caller
        is busy elsewhere (comparing the next chunk, writing results); that bounds memory too.
        If iterating `jobs` raises, jobs not started are dropped, the results of those already
        sent are yielded, then the error propagates: nothing sent goes unrecorded.
        """
        lookahead = self._lookahead()
        done: queue.SimpleQueue[Future[list[SendResult]]] = queue.SimpleQueue()
        pending: set[Future[list[SendResult]]] = set()
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="stripe")

        def collect(future: Future[list[SendResult]]) -> list[SendResult]:
            pending.discard(future)
            return [] if future.cancelled() else future.result()

        try:
            iterator = iter(jobs)
            while True:
                try:
                    job = next(iterator)
                except StopIteration:
                    break
                except BaseException:
                    for future in list(pending):
                        future.cancel()
                    while pending:
                        yield from collect(done.get())
                    raise
                future = pool.submit(work, job)
                pending.add(future)
                future.add_done_callback(done.put)
                while len(pending) >= lookahead:  # full: wait for one
                    yield from collect(done.get())
                while True:  # hand over what is already done, without waiting
                    try:
                        finished = done.get_nowait()
                    except queue.Empty:
                        break
                    yield from collect(finished)
            while pending:
                yield from collect(done.get())
        finally:
            # Normally nothing is left. If the caller stopped early, unsent jobs are dropped
            # rather than sent with nobody to record their result.
            pool.shutdown(wait=True, cancel_futures=True)

    def _lookahead(self) -> int:
        return max(
            2 * self.concurrency,
            min(int(self.rate * LOOKAHEAD_SECONDS), MAX_PENDING_EVENTS // self.events_per_job),
        )


class V1Sender(_Base):
    """One `POST /v1/billing/meter_events` per event, concurrently, at the configured rate."""

    def send(self, events: Iterable[MeterEvent]) -> Iterator[SendResult]:
        return self._run_concurrently(events, lambda event: [self._send_one(event)])

    def _send_one(self, event: MeterEvent) -> SendResult:
        params = {
            "event_name": event.event_name,
            "payload": event.payload(),
            "timestamp": int(event.timestamp.timestamp()),
            "identifier": event.identifier,
        }
        # Each try gets the library's fresh idempotency key: Stripe replays a stored answer for a
        # reused key, a 500 included, so one key for all tries could never succeed. Sending the
        # event twice is safe anyway: its identifier makes Stripe refuse the second copy.
        try:
            created = self._call(
                lambda: self.client.v1.billing.meter_events.create(params)  # type: ignore[arg-type]
            )
        except stripe.StripeError as exc:
            if is_duplicate(exc):
                return SendResult(event, True, exc.request_id or "", "already delivered")
            return SendResult(event, False, exc.request_id or "", describe(exc))
        except Exception as exc:  # an unexpected answer fails this event, not the run
            logger.exception("Sending meter event %s failed", event.identifier)
            return SendResult(event, False, "", describe(exc))
        response = created.last_response
        return SendResult(event, True, (response.request_id or "") if response else "")


class V2StreamSender(_Base):
    """Batches of up to 100 events to the v2 meter event stream, with a renewed session token."""

    events_per_job = V2_BATCH_SIZE

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._token: str | None = None
        self._renew_at = 0.0  # time.monotonic() after which the token is renewed
        self._token_lock = threading.Lock()

    def _session_token(self, *, renew: bool = False) -> str:
        with self._token_lock:
            if renew or self._token is None or time.monotonic() > self._renew_at:
                session = self._call(lambda: self.client.v2.billing.meter_event_session.create())
                self._token = session.authentication_token
                # The session's lifetime as Stripe states it (expires_at - created), counted on
                # this machine's monotonic clock, so a skewed wall clock cannot keep a dead
                # token. Renewed a minute early: a batch in flight must not carry an expiring one.
                lifetime = (_moment(session.expires_at) - _moment(session.created)).total_seconds()
                self._renew_at = time.monotonic() + max(0.0, lifetime - 60)
            return self._token

    def send(self, events: Iterable[MeterEvent]) -> Iterator[SendResult]:
        return self._run_concurrently(_batches(events, V2_BATCH_SIZE), self._send_batch)

    def _send_batch(self, batch: list[MeterEvent]) -> list[SendResult]:
        body = {
            "events": [
                {
                    "event_name": e.event_name,
                    "identifier": e.identifier,
                    "payload": e.payload(),
                    "timestamp": utc_iso_millis(e.timestamp),
                }
                for e in batch
            ]
        }
        renewed = False
        while True:
            options: dict[str, Any] = {"api_key": self._session_token(renew=renewed)}
            try:
                self._call(
                    lambda: self.client.v2.billing.meter_event_stream.create(
                        body,  # type: ignore[arg-type]
                        options=options,  # type: ignore[arg-type]  # noqa: B023 (called at once)
                    )
                )
            except stripe.StripeError as exc:
                expired = (
                    isinstance(exc, stripe.TemporarySessionExpiredError)
                    or exc.code == "billing_meter_event_session_expired"
                    or exc.http_status == 401
                )
                if expired and not renewed:
                    renewed = True
                    continue
                error = describe(exc)
                return [SendResult(e, False, exc.request_id or "", error) for e in batch]
            except Exception as exc:
                logger.exception("Sending a batch to the meter event stream failed")
                return [SendResult(e, False, "", describe(exc)) for e in batch]
            # The stream validates asynchronously: a 200 means Stripe took the batch.
            return [SendResult(e, True, "") for e in batch]


def _moment(value: Any) -> datetime:
    """A v2 timestamp: stripe-python gives a datetime or an RFC 3339 string."""
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _batches(events: Iterable[MeterEvent], size: int) -> Iterator[list[MeterEvent]]:
    batch: list[MeterEvent] = []
    for event in events:
        batch.append(event)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def make_sender(**kwargs: Any) -> "Sender":
    if settings.STRIPE_METER_EVENT_STREAM:
        return V2StreamSender(**kwargs)
    return V1Sender(**kwargs)


Sender = V1Sender | V2StreamSender
