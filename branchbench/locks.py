"""Claims: one cell run at a time, one parent per sweep, one store creation.

Two kinds, one interface (``try_acquire``, ``acquire``, ``release``,
``wait_released``); the store decides which (:meth:`Tracking.claim`):

* :class:`FileLock`: an ``fcntl`` lock on a file beside a SQLite store. It holds
  between the processes of one machine, which is every process that can write
  a local SQLite file.
* :class:`StoreClaim`: a claim recorded in the tracking store itself (a tracking
  server or a database), so it holds across machines (a Ray cluster, two
  people's sweeps on one server). MLflow has no compare-and-swap, so a claim is
  *write, then read*: a contender adds its claim record, then lists the live
  claims on the key; it wins only when its own is the only one, and otherwise
  withdraws and waits. Two contenders cannot both win: the later of the two
  writes happens before the later one's read, so that reader sees both. Both
  may lose; they retry after a random pause. A winner refreshes a heartbeat;
  a claim whose heartbeat is older than ``ttl`` is dead (its process or node
  died) and is removed by whoever sees it. A claim made by an earlier attempt
  of the same Ray task (the same *lineage*) is removed at once: Ray retries a
  task only after its attempt died, so the retry resumes the cell without
  waiting out the ``ttl``.

Limits of :class:`StoreClaim`: it is a lease. A holder paused for longer than
``ttl`` (and clocks that disagree by a large part of ``ttl``) can let a second
process take the cell while the first still runs it; the heartbeat then finds
its claim gone and sets :attr:`StoreClaim.lost`. Each attempt costs a few
round trips to the store, so it guards whole cells and sweeps, not epochs.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

CLAIM_TTL_SECONDS = 120.0
CLAIM_POLL_SECONDS = 1.0

_LINEAGE: contextvars.ContextVar[str | None] = contextvars.ContextVar("bb_claim_lineage", default=None)


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


class Claim(Protocol):
    def try_acquire(self) -> bool: ...

    def acquire(self) -> None: ...

    def release(self) -> None: ...

    def wait_released(self) -> None: ...


@contextlib.contextmanager
def holding(claim: Claim) -> Iterator[None]:
    """Hold ``claim`` for the block (waiting for it first)."""
    claim.acquire()
    try:
        yield
    finally:
        claim.release()


@contextlib.contextmanager
def lineage(name: str | None) -> Iterator[None]:
    """Claims made in the block belong to ``name`` (a Ray task id: the same for every retry of the task)."""
    token = _LINEAGE.set(name)
    try:
        yield
    finally:
        _LINEAGE.reset(token)


@dataclass(frozen=True)
class ClaimRecord:
    """A claim as the store holds it: its id, who made it, and its last heartbeat (Unix seconds)."""

    id: str
    owner: dict[str, Any]
    heartbeat: float


class ClaimStore(Protocol):
    """What :class:`StoreClaim` needs from a store (:class:`~branchbench.tracking.Tracking` provides it)."""

    def add_claim(self, key: str, owner: dict[str, Any]) -> str: ...

    def list_claims(self, key: str) -> list[ClaimRecord]: ...

    def beat_claim(self, claim_id: str) -> bool: ...

    def drop_claim(self, claim_id: str) -> None: ...


class StoreClaim:
    """A claim on ``key`` recorded in a shared store (see the module docstring for the protocol)."""

    def __init__(self, store: ClaimStore, key: str, ttl: float = CLAIM_TTL_SECONDS,
                 poll: float = CLAIM_POLL_SECONDS) -> None:
        self.store = store
        self.key = key
        self.ttl = ttl
        self.poll = poll
        self.owner = {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                      "lineage": _LINEAGE.get()}
        self.lost = False
        self._id: str | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _live_others(self) -> list[ClaimRecord]:
        """Other live claims on the key; dead ones (and an earlier attempt of this lineage's) are removed."""
        mine = self.owner["lineage"]
        live = []
        for record in self.store.list_claims(self.key):
            if record.id == self._id:
                continue
            expired = time.time() - record.heartbeat > self.ttl
            superseded = mine is not None and record.owner.get("lineage") == mine
            if expired or superseded:
                self.store.drop_claim(record.id)
                continue
            live.append(record)
        return live

    def holders(self) -> list[dict[str, Any]]:
        """Who holds the key now (owners of the live claims)."""
        return [r.owner for r in self._live_others()]

    def try_acquire(self) -> bool:
        if self._id is not None:
            raise RuntimeError(f"claim on {self.key!r} is already held by this object")
        self._id = self.store.add_claim(self.key, self.owner)
        if self._live_others():
            self.store.drop_claim(self._id)
            self._id = None
            return False
        self.lost = False
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name=f"claim-{self.key}", daemon=True)
        self._beat.start()
        return True

    def acquire(self) -> None:
        while not self.try_acquire():
            self.wait_released()

    def wait_released(self) -> None:
        """Return once no other live claim holds the key (after a random pause, so contenders spread out)."""
        time.sleep(random.uniform(0.1, 1.0) * self.poll)
        while self._live_others():
            time.sleep(random.uniform(0.5, 1.5) * self.poll)

    def release(self) -> None:
        if self._id is None:
            return
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        self.store.drop_claim(self._id)
        self._id = None

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            claim_id = self._id
            if claim_id is None:
                return
            try:
                alive = self.store.beat_claim(claim_id)
            except Exception:  # the store is unreachable for a moment: try again at the next beat
                continue
            if not alive:  # someone judged it dead; the cell may now run twice (see the module docstring)
                self.lost = True
                return
