"""AsyncJackpotEngine callers that are cancelled or interrupted while their request is out.

The asyncio counterpart of tests/integration/test_interrupts.py: every call is
counted once, as what it was; a request withdrawn before it ran is told once
and not counted; a close() that stops waiting names the calls whose callers
are gone and whose outcomes are not known yet. Threads meet on events.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from _helpers import (
    DEADLINE,
    HANG,
    Gate,
    InterruptOnce,
    deadline_in,
    hearing,
    hold_claims,
    in_thread,
    interrupting_once,
    read_ledger,
)
from jackpot import (
    AsyncJackpotEngine,
    EngineClosedError,
    InsufficientFundsError,
    LockTimeoutError,
    Settings,
    _closing,
)
from jackpot.actors import Mailbox, Ticket
from jackpot.service import Operation

_CLOSE_TIMED_OUT = ("WARNING", ("close() timed out with 1 call still in flight: the actors "
                                "were asked to stop after their work, with no time left to "
                                "wait for that"), None, "close_timeout")
_INTERRUPTED_WITHDRAWN = ("INFO", ("contribute interrupted withdrawn: its caller was "
                                   "interrupted before the request was queued; nothing was "
                                   "changed"), "interrupted", "interrupted")
_WIN_LEFT_UNKNOWN = ("WARNING", ("close() left 1 interrupted call whose outcome was not known "
                                 "yet: win 'win' on minor. Its outcome is logged when it comes, "
                                 "unless the process ends first: resend it with the same op_id "
                                 "to learn it"), None, "close_timeout")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "pools.db"


def _interrupt_put(monkeypatch: pytest.MonkeyPatch, *, queued: bool) -> None:
    """Raise KeyboardInterrupt in the loop's thread as request "interrupted" is queued.

    `queued`: once it is in the mailbox (before its actor is woken), else before.
    """
    put = Mailbox.put

    def interrupted_put(self: Mailbox, ticket: Ticket, op: Operation) -> bool:
        if op.op_id == "interrupted" and not queued:
            raise KeyboardInterrupt
        wake = put(self, ticket, op)
        if op.op_id == "interrupted":
            raise KeyboardInterrupt
        return wake

    monkeypatch.setattr(Mailbox, "put", interrupted_put)


class WinTold:
    """A Stats observer: `told` is set once a win's outcome is counted (any thread)."""

    def __init__(self) -> None:
        self.told = threading.Event()

    def on_event(self, event: str, operation: str, level: str, n: int) -> None:
        pass

    def on_lock_wait(self, lock: str, operation: str, seconds: float) -> None:
        pass

    def on_operation(self, operation: str, outcome: str, seconds: float) -> None:
        if operation == "win":
            self.told.set()


def _counted(engine: AsyncJackpotEngine, kind: str) -> dict[str, int]:
    return {k: v for k, v in engine.stats.snapshot().items()
            if k.startswith(f"operations:{kind}:")}


def test_a_call_interrupted_before_its_request_is_queued_is_told_once_and_not_counted(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt on the loop (a second Ctrl-C under asyncio.run) as the request
    is sent. Before: the call stayed counted in flight for good (a close() waited its whole
    bound for it, then warned of a call still in flight) and was told nowhere."""
    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(AsyncJackpotEngine.open(db_path))
    try:
        _interrupt_put(monkeypatch, queued=False)
        with hearing() as said, pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(engine.contribute("10", groups="minor",
                                                      op_id="interrupted"))
        monkeypatch.undo()
        assert engine.sync._inflight == 0
        assert said == [("INFO", ("contribute interrupted withdrawn: its caller was interrupted "
                                  "before the request was queued; nothing was changed"),
                         "interrupted", "interrupted")]
        after = loop.run_until_complete(engine.contribute("10", groups="minor", op_id="after"))
        assert not after.replayed
        with hearing() as closing:
            engine.sync.close(timeout=0)  # nothing in flight: nothing to wait for or tell
        assert closing == []
        assert _counted(engine, "contribute") == {"operations:contribute:ok": 1}
    finally:
        engine.sync.close()
        loop.close()
    assert [r["op_id"] for r in read_ledger(db_path) if r["kind"] == "contribute"] == ["after"]


def test_a_withdrawal_whose_line_a_second_interrupt_cuts_short_is_still_told_once(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As above, and Ctrl-C lands again in logging as the withdrawal is told (before any
    handler has the line). Before: the line was told nowhere (the sync engine says it
    again, `_tell_interrupted`); a resend cut short by an interrupt, withdrawn the same
    way since, lost its line too where it was said again before."""
    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(AsyncJackpotEngine.open(db_path))
    interrupting = InterruptOnce("interrupted")
    log = logging.getLogger("jackpot")
    try:
        _interrupt_put(monkeypatch, queued=False)
        log.addFilter(interrupting)
        with hearing() as said, pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(engine.contribute("10", groups="minor",
                                                      op_id="interrupted"))
        log.removeFilter(interrupting)
        monkeypatch.undo()
        assert not interrupting.armed  # (the second interrupt landed)
        assert engine.sync._inflight == 0
        assert said == [_INTERRUPTED_WITHDRAWN]
        assert _counted(engine, "contribute") == {}
    finally:
        log.removeFilter(interrupting)
        engine.sync.close()
        loop.close()


def test_a_call_interrupted_once_its_request_is_queued_is_counted_as_what_it_was(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The request goes on; run again, the loop settles it: counted once, as applied.
    (Right before the fix too.)"""
    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(AsyncJackpotEngine.open(db_path))
    try:
        _interrupt_put(monkeypatch, queued=True)
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(engine.contribute("10", groups="minor",
                                                      op_id="interrupted"))
        monkeypatch.undo()
        again = loop.run_until_complete(engine.contribute("10", groups="minor",
                                                          op_id="interrupted"))
        assert again.replayed  # the first one was applied, and has been counted
        engine.sync.close(timeout=HANG)
        assert _counted(engine, "contribute") == {"operations:contribute:ok": 1,
                                                  "operations:contribute:replayed": 1}
    finally:
        engine.sync.close()
        loop.close()


def test_a_signal_handlers_exception_once_a_win_is_queued_tells_the_win_as_paid(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request deadline's TimeoutError (a SIGALRM handler) lands in the loop's thread
    as the win is queued: the caller gets it, the win goes on and is logged and counted
    as paid, as the sync engine tells it. Before: logged "win interrupted failed
    (error): the round took too long" at ERROR and counted an error, the win paid all
    the same (a resend replayed it) and never logged as paid."""
    def deadline(*_: object) -> None:
        msg = "the round took too long"
        raise TimeoutError(msg)

    put = Mailbox.put

    def put_then_alarm(self: Mailbox, ticket: Ticket, op: Operation) -> bool:
        wake = put(self, ticket, op)
        if op.op_id == "interrupted":  # the deadline lands as put returns
            signal.raise_signal(signal.SIGALRM)  # (its handler runs here, on the loop)
        return wake

    before = signal.signal(signal.SIGALRM, deadline)
    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(AsyncJackpotEngine.open(db_path))
    try:
        win = WinTold()
        engine.stats.observers.append(win)
        with hearing() as said:
            monkeypatch.setattr(Mailbox, "put", put_then_alarm)
            with pytest.raises(TimeoutError, match="the round took too long"):
                loop.run_until_complete(engine.process_win("minor", op_id="interrupted",
                                                           winner="p1"))
            monkeypatch.undo()
            # Told on the loop, as its answer comes: the loop runs while this waits.
            assert loop.run_until_complete(asyncio.to_thread(win.told.wait, HANG))
        paid = [m for _, m, op_id, _ in said if op_id == "interrupted"]
        assert paid == ["win on minor: paid 100.000000 to p1 (op interrupted, ok)"], said
        resent = loop.run_until_complete(engine.process_win("minor", op_id="interrupted",
                                                            winner="p1"))
        assert resent.replayed
        assert _counted(engine, "win") == {"operations:win:ok": 1,
                                           "operations:win:replayed": 1}
    finally:
        signal.signal(signal.SIGALRM, before)
        engine.sync.close()
        loop.close()


@pytest.mark.parametrize("where", ["_send", "put"],
                         ids=["before it is sent", "as the mailbox takes it"])
def test_a_signal_handlers_exception_before_a_request_is_queued_withdraws_it_uncounted(
        db_path: Path, where: str) -> None:
    """A request deadline's TimeoutError (a SIGALRM handler) lands in the loop's thread as
    a C call returns before the request is marked queued: withdrawn, told once and not
    counted, as after Ctrl-C there and as the sync engine tells it. Before: logged
    "contribute interrupted failed (error): the round took too long" at ERROR and counted
    an error, though nothing had run; as the mailbox took it, applied all the same."""
    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(AsyncJackpotEngine.open(db_path))
    try:
        call = engine.contribute("10", groups="minor", op_id="interrupted")
        with deadline_in(where) as armed, hearing() as said, \
                pytest.raises(TimeoutError, match=DEADLINE):
            loop.run_until_complete(call)  # (the handler runs on the loop's thread)
        assert not armed  # (the deadline landed)
        assert engine.sync._inflight == 0
        assert said == [_INTERRUPTED_WITHDRAWN]
        resent = loop.run_until_complete(engine.contribute("10", groups="minor",
                                                           op_id="interrupted"))
        assert not resent.replayed  # it had not run
        assert _counted(engine, "contribute") == {"operations:contribute:ok": 1}
    finally:
        engine.sync.close()
        loop.close()


async def _cancel_a_win_once_taken(engine: AsyncJackpotEngine, taken: threading.Event) -> None:
    """Send win "win" on minor and cancel its caller once an actor has taken the request."""
    task = asyncio.ensure_future(engine.process_win("minor", op_id="win", winner="p1"))
    assert await asyncio.to_thread(taken.wait, HANG)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("closing", ["async", "sync"])
def test_a_close_that_stops_waiting_names_the_cancelled_calls_it_leaves_unknown(
        db_path: Path, monkeypatch: pytest.MonkeyPatch, closing: str) -> None:
    """A cancelled caller's win goes on; its outcome is logged on the loop when it comes.
    Before: a close() that stopped waiting only said how many calls were in flight, not
    which ones nobody waits for. The win, once it came, was logged and counted as paid
    (right before too)."""
    async def run() -> list[tuple[str, str, object, object]]:
        engine = await AsyncJackpotEngine.open(db_path)
        await engine.contribute("100", groups="minor", op_id="bet")
        taken, go = hold_claims(monkeypatch)
        win = WinTold()
        engine.stats.observers.append(win)
        try:
            with hearing() as said:
                await _cancel_a_win_once_taken(engine, taken)
                if closing == "async":
                    await engine.close(timeout=0)
                else:
                    await asyncio.to_thread(engine.sync.close, 0)
                closed = list(said)
                go.set()
                # The win comes, and is told on this loop (free while this waits).
                assert await asyncio.to_thread(win.told.wait, HANG)
            assert _counted(engine, "win") == {"operations:win:ok": 1}
            paid = [s for s in said if s[2] == "win"]
            assert len(paid) == 1
            assert paid[0][1].startswith("win on minor: paid ")
            assert paid[0][1].endswith(" to p1 (op win, ok)")
            return closed
        finally:
            go.set()
            await engine.close()

    assert asyncio.run(run()) == [_CLOSE_TIMED_OUT, _WIN_LEFT_UNKNOWN]


@contextmanager
def _a_bet_then_claims_held(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[
        tuple[asyncio.AbstractEventLoop, AsyncJackpotEngine, threading.Event, threading.Event]]:
    """An engine on a loop of its own, a bet on minor, then every claim held (hold_claims):
    (loop, engine, taken, go). On the way out `go` is set, the engine closed, the loop too."""
    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(AsyncJackpotEngine.open(db_path))
    go = threading.Event()
    try:
        loop.run_until_complete(engine.contribute("100", groups="minor", op_id="bet"))
        taken, go = hold_claims(monkeypatch)
        yield loop, engine, taken, go
    finally:
        go.set()
        engine.sync.close()
        if not loop.is_closed():
            loop.close()


def test_a_close_that_stops_waiting_names_the_calls_of_a_loop_that_closed(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop ended by a KeyboardInterrupt, then closed, with a win in flight: nobody awaits
    it; its outcome is logged from the actor's thread when it comes. Before: a close() that
    stopped waiting did not say which call that was."""
    with _a_bet_then_claims_held(db_path, monkeypatch) as (loop, engine, taken, go):
        win = WinTold()
        engine.stats.observers.append(win)

        held: list[asyncio.Task[Any]] = []  # (asyncio holds tasks weakly)

        async def interrupted() -> None:
            held.append(asyncio.ensure_future(engine.process_win("minor", op_id="win",
                                                                   winner="p1")))
            assert await asyncio.to_thread(taken.wait, HANG)
            raise KeyboardInterrupt  # (as Ctrl-C in a plain run_until_complete)

        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(interrupted())
        loop.close()
        with hearing() as said:
            engine.sync.close(timeout=0)
            closed = list(said)
            go.set()
            assert win.told.wait(HANG)  # the win comes, and is told from the actor's thread
        assert closed == [_CLOSE_TIMED_OUT, _WIN_LEFT_UNKNOWN]
        assert _counted(engine, "win") == {"operations:win:ok": 1}
        assert [s[1].startswith("win on minor: paid ") for s in said if s[2] == "win"] == [True]


def test_a_win_whose_caller_is_cancelled_is_logged_and_counted_as_paid(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The asyncio engine was right here before the fix: the win goes on without its
    caller and is told once, as paid, on the loop."""
    async def run() -> None:
        async with await AsyncJackpotEngine.open(db_path) as engine:
            await engine.contribute("100", groups="minor", op_id="bet")
            taken, go = hold_claims(monkeypatch)
            win = WinTold()
            engine.stats.observers.append(win)
            with hearing() as said:
                await _cancel_a_win_once_taken(engine, taken)
                go.set()
                assert await asyncio.to_thread(win.told.wait, HANG)
            monkeypatch.undo()
            resent = await engine.process_win("minor", op_id="win", winner="p1")
            assert resent.replayed
            assert said == [("INFO", f"win on minor: paid {resent.amount} to p1 (op win, ok)",
                             "win", "ok")]
            assert _counted(engine, "win") == {"operations:win:ok": 1,
                                               "operations:win:replayed": 1}

    asyncio.run(run())


def _assert_a_cut_short_resend_is_told_and_leaves_nothing_in_flight(
        db_path: Path, monkeypatch: pytest.MonkeyPatch,
        interrupt: Callable[[AsyncJackpotEngine], None]) -> None:
    """Stop minor's actor, let `interrupt(engine)` patch where a KeyboardInterrupt lands in
    the restart task, and send contribute "interrupted": the interrupt reaches the loop, the
    caller is then told its call was not resent, nothing stays in flight, it is told
    withdrawn once and counted nowhere (as when `asyncio.run`'s shutdown cancels that task;
    before: counted as rejected, a refusal that never happened), and a resend with the same
    op_id is applied afresh."""
    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(AsyncJackpotEngine.open(db_path))
    try:
        engine.sync._pools["minor"].actor_ref.stop()
        interrupt(engine)
        caller = loop.create_task(engine.contribute("10", groups="minor", op_id="interrupted"))
        with hearing() as said:
            with pytest.raises(KeyboardInterrupt):
                loop.run_until_complete(caller)
            monkeypatch.undo()
            with pytest.raises(EngineClosedError) as told:
                loop.run_until_complete(asyncio.wait_for(caller, HANG))  # (only a hang waits)
        assert str(told.value) == ("contribute 'interrupted' was not resent: the event loop "
                                   "was interrupted as it resent it; nothing was changed")
        assert engine.sync._inflight == 0
        assert [s for s in said if s[2] == "interrupted"] == [_INTERRUPTED_WITHDRAWN]
        assert _counted(engine, "contribute") == {}
        after = loop.run_until_complete(engine.contribute("10", groups="minor",
                                                          op_id="interrupted"))
        assert not after.replayed  # the first attempt changed nothing
    finally:
        engine.sync.close()
        loop.close()


def test_a_resend_cut_short_by_an_interrupt_tells_its_caller_and_leaves_nothing_in_flight(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The request was withdrawn from a stopped actor; a KeyboardInterrupt on the loop
    lands as the restart task resends it, before it is queued. Before: the call stayed in
    flight for good and its caller, awaiting in another task, waited for ever."""
    put, puts = Mailbox.put, []

    def interrupted_resend(self: Mailbox, ticket: Ticket, op: Operation) -> bool:
        puts.append(op.op_id)
        if puts == ["interrupted", "interrupted"]:  # the resend, before it is queued
            raise KeyboardInterrupt
        return put(self, ticket, op)

    def interrupt(engine: AsyncJackpotEngine) -> None:
        monkeypatch.setattr(Mailbox, "put", interrupted_resend)

    _assert_a_cut_short_resend_is_told_and_leaves_nothing_in_flight(db_path, monkeypatch,
                                                                    interrupt)


def test_a_resend_cut_short_by_a_deadline_hands_it_its_caller_withdrawn_and_uncounted(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As above, but a request deadline's TimeoutError (a SIGALRM handler's) lands as the
    restart task resends the request, before it is queued: its caller, awaiting in another
    task, gets the TimeoutError; the call is told withdrawn once and counted nowhere.
    Before: logged "contribute interrupted failed (error): the round took too long" at
    ERROR and counted an error, though nothing had run."""
    def deadline(*_: object) -> None:
        msg = "the round took too long"
        raise TimeoutError(msg)

    put, puts = Mailbox.put, []

    def alarmed_resend(self: Mailbox, ticket: Ticket, op: Operation) -> bool:
        puts.append(op.op_id)
        if puts == ["interrupted", "interrupted"]:  # the resend, before it is queued
            signal.raise_signal(signal.SIGALRM)  # (its handler runs here, on the loop)
        return put(self, ticket, op)

    before = signal.signal(signal.SIGALRM, deadline)
    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(AsyncJackpotEngine.open(db_path))
    try:
        engine.sync._pools["minor"].actor_ref.stop()
        monkeypatch.setattr(Mailbox, "put", alarmed_resend)
        with hearing() as said, pytest.raises(TimeoutError, match="the round took too long"):
            loop.run_until_complete(asyncio.wait_for(  # (only a hang waits)
                engine.contribute("10", groups="minor", op_id="interrupted"), HANG))
        monkeypatch.undo()
        assert puts == ["interrupted", "interrupted"]
        assert engine.sync._inflight == 0
        assert [s for s in said if s[2] == "interrupted"] == [_INTERRUPTED_WITHDRAWN]
        assert _counted(engine, "contribute") == {}
        after = loop.run_until_complete(engine.contribute("10", groups="minor",
                                                          op_id="interrupted"))
        assert not after.replayed  # neither attempt changed anything
    finally:
        signal.signal(signal.SIGALRM, before)
        engine.sync.close()
        loop.close()


def test_a_restart_cut_short_by_an_interrupt_tells_its_caller_and_leaves_nothing_in_flight(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As above, but the KeyboardInterrupt lands as the restart task hands the actor's
    restart to a thread, before any resend. Before: only an interrupt in the resend
    itself was caught; this one left the call in flight for good (no ticket, no timer),
    its caller waiting for ever once the loop ran again."""
    def interrupt(engine: AsyncJackpotEngine) -> None:
        def interrupted_restart(restarter: Any, op: Any) -> Any:
            raise KeyboardInterrupt  # (in the restart task's step, on the loop)

        monkeypatch.setattr(type(engine._restarter), "restart", interrupted_restart)

    _assert_a_cut_short_resend_is_told_and_leaves_nothing_in_flight(db_path, monkeypatch,
                                                                    interrupt)


def test_a_call_told_withdrawn_as_its_restart_task_starts_is_not_resent_by_that_task(
        db_path: Path) -> None:
    """The level's actor had stopped: the send found it dead, withdrew the request and
    started the task that restarts the actor and resends it; a KeyboardInterrupt on the loop
    lands right after. The caller's books are closed as withdrawn ("nothing was changed").
    Before: the restart task, run when the loop ran again, resent the request anyway: the
    bet was applied, yet told as withdrawn and counted nowhere."""
    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(AsyncJackpotEngine.open(db_path))
    started: list[asyncio.Task[Any]] = []

    class Interrupting(set[asyncio.Task[Any]]):
        def add(self, task: asyncio.Task[Any]) -> None:
            super().add(task)
            started.append(task)
            if len(started) == 1:
                raise KeyboardInterrupt  # (right after the restart task is created)

    try:
        engine.sync._pools["minor"].actor_ref.stop()
        engine._tasks = Interrupting(engine._tasks)
        with hearing() as said, pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(engine.contribute("10", groups="minor",
                                                      op_id="interrupted"))
        # The loop runs again: the restart task runs to its end.
        loop.run_until_complete(asyncio.wait_for(
            asyncio.gather(*started, return_exceptions=True), HANG))
        assert engine.sync._inflight == 0
        # (The restart itself may be logged inside the block: uvloop, unlike asyncio,
        # runs the rest of a turn's callbacks, the restart task's first step among
        # them, before the interrupt leaves run_until_complete.)
        assert [s for s in said if s[3] != "actor_restart"] == [
            ("INFO", ("contribute interrupted withdrawn: its caller was interrupted "
                      "before the request was queued; nothing was changed"),
             "interrupted", "interrupted")]
        assert _counted(engine, "contribute") == {}
    finally:
        engine.sync.close()
        loop.close()
    assert [r["op_id"] for r in read_ledger(db_path) if r["kind"] == "contribute"] == []


def test_an_interrupt_in_a_log_handler_as_a_win_is_told_does_not_leave_it_uncounted(
        db_path: Path) -> None:
    """Ctrl-C landing in the log handler that writes "paid" (on the loop). Before: the
    win was paid but counted nowhere (no ok, no error); the sync engine counts it."""
    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(AsyncJackpotEngine.open(db_path))

    class Interrupting(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "op_id", None) == "win":
                raise KeyboardInterrupt

    interrupting = Interrupting()
    log = logging.getLogger("jackpot")
    level = log.level
    try:
        loop.run_until_complete(engine.contribute("100", groups="minor", op_id="bet"))
        log.addHandler(interrupting)
        log.setLevel(logging.INFO)
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(engine.process_win("minor", op_id="win", winner="p1"))
        log.removeHandler(interrupting)
        assert engine.sync._inflight == 0
        assert _counted(engine, "win") == {"operations:win:ok": 1}
        resent = loop.run_until_complete(engine.process_win("minor", op_id="win", winner="p1"))
        assert resent.replayed
    finally:
        log.removeHandler(interrupting)
        log.setLevel(level)
        engine.sync.close()
        loop.close()


def test_an_interrupt_in_an_observer_as_a_request_times_out_in_the_queue_leaves_nothing_hanging(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C landing in a stats observer told of the lock timeout, once the request was
    withdrawn from the queue. Before: the call stayed in flight for good (a close() waited
    its whole bound) and its caller, when the loop ran again, waited for ever."""
    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(AsyncJackpotEngine.open(
        db_path, settings=Settings(lock_timeout_ms=200)))

    class Interrupting(WinTold):
        def on_event(self, event: str, operation: str, level: str, n: int) -> None:
            if event == "lock_timeouts":
                raise KeyboardInterrupt

    go = threading.Event()
    try:
        taken, go = threading.Event(), threading.Event()
        claim = Ticket.claim

        def claim_then_hold(self: Ticket, owner: Any) -> bool:
            claimed = claim(self, owner)
            taken.set()
            assert go.wait(HANG)
            return claimed

        # The actor holds "first", claimed (it runs); "queued" waits behind it.
        monkeypatch.setattr(Ticket, "claim", claim_then_hold)
        first = loop.create_task(engine.contribute("10", groups="minor", op_id="first"))
        assert loop.run_until_complete(asyncio.to_thread(taken.wait, HANG))
        engine.stats.observers.append(Interrupting())
        queued = loop.create_task(engine.contribute("10", groups="minor", op_id="queued"))
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(queued)  # its queue timeout comes first
        engine.stats.observers.pop()
        with pytest.raises(LockTimeoutError) as told:
            loop.run_until_complete(asyncio.wait_for(queued, HANG))  # (only a hang waits)
        assert str(told.value) == ("contribute 'queued' was not started within 200 ms; "
                                   "nothing was changed")
        go.set()
        loop.run_until_complete(first)
        assert engine.sync._inflight == 0
        assert _counted(engine, "contribute") == {"operations:contribute:ok": 1,
                                                  "operations:contribute:timeout": 1}
    finally:
        go.set()
        engine.sync.close()
        loop.close()
    assert [r["op_id"] for r in read_ledger(db_path) if r["kind"] == "contribute"] == ["first"]


def test_a_close_that_stops_waiting_names_the_calls_of_a_loop_left_stopped(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run_until_complete` returned (as Ctrl-C ends it) with a win in flight, its task
    pending: its answer waits for the loop to run again. Before: a close() that stopped
    waiting did not say which call that was. Run again, the loop tells it as paid."""
    with _a_bet_then_claims_held(db_path, monkeypatch) as (loop, engine, taken, go):
        task = loop.create_task(engine.process_win("minor", op_id="win", winner="p1"))
        assert loop.run_until_complete(asyncio.to_thread(taken.wait, HANG))
        with hearing() as said:
            engine.sync.close(timeout=0)
            closed = list(said)
            go.set()
            win = loop.run_until_complete(task)
        assert closed == [_CLOSE_TIMED_OUT, _WIN_LEFT_UNKNOWN]
        assert said[2:] == [("INFO", f"win on minor: paid {win.amount} to p1 (op win, ok)",
                             "win", "ok")]
        assert _counted(engine, "win") == {"operations:win:ok": 1}


def _queued_behind_a_stopping_actor(
        loop: asyncio.AbstractEventLoop, engine: AsyncJackpotEngine,
) -> tuple[Gate, asyncio.Task[Any], asyncio.Task[Any]]:
    """Bet 'a' held in minor's batch (until the gate is released), its actor stopping
    once that batch is done, and bet 'b' queued behind it: (gate, a, b).

    Once released, the liveness check finds 'b's actor stopped and withdraws it, to
    restart the actor and resend it."""
    gate = Gate()
    gate.real.acquire()  # as a multi-level batch holding the level would
    engine.sync._guards["minor"].lock = gate  # type: ignore[assignment]
    engine.sync._mailboxes["minor"].claim_more = lambda *_: []  # type: ignore[method-assign]
    first = loop.create_task(engine.contribute("10", groups="minor", op_id="a"))
    assert loop.run_until_complete(asyncio.to_thread(gate.waiting.wait, HANG))
    engine.sync._pools["minor"].actor_ref.stop(block=False)  # it stops once its batch is done
    # 'b' queued before the gate opens: left to the loop's next run, a busy machine
    # had the actor stopped first, 'b' then sent to a restarted actor and never
    # withdrawn (an interrupt meant for its withdrawal struck the test's close()).
    mailbox = engine.sync._mailboxes["minor"]
    put, queued = mailbox.put, threading.Event()

    def put_and_tell(ticket: Any, op: Any) -> bool:
        try:
            return put(ticket, op)
        finally:
            queued.set()

    mailbox.put = put_and_tell  # type: ignore[method-assign]
    second = loop.create_task(engine.contribute("20", groups="minor", op_id="b"))
    assert loop.run_until_complete(asyncio.to_thread(queued.wait, HANG))
    return gate, first, second


def test_an_interrupt_as_a_request_is_withdrawn_from_a_stopped_actor_leaves_nothing_hanging(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The liveness check finds the actor of a queued request stopped and withdraws the
    request; a KeyboardInterrupt lands before it is resent. Before: nothing watched the
    call any more: it stayed in flight for good and its caller, when the loop ran again,
    waited for ever. Now checked again, it is resent and applied once."""
    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(AsyncJackpotEngine.open(db_path))
    try:
        gate, first, queued = _queued_behind_a_stopping_actor(loop, engine)
        check_open = engine.sync._check_open

        def interrupted_once() -> None:  # (called once the request was withdrawn)
            monkeypatch.setattr(engine.sync, "_check_open", check_open)
            raise KeyboardInterrupt

        monkeypatch.setattr(engine.sync, "_check_open", interrupted_once)
        gate.release()
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(queued)
        result = loop.run_until_complete(asyncio.wait_for(queued, HANG))  # (only a hang waits)
        assert (result.replayed, result.contributions) == (False, {"minor": Decimal("0.1")})
        assert loop.run_until_complete(first).contributions == {"minor": Decimal("0.05")}
        assert engine.sync._inflight == 0
        assert _counted(engine, "contribute") == {"operations:contribute:ok": 2}
    finally:
        engine.sync.close()
        loop.close()
    assert [r["op_id"] for r in read_ledger(db_path, "minor")][1:] == ["a", "b"]


def test_an_interrupt_as_a_call_is_finished_still_closes_its_books(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt on the loop as the answered call stops its liveness timer.
    Before: its books stayed open: still counted in flight (for good while the loop
    runs: a close() waited its whole bound), the win neither logged nor counted."""
    from jackpot.aio import _Call  # noqa: PLC0415 - private, this test only

    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(AsyncJackpotEngine.open(db_path))
    try:
        cancel_timer = _Call._cancel_timer

        def interrupted(self: _Call) -> None:
            cancel_timer(self)
            if self.op.op_id == "x":
                raise KeyboardInterrupt

        loop.run_until_complete(engine.contribute("100", groups="minor", op_id="bet"))
        monkeypatch.setattr(_Call, "_cancel_timer", interrupted)
        with hearing() as said:
            caller = loop.create_task(engine.process_win("minor", op_id="x", winner="p1"))
            with pytest.raises(KeyboardInterrupt):
                loop.run_until_complete(caller)
        monkeypatch.undo()
        assert engine.sync._inflight == 0
        assert _counted(engine, "win") == {"operations:win:ok": 1}
        win = loop.run_until_complete(caller)  # its caller gets its result
        assert said == [("INFO", f"win on minor: paid {win.amount} to p1 (op x, ok)", "x", "ok")]
    finally:
        engine.sync.close()
        loop.close()


class _Told(logging.Handler):
    """A log handler: `told` is set once a record of `op_id` is handled (any thread)."""

    def __init__(self, op_id: str) -> None:
        super().__init__()
        self.op_id, self.told = op_id, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "op_id", None) == self.op_id:
            self.told.set()


def _restart_held_until_told(engine: AsyncJackpotEngine, told: _Told,
                             monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Stop minor's actor; hold the restart of the next call resent to it until that call
    is told (`told`). Returns the event set as the restart starts."""
    engine.sync._pools["minor"].actor_ref.stop()
    restart, restarting = engine.sync._restart_before_resending, threading.Event()

    def held_restart(op: Operation) -> None:  # (in the restart task's worker thread)
        restarting.set()
        assert told.told.wait(HANG)  # until the cut-off call is told
        restart(op)

    monkeypatch.setattr(engine.sync, "_restart_before_resending", held_restart)
    return restarting


def test_a_resend_cut_off_by_asyncio_runs_shutdown_is_withdrawn_and_not_counted(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The level's actor had stopped: the request, withdrawn from it, waits in the restart
    task for the replacement when `asyncio.run` ends and cancels every task, its caller's
    too. As the sync engine's caller interrupted in the same spot: told withdrawn once,
    counted nowhere (nothing ran, and the engine refused nothing). Before: counted and
    logged as rejected, a refusal that never happened."""
    opened: list[AsyncJackpotEngine] = []
    told = _Told("interrupted")
    held: list[asyncio.Task[Any]] = []  # (asyncio holds tasks weakly)

    async def main() -> None:
        engine = await AsyncJackpotEngine.open(db_path)
        opened.append(engine)
        restarting = _restart_held_until_told(engine, told, monkeypatch)
        held.append(asyncio.ensure_future(engine.contribute("10", groups="minor",
                                                            op_id="interrupted")))
        assert await asyncio.to_thread(restarting.wait, HANG)
        # Returning, main ends the run: asyncio.run cancels the caller and the restart task.

    log = logging.getLogger("jackpot")
    log.addHandler(told)
    try:
        with hearing() as said:
            asyncio.run(main())
        (engine,) = opened
        monkeypatch.undo()
        assert held[0].cancelled()
        assert engine.sync._inflight == 0
        assert not engine.sync.contribute("10", groups="minor", op_id="interrupted").replayed
    finally:
        log.removeHandler(told)
        for engine in opened:
            engine.sync.close()
    assert [s for s in said if s[2] == "interrupted"] == [
        ("INFO", ("contribute interrupted withdrawn: its caller was interrupted before the "
                  "request was queued; nothing was changed"), "interrupted", "interrupted")]
    assert _counted(engine, "contribute") == {"operations:contribute:ok": 1}


def test_a_resend_whose_loop_closed_under_it_is_withdrawn_and_not_counted(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As above, but the loop is interrupted (Ctrl-C in a plain `run_until_complete`) and
    closed with the restart task pending: a close() sweeps the call up. Its caller went
    with the loop: told withdrawn once, counted nowhere. Before: counted as rejected."""
    told = _Told("interrupted")
    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(AsyncJackpotEngine.open(db_path))
    log = logging.getLogger("jackpot")
    log.addHandler(told)
    try:
        restarting = _restart_held_until_told(engine, told, monkeypatch)
        held: list[asyncio.Task[Any]] = []  # (asyncio holds tasks weakly)

        async def interrupted() -> None:
            held.append(asyncio.ensure_future(engine.contribute("10", groups="minor",
                                                                op_id="interrupted")))
            assert await asyncio.to_thread(restarting.wait, HANG)
            raise KeyboardInterrupt  # (as Ctrl-C in a plain run_until_complete)

        with hearing() as said:
            with pytest.raises(KeyboardInterrupt):
                loop.run_until_complete(interrupted())
            loop.close()
            engine.sync.close(timeout=HANG)  # its sweep settles the call of the closed loop
        assert engine.sync._inflight == 0
    finally:
        log.removeHandler(told)
        engine.sync.close()
        if not loop.is_closed():
            loop.close()
    assert [s for s in said if s[2] == "interrupted"] == [
        ("INFO", ("contribute interrupted withdrawn: its caller was interrupted before the "
                  "request was queued; nothing was changed"), "interrupted", "interrupted")]
    assert _counted(engine, "contribute") == {}
    assert [r["op_id"] for r in read_ledger(db_path) if r["kind"] == "contribute"] == []


def test_a_close_on_a_loops_thread_counts_that_loops_calls_it_names(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """close() runs on the loop's thread (a coroutine, an observer, a log handler on it)
    with a call of that loop whose caller was cancelled and a call of another thread, both
    held by their actors. It cannot wait for the loop's call (the loop waits for it); when
    it stops waiting, both are still in flight. Before: "1 call still in flight", though it
    named the loop's call, which that count left out."""
    async def run() -> list[tuple[str, str, object, object]]:
        engine = await AsyncJackpotEngine.open(db_path)
        await engine.contribute("100", groups="minor", op_id="bet")
        claims: list[Ticket] = []
        both_taken, go = threading.Event(), threading.Event()
        claim = Ticket.claim

        def held_claim(self: Ticket, owner: Any) -> bool:
            claims.append(self)
            if len(claims) == 2:
                both_taken.set()
            assert go.wait(HANG)
            return claim(self, owner)

        monkeypatch.setattr(Ticket, "claim", held_claim)
        win = WinTold()
        engine.stats.observers.append(win)
        other, _ = in_thread(lambda: engine.sync.contribute("10", groups="major", op_id="other"))
        try:
            task = asyncio.ensure_future(engine.process_win("minor", op_id="win", winner="p1"))
            assert await asyncio.to_thread(both_taken.wait, HANG)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            with hearing() as said:
                engine.sync.close(timeout=0)  # on the loop's thread
            go.set()
            assert await asyncio.to_thread(win.told.wait, HANG)  # told on this loop
            other.join(HANG)
            assert not other.is_alive()
            assert _counted(engine, "win") == {"operations:win:ok": 1}
            return said
        finally:
            go.set()
            await engine.close()

    assert asyncio.run(run()) == [
        ("WARNING", ("close() timed out with 2 calls still in flight: the actors were asked "
                     "to stop after their work, with no time left to wait for that"),
         None, "close_timeout"),
        _WIN_LEFT_UNKNOWN]


def test_an_interrupt_as_a_refusal_is_classified_on_the_loop_counts_and_logs_it(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C lands at the start of `outcome_of` as the loop closes a refused call's books
    (CPython runs a pending signal's handler at a Python call). Before: the call was
    neither logged nor counted, its books closed all the same."""
    from jackpot import aio as aio_module  # noqa: PLC0415 - their module globals, patched
    from jackpot import engine as engine_module  # noqa: PLC0415

    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(AsyncJackpotEngine.open(db_path))
    try:
        interrupted, armed = interrupting_once(engine_module.outcome_of)
        monkeypatch.setattr(engine_module, "outcome_of", interrupted)
        monkeypatch.setattr(aio_module, "outcome_of", interrupted, raising=False)
        with hearing() as said:
            caller = loop.create_task(engine.process_win("minor", op_id="win", amount="1000"))
            with pytest.raises(KeyboardInterrupt):
                loop.run_until_complete(caller)
            monkeypatch.undo()
            with pytest.raises(InsufficientFundsError) as refused:
                loop.run_until_complete(caller)  # its caller gets its refusal
        assert not armed  # (the interrupt landed)
        assert engine.sync._inflight == 0
        assert said == [("INFO", f"win win failed (rejected): {refused.value}", "win",
                         "rejected")]
        assert _counted(engine, "win") == {"operations:win:rejected": 1}
    finally:
        engine.sync.close()
        loop.close()


def test_an_interrupt_as_a_paid_win_is_logged_on_the_loop_still_logs_it_as_paid(
        db_path: Path) -> None:
    """Ctrl-C lands in logging as the loop writes the "paid" line (before any handler has
    it). Before: counted ok, but the operator's record of the money paid never written."""
    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(AsyncJackpotEngine.open(db_path))
    interrupting = InterruptOnce("win")
    log = logging.getLogger("jackpot")
    try:
        loop.run_until_complete(engine.contribute("100", groups="minor", op_id="bet"))
        log.addFilter(interrupting)
        with hearing() as said:
            caller = loop.create_task(engine.process_win("minor", op_id="win", winner="p1"))
            with pytest.raises(KeyboardInterrupt):
                loop.run_until_complete(caller)
            log.removeFilter(interrupting)
            win = loop.run_until_complete(caller)  # its caller gets its result
        assert not interrupting.armed  # (the interrupt landed)
        assert engine.sync._inflight == 0
        assert said == [("INFO", f"win on minor: paid {win.amount} to p1 (op win, ok)",
                         "win", "ok")]
        assert _counted(engine, "win") == {"operations:win:ok": 1}
    finally:
        log.removeFilter(interrupting)
        engine.sync.close()
        loop.close()


@pytest.mark.parametrize("where", ["before", "after"])
def test_an_interrupt_as_a_call_hands_its_caller_the_outcome_still_closes_its_books(
        db_path: Path, where: str) -> None:
    """Ctrl-C lands on the loop right before or after the call's future gets its result
    (after a builtin call, where CPython runs a pending signal's handler). Before: the
    call, marked finished, had its books left open: in flight for good (a close() waited
    its whole bound), the win neither logged nor counted; and, cut short before, its
    caller never got its result."""
    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(AsyncJackpotEngine.open(db_path))
    armed = [True]

    class Interrupting(asyncio.Future[Any]):  # the call's future
        def set_result(self, result: Any) -> None:
            if where == "before" and armed:
                armed.pop()
                raise KeyboardInterrupt
            super().set_result(result)
            if armed:
                armed.pop()
                raise KeyboardInterrupt

    create_future = loop.create_future
    made: list[asyncio.Future[Any]] = []

    def first_interrupting() -> asyncio.Future[Any]:
        made.append(Interrupting(loop=loop) if not made else create_future())
        return made[-1]

    try:
        loop.run_until_complete(engine.contribute("100", groups="minor", op_id="bet"))
        with hearing() as said:
            loop.create_future = first_interrupting  # type: ignore[method-assign]
            caller = loop.create_task(engine.process_win("minor", op_id="win", winner="p1"))
            with pytest.raises(KeyboardInterrupt):
                loop.run_until_complete(caller)
            del loop.create_future
            assert not armed  # (the interrupt landed)
            assert engine.sync._inflight == 0
            assert _counted(engine, "win") == {"operations:win:ok": 1}
            win = loop.run_until_complete(asyncio.wait_for(caller, HANG))  # (only a hang waits)
        assert said == [("INFO", f"win on minor: paid {win.amount} to p1 (op win, ok)",
                         "win", "ok")]
    finally:
        engine.sync.close()
        loop.close()


def test_an_interrupt_as_a_restart_task_is_started_leaves_no_call_hanging(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The liveness check finds the actor of a queued request stopped, withdraws it and
    drops its ticket to start the task that restarts the actor and resends it; a
    KeyboardInterrupt on the loop lands in between. Its caller, awaiting in another task,
    is told it was not resent (as when the interrupt lands in that task), and the call is
    told withdrawn and counted nowhere (before this, counted as rejected). Before that: no
    ticket, no timer, no task: the call stayed in flight for good and its caller, when
    the loop ran again, waited for ever."""
    from jackpot.aio import _Call  # noqa: PLC0415 - private, this test only

    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(AsyncJackpotEngine.open(db_path))
    try:
        gate, first, queued = _queued_behind_a_stopping_actor(loop, engine)
        cancel_timer, armed = _Call._cancel_timer, [True]

        def interrupted(self: _Call) -> None:  # (in `_actor_stopped`, its ticket dropped)
            if armed and self.op.op_id == "b" and self._ticket is None:
                armed.pop()
                raise KeyboardInterrupt
            cancel_timer(self)

        monkeypatch.setattr(_Call, "_cancel_timer", interrupted)
        gate.release()
        with hearing() as said:
            with pytest.raises(KeyboardInterrupt):
                loop.run_until_complete(queued)
            monkeypatch.undo()
            assert not armed  # (the interrupt landed)
            with pytest.raises(EngineClosedError) as told:
                loop.run_until_complete(asyncio.wait_for(queued, HANG))  # (only a hang waits)
        assert str(told.value) == ("contribute 'b' was not resent: the event loop was "
                                   "interrupted as it resent it; nothing was changed")
        assert loop.run_until_complete(first).contributions == {"minor": Decimal("0.05")}
        assert engine.sync._inflight == 0
        assert [s for s in said if s[2] == "b"] == [(
            "INFO", ("contribute b withdrawn: its caller was interrupted before the request "
                     "was queued; nothing was changed"), "b", "interrupted")]
        assert _counted(engine, "contribute") == {"operations:contribute:ok": 1}
    finally:
        engine.sync.close()
        loop.close()
    assert [r["op_id"] for r in read_ledger(db_path, "minor")][1:] == ["a"]


def _refusing_restart_tasks(refused: Exception) -> Callable[..., asyncio.Task[Any]]:
    """A task factory that raises `refused` for a call's restart task (and makes the rest)."""
    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        if getattr(coro, "__qualname__", "") == "_Call._restart":
            coro.close()  # (never to run)
            raise refused
        return asyncio.Task(coro, loop=loop, **kwargs)
    return factory


def test_a_restart_task_the_loop_cannot_create_tells_its_caller_what_happened(
        db_path: Path) -> None:
    """As above, but no interrupt: the loop's task factory raises as the restart task is
    created. The caller is told what was raised. Before: told "the event loop was
    interrupted as it resent it", which it was not."""
    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(AsyncJackpotEngine.open(db_path))
    refused = RuntimeError("no task for that")
    factory = _refusing_restart_tasks(refused)

    try:
        gate, first, queued = _queued_behind_a_stopping_actor(loop, engine)
        loop.set_task_factory(factory)
        gate.release()
        with hearing() as said, pytest.raises(EngineClosedError) as told:
            loop.run_until_complete(asyncio.wait_for(queued, HANG))  # (only a hang waits)
        assert str(told.value) == ("contribute 'b' was not resent: RuntimeError('no task for "
                                   "that') was raised as the event loop resent it; nothing was "
                                   "changed")
        assert told.value.__cause__ is refused
        assert loop.run_until_complete(first).contributions == {"minor": Decimal("0.05")}
        assert engine.sync._inflight == 0
        assert [s for s in said if s[2] == "b"] == [
            ("INFO", f"contribute b failed (rejected): {told.value}", "b", "rejected")]
        assert _counted(engine, "contribute") == {"operations:contribute:ok": 1,
                                                  "operations:contribute:rejected": 1}
    finally:
        loop.set_task_factory(None)
        engine.sync.close()
        loop.close()
    assert [r["op_id"] for r in read_ledger(db_path, "minor")][1:] == ["a"]


def test_a_restart_task_the_loop_cannot_create_as_a_call_starts_is_told_as_its_error(
        db_path: Path) -> None:
    """As above, but the call finds its level's actor stopped as it is first sent: the
    exception reaches its caller as it starts, and the call is told and counted as that
    error. Before: told withdrawn because "its caller was interrupted" (it was not), and
    counted nowhere."""
    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(AsyncJackpotEngine.open(db_path))
    refused = RuntimeError("no task for that")
    factory = _refusing_restart_tasks(refused)

    try:
        engine.sync._pools["minor"].actor_ref.stop()
        loop.set_task_factory(factory)
        with hearing() as said, pytest.raises(RuntimeError) as raised:
            loop.run_until_complete(engine.contribute("10", groups="minor", op_id="b"))
        assert raised.value is refused
        assert engine.sync._inflight == 0
        assert [s for s in said if s[2] == "b"] == [
            ("ERROR", "contribute b failed (error): no task for that", "b", "error")]
        assert _counted(engine, "contribute") == {"operations:contribute:error": 1}
    finally:
        loop.set_task_factory(None)
        engine.sync.close()
        loop.close()
    assert [r["op_id"] for r in read_ledger(db_path, "minor")][1:] == []


@pytest.mark.parametrize("where", ["as it is counted in flight", "as it is tracked"])
def test_an_interrupt_as_a_call_starts_on_the_loop_does_not_leave_it_in_flight(
        db_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """A KeyboardInterrupt on the loop as the call starts: right after it is counted in
    flight (after the builtin `next()` in a generator context manager's entry, where CPython
    runs a pending signal's handler), or as it is tracked for its loop. Before: counted in
    flight for good, never sent nor told (every close() waited its whole bound)."""
    import contextlib as contextlib_module  # noqa: PLC0415 - its class, patched

    from jackpot.aio import _Answers  # noqa: PLC0415 - private, this test only

    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(AsyncJackpotEngine.open(db_path))
    armed = [True]
    if where == "as it is tracked":
        track = _Answers.track

        def interrupted_track(self: _Answers, call: Any) -> None:
            if armed:
                armed.pop()
                raise KeyboardInterrupt
            track(self, call)

        monkeypatch.setattr(_Answers, "track", interrupted_track)
    else:
        enter = contextlib_module._GeneratorContextManager.__enter__

        def interrupted_enter(self: Any) -> Any:
            entered = enter(self)
            if armed and self.gen.gi_code.co_name == "_tracking":  # the engine's count
                armed.pop()
                raise KeyboardInterrupt
            return entered

        monkeypatch.setattr(contextlib_module._GeneratorContextManager, "__enter__",
                            interrupted_enter)
    try:
        # (Since the fix, no generator context manager counts the call: no interrupt there.)
        with hearing() as said, contextlib_module.suppress(KeyboardInterrupt):
            loop.run_until_complete(engine.contribute("10", groups="minor",
                                                      op_id="interrupted"))
        monkeypatch.undo()
        assert engine.sync._inflight == 0
        told = [s for s in said if s[2] == "interrupted"]
        if armed:  # the call went through
            assert _counted(engine, "contribute") == {"operations:contribute:ok": 1}
        else:
            assert told == [("INFO", ("contribute interrupted withdrawn: its caller was "
                                      "interrupted before the request was queued; nothing "
                                      "was changed"), "interrupted", "interrupted")]
            assert _counted(engine, "contribute") == {}
    finally:
        engine.sync.close(timeout=HANG)
        loop.close()


@pytest.mark.parametrize("interrupt", ["Ctrl-C", "deadline"])
def test_an_interrupt_as_a_calls_trace_span_opens_tells_it_withdrawn_and_ends_the_span(
        db_path: Path, monkeypatch: pytest.MonkeyPatch, interrupt: str) -> None:
    """A KeyboardInterrupt on the loop right after the call's trace span opened (after the
    builtin `Context.run`), before anything was sent. As the sync engine does for its
    caller interrupted there: told withdrawn once, not counted, its span ended. Before:
    told nowhere, and the span left open for good. A request deadline's TimeoutError (a
    SIGALRM handler's) there is told so too; before, it was logged "failed (error)" and
    counted an error, though nothing had run."""
    from jackpot.aio import _Call  # noqa: PLC0415 - private, this test only

    def deadline(*_: object) -> None:
        msg = "the round took too long"
        raise TimeoutError(msg)

    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(AsyncJackpotEngine.open(db_path))
    spans: list[str] = []

    @contextmanager
    def recorded(op: Operation) -> Iterator[None]:
        spans.append(f"open {op.op_id}")
        try:
            yield
        finally:
            spans.append(f"end {op.op_id}")

    enter_span, armed = _Call._enter_span, [True]

    def interrupted(self: _Call) -> None:
        enter_span(self)
        if armed:
            armed.pop()
            if interrupt == "deadline":
                signal.raise_signal(signal.SIGALRM)  # (its handler runs here, on the loop)
            raise KeyboardInterrupt

    before = signal.signal(signal.SIGALRM, deadline)
    try:
        engine.sync._trace = recorded  # type: ignore[method-assign]
        monkeypatch.setattr(_Call, "_enter_span", interrupted)
        with hearing() as said, pytest.raises(
                KeyboardInterrupt if interrupt == "Ctrl-C" else TimeoutError):
            loop.run_until_complete(engine.contribute("10", groups="minor",
                                                      op_id="interrupted"))
        assert not armed  # (the interrupt landed)
        assert engine.sync._inflight == 0
        assert spans == ["open interrupted", "end interrupted"]
        assert said == [("INFO", ("contribute interrupted withdrawn: its caller was interrupted "
                                  "before the request was queued; nothing was changed"),
                         "interrupted", "interrupted")]
        assert _counted(engine, "contribute") == {}
    finally:
        signal.signal(signal.SIGALRM, before)
        engine.sync.close()
        loop.close()


def test_an_interrupt_as_a_paid_win_is_counted_on_the_loop_still_counts_it(
        db_path: Path) -> None:
    """Ctrl-C lands at the start of the call's count on the loop, its "paid" line
    written. Before: counted nowhere, its books closed all the same."""
    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(AsyncJackpotEngine.open(db_path))
    try:
        loop.run_until_complete(engine.contribute("100", groups="minor", op_id="bet"))
        interrupted, armed = interrupting_once(engine.stats.operation)
        engine.stats.operation = interrupted  # type: ignore[method-assign]
        with hearing() as said:
            caller = loop.create_task(engine.process_win("minor", op_id="win", winner="p1"))
            with pytest.raises(KeyboardInterrupt):
                loop.run_until_complete(caller)
            del engine.stats.operation
            loop.run_until_complete(caller)
        assert not armed  # (the interrupt landed)
        assert engine.sync._inflight == 0
        assert [s[1].startswith("win on minor: paid ") for s in said] == [True]
        assert _counted(engine, "win") == {"operations:win:ok": 1}
    finally:
        engine.sync.close()
        loop.close()


def test_a_resend_whose_engine_closes_while_its_restart_waits_is_told_closed(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The level's actor had stopped; the withdrawn request waits for its restart when a
    close() begins (a restart queued behind others, or not yet run). The restart then
    starts nothing (the engine is closed) and the call is told so: EngineClosedError,
    nothing changed. Before: the closed engine's refusal was taken for a replacement that
    could not start, an ERROR ("could not start") and a StorageError in its place."""
    closing = threading.Event()
    await_inflight = _closing._await_inflight

    def seen_closed(engine: Any, wait_limit: float) -> int:  # (after `_closed` is set)
        closing.set()
        return await_inflight(engine, wait_limit)

    monkeypatch.setattr(_closing, "_await_inflight", seen_closed)

    async def main() -> BaseException | None:
        engine = await AsyncJackpotEngine.open(db_path)
        engine.sync._pools["minor"].actor_ref.stop()
        restart, restarting = engine.sync._restart_before_resending, threading.Event()

        def held_restart(op: Operation) -> None:  # (in the restart thread)
            restarting.set()
            assert closing.wait(HANG)  # the close() has begun: calls are refused
            restart(op)

        monkeypatch.setattr(engine.sync, "_restart_before_resending", held_restart)
        call = asyncio.ensure_future(engine.contribute("10", groups="minor", op_id="late"))
        assert await asyncio.to_thread(restarting.wait, HANG)
        closer = asyncio.ensure_future(engine.close())
        try:
            await call
        except BaseException as e:  # (the outcome examined below)
            outcome: BaseException | None = e
        else:
            outcome = None
        await closer
        return outcome

    with hearing() as said:
        outcome = asyncio.run(main())
    assert isinstance(outcome, EngineClosedError), repr(outcome)
    assert [s for s in said if s[0] == "ERROR"] == []
    assert [s for s in said if s[2] == "late"] == [
        ("INFO", "contribute late failed (rejected): the engine is closed; open a new one to go on",
         "late", "rejected")]


class _InterruptedOnRelease:
    """A lock whose first release is followed by a KeyboardInterrupt (Ctrl-C landing as it
    is released: the signal handler runs between two bytecodes)."""

    def __init__(self) -> None:
        self._lock, self.armed = threading.Lock(), True

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *_exc: object) -> None:
        self._lock.release()
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt


def test_a_restart_queued_as_an_interrupt_lands_does_not_strand_the_restarts_after_it(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The restart of a stopped actor is queued for the engine's restart thread, and a
    KeyboardInterrupt lands before that thread is started. The caller is told withdrawn;
    a later call that finds the actor stopped still gets it restarted and is applied.
    Before: the restarter was left marked running with no thread: each later restart
    waited in its queue for ever, and so did every write resent after one."""
    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(AsyncJackpotEngine.open(db_path))
    try:
        engine.sync._pools["minor"].actor_ref.stop()
        monkeypatch.setattr(engine._restarter, "_lock", _InterruptedOnRelease())
        caller = loop.create_task(engine.contribute("10", groups="minor", op_id="interrupted"))
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(caller)
        with pytest.raises(EngineClosedError, match="was not resent"):
            loop.run_until_complete(asyncio.wait_for(caller, HANG))  # (only a hang waits)
        assert engine.sync._inflight == 0
        after = loop.run_until_complete(asyncio.wait_for(  # (only a hang waits)
            engine.contribute("10", groups="minor", op_id="after"), HANG))
        assert not after.replayed
        assert engine.sync._pools["minor"].actor_ref.is_alive()
        assert not engine._restarter._queue
    finally:
        engine.sync.close()
        loop.close()
