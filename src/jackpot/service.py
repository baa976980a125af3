"""Transaction scripts: run a batch of operations against a store, each exactly once.

`execute_batch` is the only place that decides how a write is retried. It
runs each operation's pure `apply` inside one `BEGIN IMMEDIATE` transaction
together with the idempotency check, the version-checked level updates, the
ledger rows and the idempotency record, so all of them commit or none does.

Retry policy (why it differs slightly from a textbook optimistic loop): a
version mismatch means our cached state was stale (another process wrote the
level). The retry re-reads the rows *inside* the next write transaction, while
holding the database write lock, so the row cannot move again; sleeping before
that first retry would only hold up every other writer. Later retries (which
mean something is writing without taking the lock) and retries after a busy
incident back off exponentially with jitter.

A cache another process made stale is found before anything is applied,
and the moved level is re-read in the same transaction: a reload, counted as
such, not a conflict (nothing was lost, no retry is spent). On SQLite, the
store tells which levels' versions it has seen committed since another
connection last committed (`data_version`, `Store.seen_versions`); the other
cached levels' versions are compared as soon as the write lock is held. On
PostgreSQL, which has no database-wide write lock to say that, every write
locks its levels' rows as it begins and reads them fresh
(`Store.lock_levels`). Without this, writers of several processes (or hosts)
would find their cache stale on nearly every turn, apply the batch for
nothing, roll back and queue again. A conflict is then what the version
checks still catch: the safety net.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol

from jackpot._frozen import builder
from jackpot._json import sorted_encoder
from jackpot._plural import counted
from jackpot.domain import Entry, LevelState
from jackpot.errors import (
    ConcurrencyViolationError,
    IdempotencyConflictError,
    JackpotError,
    LockTimeoutError,
    StorageError,
)
from jackpot.settings import Settings
from jackpot.stats import Stats, after_the_fact
from jackpot.storage import (
    BusyIncidentError,
    ConnectionUnavailableError,
    SerializationFailureError,
    SQLiteStore,
    StoredOperation,
)

__all__ = ["Operation", "Outcome", "Result", "count_lock_timeouts", "execute_batch", "fingerprint",
           "now_ms"]

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


_canonical = sorted_encoder(separators=(",", ":"))


def fingerprint(request: dict[str, Any]) -> str:
    """Return a stable digest of a normalised request (for idempotency)."""
    blob = _canonical(request)
    return hashlib.sha256(blob.encode()).hexdigest()


def _backoff(settings: Settings, attempt: int) -> float:
    base: float = settings.retry_delay_ms / 1000 * 2**attempt
    return base * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not secrets


@dataclass(slots=True)
class Outcome:
    """What became of one operation of a batch: a result or an error."""

    result: Any = None
    error: BaseException | None = None


def execute_batch(
    store: SQLiteStore,
    ops: list[Operation],
    cached: Mapping[str, LevelState] | None,
    *,
    settings: Settings,
    stats: Stats,
    top_up: Callable[[], list[Operation]] | None = None,
) -> tuple[list[Outcome], dict[str, LevelState]]:
    """Run `ops` in order in one transaction (group commit); one outcome per op.

    Each op still gets its own versions, ledger rows, idempotency record and
    result, and none is final before the commit. An op refused by its rules
    (bad state, insufficient funds, idempotency conflict...) fails alone: it
    has written nothing when it fails. If the shared transaction itself fails
    (an I/O error, say), every op is retried alone, so none fails that would
    have succeeded by itself; if its outcome is unknown (it may have
    committed), only the ops with the caller's op_id are retried (a committed
    one replays), the others fail with that unknown outcome. When no
    connection could be had at all (`ConnectionUnavailableError`), every op
    fails with it at once: nothing ran. Returns the
    committed state of every level the batch changed or read afresh. `cached`
    are the caller's last known states (None: read fresh).

    `top_up`, called once the first attempt holds the write lock, returns
    requests that queued meanwhile (on levels of this batch only): they are
    appended to `ops` in place and share the transaction, so the outcomes
    follow the extended `ops`. Writers that take turns (several processes)
    may wait a while for the lock; what queued in that time need not wait
    for a turn of its own.
    """
    try:
        return _with_retries(store, ops, cached, settings=settings, stats=stats,
                             top_up=top_up)
    except (ConcurrencyViolationError, LockTimeoutError) as e:
        if isinstance(e, LockTimeoutError):
            count_lock_timeouts(stats, ops)
        return [Outcome(error=e) for _ in ops], {}
    except StorageError as e:
        if len(ops) == 1 or isinstance(e, ConnectionUnavailableError):
            # No connection: nothing ran, and alone each op would wait for one again.
            return [Outcome(error=e) for _ in ops], {}
        unknown = e if e.outcome_unknown else None
    # The shared transaction failed: give each op its own chance.
    outcomes: list[Outcome] = []
    changed: dict[str, LevelState] = {}
    for op in ops:
        if unknown is not None and not op.explicit:
            # The shared transaction may have committed (PostgreSQL: a COMMIT
            # whose answer was lost), and an op without the caller's op_id
            # cannot find its own record: run again, it would apply twice.
            outcomes.append(Outcome(error=unknown))
            continue
        one, states = execute_batch(store, [op], None, settings=settings, stats=stats)
        if unknown is not None and one[0].error is not None:
            # Until a later commit reuses its place in the WAL, the failed one
            # may still reach the file (see SQLiteStore): say so, not "refused".
            one = [Outcome(error=unknown)]
        outcomes.extend(one)
        changed.update(states)
    return outcomes, changed


def count_lock_timeouts(stats: Stats, ops: list[Operation]) -> None:
    """Count a batch's operations that gave up waiting for a lock: one each, under its kind.

    As their `timeout` outcomes are counted: a batch of several kinds adds to
    each kind its own operations (the operation label is always one kind).
    Reported after the fact: a raising observer must not replace the timeout.
    """
    levels = ",".join(sorted({n for op in ops for n in op.names}))
    for kind, n in sorted(Counter(op.kind for op in ops).items()):
        after_the_fact(stats.add, "lock_timeouts", kind, levels, n)


def _with_retries(
    store: SQLiteStore,
    ops: list[Operation],
    cached: Mapping[str, LevelState] | None,
    *,
    settings: Settings,
    stats: Stats,
    top_up: Callable[[], list[Operation]] | None,
) -> tuple[list[Outcome], dict[str, LevelState]]:
    budget = _Retries(ops, settings, stats)
    fresh = cached is None
    while True:
        once, top_up = top_up, None  # only the first attempt: a retry keeps its batch
        try:
            outcomes, states = _attempt(store, ops, None if fresh else cached, stats,
                                        top_up=once)
        except _ConflictError as c:
            budget.conflict(c.level, c.expected)
            if budget.attempt > 0:
                time.sleep(_backoff(settings, budget.attempt - 1))
        except BusyIncidentError as e:
            budget.busy(e)
            time.sleep(_backoff(settings, budget.attempt))
        else:
            for op, outcome in zip(ops, outcomes, strict=True):
                if outcome.error is None and getattr(outcome.result, "replayed", False):
                    # Committed already: a failing observer must not fail the batch.
                    after_the_fact(stats.add, "replays", op.kind, ",".join(op.names), about=op)
            return outcomes, states
        budget.retried()
        fresh = True


class _Retries:
    """One batch's retries: counts conflicts, busy incidents and retries; raises when spent."""

    def __init__(self, ops: list[Operation], settings: Settings, stats: Stats) -> None:
        self.attempt = 0
        self._ops = ops  # extended in place by a top-up: labels are read when needed
        self._op_id = ops[0].op_id
        self._settings = settings
        self._stats = stats

    @property
    def _kinds(self) -> str:
        return ",".join(sorted({op.kind for op in self._ops}))

    @property
    def _levels(self) -> str:
        return ",".join(sorted({n for op in self._ops for n in op.names}))

    def conflict(self, level: str, expected: int) -> None:
        """Count a version conflict; raise if no retry is left for it."""
        self._stats.add("conflicts", self._kinds, level)
        # Reports (as the counts): a raising log filter must not fail the batch.
        after_the_fact(logger.info, "version conflict on %s (expected version %d)", level,
                       expected, extra={"op_id": self._op_id, "operation": self._kinds,
                                        "level": level, "attempt": self.attempt,
                                        "outcome": "conflict"})
        if self.attempt >= self._settings.max_retry_attempts:
            msg = (f"{self._kinds} {self._op_id!r}: level {level!r} moved past version "
                   f"{expected} and {counted(self.attempt, 'retry', 'retries')} did not settle it; "
                   "nothing changed")
            details = {"level": level, "expected_version": expected,
                       "attempts": self.attempt + 1}
            raise ConcurrencyViolationError(
                msg, operation=self._kinds, group=level, conflict_details=details) from None

    def busy(self, e: BusyIncidentError) -> None:
        """Count a busy incident; raise if no retry is left for it."""
        self._stats.add("busy_incidents", self._kinds, self._levels)
        after_the_fact(logger.warning, "database busy without waiting: %s", e,
                       extra={"op_id": self._op_id, "operation": self._kinds,
                              "level": self._levels, "attempt": self.attempt,
                              "outcome": "busy"})
        if self.attempt >= self._settings.max_retry_attempts:
            raise _busy_exhausted(e, self._kinds, self._levels, self._op_id,
                                  self.attempt) from e

    def retried(self) -> None:
        """Count one retry."""
        self.attempt += 1
        self._stats.add("retries", self._kinds, self._levels)


def _busy_exhausted(e: BusyIncidentError, kinds: str, levels: str, op_id: str, attempt: int
                    ) -> JackpotError:
    """Return the error once busy retries run out; a lost race is a concurrency violation."""
    if isinstance(e, SerializationFailureError):  # PostgreSQL: deadlock, 40001, twin op_id
        msg = (f"{kinds} {op_id!r}: lost to concurrent transactions {counted(attempt + 1, 'time')} "
               f"({e}); nothing changed")
        return ConcurrencyViolationError(msg, operation=kinds, group=levels,
                                         conflict_details={"attempts": attempt + 1})
    msg = f"{kinds} {op_id!r}: database stayed busy after {counted(attempt, 'retry', 'retries')}"
    return StorageError(msg)


def _attempt(
    store: SQLiteStore,
    ops: list[Operation],
    cached: Mapping[str, LevelState] | None,
    stats: Stats,
    *,
    top_up: Callable[[], list[Operation]] | None,
) -> tuple[list[Outcome], dict[str, LevelState]]:
    with _writing(store, stats, ops[0].kind):
        if top_up is not None:
            ops.extend(top_up())
        names = sorted({n for op in ops for n in op.names})
        # Pessimistic ops (wins, config) read their rows fresh under the lock;
        # others trust the cache, and the version-checked UPDATE below proves it.
        pessimistic = {n for op in ops if op.pessimistic for n in op.names}
        trusted = set() if cached is None else {n for n in names
                                                if n not in pessimistic and n in cached}
        states = _states(store, ops, names, cached=cached, trusted=trusted, stats=stats)
        # op_ids are looked up once the levels are locked (PostgreSQL: their
        # rows): a twin that another host committed while this one waited for
        # them is replayed, not judged by the state it left and refused.
        batch = _Batch(store, [op.op_id for op in ops if op.explicit])
        seen = store.seen_versions  # after BEGIN: emptied if others committed
        if seen is not None:
            if trusted:
                _recheck(store, ops, states, trusted=trusted, known=batch.known, stats=stats,
                         seen=seen)
            seen.update((n, s.version) for n, s in states.items() if n not in trusted)
        start = {n: s.version for n, s in states.items()}
        outcomes = [batch.apply(op, states) for op in ops]
        changed = {n: s for n, s in states.items() if s.version != start[n]}
        for name, state in changed.items():
            if not store.update_level(state, expected_version=start[name]):
                raise _ConflictError(name, start[name])
        # A decision taken on a cached level that the batch then left unchanged
        # (a refusal, a bet below min_bet, a level groups=None skipped) wrote no
        # version-checked row: check its version too, or a level another
        # process resumed or reconfigured would be judged by its old state.
        # (A replay reads no level: it needs no check.)
        for name in sorted((trusted & batch.consulted) - changed.keys()):
            if store.level_version(name) != start[name]:  # a plain read: no row lock
                raise _ConflictError(name, start[name])
        batch.flush()  # after the version check: a stale cache is a conflict, not a clash
        for name in pessimistic - changed.keys():
            store.claim_lock(name, None)  # refused ops release their claim unchanged
    if seen is not None:  # committed
        seen.update((n, s.version) for n, s in changed.items())
    # What the caller may cache: the levels written, and those read fresh under
    # the write lock (a stale cache that a conflict reloaded is replaced even
    # when the retry changed nothing, or every later batch would conflict).
    return outcomes, {n: s for n, s in states.items() if n in changed or n not in trusted}


@contextmanager
def _writing(store: SQLiteStore, stats: Stats, kind: str) -> Iterator[None]:
    """Run the block in `store.write()`; record how long it waited for the write lock.

    A wait that ends in a timeout is recorded too, as long as it lasted: those
    are the longest, and a lock-wait panel that left them out would look
    quiet while every writer gives up.
    """
    started = time.monotonic()
    held = False
    try:
        with store.write():
            held = True
            stats.lock_wait("database", kind, store.lock_wait_seconds)
            yield
    except LockTimeoutError:
        if not held:
            stats.lock_wait("database", kind, time.monotonic() - started)
        raise


def _recheck(store: SQLiteStore, ops: list[Operation], states: dict[str, LevelState], *,
             trusted: set[str], known: Mapping[str, StoredOperation], stats: Stats,
             seen: dict[str, int]) -> None:
    """Compare the trusted levels with the stored rows; re-read those that moved.

    A cached level this connection has not `seen` at its version since
    another connection last committed may be stale (another writer, or a
    cache filled through another connection): find out now, under the write
    lock and before anything is applied, rather than at the UPDATE. Each level
    found current is `seen`. A level that moved is re-read here and counted as a
    reload, not as a conflict: no work was lost and no retry is spent (writers
    of several processes that take turns find their cache stale on nearly every
    turn; that is no contention worth an alert). A replay reads no level: the
    levels only replays name need no check.
    """
    needed = sorted(n for n in trusted & {n for op in ops
                                          if not (op.explicit and op.op_id in known)
                                          for n in op.names}
                    if seen.get(n) != states[n].version)
    if not needed:
        return
    stored = store.level_versions(needed)
    for name in needed:
        if stored.get(name) == states[name].version:
            seen[name] = states[name].version
        else:
            _reloaded(ops, name, states[name].version, stored.get(name), stats)
            states[name] = _load(store, name)
            trusted.discard(name)


def _states(store: SQLiteStore, ops: list[Operation], names: list[str], *,
            cached: Mapping[str, LevelState] | None, trusted: set[str], stats: Stats,
            ) -> dict[str, LevelState]:
    """Return the batch's levels: the trusted from the cache, the others read under the lock.

    A backend that locks the rows instead (`Store.lock_levels`: PostgreSQL)
    reads them all, before anything is decided; a trusted cached level found
    moved is a reload, and none stays trusted (`trusted` is emptied).
    """
    locked = store.lock_levels(names)
    if locked is None:
        return {n: cached[n] if cached is not None and n in trusted else _load(store, n)
                for n in names}
    states: dict[str, LevelState] = {}
    for name in names:
        if (state := locked.get(name)) is None:
            msg = f"level {name!r} vanished from the database"
            raise StorageError(msg)
        if cached is not None and name in trusted and cached[name].version != state.version:
            _reloaded(ops, name, cached[name].version, state.version, stats)
        states[name] = state
    trusted.clear()
    return states


def _reloaded(ops: list[Operation], name: str, cached: int, stored: int | None,
              stats: Stats) -> None:
    """Log and count a cached level found moved as the write began (not a conflict)."""
    kinds = ",".join(sorted({op.kind for op in ops}))
    after_the_fact(logger.debug,
                   "level %s changed elsewhere (cached version %d, stored %s): re-read",
                   name, cached, stored, extra={"op_id": ops[0].op_id, "operation": kinds,
                                                "level": name, "outcome": "reload"})
    stats.add("reloads", kinds, name)


_STORED = builder(StoredOperation)


class _Batch:
    """The writes of one transaction, gathered so each kind is one statement."""

    def __init__(self, store: SQLiteStore, op_ids: list[str]) -> None:
        self.store = store
        # First results of op_ids: those already stored, then those of this batch.
        self.known = store.find_operations(op_ids) if op_ids else {}
        self.entries: list[tuple[str, Entry]] = []
        self.records: list[StoredOperation] = []
        self.consulted: set[str] = set()
        """Levels whose state an op's rules read (all but replays and op_id clashes)."""
        self.at_ms = now_ms()

    def apply(self, op: Operation, states: dict[str, LevelState]) -> Outcome:
        """Apply one op; update `states` and queue its rows if it succeeds."""
        try:
            if op.explicit and (stored := self.known.get(op.op_id)) is not None:
                if stored.kind != op.kind or stored.fingerprint != op.fingerprint:
                    this = op.kind if stored.kind != op.kind else f"{op.kind} with other arguments"
                    msg = (f"op_id {op.op_id!r} was already used for a different "
                           f"{stored.kind} request (this one: {this}); use a new op_id for a "
                           "new request")
                    raise IdempotencyConflictError(msg)
                return Outcome(_rebuild(op, stored))
            self.consulted.update(op.names)
            if op.pessimistic:
                for name in op.names:
                    self.store.claim_lock(name, op.op_id)
            try:
                new_states, entries, result = op.apply({n: states[n] for n in op.names},
                                                       self.at_ms)
            except JackpotError:
                raise
            except Exception as e:  # noqa: BLE001 - a broken pure rule fails its op, not its batch
                return Outcome(error=e)
        except JackpotError as e:
            return Outcome(error=e)  # refused before writing anything
        # A bet that qualifies for no level has no ledger rows, but its op_id
        # is still recorded: a retry must replay it, not apply it later.
        self.entries.extend((op.op_id, e) for e in entries)
        if op.explicit:
            record = _STORED(op.op_id, op.kind, op.fingerprint, result.to_record())
            record.__class__ = StoredOperation  # (see `jackpot._frozen`)
            self.records.append(record)
            self.known[op.op_id] = record
        for n, s in new_states.items():
            states[n] = s if s.lock_holder is None else replace(s, lock_holder=None)
        return Outcome(result)

    def flush(self) -> None:
        """Write the gathered ledger rows and idempotency records."""
        if self.entries:
            self.store.append_entries(self.entries)
        if self.records:
            self.store.record_operations(self.records, self.at_ms)


def _rebuild(op: Operation, stored: StoredOperation) -> Any:
    """Return the first result of `op` from its stored form (what a replay returns).

    A record the engine cannot read (tampered, or not written by it) fails
    this replay alone, with a `StorageError`, not every op sharing its batch.
    """
    if stored.result is None:
        msg = (f"op_id {op.op_id!r}: its stored first result is not the JSON object the "
               "engine writes; nothing was changed: run verify()")
        raise StorageError(msg)
    try:
        return op.rebuild(stored.result)
    except Exception as e:
        msg = (f"op_id {op.op_id!r}: its stored first result cannot be read "
               f"({type(e).__name__}: {e}); nothing was changed: run verify()")
        raise StorageError(msg) from e


def _load(store: SQLiteStore, name: str) -> LevelState:
    state = store.load_level(name)
    if state is None:
        msg = f"level {name!r} vanished from the database"
        raise StorageError(msg)
    return state
