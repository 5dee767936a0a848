"""Storage of the OpenMeter emulator: meters with raw events and dense per-hour buckets, and
customers with the subject keys their usage is attributed by."""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from typing import Any

from .common import (
    _MISSING,
    US_HOUR,
    _compile_jsonpath,
    _fmt,
    _numeric,
    _Problem,
    _text,
    _to_us,
    _ulid,
)


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
        self._compile()
        self.clear()

    def _compile(self) -> None:
        prop = self.value_property
        self._value_of = _compile_jsonpath(prop) if prop else None
        self._group_of = [_compile_jsonpath(self.group_by[k]) for k in self.group_keys]

    # pickling (the emulator's state file): the compiled JSONPath lookups are closures
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_value_of"], state["_group_of"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._compile()

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


class _Customer:
    """An OpenMeter customer. ``fields`` holds the optional CustomerCreate fields as given
    (description, primaryEmail, currency, metadata, billingAddress)."""

    def __init__(
        self, *, name: str, key: str | None, subject_keys: list[str], fields: dict[str, Any]
    ) -> None:
        now = _to_us(datetime.now(UTC))
        self.id = _ulid(now // 1000)
        self.name = name
        self.key = key
        self.subject_keys = subject_keys
        self.fields = fields
        self.created_us = self.updated_us = now

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "name": self.name}
        if self.key is not None:
            body["key"] = self.key
        body.update(self.fields)
        body["usageAttribution"] = {"subjectKeys": list(self.subject_keys)}
        body["createdAt"] = _fmt(self.created_us)
        body["updatedAt"] = _fmt(self.updated_us)
        return body


class _Customers:
    """The customers, indexed by id, by key and by subject key (one customer per subject key and
    per key, as OpenMeter's unique constraints have it; both conflicts answer 409)."""

    def __init__(self) -> None:
        self.by_id: dict[str, _Customer] = {}
        self.id_of_key: dict[str, str] = {}
        self.owner: dict[str, str] = {}  # subject key -> customer id

    def clear(self) -> None:
        self.by_id.clear()
        self.id_of_key.clear()
        self.owner.clear()

    def find(self, id_or_key: str) -> _Customer | None:
        found = self.by_id.get(id_or_key)
        if found is None and id_or_key in self.id_of_key:
            found = self.by_id[self.id_of_key[id_or_key]]
        return found

    def add(self, customer: _Customer) -> None:
        if customer.key is not None and customer.key in self.id_of_key:
            raise _Problem(
                409,
                f'key "{customer.key}" is already used by an another customer in the namespace '
                "default",
            )
        self._check_subject_keys(customer.id, customer.subject_keys)
        self.by_id[customer.id] = customer
        if customer.key is not None:
            self.id_of_key[customer.key] = customer.id
        for subject in customer.subject_keys:
            self.owner[subject] = customer.id

    def set_subject_keys(self, customer: _Customer, subject_keys: list[str]) -> None:
        if customer.key is None and not subject_keys:
            raise _Problem(400, "either key or usageAttribution.subjectKeys must be provided")
        self._check_subject_keys(customer.id, subject_keys)
        for subject in customer.subject_keys:
            del self.owner[subject]
        for subject in subject_keys:
            self.owner[subject] = customer.id
        customer.subject_keys = subject_keys
        customer.updated_us = _to_us(datetime.now(UTC))

    def _check_subject_keys(self, customer_id: str, subject_keys: list[str]) -> None:
        taken = any(self.owner.get(s, customer_id) != customer_id for s in subject_keys)
        if taken or len(set(subject_keys)) < len(subject_keys):
            raise _Problem(
                409,
                f"one or multiple subject keys of [{', '.join(subject_keys)}] are already "
                "associated with an different customer in the namespace default",
            )

    def attribution(self, ids: list[str]) -> dict[str, str]:
        """Subject -> customer id for the customers ``ids`` (404 if one is unknown): their key and
        their current subject keys, as OpenMeter's meter query maps them (not the customer id;
        where two of them claim the same subject, the first listed wins)."""
        result: dict[str, str] = {}
        for customer_id in ids:
            customer = self.by_id.get(customer_id)
            if customer is None:
                raise _Problem(404, f"customer with id {customer_id} not found")
            if customer.key is not None:
                result.setdefault(customer.key, customer.id)
            for subject in customer.subject_keys:
                result.setdefault(subject, customer.id)
        return result


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
        # subject -> customer id when filterCustomerId is given: only these subjects count
        self.attribution: dict[str, str] | None = None
        self.filters: list[tuple[str, Callable[[str | None], bool]]] = []
