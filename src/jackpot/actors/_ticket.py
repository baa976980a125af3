"""A request's hand-shake between a waiting caller and the actor serving it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pykka

__all__ = ["Ticket"]

Notify = Callable[[Any, BaseException | None], None]


class Ticket:
    """One request's fate: run or abandoned (decided once), and its outcome.

    A caller that times out abandons its ticket; an actor claims it before
    doing any work. Whoever comes first wins, so a caller told "timed out"
    knows the request was never applied, and an actor never applies a request
    whose caller already gave up. A thread waits for the outcome with `wait`
    and takes it with `outcome`; an asyncio caller passes `notify` instead.
    The ticket names the actor that claimed it (`owner`): only that one can
    answer, so it is the one the caller watches, even after a replacement
    took over the level.

    The outcome is signalled by releasing a lock taken at creation: the
    cheapest hand-off between two threads that CPython has (no Python-level
    condition variable on either side), which matters when an actor settles
    a batch of hundreds of requests after one commit.
    """

    __slots__ = ("_claim", "_done", "_error", "_notify", "_result", "_settled", "_state",
                 "owner", "queued")

    def __init__(self, notify: Notify | None = None) -> None:
        """Create an open ticket; `notify(result, error)` is called when served.

        `notify` runs in the actor's thread and must not block (an asyncio
        caller passes one that uses `loop.call_soon_threadsafe`).
        """
        self._claim = threading.Lock()
        self._state = "open"
        self._notify = notify
        self._done = threading.Lock()
        self._done.acquire()  # released once, by settle()
        self._settled = False  # set by settle(), before the release
        self._result: Any = None
        self._error: BaseException | None = None
        self.owner: pykka.ActorRef[Any] | None = None  # set once, by `claim`
        self.queued = False  # set by `Mailbox.put`

    def claim(self, owner: pykka.ActorRef[Any]) -> bool:
        """Mark the request as being served by `owner`; False if the caller gave up."""
        with self._claim:
            if self._state == "open":
                self._state = "claimed"
                self.owner = owner
            return self._state == "claimed"

    def abandon(self) -> bool:
        """Mark the request as abandoned; False if an actor already claimed it."""
        with self._claim:
            if self._state == "open":
                self._state = "abandoned"
                self._notify = None  # never settled now: drop the way back to the caller
            return self._state == "abandoned"

    def withdraw_unsent(self) -> bool:
        """Abandon the request unless a mailbox holds it; True if it will never run.

        For a caller interrupted (Ctrl-C) around its send: a request never
        queued, or already withdrawn (a first attempt whose actor had
        stopped), has no outcome to wait for; waiting would end in a "not
        started" timeout that never happened. One queued goes on (False).
        """
        if self.queued and self._state != "abandoned":
            return False
        return self.abandon()

    def settle(self, result: Any, error: BaseException | None) -> None:
        """Deliver the outcome to the waiting caller (once)."""
        self._result, self._error = result, error
        self._settled = True
        self._done.release()
        # Dropped once called: an asyncio caller's notify refers back to the
        # call that holds this ticket, a cycle only the garbage collector
        # would otherwise break.
        notify, self._notify = self._notify, None
        if notify is not None:
            notify(result, error)

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the outcome; True once it is there.

        An interrupt (Ctrl-C) between the acquire and the release below would
        leave the lock held: `_settled` still tells later waits (the one that
        reports an interrupted caller's outcome) that the outcome is there.
        """
        if self._settled:
            return True
        if self._done.acquire(timeout=timeout):
            self._done.release()  # stay settled for later waits
            return True
        return False

    @property
    def answer(self) -> tuple[Any, BaseException | None]:
        """Return (result, error); only after `wait` returned True."""
        return self._result, self._error

    def outcome(self) -> Any:
        """Return the result, or raise the error; only after `wait` returned True."""
        if self._error is not None:
            raise self._error
        return self._result
