"""PoolActor: the one owner of a jackpot level's state in this process.

The actor serializes every mutation of its level, keeps the last committed
state in memory and persists through its own database connection. It never
waits on another actor; a coordinator may *hold* it (see `hold`) while writing
several levels in one transaction.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pykka

from jackpot.actors._mailbox import Mailbox
from jackpot.domain import LevelState
from jackpot.errors import ConcurrencyViolationError, JackpotError, StorageError
from jackpot.service import execute_batch
from jackpot.settings import Settings
from jackpot.stats import Stats
from jackpot.storage import SQLiteStore

__all__ = ["DRAIN", "HoldToken", "PoolActor", "cache_suspect"]

DRAIN = "drain"
"""The message that wakes an actor to serve its mailbox."""

logger = logging.getLogger("jackpot")


def cache_suspect(error: BaseException | None) -> bool:
    """Say whether an operation's error means the cached level may be stale.

    A version conflict that retries could not settle, a storage failure or an
    unexpected error: the next operation must read the level afresh.
    """
    if error is None:
        return False
    return (isinstance(error, (StorageError, ConcurrencyViolationError))
            or not isinstance(error, JackpotError))


class HoldToken:
    """A coordinator's claim on a pool actor for one multi-level write."""

    __slots__ = ("granted", "invalidate", "new_state", "op_id", "released", "state")

    def __init__(self, op_id: str) -> None:
        """Create an ungranted hold for operation `op_id`."""
        self.op_id = op_id
        self.granted = threading.Event()
        self.released = threading.Event()
        self.state: LevelState | None = None
        self.new_state: LevelState | None = None
        self.invalidate = False  # the coordinator learnt the lent state may be stale


class PoolActor(pykka.ThreadingActor):
    """Owns one level: its state, its mutations, its connection."""

    def __init__(
        self,
        name: str,
        open_store: Callable[[], SQLiteStore],
        settings: Settings,
        stats: Stats,
        mailbox: Mailbox,
    ) -> None:
        """Prepare the actor; the connection is opened in the actor's thread."""
        super().__init__()
        self.name = name
        self._mailbox = mailbox
        self._open_store = open_store
        self._settings = settings
        self._stats = stats
        self._state: LevelState | None = None
        self._holder: str | None = None
        # Longest a coordinator may keep this actor held: its own lock wait
        # plus every retry. Past it the actor carries on; the version check
        # catches any write it then misses.
        retries = settings.max_retry_attempts + 1
        self._hold_limit = (settings.lock_timeout_ms * (retries + 1)
                            + settings.retry_delay_ms * 2**retries * 2) / 1000

    def on_start(self) -> None:
        """Open this actor's connection and load the level."""
        self._store = self._open_store()
        self._state = self._store.load_level(self.name)

    def on_stop(self) -> None:
        """Close this actor's connection."""
        self._store.close()

    def ready(self) -> bool:
        """Answer once `on_start` has run (the connection is open)."""
        return True

    def on_receive(self, message: Any) -> Any:
        """Serve a batch from the mailbox when woken by `DRAIN`."""
        if message is DRAIN:
            self._drain()
            return None
        return super().on_receive(message)

    def _drain(self) -> None:
        live = self._mailbox.claim_batch(lambda: self.actor_ref.tell(DRAIN))
        if not live:
            return
        ops = [op for _, op in live]
        self._holder = ops[0].op_id if ops[0].pessimistic else None
        cached = None if self._state is None else {self.name: self._state}
        try:
            outcomes, states = execute_batch(self._store, ops, cached,
                                             settings=self._settings, stats=self._stats)
        except Exception as e:  # noqa: BLE001 - every waiting caller must hear of it
            self._state = None  # unknown after an unexpected failure: reload next time
            for ticket, _ in live:
                ticket.settle(None, e)
            return
        finally:
            self._holder = None
        if self.name in states:
            self._state = states[self.name]
        elif any(cache_suspect(o.error) for o in outcomes):
            self._state = None  # the cache may be stale: read the level afresh next time
        for (ticket, _), outcome in zip(live, outcomes, strict=True):
            ticket.settle(outcome.result, outcome.error)

    def hold(self, token: HoldToken) -> None:
        """Lend the level to a coordinator until it releases the token.

        The actor processes nothing else meanwhile, which is what makes the
        coordinator's multi-level write atomic with respect to this level's
        own operations. It adopts the coordinator's committed state, if any.
        """
        if token.released.is_set():  # the coordinator gave up before we got here
            return
        # An unknown state (None) is lent as is: the coordinator then reads the
        # level fresh inside its own transaction, where a failure is reported.
        self._holder = token.op_id
        token.state = self._state
        token.granted.set()
        try:
            if not token.released.wait(self._hold_limit):
                logger.error("coordinator held level %s past %.1f s; carrying on",
                             self.name, self._hold_limit,
                             extra={"op_id": token.op_id, "level": self.name,
                                    "outcome": "hold_expired"})
            elif token.new_state is not None:
                self._state = token.new_state
            elif token.invalidate:
                self._state = None
        finally:
            self._holder = None

    def snapshot(self) -> tuple[LevelState | None, str | None]:
        """Return the cached state and the current lock holder."""
        return self._state, self._holder
