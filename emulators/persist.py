"""State files of the emulators: atomic pickle snapshots, periodic saving, bad-file handling.

A state file is a pickle of ``{"format": <tag>, "state": {...}}`` where the state holds plain
data only. Pickle runs code while loading, so only load files this machine wrote (they are
created with mode 0600).
"""

from __future__ import annotations

import os
import pickle
import sys
import tempfile
import threading
import time
from typing import Any, Protocol


class StateFileError(ValueError):
    """The state file exists but cannot be used (corrupt, or from an incompatible version)."""


class Persistent(Protocol):
    @property
    def change_count(self) -> int: ...

    def save_state(self, path: str) -> None: ...

    def load_state(self, path: str) -> bool: ...


def dump(fmt: str, state: dict[str, Any]) -> bytes:
    return pickle.dumps({"format": fmt, "state": state}, protocol=pickle.HIGHEST_PROTOCOL)


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path`` (mode 0600), then rename it over."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read(
    path: str, fmt: str, keys: frozenset[str], optional: frozenset[str] = frozenset()
) -> dict[str, Any] | None:
    """The state saved in ``path``; None if there is no such file; StateFileError if unusable.
    It must hold ``keys``, except that ``optional`` ones (added to the format later) may be
    missing."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(f"cannot read {path}: {exc}") from None
    try:
        loaded = pickle.loads(data)
    except Exception as exc:  # any damage shows up as some exception while unpickling
        raise StateFileError(f"{path} is not a readable state file ({exc!r})") from None
    if not isinstance(loaded, dict) or loaded.get("format") != fmt:
        found = loaded.get("format") if isinstance(loaded, dict) else type(loaded).__name__
        raise StateFileError(f"{path} holds {found!r}, not {fmt!r} state")
    state = loaded.get("state")
    if not isinstance(state, dict) or not keys - optional <= set(state) <= keys:
        raise StateFileError(f"{path} does not hold the {fmt!r} state fields")
    return state


def restore(fake: Persistent, path: str, *, name: str) -> bool:
    """Load ``path`` into ``fake``. An unusable file is reported on stderr and renamed to
    ``path + ".bad"``, and the fake stays empty. True if state was loaded."""
    try:
        return fake.load_state(path)
    except StateFileError as exc:
        bad = path + ".bad"
        try:
            os.replace(path, bad)
            moved = f"moved to {bad}"
        except OSError as err:
            moved = f"could not move it aside: {err}"
        print(f"{name}: ignoring state file: {exc}; {moved}; starting empty", file=sys.stderr)
        return False


class AutoSaver:
    """Saves ``fake`` to ``path`` at most every ``interval`` seconds when its change count moved,
    and once more on :meth:`stop` if anything changed since the last save. A save holds the
    fake's lock while it pickles, so a slow save (a large state) spaces the next ones out to
    keep the emulator responsive: at least ten times the last save's duration."""

    def __init__(self, fake: Persistent, path: str, *, interval: float = 5.0, name: str) -> None:
        self.fake = fake
        self.path = path
        self.interval = interval
        self.name = name
        self._saved = fake.change_count
        self._last_duration = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{name}-autosave", daemon=True)

    def start(self) -> AutoSaver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.save_if_changed()

    def save_if_changed(self) -> bool:
        count = self.fake.change_count
        if count == self._saved:
            return False
        started = time.monotonic()
        try:
            self.fake.save_state(self.path)
        except OSError as exc:
            print(f"{self.name}: cannot save state to {self.path}: {exc}", file=sys.stderr)
            return False
        self._saved = count
        self._last_duration = time.monotonic() - started
        return True

    def _run(self) -> None:
        while not self._stop.wait(max(self.interval, 10 * self._last_duration)):
            self.save_if_changed()
