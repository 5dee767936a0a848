"""Saving and loading FakeStripe's state (``python -m emulators.stripe --state PATH``; a mixin).

Only the plain data is saved: objects (invoices, invoice items and credit notes among them, in
``objects``), meter events and their windows, identifier and idempotency records, meter event
sessions, emitted events and the asynchronous errors not reported yet. Not saved: the request log,
faults and switches, the clock, the callback, the server, the summary delay, the invoice grace,
the timers, webhook destinations and deliveries (a restarted emulator delivers only new events).
A file from before invoices existed loads with none.
"""

from __future__ import annotations

import threading
from typing import Any

from .. import persist
from .common import KINDS

FORMAT = "emulators.stripe/1"
# Saved together in one pickle, so objects shared between them (an event in `_buckets` and in
# `_identifiers`, a price inside a subscription item) stay shared after loading.
STATE_ATTRS = (
    "objects",
    "meter_events",
    "async_errors",
    "_deleted",
    "_idempotency",
    "_identifiers",
    "_buckets",
    "_active_by_event_name",
    "_sessions",
    "_seq",
    "events",
    "_error_reports",
)
# Added after the first state files were written: a file without them still loads.
LATER_ATTRS = frozenset({"events", "_error_reports"})


class _State:
    """save_state / load_state / change_count; state lives on :class:`FakeStripe`."""

    _changes: int
    _lock: threading.RLock

    @property
    def change_count(self) -> int:
        """Grows with every request that may have changed the state (all but GETs), every
        emitted event, reset() and load_state()."""
        return self._changes

    def save_state(self, path: str) -> None:
        """Write the state to ``path`` atomically (a temporary file renamed over it, mode 0600)."""
        with self._lock:
            data = persist.dump(FORMAT, {name: getattr(self, name) for name in STATE_ATTRS})
        persist.write_atomic(path, data)

    def load_state(self, path: str) -> bool:
        """Replace the state with the one saved in ``path``. False (nothing changed) if there is
        no such file; :class:`emulators.persist.StateFileError` if it cannot be used."""
        state = persist.read(path, FORMAT, frozenset(STATE_ATTRS), LATER_ATTRS)
        if state is None:
            return False
        objects: Any = state["objects"]
        if not isinstance(objects, dict):
            raise persist.StateFileError(f"{path} does not hold Stripe objects")
        for kind in KINDS:
            objects.setdefault(kind, {})
        with self._lock:
            for name in STATE_ATTRS:
                setattr(self, name, state[name] if name in state else type(getattr(self, name))())
            self._changes += 1
        return True
