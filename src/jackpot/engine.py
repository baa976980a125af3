"""JackpotEngine: the facade that wires settings, storage and actors.

Every public method validates its arguments first (pure, before anything is
queued), then sends the operation to the actor that owns the level (or to the
coordinator when it spans several) and waits, with a timeout, for the result.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self, SupportsIndex, Unpack

from jackpot import domain, reads, tracing
from jackpot._closing import close_engine, probe_closed, probe_opening, stop_everything
from jackpot._lifecycle import Actors, Stopping, log_late, lost, opened, prepare_process
from jackpot._restarts import checkpointer_replaced, restart_dead_actors
from jackpot.actors import (
    DRAIN,
    ActorDeadError,
    ActorProxy,
    ActorTimeoutError,
    Checkpointer,
    Coordinator,
    LevelGuard,
    Mailbox,
    PoolActor,
    Ticket,
    start_actor,
    wait_ready,
)
from jackpot.audit import audit
from jackpot.domain import ConfigChanges, GroupConfig
from jackpot.errors import (
    ConcurrencyViolationError,
    EngineClosedError,
    GroupRetiredError,
    GroupSuspendedError,
    IdempotencyConflictError,
    InsufficientFundsError,
    JackpotError,
    LockTimeoutError,
    StorageError,
    UnknownGroupError,
    ValidationError,
    exact_int,
    shown,
)
from jackpot.health import HealthReport, assess, redact, tracked
from jackpot.logs import (
    log_failure,
    log_refusal,
    log_success,
    log_unfollowed,
    log_withdrawn,
)
from jackpot.metrics import PrometheusObserver
from jackpot.requests import Requests, draw
from jackpot.results import (
    AdminResult,
    ConfigResult,
    Contribution,
    HistoryEntry,
    PoolSnapshot,
    VerifyReport,
    Win,
)
from jackpot.service import Operation, now_ms
from jackpot.settings import Settings
from jackpot.stats import Stats, after_the_fact, count_once, raised_by_signal_handler
from jackpot.storage import SQLiteStore, Store, is_database_url, open_store

__all__ = ["JackpotEngine", "check_path"]

logger = logging.getLogger("jackpot")

_MAX_HISTORY = 10_000
_LIVENESS_POLL = 0.25  # seconds between checks that a slow request's actor lives
_CALLER, _REPORTER = "caller", "reporter"  # who counts an interrupted call (`_submit`)


class _WeakView:
    """What the metrics collector reads from an engine, without keeping it alive.

    The actors reach the collector through `Stats`; a strong reference there
    would keep a dropped engine alive for as long as its actors run.
    """

    def __init__(self, engine: JackpotEngine) -> None:
        self._engine = weakref.ref(engine)

    def _get(self) -> JackpotEngine:
        engine = self._engine()
        if engine is None:
            msg = "the engine was dropped without close()"
            raise EngineClosedError(msg)
        return engine

    @property
    def closed(self) -> bool:
        engine = self._engine()
        return engine is None or engine._closed  # noqa: SLF001 - the engine's own view

    def pools(self) -> dict[str, PoolSnapshot]:
        return self._get().pools()

    def health(self) -> HealthReport:
        return self._get().health()


class _InFlight:
    """`JackpotEngine._tracking`: a call counted in flight while the block runs.

    Not a generator context manager: its entry returns through the builtin
    `next()`, after which CPython runs a pending signal's handler, and Ctrl-C
    there went up with the call counted and nobody holding it to end it.
    """

    __slots__ = ("_engine",)

    def __init__(self, engine: JackpotEngine) -> None:
        self._engine = engine

    def __enter__(self) -> None:
        self._engine._enter()  # noqa: SLF001 - the engine's own count

    def __exit__(self, *exc: object) -> None:
        self._engine._leave()  # noqa: SLF001


def answer_outcome(result: object, error: BaseException | None) -> str:
    """Return what to count for an operation answered with `result`, or failed with `error`."""
    if error is not None:
        return outcome_of(error)
    return "replayed" if getattr(result, "replayed", False) else "ok"


def tell_outcome(op: Operation, result: object, error: BaseException | None) -> str:
    """Log `op`'s outcome as its caller got it (`result`, or `error`); return what to count."""
    outcome = answer_outcome(result, error)
    if error is not None:
        after_the_fact(log_failure, op, outcome, error, about=op)
    else:
        after_the_fact(log_success, op, outcome, result, about=op)
    return outcome


def stopped_midway(op: Operation, *, closed: bool) -> EngineClosedError:
    """Return the error for an operation whose actor stopped after taking it (outcome unknown)."""
    msg = (f"the actor serving {', '.join(op.names)} stopped while running {op.kind} "
           f"{op.op_id!r}; it may have been applied: retry with the same op_id"
           f"{' on a new engine (this one is closed)' if closed else ''} to learn its outcome")
    return EngineClosedError(msg, outcome_unknown=True)


def not_restarted_message(op: Operation) -> str:
    """Say that `op`'s actor stopped, its replacement could not start, and nothing changed."""
    return (f"the actor serving {', '.join(op.names)} stopped and could not be restarted "
            f"(its error is logged); {op.kind} {op.op_id!r} changed nothing: retry with "
            "the same op_id")


NOT_PICKLED = (
    "cannot pickle an engine ({}): its actors and connections run in this process; open an "
    "engine in each worker process, after it starts, and send it op_ids and amounts")
"""Why an engine cannot go to another process (a pool's argument): pickle said only
"cannot pickle '_thread.lock' object"."""


def _interrupts_caller(error: Exception, queued: list[Ticket]) -> bool:
    """Say whether `error` is the caller's interrupt, not the operation's error.

    A signal handler's exception (a request deadline on SIGALRM) lands where
    the caller waits; the request was queued and goes on, as after Ctrl-C.
    Counted as the operation's error it was logged "failed (error)", even
    when applied, and a paid win never logged as paid. The engine's own
    errors are JackpotErrors; an actor's unexpected one is its ticket's answer.

    Before the request is queued, the engine's own code runs (a trace span,
    the mailbox): its unexpected error is the operation's, one a signal's
    handler raised (`raised_by_signal_handler`) the caller's interrupt, to
    be withdrawn as after Ctrl-C. Taken for the operation's, it was logged
    "failed (error)" and counted an error (health's error rate) though
    nothing had run; raised as the mailbox had it but before it was marked
    queued, never withdrawn, it was applied all the same.
    """
    if isinstance(error, JackpotError):
        return False
    if not queued or not queued[-1].queued:
        return raised_by_signal_handler(error)
    ticket = queued[-1]
    return not ticket.wait(0) or ticket.answer[1] is not error


def _taken(lock: threading.Lock, timeout: float, held: list[bool]) -> bool:
    """Acquire `lock` within `timeout`; say whether it was taken, as `held` does too.

    `held` gets the answer from C code, as the lock is taken: bound by
    `got = lock.acquire(...)`, a signal's exception (Ctrl-C, a request
    deadline's TimeoutError) raised as acquire returned, before any `try`
    could see it taken, left it held for good (Python runs a signal's
    handler between bytecodes, first as a call of C code returns). A
    list's extend() takes it from acquire with no bytecode between them;
    the caller's `try` encloses this call and releases what `held` says.
    """
    held.extend(itertools.starmap(lock.acquire, [(True, timeout)]))
    return held[0]


class JackpotEngine:
    """A running jackpot engine over one database. Safe to share between threads.

    Open it with `JackpotEngine.open()`; close it with `close()` (or a `with` block).

    Attributes:
        stats: the engine's counters (`Stats`: `stats.snapshot()`), and its
            `observers` list, where an object with the methods of `Observer`
            receives every event as it happens.

    """

    def __init__(self, path: str, settings: Settings, names: Iterable[str]) -> None:
        """Start actors for `names`; use `JackpotEngine.open` instead."""
        prepare_process()  # before anything starts: nothing to undo if it fails
        self._path = path
        self._settings = settings
        self.stats = Stats()
        self._init_lifecycle()
        self._reader = _store(path, settings)
        self._reader_lock = threading.Lock()
        self._reader_close_pending = False
        self._verify_lock = threading.Lock()  # one audit at a time (see `verify`)
        self._checkpointer: Checkpointer | None = None
        self._restart_lock = threading.Lock()
        self._requests = Requests(names)
        # One mailbox per level, and one (key None) for the coordinator.
        self._mailboxes: dict[str | None, Mailbox] = {n: Mailbox() for n in self._requests.names}
        self._mailboxes[None] = Mailbox()
        self._guards = {n: LevelGuard(n) for n in self._requests.names}
        retries = settings.max_retry_attempts + 1
        self._queue_timeout = settings.lock_timeout_ms / 1000
        self._run_timeout = (settings.lock_timeout_ms * (retries + 2)
                             + settings.retry_delay_ms * 2**retries * 2) / 1000
        self._actors = Actors()
        self._pools = self._actors.pools
        try:
            self._observe(settings)  # (inside: what it imports can fail, too)
            if not is_database_url(path):
                # SQLite: WAL checkpoints run in their own thread, not after a commit.
                self._checkpointer = Checkpointer(
                    lambda: _sqlite(path, settings), self.stats,
                    functools.partial(checkpointer_replaced, self.stats))
            # How an actor opens its writing connection (its commits report to
            # the checkpointer). Not a bound method: actors must not keep the
            # engine alive, or a lost engine could never be collected.
            self._open_store: Callable[[], Store] = functools.partial(
                _store, path, settings,
                None if self._checkpointer is None else self._checkpointer.note,
                cache_mb=settings.page_cache_mb)
            for name in self._requests.names:
                self._pools[name] = self._start_pool(name)
            self._actors.coordinator = self._start_coordinator()
            # Actors open their connections in their own threads: wait for
            # that, so open() returns a fully started engine (or its error).
            for pool in self._pools.values():
                wait_ready(pool, self._run_timeout)
            wait_ready(self._coordinator, self._run_timeout)
            if self._checkpointer is not None:
                self._checkpointer.ready(self._run_timeout)
        except BaseException as e:
            log_late(stop_everything(self)[0])  # no actor thread may outlive a failed open()
            if isinstance(e, ActorDeadError):  # its on_start failed (logged: `start_failed`)
                msg = f"the engine's actors could not start (their error is logged): {e}"
                raise StorageError(msg) from e
            if isinstance(e, ActorTimeoutError):
                msg = (f"the engine's actors did not open their connections within "
                       f"{self._run_timeout:.1f} s")
                raise StorageError(msg) from e
            if isinstance(e, OSError):  # out of file descriptors, say
                msg = f"the engine could not start: {type(e).__name__}: {e}"
                raise StorageError(msg) from e
            raise
        opened(self)
        # Run if the program drops the engine without closing it (never at exit:
        # the exit hook closes what is still open, waiting for in-flight batches).
        self._lost = weakref.finalize(self, lost, os.getpid(), redact(path), self._actors,
                                      self._checkpointer, self._reader)
        self._lost.atexit = False

    def _init_lifecycle(self) -> None:
        """Set up what close() and the in-flight count share."""
        self._closed = False  # new calls refused (set first by close())
        self._shut = False  # actors asked to stop, reader closed or left to its read (by close())
        self._stopping = False  # a close() is stopping the actors (guarded by _cond)
        # The actors a close() gave up on (or gave no time), not yet seen to stop:
        # a later close() waits for them (guarded by _lock_state).
        self._left_running: list[Stopping] = []
        self._inflight = 0
        # Interrupted calls whose reporting thread has not told their outcome
        # yet, by id of their `reporter` (guarded by _lock_state): a close()
        # that stops waiting names them, as an exit right after it ends those
        # (daemon) threads before they tell it.
        self._unreported: dict[int, Operation] = {}
        # What a close() told of the calls it left in flight (guarded by _lock_state):
        # whether their count was told, and the interrupted calls it named (by id,
        # held so that no id is reused). Concurrent and later closes left with the
        # same calls (none starts once the engine is closed) tell them no more.
        self._told_in_flight = False
        self._named: dict[int, Operation] = {}
        # health()'s probe connections opening or open (guarded by _lock_state):
        # close() waits for them, as for a verify() (see `_closing.probe_opening`).
        self._probes = 0
        # .n: sync calls in flight in this thread; .reading, .verifying, .probing; .closing
        # (a close() here stops the actors, or waits for those left running);
        # .restarting (it replaces stopped actors: `_restarts.restart_dead_actors`)
        self._own = threading.local()
        # Taken with `with self._lock_state`, never `with self._cond`: the C lock's
        # own __exit__ releases it, where Condition.__exit__ is Python, at whose
        # start CPython may run a pending signal's handler (Ctrl-C): its
        # KeyboardInterrupt would leave the lock held, and every later call
        # (and close()) waiting for it for ever.
        self._lock_state = threading.RLock()
        self._cond = threading.Condition(self._lock_state)
        self._pid = os.getpid()
        # Called while close() waits for calls in flight: the asyncio engine's
        # sweep of answers stranded on event loops that closed (weak: the
        # engine must not keep its wrapper alive).
        self._sweeps: list[weakref.WeakMethod[Callable[[], None]]] = []
        # How many asyncio calls the event loop running in the current thread
        # has in flight: only that loop can finish them, so a close() from
        # its thread (an observer or log handler) must not wait for them.
        self._loop_calls: list[weakref.WeakMethod[Callable[[], int]]] = []
        # The asyncio calls in flight whose callers are gone (cancelled, or
        # their loop closed): named, as `_unreported`, by a close() that stops
        # waiting for them.
        self._callers_gone: list[weakref.WeakMethod[Callable[[], list[Operation]]]] = []

    def _attach(self, sweep: Callable[[], None], loop_calls: Callable[[], int],
                callers_gone: Callable[[], list[Operation]]) -> None:
        """Hold an asyncio wrapper's sweep, loop-call count and callers gone, weakly.

        (See `_init_lifecycle`.)

        The references of wrappers since collected are dropped here: an
        engine wrapped anew for every request would otherwise keep two dead
        references per wrapper for as long as it runs.
        """
        with self._lock_state:
            self._sweeps[:] = [r for r in self._sweeps if r() is not None]
            self._loop_calls[:] = [r for r in self._loop_calls if r() is not None]
            self._callers_gone[:] = [r for r in self._callers_gone if r() is not None]
            self._sweeps.append(weakref.WeakMethod(sweep))
            self._loop_calls.append(weakref.WeakMethod(loop_calls))
            self._callers_gone.append(weakref.WeakMethod(callers_gone))

    def _observe(self, settings: Settings) -> None:
        """Attach metrics and tracing to `stats` (off: nothing on the hot path)."""
        self._metrics: PrometheusObserver | None = None
        self._trace: Callable[[Operation], AbstractContextManager[None]] = tracing.no_span
        if settings.enable_metrics:
            self._metrics = PrometheusObserver(_WeakView(self))
            self.stats.observers.append(self._metrics)
            if (tracer := tracing.observer()) is not None:
                self.stats.observers.append(tracer)
                self._trace = tracer.span

    # -- life cycle ----------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        groups: Iterable[GroupConfig] | None = None,
        *,
        settings: Settings | None = None,
        create: bool = True,
    ) -> Self:
        """Open (or create) the database at `path` and start the engine.

        Levels in `groups` that the file lacks are created; levels already in
        the file are kept as they are. A new file with no `groups` gets the
        default levels minor, major and mega. `path` may instead be a
        PostgreSQL URL (``postgresql://user@host:port/dbname``, needs the
        `postgres` extra): several engines, on several hosts, then share it.
        With `create=False` the database must already exist and hold a
        jackpot schema: a missing or empty one is refused, not created (an
        operator's tool should not make a new, empty jackpot database when
        a path is mistyped or the file was moved).

        Raises:
            ValidationError: bad settings (naming the JACKPOT_* variable), groups or path.
            StorageError: the file cannot be opened as a jackpot database
                (with `create=False`: also when it does not exist, is empty or
                holds no level).
            LockTimeoutError: creating or migrating the database (or its
                levels) waited longer than the lock timeout for another
                writer; nothing was changed.

        """
        check_path(path)
        if settings is not None and not isinstance(settings, Settings):
            msg = f"settings must be a jackpot.Settings (or None), not {type(settings).__name__}"
            raise ValidationError(msg)
        settings = settings if settings is not None else Settings.from_env()
        configs = _configs(path, groups)
        if not isinstance(create, bool):
            msg = f"create must be True or False, not {shown(create)}"
            raise ValidationError(msg)
        absolute = _absolute(str(path))
        _check_utf8(absolute)  # a relative path takes the working directory's name in
        # Once the arguments are known good; a refused open (no file, no
        # levels, actors that cannot start) puts the level back as it was.
        previous = logger.level
        level = settings.log_level
        if level is None and previous == logging.NOTSET:
            level = "info"  # the application set no level of its own
        if level is not None:
            logger.setLevel(level.upper())
        try:
            return cls._open(absolute, configs, settings, create=create)
        except BaseException:
            logger.setLevel(previous)
            raise

    @classmethod
    def _open(cls, path: str, configs: list[GroupConfig] | None, settings: Settings, *,
              create: bool) -> Self:
        """Create what the database lacks, then start the engine (`open` past its checks)."""
        # `groups=[]` creates no level, so it may not make a jackpot database of an
        # empty file either: it would be refused below, after writing the schema.
        store = _store(path, settings, create=create and configs != [])
        try:
            store.migrate()
            with store.write():
                existing = store.load_levels()
                if not existing and not create:
                    # The schema without a level: its first open stopped before
                    # creating them. As empty as a new file, so refused as one.
                    msg = (f"cannot open database {redact(path)!r}: it holds no levels "
                           "(with create=False none are created)")
                    raise StorageError(msg)
                wanted = configs if configs is not None or existing else list(domain.DEFAULT_GROUPS)
                kept = {c.name: c for c in wanted or [] if c.name in existing}
                for config in wanted or []:
                    if config.name not in existing:
                        state, entry = domain.create(config, now_ms(), draw)
                        store.insert_level(state)
                        store.append(f"create:{config.name}", [entry])
                        existing[config.name] = state
        finally:
            store.close()
        for name, config in kept.items():
            _warn_if_kept_differs(path, config, existing[name])
        if not existing:
            msg = (f"{redact(path)} holds no levels and groups names none: name at "
                   "least one level")
            raise ValidationError(msg)
        return cls(path, settings, existing)

    def close(self, timeout: float | SupportsIndex | None = None) -> None:
        """Let in-flight operations finish, stop every actor; later calls fail.

        Idempotent. `timeout` (seconds, or None) bounds the whole close: the
        wait for in-flight operations, then for the actors to stop and the
        reads to end (None: the engine's longest operation time for each).
        An actor still busy then is left to stop by itself (logged); a read
        still running (on the reader, or a `verify()` or `health()`'s probe
        on a connection of its own) closes its connection when it ends
        (logged too). Calls still in flight when the wait for them ends go on
        to their outcome (one WARNING says how many, once: closes at the same
        time or later, left with those calls, say nothing more); the actors
        stop after them. If that wait used up the whole `timeout`, the actors
        are asked to stop with no time left to wait: none is logged as late
        then, since none, idle or busy, was given any time.

        A close() after one that left actors or a read running (its timeout
        ran out, `timeout=0` say) finishes that close, within its own
        `timeout` (None: as the first one's): it waits for calls still in
        flight, then for those actors to stop and close their connections and
        for that read to end and close its connection, so that once it
        returns nothing of the engine holds the file open. What is still
        running when its time is up is logged as the first close() logs it.
        Until then, the exit hook counts the engine as open and finishes it
        too.
        A close() called while another one stops the actors waits for that
        one (within its own limit), then likewise for what it left.

        Called from a thread with calls of its own in flight (a log handler
        or stats observer running in a caller's thread, a signal handler that
        ran in the middle of a call or a read, or on an event loop that an
        `AsyncJackpotEngine` answers), it does not wait for those: they
        cannot end while it waits.

        Called from one of the engine's own threads (a log handler or stats
        observer running in an actor), it refuses new calls at once and
        leaves the rest to a thread of its own, since an actor cannot wait
        for itself to stop; likewise from a log handler on Pykka's lines
        while this thread replaces a stopped actor (the close waits for that
        restart, which its thread cannot end while it waits). In a forked
        child it only refuses new calls: the actors and connections are the
        parent's.

        Raises:
            ValidationError: `timeout` is not a number of seconds (or is NaN).

        """
        close_engine(self, timeout)

    @contextmanager
    def _reading(self) -> Iterator[Store]:
        """Hold the reader for one read; refused once the engine is closed.

        Checked under the reader's lock: a close() racing this read closes
        the reader only after it, never under it. Reads take turns on the
        one reader: a read waits at most the lock timeout for the one before
        it (`LockTimeoutError`), so one read the storage never answers does
        not hang every caller that reads after it.
        """
        self._check_process()  # before the lock: a fork may have copied it held
        held: list[bool] = []  # (whether the lock was taken: see `_taken`)
        try:
            if not _taken(self._reader_lock, self._settings.lock_timeout_ms / 1000, held):
                self._check_open()  # closed meanwhile: that is the whole story
                msg = (f"a read waited {self._settings.lock_timeout_ms} ms for the read "
                       "before it to end (the storage answers slowly, or not at all); "
                       "nothing was read")
                raise LockTimeoutError(msg)
            self._own.reading = True  # a close() in this thread must not wait for this read
            self._check_open()
            yield self._reader
        finally:  # also when refused: close() may have left the closing to it
            if held and held[0]:
                try:
                    self._own.reading = False
                    if self._reader_close_pending:  # close() gave up waiting for this read
                        self._reader.close()
                        self._reader_close_pending = False
                finally:
                    self._reader_lock.release()

    def __enter__(self) -> Self:
        """Return the engine; `close()` on exit."""
        return self

    def __reduce__(self) -> NoReturn:
        """Refuse to be pickled (sent to another process), saying what to do instead."""
        raise TypeError(NOT_PICKLED.format(type(self).__name__))

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Close the engine."""
        self.close()

    @property
    def settings(self) -> Settings:
        """The settings this engine runs with."""
        return self._settings

    @property
    def _coordinator(self) -> ActorProxy[Coordinator]:
        coordinator = self._actors.coordinator
        assert coordinator is not None  # started in __init__, or open() failed
        return coordinator

    @property
    def groups(self) -> tuple[str, ...]:
        """Names of the levels this engine serves, sorted."""
        return tuple(self._pools)

    # -- operations ------------------------------------------------------------

    def contribute(
        self,
        bet: Decimal | int | str | SupportsIndex,
        *,
        groups: Iterable[str] | str | None = None,
        op_id: str | None = None,
        player: str | None = None,
    ) -> Contribution:
        """Add one bet's share to every named level (all levels when None), atomically.

        Returns per level the amount added, the balance and version after.
        Replaying an op_id returns the first result with `replayed=True`.
        `player`, who placed the bet, is recorded as the winner of any
        must-hit-by hit the bet triggers (in `hits`, the ledger and history).
        """
        result: Contribution = self._submit(self._build(
            "contribute", op_id, groups, self._requests.contribute, bet, groups=groups, op_id=op_id,
            player=player))
        return result

    def process_win(
        self,
        group: str,
        *,
        op_id: str | None = None,
        amount: Decimal | int | str | SupportsIndex | None = None,
        winner: str | None = None,
        expected_version: SupportsIndex | None = None,
        expected_amount: Decimal | int | str | SupportsIndex | None = None,
    ) -> Win:
        """Pay a level: the whole pool (then reset to seed), or a fixed `amount`.

        Wins are pessimistic: the level's row is locked and read fresh first.
        Simultaneous wins are served strictly one after the other. Without
        `expected_version` / `expected_amount`, a later win pays what the pool
        holds at its turn; with either, it is refused with
        `ConcurrencyViolationError` if the pool moved on.

        Raises:
            InsufficientFundsError: `amount` exceeds the pool, or the pool is empty.
            GroupSuspendedError, GroupRetiredError: the level refuses wins.

        """
        result: Win = self._submit(self._build(
            "win", op_id, group, self._requests.win, group, op_id=op_id, amount=amount,
            winner=winner, expected_version=expected_version, expected_amount=expected_amount))
        return result

    def update_config(
        self,
        group: str,
        *,
        op_id: str | None = None,
        expected_version: SupportsIndex | None = None,
        who: str | None = None,
        reason: str | None = None,
        **changes: Unpack[ConfigChanges],
    ) -> ConfigResult:
        """Change a level's settings, atomically and audited (who, why, before, after).

        `changes` are any of seed, contribution_rate, cap, reserve_rate,
        min_bet, max_contribution, must_hit_by and overflow_to (None clears
        an optional one). seed and must_hit_by wait for the level's next
        reset (`ConfigResult.pending`); the others apply at once. With
        `expected_version`, the change applies only if the level is still
        at that version; otherwise `ConcurrencyViolationError` (never a silent
        overwrite). A cap may not be set below the seed, the must-hit-by or
        the current amount.
        """
        result: ConfigResult = self._submit(self._build(
            "config", op_id, group, self._requests.config, group, op_id=op_id,
            expected_version=expected_version, who=who, reason=reason, changes=changes))
        return result

    def suspend(self, group: str, *, reason: str, op_id: str | None = None,
                who: str | None = None) -> AdminResult:
        """Stop a level taking contributions and wins; its amount is kept exactly."""
        result: AdminResult = self._submit(
            self._build("suspend", op_id, group, self._requests.status, "suspend", group,
                        op_id=op_id, who=who, reason=reason))
        return result

    def resume(self, group: str, *, op_id: str | None = None, who: str | None = None,
               reason: str | None = None) -> AdminResult:
        """Let a suspended level take contributions and wins again."""
        result: AdminResult = self._submit(
            self._build("resume", op_id, group, self._requests.status, "resume", group,
                        op_id=op_id, who=who, reason=reason))
        return result

    def adjust(self, group: str, delta: Decimal | int | str | SupportsIndex, *, reason: str,
               op_id: str | None = None, who: str | None = None) -> AdminResult:
        """Change a pool by a signed `delta`, audited with who and why.

        The only way besides a win that a pool goes down; never below zero,
        never above its cap or must-hit-by. `who` (the person or system making
        it) is required, as `reason` is: it is typed optional only so that a
        call without it is refused as a `ValidationError` naming `who` (a
        JackpotError, not a TypeError), before anything is queued. Both are
        1-256 printable characters, not blank.
        """
        result: AdminResult = self._submit(
            self._build("adjust", op_id, group, self._requests.adjust, group, delta,
                        op_id=op_id, who=who, reason=reason))
        return result

    def retire(self, group: str, *, transfer_to: str, reason: str,
               op_id: str | None = None, who: str | None = None) -> AdminResult:
        """Retire a level, moving its pool and reserve to `transfer_to` atomically.

        The pool goes into the target's pool up to the target's cap (and
        must-hit-by); the rest goes into the target's reserve. A retired level
        refuses every later operation. `who` is required, as for `adjust`: a
        call without it is a `ValidationError` naming `who`, and changes nothing.
        """
        result: AdminResult = self._submit(self._build(
            "retire", op_id, (group, transfer_to), self._requests.retire, group,
            transfer_to=transfer_to, op_id=op_id, who=who, reason=reason))
        return result

    # -- reads -------------------------------------------------------------------

    def pool(self, group: str) -> PoolSnapshot:
        """Return the committed state of one level of the database (as `pools()` has it).

        Raises:
            ValidationError: `group` is not a level name.
            UnknownGroupError: the database has no such level.
            LockTimeoutError: the read before it (reads take turns) did not end
                within the lock timeout; nothing was read.

        """
        name = domain.validate_name(group)
        with self._reading() as reader:
            return reads.pool(reader, name)

    def pools(self) -> dict[str, PoolSnapshot]:
        """Return every level's committed state, read in one consistent snapshot.

        Raises:
            LockTimeoutError: the read before it (reads take turns) did not end
                within the lock timeout; nothing was read.

        """
        with self._reading() as reader:
            return reads.pools(reader)

    def history(self, group: str, limit: SupportsIndex = 10) -> list[HistoryEntry]:
        """Return the last `limit` wins and hits of a level of the database, newest first.

        Raises:
            ValidationError: `group` is not a level name, or `limit` is not in 1-10,000.
            UnknownGroupError: the database has no such level.
            LockTimeoutError: the read before it (reads take turns) did not end
                within the lock timeout; nothing was read.

        """
        name = domain.validate_name(group)
        count = exact_int(limit)
        if count is None or not 1 <= count <= _MAX_HISTORY:
            msg = f"limit must be an int in [1, {_MAX_HISTORY}], got {shown(limit)}"
            raise ValidationError(msg)
        with self._reading() as reader:
            return reads.history(reader, name, count)

    def verify(self) -> VerifyReport:
        """Recompute every level from the ledger and report any difference.

        On a big ledger this takes a while, so it reads through a connection
        of its own (closed when it ends), not the reader that `pools()`,
        `pool()` and `history()` share: those never wait for an audit. Audits
        run one at a time: each holds its connection (on PostgreSQL, one of
        the pool the actors draw from) for its whole run, so calls that
        overlap wait for the one running rather than take one each.
        """
        report = self._verify(lambda: True)
        assert report is not None  # (None only when `wanted` says no)
        return report

    def _verify(self, wanted: Callable[[], bool]) -> VerifyReport | None:
        """`verify`, unless its caller no longer wants it when its turn comes (then None).

        For the asyncio engine: a caller cancelled while another audit runs
        is gone, and an audit run for nobody would hold a connection and
        delay every audit asked for after it.
        """
        self._check_open()
        with self._verify_lock:
            self._own.verifying = True  # a close() in this thread must not wait for it
            try:
                self._check_open()  # closed while waiting for another audit
                if not wanted():
                    return None
                store = _store(self._path, self._settings)
                try:
                    self._check_open()  # a close() that raced the connect: refused like any read
                    return audit(store)
                finally:
                    store.close()
            finally:
                self._own.verifying = False

    # -- internals -----------------------------------------------------------------

    def _check_open(self) -> None:
        self._check_not_closed()
        self._check_process()

    def _check_not_closed(self) -> None:
        if self._closed:
            msg = "the engine is closed; open a new one to go on"
            raise EngineClosedError(msg)

    def _check_process(self) -> None:
        """Refuse a call in a forked child; takes no lock (the parent's may be held forever)."""
        if self._pid != os.getpid():  # inherited across fork: its actors are not here
            msg = (f"this engine was opened in process {self._pid}, not in this one "
                   f"({os.getpid()}): its actors and connections stay in that process. "
                   "Open an engine in each process after it starts (after the fork)")
            raise EngineClosedError(msg)

    def _enter(self) -> None:
        """Count an operation as in flight, so `close()` waits for it.

        An interrupt as the lock is released (after the C `__exit__`
        returns, where CPython runs a pending signal's handler) would leave
        it counted with no caller to end it: every close() would wait its
        whole bound. It is then not counted after all, as if it came first.
        """
        self._check_process()  # before the lock: a fork may have copied it held
        counted = False
        try:
            with self._lock_state:
                self._check_not_closed()
                self._inflight += 1
                counted = True  # (no call in between: no interrupt lands there)
        except BaseException:
            if counted:
                self._leave()
            raise

    def _leave(self) -> None:
        """Count an in-flight operation as done (after `_enter`)."""
        with self._lock_state:
            self._inflight -= 1
            if self._closed:
                self._cond.notify_all()

    def _leave_interrupted(self, reporter: list[str] | None, *,
                           own_before: int | None = None) -> None:
        """`_leave` for an interrupted call, whose outcome is told now (or never will be).

        A call handed to a reporting thread (`reporter`) is no longer one
        whose outcome `close()` names as not known yet. With no `reporter`,
        it is `_leave` (`_submit` ends every call it counts here). `own_before`:
        this thread's own count of sync calls to set with it (`_submit`), in
        the same block: no interrupt lands in between, where a close() from
        a signal handler would take another thread's call for this one.
        """
        with self._lock_state:
            if reporter is not None:
                self._unreported.pop(id(reporter), None)
            self._inflight -= 1
            if own_before is not None:
                self._own.n = own_before
            if self._closed:
                self._cond.notify_all()

    def _tracking(self) -> AbstractContextManager[None]:
        """`_enter`, then `_leave` when the block ends (for the asyncio engine)."""
        return _InFlight(self)

    def _send(self, op: Operation, ticket: Ticket) -> None:
        """Queue `op` for the actor that owns it (the coordinator when it spans levels).

        Requests queue in the actor's mailbox and are committed in batches
        (group commit); only the first request after a batch wakes the actor.
        The outcome arrives through `ticket`.
        """
        level = op.names[0] if len(op.names) == 1 else None
        target = self._pools[level] if level is not None else self._coordinator
        try:
            if self._mailboxes[level].put(ticket, op):
                target.actor_ref.tell(DRAIN)
        except BaseException:
            # Interrupted between marking the mailbox awake and waking the
            # actor (Ctrl-C, or any exception a signal handler raises, such as
            # a request deadline's), nothing would ever wake it again: every
            # later request on the level would time out unstarted. A spare
            # wake-up is harmless.
            with contextlib.suppress(ActorDeadError):
                target.actor_ref.tell(DRAIN)
            raise

    def _owner_alive(self, op: Operation, ticket: Ticket) -> bool:
        """Whether a live actor holds `op`'s request (`ticket`), or will take it.

        Once claimed, only the actor that claimed it can answer: a
        replacement started since (another caller restarting the level) never
        will. While queued, the level's current actor (the coordinator for
        several levels) takes it, a replacement too (it drains the mailbox it
        inherits). When that one has stopped, the request is withdrawn here,
        so that no replacement takes it once this has said False.
        """
        owner = ticket.owner
        if owner is None:
            current = self._coordinator if len(op.names) > 1 else self._pools[op.names[0]]
            if current.actor_ref.is_alive():
                return True
            if ticket.abandon():
                return False
            owner = ticket.owner  # claimed meanwhile, by it or by a replacement
            assert owner is not None  # (set together with the claim)
        return owner.is_alive()

    def _build(self, kind: str, op_id: object, named: object, make: Callable[..., Operation],
               /, *args: Any, **kwargs: Any) -> Operation:
        """Build a request with `make`; a refusal (bad arguments) is logged and counted.

        Like a refusal by the rules, it changed nothing: INFO in the log and
        `rejected` in the operation counts. Reporting it (a log filter, an
        observer) never replaces the refusal the caller gets. `named` is the
        call's level argument, logged as the refusal's level (`log_refusal`).
        """
        # Refused at once in a forked child, before its refusal is counted
        # under a lock that a fork may have copied held.
        self._check_process()
        started = time.perf_counter()
        try:
            return make(*args, **kwargs)
        except JackpotError as e:
            if not self._closed:  # on a closed engine, as a well-formed call: not counted
                self._tell_refusal(kind, op_id, e, named, started)
            raise

    def _tell_refusal(self, kind: str, op_id: object, error: JackpotError, named: object,
                      started: float) -> None:
        """Log and count a call `_build` refused, even if an interrupt cuts either short.

        Counted "rejected", as its line says: no call (`outcome_of`) before
        the count, where an interrupt could land. Cut short, the line is
        written again (at least once), and the call counted once.
        """
        told = False
        counted: list[bool] = []
        try:
            after_the_fact(log_refusal, kind, op_id, error, named)
            told = True
            count_once(self.stats, kind, "rejected", started, counted, judged=False)
        finally:
            try:
                if not told:  # an interrupt (Ctrl-C in a log filter or handler) cut it short
                    after_the_fact(log_refusal, kind, op_id, error, named)
            finally:
                count_once(self.stats, kind, "rejected", started, counted, judged=False)

    def _submit(self, op: Operation) -> Any:
        started = time.perf_counter()
        outcome, interrupted = "error", False  # (interrupted: set by its handler below)
        # Counted per thread too: a log handler or observer closing the engine
        # in this thread must not wait for this very call (close() skips it).
        own = self._own
        before = getattr(own, "n", 0)
        queued: list[Ticket] = []  # the request's ticket, as it is sent
        reporter: list[str] | None = None  # set once handed to a reporting thread
        # The answer the caller got (result, error), until it is told (logged):
        # an interrupt that cuts the telling short (at the start of `outcome_of`,
        # in a log handler) leaves it to the `finally`, which tells it then. A
        # win paid is logged as paid at least once: the operator's record of it.
        untold: tuple[object, Exception | None] | None = None
        self._enter()
        try:  # at once: an interrupt before it would leave the call in flight for good
            own.n = before + 1
            with self._trace(op):
                result = self._submit_with_restart(op, queued)
            untold = (result, None)  # (not told yet: see `else`)
            # Here, not in `else`: an interrupt as the answer is read is then
            # one like any other (its answer is there: told and counted as it is).
            outcome = "replayed" if getattr(result, "replayed", False) else "ok"
        except BaseException as e:
            if isinstance(e, Exception):
                untold = (None, e)  # (plain stores, no call: no interrupt lands before them)
                if not _interrupts_caller(e, queued):
                    outcome = tell_outcome(op, None, e)
                    untold = None
                    raise
            # Interrupted (Ctrl-C, SystemExit or another exception from a signal
            # handler, such as a request deadline's) while the request was
            # queued or running: it goes on without its caller (not queued yet:
            # withdrawn below, as if never sent).
            # Its real outcome is reported when it comes, not as an error now.
            # Set first, before any call: whatever a second interrupt cuts
            # short below, the `finally` tells from the ticket what is left.
            # Counted only as told there (`_tell_interrupted`): cut short too,
            # a call withdrawn unsent (nothing ran) is not counted an error.
            outcome, interrupted = "", True
            if queued and not queued[-1].withdraw_unsent():
                reporter = []
                self._report_when_answered(op, queued[-1], started, reporter)
            raise
        else:
            after_the_fact(log_success, op, outcome, result, about=op)
            untold = None
            return result
        finally:
            # Handed to a reporting thread, unless a second interrupt stopped the
            # hand-over before the thread claimed the call: the first to claim it
            # counts it and ends it (`_report_when_answered`), never both. The
            # claim is acted on also if an interrupt lands as it returns: else
            # the call, or this thread's own count, would stay in flight for good.
            try:
                if reporter is not None:
                    reporter.append(_CALLER)
            finally:
                if reporter is None or reporter[0] is _CALLER:
                    counted: list[bool] = []
                    try:  # the outcome is final: reporting it must not change it
                        outcome = (outcome if not interrupted and untold is None  # told already
                                   else self._tell_left(op, queued, untold, started, counted,
                                                        interrupted=interrupted))
                        count_once(self.stats, op.kind, outcome, started, counted)
                    finally:
                        try:  # (again if an interrupt cut the count short; else nothing)
                            count_once(self.stats, op.kind, outcome, started, counted)
                        finally:
                            # This thread's own count is taken back as the call leaves
                            # (under the lock): an observer or log handler closing the
                            # engine as it is told must not wait for it.
                            self._leave_interrupted(reporter, own_before=before)
                else:
                    own.n = before

    def _tell_left(self, op: Operation, queued: list[Ticket],
                   untold: tuple[object, Exception | None] | None, started: float,
                   counted: list[bool], *, interrupted: bool) -> str:
        """Tell what is left untold of a call its caller counts; return what to count.

        Called only then (a call told already costs no call here). Interrupted
        while its request was out, no reporting thread follows it
        (`_tell_interrupted`, which counts it too: `counted`). Else an
        interrupt cut the telling of its answer (`untold`) short: told now,
        its outcome decided first (`_say_and_count`): a refusal whose retelling
        another interrupt cut short was counted an error (`_submit`'s default).
        """
        if interrupted:
            return self._tell_interrupted(op, queued, started, counted)
        assert untold is not None  # (see `_submit`)
        return self._say_and_count(op, answer_outcome(*untold), tell_outcome, (op, *untold),
                                   started=started, counted=counted)

    def _tell_interrupted(self, op: Operation, queued: list[Ticket], started: float,
                          counted: list[bool]) -> str:
        """Log and count an interrupted call's outcome as far as it is known now; return it.

        For a call its caller counts itself: withdrawn unsent (or never
        sent), nothing runs: told once, not counted (""). Else the request
        goes on and no thread follows it (a second interrupt stopped the
        hand-over): answered already, it is what it was (a win paid is
        paid); not yet, it may still be applied, and "unknown" says so,
        rather than an error that did not happen. Never blocks.

        Its outcome is decided before anything is told: another interrupt
        that cuts the line short (in a log filter or handler) has it said
        again, as `_submit` does, and the call counted all the same (here:
        the caller's `finally` never learns the outcome then); `counted`,
        the caller's receipt, keeps it from being counted twice.
        """
        ticket = queued[-1] if queued else None
        say: Callable[..., object]
        args: tuple[object, ...]  # its arguments
        # (Withdrawn again here: a second interrupt may have cut the first try short.)
        if ticket is None or ticket.withdraw_unsent():
            outcome, say, args = "", log_withdrawn, (op,)
        elif not ticket.wait(0):
            outcome, say, args = "unknown", log_unfollowed, (op,)
        else:
            answer = ticket.answer
            outcome, say, args = answer_outcome(*answer), tell_outcome, (op, *answer)
        return self._say_and_count(op, outcome, say, args, started=started, counted=counted)

    def _say_and_count(self, op: Operation, outcome: str, say: Callable[..., object],
                       args: tuple[object, ...], *, started: float, counted: list[bool]
                       ) -> str:
        """Say `say(*args)` and count `outcome` (decided already); return `outcome`.

        An interrupt that cuts the line short has it said again (at least
        once, rarely twice), and the call counted all the same; `counted`,
        the caller's receipt, keeps it from being counted twice.
        """
        said = False
        try:
            after_the_fact(say, *args, about=op)
            said = True
            count_once(self.stats, op.kind, outcome, started, counted)
        finally:
            try:
                if not said:  # cut short: said again (at least once, rarely twice)
                    after_the_fact(say, *args, about=op)
            finally:
                count_once(self.stats, op.kind, outcome, started, counted)
        return outcome

    def _report_when_answered(self, op: Operation, ticket: Ticket, started: float,
                              reporter: list[str]) -> None:
        """Log and count `op`'s outcome from a thread of its own, once it is known.

        Its caller was interrupted while waiting, but the request may still be
        applied: a win paid then must be logged and counted as paid, not as
        an error. The call stays in flight meanwhile, so `close()` (and the
        exit) waits for it within its bound.

        Who counts the call and ends it is whoever appends to `reporter`
        first (an append is atomic): the thread, or this method on its behalf
        once the thread has started, or else the caller (`_submit`), when
        another interrupt, or the interpreter's shutdown, stopped the thread
        from starting or from claiming the call in time.
        """
        with self._lock_state:
            self._unreported[id(reporter)] = op
        with contextlib.suppress(RuntimeError):  # can't start new thread (at shutdown)
            threading.Thread(target=self._report_answer, args=(op, ticket, started, reporter),
                             name="jackpot-interrupted", daemon=True).start()
            reporter.append(_REPORTER)

    def _report_answer(self, op: Operation, ticket: Ticket, started: float,
                       reporter: list[str]) -> None:
        """Wait for `op`'s outcome as its caller would have, then log and count it."""
        reporter.append(_REPORTER)
        if reporter[0] is not _REPORTER:  # the caller counted it (see `_report_when_answered`)
            return
        outcome = "error"
        try:
            try:
                result = self._wait(op, ticket)
            except ActorDeadError as e:
                if not ticket.abandon():
                    raise stopped_midway(op, closed=self._closed) from e
                msg = (f"the actor serving {', '.join(op.names)} stopped before it took "
                       f"{op.kind} {op.op_id!r}, whose caller was interrupted; it "
                       "changed nothing")
                raise EngineClosedError(msg) from e
        except Exception as e:  # noqa: BLE001 - reported: its caller is gone
            outcome = outcome_of(e)
            after_the_fact(log_failure, op, outcome, e, about=op)
        else:
            outcome = "replayed" if getattr(result, "replayed", False) else "ok"
            after_the_fact(log_success, op, outcome, result, about=op)
        finally:
            try:
                after_the_fact(self.stats.operation, op.kind, outcome,
                               time.perf_counter() - started)
            finally:
                self._leave_interrupted(reporter)

    def _submit_with_restart(self, op: Operation, queued: list[Ticket]) -> Any:
        """Send `op` and wait for it (again once, to a replacement of a dead actor).

        `queued` gets each ticket as its request is sent.
        """
        for attempt in range(2):
            ticket = Ticket()
            try:
                queued.append(ticket)  # (before: an interrupt may come as it is queued)
                self._send(op, ticket)
                return self._wait(op, ticket)
            except ActorDeadError as e:
                if not ticket.abandon():  # claimed: it may have been applied
                    raise stopped_midway(op, closed=self._closed) from e
                self._check_open()  # withdrawn, so nothing changed: "closed" is the whole story
                if attempt:  # the replacement stopped too, before taking the request
                    raise StorageError(not_restarted_message(op)) from e
                self._restart_before_resending(op)
        raise AssertionError  # pragma: no cover - the loop returns or raises

    def _wait(self, op: Operation, ticket: Ticket) -> Any:
        """Wait for the outcome; never longer than the timeouts, never on a dead actor."""
        if ticket.wait(min(self._queue_timeout, _LIVENESS_POLL)):  # the common case
            return ticket.outcome()
        if self._answered(op, ticket, self._queue_timeout):
            return ticket.outcome()
        if ticket.abandon():
            after_the_fact(self.stats.add, "lock_timeouts", op.kind, ",".join(op.names))
            msg = (f"{op.kind} {op.op_id!r} was not started within "
                   f"{self._settings.lock_timeout_ms} ms; nothing was changed")
            raise LockTimeoutError(msg) from None
        # Claimed: it is running, and its own lock waits and retries bound it.
        # An actor that stops meanwhile (it crashed) never answers: the wait ends.
        if self._answered(op, ticket, self._run_timeout):
            return ticket.outcome()
        msg = (f"{op.kind} {op.op_id!r} did not finish within {self._run_timeout:.1f} s "
               "after it started; its outcome is unknown: retry with the same op_id "
               "to learn it")
        raise LockTimeoutError(msg, outcome_unknown=True)

    def _answered(self, op: Operation, ticket: Ticket, seconds: float) -> bool:
        """Wait up to `seconds` for `ticket`'s outcome; True once it is there.

        Raises `ActorDeadError` once the actor serving `op` has stopped
        without answering.
        """
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            if ticket.wait(min(remaining, _LIVENESS_POLL)):
                return True
            if not self._owner_alive(op, ticket):
                if ticket.wait(0):  # answered before it stopped: that is the outcome
                    return True
                msg = f"the actor serving {', '.join(op.names)} has stopped"
                raise ActorDeadError(msg) from None
        return False

    def _start_pool(self, name: str) -> ActorProxy[PoolActor]:
        return start_actor(PoolActor, self._guards[name], self._open_store, self._settings,
                           self.stats, self._mailboxes[name])

    def _start_coordinator(self) -> ActorProxy[Coordinator]:
        return start_actor(Coordinator, self._open_store, self._guards, self._settings,
                           self.stats, self._mailboxes[None])

    def _restart_before_resending(self, op: Operation) -> None:
        """Replace stopped actors before `op` (which changed nothing) is sent again."""
        try:
            restart_dead_actors(self)
        except ActorDeadError as failed:  # the replacement's on_start failed (logged)
            raise StorageError(not_restarted_message(op)) from failed
        except EngineClosedError:
            # A close() began since the caller's check (the asyncio engine's restart
            # waits its turn in a thread): nothing started, nothing was resent, and
            # "closed" is the whole story, not a replacement that could not start.
            raise
        except Exception as failed:  # Pykka's start raised (a raising filter on its logger)
            if raised_by_signal_handler(failed):
                # The caller's interrupt (a request deadline's TimeoutError) as the
                # replacement started: as Ctrl-C there, nothing is resent. Taken for
                # a failed start, it was an ERROR and a StorageError in its place.
                raise
            after_the_fact(logger.error, "a stopped actor's replacement could not start",
                           exc_info=failed, extra={"outcome": "actor_restart_failed"})
            raise StorageError(not_restarted_message(op)) from failed

    # -- operations view -----------------------------------------------------------

    def metrics_text(self) -> str:
        """Return this engine's metrics in the Prometheus text format ("" when disabled)."""
        self._check_process()  # a forked child's copy counts nothing: not these figures
        return "" if self._metrics is None else self._metrics.text()

    def health(self) -> HealthReport:
        """Check the database (a probe), the actors and the recent lock, conflict, error rates.

        A closed engine is failing ("actors: the engine is closed"); it opens
        no connection to probe the database (its `database` and `disk` checks
        say they were not run). `close()` waits for a probe in progress.

        Raises:
            EngineClosedError: called in a forked child (the actors are the parent's).

        """
        self._check_process()
        recent = self.stats.recent()
        levels_alive = {n: p.actor_ref.is_alive() for n, p in self._pools.items()}
        coordinator_alive = self._coordinator.actor_ref.is_alive()
        checkpointer_alive = None if self._checkpointer is None else self._checkpointer.alive()
        # Asked after the actors: a close() that stopped them before is seen (none
        # restarts), not told as actors "restarted on their next operation".
        closed = self._closed
        return assess(path=self._path, settings=self._settings,
                      open_store=tracked(_store, functools.partial(probe_opening, self),
                                         functools.partial(probe_closed, self)),
                      recent=recent, levels_alive=levels_alive,
                      coordinator_alive=coordinator_alive, closed=closed,
                      refused=None if closed else self._reader.write_refusal(),
                      checkpointer_alive=checkpointer_alive)


def _warn_if_kept_differs(path: str, config: GroupConfig, state: domain.LevelState) -> None:
    """Warn that `open()` kept a level as stored although `config` asks for other settings."""
    given = domain.config_view(config.to_units())
    try:
        held = domain.config_view(state.config)
        after_reset = domain.config_view(replace(state.config, **state.pending))  # type: ignore[arg-type]
    except (ArithmeticError, TypeError):
        # A setting that is no number (text, a BLOB, a NULL in a levels table
        # rebuilt without STRICT and NOT NULL) has no view to compare: said
        # so, not a crash of an open that has committed its new levels.
        after_the_fact(logger.warning, "level %s already exists in %s and is kept as it is "
                       "there, though not all its settings there are numbers (a damaged or "
                       "tampered database: verify() tells which)", config.name, redact(path),
                       extra={"level": config.name, "outcome": "kept"})
        return
    if given in (held, after_reset):
        return
    differs = ", ".join(f"{k} {held[k]} (given {given[k]})" for k in given if given[k] != held[k])
    # A report on levels already created or kept: a raising log filter must not fail the open.
    after_the_fact(logger.warning, "level %s already exists in %s and is kept as it is there: "
                   "%s; open() creates missing levels only (change a level's settings with "
                   "update_config)", config.name, redact(path), differs,
                   extra={"level": config.name, "outcome": "kept"})


def check_path(path: object) -> None:
    """Refuse what cannot name a database, before anything is opened (the CLI's check too)."""
    if not isinstance(path, (str, os.PathLike)):
        msg = f"path must be a file path or a postgresql:// URL, not {type(path).__name__}"
        raise ValidationError(msg)
    if "\x00" in str(path):
        msg = "path must not contain a NUL character"
        raise ValidationError(msg)
    _check_utf8(str(path))
    if not str(path):
        msg = "path is empty: name a database file or a postgresql:// URL"
        raise ValidationError(msg)
    if "://" in str(path) and not is_database_url(str(path)):
        msg = (f"path {str(path).split('://')[0]}://... is a URL of no database this library "
               "opens: name a SQLite file path or a postgresql:// URL")
        raise ValidationError(msg)
    if str(path) == ":memory:" or str(path).startswith("file:"):
        # SQLite's own spellings of an in-memory or URI database: the engine
        # opens them as plain file names (every actor has a connection of its
        # own, all on one file), so ":memory:" would be a lasting file of that
        # name in the working directory, its ledger there on the next run.
        msg = (f"path {str(path)[:40]!r} is SQLite's in-memory or URI syntax, which the "
               "engine does not use: it keeps one file shared by its connections; name a "
               "file (for a throwaway database, one in a temporary directory)")
        raise ValidationError(msg)
    if _CONNINFO.match(str(path)):
        # "dbname=pools user=app" would otherwise be a SQLite file of that name.
        msg = (f"path {str(path)[:40]!r} looks like a libpq connection string: the engine "
               "takes PostgreSQL as a postgresql:// URL (postgresql://USER@HOST/DBNAME)")
        raise ValidationError(msg)
    if not is_database_url(str(path)) and str(path).endswith(_SEPARATORS):
        # realpath drops the separator: "data/" would be a new file named "data".
        msg = (f"path {str(path)[:80]!r} ends with a separator, so it names a directory: "
               "name the database file in it")
        raise ValidationError(msg)


_SEPARATORS = tuple(sep for sep in (os.sep, os.altsep) if sep)


def _check_utf8(path: str) -> None:
    r"""Refuse a path SQLite cannot be given: it takes file names in UTF-8.

    A lone surrogate cannot be encoded at all, and a name the file system
    holds in another encoding (os.fsdecode's surrogates, such as '\udc80' for
    the byte 0x80) not as UTF-8: the driver would raise UnicodeEncodeError.
    """
    try:
        path.encode()
    except UnicodeEncodeError:
        if "://" in path:  # a URL: libpq takes it in UTF-8 too; its password is not shown
            msg = (f"path {redact(path)!r} cannot be written in UTF-8 (a lone surrogate, or "
                   "text in another encoding): a postgresql:// URL is UTF-8 text; "
                   "percent-encode any other byte")
        else:
            msg = (f"path {path!r} cannot be written in UTF-8, as SQLite takes file names "
                   "(a lone surrogate, or a name in another encoding): rename the file or its "
                   "folder")
        raise ValidationError(msg) from None


_CONNINFO = re.compile(r"\s*(host|hostaddr|port|dbname|user|password|service|sslmode)\s*=")


def _absolute(path: str) -> str:
    """Return a SQLite file's path with symlinks resolved (a URL as it is).

    Every connection the engine opens later (its actors, a restarted one, the
    health probe) and the writers' lock file beside the database then name the
    same file, whatever the process's working directory is by then, and two
    spellings of one file (a symlink) share their writers' turns.
    """
    if is_database_url(path):
        return path
    try:
        return os.path.realpath(path)
    except OSError as e:  # a relative path in a working directory that was deleted
        msg = f"cannot open database {path!r}: its path cannot be resolved ({e.strerror})"
        raise StorageError(msg) from e


def _configs(path: str | os.PathLike[str],
             groups: Iterable[GroupConfig] | None) -> list[GroupConfig] | None:
    """Check `open()`'s `groups`: GroupConfig objects, each level named once."""
    if groups is None:
        return None
    if isinstance(groups, GroupConfig):
        msg = ("groups must be an iterable of GroupConfig objects, not one GroupConfig: "
               "put it in a list ([GroupConfig(...)])")
        raise ValidationError(msg)
    if isinstance(groups, str | bytes):
        # Iterated, a name gave "groups must hold GroupConfig objects, not str".
        msg = (f"groups must be an iterable of GroupConfig objects, not a {type(groups).__name__} "
               f"({shown(groups)}): each level is a GroupConfig(name, seed, "
               "contribution_rate); pass None for the default levels")
        raise ValidationError(msg)
    if not isinstance(groups, Iterable):
        msg = f"groups must be an iterable of GroupConfig objects, not {type(groups).__name__}"
        raise ValidationError(msg)
    if isinstance(groups, Mapping):
        # {"minor": GroupConfig("minor", ...)} iterates as its keys, which the loop below
        # would refuse as "not str", hiding that the whole argument was the wrong shape.
        msg = (f"groups must be an iterable of GroupConfig objects, not a mapping "
               f"({type(groups).__name__}): pass its .values() (each GroupConfig "
               "carries its own name)")
        raise ValidationError(msg)
    configs = list(groups)
    for g in configs:
        if not isinstance(g, GroupConfig):
            msg = f"groups must hold GroupConfig objects, not {type(g).__name__}"
            raise ValidationError(msg)
    names = [g.name for g in configs]
    if not names and "://" not in str(path) and not Path(path).exists():
        msg = "groups is empty: name at least one level (or pass None for the defaults)"
        raise ValidationError(msg)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        msg = f"groups name a level twice: {', '.join(map(repr, twice))} (each level once)"
        raise ValidationError(msg)
    return configs


def _sqlite(path: str, settings: Settings) -> SQLiteStore:
    """Open a plain connection to the existing SQLite file `path` (for the checkpointer)."""
    return SQLiteStore(path, lock_timeout_ms=settings.lock_timeout_ms,
                       poll_interval_ms=settings.concurrency_check_interval_ms,
                       synchronous=settings.synchronous, create=False)


def _store(path: str, settings: Settings, on_wal: Callable[[int], None] | None = None,
           *, cache_mb: int | None = None, create: bool = False) -> Store:
    """Open the backend `path` names: a postgresql:// URL, else a SQLite file.

    Only `open()` creates a database (`create=True`); every later connection
    (the reader, the actors, a restarted actor, the health probe) refuses a
    file that has gone missing or been emptied rather than make a new one.
    """
    return open_store(path, lock_timeout_ms=settings.lock_timeout_ms,
                      poll_interval_ms=settings.concurrency_check_interval_ms,
                      synchronous=settings.synchronous, on_wal=on_wal, cache_mb=cache_mb,
                      create=create, pool_size=settings.pg_pool_size)


def outcome_of(error: BaseException) -> str:
    """Classify a failed operation for metrics: rejected, conflict, timeout or error."""
    if isinstance(error, ConcurrencyViolationError):
        return "conflict"
    if isinstance(error, LockTimeoutError):
        return "timeout"
    if isinstance(error, EngineClosedError) and error.outcome_unknown:
        return "error"
    if isinstance(error, (ValidationError, InsufficientFundsError, IdempotencyConflictError,
                          GroupSuspendedError, GroupRetiredError, UnknownGroupError,
                          EngineClosedError)):
        return "rejected"
    return "error"
