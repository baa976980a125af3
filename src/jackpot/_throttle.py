"""Once a while per kind: what keeps a repeated failure from flooding the logs.

A full disk fails every operation, a database that went away fails every
reconnection attempt: the first of each kind should be logged in full, the
rest of the minute only counted. `Throttle` is that rule, shared by the
tracebacks of failed operations (`jackpot.logs`) and psycopg_pool's warnings
about the engine's own pools (`jackpot.storage._pg_pool`).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import NamedTuple

__all__ = ["Passed", "Throttle"]

_ALL: weakref.WeakSet[Throttle] = weakref.WeakSet()
"""Every throttle of this process (for a forked child)."""


def _after_fork_in_child() -> None:
    """Renew every throttle's lock: another thread of the parent may have held one at the fork."""
    for throttle in list(_ALL):
        throttle._lock = threading.Lock()  # noqa: SLF001


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent on Windows only
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Passed(NamedTuple):
    """An event let through: how many of its kind were held back since the last one passed."""

    held_back: int
    seconds: float
    """Since the last one of its kind passed (`every` for the first)."""


class Throttle:
    """Lets the first event of each kind through, then holds that kind back for `every` seconds.

    Thread-safe. At most `kept` kinds are remembered: beyond that the kinds
    no longer held back are forgotten, and if that is not enough the
    stalest half (a forgotten kind passes again, and its count is lost).
    """

    def __init__(self, every: float, kept: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._every, self._kept, self._clock = every, kept, clock
        self._lock = threading.Lock()
        self._seen: dict[Hashable, tuple[float, int]] = {}  # kind: (passed at, held back)
        _ALL.add(self)

    def admit(self, kind: Hashable) -> Passed | None:
        """Return how many of `kind` were held back if it passes now; None (and count it) if not."""
        now = self._clock()
        with self._lock:
            passed, held = self._seen.get(kind, (now - self._every, 0))
            if now - passed < self._every:
                self._seen[kind] = (passed, held + 1)
                return None
            if kind not in self._seen and len(self._seen) >= self._kept:
                self._forget(now)
            self._seen[kind] = (now, 0)
        return Passed(held, now - passed)

    def _forget(self, now: float) -> None:
        self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self._every}
        if len(self._seen) >= self._kept:
            stalest = sorted(self._seen, key=lambda k: self._seen[k][0])
            for kind in stalest[:len(stalest) // 2 + 1]:
                del self._seen[kind]
