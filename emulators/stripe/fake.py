"""A stateful loopback fake of the Stripe API (v1 form-encoded and v2 JSON on one port).

Standard library only. Meant to be driven through the real stripe-python client::

    fake = FakeStripe().start()
    client = stripe.StripeClient(
        "sk_test_123",
        base_addresses={"api": fake.url, "meter_events": fake.url},
        http_client=stripe.HTTPXClient(allow_sync_methods=True),
    )

Requests are checked against the OpenAPI subsets in ``emulators/contracts/stripe`` (see
``contract.py``) and against the Stripe rules that matter for usage billing: meters with an
``event_time_window`` keep only the most recently received event per customer and window, meter
event identifiers are unique for 24 hours, event timestamps must lie within the past 35 days and
at most 5 minutes ahead, metered prices need an active meter, prices are immutable.

Stripe time (``created``, the 35-day / 5-minute / 24-hour rules, session expiry) comes from
``clock``; the ``rate_limit_per_second`` window uses the real monotonic clock. Its 429s carry
``Stripe-Should-Retry: <rate_limit_should_retry>`` when that is set (True or False).

The endpoints live in mixins by concern: ``catalog.py`` (customers, products, prices),
``meters.py`` (billing meters, v1 meter events), ``subscriptions.py`` (subscriptions, items,
webhook endpoints), ``v2.py`` (v2 meter events); ``server.py`` is the HTTP plumbing and
``common.py`` the common types and helpers, ``state.py`` saves and loads the state, ``page.py``
and ``snapshot.py`` make the read-only page at ``/`` (what the emulator holds, for a person).
This class holds the state and the request pipeline.

Run ``python -m emulators.stripe --port 12111 [--state PATH]`` to serve it by hand.
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from . import contract
from .catalog import _Catalog
from .common import (
    _ALWAYS_REJECT_UNKNOWN,
    _PREFIXES,
    _ROUTES,
    API_VERSION,
    HOUR,
    IDEMPOTENCY_TTL_SECONDS,
    KEY_PREFIXES,
    KINDS,
    STREAM_PATH,
    WINDOW_SECONDS,
    ApiError,
    Json,
    Response,
    _aggregate,
    _Ctx,
    _dumps,
    _Event,
    _Fault,
    _fingerprint,
    _missing,
    _redact,
    _Stored,
)
from .meters import _Meters
from .server import _Server
from .state import _State
from .subscriptions import _Subscriptions
from .v2 import _V2


class FakeStripe(_Catalog, _Meters, _Subscriptions, _V2, _State):
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
        self.arrivals: list[float] = []  # monotonic arrival time of each entry of `requests`
        self.latency: float = 0.0
        self.rate_limit_per_second: float | None = None
        self.rate_limit_should_retry: bool | None = None
        self.down: bool = False
        self.clock: Callable[[], float] = time.time
        self._fail_every: tuple[int, int, str] | None = None  # (n, status, path prefix)
        self._every_seen = 0
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
        self._changes = 0  # see change_count

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, port: int = 0, host: str = "127.0.0.1") -> FakeStripe:
        """Bind ``host`` (port 0 = any free port) and serve in a daemon thread."""
        if self._server is not None:
            return self
        server = _Server((host, port), self)
        self._server = server
        self.url = f"http://{host}:{server.server_address[1]}"
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
            self.arrivals.clear()
            self.latency = 0.0
            self.rate_limit_per_second = None
            self.rate_limit_should_retry = None
            self.down = False
            self.clock = time.time
            self._fail_every, self._every_seen = None, 0
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
            self._changes += 1

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

    def busiest_second(self, method: str, path_prefix: str) -> int:
        """The most matching requests that arrived within any one second."""
        with self._lock:
            times = sorted(
                t
                for (m, p), t in zip(self.requests, self.arrivals, strict=True)
                if m == method and p.startswith(path_prefix)
            )
        busiest, lo = 0, 0
        for hi, t in enumerate(times):
            while t - times[lo] >= 1.0:
                lo += 1
            busiest = max(busiest, hi - lo + 1)
        return busiest

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

    def fail_every(self, n: int, *, status: int = 500, path_prefix: str = "") -> None:
        """Answer every ``n``-th request under ``path_prefix`` (counted from now, whatever its
        answer would be) with a ``status`` Stripe error, until disarmed. ``n <= 0`` disarms."""
        with self._lock:
            self._fail_every = (n, status, path_prefix) if n > 0 else None
            self._every_seen = 0

    def reset_faults(self) -> None:
        """Disarm all faults and switches (latency, rate_limit_per_second, fail_every, down);
        keep the state."""
        with self._lock:
            self._faults.clear()
            self.latency = 0.0
            self.rate_limit_per_second = None
            self.rate_limit_should_retry = None
            self._fail_every, self._every_seen = None, 0
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
        arrived = time.monotonic()  # before the lock, so waiting on it does not skew rates
        path, _, query = raw_path.partition("?")
        with self._lock:
            self.requests.append((method, path))
            self.arrivals.append(arrived)
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
                    method, path, query, headers, body, request_id, accepted, arrived
                )
                if method != "GET":
                    self._changes += 1
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
        arrived: float,
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

        every = self._fail_every
        if every is not None and path.startswith(every[2]):
            self._every_seen += 1
            if self._every_seen % every[0] == 0:
                err = self._fault_error(_Fault("fail", 1, every[1], None, every[2]), api)
                return err.status, _dumps(err.body(api)), {**out_headers, **err.headers}

        if self.rate_limit_per_second is not None:
            window = self._rate_window
            while window and arrived - window[0] >= 1.0:
                window.popleft()
            if len(window) >= self.rate_limit_per_second:
                err = self._rate_limit_error(api, self.rate_limit_should_retry)
                return err.status, _dumps(err.body(api)), {**out_headers, **err.headers}
            window.append(arrived)

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


_unrouted = [
    f"{o.method} {o.template}" for o in contract.OPERATIONS if (o.method, o.template) not in _ROUTES
]
_unknown_routes = [
    f"{m} {t}"
    for m, t in _ROUTES
    if not any(o.method == m and o.template == t for o in contract.OPERATIONS)
]
assert not _unknown_routes, f"routes outside the contract: {_unknown_routes}"
