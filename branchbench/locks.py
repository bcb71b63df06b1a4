"""File locks beside the store: one cell run at a time, one parent per sweep, one store creation.

They are ``fcntl`` locks on files in the store's local folder, so they hold
between processes of one machine (the local executor). Waiting is blocking;
trying is not.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


class FileLock:
    """An exclusive lock on ``path`` (created if missing); ``try_acquire`` never blocks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = None

    def _open(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return open(self.path, "a+")  # noqa: SIM115 - held until release()

    def try_acquire(self) -> bool:
        handle = self._open()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._handle = handle
        return True

    def acquire(self) -> None:
        handle = self._open()
        fcntl.flock(handle, fcntl.LOCK_EX)
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def wait_released(self) -> None:
        """Block until whoever holds the lock releases it (without keeping it)."""
        self.acquire()
        self.release()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the lock on ``path`` for the block."""
    lock = FileLock(path)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()
