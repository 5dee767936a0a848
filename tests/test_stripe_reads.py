"""The reconciliation's lean read of Stripe answers and fails as stripe-python would: the same
error classes, status and message, so retries and the messages people read are the same."""

import time

import pytest
import stripe

from billing.integrations.ratelimit import TokenBucket
from billing.integrations.stripe_errors import describe, retryable
from billing.integrations.stripe_reads import StripeReads


@pytest.fixture
def limiter():
    return TokenBucket(rate=50)


@pytest.fixture
def reads(fake_stripe, limiter):
    reads = StripeReads(limiter=limiter)
    yield reads
    reads.close()


def test_a_page_of_summaries_is_the_json_stripe_sent(reads, fake_stripe):
    meters = reads.get("/v1/billing/meters", {"limit": 10})
    assert meters["object"] == "list" and meters["data"] == []


def test_an_unknown_meter_is_stripe_python_s_invalid_request_error(reads):
    with pytest.raises(stripe.InvalidRequestError) as caught:
        reads.get(
            "/v1/billing/meters/mtr_nope/event_summaries",
            {"customer": "cus_x", "start_time": 1764547200, "end_time": 1764550800},
        )
    assert caught.value.http_status == 404 and retryable(caught.value) is None
    assert "mtr_nope" in describe(caught.value) and caught.value.request_id


@pytest.mark.parametrize(
    ("status", "error", "retried"),
    [
        (429, stripe.RateLimitError, True),
        (500, stripe.APIError, True),
        (401, stripe.AuthenticationError, False),
        (403, stripe.PermissionError, False),
    ],
)
def test_each_failure_is_its_stripe_python_class(reads, fake_stripe, status, error, retried):
    if status == 429:
        fake_stripe.rate_limit_next(1)
    else:
        fake_stripe.fail_next(1, status=status)
    with pytest.raises(error) as caught:
        reads.get("/v1/billing/meters", {})
    assert caught.value.http_status == status
    assert (retryable(caught.value) is not None) is retried


def test_each_read_takes_a_slot_and_a_429_slows_every_caller(reads, fake_stripe, limiter):
    began = time.monotonic()
    for _ in range(10):
        reads.get("/v1/billing/meters", {})
    assert time.monotonic() - began >= 9 / limiter.rate * 0.9  # paced, not at once
    assert limiter.current_rate() == limiter.rate
    fake_stripe.rate_limit_next(1)
    with pytest.raises(stripe.RateLimitError):
        reads.get("/v1/billing/meters", {})
    assert limiter.current_rate() < limiter.rate


def test_stripe_out_of_reach_is_a_connection_error_that_is_retried(settings):
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # nothing listens on the discard port
    reads = StripeReads(limiter=TokenBucket(rate=50))
    with pytest.raises(stripe.APIConnectionError) as caught:
        reads.get("/v1/billing/meters", {})
    reads.close()
    assert retryable(caught.value) is not None and "Cannot reach Stripe" in str(caught.value)
