"""Webhook delivery of FakeStripe's events (a mixin), signed as Stripe signs them.

A destination is ``(url, secret, mode, types)``: ``mode`` "snapshot" receives the snapshot (v1)
events, "thin" the thin (v2) event notifications; ``types`` None means every type. Each event is
POSTed as JSON to each matching destination with a ``Stripe-Signature: t=<unix>,v1=<hex
HMAC-SHA256(secret, "<t>.<body>")>`` header, ``t`` being the real time of the attempt (stripe-python
checks it against ``time.time()``, not against the fake's clock).

Deliveries run on one background thread, never while the fake's lock is held, and for an event
emitted while serving a request only once that request has answered. An answer outside 2xx or a
connection error is retried after each of ``webhook_retry_delays`` seconds, then given up. Every
attempt is appended to ``fake.webhook_deliveries``: ``{"url", "event_id", "type", "attempt",
"status": <HTTP status> | None, "error": <connection error> | None, "at": <epoch>}``.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from .common import Json

MODES = ("snapshot", "thin")
USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxies


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header Stripe would send for ``payload`` (now, by default)."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


class _Destination:
    __slots__ = ("mode", "secret", "types", "url")

    def __init__(self, url: str, secret: str, mode: str, types: frozenset[str] | None) -> None:
        self.url = url
        self.secret = secret
        self.mode = mode
        self.types = types


class _Job:
    __slots__ = ("attempt", "destination", "event_id", "generation", "payload", "type")

    def __init__(self, destination: _Destination, event: Json, payload: bytes, gen: int) -> None:
        self.destination = destination
        self.event_id: str = event["id"]
        self.type: str = event["type"]
        self.payload = payload
        self.attempt = 1
        self.generation = gen


class _Deliverer:
    """A queue of delivery attempts (due time order) worked off by one daemon thread."""

    def __init__(self, deliveries: list[Json]) -> None:
        self.deliveries = deliveries
        self.retry_delays: tuple[float, ...] = (0.25, 1.0, 4.0)
        self.timeout = 5.0
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Job]] = []
        self._seq = 0
        self._busy = 0  # attempts in flight
        self._held = 0  # events waiting for their request to answer
        self._generation = 0
        self._thread: threading.Thread | None = None
        self._stopping = False

    def hold(self) -> None:
        with self._cond:
            self._held += 1

    def release(self, jobs: list[_Job], *, held: bool) -> None:
        with self._cond:
            if held:
                self._held -= 1
            for job in jobs:
                if job.generation == self._generation:
                    self._push(job, time.monotonic())
            self._cond.notify_all()

    def clear(self) -> None:
        """Drop every queued attempt; attempts in flight are not recorded."""
        with self._cond:
            self._generation += 1
            self._heap.clear()
            self.deliveries.clear()
            self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._heap or self._busy or self._held:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._heap.clear()
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=self.timeout + 1)
        with self._cond:
            self._stopping = False

    def recorded(self) -> list[Json]:
        with self._cond:
            return list(self.deliveries)

    def _push(self, job: _Job, due: float) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, job))
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="fake-stripe-webhooks")
            self._thread.daemon = True
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        job = heapq.heappop(self._heap)[2]
                        self._busy += 1
                        break
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
            status, error = _post(job, self.timeout)
            with self._cond:
                self._busy -= 1
                if job.generation == self._generation:
                    self.deliveries.append(
                        {
                            "url": job.destination.url,
                            "event_id": job.event_id,
                            "type": job.type,
                            "attempt": job.attempt,
                            "status": status,
                            "error": error,
                            "at": time.time(),
                        }
                    )
                    failed = status is None or not 200 <= status < 300
                    if failed and job.attempt <= len(self.retry_delays):
                        delay = self.retry_delays[job.attempt - 1]
                        job.attempt += 1
                        self._push(job, time.monotonic() + delay)
                self._cond.notify_all()


def _post(job: _Job, timeout: float) -> tuple[int | None, str | None]:
    """POST the job's payload, signed now: (status, None) or (None, what went wrong)."""
    request = urllib.request.Request(
        job.destination.url,
        data=job.payload,
        method="POST",
        headers={
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": sign(job.payload, job.destination.secret),
            "User-Agent": USER_AGENT,
        },
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read()
            return int(response.status), None
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code), None
    except Exception as exc:  # refused, reset, timed out, not HTTP: all count as failed
        return None, f"{type(exc).__name__}: {exc}"


class _Webhooks:
    """Webhook destinations and deliveries; state lives on :class:`FakeStripe`."""

    _deliverer: _Deliverer
    _destinations: list[_Destination]
    _lock: Any

    def add_webhook_destination(
        self,
        url: str,
        *,
        secret: str,
        mode: str = "snapshot",
        types: list[str] | tuple[str, ...] | frozenset[str] | None = None,
    ) -> None:
        """Deliver the events emitted from now on whose kind is ``mode`` ("snapshot" or "thin")
        and whose type is in ``types`` (None: all) to ``url``, signed with ``secret``."""
        if mode not in MODES:
            raise ValueError(f"mode must be 'snapshot' or 'thin', not {mode!r}")
        if not secret:
            raise ValueError("a webhook destination needs a signing secret")
        chosen = None if types is None else frozenset(types)
        with self._lock:
            self._destinations.append(_Destination(url, secret, mode, chosen))

    def clear_webhook_destinations(self) -> None:
        """Forget every destination (deliveries already queued still run)."""
        with self._lock:
            self._destinations.clear()

    def deliver_pending(self, timeout: float = 10.0) -> bool:
        """Wait until every queued delivery, retries included, has been made or given up (and
        no request that emitted events is still answering); False if ``timeout`` ran out."""
        return self._deliverer.wait(timeout)

    @property
    def webhook_retry_delays(self) -> tuple[float, ...]:
        """Seconds before each retry of a failed delivery (default 0.25, 1, 4: four attempts)."""
        return self._deliverer.retry_delays

    @webhook_retry_delays.setter
    def webhook_retry_delays(self, delays: tuple[float, ...]) -> None:
        self._deliverer.retry_delays = tuple(delays)

    @staticmethod
    def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
        """The ``Stripe-Signature`` header for ``payload`` (see :func:`sign`)."""
        return sign(payload, secret, timestamp)

    # ------------------------------------------------------------------ used by emit_event

    def _destinations_for(self, type: str, thin: bool) -> list[_Destination]:
        mode = "thin" if thin else "snapshot"
        return [
            d for d in self._destinations if d.mode == mode and (d.types is None or type in d.types)
        ]

    def _queue_deliveries(self, event: Json, payload: bytes, dests: list[_Destination]) -> None:
        """Queue ``event`` for ``dests``: now, or once the request being served has answered."""
        if not dests:
            return
        generation = self._deliverer._generation
        jobs = [_Job(d, event, payload, generation) for d in dests]
        held = self._held_events
        if held is None:
            self._deliverer.release(jobs, held=False)
        else:
            self._deliverer.hold()
            held.append((event, jobs))

    def _answered(self) -> None:
        """The request served by this thread has answered: start its events' deliveries."""
        held = getattr(self._answering, "held", None)
        self._answering.held = None
        for _event, jobs in held or ():
            self._deliverer.release(jobs, held=True)
