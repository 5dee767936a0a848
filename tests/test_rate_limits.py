"""Stripe slower than the app thinks: the emulator takes 5 requests/s while the app is set to 20,
answers 429 with `Stripe-Should-Retry: false` above that and a 500 on every 7th request. Every
window must still be billed exactly, nothing failed, and the run counts the 429s it waited out."""

import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
import stripe
from django.core.management import call_command

from billing.integrations import stripe_client
from billing.integrations.meter_events import V1Sender
from billing.integrations.ratelimit import TokenBucket
from billing.integrations.stripe_client import account_limiter, get_client
from billing.models import LogStatus, ReportLog, ReportRun, RunStatus
from tests.helpers import Usage, billed, hours_ago, synced_customers, synced_meter

pytestmark = pytest.mark.django_db

EVENTS = "/v1/billing/meter_events"


@pytest.fixture
def fresh_buckets() -> Iterator[None]:
    """Buckets are per process and remember 429s for a while: start and leave them clean (the
    cached clients hold theirs)."""
    TokenBucket._shared.clear()
    stripe_client._build.cache_clear()
    stripe_client._http.cache_clear()
    yield
    TokenBucket._shared.clear()
    stripe_client._build.cache_clear()
    stripe_client._http.cache_clear()


@pytest.mark.parametrize("stream", [False, True], ids=["v1", "v2-stream"])
def test_a_slower_stripe_than_configured_still_gets_every_window(
    fake_stripe, fake_openmeter, now, settings, capsys, fresh_buckets, stream
):
    settings.STRIPE_MAX_REQUESTS_PER_SECOND = 20
    settings.STRIPE_METER_EVENT_STREAM = stream
    meter = synced_meter(fake_openmeter)
    customers = synced_customers(["acme", "globex", "initech", "umbrella"])
    usage = Usage(fake_openmeter)
    for h in range(1, 9):
        for i, customer in enumerate(customers):
            usage.add(
                meter, customer.openmeter_subject, hours_ago(now, h) + timedelta(minutes=9), h + i
            )
    expected = usage.windows(meter, customers)

    fake_stripe.rate_limit_per_second = 5
    fake_stripe.rate_limit_should_retry = False
    fake_stripe.fail_every(7, status=500)
    requests_before = len(fake_stripe.requests)
    began = time.monotonic()
    start, end = hours_ago(now, 8), hours_ago(now, 0)
    # The v2 stream takes 100 events a request: re-send them one window at a time for a storm.
    periods = (
        [(hours_ago(now, h + 1), hours_ago(now, h)) for h in range(8)] if stream else [(start, end)]
    )
    for low, high in periods:  # exit 0: call_command raises SystemExit for any other code
        call_command("report_usage", "--from", low.isoformat(), "--to", high.isoformat())
    elapsed = time.monotonic() - began
    answered_500 = (len(fake_stripe.requests) - requests_before) // 7

    assert billed(fake_stripe, meter) == expected
    assert not ReportLog.objects.filter(status=LogStatus.FAILED).exists()
    runs = ReportRun.objects.all()
    assert {r.status for r in runs} == {RunStatus.SUCCEEDED}
    limited = sum(r.rate_limited for r in runs)
    assert limited > 0 and answered_500 > 0
    out = capsys.readouterr().out
    assert "rate-limited answer(s) (429) waited out" in out
    print(
        f"\n{'v2' if stream else 'v1'}: {len(expected)} events, {limited} 429s, "
        f"{answered_500} 500s, {elapsed:.1f} s"
    )
    assert elapsed < 20


def test_a_long_429_storm_does_not_use_up_the_ordinary_attempts(
    fake_stripe, fake_openmeter, now, settings, fresh_buckets
):
    settings.STRIPE_SEND_MAX_ATTEMPTS = 2
    meter = synced_meter(fake_openmeter)
    customers = synced_customers(["acme"])
    usage = Usage(fake_openmeter)
    usage.add(meter, "acme", hours_ago(now, 2) + timedelta(minutes=5), 3)
    fake_stripe.rate_limit_next(6, should_retry=False, path_prefix=EVENTS)
    fake_stripe.fail_next(1, status=500, path_prefix=EVENTS)  # one ordinary failure: still fine
    start, end = hours_ago(now, 3).isoformat(), hours_ago(now, 0).isoformat()
    call_command("report_usage", "--from", start, "--to", end)
    run = ReportRun.objects.get()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.rate_limited == 6 and run.events_sent == 1
    assert billed(fake_stripe, meter) == usage.windows(meter, customers)


def rate_limited(retry_after: str | None = None) -> stripe.RateLimitError:
    headers = {"stripe-should-retry": "false"}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    return stripe.RateLimitError("Too many requests", http_status=429, headers=headers)


def flaky(errors: list[Exception]) -> Callable[[], str]:
    def call() -> str:
        if errors:
            raise errors.pop(0)
        return "ok"

    return call


def test_retry_after_is_honoured(fresh_buckets):
    sender = V1Sender(rate=20, backoff=0.01)
    began = time.monotonic()
    assert sender._call(flaky([rate_limited("0.3")])) == "ok"
    assert time.monotonic() - began >= 0.3
    assert sender.rate_limited == 1


def test_a_429_to_any_request_slows_every_caller_of_the_account(
    fake_stripe, settings, fresh_buckets
):
    """The pacing is in the HTTP client: an admin sync's 429 slows the senders too."""
    settings.STRIPE_MAX_REQUESTS_PER_SECOND = 20
    sender = V1Sender(rate=20)
    assert sender.bucket.current_rate() == sender.bucket.rate
    fake_stripe.rate_limit_next(1)
    with pytest.raises(stripe.RateLimitError):
        get_client(max_network_retries=0).v1.customers.list()
    assert sender.bucket.current_rate() < sender.bucket.rate
    assert account_limiter(rate=20) is sender.bucket


def test_429s_have_their_own_time_budget(fresh_buckets):
    sender = V1Sender(rate=20, backoff=0.01, max_attempts=2, rate_limit_budget=0.5)
    errors: list[Exception] = [rate_limited() for _ in range(1000)]
    began = time.monotonic()
    with pytest.raises(stripe.RateLimitError):
        sender._call(flaky(errors))
    assert 0.5 <= time.monotonic() - began < 5
    assert sender.rate_limited > 2  # far more tries than max_attempts


def test_a_server_error_with_should_retry_false_and_a_bad_request_stay_final(fresh_buckets):
    sender = V1Sender(rate=20, backoff=0.01)
    bad = stripe.InvalidRequestError("No such customer", None, http_status=400)
    with pytest.raises(stripe.InvalidRequestError):
        sender._call(flaky([bad]))
    assert sender.requests == 1
    five = stripe.APIError("Boom", http_status=500, headers={"stripe-should-retry": "false"})
    with pytest.raises(stripe.APIError):
        sender._call(flaky([five]))
    assert sender.requests == 2 and sender.rate_limited == 0
