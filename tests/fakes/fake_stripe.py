"""A stateful loopback fake of the Stripe API (v1 form-encoded and v2 JSON on one port).

Standard library only. Meant to be driven through the real stripe-python client::

    fake = FakeStripe().start()
    client = stripe.StripeClient(
        "sk_test_123",
        base_addresses={"api": fake.url, "meter_events": fake.url},
        http_client=stripe.HTTPXClient(allow_sync_methods=True),
    )

Requests are checked against the OpenAPI subsets in ``shared/contracts/stripe`` (see
``stripe_contract.py``) and against the Stripe rules that matter for usage billing: meters with an
``event_time_window`` keep only the most recently received event per customer and window, meter
event identifiers are unique for 24 hours, event timestamps must lie within the past 35 days and
at most 5 minutes ahead, metered prices need an active meter, prices are immutable.

Stripe time (``created``, the 35-day / 5-minute / 24-hour rules, session expiry) comes from
``clock``; the ``rate_limit_per_second`` window uses the real monotonic clock.

Run ``python -m tests.fakes.fake_stripe --port 12111`` to serve it by hand.
"""

from __future__ import annotations

import argparse
import calendar
import hashlib
import json
import secrets
import socket
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

from . import stripe_contract as contract

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

KINDS = (
    "customer",
    "product",
    "price",
    "billing.meter",
    "subscription",
    "subscription_item",
    "webhook_endpoint",
)
_LABELS = {
    "customer": "customer",
    "product": "product",
    "price": "price",
    "billing.meter": "billing meter",
    "subscription": "subscription",
    "subscription_item": "subscription item",
    "webhook_endpoint": "webhook endpoint",
}
_PREFIXES = {
    "customer": "cus_",
    "product": "prod_",
    "price": "price_",
    "billing.meter": "mtr_",
    "subscription": "sub_",
    "subscription_item": "si_",
    "webhook_endpoint": "we_",
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


def _add_interval(ts: int, interval: str, count: int) -> int:
    dt = datetime.fromtimestamp(ts, UTC)
    if interval == "day":
        dt += timedelta(days=count)
    elif interval == "week":
        dt += timedelta(weeks=count)
    else:
        months = dt.month - 1 + count * (12 if interval == "year" else 1)
        year, month = dt.year + months // 12, months % 12 + 1
        day = min(dt.day, calendar.monthrange(year, month)[1])
        dt = dt.replace(year=year, month=month, day=day)
    return int(dt.timestamp())


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


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Request Failed",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], fake: FakeStripe) -> None:
        self.fake = fake
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeStripe/1.0"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def _serve(self, method: str) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        body = self.rfile.read(length) if length > 0 else b""
        result = self.server.fake._handle(method, self.path, self.headers, body)
        if result is None:  # FakeStripe.down: hang up without an answer
            self.close_connection = True
            return
        status, payload, headers = result
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
            "Content-Type: application/json",
            f"Content-Length: {len(payload)}",
        ]
        lines.extend(f"{k}: {v}" for k, v in headers.items())
        if self.close_connection:
            lines.append("Connection: close")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)


class FakeStripe:
    """Stateful fake of the Stripe v1/v2 endpoints a usage-billing app needs (see module doc)."""

    def __init__(self, *, validate: bool = True) -> None:
        self.validate = validate
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url: str = ""
        self.objects: dict[str, dict[str, Json]] = {k: {} for k in KINDS}
        self.meter_events: list[Json] = []
        self.async_errors: list[Json] = []
        self.requests: list[tuple[str, str]] = []
        self.latency: float = 0.0
        self.rate_limit_per_second: float | None = None
        self.down: bool = False
        self.clock: Callable[[], float] = time.time
        self._callback: Callable[[Json], None] | None = None
        self._faults: list[_Fault] = []
        self._deleted: dict[str, set[str]] = {"customer": set(), "product": set()}
        self._idempotency: dict[str, _Stored] = {}
        self._identifiers: dict[str, _Event] = {}
        # meter id -> customer -> window start -> events (arrival order)
        self._buckets: dict[str, dict[str, dict[int, list[_Event]]]] = {}
        self._active_by_event_name: dict[str, str] = {}
        self._sessions: dict[str, tuple[float, bool]] = {}
        self._rate_window: deque[float] = deque()
        self._seq = 0
        self._created: list[tuple[str, str]] = []  # objects created by the current request

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, port: int = 0) -> FakeStripe:
        """Bind 127.0.0.1 (port 0 = any free port) and serve in a daemon thread."""
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", port), self)
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-stripe-{server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeStripe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget all objects, events, requests, faults and switches (clock back to time.time)."""
        with self._lock:
            for kind in KINDS:
                self.objects.setdefault(kind, {}).clear()
            self.meter_events.clear()
            self.async_errors.clear()
            self.requests.clear()
            self.latency = 0.0
            self.rate_limit_per_second = None
            self.down = False
            self.clock = time.time
            self._callback = None
            self._faults.clear()
            for ids in self._deleted.values():
                ids.clear()
            self._idempotency.clear()
            self._identifiers.clear()
            self._buckets.clear()
            self._active_by_event_name.clear()
            self._sessions.clear()
            self._rate_window.clear()

    # ------------------------------------------------------------------ inspection

    def billed_value(self, meter_id: str, customer_id: str, window_start: int) -> Decimal | None:
        """What Stripe keeps for that window: the latest received event's value on a meter with an
        ``event_time_window`` (raw meters: the formula over that hour's events); None if none."""
        with self._lock:
            meter = self.objects["billing.meter"].get(meter_id)
            if meter is None:
                return None
            size = self._window_size(meter)
            start = int(window_start) - int(window_start) % size
            events = self._buckets.get(meter_id, {}).get(customer_id, {}).get(start)
            return self._bucket_value(meter, events) if events else None

    def billed_windows(self, meter_id: str) -> dict[tuple[str, int], Decimal]:
        """(customer id, window start epoch) -> value kept for it, for every non-empty window."""
        with self._lock:
            meter = self.objects["billing.meter"].get(meter_id)
            if meter is None:
                return {}
            return {
                (customer, start): self._bucket_value(meter, events)
                for customer, windows in self._buckets.get(meter_id, {}).items()
                for start, events in windows.items()
                if events
            }

    def billed_total(self, meter_id: str, customer_id: str) -> Decimal:
        with self._lock:
            meter = self.objects["billing.meter"].get(meter_id)
            if meter is None:
                return Decimal(0)
            windows = self._buckets.get(meter_id, {}).get(customer_id, {})
            return sum((self._bucket_value(meter, ev) for ev in windows.values() if ev), Decimal(0))

    def count(self, method: str, path_prefix: str) -> int:
        method = method.upper()
        with self._lock:
            return sum(1 for m, p in self.requests if m == method and p.startswith(path_prefix))

    # ------------------------------------------------------------------ faults

    def fail_next(self, n: int, *, status: int = 500, path_prefix: str = "") -> None:
        """Answer the next ``n`` requests under ``path_prefix`` with a ``status`` Stripe error.

        Faults queue up in call order. ``n <= 0`` disarms the pending ``fail_next`` faults whose
        prefix starts with ``path_prefix`` (all of them for ``""``).
        """
        self._arm("fail", n, status, None, path_prefix)

    def rate_limit_next(
        self, n: int, *, should_retry: bool | None = None, path_prefix: str = ""
    ) -> None:
        """Answer the next ``n`` requests with 429 rate_limit (``Stripe-Should-Retry`` if given).

        ``n <= 0`` disarms the pending rate-limit faults under ``path_prefix``.
        """
        self._arm("rate_limit", n, 429, should_retry, path_prefix)

    def reset_faults(self) -> None:
        """Disarm all faults and switches (latency, rate_limit_per_second, down); keep the state."""
        with self._lock:
            self._faults.clear()
            self.latency = 0.0
            self.rate_limit_per_second = None
            self.down = False
            self._rate_window.clear()

    def _arm(
        self, kind: str, n: int, status: int, should_retry: bool | None, path_prefix: str
    ) -> None:
        with self._lock:
            if n > 0:
                self._faults.append(_Fault(kind, n, status, should_retry, path_prefix))
            else:
                self._faults[:] = [
                    f
                    for f in self._faults
                    if not (f.kind == kind and f.prefix.startswith(path_prefix))
                ]

    def on_meter_event(self, callback: Callable[[Json], None] | None) -> None:
        """Call ``callback(event)`` after each accepted meter event, before its answer is sent."""
        with self._lock:
            self._callback = callback

    # ------------------------------------------------------------------ request pipeline

    def _handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> Response | None:
        path, _, query = raw_path.partition("?")
        with self._lock:
            self.requests.append((method, path))
            if self.down:
                return None
        latency = self.latency
        if latency > 0:
            time.sleep(latency)
        request_id = "req_" + secrets.token_hex(7)
        accepted: list[Json] = []
        try:
            with self._lock:
                response = self._handle_locked(
                    method, path, query, headers, body, request_id, accepted
                )
        except Exception as exc:  # a bug in the fake: answer 500 and say where
            traceback.print_exc(file=sys.stderr)
            err = ApiError(500, f"fake_stripe crashed: {exc!r}", type="api_error")
            api = "v2" if path.startswith("/v2/") else "v1"
            return 500, _dumps(err.body(api)), {"Request-Id": request_id}
        callback = self._callback
        if callback is not None:
            for event in accepted:
                try:
                    callback(event)
                except Exception:
                    traceback.print_exc(file=sys.stderr)
        return response

    def _handle_locked(
        self,
        method: str,
        path: str,
        query: str,
        headers: Any,
        body: bytes,
        request_id: str,
        accepted: list[Json],
    ) -> Response:
        api = "v2" if path.startswith("/v2/") else "v1"
        out_headers = {
            "Request-Id": request_id,
            "Stripe-Version": headers.get("Stripe-Version") or API_VERSION,
        }

        fault = self._take_fault(path)
        if fault is not None:
            err = self._fault_error(fault, api)
            return err.status, _dumps(err.body(api)), {**out_headers, **err.headers}

        if self.rate_limit_per_second is not None:
            now = time.monotonic()
            window = self._rate_window
            while window and now - window[0] >= 1.0:
                window.popleft()
            if len(window) >= self.rate_limit_per_second:
                err = self._rate_limit_error(api, None)
                return err.status, _dumps(err.body(api)), {**out_headers, **err.headers}
            window.append(now)

        idem_key: str | None = None
        fingerprint = b""
        try:
            found = contract.match(method, path)
            if found is None or (method, found[0].template) not in _ROUTES:
                raise ApiError(
                    404,
                    f"Unrecognized request URL ({method}: {path}). Please see "
                    "https://stripe.com/docs or we can help at https://support.stripe.com/.",
                )
            op, path_params = found
            livemode = self._authenticate(op.template, headers)

            if method == "POST" or (api == "v2" and method == "DELETE"):
                idem_key = headers.get("Idempotency-Key") or None
            if idem_key is not None:
                fingerprint = _fingerprint(op.form, query, body)
                stored = self._idempotency.get(idem_key)
                if stored is not None and self.clock() - stored.at < IDEMPOTENCY_TTL_SECONDS:
                    return self._replay(stored, method, path, fingerprint, idem_key, out_headers)

            raw = self._parse_params(op, query, body)
            try:
                params = contract.validate(
                    op,
                    raw,
                    strict=self.validate,
                    reject_unknown=(method, op.template) in _ALWAYS_REJECT_UNKNOWN,
                )
            except contract.ContractError as e:
                raise ApiError(400, e.message, code=e.code, param=e.param) from None
        except ApiError as e:  # refused before the endpoint ran: nothing stored
            return e.status, _dumps(e.body(api)), {**out_headers, **e.headers}

        ctx = _Ctx(api, livemode, method, path, path_params)
        handler = getattr(self, _ROUTES[(method, op.template)])
        status = 200
        extra: dict[str, str] = {}
        self._created.clear()
        try:
            payload = _dumps(handler(ctx, params, accepted))
        except ApiError as e:  # Stripe requests are atomic: drop what this one created
            for kind, obj_id in self._created:
                self.objects[kind].pop(obj_id, None)
            status, payload, extra = e.status, _dumps(e.body(api)), e.headers
        finally:
            self._created.clear()
        if idem_key is not None:
            self._idempotency[idem_key] = _Stored(
                method=method,
                path=path,
                fingerprint=fingerprint,
                status=status,
                body=payload,
                headers=extra,
                at=self.clock(),
                request_id=request_id,
            )
        return status, payload, {**out_headers, **extra}

    def _replay(
        self,
        stored: _Stored,
        method: str,
        path: str,
        fingerprint: bytes,
        key: str,
        out_headers: dict[str, str],
    ) -> Response:
        if stored.method != method or stored.path != path:
            err = ApiError(
                400,
                "Keys for idempotent requests can only be used for the same endpoint they were "
                f"first used for ('{stored.method} {stored.path}' vs '{method} {path}'). Try "
                f"using a key other than '{key}' if you meant to execute a different request.",
                type="idempotency_error",
            )
        elif stored.fingerprint != fingerprint:
            err = ApiError(
                400,
                "Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{key}' if you meant to "
                "execute a different request.",
                type="idempotency_error",
            )
        else:
            return (
                stored.status,
                stored.body,
                {
                    **out_headers,
                    **stored.headers,
                    "Idempotent-Replayed": "true",
                    "Original-Request": stored.request_id,
                },
            )
        api = "v2" if path.startswith("/v2/") else "v1"
        return err.status, _dumps(err.body(api)), out_headers

    def _parse_params(self, op: contract.Operation, query: str, body: bytes) -> Json:
        try:
            if op.form:
                raw = contract.parse_form(query) if query else {}
                if body:
                    raw.update(contract.parse_form(body.decode("utf-8")))
                return raw
            data = json.loads(body) if body.strip() else {}
        except contract.ContractError as e:
            raise ApiError(400, e.message, code=e.code, param=e.param) from None
        except (ValueError, UnicodeDecodeError):
            raise ApiError(
                400, "Invalid request body: not valid JSON.", code="invalid_body"
            ) from None
        if not isinstance(data, dict):
            raise ApiError(
                400, "Invalid request body: expected a JSON object.", code="invalid_body"
            )
        return data

    def _authenticate(self, template: str, headers: Any) -> bool:
        """Return livemode for the request's credentials, or raise 401."""
        auth = headers.get("Authorization") or ""
        scheme, _, key = auth.partition(" ")
        key = key.strip()
        if not auth or scheme.lower() != "bearer" or not key:
            raise ApiError(
                401,
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, "
                "or we can help at https://support.stripe.com/.",
            )
        if template == STREAM_PATH:
            session = self._sessions.get(key)
            if session is None:
                raise ApiError(
                    401,
                    f"Invalid authentication token provided: {_redact(key)}. The meter event "
                    "stream takes the authentication_token of a meter event session "
                    "(POST /v2/billing/meter_event_session).",
                    code="invalid_api_key",
                )
            expires_at, livemode = session
            if self.clock() >= expires_at:
                raise ApiError(
                    401,
                    "The meter event session has expired. Create a new session with "
                    "POST /v2/billing/meter_event_session.",
                    type="temporary_session_expired",
                    code="billing_meter_event_session_expired",
                    extra={"doc_url": "https://docs.stripe.com/api/v2/billing-meter-stream"},
                )
            return livemode
        if not key.startswith(KEY_PREFIXES):
            raise ApiError(401, f"Invalid API Key provided: {_redact(key)}")
        return "_live_" in key

    def _take_fault(self, path: str) -> _Fault | None:
        for fault in self._faults:
            if path.startswith(fault.prefix):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _fault_error(self, fault: _Fault, api: str) -> ApiError:
        if fault.kind == "rate_limit" or fault.status == 429:
            return self._rate_limit_error(api, fault.should_retry)
        if fault.status >= 500:
            return ApiError(
                fault.status,
                "Sorry, something went wrong on our end (fake_stripe injected fault).",
                type="api_error",
            )
        if fault.status == 409:
            return ApiError(
                409,
                "This object cannot be accessed right now because another API request or Stripe "
                "process is currently accessing it (fake_stripe injected fault).",
                code="lock_timeout",
            )
        return ApiError(fault.status, "fake_stripe injected fault.")

    @staticmethod
    def _rate_limit_error(api: str, should_retry: bool | None) -> ApiError:
        headers = {} if should_retry is None else {"Stripe-Should-Retry": str(should_retry).lower()}
        return ApiError(
            429,
            "Request rate limit exceeded. Learn more about rate limits here "
            "https://stripe.com/docs/rate-limits.",
            type="rate_limit" if api == "v2" else "invalid_request_error",
            code="rate_limit",
            headers=headers,
        )

    # ------------------------------------------------------------------ helpers

    def _now(self) -> int:
        return int(self.clock())

    def _new_id(self, kind: str, livemode: bool = False) -> str:
        prefix = _PREFIXES[kind]
        if kind == "billing.meter":
            prefix += "live_" if livemode else "test_"
        while True:
            new = prefix + secrets.token_hex(12)
            if new not in self.objects[kind]:
                return new

    def _put(self, kind: str, obj: Json) -> None:
        self.objects[kind][obj["id"]] = obj
        self._created.append((kind, obj["id"]))

    def _get(self, kind: str, obj_id: str, *, param: str = "id", status: int = 404) -> Json:
        obj = self.objects[kind].get(obj_id)
        if obj is None:
            raise _missing(kind, obj_id, param=param, status=status)
        return obj

    @staticmethod
    def _window_size(meter: Json) -> int:
        return WINDOW_SECONDS.get(meter.get("event_time_window") or "", HOUR)

    @staticmethod
    def _bucket_value(meter: Json, events: list[_Event]) -> Decimal:
        formula = meter["default_aggregation"]["formula"]
        if meter.get("event_time_window"):
            return events[-1].value  # pre-aggregated: latest received event wins
        return _aggregate(formula, events)

    def _list(self, ctx: _Ctx, items: list[Json], params: Json, url: str) -> Json:
        """Stripe list object over ``items`` (already in list order), cursor-paginated."""
        limit = params.get("limit", 10)
        if not 1 <= limit <= 100:
            raise ApiError(
                400,
                f"Invalid limit: must be between 1 and 100 (got {limit}).",
                code="parameter_invalid_integer",
                param="limit",
            )
        after, before = params.get("starting_after"), params.get("ending_before")
        ids = [item["id"] for item in items]
        if after:
            if after not in ids:
                raise ApiError(
                    400,
                    f"No such object: '{after}'",
                    code="resource_missing",
                    param="starting_after",
                )
            rest = items[ids.index(after) + 1 :]
            page, has_more = rest[:limit], len(rest) > limit
        elif before:
            if before not in ids:
                raise ApiError(
                    400,
                    f"No such object: '{before}'",
                    code="resource_missing",
                    param="ending_before",
                )
            rest = items[: ids.index(before)]
            page, has_more = rest[-limit:], len(rest) > limit
        else:
            page, has_more = items[:limit], len(items) > limit
        return {"object": "list", "data": page, "has_more": has_more, "url": url}

    def _newest_first(self, kind: str) -> list[Json]:
        return list(reversed(self.objects[kind].values()))

    # ------------------------------------------------------------------ customers

    _CUSTOMER_FIELDS = (
        "address",
        "balance",
        "business_name",
        "description",
        "email",
        "individual_name",
        "invoice_prefix",
        "name",
        "next_invoice_sequence",
        "phone",
        "preferred_locales",
        "shipping",
        "tax_exempt",
    )

    def _apply_customer(self, obj: Json, p: Json) -> None:
        for key in self._CUSTOMER_FIELDS:
            if key in p:
                obj[key] = None if p[key] == "" else p[key]
        if obj.get("tax_exempt") is None:
            obj["tax_exempt"] = "none"
        if "metadata" in p:
            obj["metadata"] = _merge_metadata(obj["metadata"], p["metadata"])
        settings = p.get("invoice_settings")
        if isinstance(settings, dict):
            for key, value in settings.items():
                obj["invoice_settings"][key] = None if value == "" else value

    @_route("POST", "/v1/customers")
    def _customer_create(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        cid = self._new_id("customer")
        obj: Json = {
            "id": cid,
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": self._now(),
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": None,
            "discount": None,
            "email": None,
            "invoice_prefix": secrets.token_hex(4).upper(),
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": ctx.livemode,
            "metadata": {},
            "name": None,
            "next_invoice_sequence": 1,
            "phone": None,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }
        self._apply_customer(obj, p)
        self._put("customer", obj)
        return obj

    @_route("GET", "/v1/customers/{customer}")
    def _customer_retrieve(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        cid = ctx.path_params["customer"]
        if cid in self._deleted["customer"]:
            return {"id": cid, "object": "customer", "deleted": True}
        return self._get("customer", cid)

    @_route("POST", "/v1/customers/{customer}")
    def _customer_update(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        obj = self._get("customer", ctx.path_params["customer"])
        self._apply_customer(obj, p)
        return obj

    @_route("DELETE", "/v1/customers/{customer}")
    def _customer_delete(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        cid = ctx.path_params["customer"]
        self._get("customer", cid)
        del self.objects["customer"][cid]
        self._deleted["customer"].add(cid)
        now = self._now()
        for sub in self.objects["subscription"].values():
            if sub["customer"] == cid and sub["status"] != "canceled":
                sub.update(status="canceled", canceled_at=now, ended_at=now)
        return {"id": cid, "object": "customer", "deleted": True}

    @_route("GET", "/v1/customers")
    def _customer_list(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        items = [
            c
            for c in self._newest_first("customer")
            if ("email" not in p or c["email"] == p["email"])
            and _created_matches(c["created"], p.get("created"))
        ]
        return self._list(ctx, items, p, "/v1/customers")

    # ------------------------------------------------------------------ products

    _PRODUCT_FIELDS = (
        "active",
        "description",
        "images",
        "marketing_features",
        "name",
        "package_dimensions",
        "shippable",
        "statement_descriptor",
        "tax_code",
        "unit_label",
        "url",
    )

    def _make_product(self, ctx: _Ctx, p: Json, *, param: str = "id") -> Json:
        pid = p.get("id") or self._new_id("product")
        if pid in self.objects["product"] or pid in self._deleted["product"]:
            raise ApiError(
                400, f"Product already exists: {pid}", code="resource_already_exists", param=param
            )
        now = self._now()
        obj: Json = {
            "id": pid,
            "object": "product",
            "active": True,
            "created": now,
            "default_price": None,
            "description": None,
            "images": [],
            "livemode": ctx.livemode,
            "marketing_features": [],
            "metadata": _merge_metadata({}, p.get("metadata", {})),
            "name": p.get("name", ""),
            "package_dimensions": None,
            "shippable": None,
            "statement_descriptor": None,
            "tax_code": None,
            "type": "service",
            "unit_label": None,
            "updated": now,
            "url": None,
        }
        for key in self._PRODUCT_FIELDS:
            if key in p:
                obj[key] = None if p[key] == "" else p[key]
        self._put("product", obj)
        return obj

    @_route("POST", "/v1/products")
    def _product_create(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        obj = self._make_product(ctx, p)
        dpd = p.get("default_price_data")
        if isinstance(dpd, dict):
            price = self._make_price(ctx, {**dpd, "product": obj["id"]}, "default_price_data")
            obj["default_price"] = price["id"]
        return obj

    @_route("GET", "/v1/products/{id}")
    def _product_retrieve(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        return self._get("product", ctx.path_params["id"])

    @_route("POST", "/v1/products/{id}")
    def _product_update(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        obj = self._get("product", ctx.path_params["id"])
        if p.get("default_price"):
            price = self._get("price", p["default_price"], param="default_price", status=400)
            if price["product"] != obj["id"]:
                raise ApiError(
                    400,
                    f"The price {price['id']} does not belong to product {obj['id']}.",
                    param="default_price",
                )
            obj["default_price"] = price["id"]
        for key in self._PRODUCT_FIELDS:
            if key in p:
                obj[key] = None if p[key] == "" else p[key]
        if "metadata" in p:
            obj["metadata"] = _merge_metadata(obj["metadata"], p["metadata"])
        obj["updated"] = self._now()
        return obj

    @_route("DELETE", "/v1/products/{id}")
    def _product_delete(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        pid = ctx.path_params["id"]
        self._get("product", pid)
        if any(price["product"] == pid for price in self.objects["price"].values()):
            raise ApiError(
                400,
                "This product cannot be deleted because it has one or more user-created prices.",
            )
        del self.objects["product"][pid]
        self._deleted["product"].add(pid)
        return {"id": pid, "object": "product", "deleted": True}

    @_route("GET", "/v1/products")
    def _product_list(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        ids = set(p["ids"]) if "ids" in p else None
        items = [
            prod
            for prod in self._newest_first("product")
            if ("active" not in p or prod["active"] == p["active"])
            and (ids is None or prod["id"] in ids)
            and ("shippable" not in p or prod["shippable"] == p["shippable"])
            and ("url" not in p or prod["url"] == p["url"])
            and _created_matches(prod["created"], p.get("created"))
        ]
        return self._list(ctx, items, p, "/v1/products")

    # ------------------------------------------------------------------ prices

    def _make_price(self, ctx: _Ctx, p: Json, prefix: str = "") -> Json:
        def name(key: str) -> str:
            return f"{prefix}[{key}]" if prefix else key

        product_id, product_data = p.get("product"), p.get("product_data")
        if product_id and product_data:
            raise ApiError(
                400,
                "You may only specify one of these parameters: product, product_data.",
                code="parameters_exclusive",
                param=name("product"),
            )
        if product_data:
            product = self._make_product(ctx, product_data, param=name("product_data[id]"))
        elif product_id:
            product = self._get("product", product_id, param=name("product"), status=400)
        else:
            raise ApiError(
                400,
                f"Missing required param: {name('product')}.",
                code="parameter_missing",
                param=name("product"),
            )

        recurring: Json | None = None
        rec = p.get("recurring")
        if isinstance(rec, dict):
            usage_type = rec.get("usage_type", "licensed")
            meter_id = rec.get("meter")
            if usage_type == "metered":
                if not meter_id:
                    raise ApiError(
                        400,
                        "Metered prices must be backed by a billing meter: pass "
                        f"{name('recurring')}[meter] with the id of an active meter.",
                        code="parameter_missing",
                        param=name("recurring") + "[meter]",
                    )
                meter = self._get(
                    "billing.meter", meter_id, param=name("recurring") + "[meter]", status=400
                )
                if meter["status"] != "active":
                    raise ApiError(
                        400,
                        f"The billing meter '{meter_id}' is inactive: metered prices need an "
                        "active meter.",
                        param=name("recurring") + "[meter]",
                    )
            elif meter_id:
                raise ApiError(
                    400,
                    f"{name('recurring')}[meter] can only be set when "
                    f"{name('recurring')}[usage_type] is metered.",
                    param=name("recurring") + "[meter]",
                )
            recurring = {
                "interval": rec.get("interval", "month"),
                "interval_count": rec.get("interval_count", 1),
                "meter": meter_id,
                "trial_period_days": None,
                "usage_type": usage_type,
            }

        billing_scheme = p.get("billing_scheme", "per_unit")
        unit_amount = p.get("unit_amount")
        unit_amount_decimal = p.get("unit_amount_decimal")
        if unit_amount is not None and unit_amount_decimal is not None:
            raise ApiError(
                400,
                "You may only specify one of these parameters: unit_amount, unit_amount_decimal.",
                code="parameters_exclusive",
                param=name("unit_amount"),
            )
        if billing_scheme == "per_unit":
            if (
                unit_amount is None
                and unit_amount_decimal is None
                and not p.get("custom_unit_amount")
            ):
                raise ApiError(
                    400,
                    f"Missing required param: {name('unit_amount')}.",
                    code="parameter_missing",
                    param=name("unit_amount"),
                )
        elif not p.get("tiers") or not p.get("tiers_mode"):
            missing = "tiers" if not p.get("tiers") else "tiers_mode"
            raise ApiError(
                400,
                f"Missing required param: {name(missing)}.",
                code="parameter_missing",
                param=name(missing),
            )
        if unit_amount is not None:
            unit_amount_decimal = str(unit_amount)
        elif unit_amount_decimal is not None:
            dec = Decimal(unit_amount_decimal)
            unit_amount = int(dec) if dec == dec.to_integral_value() else None

        price_id = self._new_id("price")
        obj: Json = {
            "id": price_id,
            "object": "price",
            "active": p.get("active", True),
            "billing_scheme": billing_scheme,
            "created": self._now(),
            "currency": str(p.get("currency", "usd")).lower(),
            "custom_unit_amount": p.get("custom_unit_amount"),
            "livemode": ctx.livemode,
            "lookup_key": p.get("lookup_key"),
            "metadata": _merge_metadata({}, p.get("metadata", {})),
            "nickname": p.get("nickname"),
            "product": product["id"],
            "recurring": recurring,
            "tax_behavior": p.get("tax_behavior", "unspecified"),
            "tiers_mode": p.get("tiers_mode"),
            "transform_quantity": p.get("transform_quantity"),
            "type": "recurring" if recurring else "one_time",
            "unit_amount": unit_amount,
            "unit_amount_decimal": unit_amount_decimal,
        }
        self._put("price", obj)
        return obj

    @_route("POST", "/v1/prices")
    def _price_create(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        return self._make_price(ctx, p)

    @_route("GET", "/v1/prices/{price}")
    def _price_retrieve(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        return self._get("price", ctx.path_params["price"])

    @_route("POST", "/v1/prices/{price}")
    def _price_update(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        obj = self._get("price", ctx.path_params["price"])
        for key in ("active", "nickname", "lookup_key"):
            if key in p:
                obj[key] = None if p[key] == "" else p[key]
        if "tax_behavior" in p and p["tax_behavior"] != obj["tax_behavior"]:
            if obj["tax_behavior"] not in (None, "unspecified"):
                raise ApiError(
                    400,
                    "tax_behavior cannot be changed once it is set to exclusive or inclusive.",
                    param="tax_behavior",
                )
            obj["tax_behavior"] = p["tax_behavior"]
        if "metadata" in p:
            obj["metadata"] = _merge_metadata(obj["metadata"], p["metadata"])
        return obj

    @_route("GET", "/v1/prices")
    def _price_list(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        rec_filter = p.get("recurring") or {}
        lookup_keys = set(p["lookup_keys"]) if "lookup_keys" in p else None

        def keep(price: Json) -> bool:
            if "active" in p and price["active"] != p["active"]:
                return False
            if "product" in p and price["product"] != p["product"]:
                return False
            if "type" in p and price["type"] != p["type"]:
                return False
            if "currency" in p and price["currency"] != str(p["currency"]).lower():
                return False
            if lookup_keys is not None and price["lookup_key"] not in lookup_keys:
                return False
            if not _created_matches(price["created"], p.get("created")):
                return False
            if rec_filter:
                rec = price["recurring"]
                if rec is None:
                    return False
                return all(rec.get(k) == v for k, v in rec_filter.items())
            return True

        items = [price for price in self._newest_first("price") if keep(price)]
        return self._list(ctx, items, p, "/v1/prices")

    # ------------------------------------------------------------------ billing meters

    @_route("POST", "/v1/billing/meters")
    def _meter_create(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        event_name = p.get("event_name", "")
        if event_name in self._active_by_event_name:
            raise ApiError(
                400,
                f"An active meter with event_name `{event_name}` already exists "
                f"({self._active_by_event_name[event_name]}).",
                code="resource_already_exists",
                param="event_name",
            )
        now = self._now()
        mapping = p.get("customer_mapping") or {}
        meter_id = self._new_id("billing.meter", ctx.livemode)
        obj: Json = {
            "id": meter_id,
            "object": "billing.meter",
            "created": now,
            "customer_mapping": {
                "event_payload_key": mapping.get("event_payload_key", "stripe_customer_id"),
                "type": mapping.get("type", "by_id"),
            },
            "default_aggregation": {
                "formula": (p.get("default_aggregation") or {}).get("formula", "sum")
            },
            "display_name": p.get("display_name", ""),
            "event_name": event_name,
            "event_time_window": p.get("event_time_window"),
            "livemode": ctx.livemode,
            "status": "active",
            "status_transitions": {"deactivated_at": None},
            "updated": now,
            "value_settings": {
                "event_payload_key": (p.get("value_settings") or {}).get(
                    "event_payload_key", "value"
                )
            },
        }
        self._put("billing.meter", obj)
        self._active_by_event_name[event_name] = meter_id
        return obj

    @_route("GET", "/v1/billing/meters/{id}")
    def _meter_retrieve(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        return self._get("billing.meter", ctx.path_params["id"])

    @_route("POST", "/v1/billing/meters/{id}")
    def _meter_update(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        obj = self._get("billing.meter", ctx.path_params["id"])
        if "display_name" in p:
            obj["display_name"] = p["display_name"]
            obj["updated"] = self._now()
        return obj

    @_route("POST", "/v1/billing/meters/{id}/deactivate")
    def _meter_deactivate(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        obj = self._get("billing.meter", ctx.path_params["id"])
        if obj["status"] == "active":
            now = self._now()
            obj.update(status="inactive", updated=now, status_transitions={"deactivated_at": now})
            if self._active_by_event_name.get(obj["event_name"]) == obj["id"]:
                del self._active_by_event_name[obj["event_name"]]
        return obj

    @_route("POST", "/v1/billing/meters/{id}/reactivate")
    def _meter_reactivate(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        obj = self._get("billing.meter", ctx.path_params["id"])
        if obj["status"] != "active":
            other = self._active_by_event_name.get(obj["event_name"])
            if other is not None:
                raise ApiError(
                    400,
                    f"An active meter with event_name `{obj['event_name']}` already exists "
                    f"({other}).",
                    code="resource_already_exists",
                )
            obj.update(
                status="active", updated=self._now(), status_transitions={"deactivated_at": None}
            )
            self._active_by_event_name[obj["event_name"]] = obj["id"]
        return obj

    @_route("GET", "/v1/billing/meters")
    def _meter_list(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        items = [
            m
            for m in self._newest_first("billing.meter")
            if "status" not in p or m["status"] == p["status"]
        ]
        return self._list(ctx, items, p, "/v1/billing/meters")

    @_route("GET", "/v1/billing/meters/{id}/event_summaries")
    def _meter_event_summaries(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        meter_id = ctx.path_params["id"]
        meter = self._get("billing.meter", meter_id)
        customer = p.get("customer")
        start, end = p.get("start_time"), p.get("end_time")
        for key, value in (("customer", customer), ("start_time", start), ("end_time", end)):
            if value is None:
                raise ApiError(
                    400, f"Missing required param: {key}.", code="parameter_missing", param=key
                )
        assert isinstance(start, int) and isinstance(end, int) and isinstance(customer, str)
        grouping = p.get("value_grouping_window")
        step = WINDOW_SECONDS.get(grouping or "", 60)
        for key, value in (("start_time", start), ("end_time", end)):
            if value % step:
                unit = grouping or "minute"
                raise ApiError(
                    400,
                    f"{key} must be aligned to the {unit} boundary (got {value}).",
                    param=key,
                )
        if start >= end:
            raise ApiError(400, "start_time must be before end_time.", param="start_time")

        windows = self._buckets.get(meter_id, {}).get(customer, {})
        if meter.get("event_time_window"):
            events = [evs[-1] for evs in windows.values() if evs]
        else:
            events = [ev for evs in windows.values() for ev in evs]
        events = [ev for ev in events if start <= ev.ts < end]
        formula = meter["default_aggregation"]["formula"]
        pre_aggregated = bool(meter.get("event_time_window"))

        def value_of(group: list[_Event]) -> Decimal:
            if pre_aggregated and formula != "last":
                return sum((ev.value for ev in group), Decimal(0))
            return _aggregate(formula, group)

        summaries: list[Json] = []

        def summary(s: int, e: int, group: list[_Event]) -> Json:
            digest = hashlib.sha1(f"{meter_id}|{customer}|{s}|{e}".encode()).hexdigest()[:24]
            return {
                "id": "mtrusum_" + digest,
                "object": "billing.meter_event_summary",
                "aggregated_value": value_of(group),
                "end_time": e,
                "livemode": ctx.livemode,
                "meter": meter_id,
                "start_time": s,
            }

        if grouping:
            size = WINDOW_SECONDS[grouping]
            groups: dict[int, list[_Event]] = {}
            for ev in events:
                groups.setdefault(ev.ts - ev.ts % size, []).append(ev)
            for s in sorted(groups):
                summaries.append(summary(s, s + size, groups[s]))
        else:
            summaries.append(summary(start, end, events))
        return self._list(ctx, summaries, p, f"/v1/billing/meters/{meter_id}/event_summaries")

    # ------------------------------------------------------------------ meter events

    def _ingest(
        self,
        *,
        api: str,
        event_name: str,
        payload: Any,
        timestamp: int | None,
        identifier: str | None,
        accepted: list[Json],
    ) -> Json:
        """Apply Stripe's meter event rules; store the event or raise ApiError."""
        v1 = api == "v1"
        meter_id = self._active_by_event_name.get(event_name)
        if meter_id is None:
            if any(m["event_name"] == event_name for m in self.objects["billing.meter"].values()):
                raise ApiError(
                    400,
                    f"The meter for event_name `{event_name}` is inactive (archived).",
                    code="archived_meter",
                    param="event_name",
                )
            raise ApiError(
                400,
                f"No active meter was found matching event_name `{event_name}`.",
                code="no_meter",
                param="event_name",
            )
        meter = self.objects["billing.meter"][meter_id]
        if not isinstance(payload, dict):
            payload = {}
        customer_key = meter["customer_mapping"]["event_payload_key"]
        value_key = meter["value_settings"]["event_payload_key"]
        customer = payload.get(customer_key)
        if not isinstance(customer, str) or not customer:
            raise ApiError(
                400,
                f"The payload must carry the meter's customer mapping key `{customer_key}` "
                f"(meter {meter_id}).",
                code="meter_event_no_customer_defined" if v1 else "payload_no_customer_defined",
                param=f"payload[{customer_key}]",
            )
        raw_value = payload.get(value_key)
        if raw_value is None and meter["default_aggregation"]["formula"] == "count":
            value = Decimal(1)
        elif raw_value is None:
            raise ApiError(
                400,
                f"The payload must carry the meter's value key `{value_key}` (meter {meter_id}).",
                code="meter_event_invalid_value" if v1 else "payload_no_value_defined",
                param=f"payload[{value_key}]",
            )
        else:
            try:
                value = Decimal(raw_value) if isinstance(raw_value, str) else Decimal("NaN")
            except InvalidOperation:
                value = Decimal("NaN")
            if not value.is_finite():
                raise ApiError(
                    400,
                    f"The value `{raw_value}` of payload key `{value_key}` is not a number: "
                    'send a decimal string such as "12.5".',
                    code="meter_event_invalid_value" if v1 else "payload_invalid_value",
                    param=f"payload[{value_key}]",
                )
        now = self.clock()
        ts = int(now) if timestamp is None else int(timestamp)
        if ts < now - MAX_PAST_SECONDS:
            raise ApiError(
                400,
                f"The timestamp {ts} ({rfc3339(ts)}) is too far in the past: meter events must "
                "have a timestamp within the past 35 days.",
                code="timestamp_too_far_in_past",
                param="timestamp",
            )
        if ts > now + MAX_FUTURE_SECONDS:
            raise ApiError(
                400,
                f"The timestamp {ts} ({rfc3339(ts)}) is too far in the future: meter events can "
                "be at most 5 minutes in the future.",
                code="timestamp_in_future",
                param="timestamp",
            )
        if not identifier:
            identifier = str(uuid.uuid4())
        previous = self._identifiers.get(identifier)
        if previous is not None and now - previous.received_at < IDENTIFIER_TTL_SECONDS:
            raise ApiError(
                400,
                f"An event already exists with identifier {identifier}.",
                code=None if v1 else "duplicate_meter_event",
                headers={"Stripe-Should-Retry": "false"},
            )
        window = ts - ts % self._window_size(meter)
        record: Json = {
            "event_name": event_name,
            "identifier": identifier,
            "payload": dict(payload),
            "timestamp": ts,
            "api": api,
            "meter": meter_id,
            "customer": customer,
            "received_at": now,
            "canceled": False,
        }
        self._seq += 1
        event = _Event(
            meter=meter_id,
            event_name=event_name,
            customer=customer,
            window=window,
            ts=ts,
            value=value,
            seq=self._seq,
            identifier=identifier,
            received_at=now,
            record=record,
        )
        self._buckets.setdefault(meter_id, {}).setdefault(customer, {}).setdefault(
            window, []
        ).append(event)
        self._identifiers[identifier] = event
        self.meter_events.append(record)
        accepted.append(record)
        return record

    def _cancel_event(self, event_name: str, identifier: str) -> bool:
        event = self._identifiers.get(identifier)
        if (
            event is None
            or event.canceled
            or event.event_name != event_name
            or self.clock() - event.received_at >= IDENTIFIER_TTL_SECONDS
        ):
            return False
        windows = self._buckets[event.meter][event.customer]
        bucket = windows[event.window]
        bucket.remove(event)
        if not bucket:
            del windows[event.window]
        event.canceled = True
        event.record["canceled"] = True
        return True

    @_route("POST", "/v1/billing/meter_events")
    def _meter_event_create(self, ctx: _Ctx, p: Json, accepted: list[Json]) -> Json:
        timestamp = p.get("timestamp")
        if timestamp is not None and not isinstance(timestamp, int):
            raise ApiError(400, f"Invalid integer: {timestamp}", param="timestamp")
        record = self._ingest(
            api="v1",
            event_name=str(p.get("event_name", "")),
            payload=p.get("payload"),
            timestamp=timestamp,
            identifier=p.get("identifier"),
            accepted=accepted,
        )
        return {
            "object": "billing.meter_event",
            "created": self._now(),
            "event_name": record["event_name"],
            "identifier": record["identifier"],
            "livemode": ctx.livemode,
            "payload": record["payload"],
            "timestamp": record["timestamp"],
        }

    def _adjust(self, ctx: _Ctx, p: Json) -> tuple[str, str, str]:
        event_name = str(p.get("event_name", ""))
        cancel = p.get("cancel") or {}
        identifier = cancel.get("identifier") if isinstance(cancel, dict) else None
        if not identifier:
            raise ApiError(
                400,
                "Missing required param: cancel[identifier].",
                code="parameter_missing",
                param="cancel[identifier]",
            )
        if not any(m["event_name"] == event_name for m in self.objects["billing.meter"].values()):
            raise ApiError(
                400,
                f"No meter was found matching event_name `{event_name}`.",
                code="no_meter",
                param="event_name",
            )
        if self._cancel_event(event_name, identifier):
            return event_name, identifier, "complete"
        self.async_errors.append(
            {
                "code": "meter_event_adjustment_not_applied",
                "message": f"No meter event with identifier {identifier} for `{event_name}` "
                "was received in the last 24 hours.",
                "event": dict(p),
                "api": ctx.api,
                "received_at": self.clock(),
            }
        )
        return event_name, identifier, "pending"

    @_route("POST", "/v1/billing/meter_event_adjustments")
    def _meter_event_adjustment(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        event_name, identifier, status = self._adjust(ctx, p)
        return {
            "object": "billing.meter_event_adjustment",
            "cancel": {"identifier": identifier},
            "event_name": event_name,
            "livemode": ctx.livemode,
            "status": status,
            "type": "cancel",
        }

    # ------------------------------------------------------------------ subscriptions

    def _item_price(self, ctx: _Ctx, item: Json, param: str) -> Json:
        """Resolve an item's ``price``/``price_data`` (``param`` = "items[0]" or "" top-level)."""
        if isinstance(item.get("price_data"), dict):
            return self._make_price(ctx, dict(item["price_data"]), _pname(param, "price_data"))
        price_id = item.get("price")
        name = _pname(param, "price")
        if not price_id:
            raise ApiError(
                400, f"Missing required param: {name}.", code="parameter_missing", param=name
            )
        price = self._get("price", price_id, param=name, status=400)
        if not price["active"]:
            raise ApiError(
                400,
                "The price specified is inactive. This field only accepts active prices.",
                param=name,
            )
        if price["type"] != "recurring":
            raise ApiError(
                400,
                "The price specified is set to `type=one_time` but this field only accepts "
                "prices with `type=recurring`.",
                param=name,
            )
        return price

    @staticmethod
    def _check_quantity(price: Json, item: Json, param: str) -> None:
        if price["recurring"]["usage_type"] == "metered" and "quantity" in item:
            where = f" Remove quantity from `{param}`." if param else ""
            raise ApiError(
                400,
                f"Quantity should not be specified where usage_type is `metered`.{where}",
                param=_pname(param, "quantity"),
            )

    def _new_item(self, ctx: _Ctx, sub: Json, price: Json, item: Json) -> Json:
        now = self._now()
        rec = price["recurring"]
        si: Json = {
            "id": self._new_id("subscription_item"),
            "object": "subscription_item",
            "billing_thresholds": None,
            "created": now,
            "current_period_end": _add_interval(now, rec["interval"], rec["interval_count"]),
            "current_period_start": now,
            "discounts": [],
            "metadata": _merge_metadata({}, item.get("metadata", {})),
            "price": price,
            "subscription": sub["id"],
            "tax_rates": [],
        }
        if rec["usage_type"] != "metered":
            si["quantity"] = item.get("quantity", 1)
        self._put("subscription_item", si)
        return si

    @staticmethod
    def _refresh_items(sub: Json, items: list[Json]) -> None:
        sub["items"] = {
            "object": "list",
            "data": items,
            "has_more": False,
            "total_count": len(items),
            "url": f"/v1/subscription_items?subscription={sub['id']}",
        }

    def _check_new_prices(self, sub_currency: str | None, prices: list[tuple[Json, str]]) -> None:
        seen: set[str] = set()
        currency = sub_currency
        for price, param in prices:
            if price["id"] in seen:
                raise ApiError(
                    400,
                    f"Cannot add multiple subscription items with the same price: {price['id']}.",
                    param=f"{param}[price]",
                )
            seen.add(price["id"])
            if currency is None:
                currency = price["currency"]
            elif price["currency"] != currency:
                raise ApiError(
                    400,
                    "All prices on a subscription must have the same currency "
                    f"({currency} vs {price['currency']}).",
                    param=f"{param}[price]",
                )

    @_route("POST", "/v1/subscriptions")
    def _subscription_create(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        customer_id = p.get("customer")
        if not customer_id:
            raise ApiError(
                400, "Missing required param: customer.", code="parameter_missing", param="customer"
            )
        self._get("customer", customer_id, param="customer", status=400)
        items = p.get("items") or []
        if not items:
            raise ApiError(
                400, "Missing required param: items.", code="parameter_missing", param="items"
            )
        resolved: list[tuple[Json, str]] = []
        for i, item in enumerate(items):
            param = f"items[{i}]"
            price = self._item_price(ctx, item, param)
            self._check_quantity(price, item, param)
            resolved.append((price, param))
        self._check_new_prices(None, resolved)

        now = self._now()
        trial_days = p.get("trial_period_days")
        sub: Json = {
            "id": self._new_id("subscription"),
            "object": "subscription",
            "application": None,
            "application_fee_percent": None,
            "automatic_tax": {"enabled": False, "liability": None},
            "billing_cycle_anchor": p.get("billing_cycle_anchor", now),
            "billing_cycle_anchor_config": None,
            "billing_mode": {"type": (p.get("billing_mode") or {}).get("type", "classic")},
            "billing_thresholds": None,
            "cancel_at": p.get("cancel_at") if isinstance(p.get("cancel_at"), int) else None,
            "cancel_at_period_end": p.get("cancel_at_period_end", False),
            "canceled_at": None,
            "cancellation_details": {"comment": None, "feedback": None, "reason": None},
            "collection_method": p.get("collection_method", "charge_automatically"),
            "created": now,
            "currency": resolved[0][0]["currency"],
            "customer": customer_id,
            "days_until_due": p.get("days_until_due"),
            "default_payment_method": p.get("default_payment_method"),
            "default_source": None,
            "default_tax_rates": [],
            "description": p.get("description"),
            "discounts": [],
            "ended_at": None,
            "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
            "items": {},
            "latest_invoice": None,
            "livemode": ctx.livemode,
            "metadata": _merge_metadata({}, p.get("metadata", {})),
            "next_pending_invoice_item_invoice": None,
            "on_behalf_of": None,
            "pause_collection": None,
            "payment_settings": None,
            "pending_invoice_item_interval": None,
            "pending_setup_intent": None,
            "pending_update": None,
            "schedule": None,
            "start_date": now,
            "status": "trialing" if trial_days else "active",
            "test_clock": None,
            "transfer_data": None,
            "trial_end": now + trial_days * DAY if trial_days else None,
            "trial_settings": None,
            "trial_start": now if trial_days else None,
        }
        created = [
            self._new_item(ctx, sub, price, items[i]) for i, (price, _) in enumerate(resolved)
        ]
        self._refresh_items(sub, created)
        self._put("subscription", sub)
        return sub

    @_route("GET", "/v1/subscriptions/{subscription_exposed_id}")
    def _subscription_retrieve(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        return self._get("subscription", ctx.path_params["subscription_exposed_id"])

    @_route("POST", "/v1/subscriptions/{subscription_exposed_id}")
    def _subscription_update(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        sub = self._get("subscription", ctx.path_params["subscription_exposed_id"])
        if sub["status"] == "canceled" and set(p) - {"metadata", "cancellation_details", "expand"}:
            raise ApiError(
                400,
                "A canceled subscription can only update its cancellation_details and metadata.",
            )
        current: list[Json] = list(sub["items"]["data"])
        by_id = {si["id"]: si for si in current}
        updates: list[tuple[Json, Json, str, Json | None]] = []  # (si, item, param, new price)
        deletions: set[str] = set()
        additions: list[tuple[Json, Json, str]] = []
        for i, item in enumerate(p.get("items") or []):
            param = f"items[{i}]"
            if item.get("id"):
                si = by_id.get(item["id"])
                if si is None:
                    raise _missing("subscription_item", item["id"], param=f"{param}[id]")
                if item.get("deleted"):
                    deletions.add(si["id"])
                    continue
                price = (
                    self._item_price(ctx, item, param)
                    if item.get("price") or item.get("price_data")
                    else None
                )
                self._check_quantity(price or si["price"], item, param)
                updates.append((si, item, param, price))
            else:
                price = self._item_price(ctx, item, param)
                self._check_quantity(price, item, param)
                additions.append((price, item, param))
        remaining = [si for si in current if si["id"] not in deletions]
        if not remaining and not additions and current:
            raise ApiError(
                400,
                "A subscription must have at least one active plan. To cancel a subscription, "
                "please use the cancel API endpoint on /v1/subscriptions.",
                param="items",
            )
        final_prices = [(price or si["price"], param) for si, _, param, price in updates] + [
            (price, param) for price, _, param in additions
        ]
        untouched = [si for si in remaining if si["id"] not in {u[0]["id"] for u in updates}]
        self._check_new_prices(None, [(si["price"], "items") for si in untouched] + final_prices)
        for si, item, _, price in updates:
            if price is not None:
                si["price"] = price
                if price["recurring"]["usage_type"] == "metered":
                    si.pop("quantity", None)
                else:
                    si.setdefault("quantity", 1)
            if "quantity" in item:
                si["quantity"] = item["quantity"]
            if "metadata" in item:
                si["metadata"] = _merge_metadata(si["metadata"], item["metadata"])
        for si_id in deletions:
            self.objects["subscription_item"].pop(si_id, None)
        for price, item, _ in additions:
            remaining.append(self._new_item(ctx, sub, price, item))
        self._refresh_items(sub, remaining)
        for key in ("cancel_at_period_end", "collection_method", "days_until_due", "description"):
            if key in p:
                sub[key] = None if p[key] == "" else p[key]
        if "cancel_at" in p:
            sub["cancel_at"] = p["cancel_at"] if isinstance(p["cancel_at"], int) else None
        if "metadata" in p:
            sub["metadata"] = _merge_metadata(sub["metadata"], p["metadata"])
        if isinstance(p.get("cancellation_details"), dict):
            sub["cancellation_details"].update(p["cancellation_details"])
        return sub

    @_route("DELETE", "/v1/subscriptions/{subscription_exposed_id}")
    def _subscription_cancel(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        sub = self._get("subscription", ctx.path_params["subscription_exposed_id"])
        if sub["status"] != "canceled":
            now = self._now()
            details = p.get("cancellation_details") or {}
            sub.update(
                status="canceled",
                canceled_at=now,
                ended_at=now,
                cancellation_details={
                    "comment": details.get("comment") or None,
                    "feedback": details.get("feedback") or None,
                    "reason": "cancellation_requested",
                },
            )
        return sub

    @_route("GET", "/v1/subscriptions")
    def _subscription_list(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        status = p.get("status")

        def keep(sub: Json) -> bool:
            if status is None and sub["status"] == "canceled":
                return False
            if status == "ended" and sub["status"] != "canceled":
                return False
            if status not in (None, "all", "ended") and sub["status"] != status:
                return False
            if "customer" in p and sub["customer"] != p["customer"]:
                return False
            if "price" in p and all(si["price"]["id"] != p["price"] for si in sub["items"]["data"]):
                return False
            return _created_matches(sub["created"], p.get("created"))

        items = [sub for sub in self._newest_first("subscription") if keep(sub)]
        return self._list(ctx, items, p, "/v1/subscriptions")

    # ------------------------------------------------------------------ subscription items

    @_route("GET", "/v1/subscription_items")
    def _si_list(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        sub_id = p.get("subscription")
        if not sub_id:
            raise ApiError(
                400,
                "Missing required param: subscription.",
                code="parameter_missing",
                param="subscription",
            )
        sub = self._get("subscription", sub_id, param="subscription", status=400)
        return self._list(ctx, list(sub["items"]["data"]), p, "/v1/subscription_items")

    @_route("POST", "/v1/subscription_items")
    def _si_create(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        sub_id = p.get("subscription")
        if not sub_id:
            raise ApiError(
                400,
                "Missing required param: subscription.",
                code="parameter_missing",
                param="subscription",
            )
        sub = self._get("subscription", sub_id, param="subscription", status=400)
        if sub["status"] == "canceled":
            raise ApiError(400, "You cannot add items to a canceled subscription.")
        price = self._item_price(ctx, p, "")
        self._check_quantity(price, p, "")
        self._check_new_prices(
            None, [(si["price"], "price") for si in sub["items"]["data"]] + [(price, "")]
        )
        si = self._new_item(ctx, sub, price, p)
        self._refresh_items(sub, [*sub["items"]["data"], si])
        return si

    @_route("GET", "/v1/subscription_items/{item}")
    def _si_retrieve(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        return self._get("subscription_item", ctx.path_params["item"])

    @_route("POST", "/v1/subscription_items/{item}")
    def _si_update(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        si = self._get("subscription_item", ctx.path_params["item"])
        sub = self.objects["subscription"][si["subscription"]]
        price = si["price"]
        if p.get("price") or p.get("price_data"):
            price = self._item_price(ctx, p, "")
            others = [o for o in sub["items"]["data"] if o["id"] != si["id"]]
            self._check_new_prices(None, [(o["price"], "price") for o in others] + [(price, "")])
        self._check_quantity(price, p, "")
        if price is not si["price"]:
            si["price"] = price
            if price["recurring"]["usage_type"] == "metered":
                si.pop("quantity", None)
            else:
                si.setdefault("quantity", 1)
        if "quantity" in p:
            si["quantity"] = p["quantity"]
        if "metadata" in p:
            si["metadata"] = _merge_metadata(si["metadata"], p["metadata"])
        return si

    @_route("DELETE", "/v1/subscription_items/{item}")
    def _si_delete(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        si = self._get("subscription_item", ctx.path_params["item"])
        sub = self.objects["subscription"][si["subscription"]]
        remaining = [o for o in sub["items"]["data"] if o["id"] != si["id"]]
        if not remaining:
            raise ApiError(
                400,
                "A subscription must have at least one active plan. To cancel a subscription, "
                "please use the cancel API endpoint on /v1/subscriptions.",
            )
        del self.objects["subscription_item"][si["id"]]
        self._refresh_items(sub, remaining)
        return {"id": si["id"], "object": "subscription_item", "deleted": True}

    # ------------------------------------------------------------------ webhook endpoints

    @_route("POST", "/v1/webhook_endpoints")
    def _webhook_create(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        obj: Json = {
            "id": self._new_id("webhook_endpoint"),
            "object": "webhook_endpoint",
            "api_version": p.get("api_version"),
            "application": None,
            "created": self._now(),
            "description": p.get("description") or None,
            "enabled_events": p.get("enabled_events", []),
            "livemode": ctx.livemode,
            "metadata": _merge_metadata({}, p.get("metadata", {})),
            "secret": "whsec_" + secrets.token_hex(16),
            "status": "enabled",
            "url": p.get("url"),
        }
        self._put("webhook_endpoint", obj)
        return obj

    @_route("GET", "/v1/webhook_endpoints")
    def _webhook_list(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        items = [
            {k: v for k, v in we.items() if k != "secret"}
            for we in self._newest_first("webhook_endpoint")
        ]
        return self._list(ctx, items, p, "/v1/webhook_endpoints")

    # ------------------------------------------------------------------ v2 meter events

    @_route("POST", "/v2/billing/meter_event_session")
    def _v2_session(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        now = self.clock()
        mode = "live" if ctx.livemode else "test"
        token = f"mes_auth_{mode}_{secrets.token_hex(24)}"
        expires_at = now + SESSION_TTL_SECONDS
        self._sessions[token] = (expires_at, ctx.livemode)
        return {
            "object": "v2.billing.meter_event_session",
            "id": f"bmes_{mode}_{secrets.token_hex(12)}",
            "authentication_token": token,
            "created": rfc3339(now),
            "expires_at": rfc3339(expires_at),
            "livemode": ctx.livemode,
        }

    @staticmethod
    def _v2_timestamp(value: Any) -> int | None:
        if value is None:
            return None
        dt = contract.parse_rfc3339(value) if isinstance(value, str) else None
        if dt is None:
            raise ApiError(
                400,
                f"Invalid timestamp: {value!r}; must be an RFC 3339 date-time.",
                code="parameter_invalid_string",
                param="timestamp",
            )
        return int(dt.timestamp() // 1)

    @_route("POST", "/v2/billing/meter_event_stream")
    def _v2_stream(self, ctx: _Ctx, p: Json, accepted: list[Json]) -> Json:
        events = p.get("events")
        if not isinstance(events, list):
            raise ApiError(400, "Missing required param: events.", code="parameter_missing")
        if len(events) > MAX_STREAM_EVENTS:
            raise ApiError(
                400,
                f"events: at most {MAX_STREAM_EVENTS} events per request (got {len(events)}).",
                code="invalid_array_length",
            )
        for event in events:
            try:
                if not isinstance(event, dict):
                    raise ApiError(400, "Each event must be an object.", code="invalid_event")
                self._ingest(
                    api="v2",
                    event_name=str(event.get("event_name", "")),
                    payload=event.get("payload"),
                    timestamp=self._v2_timestamp(event.get("timestamp")),
                    identifier=event.get("identifier"),
                    accepted=accepted,
                )
            except ApiError as e:  # validation is asynchronous: Stripe drops the event silently
                self.async_errors.append(
                    {
                        "code": e.code,
                        "message": e.message,
                        "identifier": event.get("identifier") if isinstance(event, dict) else None,
                        "event": event,
                        "api": "v2",
                        "received_at": self.clock(),
                    }
                )
        return {}

    @_route("POST", "/v2/billing/meter_events")
    def _v2_meter_event(self, ctx: _Ctx, p: Json, accepted: list[Json]) -> Json:
        record = self._ingest(
            api="v2",
            event_name=str(p.get("event_name", "")),
            payload=p.get("payload"),
            timestamp=self._v2_timestamp(p.get("timestamp")),
            identifier=p.get("identifier"),
            accepted=accepted,
        )
        return {
            "object": "v2.billing.meter_event",
            "created": rfc3339(self.clock()),
            "event_name": record["event_name"],
            "identifier": record["identifier"],
            "livemode": ctx.livemode,
            "payload": record["payload"],
            "timestamp": rfc3339(record["timestamp"]),
        }

    @_route("POST", "/v2/billing/meter_event_adjustments")
    def _v2_adjustment(self, ctx: _Ctx, p: Json, _ev: list[Json]) -> Json:
        event_name, identifier, status = self._adjust(ctx, p)
        return {
            "object": "v2.billing.meter_event_adjustment",
            "id": "mtradj_" + secrets.token_hex(12),
            "cancel": {"identifier": identifier},
            "created": rfc3339(self.clock()),
            "event_name": event_name,
            "livemode": ctx.livemode,
            "status": status,
            "type": "cancel",
        }


def _aggregate(formula: str, events: list[_Event]) -> Decimal:
    if not events:
        return Decimal(0)
    if formula == "count":
        return Decimal(len(events))
    if formula == "last":
        return max(events, key=lambda ev: (ev.ts, ev.seq)).value
    return sum((ev.value for ev in events), Decimal(0))


_unrouted = [
    f"{o.method} {o.template}" for o in contract.OPERATIONS if (o.method, o.template) not in _ROUTES
]
_unknown_routes = [
    f"{m} {t}"
    for m, t in _ROUTES
    if not any(o.method == m and o.template == t for o in contract.OPERATIONS)
]
assert not _unknown_routes, f"routes outside the contract: {_unknown_routes}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the fake Stripe API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument(
        "--no-validate", action="store_true", help="skip contract checks (types still parsed)"
    )
    args = parser.parse_args(argv)
    fake = FakeStripe(validate=not args.no_validate).start(port=args.port)
    print(f"fake Stripe listening on {fake.url}", flush=True)
    if _unrouted:
        print(f"not served: {', '.join(_unrouted)}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
