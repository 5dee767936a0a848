"""One reporter per meter and customer at a time, across processes and machines, released even
when a process is killed.

A meter has LOCK_SLOTS locks; a customer belongs to slot `pk % LOCK_SLOTS`. A run part takes the
slots of the customers it reports (a whole meter: all of them, in order), so shards of one meter
work side by side, while two runs reporting the same customer on the same meter never do.

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
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO

from django.db import connection

logger = logging.getLogger(__name__)

_ADVISORY_NAMESPACE = 0x4D42  # "MB": keeps our advisory lock ids apart from other apps'
LOCK_SLOTS = 16
ALL_SLOTS = tuple(range(LOCK_SLOTS))


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


def slot_of(customer_id: int) -> int:
    return customer_id % LOCK_SLOTS


def _lock_path(meter_id: int, slot: int = 0) -> str:
    database = str(connection.settings_dict["NAME"])
    tag = hashlib.sha256(database.encode()).hexdigest()[:16]
    name = f"meterbridge-{tag}-meter-{meter_id}-{slot}.lock"
    return os.path.join(lock_directory(database), name)


def _advisory_id(meter_id: int, slot: int) -> int:
    return meter_id * LOCK_SLOTS + slot


def _try_acquire(meter_id: int, slot: int) -> IO[str] | bool:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_try_advisory_lock(%s, %s)",
                [_ADVISORY_NAMESPACE, _advisory_id(meter_id, slot)],
            )
            return bool(cursor.fetchone()[0])
    fd = os.open(_lock_path(meter_id, slot), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    handle = os.fdopen(fd, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return False
    return handle


def _release(meter_id: int, slot: int, held: IO[str] | bool) -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_unlock(%s, %s)",
                [_ADVISORY_NAMESPACE, _advisory_id(meter_id, slot)],
            )
    elif not isinstance(held, bool):
        fcntl.flock(held, fcntl.LOCK_UN)
        held.close()


@contextmanager
def meter_lock(meter_id: int, *, wait: float, slots: Iterable[int] = ALL_SLOTS) -> Iterator[bool]:
    """Yield True while this process holds the meter's `slots`, False if another run kept one
    of them for `wait` s. Slots are taken in order, so two takers never wait for each other."""
    deadline = time.monotonic() + wait
    taken: list[tuple[int, IO[str] | bool]] = []
    try:
        for slot in sorted(set(slots)):
            held = _try_acquire(meter_id, slot)
            while not held and time.monotonic() < deadline:
                time.sleep(0.2)
                held = _try_acquire(meter_id, slot)
            if not held:
                break
            taken.append((slot, held))
        else:
            yield True
            return
        yield False
    finally:
        for slot, held in reversed(taken):
            _release(meter_id, slot, held)
