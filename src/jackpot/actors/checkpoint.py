"""Checkpointer: copies the SQLite write-ahead log into the database file in the background.

SQLite's automatic checkpoint runs in the thread that commits, right after
its commit: every ~1,000 WAL pages one unlucky batch also copied them all
into the database file and synced it, while every request queued behind that
actor waited. Here the engine's writers have the automatic checkpoint off and
report the WAL's size after each commit (`note`); once it has grown by
`EVERY_PAGES` since the last request, this actor runs a PASSIVE checkpoint
on its own connection, in its own thread (APSW releases the GIL meanwhile),
while the writers go on committing: it copies the pages and never blocks a
writer or reader. For the WAL to start over from its beginning, a writer
must begin while every page is copied; every `CATCH_UP_PAGES` a writer
checkpoints the little that is left itself, after its commit (see
`SQLiteStore`), so the WAL stays bounded (~32 MB) and the writers pay for
about an eighth of the copying they did before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pykka

from jackpot.actors._start import (
    mark_actor_thread,
    note_built,
    start_actor,
    start_failed,
    stop_and_close,
    wait_ready,
    wait_stopped,
)
from jackpot.errors import JackpotError
from jackpot.stats import after_the_fact
from jackpot.storage import SQLiteStore

__all__ = ["EVERY_PAGES", "Checkpointer"]

logger = logging.getLogger("jackpot")

EVERY_PAGES = 1000
"""WAL growth (pages) between two background checkpoints: SQLite's own default."""


class _CheckpointActor(pykka.ThreadingActor):
    """Owns the checkpoint connection; runs one checkpoint per request."""

    use_daemon_thread = True  # a program that never closes the engine still exits

    def __init__(self, open_store: Callable[[], SQLiteStore], done: Callable[[str], None],
                 owner: object) -> None:
        super().__init__()
        note_built(self)
        self._open_store = open_store
        self._done = done
        self._owner = owner
        # Opened by on_start; made here, for on_start may add no attribute (see `proxy_of`).
        self._store: SQLiteStore | None = None

    def on_start(self) -> None:
        mark_actor_thread(self._owner)
        try:
            self._store = self._open_store()
        except Exception as e:  # noqa: BLE001 - told by `start_failed`, not raised to Pykka
            start_failed(self, e)
        except BaseException as e:  # (KeyboardInterrupt...): stopped, then on up
            start_failed(self, e)
            raise

    def on_stop(self) -> None:
        if self._store is not None:
            self._store.close()
        self._done(self.actor_urn)  # a request still queued will never run: let the next one in

    def on_failure(self, *_exc_info: object) -> None:
        self._done(self.actor_urn)

    def close_and_stop(self) -> None:
        """Stop, closing the connection: close()'s request (see `stop_and_close`)."""
        stop_and_close(self)

    def ready(self) -> bool:
        """Answer once `on_start` has run (the connection is open)."""
        return True

    def checkpoint(self, *, requested: bool = False) -> tuple[int, int]:
        """Run one PASSIVE checkpoint; a failure is logged (the next one retries).

        `requested`: the one `Checkpointer.note` asked for, whose end lets the
        next one be asked for. Another (a `flush`) ending first must not: the
        requested one may still be queued behind it.
        """
        assert self._store is not None  # (on_start opened it before any message)
        try:
            return self._store.checkpoint()
        except JackpotError as e:
            # A report: a raising log filter must not turn a skipped checkpoint
            # into an error for whoever waits for it (`flush`).
            after_the_fact(logger.warning, "background WAL checkpoint failed: %s", e,
                           extra={"outcome": "checkpoint_failed"})
            return 0, 0
        finally:
            if requested:
                self._done(self.actor_urn)


class Checkpointer:
    """Decides when the WAL needs a checkpoint and has the actor run it."""

    def __init__(self, open_store: Callable[[], SQLiteStore], owner: object = None,
                 replaced: Callable[[BaseException | None], None] | None = None) -> None:
        """Start the checkpoint actor (its connection opens in its own thread).

        `owner` marks its thread (see `mark_actor_thread`). `replaced` hears
        of each replacement `note` starts for an actor that stopped by itself:
        None, or the error that kept it from starting.
        """
        self._owner = owner
        self._replaced = replaced
        # Reentrant: Pykka's start, under it, logs; a log handler may do anything.
        self._lock = threading.RLock()
        self._stopped = False  # asked to stop (close()): `note` starts no replacement
        # The urn of the actor asked for the checkpoint now due, or None. Only
        # that actor clears it: Pykka counts an actor stopped before its
        # on_stop runs, so a replaced one may end late, while its replacement
        # runs the next request.
        self._busy: str | None = None
        self._next = EVERY_PAGES
        self.runs = 0
        self._open_store = open_store
        self._actor = start_actor(_CheckpointActor, open_store, self._finished, owner)

    def alive(self) -> bool:
        """Say whether the checkpoint actor runs."""
        return self._actor.actor_ref.is_alive()

    def restart(self) -> bool:
        """Start a new checkpoint actor if the old one stopped (or was stopped); say if it did.

        Seen stopped under the lock: a writer's commit may have replaced it
        (`note`) since the caller saw it stopped, and a second replacement
        would leave that one running, never stopped by close().
        """
        with self._lock:
            self._stopped = False
            if self.alive():
                return False
            self._replace()
            return True

    def _replace(self) -> None:
        """Start a new checkpoint actor in place of the stopped one (under the lock).

        Under the lock, so that no replacement starts after `stop_soon` took
        the actor to stop.
        """
        self._busy = None  # the stopped actor runs no request it may still hold
        self._actor = start_actor(_CheckpointActor, self._open_store, self._finished,
                                  self._owner)

    def note(self, pages: int) -> None:
        """Hear a writer's WAL size after its commit (called in the writer's thread).

        An actor that stopped by itself (its thread ended, or its replacement
        could not start) is replaced when a checkpoint is due, so at most once
        every `EVERY_PAGES`: it was replaced only when a level's actor was,
        and the writers did all the copying meanwhile, after their commits.
        """
        revived, failed, ask = False, None, False
        with self._lock:
            if pages < self._next - EVERY_PAGES:  # the WAL was restarted from its start
                self._next = EVERY_PAGES
            if pages < self._next or self._stopped:
                return
            if not self.alive():
                revived = True
                self._next = pages + EVERY_PAGES  # (the next attempt, should this one fail)
                try:
                    self._replace()
                except Exception as e:  # noqa: BLE001 - told below; tried again when due
                    failed = e
            actor = self._actor
            if failed is None and self._busy is None:
                ask = True
                self._busy = actor.actor_ref.actor_urn
                self._next = pages + EVERY_PAGES
                self.runs += 1
        if revived and self._replaced is not None:
            self._replaced(failed)
        if ask:
            # A tell in effect: nobody waits for the answer. Should the actor stop
            # before running it, its on_stop (or on_failure) clears `_busy`; one
            # whose start fails is replaced when the next checkpoint is due.
            actor.checkpoint(requested=True)

    def _finished(self, urn: str) -> None:
        with self._lock:
            if self._busy == urn:
                self._busy = None

    def flush(self, timeout: float) -> tuple[int, int]:
        """Run a checkpoint now and wait for it: (pages in the WAL, pages copied)."""
        result: tuple[int, int] = self._actor.checkpoint().get(timeout=timeout)
        return result

    def ready(self, timeout: float) -> None:
        """Return once the actor's connection is open (raises its error if it failed)."""
        wait_ready(self._actor, timeout)

    def stop(self, timeout: float) -> None:
        """Stop the actor after the checkpoint it may be running; one stopped already is left.

        Raises:
            pykka.Timeout: it had not stopped within `timeout` (it stops after its checkpoint).

        """
        ref, stopped = self.stop_soon()
        if not wait_stopped(ref, stopped, time.monotonic() + timeout):
            # Named as close() names it (an urn gives an operator nothing to act on).
            msg = (f"checkpointer did not stop within {timeout:.1f} s: it is still running "
                   "a request, and stops when that ends")
            raise pykka.Timeout(msg)

    def stop_soon(self) -> tuple[pykka.ActorRef[Any], pykka.Future[None]]:
        """Ask the actor to stop after the checkpoint it may be running (see `wait_stopped`).

        No replacement starts after it, unless `restart` is called.
        """
        with self._lock:
            self._stopped = True
            actor = self._actor
        return actor.actor_ref, actor.close_and_stop()
