"""Stops from outside: SIGTERM ends a command the way Ctrl-C does.

``kill``, job schedulers and CI send SIGTERM. :func:`sigterm_as_interrupt`
turns it into :class:`Terminated`, a ``KeyboardInterrupt``, so every
``except KeyboardInterrupt`` path (a cell marks its run KILLED with the reason,
a sweep prints its summary, the UI stops its server's process group) runs for
both.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

CTRL_C_REASON = "interrupted by the user (Ctrl-C); run it again to resume"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread was."""

    reason = "terminated by SIGTERM; run it again to resume"


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def sigterm_as_interrupt() -> None:
    """From now on SIGTERM raises :class:`Terminated` in the main thread."""
    signal.signal(signal.SIGTERM, _raise_terminated)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated`; the previous handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def reason(err: BaseException) -> str:
    """Why an interrupted run stopped, for its ``bb.failure`` tag."""
    return getattr(err, "reason", CTRL_C_REASON)
