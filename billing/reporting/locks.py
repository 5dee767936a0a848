"""One reporter per meter at a time, across processes, released even when a process is killed.

PostgreSQL: a session advisory lock (dropped with the connection). SQLite: an flock on a file
named for the database (dropped with the process), in a private directory (mode 0700, ours, not a
symlink) beside the database: `<database dir>/.meterbridge-locks/`. For an in-memory or
URI-named database, or when that directory cannot be ours, `$XDG_RUNTIME_DIR/meterbridge-locks/`
or `<temp dir>/meterbridge-<uid>/`, checked the same way: no predictable file in a world-writable
directory that another user could plant or hold. Either way a crashed run never blocks the next.
"""

import fcntl
import hashlib
import logging
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from django.db import connection

logger = logging.getLogger(__name__)

_ADVISORY_NAMESPACE = 0x4D42  # "MB": keeps our advisory lock ids apart from other apps'


LOCK_DIR_NAME = ".meterbridge-locks"


class LockDirectoryError(RuntimeError):
    """No private directory could be found for the lock files."""


def _is_file_database(name: str) -> bool:
    return bool(name) and name != ":memory:" and not name.startswith("file:")


def _private_dir(path: str) -> bool:
    """Make `path` a directory only this user can enter (0700), or say it cannot be."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        return False  # a symlink, a file, or someone else's: not used
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)  # ours, too open (an old umask): tighten it
    return True


def lock_directory(database: str) -> str:
    """The private directory for `database`'s lock files (see the module doc)."""
    candidates = []
    if _is_file_database(database):
        candidates.append(os.path.join(os.path.dirname(os.path.abspath(database)), LOCK_DIR_NAME))
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime) and os.path.isdir(runtime):
        candidates.append(os.path.join(runtime, "meterbridge-locks"))
    candidates.append(os.path.join(tempfile.gettempdir(), f"meterbridge-{os.getuid()}"))
    for index, path in enumerate(candidates):
        if _private_dir(path):
            if index and _is_file_database(database):
                logger.warning("Lock directory %s is not private; using %s", candidates[0], path)
            return path
    raise LockDirectoryError(
        f"No private directory for the meter locks (tried {', '.join(candidates)}): each must "
        "be a directory owned by this user, not a symlink."
    )


def _lock_path(meter_id: int) -> str:
    database = str(connection.settings_dict["NAME"])
    tag = hashlib.sha256(database.encode()).hexdigest()[:16]
    return os.path.join(lock_directory(database), f"meterbridge-{tag}-meter-{meter_id}.lock")


def _try_acquire(meter_id: int) -> IO[str] | bool:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_ADVISORY_NAMESPACE, meter_id])
            return bool(cursor.fetchone()[0])
    fd = os.open(_lock_path(meter_id), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    handle = os.fdopen(fd, "a")
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
