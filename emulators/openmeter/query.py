"""Meter queries of the OpenMeter emulator: parameter checks, bucketed and raw rows."""

from __future__ import annotations

import json
import math
import re
from bisect import bisect_left
from collections.abc import Callable
from datetime import UTC, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from .common import (
    _FIXED_WINDOWS,
    _UTC_NAMES,
    EPOCH,
    US_DAY,
    US_HOUR,
    US_MINUTE,
    WINDOW_SIZES,
    _compile_filter,
    _fmt,
    _num,
    _parse_time,
    _Problem,
    _to_us,
)
from .storage import (
    _Customers,
    _Hour,
    _Meter,
    _Query,
)

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


def _bool_param(values: dict[str, str], name: str) -> bool:
    if values.get(name, "false") not in ("true", "false"):
        raise _Problem(400, f'parameter "{name}" in query has an error: value must be a boolean')
    return values.get(name) == "true"


def _bad_time(name: str, text: str) -> str:
    return (
        f'parameter "{name}" in query has an error: {text!r} is not a valid RFC 3339 date-time '
        "(for example 2023-01-01T01:01:01Z)"
    )


def _parse_query(meter: _Meter, params: list[tuple[str, str]], customers: _Customers) -> _Query:
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
    if len(multi["filterCustomerId"]) > 100:
        raise _Problem(
            400,
            'parameter "filterCustomerId" in query has an error: maximum number of items is 100',
        )

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

    for key in multi["groupBy"]:
        if key not in ("subject", "customer_id") and key not in meter.group_by:
            raise _Problem(400, f"invalid group by: {key}")
        if key not in query.group_by:
            query.group_by.append(key)

    if multi["subject"]:
        query.subjects = multi["subject"]
        if "subject" not in query.group_by:
            query.group_by.append("subject")

    # filterCustomerId takes customer ids (not keys) and also groups by customer
    if multi["filterCustomerId"]:
        query.attribution = customers.attribution(list(dict.fromkeys(multi["filterCustomerId"])))
        if "customer_id" not in query.group_by:
            query.group_by.append("customer_id")
    elif "customer_id" in query.group_by:
        raise _Problem(400, "customer filter is required with customer_id group by")

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
        and all(key in ("subject", "customer_id") for key in query.group_by)
        and not query.filters
    )
    rows = _fast_rows(meter, query) if fast else _raw_rows(meter, query)
    prefix = json.dumps(head)[:-1]
    return (prefix + (", " if head else "") + '"data": [' + ",".join(rows) + "]}").encode()


def _row(
    value: str, start: int, end: int, subject_json: str, groups: str = "{}", customer: str = ""
) -> str:
    """A MeterQueryRow; ``customer`` is empty or the ``,"customerId":...`` member."""
    return (
        f'{{"value":{value},"windowStart":"{_fmt(start)}","windowEnd":"{_fmt(end)}",'
        f'"subject":{subject_json}{customer},"groupBy":{groups}}}'
    )


def _customer_member(customer_id: str) -> str:
    return f',"customerId":{json.dumps(customer_id)}'


def _owners(meter: _Meter, query: _Query) -> dict[int, str] | None:
    """Subject id of the meter -> customer id, when the query filters by customer."""
    if query.attribution is None:
        return None
    return {meter.sid[s]: c for s, c in query.attribution.items() if s in meter.sid}


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

    names: list[str] | dict[int, str] = meter.subject_json
    owners = _owners(meter, query)
    # the rows without a subject: one over all chosen subjects, or one per customer
    totals_of: list[tuple[str, list[int]]]
    if owners is None:
        if query.subjects is not None:
            known = {meter.sid[s] for s in query.subjects if s in meter.sid}
            chosen = sorted(known, key=meter.subjects.__getitem__)
        else:
            chosen = sorted(range(size), key=meter.subjects.__getitem__)
        totals_of = [("", chosen)]
    else:
        wanted = set(owners)
        if query.subjects is not None:
            wanted &= {meter.sid[s] for s in query.subjects if s in meter.sid}
        chosen = sorted(wanted, key=lambda s: (owners[s], meter.subjects[s]))
        by_customer: dict[str, list[int]] = {}
        for s in chosen:
            by_customer.setdefault(owners[s], []).append(s)
        totals_of = [(_customer_member(c), sids) for c, sids in by_customer.items()]
        # per-subject rows carry the subject's customer after the subject
        names = {s: names[s] + _customer_member(owners[s]) for s in chosen}
    agg = meter.aggregation
    rows: list[str] = []
    for start, end, buckets in windows:
        if "subject" not in query.group_by:
            # SUM, COUNT and AVG of a customer from its subjects' counts and sums: exact
            for customer, sids in totals_of:
                nall = sum(b.nall[s] for b in buckets for s in sids)
                nval = sum(b.nval[s] for b in buckets for s in sids)
                total = math.fsum(arr[s] for b in buckets for arr in (b.sums, b.comp) for s in sids)
                value = _value(agg, nall, nval, total)
                if value is not None:
                    rows.append(_row(value, start, end, "null", customer=customer))
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
    owners = _owners(meter, query)
    if owners is not None:
        wanted = set(owners) if wanted is None else wanted & set(owners)
    by_subject = "subject" in query.group_by
    by_sid = by_subject or owners is not None  # per customer: per subject first, merged below
    key_names = [k for k in query.group_by if k not in ("subject", "customer_id")]
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
            sid if by_sid else -1,
            tuple(gv[j] for j in key_idx),
        )
        members = groups.get(key)
        if members is None:
            groups[key] = [i]
        else:
            members.append(i)
    if owners is not None and not by_subject:
        # one group per customer, keyed by its first subject: the raw events of all its
        # subjects together, so every aggregation (UNIQUE_COUNT, AVG, LATEST...) stays exact
        first_sid: dict[str, int] = {}
        merged: dict[tuple[Any, ...], list[int]] = {}
        for (window, sid, gkey), members in groups.items():
            key = (window, first_sid.setdefault(owners[sid], sid), gkey)
            merged.setdefault(key, []).extend(members)
        for members in merged.values():
            members.sort()  # back in time order
        groups = merged

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
        customer = "" if owners is None else owners[sid]
        member = _customer_member(customer) if customer else ""
        row = _row(value, start, end, subject_json, group_json, member)
        out.append(((start, end, customer, subject, gkey), row))
    out.sort(key=lambda item: item[0])
    return [row for _, row in out]
