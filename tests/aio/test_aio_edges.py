"""AsyncJackpotEngine at its edges: close mid-operation, loops that stop or race, Ctrl-C.

Each test comes from a reviewed defect and fails on the code before its fix.
Where an operation must be in flight the test holds the database write lock
(nothing commits until it lets go); where it must know that something
happened in another thread it waits on an event set by a wrapper.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import apsw
import pytest

import jackpot.engine
from _helpers import crash_after_claiming, crash_once_claimed, in_thread, read_ledger
from jackpot import (
    AsyncJackpotEngine,
    Contribution,
    EngineClosedError,
    JackpotEngine,
    LockTimeoutError,
    Settings,
    StorageError,
    ValidationError,
    serve_metrics,
)
from jackpot.actors import Mailbox, Ticket

from .test_aio import OperationDone, _sent, write_lock

BOTH = ("minor", "major")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "pools.db"


@pytest.fixture
def claimed(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """An event set once an actor has claimed a request (taken it to run)."""
    event = threading.Event()
    real = Ticket.claim

    def claim(self: Ticket, owner: Any) -> bool:
        taken = real(self, owner)
        event.set()
        return taken

    monkeypatch.setattr(Ticket, "claim", claim)
    return event


@pytest.fixture
def pools_seen_dead(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """An event set once a waiting caller checked its actor with every level's actor dead."""
    event = threading.Event()
    real = JackpotEngine._owner_alive

    def owner_alive(self: JackpotEngine, op: Any, ticket: Ticket) -> bool:
        alive = real(self, op, ticket)
        if not any(p.actor_ref.is_alive() for p in self._pools.values()):
            event.set()
        return alive

    monkeypatch.setattr(JackpotEngine, "_owner_alive", owner_alive)
    return event


def _bet_rows(path: Path, op_id: str) -> list[tuple[str, int]]:
    return sorted((r["level"], r["delta"]) for r in read_ledger(path) if r["op_id"] == op_id)


# -- close() while a multi-level operation runs at the coordinator -------------------


def test_close_with_a_timeout_lets_a_running_multi_level_bet_report_its_commit(
        db_path: Path, claimed: threading.Event, pools_seen_dead: threading.Event) -> None:
    """close(timeout) stops the level actors; the coordinator, busy, still commits.

    The caller used to be told "the engine is closed" (a refusal, counted
    "rejected") while the bet committed right after.
    """
    engine = JackpotEngine.open(db_path)
    with write_lock(db_path):
        caller, outcome = in_thread(
            lambda: engine.contribute("10", groups=BOTH, op_id="bet-1"))
        assert claimed.wait(10)  # the coordinator holds it, waiting for the write lock
        engine.close(timeout=0.2)  # gives up on the coordinator, stops the rest
        assert pools_seen_dead.wait(30)  # the caller looked while the coordinator still ran
    caller.join(30)
    assert not caller.is_alive()
    (result,) = outcome
    assert isinstance(result, Contribution), result
    assert not result.replayed
    assert _bet_rows(db_path, "bet-1") == [("major", 30_000), ("minor", 50_000)]
    assert engine.stats.snapshot().get("operations:contribute:ok") == 1
    with JackpotEngine.open(db_path) as again:
        assert again.contribute("10", groups=BOTH, op_id="bet-1").replayed
        assert again.verify().ok


def test_async_close_with_a_timeout_lets_a_running_multi_level_bet_report_its_commit(
        db_path: Path, claimed: threading.Event, pools_seen_dead: threading.Event) -> None:
    async def run() -> None:
        engine = await AsyncJackpotEngine.open(db_path)
        with write_lock(db_path):
            (task,) = await _sent(engine.contribute("10", groups=BOTH, op_id="bet-1"))
            assert await asyncio.to_thread(claimed.wait, 10)
            await engine.close(timeout=0.2)
            assert await asyncio.to_thread(pools_seen_dead.wait, 30)
        result = await task
        assert isinstance(result, Contribution)
        assert not result.replayed
        assert engine.stats.snapshot().get("operations:contribute:ok") == 1

    asyncio.run(run())
    assert _bet_rows(db_path, "bet-1") == [("major", 30_000), ("minor", 50_000)]


def test_an_actor_stopping_after_taking_a_request_says_the_outcome_is_unknown(
        db_path: Path, claimed: threading.Event) -> None:
    """Claimed, then the serving actor is gone: "retry with the same op_id", counted as error."""
    engine = JackpotEngine.open(db_path)
    with write_lock(db_path):
        caller, outcome = in_thread(
            lambda: engine.contribute("10", groups="minor", op_id="bet-1"))
        assert claimed.wait(10)
        engine.close(timeout=0.2)  # the level's actor is left running, then...
        engine._pools["minor"].actor_ref.actor_stopped.set()  # ...looks stopped to the caller
        caller.join(30)
    (error,) = outcome
    assert isinstance(error, EngineClosedError)
    assert error.outcome_unknown
    assert "may have been applied: retry with the same op_id on a new engine" in str(error)
    assert engine.stats.snapshot().get("operations:contribute:error") == 1


class _AnsweredThenStopped:
    """`_owner_alive` for a caller that looks just as its actor answers, then stops.

    The first look after the request was claimed is held until the actor
    has committed it (the write lock let go), answered, and stopped (as
    close(timeout) stops an actor it gave up on): the actor is dead, but
    its answer is there.
    """

    def __init__(self, engine: JackpotEngine, db_path: Path, claimed: threading.Event) -> None:
        self.engine, self.claimed = engine, claimed
        self.real = engine._owner_alive
        self.lock = apsw.Connection(str(db_path))
        self.lock.execute("BEGIN IMMEDIATE")  # nothing commits until the look
        self.looked = False

    def __call__(self, op: Any, ticket: Ticket) -> bool:
        if self.claimed.is_set() and not self.looked:
            self.looked = True
            actor = self.engine._pools["minor"].actor_ref
            actor.stop(block=False)  # after the batch it is running
            self.lock.execute("ROLLBACK")
            assert actor.actor_stopped.wait(30)
        return self.real(op, ticket)


def test_an_answer_there_when_its_actor_is_seen_stopped_is_the_outcome(
        db_path: Path, claimed: threading.Event) -> None:
    """The bet committed and was answered: it is not "may have been applied"."""
    engine = JackpotEngine.open(db_path)
    look = _AnsweredThenStopped(engine, db_path, claimed)
    engine._owner_alive = look  # type: ignore[method-assign]
    try:
        result = engine.contribute("10", groups="minor", op_id="bet-1")
    finally:
        engine.close()
    assert look.looked
    assert isinstance(result, Contribution)
    assert result.versions == {"minor": 2}
    assert engine.stats.snapshot().get("operations:contribute:ok") == 1


def test_an_answer_there_when_its_actor_is_seen_stopped_is_the_async_outcome(
        db_path: Path, claimed: threading.Event) -> None:
    async def run() -> tuple[Contribution, bool]:
        engine = await AsyncJackpotEngine.open(db_path)
        look = _AnsweredThenStopped(engine.sync, db_path, claimed)
        engine.sync._owner_alive = look  # type: ignore[method-assign]
        try:
            result = await engine.contribute("10", groups="minor", op_id="bet-1")
        finally:
            await engine.close()
        assert engine.stats.snapshot().get("operations:contribute:ok") == 1
        return result, look.looked

    result, looked = asyncio.run(run())
    assert looked
    assert isinstance(result, Contribution)
    assert result.versions == {"minor": 2}


@pytest.mark.parametrize("groups", ["minor", BOTH], ids=["level", "coordinator"])
def test_an_async_claimed_request_whose_actor_was_replaced_is_told_at_once(
        db_path: Path, monkeypatch: pytest.MonkeyPatch, groups: str | tuple[str, ...]) -> None:
    """The loop watches the actor that took the request, not the level's current one.

    The actor took the request and crashed; before the loop looked again, a
    thread's call restarted the level. The loop saw the live replacement,
    which never answers a request it did not take, and waited out the whole
    run timeout (here over a minute) to report only that the outcome is
    unknown.
    """
    settings = Settings(lock_timeout_ms=100, max_retry_attempts=2, retry_delay_ms=4000)
    in_run_phase = threading.Event()  # the loop knows the request was taken
    restarted = threading.Event()  # a thread's call replaced the actor
    abandon = Ticket.abandon
    loop_thread = threading.current_thread()

    def watched_abandon(self: Ticket) -> bool:
        withdrawn = abandon(self)
        if not withdrawn and threading.current_thread() is loop_thread:
            in_run_phase.set()
            assert restarted.wait(60)  # the loop looks again only after the restart
        return withdrawn

    def restart(engine: JackpotEngine, first: Any) -> None:
        assert first.actor_stopped.wait(60)  # crashed, the request taken and unanswered
        engine.contribute(Decimal(10), groups=groups, op_id="other")  # restarts it
        restarted.set()

    async def run() -> None:
        async with await AsyncJackpotEngine.open(db_path, settings=settings) as engine:
            sync = engine.sync
            assert sync._run_timeout > 60  # the wait below is a sixth of it
            await engine.contribute(Decimal(10), groups=groups, op_id="before")
            first = (sync._pools[groups] if isinstance(groups, str)
                     else sync._coordinator).actor_ref
            monkeypatch.setattr(Ticket, "abandon", watched_abandon)
            crash_after_claiming(monkeypatch, "claimed", in_run_phase)
            restarter = threading.Thread(target=restart, args=(sync, first), daemon=True)
            restarter.start()
            (call,) = await _sent(engine.contribute(Decimal(10), groups=groups,
                                                    op_id="claimed"))
            done, _ = await asyncio.wait({call}, timeout=10)  # was: only after the run timeout
            assert done == {call}
            error = call.exception()
            assert isinstance(error, EngineClosedError), error  # was: LockTimeoutError
            assert "stopped while running contribute 'claimed'" in str(error)
            assert error.outcome_unknown
            restarter.join(10)
            assert sync.stats.snapshot()["actor_restarts"] == 1
            monkeypatch.undo()
            # Nothing was applied: the same op_id is applied now, once.
            again = await engine.contribute(Decimal(10), groups=groups, op_id="claimed")
            assert not again.replayed
            assert (await engine.verify()).ok

    asyncio.run(run())


# -- answers that reach a loop which then closes without running them ------------------


def _answer_queued(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Return an event set once an answer is queued for its loop (aio's internal hand-over)."""
    from jackpot import aio  # noqa: PLC0415 - the internal hand-over is what is observed

    queued = threading.Event()
    real_put = aio._Answers.put

    def put(self: Any, *args: Any) -> None:
        real_put(self, *args)
        queued.set()

    monkeypatch.setattr(aio._Answers, "put", put)
    return queued


def _engine_with_a_long_run_timeout(db_path: Path) -> AsyncJackpotEngine:
    """Open an engine whose run timeout is over a minute: a wait for it shows as a hang."""
    settings = Settings(lock_timeout_ms=12_000, max_retry_attempts=2, retry_delay_ms=100)
    engine = asyncio.run(AsyncJackpotEngine.open(db_path, settings=settings))
    assert engine.sync._run_timeout > 60  # the waits in the tests are a sixth of it
    return engine


def test_close_sweeps_up_an_answer_stranded_on_a_loop_closed_unrun(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer's `call_soon_threadsafe` is dropped by `loop.close()`: close() must not wait."""
    queued = _answer_queued(monkeypatch)
    engine = asyncio.run(AsyncJackpotEngine.open(db_path))
    loop = asyncio.new_event_loop()

    async def send() -> asyncio.Task[Contribution]:
        (task,) = await _sent(engine.contribute("10", groups="minor", op_id="x"))
        return task

    task = loop.run_until_complete(send())  # the loop stops with the call in flight
    assert queued.wait(30)  # the answer waits for a loop that will never run again
    task.cancel()
    loop.close()
    assert engine.sync._inflight == 1
    engine.sync.close(timeout=20)
    assert engine.sync._inflight == 0
    assert engine.stats.snapshot().get("operations:contribute:ok") == 1


def _close_on_the_thread_of_a_stopped_loop(
        engine: AsyncJackpotEngine, after_the_loop_stopped: Callable[[], None], *,
        sending: contextlib.AbstractContextManager[Any] | None = None,
) -> tuple[int, asyncio.Task[Contribution]]:
    """Stop a loop with a call in flight, then close() the engine on that loop's thread.

    On a new loop in a thread of its own: send contribute("10", groups="minor",
    op_id="x") (inside `sending`, if given) and stop the loop with it in
    flight; run `after_the_loop_stopped`; close() the engine there (the loop
    cannot run meanwhile); run the loop again until the call ends. Return the
    calls in flight as close() began and the call's (done) task.
    """
    closed = threading.Event()
    outcome: list[Any] = []

    async def send() -> asyncio.Task[Contribution]:
        (task,) = await _sent(engine.contribute("10", groups="minor", op_id="x"))
        return task

    def on_the_loops_thread() -> None:
        loop = asyncio.new_event_loop()
        try:
            with sending or contextlib.nullcontext():
                task = loop.run_until_complete(send())  # it stops with the call in flight
            after_the_loop_stopped()
            outcome.append(engine.sync._inflight)
            engine.sync.close()
            closed.set()
            loop.run_until_complete(asyncio.wait({task}))  # the loop runs again
            outcome.append(task)
        finally:
            loop.close()

    thread = threading.Thread(target=on_the_loops_thread, daemon=True)
    thread.start()
    assert closed.wait(10)  # was: only after the run timeout
    thread.join(30)
    assert not thread.is_alive()
    inflight, task = outcome
    return inflight, task


def test_a_sync_close_on_the_thread_of_a_stopped_loop_sweeps_up_its_answered_calls(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop stopped (not closed), its call answered: close() there must not wait for it.

    The answer waits for the loop, which cannot run while its own thread is
    in close(); the sweep took only closed loops' answers, so close() waited
    out the whole run timeout (here over a minute) for the call to leave.
    Its outcome is known: its books are closed, and the caller still gets it
    if the loop runs again.
    """
    queued = _answer_queued(monkeypatch)
    engine = _engine_with_a_long_run_timeout(db_path)

    def answered() -> None:
        assert queued.wait(30)  # answered, the answer waiting for the stopped loop

    inflight, task = _close_on_the_thread_of_a_stopped_loop(
        engine, answered, sending=write_lock(db_path))  # nothing commits while the loop runs
    result = task.result()
    assert inflight == 1
    assert isinstance(result, Contribution)
    assert not result.replayed
    assert engine.sync._inflight == 0
    assert engine.stats.snapshot().get("operations:contribute:ok") == 1
    assert _bet_rows(db_path, "x") == [("minor", 50_000)]


def test_a_sync_close_on_the_thread_of_a_stopped_loop_settles_a_call_its_actor_dropped(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop stopped, its call taken by an actor that crashed: close() must not wait for it.

    Only the loop's liveness check notices that actor, and the loop cannot
    run while close() holds its thread: close() waited out the whole run
    timeout (here over a minute). The outcome is unknown, and known to be.
    """
    engine = _engine_with_a_long_run_timeout(db_path)
    first = engine.sync._pools["minor"].actor_ref
    loop_stopped = threading.Event()
    crash_after_claiming(monkeypatch, "x", loop_stopped)

    def crashed() -> None:
        loop_stopped.set()
        assert first.actor_stopped.wait(60)  # it took the call, then crashed

    inflight, task = _close_on_the_thread_of_a_stopped_loop(engine, crashed)
    error = task.exception()
    assert inflight == 1
    assert isinstance(error, EngineClosedError), error
    assert error.outcome_unknown
    assert "stopped while running contribute 'x'" in str(error)
    assert engine.sync._inflight == 0
    assert engine.stats.snapshot().get("operations:contribute:error") == 1
    assert _bet_rows(db_path, "x") == []


def test_a_sync_close_on_the_thread_of_a_stopped_loop_withdraws_a_call_no_actor_took(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop stopped, its call queued at an actor that crashed: close() must not wait for it.

    Only the loop's liveness check would withdraw and resend it, and the
    loop cannot run while close() holds its thread: close() waited out the
    whole run timeout (here over a minute). The engine is closing, so it is
    never resent: nothing was changed.
    """
    engine = _engine_with_a_long_run_timeout(db_path)
    first = engine.sync._pools["minor"].actor_ref
    loop_stopped = threading.Event()

    def crash_before_taking(self: Mailbox) -> Any:
        assert loop_stopped.wait(60)
        msg = "the actor crashed before taking its requests"
        raise RuntimeError(msg)

    monkeypatch.setattr(Mailbox, "take", crash_before_taking)

    def crashed() -> None:
        loop_stopped.set()
        assert first.actor_stopped.wait(60)  # woken for the call, it crashed

    inflight, task = _close_on_the_thread_of_a_stopped_loop(engine, crashed)
    error = task.exception()
    assert inflight == 1
    assert isinstance(error, EngineClosedError), error
    assert not error.outcome_unknown
    assert engine.sync._inflight == 0
    assert engine.stats.snapshot().get("operations:contribute:rejected") == 1
    assert _bet_rows(db_path, "x") == []


# -- Ctrl-C while the loop hands over a burst of answers --------------------------------


class InterruptOnce(OperationDone):
    """Raises KeyboardInterrupt from the first operation it sees once armed."""

    armed = False

    def on_operation(self, operation: str, outcome: str, seconds: float) -> None:
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt


def test_a_keyboard_interrupt_while_settling_a_burst_strands_no_answer(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jackpot import aio  # noqa: PLC0415 - the internal hand-over is what is observed

    burst = 40
    puts: list[int] = []
    all_queued = threading.Event()
    real_put = aio._Answers.put

    def put(self: Any, *args: Any) -> None:
        real_put(self, *args)
        puts.append(1)
        if len(puts) == burst:
            all_queued.set()

    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(AsyncJackpotEngine.open(db_path))
    interrupt = InterruptOnce()
    engine.stats.observers.append(interrupt)
    monkeypatch.setattr(aio._Answers, "put", put)

    tasks: list[asyncio.Task[Contribution]] = []

    async def burst_then_settle() -> list[Contribution]:
        tasks.extend(await _sent(*(engine.contribute("1", groups="minor", op_id=f"b{i}")
                                   for i in range(burst))))
        assert all_queued.wait(30)  # the loop is held here while every answer queues up
        interrupt.armed = True
        return await settle()

    async def settle() -> list[Contribution]:
        return await asyncio.gather(*tasks)

    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(burst_then_settle())
        answers = engine._answers[loop]
        # The ones not served when Ctrl-C struck are queued again, and the loop
        # is woken for them: no call has to wait for its liveness timer.
        results = loop.run_until_complete(settle())
        assert sorted(r.versions["minor"] for r in results) == list(range(2, burst + 2))
        assert (answers._awake, len(answers._items)) == (False, 0)
        later = loop.run_until_complete(engine.contribute("1", groups="minor", op_id="later"))
        assert later.versions == {"minor": burst + 2}
        assert (answers._awake, len(answers._items)) == (False, 0)
    finally:
        loop.run_until_complete(engine.close())
        loop.close()


# -- several loops in several threads on one engine ----------------------------------


@pytest.fixture
def frequent_switches() -> Iterator[None]:
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # a thread switch at almost every bytecode
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


def test_loops_in_several_threads_share_one_engine(db_path: Path,
                                                   frequent_switches: None) -> None:
    """Each thread runs short `asyncio.run` calls: the per-loop answers map is shared."""
    engine = asyncio.run(AsyncJackpotEngine.open(db_path))
    threads, rounds = 4, 1500
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def worker(w: int) -> None:
        start.wait()
        for i in range(rounds):
            try:
                asyncio.run(engine.contribute("1", groups="minor", op_id=f"{w}-{i}"))
            except BaseException as e:
                errors.append(e)

    pool = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    assert engine.sync.pool("minor").version == 1 + threads * rounds
    asyncio.run(engine.close())


# -- small differences from the threaded engine -----------------------------------------


def test_a_cancelled_caller_of_a_failing_operation_leaves_no_unretrieved_error(
        db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        async with await AsyncJackpotEngine.open(db_path) as engine:
            done = OperationDone()
            engine.stats.observers.append(done)
            with write_lock(db_path):
                (task,) = await _sent(engine.process_win("minor", op_id="w", amount=10**6))
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert await asyncio.to_thread(done.done.wait, 30)
            assert done.outcomes == [("win", "rejected")]
            del task

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(run())
        gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_a_call_on_a_closed_async_engine_is_refused_as_the_threaded_one_is(
        db_path: Path) -> None:
    async def run() -> None:
        engine = await AsyncJackpotEngine.open(db_path)
        await engine.close()
        with pytest.raises(EngineClosedError, match="the engine is closed"):
            await engine.contribute("1", op_id="late")
        assert not {k for k in engine.stats.snapshot() if k.startswith("operations:")}

    asyncio.run(run())
    threaded = JackpotEngine.open(db_path)
    threaded.close()
    with pytest.raises(EngineClosedError, match="the engine is closed"):
        threaded.contribute("1", op_id="late")
    assert not {k for k in threaded.stats.snapshot() if k.startswith("operations:")}


@pytest.mark.parametrize(("path", "groups", "message"), [
    (5, None, "path must be a file path"),
    (5, 5, "path must be a file path"),
    ("pools.db", 5, "groups must be an iterable of GroupConfig objects, not int"),
])
def test_open_refuses_bad_arguments_alike_in_both_apis(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: Any, groups: Any,
        message: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError, match=message):
        JackpotEngine.open(path, groups)
    with pytest.raises(ValidationError, match=message):
        asyncio.run(AsyncJackpotEngine.open(path, groups))
    assert not list(tmp_path.iterdir())  # nothing was created


@pytest.mark.parametrize("engine", ["pools.db", Path("pools.db"), None])
def test_wrapping_something_else_than_an_engine_says_how_to_open_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: Any) -> None:
    # AsyncJackpotEngine("pools.db"), `.open` forgotten, raised AttributeError:
    # 'str' object has no attribute '_attach'.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError, match=(
            r"engine must be a JackpotEngine, not \w+: open a database with "
            r"`await AsyncJackpotEngine.open\(path\)`")):
        AsyncJackpotEngine(engine)
    assert not list(tmp_path.iterdir())  # nothing was created


def test_a_cancelled_open_leaves_no_engine_running(db_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The open goes on in its thread; the engine it opens is closed, not handed to nobody."""
    reached = threading.Event()
    proceed = threading.Event()
    shut = threading.Event()
    opened: list[JackpotEngine] = []
    real_open: Callable[..., JackpotEngine] = JackpotEngine.open

    def slow_open(*args: Any, **kwargs: Any) -> JackpotEngine:
        reached.set()
        assert proceed.wait(30)
        engine = real_open(*args, **kwargs)
        real_close = engine.close

        def close(timeout: float | None = None) -> None:
            real_close(timeout)
            shut.set()

        engine.close = close  # type: ignore[method-assign]
        opened.append(engine)
        return engine

    monkeypatch.setattr(JackpotEngine, "open", slow_open)

    async def run() -> None:
        opening = asyncio.ensure_future(AsyncJackpotEngine.open(db_path))
        assert await asyncio.to_thread(reached.wait, 30)
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        proceed.set()  # the open goes on in its thread, for nobody now

    asyncio.run(run())  # its shut-down waits for the worker thread
    assert shut.wait(30)
    (engine,) = opened
    assert engine._shut
    assert not any(proxy.actor_ref.is_alive() for proxy in engine._pools.values())
    with JackpotEngine.open(db_path) as again:
        assert again.pool("minor").amount == Decimal(100)


def test_a_write_whose_trace_span_fails_is_not_left_tracked(db_path: Path) -> None:
    async def run() -> None:
        engine = await AsyncJackpotEngine.open(db_path)

        def failing_span(_op: Any) -> Any:
            msg = "tracer down"
            raise RuntimeError(msg)

        engine.sync._trace = failing_span  # type: ignore[method-assign]
        for _ in range(3):
            with pytest.raises(RuntimeError, match="tracer down"):
                await engine.contribute("1", groups="minor")
        answers = engine._answers[asyncio.get_running_loop()]
        assert not answers.pending()
        assert engine.sync._inflight == 0
        await engine.close()

    asyncio.run(run())


def test_close_from_an_observer_on_the_loop_does_not_wait_for_that_loops_calls(
        db_path: Path) -> None:
    """An observer (run on the loop) closes the engine while the loop has another call out.

    That call's answer needs the loop the close() blocks: waiting for it
    froze the loop for the engine's longest operation time (over a minute here).
    """
    hang = 30  # seconds: only a hang waits this long
    settings = Settings(lock_timeout_ms=10_000)

    async def run() -> tuple[list[int], list[float], list[Any], bool]:
        engine = await AsyncJackpotEngine.open(db_path, settings=settings)
        assert engine.sync._run_timeout > 2 * hang
        in_flight: list[int] = []
        took: list[float] = []

        class CloseOnFirst:
            def on_event(self, event: str, operation: str, level: str, n: int) -> None:
                pass

            def on_lock_wait(self, lock: str, operation: str, seconds: float) -> None:
                pass

            def on_operation(self, operation: str, outcome: str, seconds: float) -> None:
                if not took:
                    in_flight.append(engine.sync._inflight)
                    started = time.monotonic()
                    engine.sync.close()
                    took.append(time.monotonic() - started)

        engine.stats.observers.append(CloseOnFirst())
        results = await asyncio.gather(engine.contribute("1", groups="minor", op_id="a"),
                                       engine.contribute("1", groups="major", op_id="b"))
        return in_flight, took, list(results), engine.sync._shut

    in_flight, took, results, shut = asyncio.run(run())
    assert in_flight == [1]  # the other call was out when the observer closed
    assert took[0] < hang
    assert shut
    assert [type(r) for r in results] == [Contribution, Contribution]
    assert [r.versions for r in results] == [{"minor": 2}, {"major": 2}]


def test_serve_metrics_serves_an_asyncio_engine(db_path: Path) -> None:
    # Typed for it too: serve_metrics asks only for the engine's stats.
    async def run() -> str:
        engine = await AsyncJackpotEngine.open(db_path)
        try:
            await engine.contribute("1", groups="minor", op_id="b1")
            server, thread = serve_metrics(engine, 0)
            try:
                url = f"http://127.0.0.1:{server.server_port}/metrics"
                with urllib.request.urlopen(url, timeout=5) as response:  # noqa: ASYNC210
                    return str(response.read().decode())
            finally:
                server.shutdown()
                server.server_close()
                thread.join(5)
        finally:
            await engine.close()

    body = asyncio.run(run())
    assert 'jackpot_operations_total{operation="contribute",outcome="ok"} 1.0' in body
    assert 'jackpot_level_version{level="minor"} 2.0' in body


def test_an_asyncio_engine_gives_its_metrics_text(db_path: Path) -> None:
    async def run() -> str:
        async with await AsyncJackpotEngine.open(db_path) as engine:
            await engine.contribute("1", groups="minor", op_id="b1")
            return await engine.metrics_text()

    text = asyncio.run(run())
    assert 'jackpot_operations_total{operation="contribute",outcome="ok"} 1.0' in text
    assert 'jackpot_level_amount{level="minor"} 100.005' in text  # seed 100 + 0.5% of 1


def test_an_operation_that_overran_after_it_started_says_its_outcome_is_unknown(
        db_path: Path, busy_actor: Any) -> None:
    # Taken by the level's actor, which then waits (for the level's guard, held here)
    # longer than the caller waits: the caller cannot say whether it was applied.
    def overrun(engine: JackpotEngine, call: Callable[[], object]) -> Any:
        engine._queue_timeout = engine._run_timeout = 0.2
        caught: list[BaseException] = []

        def first() -> None:
            try:
                call()
            except LockTimeoutError as e:
                caught.append(e)

        thread = busy_actor(engine, "minor", first)
        try:
            thread.join(30)
        finally:
            engine._guards["minor"].lock.release()
        (error,) = caught
        return error

    with JackpotEngine.open(db_path) as engine:
        error = overrun(engine, lambda: engine.contribute("10", groups="minor", op_id="b1"))
        assert error.outcome_unknown is True
        assert "its outcome is unknown: retry with the same op_id" in str(error)
        assert engine.contribute("10", groups="minor", op_id="b1").replayed  # it was applied

    async def run() -> LockTimeoutError:
        engine = await AsyncJackpotEngine.open(db_path)
        loop = asyncio.get_running_loop()
        try:
            def call() -> object:
                return asyncio.run_coroutine_threadsafe(
                    engine.contribute("10", groups="minor", op_id="b2"), loop).result(30)
            error = await asyncio.to_thread(overrun, engine.sync, call)
            assert (await engine.contribute("10", groups="minor", op_id="b2")).replayed
            return error
        finally:
            await engine.close()

    error = asyncio.run(run())
    assert error.outcome_unknown is True
    assert "its outcome is unknown" in str(error)
    # one that never started changed nothing, and says so
    assert LockTimeoutError("x").outcome_unknown is False


def test_wrapping_an_engine_anew_per_request_keeps_no_reference_per_wrapper(
        db_path: Path) -> None:
    # Each wrapper left two dead weak references in the engine (its sweep and
    # its loop-call count) for as long as the engine ran: a server wrapping
    # its engine per request grew by ~600 bytes a request.
    engine = JackpotEngine.open(db_path)
    try:
        async def request(i: int) -> None:
            await AsyncJackpotEngine(engine).contribute(Decimal(1), op_id=f"bet-{i}")

        async def serve() -> None:
            for i in range(50):
                await request(i)

        asyncio.run(serve())
        gc.collect()
        last = AsyncJackpotEngine(engine)
        assert len(engine._sweeps) == 1
        assert len(engine._loop_calls) == 1
        assert engine._loop_calls[0]() == last._calls_of_this_loop
    finally:
        engine.close()


def test_verify_calls_waiting_their_turn_hold_no_thread_of_the_default_pool(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Audits run one at a time (34f9fd0); async ones waiting their turn each
    # held a thread of the loop's default pool, so every other read (and
    # close()) waited behind all of them. Here the audit running holds its
    # thread until the test lets it go: a read must complete meanwhile.
    real_audit = jackpot.engine.audit
    auditing, release = threading.Event(), threading.Event()

    def held_audit(store: Any) -> Any:  # a ledger that takes a while to audit
        auditing.set()
        assert release.wait(60)
        return real_audit(store)

    monkeypatch.setattr(jackpot.engine, "audit", held_audit)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=2))
        engine = await AsyncJackpotEngine.open(db_path)
        try:
            audits = [asyncio.create_task(engine.verify()) for _ in range(3)]
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as waiter:
                assert await loop.run_in_executor(waiter, auditing.wait, 30)
            # One audit runs, two wait their turn: were they holding threads of
            # the default pool (2), this read would wait for the audits, which
            # wait for the test: a timeout.
            pools = await asyncio.wait_for(engine.pools(), 30)
            assert not release.is_set()
            assert set(pools) == {"minor", "major", "mega"}
            release.set()
            assert all(r.ok for r in await asyncio.gather(*audits))
        finally:
            release.set()
            await engine.close()

    asyncio.run(main())



def test_a_verify_cancelled_while_waiting_its_turn_runs_no_audit(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Audits run one at a time, each async one in a thread of its own (not the
    # default pool, where a queued call is dropped once its caller is
    # cancelled). A verify() cancelled while it waited its turn (an admin
    # endpoint's timeout, say) still ran a whole audit afterwards, for nobody:
    # callers that time out and try again piled up audits, each with its own
    # connection and thread, back to back.
    real_audit = jackpot.engine.audit
    audits: list[int] = []
    auditing, release = threading.Event(), threading.Event()

    def held_audit(store: Any) -> Any:  # a ledger that takes a while to audit
        audits.append(1)
        auditing.set()
        assert release.wait(60)
        return real_audit(store)

    monkeypatch.setattr(jackpot.engine, "audit", held_audit)

    def audit_threads_ended() -> None:
        for thread in threading.enumerate():
            if thread.name == "jackpot-verify":
                thread.join(30)
                assert not thread.is_alive()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with await AsyncJackpotEngine.open(db_path) as engine:
            try:
                running = asyncio.create_task(engine.verify())
                assert await loop.run_in_executor(None, auditing.wait, 30)
                waiting = await _sent(*(engine.verify() for _ in range(3)))
                for task in waiting:
                    task.cancel()
                for task in waiting:
                    with pytest.raises(asyncio.CancelledError):
                        await task
            finally:
                release.set()
            assert (await running).ok
            await loop.run_in_executor(None, audit_threads_ended)
            assert len(audits) == 1  # the cancelled ones never started theirs
            assert (await engine.verify()).ok  # a verify asked again runs one
            assert len(audits) == 2

    asyncio.run(main())


_FORK_CALLS = """
import asyncio, os, signal, sys
from decimal import Decimal
from jackpot import AsyncJackpotEngine, EngineClosedError, Settings

async def parent():
    engine = await AsyncJackpotEngine.open(sys.argv[1], settings=Settings(lock_timeout_ms=2_000))
    await engine.contribute(Decimal(10), groups="minor", op_id="before-the-fork")
    engine._answers_lock.acquire()  # a loop's first call in another thread as the process forks
    child = os.fork()
    if child == 0:  # a worker uses the engine it inherited (gunicorn --preload, say)
        signal.alarm(int(sys.argv[2]))  # a hung child ends, and says nothing
        said = []

        async def calls():
            for call in (lambda: engine.contribute(Decimal(10), groups="minor", op_id="child"),
                         lambda: engine.contribute(Decimal(10), op_id="child-3"),
                         lambda: engine.process_win("minor", op_id="child-win"),
                         engine.pools, engine.verify, engine.close):
                try:
                    await call()
                    said.append("ran")
                except EngineClosedError as e:
                    said.append("refused" if f"opened in process {os.getppid()}" in str(e)
                                else str(e))

        asyncio.run(calls())
        print("child", said, flush=True)
        os._exit(0)
    engine._answers_lock.release()
    await asyncio.to_thread(os.waitpid, child, 0)
    after = await engine.contribute(Decimal(10), groups="minor", op_id="after")
    print("parent", after.versions, (await engine.verify()).ok, flush=True)
    await engine.close()

asyncio.run(parent())
"""


def test_async_calls_on_an_engine_inherited_across_fork_are_refused_at_once(
        db_path: Path) -> None:
    # The sync engine refuses these before touching a lock (a fork copies a
    # lock another thread held, held for ever); the asyncio one took its
    # answers' lock first, and the child hung there instead of being refused.
    hang = 30  # seconds: only a hang waits this long
    done = subprocess.run([sys.executable, "-c", _FORK_CALLS, str(db_path), str(hang)],
                          capture_output=True, text=True, timeout=hang * 3, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "child ['refused', 'refused', 'refused', 'refused', 'refused', 'ran']",
        "parent {'minor': 3} True"], done.stderr


def _first_read_stuck(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event,
                                                                  threading.Event]:
    """Make the next read of the pools hang (the storage stops answering) until released.

    Returns (hung, release): `hung` is set as that read starts; setting
    `release` lets it go on.
    """
    real_pools = jackpot.engine.reads.pools
    hung, release = threading.Event(), threading.Event()

    def stuck_pools(reader: Any) -> Any:
        if not hung.is_set():  # the first read: the storage stops answering
            hung.set()
            assert release.wait(60)
        return real_pools(reader)

    monkeypatch.setattr(jackpot.engine.reads, "pools", stuck_pools)
    return hung, release


def test_health_and_close_never_wait_behind_reads_the_storage_does_not_answer(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Reads queue for the reader (one at a time) in the loop's default pool.
    # Behind one the storage does not answer (a frozen mount), they held every
    # thread of that pool, and health() (which is to say "failing" within its
    # probe's bound) and close(timeout) waited there for ever.
    _, release = _first_read_stuck(monkeypatch)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=2))
        engine = await AsyncJackpotEngine.open(db_path)
        real_reading = engine.sync._reading
        entered: list[None] = []
        all_in = threading.Event()

        @contextlib.contextmanager
        def reading() -> Iterator[Any]:
            entered.append(None)
            if len(entered) == 2:  # every thread of the pool is in a read
                all_in.set()
            with real_reading() as reader:
                yield reader

        monkeypatch.setattr(engine.sync, "_reading", reading)
        reads = [asyncio.create_task(engine.pools()) for _ in range(3)]
        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as waiter:
                assert await loop.run_in_executor(waiter, all_in.wait, 30)
            report = await asyncio.wait_for(engine.health(), 30)
            assert report.check("actors").status == "ok"
            await asyncio.wait_for(engine.close(timeout=0.5), 30)
            assert engine.sync._shut
            assert not release.is_set()  # the reads were stuck all along
        finally:
            release.set()
            outcomes = await asyncio.gather(*reads, return_exceptions=True)
            await engine.close()
        assert all(isinstance(o, (dict, EngineClosedError)) for o in outcomes), outcomes

    asyncio.run(main())


def test_a_resend_to_a_replaced_actor_never_waits_behind_reads_the_storage_does_not_answer(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A write whose actor had stopped is resent once the actor is replaced.
    # That restart ran in the loop's default pool, queued behind every read
    # there: behind one the storage does not answer, each read after it holds
    # a thread for its whole lock timeout, and the write (which no timer
    # watches while its actor is replaced) waited for all of them, for as long
    # as reads kept coming. The sync engine's caller restarts it at once.
    hung, release = _first_read_stuck(monkeypatch)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=1))
        engine = await AsyncJackpotEngine.open(db_path)
        reads = [asyncio.create_task(engine.pools()) for _ in range(2)]
        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as waiter:
                assert await loop.run_in_executor(waiter, hung.wait, 30)
            engine.sync._pools["minor"].actor_ref.stop()  # the level's actor crashed
            bet = await asyncio.wait_for(
                engine.contribute("10", groups="minor", op_id="resent"), 30)
            assert (bet.replayed, bet.balances) == (False, {"minor": Decimal("100.05")})
            assert not release.is_set()  # the read was stuck all along
        finally:
            release.set()
            outcomes = await asyncio.gather(*reads, return_exceptions=True)
            await engine.close()
        assert all(isinstance(o, (dict, LockTimeoutError)) for o in outcomes), outcomes

    asyncio.run(main())


def test_an_async_caller_whose_claimed_request_dies_with_its_actor_is_told_at_once(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As `JackpotEngine._wait`: past the queue timeout, the run phase still watches the actor."""

    async def run() -> BaseException:
        engine = await AsyncJackpotEngine.open(db_path, settings=Settings(
            lock_timeout_ms=100, max_retry_attempts=2, retry_delay_ms=1000))
        try:
            assert engine.sync._run_timeout > 10 * engine.sync._queue_timeout
            await engine.contribute("10", groups="minor", op_id="before")
            crash_once_claimed(monkeypatch, engine.sync._guards["minor"])
            try:
                await asyncio.wait_for(
                    engine.contribute("10", groups="minor", op_id="claimed"), 60)
            except Exception as e:
                error: BaseException = e
            else:
                pytest.fail("the crashed actor's request was reported applied")
            monkeypatch.undo()  # the guard's own lock again
            again = await engine.contribute("10", groups="minor", op_id="claimed")
            assert not again.replayed  # nothing had been applied
        finally:
            await engine.close()
        return error

    error = asyncio.run(run())
    assert isinstance(error, EngineClosedError), error  # was: LockTimeoutError, much later
    assert error.outcome_unknown
    assert "stopped while running" in str(error)


@pytest.mark.parametrize("failure", [RuntimeError("can't start new thread"),
                                     KeyboardInterrupt()])
def test_a_restart_thread_that_cannot_start_fails_each_restart_queued_meanwhile(
        monkeypatch: pytest.MonkeyPatch, failure: BaseException) -> None:
    """Two loops ask for restarts at once; the first one's thread cannot start.

    The second saw a restart thread coming and started none: it must be told,
    not wait for ever (it was the one taken off the queue, and the first's own
    restart left queued with no thread); and told as a failed restart of its
    own call, not with the first's exception, whose Ctrl-C set on its future
    ended its loop, in a thread the signal was never meant for.
    """
    from types import SimpleNamespace  # noqa: PLC0415 - this test's alone

    from jackpot import aio  # noqa: PLC0415 - its private restarter, as the engine uses it

    restarter = aio._Restarter(SimpleNamespace())  # type: ignore[arg-type]  # (never restarts)
    first_queued, second_queued = threading.Event(), threading.Event()

    class NoThread:
        def __init__(self, **_kwargs: Any) -> None:
            first_queued.set()  # (made after the first restart was queued)

        def start(self) -> None:
            assert second_queued.wait(30)
            raise failure

    monkeypatch.setattr(aio, "threading", SimpleNamespace(Thread=NoThread))
    errors: list[BaseException] = []

    def op(op_id: str) -> Any:
        return SimpleNamespace(kind="contribute", op_id=op_id, names=("major", "mega"))

    async def ask() -> None:
        done = restarter.restart(op("b2"))
        second_queued.set()
        try:
            await asyncio.wait_for(done, 30)
        except BaseException as e:
            errors.append(e)

    def second() -> None:
        assert first_queued.wait(30)
        asyncio.run(ask())

    other = threading.Thread(target=second)
    other.start()

    async def first() -> None:
        with pytest.raises(type(failure)):
            restarter.restart(op("b1"))

    asyncio.run(first())
    other.join(60)
    assert not other.is_alive()
    assert [str(e) for e in errors] == [
        ("the actor serving major, mega stopped, and its restart was cut short in another "
        f"caller ({type(failure).__name__}) before it began; contribute 'b2' changed "
        "nothing: retry with the same op_id")]
    assert isinstance(errors[0], StorageError)
    assert errors[0].__cause__ is failure
    assert restarter._queue == deque()
    assert restarter._running is False
