"""AsyncJackpotEngine: the engine for asyncio servers, without blocking the loop.

Awaiting a Pykka future calls its blocking `get()` and stalls the whole event
loop until the actor answers. Here a write is queued at the same actors as a
`JackpotEngine` write, with a `Ticket` whose notify callback completes an
asyncio future through `loop.call_soon_threadsafe`: no thread is parked per
call, and the loop keeps running while the actor works. Reads are short
database reads and run in the default thread pool (`asyncio.to_thread`);
`health()`, `verify()` and `close()`, which must not wait behind them, run
in threads of their own, as does the restart of a stopped actor before a
write is resent (`_Restarter`).

The async engine wraps a `JackpotEngine` and shares its actors, validation
(`jackpot.requests`), timeouts, restart policy and stats, so both APIs give
the same results and the same errors for the same calls.

Each write is a small callback-driven state machine (`_Call`), not a task:
it is sent when its coroutine starts, and the caller awaits its future
through `asyncio.shield`, so cancelling the awaiting task never withdraws or
repeats it (see `AsyncJackpotEngine` for what the caller gets). Answers
reach the loop through `_Answers`, which hands a batch's answers over in
slices so that a group commit of hundreds never holds the loop for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from decimal import Decimal
from types import TracebackType
from typing import Any, NoReturn, Self, SupportsIndex, TypeGuard, TypeVar, Unpack

from jackpot.actors import ActorDeadError, Ticket
from jackpot.domain import ConfigChanges, GroupConfig
from jackpot.engine import (
    NOT_PICKLED,
    JackpotEngine,
    answer_outcome,
    not_restarted_message,
    stopped_midway,
    tell_outcome,
)
from jackpot.errors import (
    EngineClosedError,
    LockTimeoutError,
    StorageError,
    ValidationError,
    shown,
)
from jackpot.health import HealthReport
from jackpot.logs import log_withdrawn
from jackpot.results import (
    AdminResult,
    ConfigResult,
    Contribution,
    HistoryEntry,
    PoolSnapshot,
    VerifyReport,
    Win,
)
from jackpot.service import Operation
from jackpot.settings import Settings
from jackpot.stats import Stats, after_the_fact, count_once, raised_by_signal_handler

__all__ = ["AsyncJackpotEngine"]

_T = TypeVar("_T")

# While a request waits in its actor's mailbox, check every so often that the
# actor still lives (as `JackpotEngine._wait` does): an actor that stops with
# requests queued never answers them.
_LIVENESS_POLL_S = 0.25

# Most answers the loop settles in one turn (see `_Answers`).
_SLICE = 32


class AsyncJackpotEngine:
    """A running jackpot engine for asyncio code. Open it with `await AsyncJackpotEngine.open()`.

    Every method takes the same arguments and returns the same results as the
    `JackpotEngine` method of the same name, as a coroutine. Several event
    loops (or an event loop and threads, through `sync`) may share one engine.

    Cancellation and retries: bad arguments are refused before anything is
    sent. Once a write's coroutine has started, the operation is sent to its
    actor and runs to its end even if the awaiting task is cancelled: it is
    never withdrawn and never sent twice. The cancelled caller gets
    `asyncio.CancelledError` and cannot tell from that call whether the
    operation was applied; its outcome is still recorded (ledger, stats).
    Retrying with the same `op_id` is always safe: it returns the first result
    marked `replayed=True` if the first attempt committed, applies it now if
    the first attempt failed or timed out in the queue, and never applies it
    twice (a retry sent while the first attempt is still queued waits behind
    it at the same actor). Without an `op_id` there is nothing to retry by:
    pass one when a caller may be cancelled.

    Timeouts mirror `JackpotEngine`: a request not started by its actor within
    `lock_timeout_ms` is withdrawn and raises `LockTimeoutError` (never
    applied); once started, it is waited for up to the engine's longest
    operation time, after which `LockTimeoutError` says the outcome is
    unknown (retry with the same op_id to learn it).
    """

    def __init__(self, engine: JackpotEngine) -> None:
        """Wrap an open `JackpotEngine`; use `await AsyncJackpotEngine.open()` instead.

        Raises:
            ValidationError: `engine` is no `JackpotEngine` (a path, say).

        """
        if not isinstance(engine, JackpotEngine):  # a path: it failed at `_attach`, unexplained
            msg = (f"engine must be a JackpotEngine, not {type(engine).__name__}: open a "
                   "database with `await AsyncJackpotEngine.open(path)`")
            raise ValidationError(msg)
        self._engine = engine
        # asyncio keeps only weak references to tasks: hold the running ones.
        self._tasks: set[asyncio.Task[Any]] = set()
        self._restarter = _Restarter(engine)
        self._answers: dict[asyncio.AbstractEventLoop, _Answers] = {}
        self._answers_lock = threading.Lock()
        self._gone: list[_Answers] = []  # closed loops' answers with calls not yet settled
        # An answer queued for a loop that then closed without running it is
        # stranded, and one queued for a stopped loop may be: `close()`, even
        # the sync one, sweeps such answers up. And a close() on a loop's
        # thread (an observer, a log handler) cannot wait for that loop's
        # calls: their answers need the loop it blocks.
        engine._attach(self._orphan_closed_loops, self._calls_of_this_loop,  # noqa: SLF001
                       self._callers_gone)

    # -- life cycle ----------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        groups: Iterable[GroupConfig] | None = None,
        *,
        settings: Settings | None = None,
        create: bool = True,
    ) -> Self:
        """Open (or create) the database at `path` and start the engine.

        Same arguments and errors as `JackpotEngine.open`; the file I/O runs in
        a worker thread. Cancelled while opening, the engine it was opening is
        closed once it is open (in that thread): nothing is left running.
        """
        handover = _Handover()
        try:
            engine = await asyncio.to_thread(handover.open, path, groups, settings, create)
        except asyncio.CancelledError:
            handover.cancel()
            raise
        return cls(engine)

    async def close(self, timeout: float | SupportsIndex | None = None) -> None:  # noqa: ASYNC109 - as sync
        """Let in-flight operations finish, stop every actor; later calls fail.

        Idempotent. `timeout` bounds the whole close, as in `JackpotEngine.close`;
        a close after one that gave up (`timeout=0`, say) waits, as there, for
        the actors and the read that one left running, so that once it returns
        no connection of the engine holds the file. Runs in a thread of its
        own, as `health()` does; cancelling the awaiting task does not stop
        it: the engine closes all the same.
        """
        self._orphan_closed_loops()
        await _in_own_thread("jackpot-close", self._engine.close, timeout)

    async def __aenter__(self) -> Self:
        """Return the engine; `await close()` on exit."""
        return self

    def __reduce__(self) -> NoReturn:
        """Refuse to be pickled (sent to another process), saying what to do instead."""
        raise TypeError(NOT_PICKLED.format(type(self).__name__))

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        """Close the engine."""
        await self.close()

    @property
    def sync(self) -> JackpotEngine:
        """The threaded engine underneath, for code that runs in threads."""
        return self._engine

    @property
    def settings(self) -> Settings:
        """The settings this engine runs with."""
        return self._engine.settings

    @property
    def groups(self) -> tuple[str, ...]:
        """Names of the levels this engine serves, sorted."""
        return self._engine.groups

    @property
    def stats(self) -> Stats:
        """Counters and observers of the engine (shared with `sync`)."""
        return self._engine.stats

    # -- operations ------------------------------------------------------------

    async def contribute(
        self,
        bet: Decimal | int | str | SupportsIndex,
        *,
        groups: Iterable[str] | str | None = None,
        op_id: str | None = None,
        player: str | None = None,
    ) -> Contribution:
        """Add one bet's share to every named level (all when None), atomically.

        See `JackpotEngine.contribute`.
        """
        result: Contribution = await self._submit(self._build(
            "contribute", op_id, groups, "contribute", bet, groups=groups, op_id=op_id,
            player=player))
        return result

    async def process_win(
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

        See `JackpotEngine.process_win`.
        """
        result: Win = await self._submit(self._build(
            "win", op_id, group, "win", group, op_id=op_id, amount=amount, winner=winner,
            expected_version=expected_version, expected_amount=expected_amount))
        return result

    async def update_config(
        self,
        group: str,
        *,
        op_id: str | None = None,
        expected_version: SupportsIndex | None = None,
        who: str | None = None,
        reason: str | None = None,
        **changes: Unpack[ConfigChanges],
    ) -> ConfigResult:
        """Change a level's settings, atomically and audited.

        See `JackpotEngine.update_config`.
        """
        result: ConfigResult = await self._submit(self._build(
            "config", op_id, group, "config", group, op_id=op_id, expected_version=expected_version,
            who=who, reason=reason, changes=changes))
        return result

    async def suspend(self, group: str, *, reason: str, op_id: str | None = None,
                      who: str | None = None) -> AdminResult:
        """Stop a level taking contributions and wins; its amount is kept exactly."""
        result: AdminResult = await self._submit(self._build(
            "suspend", op_id, group, "status", "suspend", group, op_id=op_id, who=who,
            reason=reason))
        return result

    async def resume(self, group: str, *, op_id: str | None = None, who: str | None = None,
                     reason: str | None = None) -> AdminResult:
        """Let a suspended level take contributions and wins again."""
        result: AdminResult = await self._submit(self._build(
            "resume", op_id, group, "status", "resume", group, op_id=op_id, who=who, reason=reason))
        return result

    async def adjust(self, group: str, delta: Decimal | int | str | SupportsIndex, *, reason: str,
                     op_id: str | None = None, who: str | None = None) -> AdminResult:
        """Change a pool by a signed `delta`, audited with who and why.

        `who` is required (see `JackpotEngine.adjust`): without it, a
        `ValidationError` naming `who`, and nothing is queued.
        """
        result: AdminResult = await self._submit(self._build(
            "adjust", op_id, group, "adjust", group, delta, op_id=op_id, who=who, reason=reason))
        return result

    async def retire(self, group: str, *, transfer_to: str, reason: str,
                     op_id: str | None = None, who: str | None = None) -> AdminResult:
        """Retire a level, moving its pool and reserve to `transfer_to` atomically.

        `who` is required (see `JackpotEngine.retire`): without it, a
        `ValidationError` naming `who`, and nothing is queued.
        """
        result: AdminResult = await self._submit(self._build(
            "retire", op_id, (group, transfer_to), "retire", group, transfer_to=transfer_to,
            op_id=op_id, who=who, reason=reason))
        return result

    # -- reads -------------------------------------------------------------------

    async def pool(self, group: str) -> PoolSnapshot:
        """Return the committed state of one level."""
        return await asyncio.to_thread(self._engine.pool, group)

    async def pools(self) -> dict[str, PoolSnapshot]:
        """Return every level's committed state, read in one consistent snapshot."""
        return await asyncio.to_thread(self._engine.pools)

    async def history(self, group: str, limit: SupportsIndex = 10) -> list[HistoryEntry]:
        """Return the level's last `limit` wins and hits, newest first."""
        return await asyncio.to_thread(self._engine.history, group, limit)

    async def verify(self) -> VerifyReport:
        """Recompute every level from the ledger and report any difference.

        Runs in a thread of its own, not the default thread pool: audits run
        one at a time (`JackpotEngine.verify`), and calls waiting their turn
        there would hold the pool's threads that every other read of the
        loop needs. Cancelled while it waits its turn, it runs no audit (as
        a call still queued in the pool would not run); once its audit has
        started, that audit runs to its end.
        """
        gone = threading.Event()
        try:
            report = await _in_own_thread("jackpot-verify", self._engine._verify,  # noqa: SLF001
                                          lambda: not gone.is_set())
        except asyncio.CancelledError:
            gone.set()
            raise
        assert report is not None  # (None only once this caller is gone)
        return report

    async def health(self) -> HealthReport:
        """Check the database, the actors and the recent lock, conflict and error rates.

        Runs in a thread of its own, not the default thread pool: reads queue
        there for the reader, and behind one the storage does not answer (a
        frozen mount) they can hold every thread of the pool, while a health
        check is to say "failing" within its probe's bound.
        """
        return await _in_own_thread("jackpot-health", self._engine.health)

    async def metrics_text(self) -> str:
        """Return the engine's metrics in the Prometheus text format ("" when disabled).

        A scrape reads the levels and probes the database's health, so it
        runs in the default thread pool like the other reads.
        """
        return await asyncio.to_thread(self._engine.metrics_text)

    # -- internals -----------------------------------------------------------------

    def _build(self, kind: str, op_id: object, named: object, builder: str, /, *args: Any,
               **kwargs: Any) -> Operation:
        """Build the request as `JackpotEngine._build` does (a refusal is logged and counted)."""
        engine = self._engine
        return engine._build(kind, op_id, named,  # noqa: SLF001
                             getattr(engine._requests, builder), *args, **kwargs)  # noqa: SLF001

    async def _submit(self, op: Operation) -> Any:
        """Send `op` now; await its outcome through a shield (see the class docstring)."""
        loop = asyncio.get_running_loop()
        # Before any lock, as `JackpotEngine._enter`: a fork may have copied one held.
        self._engine._check_process()  # noqa: SLF001
        call = _Call(self, op, loop, self._answers_for(loop))
        # Marks the error as retrieved: a cancelled (or interrupted) caller no
        # longer awaits it, and asyncio would log "Future exception was never
        # retrieved".
        call.future.add_done_callback(_retrieved)
        call.start()
        try:
            return await asyncio.shield(call.future)
        except asyncio.CancelledError:
            call.caller_gone = True  # a close() that stops waiting names it
            raise

    def _answers_for(self, loop: asyncio.AbstractEventLoop) -> _Answers:
        answers = self._answers.get(loop)  # one dict read: safe without the lock
        if answers is None:
            with self._answers_lock:  # loops in several threads may get here at once
                answers = self._answers.get(loop)
                if answers is None:
                    answers = self._answers[loop] = _Answers(loop)
            self._orphan_closed_loops()
        return answers

    def _calls_of_this_loop(self) -> int:
        """Return how many calls the event loop running in this thread has in flight."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop runs in this thread
            return 0
        answers = self._answers.get(loop)  # one dict read: safe without the lock
        return 0 if answers is None else answers.in_flight()

    def _callers_gone(self) -> list[Operation]:
        """Return the calls in flight whose callers are gone: cancelled, or their loop ended.

        Nobody will learn their outcomes but the log: a close() that stops
        waiting for them names them (`JackpotEngine.close`).
        """
        with self._answers_lock:
            answers = [*self._answers.values(), *self._gone]
        return [op for a in answers for op in a.callers_gone()]

    def _orphan_closed_loops(self) -> None:
        """Close the books of calls from loops which have closed, or stopped, since they were sent.

        A closed loop's calls stay here until every one is settled: one whose
        live actor still holds it is looked at again by the next sweep (its
        actor may yet stop without answering). Of a stopped loop's calls,
        those whose outcome is decided are settled (`_Answers.settle_decided`).
        In a forked child there is nothing to sweep: the calls, and the locks,
        are the parent's (a fork may have copied a lock held).
        """
        if self._engine._pid != os.getpid():  # noqa: SLF001
            return
        with self._answers_lock:
            for lp in [lp for lp, a in self._answers.items() if a.loop_closed()]:
                self._gone.append(self._answers.pop(lp))
            gone = list(self._gone)
            stopped = [a for a in self._answers.values() if a.loop_stopped()]
        for answers in gone:
            answers.orphan()
        for answers in stopped:
            answers.settle_decided()
        with self._answers_lock:
            self._gone = [a for a in self._gone if a.pending()]


class _Handover:
    """An engine opened in a worker thread, for a caller that may stop waiting.

    Whichever comes second closes the engine: the thread that opened it, when
    the caller was cancelled first, or the cancelled caller, when the engine
    was already handed over (closed then in a thread of its own, off the loop).
    """

    __slots__ = ("_cancelled", "_engine", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engine: JackpotEngine | None = None
        self._cancelled = False

    def open(self, path: str | os.PathLike[str], groups: Iterable[GroupConfig] | None,
             settings: Settings | None, create: bool) -> JackpotEngine:
        """Open the engine (in the worker thread); close it at once if nobody waits."""
        engine = JackpotEngine.open(path, groups, settings=settings, create=create)
        with self._lock:
            if not self._cancelled:
                self._engine = engine
                return engine
        engine.close()
        msg = "the open was cancelled; the engine it opened is closed"
        raise EngineClosedError(msg)

    def cancel(self) -> None:
        """Note that the caller stopped waiting; close the engine if it was opened already."""
        with self._lock:
            self._cancelled = True
            engine, self._engine = self._engine, None
        if engine is not None:
            threading.Thread(target=engine.close, name="jackpot-close-unwanted",
                             daemon=True).start()


class _Restarter:
    """Restarts of stopped actors before a resend, in a thread of the engine's own.

    Not in the loop's default pool: there a restart queues behind every read,
    and behind one the storage does not answer each read after it holds a
    thread for its lock timeout, while the write being resent (which no timer
    watches meanwhile) waits for all of them. One thread, started when needed
    and gone when idle, takes the restarts in turn: when an actor stops with
    many requests queued, each of them asks for one, and all but the first
    find nothing left to restart (the sync engine's callers, each in its own
    thread, take turns at the same lock). A restart whose caller was
    cancelled before its turn (the loop's shutdown) is skipped, as a call
    queued in a pool is.
    """

    __slots__ = ("_engine", "_lock", "_queue", "_running")

    def __init__(self, engine: JackpotEngine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._queue: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None],
                                 contextvars.Context, Operation]] = deque()
        self._running = False

    def restart(self, op: Operation) -> asyncio.Future[None]:
        """Queue the restart before `op` is resent; the future has its outcome (on the loop)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        entry = (loop, done, contextvars.copy_context(), op)
        start = False
        try:
            with self._lock:
                self._queue.append(entry)
                start, self._running = not self._running, True
            if start:
                threading.Thread(target=self._run, name="jackpot-restart", daemon=True).start()
        except BaseException as e:
            # Cut short (no thread, or a Ctrl-C before one was started, as the lock was
            # released): left marked running with none, every later restart would wait
            # in the queue for ever. This caller gets the error; if it was to start the
            # thread, so does each restart that another loop queued meanwhile (it saw
            # one running, and started none).
            self._abandon(entry, e, others=start)
            raise
        return done

    def _abandon(self, entry: tuple[asyncio.AbstractEventLoop, asyncio.Future[None],
                                    contextvars.Context, Operation],
                 error: BaseException, *, others: bool) -> None:
        """Take `entry` off the queue; with `others`, fail the rest and mark none running."""
        with self._lock:
            with contextlib.suppress(ValueError):  # (not queued yet, or taken already)
                self._queue.remove(entry)
            if not others:
                return
            left = list(self._queue)
            self._queue.clear()
            self._running = False
        for other, waiting, _, op in left:
            # Not `error` itself: a Ctrl-C or SystemExit of this caller's thread set on
            # another loop's future ends that loop (asyncio re-raises them), in a thread
            # the signal was never meant for; and each caller is told its own call.
            told = StorageError(
                f"the actor serving {', '.join(op.names)} stopped, and its restart was "
                f"cut short in another caller ({type(error).__name__}) before it began; "
                f"{op.kind} {op.op_id!r} changed nothing: retry with the same op_id")
            told.__cause__ = error
            with contextlib.suppress(RuntimeError):  # its loop closed meanwhile
                other.call_soon_threadsafe(_settle, waiting, None, told)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._running = False
                    return
                loop, done, context, op = self._queue.popleft()
            if done.cancelled():  # (a flag read: the caller's loop sets it)
                continue
            error: BaseException | None = None
            try:
                context.run(self._engine._restart_before_resending, op)  # noqa: SLF001
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting restart task
                error = e
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_settle, done, None, error)


class _Answers:
    """Actors' answers for one event loop, handed over in slices.

    An actor commits requests in batches of up to hundreds and answers them
    all at once. Each answer is queued here; only the first after a drain
    wakes the loop (one `call_soon_threadsafe`, so one self-pipe write per
    burst rather than per answer), and the loop settles at most `_SLICE` per
    turn before yielding: timers and I/O run between slices, so a burst of
    answers never holds the loop for longer than one slice.
    """

    __slots__ = ("_awake", "_calls", "_items", "_lock", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._items: deque[tuple[_Call, Ticket, Any, BaseException | None]] = deque()
        self._awake = False
        self._calls: set[_Call] = set()  # in flight from this loop, books not yet closed

    def track(self, call: _Call) -> None:
        """Remember a call in flight from this loop (until its books are closed)."""
        with self._lock:
            self._calls.add(call)

    def untrack(self, call: _Call) -> None:
        """Forget a call whose books are closed."""
        with self._lock:
            self._calls.discard(call)

    def in_flight(self) -> int:
        """Return how many calls from this loop still have their books open."""
        with self._lock:
            return len(self._calls)

    def callers_gone(self) -> list[Operation]:
        """Return the operations of this loop's calls in flight that nobody may learn.

        Those whose awaiting task was cancelled, and all of them once the loop
        has closed, or stopped (`run_until_complete` ended by Ctrl-C): their
        callers learn them only if it runs again, and an answer for it waits
        for that, or for a close() sweep, to be logged.
        """
        idle = not self._loop.is_running()
        with self._lock:
            return [c.op for c in self._calls if idle or c.caller_gone]

    def pending(self) -> bool:
        """Whether a call from this loop still has its books open."""
        with self._lock:
            return bool(self._calls)

    def put(self, call: _Call, ticket: Ticket, result: Any, error: BaseException | None
            ) -> None:
        """Queue an answer for the loop (any thread); never blocks."""
        with self._lock:
            self._items.append((call, ticket, result, error))
            wake = not self._awake
            self._awake = True
        if (wake and not self._wake()) or self._loop.is_closed():
            self.orphan()

    def _wake(self) -> bool:
        if self._loop.is_closed():
            return False
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop closed between the check and the call
            return False
        return True

    def loop_closed(self) -> bool:
        """Whether the loop these answers are for has closed."""
        return self._loop.is_closed()

    def loop_stopped(self) -> bool:
        """Whether the loop these answers are for is not running (stopped or not yet run)."""
        return not self._loop.is_running()

    def settle_decided(self) -> None:
        """Close the books of the calls decided while their loop is stopped (any thread).

        The loop hands each caller its outcome if it runs again; the outcome
        is known meanwhile, and close() must not wait for a loop that may
        never run again, or cannot while close() holds its thread (one that
        `run_until_complete` left stopped with calls in flight). Calls still
        undecided stay in flight: live actors hold them, or may yet take them.
        """
        with self._lock:
            pending = list(self._calls)
        for call in pending:
            call.decided_meanwhile()

    def orphan(self) -> None:
        """Close the books of every queued answer here, the loop being closed (any thread).

        Nobody awaits these answers any more, but the engine still counts
        their operations in flight, and `close()` waits for those.
        """
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._awake = False
        for call, ticket, result, error in items:
            call.orphaned(ticket, result, error)
        with self._lock:
            pending = list(self._calls)
        for call in pending:  # no answer queued: their timers died with the loop
            call.loop_gone()

    def _drain(self) -> None:
        with self._lock:
            n = min(len(self._items), _SLICE)
            batch = deque(self._items.popleft() for _ in range(n))
            self._awake = bool(self._items)
        try:
            while batch:
                call, ticket, result, error = batch.popleft()
                try:
                    call.served(ticket, result, error)
                except Exception as e:  # noqa: BLE001 - a failing observer must not strand the rest
                    self._loop.call_exception_handler({
                        "message": f"jackpot: settling {call.op.kind} {call.op.op_id!r} failed",
                        "exception": e})
        finally:
            # Also after a KeyboardInterrupt out of an observer: what was not
            # served goes back, and the loop is woken again for it.
            with self._lock:
                self._items.extendleft(reversed(batch))
                again = self._awake = bool(self._items)
            if again:
                self._loop.call_soon(self._drain)  # the rest after timers and I/O had a turn


class _Call:
    """One write in flight, driven by callbacks on the loop: no task, no parked thread.

    Mirrors `JackpotEngine._submit`, `_submit_with_restart` and `_wait`: it
    counts the write in flight and opens its trace span, sends it with a
    `Ticket` whose notify settles it through `call_soon_threadsafe`, checks
    that the serving actor lives while the request waits, withdraws it if not
    started within the queue timeout, resends once after a dead actor, and
    logs and records its outcome exactly once, whether or not anyone still
    awaits `future`. Span, logs and stats run in a copy of the caller's
    context taken at the start, as they would in the caller's thread.
    """

    __slots__ = ("_answers", "_attempt", "_books", "_books_lock", "_ctx", "_deadline", "_engine",
                 "_finished", "_loop", "_owner", "_phase", "_restarting", "_span", "_started",
                 "_ticket", "_timer", "_tracking", "caller_gone", "future", "op")

    def __init__(self, owner: AsyncJackpotEngine, op: Operation,
                 loop: asyncio.AbstractEventLoop, answers: _Answers) -> None:
        self.op = op
        self._answers = answers
        self.future: asyncio.Future[Any] = loop.create_future()
        self._owner = owner
        self._engine = owner.sync
        self._loop = loop
        self._started = time.perf_counter()
        self._ctx = contextvars.copy_context()
        self._tracking: AbstractContextManager[None] | None = None
        self._span: AbstractContextManager[None] | None = None
        self._ticket: Ticket | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._attempt = 0
        self._restarting: asyncio.Task[None] | None = None  # the task resending it, once started
        self._phase = "queue"
        self._deadline = 0.0
        self._finished = False
        # The books (in-flight count, span, log, stats) are closed on the loop,
        # or in the actor's thread once the loop is closed: exactly once.
        self._books_lock = threading.Lock()
        self._books = False
        self.caller_gone = False  # set (on the loop) once its awaiting task is cancelled

    def start(self) -> None:
        """Count the write in flight and send it; raise EngineClosedError if closed.

        As in `JackpotEngine._submit`: a call refused because the engine is
        closed is neither logged nor counted; one whose trace span fails to
        open is both.
        """
        tracking = self._engine._tracking()  # noqa: SLF001
        tracking.__enter__()  # EngineClosedError: nothing entered, nothing to report
        self._tracking = tracking
        try:
            self._ctx.run(self._enter_span)
        except BaseException as e:
            if _failure(e):
                self._books = True
                self._ctx.run(self._report, None, e)
                raise
            # Interrupted as the span opens, before anything is sent: withdrawn,
            # told once and not counted, as `JackpotEngine._submit` tells it;
            # the span, if it opened, ends with it.
            self._close_books(None, None, withdrawn=True)
            raise
        try:  # (tracked inside: an interrupt as it is tracked leaves nothing in flight)
            self._answers.track(self)  # until its books are closed (see `_Answers.orphan`)
            self._send()
        except BaseException as e:
            self._send_interrupted(cause=e)
            raise

    def _enter_span(self) -> None:
        """Open the trace span, as `JackpotEngine._submit` does (in the caller's context)."""
        span = self._engine._trace(self.op)  # noqa: SLF001
        span.__enter__()
        self._span = span

    # -- sending and waiting (on the loop) -------------------------------------

    def _send(self) -> None:
        def notify(result: Any, error: BaseException | None) -> None:
            self._notified(ticket, result, error)

        ticket = Ticket(notify)
        self._ticket = ticket
        try:
            self._engine._send(self.op, ticket)  # noqa: SLF001
        except ActorDeadError as e:
            self._actor_stopped(e)
            return
        except Exception as e:
            if ticket.queued or not _failure(e):
                # Queued, so it goes on: an exception a signal handler raised
                # in the loop's thread as it was sent (a request deadline's),
                # as `JackpotEngine._submit` takes it: an interrupt, its
                # caller's to handle (`_send_interrupted`), the request's real
                # outcome told when it comes, not as this error. Not queued,
                # a signal handler's (`_failure`) is withdrawn there, as
                # Ctrl-C is: taken for the call's error, it was counted one
                # though nothing ran (and, raised as the mailbox took it before
                # it was marked queued, applied all the same).
                raise
            self._finish(None, e)
            return
        self._phase = "queue"
        self._deadline = self._loop.time() + self._engine._queue_timeout  # noqa: SLF001
        self._schedule(min(_LIVENESS_POLL_S, self._engine._queue_timeout))  # noqa: SLF001

    def _send_interrupted(self, *, resending: bool = False,
                          cause: BaseException | None = None) -> None:
        """Follow or withdraw a request whose sending an interrupt cut short.

        KeyboardInterrupt, SystemExit, or a signal handler's own exception (a
        request deadline's TimeoutError: see `_failure`).

        Raised on the loop (a second Ctrl-C under `asyncio.run`, or any in a
        plain `run_until_complete`), it ends the caller's task, and the loop
        with it. A request not queued yet never runs: withdrawn now, it is
        told once and not counted, as `JackpotEngine._submit` does; left
        alone it would stay in flight for good (no actor answers it, no
        timer watches it), and a close() would wait its whole bound for it.
        A queued one goes on: watched as any other from here (its answer, or
        its actor stopping, settles it when the loop runs again, or the sweep
        of a loop that stopped or closed does).

        `cause`: what cut it short. An ordinary exception there (a task
        factory whose `create_task` raises, say) is no interrupt: its caller
        gets it, and a call withdrawn is told and counted as that error, not
        as a caller interrupted. `resending`: cut short in `_restart` (or on
        its way there), whose task is not the caller's: the caller still
        awaits, and is told that the request was not resent (`_not_resent`).
        """
        ticket = self._ticket
        if ticket is None or ticket.withdraw_unsent():
            if resending:
                self._not_resent(cause)
                return
            self._finished = True
            if _failure(cause):
                self._close_books(None, cause)
            else:
                self._close_books(None, None, withdrawn=True)
        elif self._timer is None:
            self._phase = "queue"
            self._deadline = self._loop.time() + self._engine._queue_timeout  # noqa: SLF001
            self._schedule(min(_LIVENESS_POLL_S, self._engine._queue_timeout))  # noqa: SLF001

    def _not_resent(self, cause: BaseException | None) -> None:
        """Tell the caller its request, withdrawn (nothing changed), was not resent, and why.

        An interrupt: the call is withdrawn (told once, not counted) as when
        the restart task is cancelled, and as the sync engine's caller
        interrupted while the actor is replaced: nothing ran and the engine
        refused nothing, so it is no `rejected` call. (Only this caller gets
        an error, not the interrupt: that went up the loop from another
        task.) An ordinary exception (a task factory whose `create_task`
        raises, say) is no interrupt: the caller is told which it was, and
        the call is told and counted as the error its caller got.
        """
        op = self.op
        if _failure(cause):
            msg = (f"{op.kind} {op.op_id!r} was not resent: {shown(cause)} was raised as the "
                   "event loop resent it; nothing was changed")
            failed = EngineClosedError(msg)
            failed.__cause__ = cause
            self._finish(None, failed)
        elif isinstance(cause, Exception):
            # A signal handler's (a request deadline's TimeoutError): the caller
            # gets it, as it did when it was taken for the call's error, but the
            # call is withdrawn, not counted (nothing ran), as after Ctrl-C.
            self._finish(None, cause, withdrawn=True)
        else:
            msg = (f"{op.kind} {op.op_id!r} was not resent: the event loop was interrupted "
                   "as it resent it; nothing was changed")
            self._finish(None, EngineClosedError(msg), withdrawn=True)

    def _notified(self, ticket: Ticket, result: Any, error: BaseException | None) -> None:
        """Hand the actor's answer to the loop (runs in the actor's thread, never blocks)."""
        self._answers.put(self, ticket, result, error)

    def orphaned(self, ticket: Ticket, result: Any, error: BaseException | None) -> None:
        """Close the books of an answer whose loop has closed (any thread)."""
        if ticket is self._ticket:
            if error is not None and not isinstance(error, Exception):
                error = _stopped_on(error)
            self._close_books(result, error)

    def decided_meanwhile(self) -> None:
        """Close the books of a call whose outcome is decided, its loop stopped (any thread).

        Decided: its answer is there; or the actor that took it has stopped
        without answering (outcome unknown, as the loop, run again, says);
        or, the engine closed, the level's actor stopped before taking it
        (withdrawn here: the loop, run again, could not resend it). Until
        the engine closes, a request still queued is left to the loop: a
        replacement actor may take it, or the loop resend it.
        """
        engine = self._engine
        ticket = self._ticket
        if ticket is None:
            return
        if not ticket.wait(0):
            if ticket.owner is None and not engine._closed:  # noqa: SLF001
                return
            if engine._owner_alive(self.op, ticket):  # noqa: SLF001
                return
        if ticket.wait(0):  # (answered before its actor stopped, maybe): that is the outcome
            self.orphaned(ticket, *ticket.answer)
        elif ticket.owner is None:  # withdrawn by `_owner_alive`
            msg = (f"the actor serving {', '.join(self.op.names)} stopped before taking "
                   f"{self.op.kind} {self.op.op_id!r}, and the engine closed; nothing "
                   "was changed")
            self._close_books(None, EngineClosedError(msg))
        else:
            self._close_books(None, stopped_midway(self.op, closed=engine._closed))  # noqa: SLF001

    def loop_gone(self) -> None:
        """Settle what can be settled of a call whose loop closed before it was answered.

        Its liveness timer died with the loop. An answer already there closes
        its books; a request whose actor has stopped is withdrawn (or, if the
        actor had taken it, reported as of unknown outcome). A request its
        live actor still holds is answered in time (`orphaned`).
        """
        ticket = self._ticket
        if ticket is None:  # between attempts; the restart task died with the loop
            # Its caller went with the loop: withdrawn, as when the task is cancelled.
            msg = f"{self.op.kind} {self.op.op_id!r} was not resent: the event loop closed"
            self._close_books(None, EngineClosedError(msg), withdrawn=True)
        elif ticket.wait(0):
            self.orphaned(ticket, *ticket.answer)
        elif not self._engine._owner_alive(self.op, ticket):  # noqa: SLF001
            if ticket.abandon():
                msg = (f"the actor serving {', '.join(self.op.names)} stopped and the event "
                       f"loop closed before {self.op.kind} {self.op.op_id!r} could be resent; "
                       "nothing was changed")
                self._close_books(None, EngineClosedError(msg))
            else:
                self._close_books(None, stopped_midway(
                    self.op, closed=self._engine._closed))  # noqa: SLF001

    def served(self, ticket: Ticket, result: Any, error: BaseException | None) -> None:
        """Take the actor's answer (on the loop) unless it is stale or already had."""
        if ticket is self._ticket and not self._finished:
            try:
                self._settle(result, error)
            except BaseException as e:
                self._stranded(e)
                raise

    def _stranded(self, cause: BaseException) -> None:
        """Finish a call `cause` (an interrupt or an error) left between attempts, unresent.

        `_actor_stopped` drops the ticket, then starts the restart task: cut
        short in between, nothing would ever check on the call again (no
        ticket, no timer, no task). Told as when the interrupt lands in that
        task (`_send_interrupted`); a task started all the same, its name
        not stored yet, sees the call finished and sends nothing.
        """
        if not self._finished and self._ticket is None and self._restarting is None:
            self._send_interrupted(resending=True, cause=cause)

    def _schedule(self, delay: float) -> None:
        self._timer = self._loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        """Check on a waiting request the way `JackpotEngine._wait` does.

        An interrupt (Ctrl-C in an observer or a log handler, or anywhere in
        a plain `run_until_complete`) that cuts a check short goes up the
        loop; the call is checked again on the loop's next turn, if it runs
        again: a check left halfway (a request withdrawn from a stopped actor
        but not resent) would otherwise leave it, and its caller, waiting
        for good. Taken again, its steps that were taken (a withdrawal, a
        liveness check) come to the same.
        """
        self._timer = None
        try:
            self._check()
        except BaseException as e:
            if not self._finished and self._timer is None and self._ticket is not None:
                # At once after an interrupt; after an error (a raising observer,
                # say), at the usual pace: a check failing every time must not
                # spin the loop.
                with contextlib.suppress(RuntimeError):  # (the loop has closed)
                    self._schedule(_LIVENESS_POLL_S if isinstance(e, Exception) else 0)
            else:
                self._stranded(e)
            raise

    def _check(self) -> None:
        ticket = self._ticket
        if self._finished or ticket is None or self._peeked(ticket):
            return
        now = self._loop.time()
        if not self._engine._owner_alive(self.op, ticket):  # noqa: SLF001 - in either phase
            if self._peeked(ticket):  # answered before it stopped: that is the outcome
                return
            msg = f"the actor serving {', '.join(self.op.names)} has stopped"
            self._actor_stopped(ActorDeadError(msg))
        elif now < self._deadline:
            self._schedule(min(_LIVENESS_POLL_S, self._deadline - now))
        elif self._phase == "run":
            msg = (f"{self.op.kind} {self.op.op_id!r} did not finish within "
                   f"{self._engine._run_timeout:.1f} s after it started; its "  # noqa: SLF001
                   "outcome is unknown: retry with the same op_id to learn it")
            self._finish(None, LockTimeoutError(msg, outcome_unknown=True))
        elif ticket.abandon():
            msg = (f"{self.op.kind} {self.op.op_id!r} was not started within "
                   f"{self._engine.settings.lock_timeout_ms} ms; nothing was changed")
            try:
                after_the_fact(self._engine.stats.add, "lock_timeouts", self.op.kind,
                               ",".join(self.op.names), about=self.op)
            finally:  # withdrawn: an interrupt in an observer must not leave it unfinished
                self._finish(None, LockTimeoutError(msg))
        else:
            # Claimed: it is running, and its own lock waits and retries bound it.
            # Its actor is still watched: one that stops (crashed) never answers.
            self._phase = "run"
            self._deadline = now + self._engine._run_timeout  # noqa: SLF001
            self._schedule(min(_LIVENESS_POLL_S, self._engine._run_timeout))  # noqa: SLF001

    def _peeked(self, ticket: Ticket) -> bool:
        """Settle from the ticket if it holds an outcome already; never blocks."""
        if not ticket.wait(0):
            return False
        self._settle(*ticket.answer)
        return True

    def _settle(self, result: Any, error: BaseException | None) -> None:
        """Act on the actor's answer, whether it came by notify or by peeking."""
        if error is None:
            self._finish(result, None)
        elif not isinstance(error, Exception):
            self._actor_stopped(_stopped_on(error))
        elif isinstance(error, ActorDeadError):
            self._actor_stopped(error)
        else:
            self._finish(None, error)

    def _actor_stopped(self, error: Exception) -> None:
        """Resend once after restarting dead actors, as `_submit_with_restart` does."""
        ticket = self._ticket
        assert ticket is not None
        if not ticket.abandon():  # claimed: it may have been applied
            midway = stopped_midway(self.op, closed=self._engine._closed)  # noqa: SLF001
            midway.__cause__ = error
            self._finish(None, midway)
            return
        try:  # withdrawn, so nothing changed: "closed" is the whole story
            self._engine._check_open()  # noqa: SLF001
        except EngineClosedError as e:
            self._finish(None, e)
            return
        if self._attempt:  # the replacement stopped too, before taking the request
            failed = StorageError(not_restarted_message(self.op))
            failed.__cause__ = error
            self._finish(None, failed)
            return
        self._attempt += 1
        self._ticket = None  # a late answer to the first attempt is ignored
        self._cancel_timer()
        task = self._restarting = self._loop.create_task(self._restart())
        self._owner._tasks.add(task)  # noqa: SLF001
        task.add_done_callback(self._owner._tasks.discard)  # noqa: SLF001
        task.add_done_callback(_retrieved)  # (an interrupt it ended on went up the loop)

    async def _restart(self) -> None:
        try:
            await self._owner._restarter.restart(self.op)  # noqa: SLF001
        except asyncio.CancelledError:
            # Only the loop's shutdown cancels this task (asyncio.run cancels every
            # task, the caller's too): the caller is gone, as the sync engine's
            # caller interrupted while the actor is replaced, and its call is told
            # as that one is: withdrawn (nothing was sent), not counted. The engine
            # refused nothing: counting it "rejected" would say it did.
            msg = f"{self.op.kind} {self.op.op_id!r} was not resent: the event loop shut down"
            self._finish(None, EngineClosedError(msg), withdrawn=True)
            raise
        except Exception as e:  # noqa: BLE001 - reported to the caller
            self._finish(None, e)
            return
        except GeneratorExit:
            # Closed unfinished: the task was destroyed pending, its loop closed
            # under it. No interrupt: the sweep of closed loops tells the call
            # (`loop_gone`), from a thread that may take locks (not a finalizer's).
            raise
        except BaseException as e:
            # An interrupt in this task's step before the resend (as it hands
            # the restart to a thread, or takes its result): nothing was
            # sent, no timer watches the call, and its caller still awaits.
            self._send_interrupted(resending=True, cause=e)
            raise
        if self._finished:
            # Its books were closed meanwhile: an interrupt right after this
            # task was created told the call withdrawn (`_send_interrupted`),
            # and nothing may be sent for it now ("nothing was changed").
            return
        try:
            self._send()
        except BaseException as e:
            self._send_interrupted(resending=True, cause=e)
            raise

    # -- finishing ---------------------------------------------------------------

    def _finish(self, result: Any, error: Exception | None, *, withdrawn: bool = False) -> None:
        """Hand the caller its outcome and close the books (`withdrawn`: see `_report`)."""
        if self._finished:
            return
        self._finished = True
        # The caller resumes in a later callback, so the books are closed before it runs.
        # Once finished, nothing checks on the call again: an interrupt (after a builtin
        # call, such as the future's) that cuts this short must still leave the caller
        # its outcome and the books closed (a timer left is harmless: finished).
        try:
            self._hand_over(result, error)
            self._cancel_timer()
        finally:
            try:
                self._hand_over(result, error)  # (done already, unless cut short above)
            finally:
                self._close_books(result, error, withdrawn=withdrawn)

    def _hand_over(self, result: Any, error: Exception | None) -> None:
        """Give the caller's future its outcome, unless it has one (or was cancelled)."""
        if not self.future.done():
            if error is None:
                self.future.set_result(result)
            else:
                self.future.set_exception(error)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close_books(self, result: Any, error: Exception | None, *,
                     withdrawn: bool = False) -> None:
        """Leave the in-flight count, end the span, log and record the outcome, once."""
        with self._books_lock:
            if self._books:
                return
            self._books = True
        self._answers.untrack(self)
        self._ctx.run(self._report, result, error, withdrawn)

    def _report(self, result: Any, error: Exception | None, withdrawn: bool = False) -> None:
        """As `JackpotEngine._submit` does after its `with` block, in the caller's context.

        `withdrawn`: its sending was interrupted before the request was
        queued (`_send_interrupted`), or its resend cut off with its loop
        (`_restart`, `loop_gone`); it never runs: told once, not counted.
        """
        exc = (None, None, None) if error is None else (type(error), error, error.__traceback__)
        try:
            if self._span is not None:
                self._span.__exit__(*exc)
        finally:
            if self._tracking is not None:
                self._tracking.__exit__(*exc)
        if withdrawn:  # said again if an interrupt cuts it short (as `_tell_interrupted`)
            said = False
            try:
                after_the_fact(log_withdrawn, self.op, about=self.op)
                said = True
            finally:
                if not said:
                    after_the_fact(log_withdrawn, self.op, about=self.op)
            return
        told = ""
        counted: list[bool] = []
        try:
            told = tell_outcome(self.op, result, error)
            count_once(self._engine.stats, self.op.kind, told, self._started, counted)
        finally:
            # An interrupt (Ctrl-C at the start of `outcome_of`, in a log handler,
            # as the count starts) that cuts the telling or the count short: told
            # again, so a win paid is logged as paid at least once, as
            # `JackpotEngine._submit` does; and counted once, even if a second
            # one cuts the retelling short too.
            try:
                if not told:
                    told = tell_outcome(self.op, result, error)
            finally:
                count_once(self._engine.stats, self.op.kind,
                           told or answer_outcome(result, error), self._started, counted)


def _failure(cause: BaseException | None) -> TypeGuard[Exception]:
    """Say whether `cause`, which cut a call's sending short, is an error, not an interrupt.

    An Exception, unless a signal's handler raised it (a request deadline's
    TimeoutError: `raised_by_signal_handler`): that one is an interrupt, as
    KeyboardInterrupt is, and its call is withdrawn if it was not queued.
    """
    return isinstance(cause, Exception) and not raised_by_signal_handler(cause)


async def _in_own_thread(name: str, call: Callable[..., _T], *args: Any) -> _T:
    """Run `call(*args)` in a new thread (in the caller's context) and await its outcome.

    For what must not wait for a thread of the loop's default pool. A
    cancelled caller stops waiting; the call runs to its end.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[_T] = loop.create_future()
    context = contextvars.copy_context()

    def run() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = context.run(call, *args)
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting caller
            error = e
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(_settle, done, result, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await done


def _settle(done: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """Give `done` its outcome (on its loop), unless its awaiting caller was cancelled."""
    if done.done():
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Take a finished future's error, which its outcome books already hold."""
    if not future.cancelled():
        future.exception()


def _stopped_on(error: BaseException) -> ActorDeadError:
    """Report a KeyboardInterrupt or SystemExit that stopped the actor mid-operation."""
    msg = f"the actor stopped on {type(error).__name__} while serving the request"
    dead = ActorDeadError(msg)
    dead.__cause__ = error
    return dead
