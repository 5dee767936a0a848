"""The one clock the app reads. Tests set it with `frozen(moment)` instead of patching modules.

Database timestamps filled by Django itself (`auto_now`, `auto_now_add`) keep using the real
time: they record when a row was written, not which windows a run covers.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

_fixed: datetime | None = None


def now() -> datetime:
    """The current time, timezone-aware UTC."""
    return _fixed if _fixed is not None else datetime.now(UTC)


@contextmanager
def frozen(moment: datetime) -> Iterator[datetime]:
    """Make `now()` answer `moment` until the block ends (every thread of the process)."""
    global _fixed
    previous, _fixed = _fixed, moment.astimezone(UTC)
    try:
        yield _fixed
    finally:
        _fixed = previous
