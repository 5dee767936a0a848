"""Send meter events to Stripe as fast as the rate limit allows, and no faster.

Two transports: v1 `POST /v1/billing/meter_events`, one event per request, sent concurrently;
and the v2 meter event stream (`STRIPE_METER_EVENT_STREAM=true`), up to 100 events per request
authenticated by a 15-minute session token. Both call Stripe through StripeCaller
(stripe_calls.py): one token bucket per process, 429s and 5xx retried with backoff until an event
is delivered or its failure is final, and a pool that works ahead of the caller, so the caller's
own work (reading the next chunk, writing results) does not stall sending.

Events are posted through stripe-python's HTTP client (paced by the account's limiter like every
request) but not its resource layer: per request, that layer encodes the parameters, formats two
log lines and builds a StripeObject of the answer, which the sender only reads a request id from.
At Stripe's rate that was half the process's CPU. Errors are StripeErrors, read like any other.

Senders never touch the database: they take events and yield results, and the reporting engine
records them. That keeps database writes in one thread (SQLite allows one writer).
"""

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple
from urllib.parse import urlencode

import stripe
from django.conf import settings

from billing.formatting import plain_decimal, utc_iso_millis
from billing.integrations.stripe_calls import StripeCaller
from billing.integrations.stripe_client import PacedHTTPXClient
from billing.integrations.stripe_errors import describe, header, is_duplicate

logger = logging.getLogger(__name__)

V2_BATCH_SIZE = 100
EVENTS_PATH = "/v1/billing/meter_events"
STREAM_PATH = "/v2/billing/meter_event_stream"
USER_AGENT = f"meterbridge stripe-python/{stripe.VERSION}"
FORM = "application/x-www-form-urlencoded"


class MeterEvent(NamedTuple):  # one per event: a tuple is made in a fraction of a dataclass's time
    key: Any  # the caller's handle for this event (returned with its result)
    event_name: str
    stripe_customer_id: str
    value: Decimal
    timestamp: datetime
    identifier: str

    def payload(self) -> dict[str, str]:
        return {"stripe_customer_id": self.stripe_customer_id, "value": plain_decimal(self.value)}


class SendResult(NamedTuple):
    event: MeterEvent
    delivered: bool
    request_id: str = ""
    error: str = ""


class V1Sender(StripeCaller):
    """One `POST /v1/billing/meter_events` per event, concurrently, at the configured rate."""

    def send(self, events: Iterable[MeterEvent]) -> Iterator[SendResult]:
        return self._run_concurrently(events, lambda event: [self._send_one(event)])

    def _send_one(self, event: MeterEvent) -> SendResult:
        # The form stripe-python sends: payload[...] keys, every value a string.
        body = urlencode(
            {
                "event_name": event.event_name,
                "payload[stripe_customer_id]": event.stripe_customer_id,
                "payload[value]": plain_decimal(event.value),
                "timestamp": int(event.timestamp.timestamp()),
                "identifier": event.identifier,
            }
        ).encode()
        url = f"{settings.STRIPE_API_BASE.rstrip('/')}{EVENTS_PATH}"
        key = settings.STRIPE_API_KEY or ""
        # Each try gets a fresh idempotency key: Stripe replays a stored answer for a reused key,
        # a 500 included, so one key for all tries could never succeed. Sending the event twice
        # is safe anyway: its identifier makes Stripe refuse the second copy.
        try:
            headers = self._call(lambda: _post(self.http, url, body, token=key, form=True))
        except stripe.StripeError as exc:
            if is_duplicate(exc):
                return SendResult(event, True, exc.request_id or "", "already delivered")
            return SendResult(event, False, exc.request_id or "", describe(exc))
        except Exception as exc:  # an unexpected answer fails this event, not the run
            logger.exception("Sending meter event %s failed", event.identifier)
            return SendResult(event, False, "", describe(exc))
        return SendResult(event, True, header(headers, "request-id") or "")


class V2StreamSender(StripeCaller):
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
        # A batch's events mostly share one window: each moment is formatted once.
        stamps = {moment: utc_iso_millis(moment) for moment in {e.timestamp for e in batch}}
        body = json.dumps(
            {
                "events": [
                    {
                        "event_name": e.event_name,
                        "identifier": e.identifier,
                        "payload": e.payload(),
                        "timestamp": stamps[e.timestamp],
                    }
                    for e in batch
                ]
            }
        ).encode()
        url = f"{settings.STRIPE_METER_EVENTS_API_BASE.rstrip('/')}{STREAM_PATH}"
        renewed = False
        while True:
            token = self._session_token(renew=renewed)
            try:
                self._call(lambda: _post(self.http, url, body, token=token))  # noqa: B023
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


def _post(
    http: PacedHTTPXClient, url: str, body: bytes, *, token: str, form: bool = False
) -> Mapping[str, str]:
    """POST `body` (JSON, or a form) to Stripe; the answer's headers, or its error raised."""
    content, status, headers = http.request(
        "post",
        url,
        {
            "Authorization": f"Bearer {token}",
            "Content-Type": FORM if form else "application/json",
            "Idempotency-Key": str(uuid.uuid4()),  # a fresh one a try, as stripe-python
            "Stripe-Version": stripe.api_version,
            "User-Agent": USER_AGENT,
        },
        body,
    )
    if status >= 400:
        raise _error(content, status, headers)
    return headers


def _error(content: bytes, status: int, headers: Mapping[str, str]) -> stripe.StripeError:
    """An error answer ({"error": {"type", "code", "message"}}, v1 and v2) as stripe-python
    raises it."""
    try:
        answer = json.loads(content)
        error = answer["error"]
        code, message = error.get("code"), error.get("message")
    except (ValueError, KeyError, TypeError, AttributeError):
        answer, code, message = None, None, f"unreadable error answer (HTTP {status})"
    return stripe.StripeError(
        message=message,
        http_body=content,
        http_status=status,
        json_body=answer,
        headers=dict(headers),
        code=code,
    )


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
