"""Coordinator: applies operations that span several levels atomically.

It takes the guards (`LevelGuard`) of the involved levels one by one in
canonical (sorted) order, so no cycle of waits can form, writes every level
in one transaction through its own connection, then leaves each level's
committed state in its guard and releases it. Meanwhile the levels' pool
actors wait before their next batch. On any failure nothing was committed
and the guards keep the state they had: in memory and on disk, all levels or
none.

Requests that arrive while a batch commits wait in the coordinator's mailbox
and share the next transaction (group commit): the coordinator takes the
union of their levels, still in sorted order. Those that arrive while a batch
waits for the database's write lock join it once it holds the lock, if their
levels are among those it holds.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import pykka

from jackpot._plural import counted
from jackpot.actors._guard import LevelGuard
from jackpot.actors._mailbox import Mailbox
from jackpot.actors._start import mark_actor_thread, note_built, start_failed, stop_and_close
from jackpot.actors.pool import DRAIN, cache_suspect
from jackpot.errors import LockTimeoutError
from jackpot.service import Operation, count_lock_timeouts, execute_batch
from jackpot.settings import Settings
from jackpot.stats import Stats, after_the_fact
from jackpot.storage import SQLiteStore

__all__ = ["Coordinator"]

logger = logging.getLogger("jackpot")


class Coordinator(pykka.ThreadingActor):
    """Runs multi-level operations; the only actor that waits on others."""

    use_daemon_thread = True  # a program that never closes the engine still exits

    def __init__(
        self,
        open_store: Callable[[], SQLiteStore],
        guards: dict[str, LevelGuard],
        settings: Settings,
        stats: Stats,
        mailbox: Mailbox,
    ) -> None:
        """Prepare the coordinator for the levels of `guards`."""
        super().__init__()
        note_built(self)
        self._open_store = open_store
        self._guards = guards
        self._settings = settings
        self._stats = stats
        self._mailbox = mailbox
        # Opened by on_start; made here, for on_start may add no attribute (see `proxy_of`).
        self._store: SQLiteStore | None = None

    def on_start(self) -> None:
        """Open the coordinator's own connection."""
        mark_actor_thread(self._stats)
        try:
            self._store = self._open_store()
        except Exception as e:  # noqa: BLE001 - told by `start_failed`, not raised to Pykka
            start_failed(self, e)
        except BaseException as e:  # (KeyboardInterrupt...): stopped, then on up
            start_failed(self, e)
            raise

    def on_stop(self) -> None:
        """Close the coordinator's connection."""
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
        ops = [op for _, op in live]
        held = frozenset(n for op in ops for n in op.names)

        def top_up() -> list[Operation]:
            # Requests on the levels already held join (their order kept):
            # the guards were taken for these, in the canonical order.
            more = self._mailbox.claim_more(lambda op: held.issuperset(op.names),
                                            self._mailbox.max_batch - len(live),
                                            self.actor_ref)
            live.extend(more)
            return [op for _, op in more]

        try:
            outcomes = self._run(ops, top_up)
        except Exception as e:  # noqa: BLE001 - every waiting caller must hear of it
            for ticket, _ in live:
                ticket.settle(None, e)
            return
        for (ticket, _), (result, error) in zip(live, outcomes, strict=True):
            ticket.settle(result, error)

    def _run(self, ops: list[Operation], top_up: Callable[[], list[Operation]]
             ) -> list[tuple[Any, BaseException | None]]:
        """Take the guard of every level the batch touches, then run it in one transaction."""
        store = self._store
        assert store is not None  # (on_start opened it before any message)
        names = tuple(sorted({n for op in ops for n in op.names}))
        label = ",".join(sorted({op.kind for op in ops}))
        # The error is shared by the batch: it names an op_id only when it is the one.
        what = f"{label} {ops[0].op_id!r}" if len(ops) == 1 else f"{label} (a batch of {len(ops)})"
        guards, waited = self._gather_with_retries(
            names, ops, label, what)
        try:  # entered right after the guards are held: nothing may come between
            self._stats.lock_wait("coordinator", label, waited)
            known = {g.name: g.state for g in guards if g.state is not None}
            outcomes, states = execute_batch(store, ops, known or None,
                                             settings=self._settings, stats=self._stats,
                                             top_up=top_up)
            stale = any(cache_suspect(o.error) for o in outcomes)
            for guard in guards:
                if guard.name in states:
                    guard.state = states[guard.name]
                elif stale:
                    guard.state = None
            return [(o.result, o.error) for o in outcomes]
        except BaseException:
            for guard in guards:
                guard.state = None  # unknown after an unexpected failure: reload next time
            raise
        finally:
            for guard in guards:
                guard.lock.release()

    def _gather_with_retries(self, names: tuple[str, ...], ops: list[Operation], label: str,
                             what: str) -> tuple[list[LevelGuard], float]:
        """Hold the guards of `names` for the batch `ops`, retrying on timeouts.

        Returns (guards, seconds waited) with the guards held and nothing else
        done: the caller must release them in its own `finally`.
        """
        attempt = 0
        levels = ",".join(names)
        op_id = ops[0].op_id if len(ops) == 1 else None  # the batch's only one, or none
        while True:
            started = time.perf_counter()
            guards = self._gather(names)
            waited = time.perf_counter() - started
            if guards is not None:
                return guards, waited
            # A report: a raising log filter must not replace the outcome (a retry or
            # the LockTimeoutError below).
            after_the_fact(logger.warning, "%s: could not hold levels %s in time; released all",
                           what, levels, extra={"op_id": op_id, "operation": label,
                                                "level": levels, "outcome": "lock_timeout"})
            self._stats.lock_wait("coordinator", label, waited)
            self._stats.add("busy_incidents", label, levels)
            if attempt >= self._settings.max_retry_attempts:
                count_lock_timeouts(self._stats, ops)  # one per operation, as the outcomes
                msg = (f"{what}: could not hold levels {', '.join(names)} "
                       f"within {self._settings.lock_timeout_ms} ms after "
                       f"{counted(attempt, 'retry', 'retries')}; nothing was changed")
                raise LockTimeoutError(msg)
            delay = self._settings.retry_delay_ms / 1000 * 2**attempt
            time.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311 - jitter
            attempt += 1
            self._stats.add("retries", label, levels)

    def _gather(self, names: tuple[str, ...]) -> list[LevelGuard] | None:
        """Take the guards of `names` in sorted order; None (all released) on timeout.

        Pool actors only ever take their own guard and this coordinator is
        the only one to take several, always in the canonical order, so no
        cycle of waits can form; a timeout releases everything and the caller
        retries.
        """
        deadline = time.monotonic() + self._settings.lock_timeout_ms / 1000
        taken: list[LevelGuard] = []
        for name in names:  # sorted: the canonical order
            guard = self._guards[name]
            if not guard.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                for held in taken:
                    held.lock.release()
                return None
            taken.append(guard)
        return taken
