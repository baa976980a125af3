"""Coordinator: applies operations that span several levels atomically.

It holds the involved pool actors one by one in canonical (sorted) order, so
two gatherers can never wait on each other in a cycle, writes every level in
one transaction through its own connection, then hands each actor its
committed state and releases it. On any failure nothing was committed and the
actors keep the state they had: in memory and on disk, all levels or none.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import pykka

from jackpot.actors._ticket import Ticket
from jackpot.actors.pool import HoldToken, PoolActor
from jackpot.errors import JackpotError, LockTimeoutError
from jackpot.service import Operation, execute
from jackpot.settings import Settings
from jackpot.stats import Stats
from jackpot.storage import SQLiteStore

__all__ = ["ActorUnavailableError", "Coordinator"]

logger = logging.getLogger("jackpot")


class ActorUnavailableError(JackpotError):
    """A level's actor stopped before a multi-level operation began: nothing changed."""


class Coordinator(pykka.ThreadingActor):
    """Runs multi-level operations; the only actor that waits on others."""

    def __init__(
        self,
        open_store: Any,
        pools: dict[str, pykka.ActorProxy[PoolActor]],
        settings: Settings,
        stats: Stats,
    ) -> None:
        """Prepare the coordinator for the given pool actors."""
        super().__init__()
        self._open_store = open_store
        self._pools = pools
        self._settings = settings
        self._stats = stats

    def on_start(self) -> None:
        """Open the coordinator's own connection."""
        self._store: SQLiteStore = self._open_store()

    def on_stop(self) -> None:
        """Close the coordinator's connection."""
        self._store.close()

    def submit(self, ticket: Ticket, op: Operation) -> Any:
        """Run a multi-level operation; report through the future and the ticket."""
        try:
            result = self._run(ticket, op)
        except BaseException as e:
            ticket.done(None, e)
            raise
        ticket.done(result, None)
        return result

    def _run(self, ticket: Ticket, op: Operation) -> Any:
        """Run a multi-level operation with every involved level held."""
        if not ticket.claim():
            msg = f"{op.kind} {op.op_id!r} timed out waiting for the coordinator"
            raise LockTimeoutError(msg)
        attempt = 0
        while True:
            started = time.perf_counter()
            tokens = self._gather(op)
            self._stats.lock_wait("coordinator", op.kind, time.perf_counter() - started)
            if tokens is not None:
                break
            self._stats.add("busy_incidents", op.kind, ",".join(op.names))
            if attempt >= self._settings.max_retry_attempts:
                msg = (f"{op.kind} {op.op_id!r}: could not hold levels "
                       f"{', '.join(op.names)} within {self._settings.lock_timeout_ms} ms "
                       f"after {attempt} retries; nothing was changed")
                self._stats.add("lock_timeouts", op.kind, ",".join(op.names))
                raise LockTimeoutError(msg)
            delay = self._settings.retry_delay_ms / 1000 * 2**attempt
            time.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311 - jitter
            attempt += 1
            self._stats.add("retries", op.kind, ",".join(op.names))
        try:
            cached = {name: t.state for name, t in zip(op.names, tokens, strict=True)}
            if any(s is None for s in cached.values()):
                result, states = execute(self._store, op, None, settings=self._settings,
                                         stats=self._stats)
            else:
                result, states = execute(self._store, op, cached,  # type: ignore[arg-type]
                                         settings=self._settings, stats=self._stats)
            for name, token in zip(op.names, tokens, strict=True):
                token.new_state = states.get(name)
            return result
        finally:
            for token in tokens:
                token.released.set()

    def _gather(self, op: Operation) -> list[HoldToken] | None:
        """Hold every level of `op` in sorted order; None (all released) on timeout."""
        deadline = time.monotonic() + self._settings.lock_timeout_ms / 1000
        tokens: list[HoldToken] = []
        for name in op.names:  # op.names is sorted: the canonical order
            token = HoldToken(op.op_id)
            tokens.append(token)
            try:
                self._pools[name].hold(token)
            except pykka.ActorDeadError as e:
                for t in tokens:
                    t.released.set()
                msg = f"the actor of level {name!r} is not running"
                raise ActorUnavailableError(msg) from e
            if not token.granted.wait(max(0.0, deadline - time.monotonic())):
                logger.warning("could not hold level %s in time; releasing all and retrying",
                               name, extra={"op_id": op.op_id, "operation": op.kind,
                                            "level": name, "outcome": "lock_timeout"})
                for t in tokens:
                    t.released.set()
                return None
        return tokens
