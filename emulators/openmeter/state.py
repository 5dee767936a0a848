"""Saving and loading FakeOpenMeter's state (``python -m emulators.openmeter --state PATH``; a
mixin).

Saved: the meters (definitions, ids, events and hourly buckets), the raw events kept for meters
added later, the (id, source) pairs seen for deduplication, and the customers (a file saved before
the emulator had customers loads with none). Not saved: the request log, faults and switches, the
token, the server.
"""

from __future__ import annotations

import threading

from .. import persist
from .storage import _Customers

FORMAT = "emulators.openmeter/1"
STATE_ATTRS = ("_meters", "_raw", "_seen", "_customers")
_ADDED_LATER = frozenset({"_customers"})


class _State:
    """save_state / load_state / change_count; state lives on :class:`FakeOpenMeter`."""

    _changes: int
    _lock: threading.RLock

    @property
    def change_count(self) -> int:
        """Grows with every change of meters, events or customers (and every reset() and
        load_state())."""
        return self._changes

    def save_state(self, path: str) -> None:
        """Write the state to ``path`` atomically (a temporary file renamed over it, mode 0600)."""
        with self._lock:
            data = persist.dump(FORMAT, {name: getattr(self, name) for name in STATE_ATTRS})
        persist.write_atomic(path, data)

    def load_state(self, path: str) -> bool:
        """Replace the state with the one saved in ``path``. False (nothing changed) if there is
        no such file; :class:`emulators.persist.StateFileError` if it cannot be used."""
        state = persist.read(path, FORMAT, frozenset(STATE_ATTRS), _ADDED_LATER)
        if state is None:
            return False
        state.setdefault("_customers", _Customers())
        shapes = (("_meters", dict), ("_raw", list), ("_seen", set), ("_customers", _Customers))
        if not all(isinstance(state[name], kind) for name, kind in shapes):
            raise persist.StateFileError(f"{path} does not hold OpenMeter state")
        with self._lock:
            for name in STATE_ATTRS:
                setattr(self, name, state[name])
            self._changes += 1
        return True
