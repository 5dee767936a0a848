"""Which Stripe answers mean "Stripe already has this event", which are worth retrying, and what a
person is told."""

import stripe

from billing.integrations.stripe_errors import describe, is_duplicate, retryable


def error(
    message: str, *, code: str | None = None, status: int = 400, headers: dict | None = None
) -> stripe.StripeError:
    return stripe.InvalidRequestError(message, None, code=code, http_status=status, headers=headers)


def test_duplicate_identifier_answers_count_as_delivered():
    assert is_duplicate(error("An event already exists with identifier mb_1."))
    assert is_duplicate(error("Duplicate.", code="duplicate_meter_event"))


def test_other_refusals_are_failures():
    assert not is_duplicate(error("Invalid payload: value must be numeric."))
    assert not is_duplicate(error("A meter with this event name already exists."))
    assert not is_duplicate(error("An event already exists with identifier mb_1.", status=500))


def test_rate_limits_and_server_errors_are_retried_with_stripes_delay():
    retry = retryable(error("Too many requests", status=429, headers={"retry-after": "2"}))
    assert retry is not None and retry.retry_after == 2.0
    assert retryable(error("Boom", status=500)) is not None
    assert retryable(error("Conflict", status=409)) is not None
    assert retryable(stripe.APIConnectionError("connection refused")) is not None


def test_bad_requests_are_final():
    assert retryable(error("No such customer", status=400)) is None
    refused = error("No such customer", status=400, headers={"stripe-should-retry": "false"})
    assert retryable(refused) is None
    # Stripe knows a retry cannot succeed: final, as stripe-python reads it, for 5xx too.
    assert retryable(error("Boom", status=500, headers={"stripe-should-retry": "false"})) is None


def test_a_rate_limit_is_retried_whatever_should_retry_says():
    for should_retry in ("false", "true", None):
        headers = {} if should_retry is None else {"Stripe-Should-Retry": should_retry}
        retry = retryable(
            stripe.RateLimitError("Too many requests", http_status=429, headers=headers)
        )
        assert retry is not None and retry.rate_limited and retry.retry_after is None
    assert not retryable(error("Boom", status=500)).rate_limited  # type: ignore[union-attr]


def test_retry_after_is_read_in_seconds_whatever_the_header_case():
    def after(value: str) -> float | None:
        retry = retryable(error("Slow down", status=429, headers={"Retry-After": value}))
        assert retry is not None
        return retry.retry_after

    assert after("2") == 2.0
    assert after("0.5") == 0.5
    assert after("soon") is None
    assert after("-1") is None
    assert after("nan") is None
    retry = retryable(error("Boom", status=503, headers={"retry-after": "3"}))
    assert retry is not None and retry.retry_after == 3.0 and not retry.rate_limited


def test_should_retry_true_makes_a_client_error_retryable():
    assert retryable(error("Lock", status=400, headers={"stripe-should-retry": "true"})) is not None


def test_descriptions_name_the_status_and_request_and_hide_keys():
    exc = stripe.InvalidRequestError("Invalid API key sk_test_abcdefghijkl", None, http_status=401)
    exc.request_id = "req_123"
    text = describe(exc)
    assert text.startswith("Stripe answered 401: ")
    assert "(request req_123)" in text
    assert "sk_test_abcdefghijkl" not in text
    assert describe(ValueError()) == "ValueError"
