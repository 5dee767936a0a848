"""A loopback fake of OpenMeter's v1 REST API, for tests and local runs (standard library only).

It speaks the parts of `emulators/contracts/openmeter/openapi.v1-subset.yaml` the app uses:

- ``POST /api/v1/events``: CloudEvents, single (``application/cloudevents+json``), batch
  (``application/cloudevents-batch+json``) or either (``application/json``); deduplicated by
  ``(id, source)``; answers 204.
- ``GET /api/v1/meters``, ``GET /api/v1/meters/{idOrSlug}``,
  ``GET /api/v1/meters/{idOrSlug}/subjects``.
- ``GET /api/v1/meters/{idOrSlug}/query``: aggregates the raw events per tumbling window and group,
  over the half-open range ``[from, to)``, and validates its parameters the way the real server does
  (unknown parameter, bad enum value, unparseable time, ``from`` not before ``to``: 400).
  ``filterCustomerId`` (customer ids, at most 100; an unknown one: 404) keeps the events whose
  subject is one of those customers' current subject keys or its key, and groups the rows by
  customer (``customerId``; per customer and subject with ``groupBy=subject``).
- ``GET /api/v1/customers`` (paginated, filtered, ordered), ``POST /api/v1/customers`` (201; a key
  or subject key another customer has: 409), ``GET /api/v1/customers/{customerIdOrKey}``.

Errors are RFC 7807 ``application/problem+json`` bodies (``type``, ``title``, ``status``,
``detail``, ``instance``). Switches for faults: :meth:`FakeOpenMeter.fail_next`,
:attr:`FakeOpenMeter.latency`, :attr:`FakeOpenMeter.down`.

Speed: every meter keeps, besides its raw events (sorted lazily, for any query), dense per-hour
sums and counts per subject. SUM, COUNT and AVG queries whose ``from``/``to`` fall on whole UTC
hours, with ``windowSize`` HOUR, DAY or none in UTC and no group-by other than ``subject`` (and
the customer grouping of ``filterCustomerId``), are answered from those buckets, so a whole-range
query over a million events takes milliseconds.

Values: sums are exact-rounded (Neumaier per bucket, ``math.fsum`` across buckets) and printed with
15 significant digits, so ``0.1 + 0.2`` reads ``0.3``, as OpenMeter's decimal-precision sums do.

Modules: this one holds the state and the public API; ``storage.py`` the meters and their hourly
buckets, and the customers; ``query.py`` the meter query, ``server.py`` the HTTP plumbing,
``common.py`` helpers, ``state.py`` saving and loading the state (:meth:`FakeOpenMeter.save_state`).

Run it by hand: ``python -m emulators.openmeter --port 8888 --meter api_calls [--state PATH]``.
"""

from __future__ import annotations

import json
import math
import re
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .common import (
    _ID_OR_SLUG,
    _NAN,
    _SLUG,
    AGGREGATIONS,
    EPOCH,
    _check_customer,
    _check_event,
    _check_subject_keys,
    _dumps,
    _numeric,
    _parse_time,
    _Problem,
    _to_us,
)
from .query import (
    _bad_time,
    _bool_param,
    _enum_param,
    _int_param,
    _parse_query,
    _reject_unknown,
    _run_query,
    _singles,
)
from .server import _Handler, _Server
from .state import _State
from .storage import (
    _Customer,
    _Customers,
    _Meter,
)

__all__ = ["FakeOpenMeter"]


class FakeOpenMeter(_State):
    """A stateful OpenMeter on a loopback port. ``start()`` it, point the client at :attr:`url`."""

    def __init__(self, *, token: str | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.token = token or None
        self._host = host
        self._port = port
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._meters: dict[str, _Meter] = {}
        self._raw: list[tuple[str, int, str, Any, float | None]] = []
        self._seen: set[tuple[str, str]] = set()
        self._customers = _Customers()
        self.requests: list[tuple[str, str]] = []
        self.request_headers: list[dict[str, str]] = []
        self.latency: float = 0.0
        self.down: bool = False
        # Refuse queries without windowSize (an OpenMeter that only answers windowed queries).
        self.require_window_size: bool = False
        self._fail_count = 0
        self._fail_status = 500
        self._fail_retry_after: float | None = None
        self._changes = 0  # see change_count

    # lifecycle

    def start(self) -> FakeOpenMeter:
        if self._server is not None:
            return self
        server = _Server((self._host, self._port), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name=f"fake-openmeter:{server.server_address[1]}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeOpenMeter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeOpenMeter is not started")
        return f"http://{self._host}:{self._server.server_address[1]}"

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeOpenMeter is not started")
        return int(self._server.server_address[1])

    def reset(self) -> None:
        """Forget meters, events, customers, recorded requests and faults (the token stays)."""
        with self._lock:
            self._meters.clear()
            self._raw.clear()
            self._seen.clear()
            self._customers.clear()
            self.requests.clear()
            self.request_headers.clear()
            self.latency = 0.0
            self.down = False
            self.require_window_size = False
            self._fail_count = 0
            self._fail_status = 500
            self._fail_retry_after = None
            self._changes += 1

    # state

    def add_meter(
        self,
        slug: str,
        *,
        aggregation: str = "SUM",
        event_type: str | None = None,
        value_property: str | None = "$.value",
        group_by: dict[str, str] | None = None,
    ) -> None:
        """Create (or replace) a meter. Events already ingested through POST /api/v1/events with its
        event type count for it, as in OpenMeter, where meters query the raw events."""
        if not _SLUG.match(slug) or len(slug) > 64:
            raise ValueError(f"invalid meter slug: {slug!r}")
        aggregation = aggregation.upper()
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"invalid aggregation: {aggregation!r}")
        if aggregation != "COUNT" and not value_property:
            raise ValueError(f"{aggregation} meters need a value_property")
        for key in group_by or {}:
            if not re.fullmatch(r"[A-Za-z0-9_]+", key) or key == "subject":
                raise ValueError(f"invalid group by key: {key!r}")
        meter = _Meter(
            slug=slug,
            aggregation=aggregation,
            event_type=event_type or slug,
            value_property=value_property,
            group_by=group_by or {},
        )
        with self._lock:
            self._changes += 1
            self._meters[slug] = meter
            for etype, ts, subject, data, direct in self._raw:
                if etype == meter.event_type:
                    self._feed(meter, ts, subject, data, direct)

    def meter_slugs(self) -> list[str]:
        with self._lock:
            return sorted(self._meters)

    def ingest(
        self,
        *,
        meter: str | None = None,
        subject: str,
        time: datetime,
        value: float | Decimal = 1,
        event_id: str | None = None,
        event_type: str | None = None,
    ) -> None:
        """Add one usage event without HTTP. With ``meter``, it counts for that meter only; with
        ``event_type`` only, for every meter of that type (also ones added later)."""
        ts = _to_us(time)
        number = _numeric(value)
        with self._lock:
            if event_id is not None:
                key = (event_id, "fake-openmeter")
                if key in self._seen:
                    return
                self._seen.add(key)
            self._changes += 1
            if meter is not None:
                target = self._meters.get(meter)
                if target is None:
                    raise KeyError(f"unknown meter: {meter!r}")
                if event_type is not None and event_type != target.event_type:
                    raise ValueError(
                        f"meter {meter!r} counts events of type {target.event_type!r}, "
                        f"not {event_type!r}"
                    )
                target.add(ts, subject, number)
                return
            if event_type is None:
                raise ValueError("ingest() needs meter= or event_type=")
            self._raw.append((event_type, ts, subject, None, number))
            for target in self._meters.values():
                if target.event_type == event_type:
                    target.add(ts, subject, number)

    def ingest_many(self, events: Iterable[tuple[str, str, datetime, float]]) -> None:
        """Bulk fast path: ``(meter_slug, subject, time, value)`` tuples, no dedupe."""
        with self._lock:
            self._changes += 1
            meters = self._meters
            last_slug: str | None = None
            target: _Meter | None = None
            for slug, subject, moment, value in events:
                if slug != last_slug:
                    target = meters.get(slug)
                    if target is None:
                        raise KeyError(f"unknown meter: {slug!r}")
                    last_slug = slug
                assert target is not None
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=UTC)
                ts = (moment - EPOCH) // timedelta(microseconds=1)
                if type(value) is not float:
                    value = _numeric(value)
                elif not math.isfinite(value):
                    value = _NAN
                target.add(ts, subject, value)

    def add_customer(
        self,
        *,
        name: str,
        key: str | None = None,
        subject_keys: Sequence[str] = (),
        email: str | None = None,
    ) -> dict[str, Any]:
        """Create a customer as POST /api/v1/customers does and return its JSON (with its ``id``).
        ValueError where OpenMeter answers 400 or 409: neither key nor subject keys, or a key or
        subject key another customer has."""
        keys: Any = subject_keys if isinstance(subject_keys, str) else list(subject_keys)
        body: dict[str, Any] = {"name": name, "usageAttribution": {"subjectKeys": keys}}
        if key is not None:
            body["key"] = key
        if email is not None:
            body["primaryEmail"] = email
        try:
            return self._create_customer(body)
        except _Problem as problem:
            raise ValueError(problem.detail) from None

    def set_subject_keys(self, id_or_key: str, subject_keys: Sequence[str]) -> None:
        """Replace a customer's subject keys. Meter queries attribute events by the customers'
        current subject keys, so a subject moved to another customer takes its past usage along.
        KeyError for an unknown customer; ValueError for a subject key another customer has
        (take it off that customer first) or for no subject keys left on a customer without a key.
        """
        keys: Any = subject_keys if isinstance(subject_keys, str) else list(subject_keys)
        with self._lock:
            customer = self._customers.find(id_or_key)
            if customer is None:
                raise KeyError(f"unknown customer: {id_or_key!r}")
            try:
                self._customers.set_subject_keys(customer, _check_subject_keys(keys))
            except _Problem as problem:
                raise ValueError(problem.detail) from None
            self._changes += 1

    def customers(self) -> list[dict[str, Any]]:
        """Every customer's JSON, in the order they were created."""
        with self._lock:
            return [c.as_json() for c in self._customers.by_id.values()]

    def _create_customer(self, body: Any) -> dict[str, Any]:
        name, key, subject_keys, fields = _check_customer(body)
        customer = _Customer(name=name, key=key, subject_keys=subject_keys, fields=fields)
        with self._lock:
            self._customers.add(customer)
            self._changes += 1
        return customer.as_json()

    def _feed(self, meter: _Meter, ts: int, subject: str, data: Any, direct: float | None) -> None:
        if direct is not None:
            meter.add(ts, subject, direct)
            return
        value, groups, unique = meter.values_from(data)
        meter.add(ts, subject, value, groups, unique)

    # requests and faults

    def count(self, path_prefix: str) -> int:
        with self._lock:
            return sum(1 for _, path in self.requests if path.startswith(path_prefix))

    def fail_next(self, n: int, *, status: int = 500, retry_after: float | None = None) -> None:
        """Answer the next ``n`` requests with ``status`` (a problem+json body). A 429 carries
        ``Retry-After`` (``retry_after`` seconds, 0 by default)."""
        with self._lock:
            self._fail_count = n
            self._fail_status = status
            self._fail_retry_after = retry_after

    def _take_failure(self) -> tuple[int, float | None] | None:
        with self._lock:
            if self._fail_count <= 0:
                return None
            self._fail_count -= 1
            return self._fail_status, self._fail_retry_after

    # HTTP handlers (called by _Handler)

    def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(target)
        path = parts.path
        if self.token is not None:
            if headers.get("authorization", "") != f"Bearer {self.token}":
                raise _Problem(401, "missing or invalid bearer token")
        segments = [unquote(s) for s in path.split("/")]
        if segments[:3] != ["", "api", "v1"] or len(segments) < 4:
            raise _Problem(404, f"no route for {path}")
        resource = segments[3:]
        if resource == ["events"]:
            if method != "POST":
                raise _Problem(405, f"method {method} not allowed on {path}")
            self._ingest_http(headers.get("content-type", ""), body)
            return 204, {}, b""
        params = parse_qsl(parts.query, keep_blank_values=True)
        if resource[0] == "customers":
            return self._customers_http(method, path, resource[1:], params, headers, body)
        if resource[0] != "meters" or len(resource) > 3:
            raise _Problem(404, f"no route for {path}")
        if method != "GET":
            raise _Problem(405, f"method {method} not allowed on {path}")
        if len(resource) == 1:
            return 200, {}, self._list_meters(params)
        id_or_slug = resource[1]
        if not _ID_OR_SLUG.match(id_or_slug) or len(id_or_slug) > 64:
            raise _Problem(
                400,
                f'parameter "meterIdOrSlug" in path has an error: string {id_or_slug!r} '
                "doesn't match the slug or ULID pattern",
            )
        if len(resource) == 2:
            _reject_unknown(params, set())
            with self._lock:
                return 200, {}, _dumps(self._meter(id_or_slug).as_json())
        if resource[2] == "query":
            with self._lock:
                meter = self._meter(id_or_slug)
                query = _parse_query(meter, params, self._customers)
                if self.require_window_size and query.window is None:
                    raise _Problem(400, 'parameter "windowSize" in query is required')
                return 200, {}, _run_query(meter, query)
        if resource[2] == "subjects":
            return 200, {}, self._subjects(id_or_slug, params)
        raise _Problem(404, f"no route for {path}")

    def _meter(self, id_or_slug: str) -> _Meter:
        meter = self._meters.get(id_or_slug)
        if meter is None:
            meter = next((m for m in self._meters.values() if m.id == id_or_slug), None)
        if meter is None:
            raise _Problem(404, f"meter not found: {id_or_slug}")
        return meter

    def _list_meters(self, params: list[tuple[str, str]]) -> bytes:
        _reject_unknown(params, {"page", "pageSize", "order", "orderBy", "includeDeleted"})
        values = _singles(params)
        page = _int_param(values, "page", 1, 1, None)
        size = _int_param(values, "pageSize", 100, 1, 1000)
        order = _enum_param(values, "order", ("ASC", "DESC")) or "ASC"
        order_by = _enum_param(
            values, "orderBy", ("key", "name", "aggregation", "createdAt", "updatedAt")
        )
        _bool_param(values, "includeDeleted")  # no meter is ever deleted here
        with self._lock:
            meters = list(self._meters.values())
        sort_key: Callable[[_Meter], Any] = {
            None: lambda m: m.slug,
            "key": lambda m: m.slug,
            "name": lambda m: m.slug,
            "aggregation": lambda m: (m.aggregation, m.slug),
            "createdAt": lambda m: (m.created_at, m.slug),
            "updatedAt": lambda m: (m.created_at, m.slug),
        }[order_by]
        meters.sort(key=sort_key, reverse=order == "DESC")
        chosen = meters[(page - 1) * size : page * size]
        return _dumps([m.as_json() for m in chosen])

    def _customers_http(
        self,
        method: str,
        path: str,
        rest: list[str],
        params: list[tuple[str, str]],
        headers: dict[str, str],
        body: bytes,
    ) -> tuple[int, dict[str, str], bytes]:
        if not rest:
            if method == "GET":
                return 200, {}, self._list_customers(params)
            if method == "POST":
                _reject_unknown(params, set())
                payload = _json_body(headers.get("content-type", ""), body)
                return 201, {}, _dumps(self._create_customer(payload))
            raise _Problem(405, f"method {method} not allowed on {path}")
        if len(rest) > 1 or not rest[0]:
            raise _Problem(404, f"no route for {path}")
        if method != "GET":
            raise _Problem(405, f"method {method} not allowed on {path}")
        id_or_key = rest[0]
        if len(id_or_key) > 256:
            raise _Problem(
                400,
                'parameter "customerIdOrKey" in path has an error: it must be a ULID or a key of '
                "at most 256 characters",
            )
        _reject_unknown(params, {"expand"})
        _check_expand(params)
        with self._lock:
            customer = self._customers.find(id_or_key)
            if customer is None:
                raise _Problem(
                    404, f"customer with id or key {id_or_key} not found in default namespace"
                )
            # subscriptions are expanded by default; the emulator has none
            return 200, {}, _dumps({**customer.as_json(), "subscriptions": []})

    def _list_customers(self, params: list[tuple[str, str]]) -> bytes:
        filters = ("key", "name", "primaryEmail", "subject", "planKey")
        known = {"page", "pageSize", "order", "orderBy", "includeDeleted", "expand", *filters}
        _reject_unknown(params, known)
        _check_expand(params)
        values = _singles([(name, value) for name, value in params if name != "expand"])
        page = _int_param(values, "page", 1, 1, None)
        size = _int_param(values, "pageSize", 100, 1, 1000)
        order = _enum_param(values, "order", ("ASC", "DESC")) or "ASC"
        order_by = _enum_param(values, "orderBy", ("id", "name", "createdAt")) or "name"
        _bool_param(values, "includeDeleted")  # no customer is ever deleted here

        # the filters are case-insensitive partial matches, as in OpenMeter
        texts: dict[str, Callable[[_Customer], list[str | None]]] = {
            "key": lambda c: [c.key],
            "name": lambda c: [c.name],
            "primaryEmail": lambda c: [c.fields.get("primaryEmail")],
            "subject": lambda c: list(c.subject_keys),
        }
        with self._lock:
            found = list(self._customers.by_id.values())
            if "planKey" in values:  # a plan key needs a subscription; the emulator has none
                found = []
            for name, texts_of in texts.items():
                if name in values:
                    part = values[name].lower()
                    found = [c for c in found if any(part in t.lower() for t in texts_of(c) if t)]
            sort_key: Callable[[_Customer], Any] = {
                "id": lambda c: c.id,
                "name": lambda c: c.name,
                "createdAt": lambda c: c.created_us,
            }[order_by]
            found.sort(key=sort_key, reverse=order == "DESC")  # stable: ties in creation order
            chosen = found[(page - 1) * size : page * size]
            items = [{**c.as_json(), "subscriptions": []} for c in chosen]
        return _dumps({"totalCount": len(found), "page": page, "pageSize": size, "items": items})

    def _subjects(self, id_or_slug: str, params: list[tuple[str, str]]) -> bytes:
        _reject_unknown(params, {"from", "to"})
        values = _singles(params)
        bounds = []
        for name in ("from", "to"):
            text = values.get(name)
            try:
                bounds.append(None if text is None else _parse_time(text))
            except ValueError:
                raise _Problem(400, _bad_time(name, text or "")) from None
        with self._lock:
            meter = self._meter(id_or_slug)
            meter.ensure_sorted()
            lo = 0 if bounds[0] is None else bisect_left(meter.ts, bounds[0])
            # the subjects endpoint's `to` is inclusive
            hi = len(meter.ts) if bounds[1] is None else bisect_left(meter.ts, bounds[1] + 1)
            sids = set(meter.sids[lo:hi])
            return _dumps(sorted(meter.subjects[s] for s in sids))

    def _ingest_http(self, content_type: str, body: bytes) -> None:
        media = content_type.split(";")[0].strip().lower()
        if media not in (
            "application/cloudevents+json",
            "application/cloudevents-batch+json",
            "application/json",
        ):
            raise _Problem(
                400,
                f"unsupported content type {media or '(none)'!r}: use application/json, "
                "application/cloudevents+json or application/cloudevents-batch+json",
            )
        try:
            payload = json.loads(body or b"null")
        except ValueError as exc:
            raise _Problem(400, f"request body is not valid JSON: {exc}") from None
        if media == "application/cloudevents+json" and not isinstance(payload, dict):
            raise _Problem(400, "request body must be a CloudEvent object")
        if media == "application/cloudevents-batch+json" and not isinstance(payload, list):
            raise _Problem(400, "request body must be an array of CloudEvents")
        if not isinstance(payload, (dict, list)):
            raise _Problem(400, "request body must be a CloudEvent or an array of CloudEvents")
        events = [payload] if isinstance(payload, dict) else payload
        checked = [_check_event(ev, i) for i, ev in enumerate(events)]
        now = _to_us(datetime.now(UTC))
        with self._lock:
            self._changes += 1
            for ev_id, source, etype, subject, ts, data in checked:
                key = (ev_id, source)
                if key in self._seen:
                    continue
                self._seen.add(key)
                ts = now if ts is None else ts
                self._raw.append((etype, ts, subject, data, None))
                for meter in self._meters.values():
                    if meter.event_type == etype:
                        self._feed(meter, ts, subject, data, None)


def _check_expand(params: list[tuple[str, str]]) -> None:
    for name, value in params:
        if name == "expand" and value != "subscriptions":
            raise _Problem(
                400,
                f'parameter "expand" in query has an error: value {value!r} is not one of the '
                'allowed values ["subscriptions"]',
            )


def _json_body(content_type: str, body: bytes) -> Any:
    media = content_type.split(";")[0].strip().lower()
    if media != "application/json":
        raise _Problem(400, f"unsupported content type {media or '(none)'!r}: use application/json")
    try:
        return json.loads(body or b"null")
    except ValueError as exc:
        raise _Problem(400, f"request body is not valid JSON: {exc}") from None
