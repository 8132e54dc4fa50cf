"""Work done once per shared filesystem: an exclusive lock file beside what is being made.

Lightning runs ``prepare_data`` once per node; when several nodes share the
filesystem that holds the demo corpus or the fitted tokenizers, they would make
the same files at once. ``once(target)`` holds ``<target>.lock`` (``filelock``:
``fcntl.flock``, which NFSv4, GPFS and Lustre mounted with ``-o flock`` share
between machines) while the caller checks whether ``target`` is complete and
makes it if not: the first process makes it, the others wait and then find it
complete. Makers still write under a name unique to the process
(``unique_temp``) and rename into place, so a crash never leaves a torn file.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

_REPORT_AFTER_S = 5.0  # say who we are waiting for once the wait is noticeable


@contextmanager
def once(target: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold the lock of ``target`` (``<target>.lock``) for the body; ``what`` names it in messages."""
    lock_path = Path(str(target).rstrip("/") + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(lock_path))
    start = time.monotonic()
    while True:
        try:
            lock.acquire(timeout=_REPORT_AFTER_S)
            break
        except filelock.Timeout:
            print(f"waiting for another process to finish {what} (lock {lock_path}, "
                  f"{time.monotonic() - start:.0f} s so far)", flush=True)
    try:
        yield
    finally:
        lock.release()


def unique_temp(path: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """``<path>.<host>-<pid><suffix>``: a temporary name no other process (on any node) writes."""
    path = Path(path)
    return path.with_name(f"{path.name}.{socket.gethostname()}-{os.getpid()}{suffix}")
