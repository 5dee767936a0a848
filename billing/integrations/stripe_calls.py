"""The retrying way to call Stripe, shared by the meter event senders and the reconciliation's
summary readers: 429s and 5xx retried with backoff, and a pool that works a bounded distance
ahead of its caller. Every request is paced by the account's limiter in the HTTP client
(stripe_client.py), whoever makes it."""

import functools
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import stripe
from django.conf import settings

from billing.integrations.stripe_client import (
    PacedHTTPXClient,
    account_limiter,
    get_client,
    get_http_client,
)
from billing.integrations.stripe_errors import retryable

# How far the senders work ahead of the caller: seconds of sending at the full rate, capped in
# events so that memory stays bounded whatever the rate.
LOOKAHEAD_SECONDS = 10.0
MAX_PENDING_EVENTS = 10_000
MAX_RETRY_AFTER_WAIT = 30.0  # seconds: the longest Retry-After a retry waits for
# A 429 is not a failure of the event: Stripe did not process it. Rate-limited tries do not use
# up STRIPE_SEND_MAX_ATTEMPTS; they have their own budget, in time from the event's first 429,
# long enough to outlast any storm the adaptive bucket (ratelimit.py) has not already calmed.
RATE_LIMIT_BUDGET_SECONDS = 300.0
RATE_LIMIT_MAX_DELAY = 10.0  # seconds: the longest backoff between two rate-limited tries
T = TypeVar("T")
R = TypeVar("R")


class StripeCaller:
    """Calls Stripe, retrying what can be retried, and runs
    work concurrently on a pool: what meter event senders and summary readers share."""

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
        self.bucket = account_limiter(rate=self.rate)  # the client's: one budget for all
        self.max_attempts = max_attempts or settings.STRIPE_SEND_MAX_ATTEMPTS
        self.backoff = settings.STRIPE_RETRY_BACKOFF_SECONDS if backoff is None else backoff
        self.concurrency = concurrency or settings.STRIPE_SEND_CONCURRENCY
        self.rate_limit_budget = rate_limit_budget
        self.requests = 0
        self.rate_limited = 0  # 429s answered to this sender (waited out or not)
        self._count_lock = threading.Lock()

    @functools.cached_property
    def client(self) -> stripe.StripeClient:
        """Built on first use (the summaries reader never needs one); retries go through the
        bucket, not stripe-python."""
        return get_client(max_network_retries=0, rate=self.rate)

    @functools.cached_property
    def http(self) -> PacedHTTPXClient:
        """The client's HTTP client, for the requests the senders make below its resources."""
        return get_http_client(rate=self.rate)

    def _call(self, func: Callable[[], T]) -> T:
        """Call Stripe, retrying what can be retried. Raises the last error.

        5xx, 409 and connection errors: up to `max_attempts` tries, exponential backoff. 429s:
        retried with exponential backoff and jitter (at least Retry-After) until
        `rate_limit_budget` seconds after the first one, without using up those tries (the HTTP
        client has already slowed every caller of the account).
        """
        failures = 0  # tries that failed for a reason other than a rate limit
        limited = 0
        limited_since = 0.0
        while True:
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
                    backoff = min(RATE_LIMIT_MAX_DELAY, self.backoff * 2 ** min(limited - 1, 16))
                    if retry.retry_after is not None:
                        wait = min(retry.retry_after, MAX_RETRY_AFTER_WAIT)
                        time.sleep(wait + backoff * random.random())  # never before Retry-After
                    else:
                        time.sleep(backoff * (0.5 + random.random()))  # jitter spreads a storm
                    continue
                failures += 1
                if failures >= self.max_attempts:
                    raise
                delay = retry.retry_after or min(30.0, self.backoff * 2 ** (failures - 1))
                time.sleep(delay * (0.5 + random.random()))

    def _run_concurrently(self, jobs: Iterable[Any], work: Callable[[Any], list[R]]) -> Iterator[R]:
        """Run `work` over `jobs` on the pool, yielding results as they complete.

        `jobs` is iterated in the caller's thread (it may read the database). Up to `lookahead`
        jobs are submitted ahead of their results, so the pool keeps sending while the caller
        is busy elsewhere (comparing the next chunk, writing results); that bounds memory too.
        If iterating `jobs` raises, jobs not started are dropped, the results of those already
        sent are yielded, then the error propagates: nothing sent goes unrecorded.
        """
        lookahead = self._lookahead()
        done: queue.SimpleQueue[Future[list[R]]] = queue.SimpleQueue()
        pending: set[Future[list[R]]] = set()
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="stripe")

        def collect(future: Future[list[R]]) -> list[R]:
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
