"""Read back what Stripe will bill: meter event summaries, per customer and window.

`GET /v1/billing/meters/{id}/event_summaries` needs one customer per request (paginated), so a
reconciliation reads customers concurrently, every page through the process's token bucket: reads
and meter event sends together stay under STRIPE_MAX_REQUESTS_PER_SECOND."""

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import stripe

from billing.integrations.stripe_calls import StripeCaller
from billing.integrations.stripe_errors import describe

logger = logging.getLogger(__name__)

PAGE_SIZE = 100  # Stripe's largest page


@dataclass(frozen=True)
class SummaryRequest:
    key: Any  # the caller's handle for this customer (returned with its result)
    meter_id: str
    stripe_customer_id: str
    start: datetime
    end: datetime
    window: str  # "hour" or "day": Stripe's value_grouping_window


@dataclass
class CustomerSummaries:
    request: SummaryRequest
    values: dict[datetime, Decimal] = field(default_factory=dict)  # window start -> billed
    error: str = ""  # set when Stripe could not be read for this customer


class SummaryReader(StripeCaller):
    """Reads many customers' summaries concurrently, at the shared rate."""

    def read(self, requests: Iterable[SummaryRequest]) -> Iterator[CustomerSummaries]:
        return self._run_concurrently(requests, lambda request: [self._read_one(request)])

    def _read_one(self, request: SummaryRequest) -> CustomerSummaries:
        result = CustomerSummaries(request)
        params: dict[str, Any] = {
            "customer": request.stripe_customer_id,
            "start_time": int(request.start.timestamp()),
            "end_time": int(request.end.timestamp()),
            "value_grouping_window": request.window,
            "limit": PAGE_SIZE,
        }
        try:
            while True:
                page = self._call(
                    lambda: self.client.v1.billing.meters.event_summaries.list(
                        request.meter_id,
                        params,  # type: ignore[arg-type]
                    )
                )
                for summary in page.data:
                    start = datetime.fromtimestamp(summary.start_time, UTC)
                    result.values[start] = Decimal(str(summary.aggregated_value))
                if not page.has_more or not page.data:
                    return result
                params["starting_after"] = page.data[-1].id
        except stripe.StripeError as exc:
            result.error = describe(exc)
        except Exception as exc:  # an unexpected answer fails this customer, not the check
            logger.exception("Reading summaries of %s failed", request.stripe_customer_id)
            result.error = describe(exc)
        return result
