"""One reporter per meter at a time, across processes, released even when a process is killed.

PostgreSQL: a session advisory lock (dropped with the connection). SQLite: an flock on a file in
the system's temp directory, named for the database (dropped with the process). Either way a
crashed run never blocks the next.
"""

import fcntl
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from django.db import connection

_ADVISORY_NAMESPACE = 0x4D42  # "MB": keeps our advisory lock ids apart from other apps'


def _lock_path(meter_id: int) -> str:
    database = str(connection.settings_dict["NAME"])
    tag = hashlib.sha256(database.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"meterbridge-{tag}-meter-{meter_id}.lock")


def _try_acquire(meter_id: int) -> IO[str] | bool:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_ADVISORY_NAMESPACE, meter_id])
            return bool(cursor.fetchone()[0])
    handle = open(_lock_path(meter_id), "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return False
    return handle


def _release(meter_id: int, held: IO[str] | bool) -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_ADVISORY_NAMESPACE, meter_id])
    elif not isinstance(held, bool):
        fcntl.flock(held, fcntl.LOCK_UN)
        held.close()


@contextmanager
def meter_lock(meter_id: int, *, wait: float) -> Iterator[bool]:
    """Yield True while this process holds the meter, False if another run kept it for `wait` s."""
    deadline = time.monotonic() + wait
    held = _try_acquire(meter_id)
    while not held and time.monotonic() < deadline:
        time.sleep(0.2)
        held = _try_acquire(meter_id)
    if not held:
        yield False
        return
    try:
        yield True
    finally:
        _release(meter_id, held)
