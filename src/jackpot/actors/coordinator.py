"""Coordinator: applies operations that span several levels atomically.

It holds the involved pool actors one by one in canonical (sorted) order, so
two gatherers can never wait on each other in a cycle, writes every level in
one transaction through its own connection, then hands each actor its
committed state and releases it. On any failure nothing was committed and the
actors keep the state they had: in memory and on disk, all levels or none.

Requests that arrive while a batch commits wait in the coordinator's mailbox
and share the next transaction (group commit): the coordinator holds the
union of their levels, still in sorted order.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import pykka

from jackpot.actors._mailbox import Mailbox
from jackpot.actors.pool import DRAIN, HoldToken, PoolActor, cache_suspect
from jackpot.errors import JackpotError, LockTimeoutError
from jackpot.service import Operation, execute_batch
from jackpot.settings import Settings
from jackpot.stats import Stats
from jackpot.storage import SQLiteStore

__all__ = ["ActorUnavailableError", "Coordinator"]

logger = logging.getLogger("jackpot")


class ActorUnavailableError(JackpotError):
    """A level's actor stopped before a multi-level operation began: nothing changed."""


_LIVENESS_POLL = 0.25  # seconds between checks that a level's actor still lives


class Coordinator(pykka.ThreadingActor):
    """Runs multi-level operations; the only actor that waits on others."""

    def __init__(
        self,
        open_store: Callable[[], SQLiteStore],
        pools: dict[str, pykka.ActorProxy[PoolActor]],
        settings: Settings,
        stats: Stats,
        mailbox: Mailbox,
    ) -> None:
        """Prepare the coordinator for the given pool actors."""
        super().__init__()
        self._open_store = open_store
        self._pools = pools
        self._settings = settings
        self._stats = stats
        self._mailbox = mailbox

    def on_start(self) -> None:
        """Open the coordinator's own connection."""
        self._store: SQLiteStore = self._open_store()

    def on_stop(self) -> None:
        """Close the coordinator's connection."""
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
        try:
            outcomes = self._run(ops)
        except Exception as e:  # noqa: BLE001 - every waiting caller must hear of it
            for ticket, _ in live:
                ticket.settle(None, e)
            return
        for (ticket, _), (result, error) in zip(live, outcomes, strict=True):
            ticket.settle(result, error)

    def _run(self, ops: list[Operation]) -> list[tuple[Any, BaseException | None]]:
        """Hold every level the batch touches, then run it in one transaction."""
        names = tuple(sorted({n for op in ops for n in op.names}))
        label = ",".join(sorted({op.kind for op in ops}))
        tokens = self._gather_with_retries(names, ops[0].op_id, label)
        try:
            cached = {name: t.state for name, t in zip(names, tokens, strict=True)}
            known = {n: s for n, s in cached.items() if s is not None}
            outcomes, states = execute_batch(self._store, ops, known or None,
                                             settings=self._settings, stats=self._stats)
            stale = any(cache_suspect(o.error) for o in outcomes)
            for name, token in zip(names, tokens, strict=True):
                token.new_state = states.get(name)
                token.invalidate = stale
            return [(o.result, o.error) for o in outcomes]
        except BaseException:
            for token in tokens:
                token.invalidate = True
            raise
        finally:
            for token in tokens:
                token.released.set()

    def _gather_with_retries(self, names: tuple[str, ...], op_id: str, label: str
                             ) -> list[HoldToken]:
        attempt = 0
        levels = ",".join(names)
        while True:
            started = time.perf_counter()
            tokens = self._gather(names, op_id, label)
            self._stats.lock_wait("coordinator", label, time.perf_counter() - started)
            if tokens is not None:
                return tokens
            self._stats.add("busy_incidents", label, levels)
            if attempt >= self._settings.max_retry_attempts:
                self._stats.add("lock_timeouts", label, levels)
                msg = (f"{label} {op_id!r}: could not hold levels {', '.join(names)} "
                       f"within {self._settings.lock_timeout_ms} ms after {attempt} "
                       "retries; nothing was changed")
                raise LockTimeoutError(msg)
            delay = self._settings.retry_delay_ms / 1000 * 2**attempt
            time.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311 - jitter
            attempt += 1
            self._stats.add("retries", label, levels)

    def _gather(self, names: tuple[str, ...], op_id: str, label: str
                ) -> list[HoldToken] | None:
        """Hold `names`, requested in sorted order; None (all released) on timeout.

        The hold requests go out together (pipelined) and are awaited in the
        same canonical order. Pool actors never wait on each other and this
        coordinator is the only actor that waits on several, so no cycle of
        waits can form; a timeout releases everything and the caller retries.
        """
        deadline = time.monotonic() + self._settings.lock_timeout_ms / 1000
        tokens: list[HoldToken] = []
        for name in names:  # sorted: the canonical order
            token = HoldToken(op_id)
            tokens.append(token)
            self._pools[name].hold(token)
        for name, token in zip(names, tokens, strict=True):
            if not self._await_grant(name, token, deadline):
                for t in tokens:
                    t.released.set()
                msg = f"the actor of level {name!r} is not running"
                raise ActorUnavailableError(msg)
            if not token.granted.is_set():
                logger.warning("could not hold level %s in time; releasing all and retrying",
                               name, extra={"op_id": op_id, "operation": label,
                                            "level": name, "outcome": "lock_timeout"})
                for t in tokens:
                    t.released.set()
                return None
        return tokens

    def _await_grant(self, name: str, token: HoldToken, deadline: float) -> bool:
        """Wait for `token` until the deadline; False if the level's actor died."""
        while not token.granted.wait(min(_LIVENESS_POLL,
                                         max(0.0, deadline - time.monotonic()))):
            if not self._pools[name].actor_ref.is_alive():
                return False
            if time.monotonic() >= deadline:
                break
        return True
