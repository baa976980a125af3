"""A request's hand-shake between a waiting caller and the actor serving it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pykka

__all__ = ["Ticket"]

Notify = Callable[[Any, BaseException | None], None]


class Ticket:
    """One request's fate: run or abandoned (decided once), and its outcome.

    A caller that times out abandons its ticket; an actor claims it before
    doing any work. Whoever comes first wins, so a caller told "timed out"
    knows the request was never applied, and an actor never applies a request
    whose caller already gave up. The outcome arrives in `future` (for
    threads) and through `notify` (for asyncio callers).
    """

    __slots__ = ("_lock", "_notify", "_state", "future")

    def __init__(self, notify: Notify | None = None) -> None:
        """Create an open ticket; `notify(result, error)` is called when served.

        `notify` runs in the actor's thread and must not block (an asyncio
        caller passes one that uses `loop.call_soon_threadsafe`).
        """
        self._lock = threading.Lock()
        self._state = "open"
        self._notify = notify
        self.future: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()

    def claim(self) -> bool:
        """Mark the request as being served; False if the caller gave up."""
        with self._lock:
            if self._state == "open":
                self._state = "claimed"
            return self._state == "claimed"

    def abandon(self) -> bool:
        """Mark the request as abandoned; False if an actor already claimed it."""
        with self._lock:
            if self._state == "open":
                self._state = "abandoned"
            return self._state == "abandoned"

    def settle(self, result: Any, error: BaseException | None) -> None:
        """Deliver the outcome to the waiting caller."""
        if error is None:
            self.future.set(result)
        else:
            self.future.set_exception((type(error), error, error.__traceback__))
        if self._notify is not None:
            self._notify(result, error)

    # Kept for callers written against the earlier name.
    done = settle
