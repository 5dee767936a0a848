"""FakeStripe's request pipeline (a mixin): faults and switches, authentication, idempotency,
contract validation, and the dispatch of each request to its endpoint method."""

from __future__ import annotations

import json
import secrets
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from . import contract
from .common import (
    _ALWAYS_REJECT_UNKNOWN,
    _ROUTES,
    API_VERSION,
    IDEMPOTENCY_TTL_SECONDS,
    KEY_PREFIXES,
    STREAM_PATH,
    ApiError,
    Json,
    Response,
    _Ctx,
    _dumps,
    _Fault,
    _fingerprint,
    _redact,
    _Stored,
)


class _Pipeline:
    """Faults, switches and the request pipeline; state lives on :class:`FakeStripe`."""

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
        self._request_info = (request_id, idem_key)
        held: list[tuple[Json, list[Any]]] = []
        self._held_events = held
        events_before = len(self.events)
        try:
            payload = _dumps(handler(ctx, params, accepted))
        except ApiError as e:  # Stripe requests are atomic: drop what this one created
            for kind, obj_id in self._created:
                self.objects[kind].pop(obj_id, None)
            del self.events[events_before:]
            for _event, _jobs in held:
                self._deliverer.release([], held=True)
            held.clear()
            status, payload, extra = e.status, _dumps(e.body(api)), e.headers
        finally:
            self._created.clear()
            self._request_info = None
            self._held_events = None
            self._answering.held = held  # delivered once the answer is written (_answered)
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
