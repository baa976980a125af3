"""Thread-safe counters of what the engine had to do to stay correct."""

from __future__ import annotations

import threading
from collections import Counter

__all__ = ["Stats"]


class Stats:
    """Counts conflicts, retries, busy incidents, timeouts and replays.

    Keys are "<event>" and "<event>:<operation>:<level>" so a caller can read
    totals or break them down.
    """

    EVENTS = ("conflicts", "retries", "busy_incidents", "lock_timeouts", "replays",
              "actor_restarts")

    def __init__(self) -> None:
        """Start every counter at zero."""
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, event: str, operation: str = "", level: str = "", n: int = 1) -> None:
        """Count `n` occurrences of `event` for an operation on a level."""
        with self._lock:
            self._counts[event] += n
            if operation:
                self._counts[f"{event}:{operation}:{level}"] += n

    def snapshot(self) -> dict[str, int]:
        """Return a copy of every counter (totals always present)."""
        with self._lock:
            out = dict.fromkeys(self.EVENTS, 0)
            out.update(self._counts)
            return out
