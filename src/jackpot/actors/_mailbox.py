"""Mailbox: requests waiting for one actor, taken in batches (group commit).

Callers put (ticket, operation) pairs here instead of sending one actor
message each. Only the first put after a drain wakes the actor; everything
that arrives while the actor is busy committing waits here and goes into the
actor's next transaction together; those that arrive while a batch waits
for the database's write lock join that batch once it holds the lock
(`claim_more`). The wake-up itself (`DRAIN`) and any other actor message
still pass through the actor's own inbox, so they stay serialized.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jackpot.actors._ticket import Ticket
from jackpot.service import Operation

if TYPE_CHECKING:
    import pykka

__all__ = ["Mailbox"]


class Mailbox:
    """A thread-safe queue of pending requests with a "wake-up sent" flag."""

    def __init__(self, max_batch: int = 512) -> None:
        """Create an empty mailbox; a batch holds at most `max_batch` requests."""
        self._lock = threading.Lock()
        self._items: deque[tuple[Ticket, Operation]] = deque()
        self._awake = False
        self.max_batch = max_batch

    def put(self, ticket: Ticket, op: Operation) -> bool:
        """Queue a request; True if the caller must wake the actor."""
        with self._lock:
            self._items.append((ticket, op))
            ticket.queued = True  # (after: an interrupt before it withdraws the request)
            if self._awake:
                return False
            self._awake = True
            return True

    def take(self) -> tuple[list[tuple[Ticket, Operation]], bool]:
        """Take the next batch; the flag says more remain (wake yourself again)."""
        with self._lock:
            n = min(len(self._items), self.max_batch)
            batch = [self._items.popleft() for _ in range(n)]
            more = bool(self._items)
            self._awake = more
            return batch, more

    def claim_batch(self, wake_again: Callable[[], None], owner: pykka.ActorRef[Any]
                    ) -> list[tuple[Ticket, Operation]]:
        """Take the next batch and claim its requests for `owner`, skipping abandoned ones.

        Calls `wake_again` when more requests wait, so the actor serves them
        next without starving the other messages in its inbox.
        """
        batch, more = self.take()
        if more:
            wake_again()
        return [(t, op) for t, op in batch if t.claim(owner)]

    def claim_more(self, fits: Callable[[Operation], bool], room: int,
                   owner: pykka.ActorRef[Any]) -> list[tuple[Ticket, Operation]]:
        """Take and claim for `owner` up to `room` queued requests that `fits` accepts.

        The rest stay queued, in order. For a batch that has just got the
        database's write lock: the requests that queued while it waited join
        its transaction.
        """
        taken: list[tuple[Ticket, Operation]] = []
        with self._lock:
            if not self._items or room <= 0:
                return taken
            kept: deque[tuple[Ticket, Operation]] = deque()
            for item in self._items:
                if len(taken) < room and fits(item[1]):
                    taken.append(item)
                else:
                    kept.append(item)
            self._items = kept
        return [(t, op) for t, op in taken if t.claim(owner)]

    def rewake(self) -> bool:
        """After an actor restart: True if requests wait and a wake-up is due."""
        with self._lock:
            self._awake = bool(self._items)
            return self._awake
