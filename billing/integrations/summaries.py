"""Read back what Stripe will bill: meter event summaries, per customer and window.

`GET /v1/billing/meters/{id}/event_summaries` needs one customer per request (paginated), so a
reconciliation reads customers concurrently, every page through the process's token bucket: reads
and meter event sends together stay under STRIPE_MAX_REQUESTS_PER_SECOND.

Pages are read with StripeReads (stripe_reads.py: the same request and errors as stripe-python,
at a fifth of the CPU of its raw_request) and their values taken from the JSON, not built into
typed objects: a reconciliation reads hundreds of pages per second."""

import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import stripe

from billing.integrations.stripe_calls import StripeCaller
from billing.integrations.stripe_errors import describe
from billing.integrations.stripe_reads import StripeReads

logger = logging.getLogger(__name__)

PAGE_SIZE = 100  # Stripe's largest page
READ_AHEAD_SECONDS = 20.0  # of reading at the full rate (10,000 customers' pages: ~70 MB)


@dataclass(frozen=True, slots=True)
class SummaryRequest:
    key: Any  # the caller's handle for this customer (returned with its result)
    meter_id: str
    stripe_customer_id: str
    start: datetime
    end: datetime
    window: str  # "hour" or "day": Stripe's value_grouping_window


@dataclass(slots=True)
class CustomerSummaries:
    request: SummaryRequest
    values: dict[int, Decimal] = field(default_factory=dict)  # window start (epoch s) -> billed
    error: str = ""  # set when Stripe could not be read for this customer


class SummaryReader(StripeCaller):
    """Reads many customers' summaries concurrently, at the shared rate."""

    def read(self, requests: Iterable[SummaryRequest]) -> Iterator[CustomerSummaries]:
        """Each request's summaries, in the order they arrive.

        `requests` are iterated in a feeder thread (so they must not touch the database): the
        readers keep going up to the lookahead even while the caller is busy for seconds
        (loading a meter's values), not only as fast as the caller takes results. Plain threads
        and queues rather than an executor: thousands of pending futures (a lock, a condition and
        a work item each) made every garbage collection of the process slower."""
        reads = StripeReads(limiter=self.bucket)
        todo: queue.SimpleQueue[SummaryRequest | None] = queue.SimpleQueue()
        done: queue.SimpleQueue[CustomerSummaries | BaseException | None] = queue.SimpleQueue()
        # Read ahead, not yet taken by the caller: enough for the caller to load a meter.
        slots = threading.Semaphore(max(2 * self.concurrency, int(self.rate * READ_AHEAD_SECONDS)))
        stop = threading.Event()

        def feed() -> None:
            try:
                for request in requests:
                    slots.acquire()
                    if stop.is_set():
                        break
                    todo.put(request)
            except BaseException as exc:  # handed to the caller, after what was read
                done.put(exc)
            finally:
                for _ in workers:
                    todo.put(None)

        def work() -> None:
            while (request := todo.get()) is not None:
                if not stop.is_set():
                    done.put(self._read_one(reads, request))
            done.put(None)

        workers = [
            threading.Thread(target=work, name=f"stripe-read-{n}", daemon=True)
            for n in range(self.concurrency)
        ]
        threads = [threading.Thread(target=feed, name="stripe-feed", daemon=True), *workers]
        for thread in threads:
            thread.start()
        failure: BaseException | None = None
        running = len(workers)
        try:
            while running:
                result = done.get()
                if result is None:
                    running -= 1
                elif isinstance(result, BaseException):
                    failure = result
                else:
                    slots.release()
                    yield result
        finally:
            stop.set()
            slots.release()  # wakes the feeder if it waits for a slot
            for thread in threads:
                thread.join()
            reads.close()
        if failure is not None:
            raise failure

    def _read_one(self, reads: StripeReads, request: SummaryRequest) -> CustomerSummaries:
        result = CustomerSummaries(request)
        path = f"/v1/billing/meters/{request.meter_id}/event_summaries"
        params: dict[str, Any] = {
            "customer": request.stripe_customer_id,
            "start_time": int(request.start.timestamp()),
            "end_time": int(request.end.timestamp()),
            "value_grouping_window": request.window,
            "limit": PAGE_SIZE,
        }
        try:
            while True:
                page = self._call(lambda: reads.get(path, params))
                summaries = page["data"]
                for summary in summaries:
                    value = Decimal(str(summary["aggregated_value"]))
                    result.values[int(summary["start_time"])] = value
                if not page["has_more"] or not summaries:
                    return result
                params["starting_after"] = summaries[-1]["id"]
        except stripe.StripeError as exc:
            result.error = describe(exc)
        except Exception as exc:  # an unexpected answer fails this customer, not the check
            logger.exception("Reading summaries of %s failed", request.stripe_customer_id)
            result.error = describe(exc)
        return result
