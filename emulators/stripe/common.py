"""Shared pieces of the Stripe emulator: limits, error type, records, route table, helpers."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

HOUR = 3600
DAY = 86400
MAX_PAST_SECONDS = 35 * DAY
MAX_FUTURE_SECONDS = 5 * 60
IDENTIFIER_TTL_SECONDS = DAY
IDEMPOTENCY_TTL_SECONDS = DAY
SESSION_TTL_SECONDS = 15 * 60
MAX_STREAM_EVENTS = 100
API_VERSION = "2026-10-28.endive"  # what stripe-python 16 pins
KEY_PREFIXES = ("sk_test_", "sk_live_", "rk_test_", "rk_live_")
STREAM_PATH = "/v2/billing/meter_event_stream"
WINDOW_SECONDS = {"hour": HOUR, "day": DAY}
MAX_VALUE_DIGITS = 15  # significant digits of a meter event value (2026-04-22 changelog)
MAX_SAMPLE_ERRORS = 3  # sample_errors per code in an error report
# The codes of Stripe's meter error reports (stripe-python's generated Literal list).
REPORT_CODES = frozenset(
    {
        "archived_meter",
        "meter_event_customer_not_found",
        "meter_event_dimension_count_too_high",
        "meter_event_invalid_value",
        "meter_event_no_customer_defined",
        "meter_event_value_too_many_digits",
        "missing_dimension_payload_keys",
        "no_meter",
        "timestamp_in_future",
        "timestamp_too_far_in_past",
    }
)
# v2 synchronous error codes -> the error report code of the same rejection
V2_TO_REPORT_CODE = {
    "payload_no_customer_defined": "meter_event_no_customer_defined",
    "payload_no_value_defined": "meter_event_invalid_value",
    "payload_invalid_value": "meter_event_invalid_value",
}

KINDS = (
    "customer",
    "product",
    "price",
    "billing.meter",
    "subscription",
    "subscription_item",
    "webhook_endpoint",
    "invoice",
    "invoiceitem",
    "credit_note",
)
_LABELS = {
    "customer": "customer",
    "product": "product",
    "price": "price",
    "billing.meter": "billing meter",
    "subscription": "subscription",
    "subscription_item": "subscription item",
    "webhook_endpoint": "webhook endpoint",
    "invoice": "invoice",
    "invoiceitem": "invoiceitem",
    "credit_note": "credit note",
}
_PREFIXES = {
    "customer": "cus_",
    "product": "prod_",
    "price": "price_",
    "billing.meter": "mtr_",
    "subscription": "sub_",
    "subscription_item": "si_",
    "webhook_endpoint": "we_",
    "invoice": "in_",
    "invoiceitem": "ii_",
    "credit_note": "cn_",
}
# Update operations that refuse fields outside their schema even with validate=False: that
# refusal is how Stripe keeps prices immutable and meters fixed except for their display name.
_ALWAYS_REJECT_UNKNOWN = {
    ("POST", "/v1/prices/{price}"),
    ("POST", "/v1/billing/meters/{id}"),
}

Json = dict[str, Any]


class ApiError(Exception):
    """A Stripe error answer; rendered as v1 or v2 error JSON depending on the path."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        extra: Json | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self, api: str) -> Json:
        err: Json
        if api == "v2":
            err = {"type": self.type, "code": self.code or _v2_default_code(self.status)}
            err["message"] = self.message
        else:
            err = {}
            if self.code:
                err["code"] = self.code
            err["message"] = self.message
            if self.param:
                err["param"] = self.param
            err["type"] = self.type
        err.update(self.extra)
        return {"error": err}


def _v2_default_code(status: int) -> str:
    return {401: "invalid_api_key", 404: "not_found", 429: "rate_limit"}.get(
        status, "internal_error" if status >= 500 else "invalid_request"
    )


class _Event:
    __slots__ = (
        "canceled",
        "customer",
        "event_name",
        "identifier",
        "meter",
        "received_at",
        "record",
        "seq",
        "ts",
        "value",
        "window",
    )

    def __init__(
        self,
        *,
        meter: str,
        event_name: str,
        customer: str,
        window: int,
        ts: int,
        value: Decimal,
        seq: int,
        identifier: str,
        received_at: float,
        record: Json,
    ) -> None:
        self.meter = meter
        self.event_name = event_name
        self.customer = customer
        self.window = window
        self.ts = ts
        self.value = value
        self.seq = seq
        self.identifier = identifier
        self.received_at = received_at
        self.record = record
        self.canceled = False


class _Fault:
    __slots__ = ("kind", "prefix", "remaining", "should_retry", "status")

    def __init__(
        self, kind: str, remaining: int, status: int, should_retry: bool | None, prefix: str
    ) -> None:
        self.kind = kind
        self.remaining = remaining
        self.status = status
        self.should_retry = should_retry
        self.prefix = prefix


class _Stored:
    __slots__ = ("at", "body", "fingerprint", "headers", "method", "path", "request_id", "status")

    def __init__(
        self,
        *,
        method: str,
        path: str,
        fingerprint: bytes,
        status: int,
        body: bytes,
        headers: dict[str, str],
        at: float,
        request_id: str,
    ) -> None:
        self.method = method
        self.path = path
        self.fingerprint = fingerprint
        self.status = status
        self.body = body
        self.headers = headers
        self.at = at
        self.request_id = request_id


class _Ctx:
    __slots__ = ("api", "livemode", "method", "path", "path_params")

    def __init__(
        self, api: str, livemode: bool, method: str, path: str, path_params: dict[str, str]
    ) -> None:
        self.api = api
        self.livemode = livemode
        self.method = method
        self.path = path
        self.path_params = path_params


Response = tuple[int, bytes, dict[str, str]]
_ROUTES: dict[tuple[str, str], str] = {}


def _route(method: str, template: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        _ROUTES[(method, template)] = fn.__name__
        return fn

    return deco


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=_json_default).encode()


def rfc3339(ts: float) -> str:
    """Epoch seconds -> ``2026-11-20T13:00:00.000Z``."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fingerprint(form: bool, query: str, body: bytes) -> bytes:
    """Digest of the request parameters, insensitive to their order (idempotency comparison)."""
    canonical: Any
    if form:
        text = body.decode("utf-8", "replace")
        canonical = sorted(parse_qsl(query, keep_blank_values=True)) + sorted(
            parse_qsl(text, keep_blank_values=True)
        )
    else:
        try:
            canonical = json.loads(body) if body.strip() else {}
        except ValueError:
            canonical = body.decode("utf-8", "replace")
    return hashlib.sha256(
        json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    ).digest()


def _redact(key: str) -> str:
    return "*" * max(len(key) - 4, 0) + key[-4:]


def _merge_metadata(current: dict[str, str], new: Any) -> dict[str, str]:
    if new == "" or new is None:
        return {}
    out = dict(current)
    for k, v in dict(new).items():
        if v == "":
            out.pop(k, None)
        else:
            out[k] = v
    return out


def _created_matches(created: int, flt: Any) -> bool:
    if flt is None:
        return True
    if isinstance(flt, int):
        return created == flt
    if not isinstance(flt, dict):
        return True
    checks = {
        "gt": created > flt.get("gt", created - 1),
        "gte": created >= flt.get("gte", created),
        "lt": created < flt.get("lt", created + 1),
        "lte": created <= flt.get("lte", created),
    }
    return all(checks.values())


def _pname(prefix: str, key: str) -> str:
    return f"{prefix}[{key}]" if prefix else key


def _missing(kind: str, obj_id: str, *, param: str, status: int = 400) -> ApiError:
    return ApiError(
        status, f"No such {_LABELS[kind]}: '{obj_id}'", code="resource_missing", param=param
    )


def _aggregate(formula: str, events: list[_Event]) -> Decimal:
    if not events:
        return Decimal(0)
    if formula == "count":
        return Decimal(len(events))
    if formula == "last":
        return max(events, key=lambda ev: (ev.ts, ev.seq)).value
    return sum((ev.value for ev in events), Decimal(0))


def run_every(
    owner: Any, attr: str, seconds: float | None, action: Callable[[], object], *, name: str
) -> None:
    """Call ``action`` every ``seconds`` on a daemon thread, replacing the one whose stop event
    ``owner.<attr>`` holds; None or 0 only stops it (as setting that event does)."""
    with owner._lock:
        previous = getattr(owner, attr)
        setattr(owner, attr, None)
    if previous is not None:
        previous.set()
    if not seconds or seconds <= 0:
        return
    stopped = threading.Event()

    def run() -> None:
        while not stopped.wait(seconds):
            action()

    with owner._lock:
        setattr(owner, attr, stopped)
    threading.Thread(target=run, name=name, daemon=True).start()
