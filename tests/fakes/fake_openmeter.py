"""A loopback fake of OpenMeter's v1 REST API, for tests and local runs (standard library only).

It speaks the parts of `../shared/contracts/openmeter/openapi.v1-subset.yaml` the app uses:

- ``POST /api/v1/events``: CloudEvents, single (``application/cloudevents+json``), batch
  (``application/cloudevents-batch+json``) or either (``application/json``); deduplicated by
  ``(id, source)``; answers 204.
- ``GET /api/v1/meters``, ``GET /api/v1/meters/{idOrSlug}``,
  ``GET /api/v1/meters/{idOrSlug}/subjects``.
- ``GET /api/v1/meters/{idOrSlug}/query``: aggregates the raw events per tumbling window and group,
  over the half-open range ``[from, to)``, and validates its parameters the way the real server does
  (unknown parameter, bad enum value, unparseable time, ``from`` not before ``to``: 400).

Errors are RFC 7807 ``application/problem+json`` bodies (``type``, ``title``, ``status``,
``detail``, ``instance``). Switches for faults: :meth:`FakeOpenMeter.fail_next`,
:attr:`FakeOpenMeter.latency`, :attr:`FakeOpenMeter.down`.

Speed: every meter keeps, besides its raw events (sorted lazily, for any query), dense per-hour
sums and counts per subject. SUM, COUNT and AVG queries whose ``from``/``to`` fall on whole UTC
hours, with ``windowSize`` HOUR, DAY or none in UTC and no group-by other than ``subject``, are
answered from those buckets, so a whole-range query over a million events takes milliseconds.

Values: sums are exact-rounded (Neumaier per bucket, ``math.fsum`` across buckets) and printed with
15 significant digits, so ``0.1 + 0.2`` reads ``0.3``, as OpenMeter's decimal-precision sums do.

Run it by hand: ``python -m tests.fakes.fake_openmeter --port 8888 --meter api_calls``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import secrets
import socket
import threading
import time as _time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit
from zoneinfo import ZoneInfo

__all__ = ["FakeOpenMeter"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US_SECOND = 1_000_000
US_MINUTE = 60 * US_SECOND
US_HOUR = 60 * US_MINUTE
US_DAY = 24 * US_HOUR

AGGREGATIONS = ("SUM", "COUNT", "UNIQUE_COUNT", "AVG", "MIN", "MAX", "LATEST")
WINDOW_SIZES = ("MINUTE", "HOUR", "DAY", "MONTH")
_FIXED_WINDOWS = {"MINUTE": US_MINUTE, "HOUR": US_HOUR, "DAY": US_DAY}
_UTC_NAMES = frozenset(
    {"UTC", "Etc/UTC", "UCT", "Etc/UCT", "Zulu", "Etc/Zulu", "Universal", "Etc/Universal"}
    | {"GMT", "Etc/GMT", "GMT0", "Etc/GMT0", "GMT+0", "Etc/GMT+0", "GMT-0", "Etc/GMT-0"}
    | {"Greenwich", "Etc/Greenwich"}
)
_ID_OR_SLUG = re.compile(r"^(?:[a-z0-9]+(?:_[a-z0-9]+)*|[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25})$")
_SLUG = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*$")
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$"
)
_JSONPATH_STEP = re.compile(
    r"\.([A-Za-z_$][\w$-]*)|\[\s*'([^']*)'\s*\]|\[\s*\"([^\"]*)\"\s*\]|\[(\d+)\]"
)
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    412: "Precondition Failed",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_NAN = float("nan")
_MISSING = object()


class _Problem(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


# --- small helpers --------------------------------------------------------------------------------


def _ulid(ms: int | None = None) -> str:
    ms = int(_time.time() * 1000) if ms is None else ms
    t = "".join(_CROCKFORD[(ms >> (5 * i)) & 31] for i in range(9, -1, -1))
    r = secrets.randbits(80)
    return t + "".join(_CROCKFORD[(r >> (5 * i)) & 31] for i in range(15, -1, -1))


def _to_us(moment: datetime) -> int:
    if moment.tzinfo is None:  # a naive datetime in a test means UTC
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // timedelta(microseconds=1)


def _parse_time(text: str) -> int:
    """RFC 3339 date-time (as Go's time.RFC3339 accepts it) -> microseconds since the epoch."""
    m = _RFC3339.match(text)
    if not m:
        raise ValueError(text)
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac = (m.group(7) or "").ljust(6, "0")[:6]
    offset = m.group(8)
    tz: tzinfo = UTC
    if offset != "Z":
        sign = 1 if offset[0] == "+" else -1
        oh, om = int(offset[1:3]), int(offset[4:6])
        if oh > 23 or om > 59:
            raise ValueError(text)
        tz = _fixed_offset(sign * (oh * 60 + om))
    moment = datetime(year, month, day, hour, minute, second, int(frac), tzinfo=tz)
    return _to_us(moment)


def _fixed_offset(minutes: int) -> tzinfo:
    from datetime import timezone

    return timezone(timedelta(minutes=minutes))


_FMT_CACHE: dict[int, str] = {}


def _fmt(us: int) -> str:
    """Microseconds since the epoch -> RFC 3339 in UTC, as Go prints it (no trailing zeros)."""
    text = _FMT_CACHE.get(us)
    if text is None:
        moment = EPOCH + timedelta(microseconds=us)
        text = moment.strftime("%Y-%m-%dT%H:%M:%S")
        if moment.microsecond:
            text += f".{moment.microsecond:06d}".rstrip("0")
        text += "Z"
        if len(_FMT_CACHE) > 100_000:
            _FMT_CACHE.clear()
        _FMT_CACHE[us] = text
    return text


def _num(value: float) -> str:
    """A float as JSON, rounded to 15 significant digits (integers print without '.0', as in Go)."""
    if not math.isfinite(value):
        raise ValueError("value is not finite")
    rounded = float(f"{value:.15g}")
    if rounded == 0:
        return "0"
    if rounded.is_integer() and abs(rounded) < 1e15:
        return str(int(rounded))
    return repr(rounded)


def _compile_jsonpath(path: str) -> Callable[[Any], Any]:
    """Simple JSONPath: ``$``, ``$.a.b``, ``$['a']``, ``$.a[0]``. Returns _MISSING when absent."""
    if not path.startswith("$"):
        raise ValueError(f"invalid JSONPath: {path!r}")
    steps: list[str | int] = []
    rest = path[1:]
    while rest:
        m = _JSONPATH_STEP.match(rest)
        if not m:
            raise ValueError(f"unsupported JSONPath: {path!r}")
        name, quoted1, quoted2, index = m.groups()
        if index is not None:
            steps.append(int(index))
        else:
            steps.append(
                name if name is not None else (quoted1 if quoted1 is not None else quoted2)
            )
        rest = rest[m.end() :]

    def lookup(data: Any) -> Any:
        for step in steps:
            if isinstance(step, int):
                if not isinstance(data, list) or step >= len(data):
                    return _MISSING
                data = data[step]
            else:
                if not isinstance(data, dict) or step not in data:
                    return _MISSING
                data = data[step]
        return data

    return lookup


def _numeric(raw: Any) -> float:
    """An event value as a float; NaN stands for "no value" (missing, null, not a number)."""
    if isinstance(raw, bool) or raw is None or raw is _MISSING:
        return _NAN
    if isinstance(raw, (int, float, Decimal)):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            return _NAN
    else:
        return _NAN
    return value if math.isfinite(value) else _NAN


def _text(raw: Any) -> str | None:
    """An event value as the text ClickHouse's JSON_VALUE would give (None when absent/null)."""
    if raw is None or raw is _MISSING or isinstance(raw, (dict, list)):
        return None
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    return str(raw)


def _like(pattern: str, *, ignore_case: bool) -> re.Pattern[str]:
    parts = []
    for ch in pattern:
        parts.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
    return re.compile("^" + "".join(parts) + "$", re.S | (re.I if ignore_case else 0))


def _compile_filter(spec: Any, where: str) -> Callable[[str | None], bool]:
    """A FilterString object ($eq, $ne, $in, $nin, $like, ..., $and, $or) -> predicate."""
    if not isinstance(spec, dict):
        raise _Problem(400, f"{where}: filter must be an object")
    ops = {k: v for k, v in spec.items() if v is not None}
    if not ops:
        return lambda value: True
    if len(ops) > 1:
        raise _Problem(400, f"{where}: only one filter can be set")
    ((op, arg),) = ops.items()
    if op in ("$and", "$or"):
        if not isinstance(arg, list):
            raise _Problem(400, f"{where}: {op} must be an array")
        subs = [_compile_filter(item, where) for item in arg]
        if op == "$and":
            return lambda value: all(f(value) for f in subs)
        return lambda value: any(f(value) for f in subs)
    if op in ("$in", "$nin"):
        if not isinstance(arg, list) or not all(isinstance(x, str) for x in arg):
            raise _Problem(400, f"{where}: {op} must be an array of strings")
        members = frozenset(arg)
        if op == "$in":
            return lambda value: value is not None and value in members
        return lambda value: value is not None and value not in members
    if not isinstance(arg, str):
        raise _Problem(400, f"{where}: {op} must be a string")
    if op == "$eq":
        return lambda value: value == arg
    if op == "$ne":
        return lambda value: value is not None and value != arg
    if op in ("$like", "$nlike", "$ilike", "$nilike"):
        rx = _like(arg, ignore_case=op in ("$ilike", "$nilike"))
        if op in ("$like", "$ilike"):
            return lambda value: value is not None and rx.match(value) is not None
        return lambda value: value is not None and rx.match(value) is None
    if op == "$gt":
        return lambda value: value is not None and value > arg
    if op == "$gte":
        return lambda value: value is not None and value >= arg
    if op == "$lt":
        return lambda value: value is not None and value < arg
    if op == "$lte":
        return lambda value: value is not None and value <= arg
    raise _Problem(400, f"{where}: unknown filter operator {op!r}")


# --- storage --------------------------------------------------------------------------------------


class _Hour:
    """Dense per-subject aggregates of one UTC hour of one meter, indexed by subject id."""

    __slots__ = ("comp", "nall", "nval", "sums")

    def __init__(self, size: int) -> None:
        self.nall = array("q", bytes(8 * size))
        self.nval = array("q", bytes(8 * size))
        self.sums = array("d", bytes(8 * size))
        self.comp = array("d", bytes(8 * size))

    def grow(self, size: int) -> None:
        missing = size - len(self.nall)
        if missing > 0:
            zeros = bytes(8 * missing)
            self.nall.frombytes(zeros)
            self.nval.frombytes(zeros)
            self.sums.frombytes(zeros)
            self.comp.frombytes(zeros)


class _Meter:
    def __init__(
        self,
        *,
        slug: str,
        aggregation: str,
        event_type: str,
        value_property: str | None,
        group_by: dict[str, str],
    ) -> None:
        now = datetime.now(UTC).replace(microsecond=0)
        self.id = _ulid()
        self.slug = slug
        self.aggregation = aggregation
        self.event_type = event_type
        self.value_property = value_property
        self.group_by = dict(group_by)
        self.group_keys = tuple(sorted(group_by))
        self.created_at = now
        self._value_of = _compile_jsonpath(value_property) if value_property else None
        self._group_of = [_compile_jsonpath(group_by[k]) for k in self.group_keys]
        self.clear()

    def clear(self) -> None:
        self.subjects: list[str] = []
        self.subject_json: list[str] = []
        self.sid: dict[str, int] = {}
        self.ts = array("q")
        self.val = array("d")
        self.sids = array("q")
        self.gvals: list[tuple[str | None, ...]] | None = [] if self.group_keys else None
        self.uvals: list[str | None] | None = [] if self.aggregation == "UNIQUE_COUNT" else None
        self.is_sorted = True
        self.hours: dict[int, _Hour] = {}

    def as_json(self) -> dict[str, Any]:
        stamp = self.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        body: dict[str, Any] = {
            "id": self.id,
            "slug": self.slug,
            "name": self.slug,
            "aggregation": self.aggregation,
            "eventType": self.event_type,
            "groupBy": dict(self.group_by),
            "createdAt": stamp,
            "updatedAt": stamp,
        }
        if self.value_property is not None:
            body["valueProperty"] = self.value_property
        return body

    # ingestion

    def values_from(self, data: Any) -> tuple[float, tuple[str | None, ...], str | None]:
        raw = self._value_of(data) if self._value_of is not None else _MISSING
        groups = tuple(_text(lookup(data)) for lookup in self._group_of)
        return _numeric(raw), groups, (_text(raw) if self.uvals is not None else None)

    def add(
        self,
        ts: int,
        subject: str,
        value: float,
        groups: tuple[str | None, ...] = (),
        unique: str | None = None,
    ) -> None:
        sid = self.sid.get(subject)
        if sid is None:
            sid = self.sid[subject] = len(self.subjects)
            self.subjects.append(subject)
            self.subject_json.append(json.dumps(subject))
        if self.is_sorted and self.ts and ts < self.ts[-1]:
            self.is_sorted = False
        self.ts.append(ts)
        self.val.append(value)
        self.sids.append(sid)
        if self.gvals is not None:
            self.gvals.append(
                groups if len(groups) == len(self.group_keys) else (None,) * len(self.group_keys)
            )
        if self.uvals is not None:
            self.uvals.append(
                unique if unique is not None else _text(value if value == value else None)
            )
        hour = self.hours.get(ts // US_HOUR)
        if hour is None:
            hour = self.hours[ts // US_HOUR] = _Hour(len(self.subjects))
        elif sid >= len(hour.nall):
            hour.grow(len(self.subjects))
        hour.nall[sid] += 1
        if value == value:  # not NaN: the event has a value
            hour.nval[sid] += 1
            total = hour.sums[sid]
            new = total + value
            if abs(total) >= abs(value):
                hour.comp[sid] += (total - new) + value
            else:
                hour.comp[sid] += (value - new) + total
            hour.sums[sid] = new

    def ensure_sorted(self) -> None:
        if self.is_sorted:
            return
        ts = self.ts
        order = sorted(range(len(ts)), key=ts.__getitem__)
        self.ts = array("q", [ts[i] for i in order])
        self.val = array("d", [self.val[i] for i in order])
        self.sids = array("q", [self.sids[i] for i in order])
        if self.gvals is not None:
            self.gvals = [self.gvals[i] for i in order]
        if self.uvals is not None:
            self.uvals = [self.uvals[i] for i in order]
        self.is_sorted = True


class _Query:
    """Validated query parameters."""

    def __init__(self) -> None:
        self.from_us: int | None = None
        self.to_us: int | None = None
        self.from_text: str | None = None
        self.to_text: str | None = None
        self.window: str | None = None
        self.tz: tzinfo = UTC
        self.tz_is_utc = True
        self.subjects: list[str] | None = None
        self.group_by: list[str] = []
        self.filters: list[tuple[str, Callable[[str | None], bool]]] = []


# --- the fake -------------------------------------------------------------------------------------


class FakeOpenMeter:
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
        self.requests: list[tuple[str, str]] = []
        self.request_headers: list[dict[str, str]] = []
        self.latency: float = 0.0
        self.down: bool = False
        # Refuse queries without windowSize (an OpenMeter that only answers windowed queries).
        self.require_window_size: bool = False
        self._fail_count = 0
        self._fail_status = 500
        self._fail_retry_after: float | None = None

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
        """Forget meters, events, recorded requests and faults (the token stays)."""
        with self._lock:
            self._meters.clear()
            self._raw.clear()
            self._seen.clear()
            self.requests.clear()
            self.request_headers.clear()
            self.latency = 0.0
            self.down = False
            self.require_window_size = False
            self._fail_count = 0
            self._fail_status = 500
            self._fail_retry_after = None

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
        if resource[0] != "meters" or len(resource) > 3:
            raise _Problem(404, f"no route for {path}")
        if method != "GET":
            raise _Problem(405, f"method {method} not allowed on {path}")
        params = parse_qsl(parts.query, keep_blank_values=True)
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
                query = _parse_query(meter, params)
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
        if "includeDeleted" in values and values["includeDeleted"] not in ("true", "false"):
            raise _Problem(
                400, 'parameter "includeDeleted" in query has an error: value must be a boolean'
            )
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


# --- query ----------------------------------------------------------------------------------------

_QUERY_SINGLE = (
    "from",
    "to",
    "windowSize",
    "windowTimeZone",
    "clientId",
    "advancedMeterGroupByFilters",
)
_QUERY_MULTI = ("subject", "groupBy", "filterCustomerId")
_FILTER_GROUP_BY = re.compile(r"^filterGroupBy\[([^\]]*)\]$")


def _reject_unknown(params: list[tuple[str, str]], known: set[str]) -> None:
    for name, _ in params:
        if name not in known:
            raise _Problem(400, f'unknown query parameter "{name}"')


def _singles(params: list[tuple[str, str]]) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in params:
        if name in values:
            raise _Problem(400, f'parameter "{name}" in query has an error: must not be repeated')
        values[name] = value
    return values


def _int_param(values: dict[str, str], name: str, default: int, lo: int, hi: int | None) -> int:
    if name not in values:
        return default
    try:
        number = int(values[name])
    except ValueError:
        raise _Problem(400, f'parameter "{name}" in query has an error: not an integer') from None
    if number < lo or (hi is not None and number > hi):
        limit = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise _Problem(400, f'parameter "{name}" in query has an error: must be {limit}')
    return number


def _enum_param(values: dict[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    if name not in values:
        return None
    if values[name] not in allowed:
        listed = ",".join(f'"{a}"' for a in allowed)
        raise _Problem(
            400,
            f'parameter "{name}" in query has an error: value {values[name]!r} is not one of '
            f"the allowed values [{listed}]",
        )
    return values[name]


def _bad_time(name: str, text: str) -> str:
    return (
        f'parameter "{name}" in query has an error: {text!r} is not a valid RFC 3339 date-time '
        "(for example 2023-01-01T01:01:01Z)"
    )


def _parse_query(meter: _Meter, params: list[tuple[str, str]]) -> _Query:
    query = _Query()
    singles: dict[str, str] = {}
    multi: dict[str, list[str]] = {name: [] for name in _QUERY_MULTI}
    filter_eq: dict[str, str] = {}
    for name, value in params:
        if name in _QUERY_MULTI:
            multi[name].append(value)
        elif name in _QUERY_SINGLE:
            if name in singles:
                raise _Problem(
                    400, f'parameter "{name}" in query has an error: must not be repeated'
                )
            singles[name] = value
        elif m := _FILTER_GROUP_BY.match(name):
            filter_eq[m.group(1)] = value
        else:
            raise _Problem(400, f'unknown query parameter "{name}"')

    for name in ("from", "to"):
        text = singles.get(name)
        if text is None:
            continue
        try:
            stamp = _parse_time(text)
        except ValueError:
            raise _Problem(400, _bad_time(name, text)) from None
        if name == "from":
            query.from_us, query.from_text = stamp, text
        else:
            query.to_us, query.to_text = stamp, text

    query.window = _enum_param(singles, "windowSize", WINDOW_SIZES)

    if "clientId" in singles and not 1 <= len(singles["clientId"]) <= 36:
        raise _Problem(
            400, 'parameter "clientId" in query has an error: length must be between 1 and 36'
        )

    if "windowTimeZone" in singles:
        name = singles["windowTimeZone"]
        if name in _UTC_NAMES:
            query.tz, query.tz_is_utc = UTC, True
        else:
            try:
                query.tz = ZoneInfo(name)
            except (ValueError, OSError, KeyError):
                raise _Problem(400, f"invalid time zone: unknown time zone {name}") from None
            query.tz_is_utc = False

    if multi["filterCustomerId"]:
        raise _Problem(
            400, "filterCustomerId is not supported by the fake OpenMeter (it has no customers)"
        )

    for key in multi["groupBy"]:
        if key == "customer_id":
            raise _Problem(400, "customer filter is required with customer_id group by")
        if key != "subject" and key not in meter.group_by:
            raise _Problem(400, f"invalid group by: {key}")
        if key not in query.group_by:
            query.group_by.append(key)

    if multi["subject"]:
        query.subjects = multi["subject"]
        if "subject" not in query.group_by:
            query.group_by.append("subject")

    for key, value in filter_eq.items():
        if key not in meter.group_by:
            raise _Problem(400, f"invalid group by filter: {key}")
        query.filters.append((key, _compile_filter({"$eq": value}, f"filterGroupBy[{key}]")))

    if "advancedMeterGroupByFilters" in singles:
        try:
            spec = json.loads(singles["advancedMeterGroupByFilters"])
        except ValueError:
            raise _Problem(
                400, 'parameter "advancedMeterGroupByFilters" in query has an error: not JSON'
            ) from None
        if not isinstance(spec, dict):
            raise _Problem(
                400, 'parameter "advancedMeterGroupByFilters" in query must be a JSON object'
            )
        for key, filt in spec.items():
            if key not in meter.group_by:
                raise _Problem(400, f"meter does not have group by: {key}")
            query.filters.append((key, _compile_filter(filt, f"group by {key}")))

    if query.from_us is not None and query.to_us is not None:
        if query.from_us == query.to_us:
            raise _Problem(400, "from and to cannot be equal")
        if query.from_us > query.to_us:
            raise _Problem(400, "from must be before to")
    return query


def _run_query(meter: _Meter, query: _Query) -> bytes:
    head: dict[str, Any] = {}
    if query.from_us is not None:
        head["from"] = _fmt(query.from_us)
    if query.to_us is not None:
        head["to"] = _fmt(query.to_us)
    if query.window is not None:
        head["windowSize"] = query.window
    fast = (
        meter.aggregation in ("SUM", "COUNT", "AVG")
        and query.from_us is not None
        and query.to_us is not None
        and query.from_us % US_HOUR == 0
        and query.to_us % US_HOUR == 0
        and query.window in (None, "HOUR", "DAY")
        and query.tz_is_utc
        and all(key == "subject" for key in query.group_by)
        and not query.filters
    )
    rows = _fast_rows(meter, query) if fast else _raw_rows(meter, query)
    prefix = json.dumps(head)[:-1]
    return (prefix + (", " if head else "") + '"data": [' + ",".join(rows) + "]}").encode()


def _row(value: str, start: int, end: int, subject_json: str, groups: str = "{}") -> str:
    return (
        f'{{"value":{value},"windowStart":"{_fmt(start)}","windowEnd":"{_fmt(end)}",'
        f'"subject":{subject_json},"groupBy":{groups}}}'
    )


def _fast_rows(meter: _Meter, query: _Query) -> list[str]:
    """SUM / COUNT / AVG over whole UTC hours, from the per-hour buckets."""
    assert query.from_us is not None and query.to_us is not None
    first, last = query.from_us // US_HOUR, query.to_us // US_HOUR
    hours = sorted(h for h in meter.hours if first <= h < last)
    if not hours:
        return []
    size = len(meter.subjects)
    for h in hours:
        meter.hours[h].grow(size)
    windows: list[tuple[int, int, list[_Hour]]]
    if query.window == "HOUR":
        windows = [(h * US_HOUR, (h + 1) * US_HOUR, [meter.hours[h]]) for h in hours]
    elif query.window == "DAY":
        by_day: dict[int, list[_Hour]] = {}
        for h in hours:
            by_day.setdefault(h // 24, []).append(meter.hours[h])
        windows = [(d * US_DAY, (d + 1) * US_DAY, b) for d, b in sorted(by_day.items())]
    else:
        windows = [(query.from_us, query.to_us, [meter.hours[h] for h in hours])]

    if query.subjects is not None:
        known = {meter.sid[s] for s in query.subjects if s in meter.sid}
        chosen = sorted(known, key=meter.subjects.__getitem__)
    else:
        chosen = sorted(range(size), key=meter.subjects.__getitem__)
    agg = meter.aggregation
    rows: list[str] = []
    for start, end, buckets in windows:
        if "subject" not in query.group_by:
            nall = sum(b.nall[s] for b in buckets for s in chosen)
            nval = sum(b.nval[s] for b in buckets for s in chosen)
            total = math.fsum(arr[s] for b in buckets for arr in (b.sums, b.comp) for s in chosen)
            value = _value(agg, nall, nval, total)
            if value is not None:
                rows.append(_row(value, start, end, "null"))
            continue
        nalls: Any
        nvals: Any
        totals: Any
        if len(buckets) == 1:
            (b,) = buckets
            nalls, nvals = b.nall, b.nval
            totals = [x + c for x, c in zip(b.sums, b.comp, strict=True)]
        else:
            nalls = [sum(col) for col in zip(*(b.nall for b in buckets), strict=True)]
            nvals = [sum(col) for col in zip(*(b.nval for b in buckets), strict=True)]
            columns = [b.sums for b in buckets] + [b.comp for b in buckets]
            totals = [math.fsum(col) for col in zip(*columns, strict=True)]
        middle = f',"windowStart":"{_fmt(start)}","windowEnd":"{_fmt(end)}","subject":'
        names = meter.subject_json
        for s in chosen:
            if nalls[s]:
                value = _value(agg, nalls[s], nvals[s], totals[s])
                if value is not None:
                    rows.append(f'{{"value":{value}{middle}{names[s]},"groupBy":{{}}}}')
    return rows


def _value(agg: str, nall: int, nval: int, total: float) -> str | None:
    if agg == "COUNT":
        return str(nall) if nall else None
    if not nval:
        return None
    return _num(total if agg == "SUM" else total / nval)


def _window_function(query: _Query) -> Callable[[int], tuple[int, int]] | None:
    window = query.window
    if window is None:
        return None
    if query.tz_is_utc and window in _FIXED_WINDOWS:
        size = _FIXED_WINDOWS[window]
        return lambda ts: (ts - ts % size, ts - ts % size + size)
    tz = query.tz
    cache: dict[int, tuple[int, int]] = {}

    def compute(ts: int) -> tuple[int, int]:
        local = (EPOCH + timedelta(microseconds=ts)).astimezone(tz)
        if window == "MINUTE":
            start = local.replace(second=0, microsecond=0)
            return _to_us(start), _to_us(start) + US_MINUTE
        if window == "HOUR":
            start = local.replace(minute=0, second=0, microsecond=0)
            return _to_us(start), _to_us(start) + US_HOUR
        if window == "DAY":
            start = local.replace(hour=0, minute=0, second=0, microsecond=0)
            return _to_us(start), _to_us(start + timedelta(days=1))
        start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else start.replace(month=start.month + 1)
        )
        return _to_us(start), _to_us(nxt)

    def window_of(ts: int) -> tuple[int, int]:
        minute = ts // US_MINUTE
        hit = cache.get(minute)
        if hit is None:
            hit = cache[minute] = compute(ts)
        return hit

    return window_of


def _raw_rows(meter: _Meter, query: _Query) -> list[str]:
    meter.ensure_sorted()
    ts, vals, sids = meter.ts, meter.val, meter.sids
    gvals, uvals = meter.gvals, meter.uvals
    lo = 0 if query.from_us is None else bisect_left(ts, query.from_us)
    hi = len(ts) if query.to_us is None else bisect_left(ts, query.to_us)
    window_of = _window_function(query)
    wanted = None
    if query.subjects is not None:
        wanted = {meter.sid[s] for s in query.subjects if s in meter.sid}
    by_subject = "subject" in query.group_by
    key_names = [k for k in query.group_by if k != "subject"]
    key_idx = [meter.group_keys.index(k) for k in key_names]
    filters = [(meter.group_keys.index(k), f) for k, f in query.filters]
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i in range(lo, hi):
        sid = sids[i]
        if wanted is not None and sid not in wanted:
            continue
        gv = gvals[i] if gvals is not None else ()
        if filters and not all(f(gv[j]) for j, f in filters):
            continue
        key = (
            window_of(ts[i]) if window_of is not None else None,
            sid if by_subject else -1,
            tuple(gv[j] for j in key_idx),
        )
        members = groups.get(key)
        if members is None:
            groups[key] = [i]
        else:
            members.append(i)

    agg = meter.aggregation
    out: list[tuple[tuple[Any, ...], str]] = []
    for (window, sid, gkey), members in groups.items():
        valued = [i for i in members if vals[i] == vals[i]]
        if agg == "COUNT":
            value: str | None = str(len(members))
        elif agg == "UNIQUE_COUNT":
            assert uvals is not None
            value = str(len({uvals[i] for i in members if uvals[i] is not None}))
        elif not valued:
            value = None
        elif agg == "SUM":
            value = _num(math.fsum(vals[i] for i in valued))
        elif agg == "AVG":
            value = _num(math.fsum(vals[i] for i in valued) / len(valued))
        elif agg == "MIN":
            value = _num(min(vals[i] for i in valued))
        elif agg == "MAX":
            value = _num(max(vals[i] for i in valued))
        else:  # LATEST: the value of the last event by time (ties: the last ingested)
            value = _num(vals[max(valued, key=lambda i: (ts[i], i))])
        if value is None:
            continue
        if window is not None:
            start, end = window
        else:
            first = ts[members[0]]
            last = ts[members[-1]]
            start = query.from_us if query.from_us is not None else first - first % US_MINUTE
            end = query.to_us if query.to_us is not None else last - last % US_MINUTE + US_MINUTE
        subject = meter.subjects[sid] if by_subject else ""
        subject_json = meter.subject_json[sid] if by_subject else "null"
        group_json = json.dumps(dict(zip(key_names, gkey, strict=True)), separators=(",", ":"))
        out.append(((start, end, subject, gkey), _row(value, start, end, subject_json, group_json)))
    out.sort(key=lambda item: item[0])
    return [row for _, row in out]


def _check_event(
    event: Any, index: int
) -> tuple[str, str, str, str, int | None, dict[str, Any] | None]:
    where = f"event {index}" if index else "event"
    if not isinstance(event, dict):
        raise _Problem(400, f"{where}: must be a JSON object")
    for name in ("id", "source", "specversion", "type", "subject"):
        value = event.get(name)
        if not isinstance(value, str) or not value:
            raise _Problem(400, f"{where}: {name} is required and must be a non-empty string")
    if event["specversion"] != "1.0":
        raise _Problem(400, f'{where}: specversion must be "1.0"')
    content_type = event.get("datacontenttype")
    if content_type not in (None, "application/json"):
        raise _Problem(400, f"{where}: datacontenttype must be application/json")
    stamp: int | None = None
    if event.get("time") is not None:
        text = event["time"]
        try:
            stamp = _parse_time(text) if isinstance(text, str) else None
        except ValueError:
            stamp = None
        if stamp is None:
            raise _Problem(400, f"{where}: time {text!r} is not a valid RFC 3339 date-time")
    data = event.get("data")
    if data is not None and not isinstance(data, dict):
        raise _Problem(400, f"{where}: data must be a JSON object")
    return event["id"], event["source"], event["type"], event["subject"], stamp, data


def _dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _problem(status: int, detail: str, instance: str) -> bytes:
    return _dumps(
        {
            "type": "about:blank",
            "title": _TITLES.get(status, "Error"),
            "status": status,
            "detail": detail,
            "instance": instance,
        }
    )


# --- HTTP plumbing --------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True
    fake: FakeOpenMeter


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        fake = self.server.fake
        headers = {k.lower(): v for k, v in self.headers.items()}
        with fake._lock:
            fake.requests.append((self.command, self.path))
            fake.request_headers.append(headers)
        length = int(headers.get("content-length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        if fake.down:
            self._drop()
            return
        if fake.latency > 0:
            _time.sleep(fake.latency)
        path = urlsplit(self.path).path
        failure = fake._take_failure()
        if failure is not None:
            status, retry_after = failure
            extra = {}
            if status == 429 or retry_after is not None:
                extra["Retry-After"] = _num(retry_after or 0)
            self._send(
                status,
                {"Content-Type": "application/problem+json", **extra},
                _problem(status, f"injected failure ({status})", path),
            )
            return
        try:
            status, extra, payload = fake.handle(self.command, self.path, headers, body)
        except _Problem as problem:
            extra = {"Content-Type": "application/problem+json"}
            if problem.status == 401:
                extra["WWW-Authenticate"] = "Bearer"
            self._send(problem.status, extra, _problem(problem.status, problem.detail, path))
            return
        except Exception as exc:  # a bug in the fake: say so, like a 500 would
            self._send(
                500,
                {"Content-Type": "application/problem+json"},
                _problem(500, f"fake OpenMeter error: {exc!r}", path),
            )
            return
        if payload:
            extra = {"Content-Type": "application/json", **extra}
        self._send(status, extra, payload)

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _drop(self) -> None:
        """Close the connection without answering, like a server that went away."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _meter_specs(specs: Iterable[str]) -> Iterator[tuple[str, str, str | None, str | None]]:
    for spec in specs:
        slug, _, rest = spec.partition(":")
        agg, _, rest = rest.partition(":")
        etype, _, prop = rest.partition(":")
        yield slug, (agg or "SUM"), (etype or None), (prop or None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the fake OpenMeter on a loopback port.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("--token", default=None, help="require Authorization: Bearer TOKEN")
    parser.add_argument(
        "--meter",
        action="append",
        default=[],
        metavar="SLUG[:AGG[:EVENT_TYPE[:VALUE_PROPERTY]]]",
        help="create a meter (repeatable), e.g. api_calls:SUM:api_call:$.value",
    )
    args = parser.parse_args(argv)
    fake = FakeOpenMeter(token=args.token, host=args.host, port=args.port)
    for slug, agg, etype, prop in _meter_specs(args.meter):
        default = None if agg.upper() == "COUNT" else "$.value"
        fake.add_meter(slug, aggregation=agg, event_type=etype, value_property=prop or default)
    fake.start()
    print(f"fake OpenMeter listening on {fake.url}", flush=True)
    try:
        while True:
            _time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
