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
at most 5 minutes ahead, values have at most 15 significant digits, metered prices need an active
meter, prices are immutable.

Meter event validation: ``POST /v1/billing/meter_events`` and ``POST /v2/billing/meter_events``
answer 400 for what they check synchronously (no meter, inactive meter, payload keys, value,
timestamp, duplicate identifier); the v2 stream checks nothing synchronously. What is checked
later (every rejection of the stream; on every endpoint, a customer id that names no customer) is
answered 200, kept out of the windows, recorded in ``async_errors`` and reported by
``flush_error_reports()`` as thin events (``events.py``). Emitted events are kept in ``events``
and delivered to webhook destinations (``add_webhook_destination``, ``webhooks.py``).

Stripe time (``created``, the 35-day / 5-minute / 24-hour rules, session expiry, the invoice
grace period) comes from ``clock``; the ``rate_limit_per_second`` window uses the real monotonic
clock. Its 429s carry ``Stripe-Should-Retry: <rate_limit_should_retry>`` when that is set.

Billing: subscriptions have periods on their items (``periods.py``); ``advance_subscription``
ends one now and leaves a draft invoice, which ``finalize_due_invoices`` finalizes once
``invoice_grace_seconds`` have passed (``cycle.py``); invoice items and credit notes correct
invoices (``corrections.py``).

The endpoints live in mixins by concern: ``catalog.py`` (customers, products), ``prices.py``,
``meters.py`` (billing meters), ``meter_events.py`` (v1 meter events and adjustments, the
rules), ``summaries.py`` (event summaries), ``subscriptions.py`` and ``subscription_items.py``,
``invoices.py`` (with ``invoice_lines.py``), ``cycle.py``, ``corrections.py``, ``v2.py`` (v2
meter events), ``events.py`` (emitted events, ``/v2/core/events``, webhook endpoints, error
reports), ``webhooks.py`` (destinations, signed delivery); ``pipeline.py`` is the request
pipeline and the faults, ``server.py`` the HTTP plumbing, ``controls.py`` the ``/_emulator``
controls, ``common.py`` the common types and helpers, ``inspection.py`` the ``billed_*`` views,
``state.py`` saves and loads the state, ``page.py`` (``page_html.py``, ``page_billing.py``) and
``snapshot.py`` (``snapshot_billing.py``) make the read-only page at ``/`` (what the emulator
holds, for a person). This class holds the state.

Run ``python -m emulators.stripe --port 12111 [--state PATH]`` to serve it by hand (``--help``).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Callable

from . import contract
from .catalog import _Catalog
from .common import (
    _PREFIXES,
    _ROUTES,
    KINDS,
    ApiError,
    Json,
    _Ctx,
    _Event,
    _Fault,
    _missing,
    _Stored,
)
from .corrections import _Corrections
from .cycle import _Cycle
from .events import _Events
from .inspection import _Inspection
from .invoices import _Invoices
from .meter_events import _MeterEvents
from .meters import _Meters
from .pipeline import _Pipeline
from .prices import _Prices
from .server import _Server
from .state import _State
from .subscription_items import _SubscriptionItems
from .subscriptions import _Subscriptions
from .summaries import _Summaries
from .v2 import _V2
from .webhooks import _Deliverer, _Destination, _Job, _Webhooks


class FakeStripe(
    _Pipeline,
    _Inspection,
    _Catalog,
    _Prices,
    _Meters,
    _MeterEvents,
    _Summaries,
    _Subscriptions,
    _SubscriptionItems,
    _Invoices,
    _Cycle,
    _Corrections,
    _V2,
    _Events,
    _Webhooks,
    _State,
):
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
        self.summary_delay_seconds: float = 0.0  # see summaries.py
        self.invoice_grace_seconds: float = 3600.0  # drafts finalize after it (cycle.py)
        self._billing_timer: threading.Event | None = None
        self.events: list[Json] = []  # every emitted event, oldest first (events.py)
        self._error_reports: list[Json] = []  # async_errors not reported yet
        self._report_timer: threading.Event | None = None
        self.webhook_deliveries: list[Json] = []  # every delivery attempt (webhooks.py)
        self._destinations: list[_Destination] = []
        self._deliverer = _Deliverer(self.webhook_deliveries)
        self._request_info: tuple[str, str | None] | None = None  # the request being served
        self._held_events: list[tuple[Json, list[_Job]]] | None = None  # ...and its events
        self._answering = threading.local()  # per server thread: events to deliver once answered

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
        """Stop serving; also stops the error report and billing timers and abandons undelivered
        webhooks."""
        self.flush_error_reports_every(None)
        self.run_billing_every(None)
        self._deliverer.stop()
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
        """Forget all objects, meter events, emitted events, requests, faults and switches (clock
        back to time.time, summary delay 0, invoice grace 3600 s), the webhook destinations and
        undelivered webhooks.
        """
        with self._lock:
            self.events.clear()
            self._error_reports.clear()
            self._destinations.clear()
            self._deliverer.clear()
            self.summary_delay_seconds = 0.0
            self.invoice_grace_seconds = 3600.0
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
