"""Shared pieces of the OpenMeter emulator: constants, time and number helpers, JSONPath,
filters, CloudEvent and CustomerCreate checks and RFC 7807 problem bodies.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import time as _time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any

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


def _body_text(
    body: dict[str, Any], name: str, *, lo: int = 1, hi: int | None = None, pattern: str = ""
) -> str | None:
    """An optional string property of a request body (None when absent), checked."""
    if name not in body:
        return None
    value = body[name]
    if not isinstance(value, str):
        raise _Problem(400, f'request body has an error: property "{name}" must be a string')
    if len(value) < lo or (hi is not None and len(value) > hi):
        limit = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise _Problem(
            400, f'request body has an error: property "{name}" must be {limit} characters long'
        )
    if pattern and not re.fullmatch(pattern, value):
        raise _Problem(
            400, f'request body has an error: property "{name}" must match the pattern {pattern}'
        )
    return value


def _check_subject_keys(keys: Any) -> list[str]:
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        raise _Problem(
            400,
            'property "usageAttribution.subjectKeys" must be an array of non-empty strings',
        )
    return list(keys)


def _check_customer(body: Any) -> tuple[str, str | None, list[str], dict[str, Any]]:
    """A CustomerCreate body -> (name, key, subject keys, the other optional fields as given)."""
    if not isinstance(body, dict):
        raise _Problem(400, "request body must be a JSON object")
    if "name" not in body:
        raise _Problem(400, 'request body has an error: property "name" is missing')
    name = _body_text(body, "name", hi=256)
    assert name is not None
    key = _body_text(body, "key", hi=256)
    fields: dict[str, Any] = {}
    checks: dict[str, dict[str, Any]] = {
        "description": {"lo": 0, "hi": 1024},
        "primaryEmail": {"lo": 0},
        "currency": {"pattern": "[A-Z]{3}"},
    }
    for field, limits in checks.items():
        value = _body_text(body, field, **limits)
        if value is not None:
            fields[field] = value
    metadata = body.get("metadata")
    if metadata is not None:  # nullable
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise _Problem(
                400, 'request body has an error: property "metadata" must map names to strings'
            )
        fields["metadata"] = metadata
    if "billingAddress" in body:
        address = body["billingAddress"]
        if not isinstance(address, dict):
            raise _Problem(
                400, 'request body has an error: property "billingAddress" must be an object'
            )
        for part in ("country", "postalCode", "state", "city", "line1", "line2", "phoneNumber"):
            _body_text(address, part, lo=0, pattern="[A-Z]{2}" if part == "country" else "")
        fields["billingAddress"] = address
    subject_keys: list[str] = []
    if "usageAttribution" in body:
        attribution = body["usageAttribution"]
        if not isinstance(attribution, dict) or "subjectKeys" not in attribution:
            raise _Problem(
                400,
                'request body has an error: property "usageAttribution" must be an object with '
                '"subjectKeys"',
            )
        subject_keys = _check_subject_keys(attribution["subjectKeys"])
    if key is None and not subject_keys:
        raise _Problem(400, "either key or usageAttribution.subjectKeys must be provided")
    return name, key, subject_keys, fields


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
