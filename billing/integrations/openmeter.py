"""The app's client for OpenMeter's v1 query API: typed rows, retries, clear errors.

No Django at import time: :meth:`OpenMeterClient.from_settings` reads the settings when called.

Errors are :class:`OpenMeterError` (``OpenMeterNotFound`` for an unknown meter); their message
names the meter, the HTTP status and OpenMeter's ``detail`` (or the connection error), and never
contains the API token.
"""

from __future__ import annotations

import functools
import importlib
import logging
import random
import ssl
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Final, NamedTuple
from urllib.parse import quote

import httpx

from billing import clock
from billing.integrations.json_stream import NotAnArray, array_items

__all__ = [
    "CustomerInfo",
    "MeterInfo",
    "OpenMeterClient",
    "OpenMeterError",
    "OpenMeterNotFound",
    "UsageRow",
]

logger = logging.getLogger(__name__)

DEFAULT_URL: Final = "https://openmeter.cloud"
WINDOW_SIZES: Final = ("MINUTE", "HOUR", "DAY", "MONTH")
_WINDOW_LENGTH: Final = {
    "MINUTE": timedelta(minutes=1),
    "HOUR": timedelta(hours=1),
    "DAY": timedelta(days=1),
}
_MAX_DELAY: Final = 60.0  # seconds: cap on one backoff sleep, Retry-After included
# Keep each query's URL well below common 8 KiB limits when many subjects are filtered.
_SUBJECT_PARAMS_BUDGET: Final = 4000
CUSTOMER_PAGE_SIZE: Final = 100
CUSTOMER_FILTER_MAX: Final = 100  # filterCustomerId values per query (OpenMeter's maxItems)
_REDACTED: Final = "[redacted]"


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every client: building one reads the CA bundle (20 ms), and a run
    opens a client per meter."""
    return httpx.create_ssl_context()


class OpenMeterError(Exception):
    """A failed OpenMeter call. ``str()`` is safe to show and to log: it never holds the token."""

    def __init__(
        self,
        message: str,
        *,
        slug: str | None = None,
        status: int | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.slug = slug
        self.status = status
        self.detail = detail


class OpenMeterNotFound(OpenMeterError):
    """OpenMeter answered 404 for a meter slug."""


class UsageRow(NamedTuple):
    """One aggregated value of one subject in one window ``[window_start, window_end)`` (UTC).
    A named tuple: a large query builds hundreds of thousands, and a frozen dataclass costs
    three times as much to build."""

    subject: str
    window_start: datetime
    window_end: datetime
    value: Decimal
    customer_id: str = ""  # the OpenMeter customer, in a query by customer


@dataclass(frozen=True)
class MeterInfo:
    slug: str
    aggregation: str
    event_type: str | None
    window_size: str | None


@dataclass(frozen=True)
class CustomerInfo:
    """An OpenMeter customer: the subject keys of `usageAttribution` are its usage."""

    id: str
    name: str
    key: str | None
    email: str | None
    subject_keys: tuple[str, ...]


class OpenMeterClient:
    """A synchronous httpx client for OpenMeter (Cloud or self-hosted).

    ``max_retries`` is the number of retries after the first attempt: connection errors,
    timeouts, 5xx and 429 are retried with exponential backoff (``backoff * 2**n`` seconds plus
    up to 10% jitter, or the server's ``Retry-After`` on a 429/503), then raise
    :class:`OpenMeterError`. Other 4xx answers raise at once.
    """

    def __init__(
        self,
        *,
        base_url: str,
        token: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self._token = token or None
        self._max_retries = max_retries
        self._backoff = max(0.0, backoff)
        self._timeout = timeout
        self._sleep = time.sleep
        headers = {"Accept": "application/json", "User-Agent": "meterbridge-openmeter/1"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=False,
            verify=_tls(),
        )
        self.base_url = str(self._http.base_url).rstrip("/")

    @classmethod
    def from_settings(cls) -> OpenMeterClient:
        """Build the client from ``OPENMETER_URL``, ``OPENMETER_API_TOKEN`` (None or "" for a
        self-hosted OpenMeter) and ``OPENMETER_TIMEOUT`` (seconds, default 30)."""
        settings: Any = importlib.import_module("django.conf").settings
        base_url = getattr(settings, "OPENMETER_URL", None) or DEFAULT_URL
        token = getattr(settings, "OPENMETER_API_TOKEN", None) or None
        timeout = getattr(settings, "OPENMETER_TIMEOUT", None)
        max_retries = getattr(settings, "OPENMETER_MAX_RETRIES", None)
        return cls(
            base_url=str(base_url),
            token=str(token) if token else None,
            timeout=float(timeout) if timeout else 30.0,
            max_retries=int(max_retries) if max_retries is not None else 4,
        )

    def __repr__(self) -> str:
        auth = "token" if self._token else "no token"
        return f"<OpenMeterClient {self.base_url} ({auth})>"

    # --- context manager --------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OpenMeterClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- API --------------------------------------------------------------------------------------

    def get_meter(self, slug: str) -> MeterInfo:
        """The meter ``slug`` (raises :class:`OpenMeterNotFound` when OpenMeter has none)."""
        body = self._get_json(f"/api/v1/meters/{quote(slug, safe='')}", (), slug=slug)
        if not isinstance(body, dict):
            raise self._bad_body(slug, "a meter object")
        return _meter_info(body, slug)

    def list_meters(self) -> list[MeterInfo]:
        """Every meter (first 1000)."""
        body = self._get_json("/api/v1/meters", [("pageSize", "1000")], slug=None)
        if not isinstance(body, list):
            raise self._bad_body(None, "an array of meters")
        return [_meter_info(item, None) for item in body if isinstance(item, dict)]

    def list_customers(self, *, page_size: int = CUSTOMER_PAGE_SIZE) -> Iterator[CustomerInfo]:
        """Every customer (not the deleted ones), page by page as they are read."""
        page = 1
        while True:
            params = [("page", str(page)), ("pageSize", str(page_size))]
            body = self._get_json("/api/v1/customers", params, slug=None)
            items = body.get("items") if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise self._bad_body(None, "a CustomerPaginatedResponse with items")
            for item in items:
                yield _customer_info(item)
            total = body.get("totalCount")
            if not items or not isinstance(total, int) or page * page_size >= total:
                return
            page += 1

    def get_customer(self, id_or_key: str) -> CustomerInfo:
        """The customer with this id or key (OpenMeterNotFound when there is none)."""
        path = f"/api/v1/customers/{quote(id_or_key, safe='')}"
        try:
            return _customer_info(self._get_json(path, (), slug=None))
        except OpenMeterError as exc:
            if exc.status == 404:
                raise OpenMeterNotFound(
                    f"OpenMeter has no customer with id or key '{id_or_key}'", status=404
                ) from None
            raise

    def query(
        self,
        *,
        slug: str,
        start: datetime,
        end: datetime,
        window_size: str | None = "HOUR",
        subjects: Sequence[str] = (),
        chunk: timedelta | None = None,
        customers: Sequence[str] = (),
    ) -> Iterator[UsageRow]:
        """Usage of meter ``slug`` in ``[start, end)`` per subject (and per window).

        ``window_size`` is MINUTE, HOUR, DAY or MONTH (any case), or None for one total per
        subject over the whole range. ``subjects`` filters (no filter: every subject).
        ``chunk`` splits the range into consecutive pieces of that length, aligned to ``start``,
        one request each (windowed queries only; it must be a whole number of windows). Rows are
        yielded as each request's answer arrives: this is a generator, and errors surface while
        iterating. Naive datetimes are taken as UTC. ``customers`` (OpenMeter customer ids, at
        most 100) reads per customer instead (``filterCustomerId``): each row aggregates all the
        subjects OpenMeter attributes to the customer, named by ``customer_id`` (a unique count or
        maximum over several subjects is not the sum of theirs, and filtering by subject groups
        by subject).
        """
        window = _window_size(window_size)
        start_utc, end_utc = _utc(start, "start"), _utc(end, "end")
        if start_utc >= end_utc:
            raise ValueError(
                f"start ({_rfc3339(start_utc)}) must be before end ({_rfc3339(end_utc)})"
            )
        if chunk is not None and window is not None:
            if chunk <= timedelta(0):
                raise ValueError("chunk must be positive")
            length = _WINDOW_LENGTH.get(window)
            if length is None or chunk % length:
                raise ValueError(f"chunk ({chunk}) must be a whole number of {window} windows")
        pieces = list(_chunks(start_utc, end_utc, chunk if window is not None else None))
        subject_batches = _subject_batches(subjects)
        customer_ids = list(dict.fromkeys(customers))
        if len(customer_ids) > CUSTOMER_FILTER_MAX:
            raise ValueError(f"at most {CUSTOMER_FILTER_MAX} customers per query")
        return self._iter_rows(slug, window, pieces, subject_batches, customers=customer_ids)

    # --- internals --------------------------------------------------------------------------------

    def _iter_rows(
        self,
        slug: str,
        window: str | None,
        pieces: list[tuple[datetime, datetime]],
        subject_batches: list[list[str]],
        *,
        customers: list[str],
    ) -> Iterator[UsageRow]:
        path = f"/api/v1/meters/{quote(slug, safe='')}/query"
        for piece_start, piece_end in pieces:
            for batch in subject_batches:
                params: list[tuple[str, str]] = [
                    ("from", _rfc3339(piece_start)),
                    ("to", _rfc3339(piece_end)),
                ]
                if window is not None:
                    params.append(("windowSize", window))
                params.append(("windowTimeZone", "UTC"))
                if customers:
                    params.extend(("filterCustomerId", c) for c in customers)
                else:
                    params.append(("groupBy", "subject"))
                params.extend(("subject", subject) for subject in batch)
                text = self._request(path, params, slug=slug).text
                try:
                    yield from self._rows(slug, array_items(text, key="data"), customers)
                except ValueError:
                    raise self._bad_body(slug, "JSON") from None
                except NotAnArray:
                    raise self._bad_body(slug, 'a MeterQueryResult with "data"') from None

    def _rows(self, slug: str, items: Iterator[Any], customers: list[str]) -> Iterator[UsageRow]:
        """The answer's rows, decoded one at a time (an answer may hold 100,000 of them)."""
        by_customer = bool(customers)
        for item in items:
            if not isinstance(item, dict):
                raise self._bad_body(slug, "rows that are objects")
            subject = item.get("subject")
            customer_id = item.get("customerId") if by_customer else ""
            if by_customer:
                subject = subject or ""
                if not customer_id:
                    continue
            if subject is None:
                logger.debug("OpenMeter meter %r: skipped a row without subject", slug)
                continue
            try:
                row = UsageRow(
                    subject=str(subject),
                    window_start=_parse_time(item["windowStart"]),
                    window_end=_parse_time(item["windowEnd"]),
                    value=_decimal(item["value"]),
                    customer_id=str(customer_id),
                )
            except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
                raise self._bad_body(
                    slug, f"well-formed rows ({type(exc).__name__}: {exc})"
                ) from None
            yield row

    def _get_json(self, path: str, params: Sequence[tuple[str, str]], *, slug: str | None) -> Any:
        response = self._request(path, params, slug=slug)
        try:
            return response.json()
        except ValueError:
            raise self._bad_body(slug, "JSON") from None

    def _request(
        self, path: str, params: Sequence[tuple[str, str]], *, slug: str | None
    ) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.get(path, params=list(params))
            except httpx.TransportError as exc:  # timeouts included
                if isinstance(exc, httpx.TimeoutException):
                    reason = f"timed out after {self._timeout:g}s ({type(exc).__name__})"
                else:
                    reason = f"connection error: {type(exc).__name__}: {exc}"
                delay = self._delay(attempt, None)
                if attempt > self._max_retries:
                    raise self._error(slug, reason, attempts=attempt) from exc
                self._log_retry(slug, reason, attempt, delay)
                self._sleep(delay)
                continue

            status = response.status_code
            if status < 400:
                return response
            detail = _problem_detail(response)
            if status == 429 or status >= 500:
                if attempt <= self._max_retries:
                    delay = self._delay(attempt, response.headers.get("Retry-After"))
                    self._log_retry(slug, f"HTTP {status}: {detail}", attempt, delay)
                    response.close()
                    self._sleep(delay)
                    continue
                raise self._error(
                    slug, f"HTTP {status}: {detail}", status=status, detail=detail, attempts=attempt
                )
            raise self._error(slug, f"HTTP {status}: {detail}", status=status, detail=detail)

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        if retry_after is not None:
            seconds = _retry_after_seconds(retry_after)
            if seconds is not None:
                return min(seconds, _MAX_DELAY)
        base = min(self._backoff * 2.0 ** min(attempt - 1, 30), _MAX_DELAY)
        return base + random.uniform(0, base * 0.1)

    def _log_retry(self, slug: str | None, reason: str, attempt: int, delay: float) -> None:
        logger.warning(
            "%s; retry %d of %d in %.2fs",
            self._redact(f"{_subject_of(slug)}: {reason}"),
            attempt,
            self._max_retries,
            delay,
        )

    def _error(
        self,
        slug: str | None,
        reason: str,
        *,
        status: int | None = None,
        detail: str | None = None,
        attempts: int = 1,
    ) -> OpenMeterError:
        cls = OpenMeterNotFound if status == 404 and slug is not None else OpenMeterError
        message = f"{_subject_of(slug)}: {reason}"
        if attempts > 1:
            message += f" (gave up after {attempts} attempts)"
        return cls(
            self._redact(message),
            slug=slug,
            status=status,
            detail=self._redact(detail) if detail is not None else None,
        )

    def _bad_body(self, slug: str | None, expected: str) -> OpenMeterError:
        return OpenMeterError(
            self._redact(f"{_subject_of(slug)}: unexpected response, expected {expected}"),
            slug=slug,
        )

    def _redact(self, text: str) -> str:
        if self._token:
            text = text.replace(self._token, _REDACTED)
        return text


# --- helpers --------------------------------------------------------------------------------------


def _subject_of(slug: str | None) -> str:
    return f"OpenMeter meter {slug!r}" if slug is not None else "OpenMeter"


def _meter_info(body: Mapping[str, Any], slug: str | None) -> MeterInfo:
    found_slug = body.get("slug")
    aggregation = body.get("aggregation")
    if not isinstance(found_slug, str) or not isinstance(aggregation, str):
        raise OpenMeterError(
            f"{_subject_of(slug)}: unexpected response, expected a meter with slug and aggregation",
            slug=slug,
        )
    event_type = body.get("eventType")
    window_size = body.get("windowSize")
    return MeterInfo(
        slug=found_slug,
        aggregation=aggregation,
        event_type=event_type if isinstance(event_type, str) else None,
        window_size=window_size if isinstance(window_size, str) else None,
    )


def _customer_info(body: Any) -> CustomerInfo:
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise OpenMeterError("OpenMeter: unexpected response, expected a customer with an id")
    attribution = body.get("usageAttribution") or {}
    keys = attribution.get("subjectKeys") if isinstance(attribution, dict) else None
    key, email = body.get("key"), body.get("primaryEmail")
    return CustomerInfo(
        id=body["id"],
        name=str(body.get("name") or body.get("key") or body["id"]),
        key=key if isinstance(key, str) and key else None,
        email=email if isinstance(email, str) and email else None,
        subject_keys=tuple(str(k) for k in keys or () if k),
    )


def _window_size(window_size: str | None) -> str | None:
    if window_size is None:
        return None
    window = window_size.upper()
    if window not in WINDOW_SIZES:
        raise ValueError(f"window_size must be one of {', '.join(WINDOW_SIZES)} or None")
    return window


def _utc(moment: datetime, name: str) -> datetime:
    if not isinstance(moment, datetime):
        raise TypeError(f"{name} must be a datetime")
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _rfc3339(moment: datetime) -> str:
    """UTC, second precision unless there are microseconds: ``2026-11-20T13:00:00Z``."""
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def _chunks(
    start: datetime, end: datetime, chunk: timedelta | None
) -> Iterator[tuple[datetime, datetime]]:
    if chunk is None:
        yield start, end
        return
    current = start
    while current < end:
        nxt = min(current + chunk, end)
        yield current, nxt
        current = nxt


def _subject_batches(subjects: Sequence[str]) -> list[list[str]]:
    """Split a subject filter so each request's query string stays a sensible length."""
    if isinstance(subjects, str):
        raise TypeError("subjects must be a sequence of strings, not a string")
    unique = list(dict.fromkeys(subjects))
    if not unique:
        return [[]]
    batches: list[list[str]] = [[]]
    used = 0
    for subject in unique:
        cost = len(quote(subject, safe="")) + len("&subject=")
        if batches[-1] and used + cost > _SUBJECT_PARAMS_BUDGET:
            batches.append([])
            used = 0
        batches[-1].append(subject)
        used += cost
    return batches


def _parse_time(value: Any) -> datetime:
    """RFC 3339 from OpenMeter (``Z`` or an offset, up to nanoseconds) -> aware UTC datetime."""
    if not isinstance(value, str):
        raise TypeError(f"expected an RFC 3339 string, got {type(value).__name__}")
    return _parse_time_text(value)


@functools.lru_cache(maxsize=4096)
def _parse_time_text(value: str) -> datetime:
    # Cached: a query's rows repeat the same few window bounds, one pair per window.
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    date_part, sep, time_part = text.partition("T")
    if not sep:
        date_part, sep, time_part = text.partition("t")
    if "." in time_part:  # Python takes at most 6 fractional digits
        whole, _, rest = time_part.partition(".")
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        time_part = f"{whole}.{digits[:6].ljust(6, '0')}{rest}"
    moment = datetime.fromisoformat(f"{date_part}T{time_part}")
    if moment.tzinfo is None:
        raise ValueError(f"time without offset: {value!r}")
    return moment.astimezone(UTC)


def _decimal(value: Any) -> Decimal:
    """OpenMeter's float as the Decimal it prints as: 0.1 -> Decimal('0.1'), 5.0 -> Decimal('5')."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"value must be a number, got {type(value).__name__}")
    if type(value) is int or (type(value) is float and value.is_integer() and abs(value) < 1e15):
        return Decimal(int(value))  # the common case, without going through text
    number = Decimal(str(value))
    if not number.is_finite():
        raise ValueError(f"value is not finite: {value!r}")
    if number == number.to_integral_value() and abs(number) < Decimal("1e27"):
        number = number.quantize(Decimal(1))
    return number


def _problem_detail(response: httpx.Response) -> str:
    """OpenMeter's ``detail`` (RFC 7807), else its title or a short piece of the body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("detail", "title", "message", "error"):
            value = body.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
    text = " ".join(response.text.split())[:200] if response.content else ""
    return text or response.reason_phrase or "no detail"


def _retry_after_seconds(value: str) -> float | None:
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - clock.now()).total_seconds())
