"""Transaction scripts: run one operation against a store, exactly once.

`execute` is the only place that decides how a write is retried. It runs the
operation's pure `apply` inside one `BEGIN IMMEDIATE` transaction together
with the idempotency check, the version-checked level updates, the ledger rows
and the idempotency record, so all of them commit or none does.

Retry policy (why it differs slightly from a textbook optimistic loop): a
version mismatch means our cached state was stale (another process wrote the
level). The retry re-reads the rows *inside* the next write transaction, while
holding the database write lock, so the row cannot move again; sleeping before
that first retry would only hold up every other writer. Later retries (which
mean something is writing without taking the lock) and retries after a busy
incident back off exponentially with jitter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from jackpot.domain import Entry, LevelState
from jackpot.errors import ConcurrencyViolationError, IdempotencyConflictError, StorageError
from jackpot.settings import Settings
from jackpot.stats import Stats
from jackpot.storage import BusyIncidentError, SQLiteStore

__all__ = ["Operation", "Result", "execute", "fingerprint", "now_ms"]

logger = logging.getLogger("jackpot")


class Result(Protocol):
    """What every operation result can do: be stored and rebuilt."""

    def to_record(self) -> dict[str, Any]: ...  # noqa: D102


Apply = Callable[[Mapping[str, LevelState], int], tuple[dict[str, LevelState], list[Entry], Any]]


@dataclass(frozen=True, slots=True)
class Operation:
    """One write: its identity, the levels it touches and its pure rule."""

    kind: str
    op_id: str
    explicit: bool
    fingerprint: str
    names: tuple[str, ...]
    apply: Apply
    rebuild: Callable[[dict[str, Any]], Any]
    pessimistic: bool = False


class _ConflictError(Exception):
    def __init__(self, level: str, expected: int) -> None:
        super().__init__(level, expected)
        self.level = level
        self.expected = expected


def now_ms() -> int:
    """Return the wall-clock time in milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def fingerprint(request: dict[str, Any]) -> str:
    """Return a stable digest of a normalised request (for idempotency)."""
    blob = json.dumps(request, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _backoff(settings: Settings, attempt: int) -> float:
    base: float = settings.retry_delay_ms / 1000 * 2**attempt
    return base * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not secrets


def execute(
    store: SQLiteStore,
    op: Operation,
    cached: Mapping[str, LevelState] | None,
    *,
    settings: Settings,
    stats: Stats,
) -> tuple[Any, dict[str, LevelState]]:
    """Run `op` once; return (result, committed states), or the replayed result.

    `cached` are the caller's last known states; None means read them fresh.
    A replay returns no states. Raises the operation's own errors unchanged,
    `ConcurrencyViolationError` when retries run out, `LockTimeoutError` when
    the write lock is not had in time.
    """
    attempt = 0
    fresh = cached is None or op.pessimistic
    while True:
        try:
            result, states = _attempt(store, op, None if fresh else cached, stats)
        except _ConflictError as c:
            stats.add("conflicts", op.kind, c.level)
            logger.info("version conflict on %s (expected version %d)", c.level, c.expected,
                        extra={"op_id": op.op_id, "operation": op.kind, "level": c.level,
                               "attempt": attempt, "outcome": "conflict"})
            details = {"level": c.level, "expected_version": c.expected, "attempts": attempt + 1}
            if attempt >= settings.max_retry_attempts:
                msg = (f"{op.kind} {op.op_id!r}: level {c.level!r} moved past version "
                       f"{c.expected} and {attempt} retries did not settle it; nothing changed")
                raise ConcurrencyViolationError(
                    msg, operation=op.kind, group=c.level, conflict_details=details) from None
            if attempt > 0:
                time.sleep(_backoff(settings, attempt - 1))
        except BusyIncidentError as e:
            stats.add("busy_incidents", op.kind, ",".join(op.names))
            logger.warning("database busy without waiting: %s", e,
                           extra={"op_id": op.op_id, "operation": op.kind,
                                  "level": ",".join(op.names), "attempt": attempt,
                                  "outcome": "busy"})
            if attempt >= settings.max_retry_attempts:
                msg = f"{op.kind} {op.op_id!r}: database stayed busy after {attempt} retries"
                raise StorageError(msg) from e
            time.sleep(_backoff(settings, attempt))
        else:
            if not states:
                stats.add("replays", op.kind, ",".join(op.names))
            return result, states
        attempt += 1
        fresh = True
        stats.add("retries", op.kind, ",".join(op.names))


def _attempt(
    store: SQLiteStore, op: Operation, cached: Mapping[str, LevelState] | None, stats: Stats
) -> tuple[Any, dict[str, LevelState]]:
    with store.write():
        stats.lock_wait("database", op.kind, store.lock_wait_seconds)
        if op.explicit and (stored := store.find_operation(op.op_id)) is not None:
            if stored.kind != op.kind or stored.fingerprint != op.fingerprint:
                msg = (f"op_id {op.op_id!r} was already used for a different "
                       f"{stored.kind} request; use a new op_id for a new request")
                raise IdempotencyConflictError(msg)
            return op.rebuild(stored.result), {}
        states = _load_fresh(store, op) if cached is None else dict(cached)
        new_states, entries, result = op.apply(states, now_ms())
        if op.pessimistic:  # the lock is released with this commit
            new_states = {n: replace(s, lock_holder=None) for n, s in new_states.items()}
        for name, state in new_states.items():
            if not store.update_level(state, expected_version=states[name].version):
                raise _ConflictError(name, states[name].version)
        if not entries:  # e.g. a bet below every level's min_bet: nothing to record
            return result, new_states
        store.append(op.op_id, entries)
        if op.explicit:
            store.record_operation(op.op_id, op.kind, op.fingerprint, result.to_record(),
                                   entries[0].at_ms)
    return result, new_states


def _load_fresh(store: SQLiteStore, op: Operation) -> dict[str, LevelState]:
    """Read the levels inside the write transaction (claiming them if pessimistic)."""
    if op.pessimistic:
        for name in op.names:
            store.claim_lock(name, op.op_id)
    states = {}
    for name in op.names:
        state = store.load_level(name)
        if state is None:
            msg = f"level {name!r} vanished from the database"
            raise StorageError(msg)
        states[name] = state
    return states
