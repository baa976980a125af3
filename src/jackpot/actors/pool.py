"""PoolActor: the one owner of a jackpot level's state in this process.

The actor serializes every mutation of its level, keeps the last committed
state in memory (in the level's `LevelGuard`) and persists through its own
database connection. It never waits on another actor; while the coordinator
writes several levels in one transaction it holds their guards, and the
actor's next batch waits for that one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pykka

from jackpot.actors._guard import LevelGuard
from jackpot.actors._mailbox import Mailbox
from jackpot.actors._start import mark_actor_thread, note_built, start_failed, stop_and_close
from jackpot.errors import ConcurrencyViolationError, JackpotError, LockTimeoutError, StorageError
from jackpot.service import Operation, Outcome, count_lock_timeouts, execute_batch
from jackpot.settings import Settings
from jackpot.stats import Stats, after_the_fact
from jackpot.storage import SQLiteStore

__all__ = ["DRAIN", "PoolActor", "cache_suspect"]

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


class PoolActor(pykka.ThreadingActor):
    """Owns one level: its state, its mutations, its connection."""

    use_daemon_thread = True  # a program that never closes the engine still exits

    def __init__(
        self,
        guard: LevelGuard,
        open_store: Callable[[], SQLiteStore],
        settings: Settings,
        stats: Stats,
        mailbox: Mailbox,
    ) -> None:
        """Prepare the actor; the connection is opened in the actor's thread."""
        super().__init__()
        note_built(self)
        self.name = guard.name
        self._mailbox = mailbox
        self._open_store = open_store
        self._settings = settings
        self._stats = stats
        self._guard = guard
        # Opened by on_start; made here, for on_start may add no attribute (see `proxy_of`).
        self._store: SQLiteStore | None = None
        # Longest the coordinator may keep the guard: its own lock wait plus
        # every retry. Past it this actor's batch fails, having changed nothing.
        retries = settings.max_retry_attempts + 1
        self._guard_limit = (settings.lock_timeout_ms * (retries + 1)
                             + settings.retry_delay_ms * 2**retries * 2) / 1000

    def on_start(self) -> None:
        """Open this actor's connection and load the level (unless its guard knows it)."""
        mark_actor_thread(self._stats)
        try:
            self._store = store = self._open_store()
        except Exception as e:  # noqa: BLE001 - told by `start_failed`, not raised to Pykka
            start_failed(self, e)
            return
        except BaseException as e:  # (KeyboardInterrupt...): stopped, then on up
            start_failed(self, e)
            raise
        try:
            if self._guard.lock.acquire(timeout=self._guard_limit):
                try:
                    if self._guard.state is None:
                        self._guard.state = store.load_level(self.name)
                finally:
                    self._guard.lock.release()
        except Exception as e:  # noqa: BLE001 - told by `start_failed`, not raised to Pykka
            try:
                store.close()  # Pykka calls no on_stop after a failed on_start
            finally:
                start_failed(self, e)
        except BaseException as e:  # (KeyboardInterrupt...): stopped, then on up
            try:
                store.close()
            finally:
                start_failed(self, e)
            raise

    def on_stop(self) -> None:
        """Close this actor's connection."""
        if self._store is not None:
            self._store.close()

    def on_failure(self, *_exc_info: object) -> None:
        """Close the connection: Pykka calls no `on_stop` after an error out of `on_receive`."""
        self.on_stop()

    def close_and_stop(self) -> None:
        """Stop, closing the connection: close()'s request (see `stop_and_close`)."""
        stop_and_close(self)

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
        live = self._mailbox.claim_batch(lambda: self.actor_ref.tell(DRAIN), self.actor_ref)
        if not live:
            return
        if not self._guard.lock.acquire(timeout=self._guard_limit):
            # Reported, not part of the outcome: a raising log filter must not
            # crash the actor with these requests taken and never answered.
            after_the_fact(logger.error,
                           "level %s stayed held by a multi-level operation past %.1f s",
                           self.name, self._guard_limit,
                           extra={"level": self.name, "outcome": "hold_expired"})
            msg = (f"level {self.name!r} stayed held by a multi-level operation for "
                   f"{self._guard_limit:.1f} s; nothing was changed")
            count_lock_timeouts(self._stats, [op for _, op in live])
            for ticket, _ in live:
                ticket.settle(None, LockTimeoutError(msg))
            return
        def top_up() -> list[Operation]:
            more = self._mailbox.claim_more(lambda op: set(op.names) <= {self.name},
                                            self._mailbox.max_batch - len(live),
                                            self.actor_ref)
            live.extend(more)
            return [op for _, op in more]

        try:
            outcomes = self._run([op for _, op in live], top_up)
        except Exception as e:  # noqa: BLE001 - every waiting caller must hear of it
            for ticket, _ in live:
                ticket.settle(None, e)
            return
        finally:
            self._guard.lock.release()
        for (ticket, _), outcome in zip(live, outcomes, strict=True):
            ticket.settle(outcome.result, outcome.error)

    def _run(self, ops: list[Operation], top_up: Callable[[], list[Operation]]
             ) -> list[Outcome]:
        """Run a batch in one transaction (holding the guard); adopt the committed state."""
        guard, store = self._guard, self._store
        assert store is not None  # (on_start opened it before any message)
        cached = None if guard.state is None else {self.name: guard.state}
        try:
            outcomes, states = execute_batch(store, ops, cached,
                                             settings=self._settings, stats=self._stats,
                                             top_up=top_up)
        except Exception:
            guard.state = None  # unknown after an unexpected failure: reload next time
            raise
        if self.name in states:
            guard.state = states[self.name]
        elif any(cache_suspect(o.error) for o in outcomes):
            guard.state = None  # the cache may be stale: read the level afresh next time
        return outcomes
