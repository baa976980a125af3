"""A caller interrupted while it waits (Ctrl-C, SystemExit or another exception from a signal handler).

The interrupt reaches the caller; the request it had queued goes on and its
real outcome is logged and counted once known, as the asyncio engine does for
a cancelled caller. Each test runs a process of its own, sends it a real
signal while its main thread waits inside the engine, and fails on the code
before the fix.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from _helpers import (
    HANG,
    InterruptOnce,
    hearing,
    hold_claims,
    in_thread,
    interrupting_once,
    run_python,
)
from jackpot import JackpotEngine, Settings, Win
from jackpot.actors import Mailbox, Ticket
from jackpot.service import Operation

_INTERRUPTED_WIN = """
import logging, os, signal, sys, threading
from decimal import Decimal
import jackpot.actors.pool as pool
from jackpot import JackpotEngine

said = []
class Said(logging.Handler):
    def emit(self, record):
        said.append(record.getMessage())
log = logging.getLogger("jackpot")
log.addHandler(Said())
log.setLevel(logging.INFO)
if sys.argv[2] == "SIGTERM":  # a server whose SIGTERM handler exits
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
elif sys.argv[2] == "SIGALRM":  # a request deadline (signal.setitimer), an Exception
    def deadline(*_):
        raise TimeoutError("the round took too long")
    signal.signal(signal.SIGALRM, deadline)
else:  # Ctrl-C as Python takes it, even if this test runs with SIGINT ignored (a background job)
    signal.signal(signal.SIGINT, signal.default_int_handler)
engine = JackpotEngine.open(sys.argv[1])
engine.contribute(Decimal(100), groups="minor", op_id="bet")
entered, go = threading.Event(), threading.Event()
run = pool.execute_batch
def held(*args, **kwargs):  # the win's batch waits until its caller was interrupted
    entered.set()
    assert go.wait(60)
    return run(*args, **kwargs)
pool.execute_batch = held
def interrupt():
    assert entered.wait(60)
    os.kill(os.getpid(), getattr(signal, sys.argv[2]))
threading.Thread(target=interrupt).start()
try:
    engine.process_win("minor", op_id="win", winner="p1")
except (KeyboardInterrupt, SystemExit, TimeoutError) as e:
    print("interrupted", type(e).__name__)
go.set()
engine.close()
stats = engine.stats.snapshot()
print(stats.get("operations:win:ok"), stats.get("operations:win:error"))
print([m for m in said if m.startswith("win on minor")])
"""


@pytest.mark.parametrize(("sig", "raised"), [("SIGINT", "KeyboardInterrupt"),
                                             ("SIGTERM", "SystemExit"),
                                             ("SIGALRM", "TimeoutError")])
def test_a_win_whose_caller_is_interrupted_is_logged_and_counted_as_paid(
        db_path: Path, sig: str, raised: str) -> None:
    """Before: counted as an error (health's error rate) and never logged as paid.

    A handler's own exception (TimeoutError from a request deadline) was
    logged "win win failed (error): the round took too long" although paid.
    """
    JackpotEngine.open(db_path).close()
    done = run_python(_INTERRUPTED_WIN, str(db_path), sig, timeout=120)
    assert done.returncode == 0, done.stderr
    with JackpotEngine.open(db_path) as engine:
        resent = engine.process_win("minor", op_id="win", winner="p1")
        assert resent.replayed
        assert engine.verify().ok
    assert done.stdout.splitlines() == [
        f"interrupted {raised}", "1 None",
        f"['win on minor: paid {resent.amount} to p1 (op win, ok)']"], done.stderr
    assert resent.amount > Decimal(0)


_CLOSED_BY_A_SIGNAL_HANDLER_MID_READ = """
import os, signal, sys
import apsw
from jackpot import JackpotEngine, Settings, Win
# A long lock timeout: a close() that waited for the read it interrupted
# would stall for minutes (its whole run timeout), past the test's bound.
engine = JackpotEngine.open(sys.argv[1], settings=Settings(lock_timeout_ms=60_000))
signal.signal(signal.SIGTERM, lambda *_: (engine.close(), print("closed", flush=True)))
reader = type(engine._reader)
load = reader.load_levels
def load_levels(self, *args, **kwargs):  # SIGTERM arrives in the middle of the read
    os.kill(os.getpid(), signal.SIGTERM)
    return load(self, *args, **kwargs)
reader.load_levels = load_levels
print(sorted(engine.pools()))
reader.load_levels = load
try:
    engine._reader.load_levels()
except apsw.ConnectionClosedError:
    print("reader closed after the read")
"""


def test_close_from_a_signal_handler_in_the_middle_of_a_read_does_not_wait_for_it(
        db_path: Path) -> None:
    """Before: close() waited for the read it interrupted until its deadline ran out."""
    JackpotEngine.open(db_path).close()
    done = run_python(_CLOSED_BY_A_SIGNAL_HANDLER_MID_READ, str(db_path), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["closed", "['major', 'mega', 'minor']",
                                        "reader closed after the read"], done.stderr


def test_an_interrupt_between_queueing_a_request_and_waking_its_actor_wedges_no_level(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the mailbox stayed marked awake with no wake-up sent; every later request
    on the level waited in vain and timed out as "not started"."""
    engine = JackpotEngine.open(db_path, settings=Settings(lock_timeout_ms=2000))
    try:
        put = Mailbox.put

        def interrupted_put(self: Mailbox, ticket: Ticket, op: Operation) -> bool:
            wake = put(self, ticket, op)
            if op.op_id == "interrupted":  # Ctrl-C lands as put returns, before the wake-up
                raise KeyboardInterrupt
            return wake

        monkeypatch.setattr(Mailbox, "put", interrupted_put)
        thread, out = in_thread(lambda: engine.contribute("10", groups="minor",
                                                          op_id="interrupted"))
        thread.join(HANG)
        assert isinstance(out[0], KeyboardInterrupt)
        monkeypatch.undo()
        after = engine.contribute("10", groups="minor", op_id="after")
        assert not after.replayed
        resent = engine.contribute("10", groups="minor", op_id="interrupted")
        assert resent.replayed  # applied once, by the wake-up the interrupt did not lose
        assert engine.verify().ok
    finally:
        engine.close()


def test_a_wait_interrupted_as_it_took_the_outcome_leaves_it_there_for_the_next() -> None:
    """Before: the interrupted wait kept the ticket's lock, so every later wait (the
    report of the interrupted caller's outcome) saw no outcome and timed out."""
    ticket = Ticket()
    ticket.settle("result", None)
    assert ticket._done.acquire(timeout=0)  # as a wait interrupted before its release
    assert ticket.wait(0)
    assert ticket.outcome() == "result"


def interrupt_put(monkeypatch: pytest.MonkeyPatch, op_id: str) -> None:
    """Ctrl-C lands on `op_id`'s caller while it waits for the mailbox's lock (never queued)."""
    put = Mailbox.put

    def interrupted_put(self: Mailbox, ticket: Ticket, op: Operation) -> bool:
        if op.op_id == op_id:
            raise KeyboardInterrupt
        return put(self, ticket, op)

    monkeypatch.setattr(Mailbox, "put", interrupted_put)


class _InterruptedCount:
    """Stands in for the engine's per-thread call count; Ctrl-C lands as it is first set."""

    def __init__(self) -> None:
        object.__setattr__(self, "hit", False)

    def __setattr__(self, name: str, value: object) -> None:
        if not self.hit:
            object.__setattr__(self, "hit", True)
            raise KeyboardInterrupt
        object.__setattr__(self, name, value)


def test_an_interrupt_as_a_call_starts_does_not_leave_it_in_flight(db_path: Path) -> None:
    """Before: counted in flight for good, so every close() waited its whole bound for it."""
    engine = JackpotEngine.open(db_path)
    try:
        engine._own = _InterruptedCount()  # type: ignore[assignment]
        with pytest.raises(KeyboardInterrupt):
            engine.contribute("10", groups="minor", op_id="interrupted")
        assert engine._inflight == 0
        assert engine.stats.snapshot().get("operations:contribute:error") is None
    finally:
        engine.close()


def test_an_interrupt_before_the_request_is_queued_reports_no_timeout(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: its report waited the queue timeout for a request never queued, then
    counted and logged a lock timeout that never happened (health's lock rate)."""
    engine = JackpotEngine.open(db_path, settings=Settings(lock_timeout_ms=HANG * 1000))
    try:
        interrupt_put(monkeypatch, "interrupted")
        with pytest.raises(KeyboardInterrupt):
            engine.contribute("10", groups="minor", op_id="interrupted")
        monkeypatch.undo()
        assert engine._inflight == 0  # nothing left to wait for
        assert not engine.contribute("10", groups="minor", op_id="interrupted").replayed
    finally:
        engine.close()
    stats = engine.stats.snapshot()
    assert stats["lock_timeouts"] == 0
    assert stats["operations:contribute:ok"] == 1
    assert [k for k in stats if k.startswith("operations:contribute:")] == [
        "operations:contribute:ok"]


def test_an_interrupt_while_a_dead_actor_is_replaced_reports_nothing(db_path: Path) -> None:
    """Before: the first attempt, withdrawn from the dead actor, was waited for again
    and logged and counted as a failure, though its caller was gone and nothing ran."""
    engine = JackpotEngine.open(db_path)
    try:
        engine._pools["minor"].actor_ref.stop()

        def interrupted(op: Operation) -> None:  # Ctrl-C as the replacement starts
            raise KeyboardInterrupt

        engine._restart_before_resending = interrupted  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            engine.contribute("10", groups="minor", op_id="interrupted")
        del engine._restart_before_resending
        assert engine._inflight == 0
        assert not engine.contribute("10", groups="minor", op_id="interrupted").replayed
    finally:
        engine.close()
    stats = engine.stats.snapshot()
    assert [k for k in stats if k.startswith("operations:contribute:")] == [
        "operations:contribute:ok"]


def test_a_request_taken_but_not_yet_claimed_when_its_caller_is_interrupted_goes_on(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request that was sent is never withdrawn (README), even one its actor has just
    taken from the mailbox and not yet claimed: it is applied and counted once."""
    engine = JackpotEngine.open(db_path)
    try:
        taken, go = hold_claims(monkeypatch)
        wait, caller = engine._wait, threading.get_ident()

        def interrupted_wait(op: Operation, ticket: Ticket) -> Any:
            if threading.get_ident() != caller:  # the report of its outcome
                return wait(op, ticket)
            assert taken.wait(HANG)  # taken from the mailbox, not yet claimed
            raise KeyboardInterrupt

        monkeypatch.setattr(engine, "_wait", interrupted_wait)
        with pytest.raises(KeyboardInterrupt):
            engine.contribute("10", groups="minor", op_id="interrupted")
        go.set()
        monkeypatch.undo()
        assert engine.contribute("10", groups="minor", op_id="interrupted").replayed
    finally:
        engine.close()
    stats = engine.stats.snapshot()
    assert (stats["operations:contribute:ok"], stats["operations:contribute:replayed"]) == (1, 1)


def _interrupt_the_callers_wait(engine: JackpotEngine, monkeypatch: pytest.MonkeyPatch,
                                first: Callable[[Ticket], object]) -> None:
    """Interrupt the calling thread as it waits for its answer, after `first(ticket)`.

    The reporting thread's own wait (for the outcome it reports) is left as it is.
    """
    wait, caller = engine._wait, threading.get_ident()

    def interrupted_wait(op: Operation, ticket: Ticket) -> Any:
        if threading.get_ident() != caller:  # the report of its outcome
            return wait(op, ticket)
        first(ticket)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "_wait", interrupted_wait)


def _interrupted_hand_over(engine: JackpotEngine, monkeypatch: pytest.MonkeyPatch, *,
                           started: bool, call: Callable[[], object] | None = None,
                           first: Callable[[Ticket], object] = lambda _ticket: None) -> None:
    """Interrupt a call (a contribute) as it waits, and again as its reporting thread starts.

    `started`: the second interrupt lands once that thread has run to its
    end (in `Thread.start`'s wait for it), else before the thread starts.
    `first(ticket)` runs just before the first interrupt.
    """
    _interrupt_the_callers_wait(engine, monkeypatch, first)
    start = threading.Thread.start

    def interrupted_start(self: threading.Thread) -> None:
        if self.name == "jackpot-interrupted":
            if started:
                start(self)
                self.join(HANG)
            raise KeyboardInterrupt
        start(self)

    monkeypatch.setattr(threading.Thread, "start", interrupted_start)
    if call is None:
        def call() -> object:
            return engine.contribute("10", groups="minor", op_id="interrupted")
    with pytest.raises(KeyboardInterrupt):
        call()
    monkeypatch.undo()


def test_a_second_interrupt_as_the_report_starts_does_not_count_the_call_twice(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the reporting thread counted it ok, and its caller, interrupted in the
    hand-over, counted it again, as an error."""
    engine = JackpotEngine.open(db_path)
    try:
        _interrupted_hand_over(engine, monkeypatch, started=True)
        assert engine._inflight == 0
        assert engine.contribute("10", groups="minor", op_id="interrupted").replayed
    finally:
        engine.close()
    stats = engine.stats.snapshot()
    assert [(k, v) for k, v in stats.items() if k.startswith("operations:contribute:")] == [
        ("operations:contribute:ok", 1), ("operations:contribute:replayed", 1)]


@pytest.mark.parametrize("answered", [True, False], ids=["answered", "unanswered"])
def test_a_second_interrupt_before_the_report_starts_counts_the_call_as_what_it_is(
        db_path: Path, monkeypatch: pytest.MonkeyPatch, answered: bool) -> None:
    """Its caller counts it and ends it: no reporting thread will. Before: counted as an
    error, whether paid (and then never logged as paid) or still on its way."""
    engine = JackpotEngine.open(db_path)
    try:
        engine.contribute("100", groups="minor", op_id="bet")
        if answered:
            def first(ticket: Ticket) -> None:  # its outcome is there as Ctrl-C lands
                assert ticket.wait(HANG)
        else:
            taken, go = hold_claims(monkeypatch)

            def first(ticket: Ticket) -> None:  # taken, still to be applied
                assert taken.wait(HANG)
        with hearing() as said:
            _interrupted_hand_over(engine, monkeypatch, started=False, first=first, call=lambda:
                                   engine.process_win("minor", op_id="win", winner="p1"))
        assert engine._inflight == 0  # its caller ended it: close() has nothing to wait for
        if not answered:
            go.set()
        resent = engine.process_win("minor", op_id="win", winner="p1")
        assert resent.replayed  # applied once, either way
    finally:
        if not answered:
            go.set()
        engine.close()
    _assert_told_once(engine, said, resent, answered=answered)


def _assert_told_once(engine: JackpotEngine, said: list[tuple[str, str, object, object]],
                      resent: Win, *, answered: bool) -> None:
    """The interrupted win "win" on minor was told once and counted once: paid (answered) or
    "may still be applied" (not yet), then its resend replayed."""
    if answered:
        assert said == [("INFO", f"win on minor: paid {resent.amount} to p1 (op win, ok)",
                         "win", "ok")]
    else:
        assert said == [("WARNING", (
            "win 'win' on minor: its caller was interrupted while the request was queued or "
            "running, and nothing could follow it to its end: it may still be applied; "
            "resend it with the same op_id to learn its outcome"), "win", "unknown")]
    stats = engine.stats.snapshot()
    assert [(k, v) for k, v in stats.items() if k.startswith("operations:win:")] == [
        (f"operations:win:{'ok' if answered else 'unknown'}", 1),
        ("operations:win:replayed", 1)]


@pytest.mark.parametrize("answered", [True, False], ids=["answered", "unanswered"])
def test_a_third_interrupt_as_its_caller_tells_the_call_still_logs_and_counts_it(
        db_path: Path, monkeypatch: pytest.MonkeyPatch, answered: bool) -> None:
    """As above, and Ctrl-C lands once more in logging as its caller tells the call (before
    any handler has the line). Before: neither logged nor counted: a win paid left no
    "paid" line (the README promises one at least once), nor one still on its way its
    "may still be applied" warning."""
    engine = JackpotEngine.open(db_path)
    interrupting = InterruptOnce("win")
    log = logging.getLogger("jackpot")
    try:
        engine.contribute("100", groups="minor", op_id="bet")
        if answered:
            def first(ticket: Ticket) -> None:  # its outcome is there as Ctrl-C lands
                assert ticket.wait(HANG)
                log.addFilter(interrupting)
        else:
            taken, go = hold_claims(monkeypatch)

            def first(ticket: Ticket) -> None:  # taken, still to be applied
                assert taken.wait(HANG)
                log.addFilter(interrupting)
        with hearing() as said:
            _interrupted_hand_over(engine, monkeypatch, started=False, first=first, call=lambda:
                                   engine.process_win("minor", op_id="win", winner="p1"))
        log.removeFilter(interrupting)
        assert not interrupting.armed  # (the third interrupt landed)
        assert engine._inflight == 0
        if not answered:
            go.set()
        resent = engine.process_win("minor", op_id="win", winner="p1")
        assert resent.replayed  # applied once, either way
    finally:
        log.removeFilter(interrupting)
        if not answered:
            go.set()
        engine.close()
    _assert_told_once(engine, said, resent, answered=answered)


def test_an_interrupt_as_a_request_is_withdrawn_counts_nothing_and_says_so_once(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second Ctrl-C as the withdrawal of a request never queued returns. Before: counted
    as an error (health's error rate) though nothing ran, and the withdrawal told nowhere."""
    engine = JackpotEngine.open(db_path)
    try:
        interrupt_put(monkeypatch, "interrupted")
        withdraw = Ticket.withdraw_unsent
        armed = [True]

        def interrupted_withdraw(self: Ticket) -> bool:
            withdrawn = withdraw(self)
            if armed.pop() if armed else False:
                raise KeyboardInterrupt
            return withdrawn

        monkeypatch.setattr(Ticket, "withdraw_unsent", interrupted_withdraw)
        with hearing() as said, pytest.raises(KeyboardInterrupt):
            engine.contribute("10", groups="minor", op_id="interrupted")
        monkeypatch.undo()
        assert not armed  # (the interrupt landed)
        assert engine._inflight == 0
        assert not engine.contribute("10", groups="minor", op_id="interrupted").replayed
    finally:
        engine.close()
    assert said == [("INFO", ("contribute interrupted withdrawn: its caller was interrupted "
                              "before the request was queued; nothing was changed"),
                     "interrupted", "interrupted")]
    stats = engine.stats.snapshot()
    assert [(k, v) for k, v in stats.items() if k.startswith("operations:contribute:")] == [
        ("operations:contribute:ok", 1)]


def test_an_interrupt_as_the_caller_reads_its_answer_counts_it_as_what_it_was(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C lands as the caller reads the answer it got (after a builtin call, where
    CPython runs pending signal handlers). Before: counted as an error, though paid,
    and never logged as paid."""
    engine = JackpotEngine.open(db_path)
    try:
        engine.contribute("100", groups="minor", op_id="bet")
        submit = engine._submit_with_restart

        class Interrupting:  # the answer, as Ctrl-C lands while it is read
            @property
            def replayed(self) -> bool:
                raise KeyboardInterrupt

        def answered(op: Operation, queued: list[Ticket]) -> Any:
            submit(op, queued)
            return Interrupting()

        monkeypatch.setattr(engine, "_submit_with_restart", answered)
        with hearing() as said:
            with pytest.raises(KeyboardInterrupt):
                engine.process_win("minor", op_id="win", winner="p1")
            monkeypatch.undo()
            for reporting in threading.enumerate():
                if reporting.name == "jackpot-interrupted":
                    reporting.join(HANG)
            assert engine._inflight == 0
            resent = engine.process_win("minor", op_id="win", winner="p1")
        assert resent.replayed
    finally:
        engine.close()
    assert said == [("INFO", f"win on minor: paid {resent.amount} to p1 (op win, {outcome})",
                     "win", outcome) for outcome in ("ok", "replayed")]
    stats = engine.stats.snapshot()
    assert [(k, v) for k, v in stats.items() if k.startswith("operations:win:")] == [
        ("operations:win:ok", 1), ("operations:win:replayed", 1)]


@pytest.mark.parametrize("where", ["as it starts", "before it is queued"])
def test_a_request_withdrawn_as_its_caller_is_interrupted_is_told_once_at_info(
        db_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Withdrawn unsent, it was told nowhere: an operator saw a bet neither applied nor refused."""
    engine = JackpotEngine.open(db_path)
    if where == "as it starts":
        engine._own = _InterruptedCount()  # type: ignore[assignment]
    else:
        interrupt_put(monkeypatch, "bet-1")
    try:
        with hearing() as said, pytest.raises(KeyboardInterrupt):
            engine.contribute("10", groups="minor", op_id="bet-1")
    finally:
        engine.close(timeout=HANG)
    assert said == [("INFO", ("contribute bet-1 withdrawn: its caller was interrupted before "
                              "the request was queued; nothing was changed"), "bet-1",
                     "interrupted")]
    assert [k for k in engine.stats.snapshot() if k.startswith("operations:")] == []


class _InterruptedExit(threading.Condition):
    """Ctrl-C lands as a `with` block calls `__exit__`, before the lock is released.

    CPython runs a pending signal's handler at the start of a Python-level
    function, and `Condition.__exit__` is one: its KeyboardInterrupt leaves
    the lock held.
    """

    armed = False

    def __exit__(self, *exc: object) -> None:
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt
        super().__exit__(*exc)


def test_an_interrupt_as_the_engines_lock_is_released_wedges_no_later_call(
        db_path: Path) -> None:
    """Before: the lock stayed held by the interrupted thread; every other thread's
    call (and close()) waited for it for ever."""
    engine = JackpotEngine.open(db_path)
    interrupted = _InterruptedExit(engine._cond._lock)  # type: ignore[attr-defined]
    engine._cond = interrupted
    thread: threading.Thread | None = None
    try:
        interrupted.armed = True
        # (before: KeyboardInterrupt as the call entered, the lock left held)
        assert not engine.contribute("10", groups="minor", op_id="first").replayed
        interrupted.armed = False
        thread, out = in_thread(lambda: engine.contribute("10", groups="minor", op_id="next"))
        thread.join(HANG)
        assert not thread.is_alive()
        assert not out[0].replayed
        assert engine._inflight == 0
    finally:
        interrupted.armed = False
        if thread is None or not thread.is_alive():  # (else its lock is held for good)
            engine.close(timeout=HANG)


def test_a_close_that_stops_waiting_names_the_interrupted_calls_it_leaves_unknown(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Their outcomes are logged by daemon threads, which an exit right after close()
    ends. Before: nothing said which calls those were, or that their callers were gone."""
    engine = JackpotEngine.open(db_path)
    go = threading.Event()
    try:
        engine.contribute("100", groups="minor", op_id="bet")
        taken, go = hold_claims(monkeypatch)
        wait, caller = engine._wait, threading.get_ident()

        def interrupted_wait(op: Operation, ticket: Ticket) -> Any:
            if threading.get_ident() != caller:  # the report of its outcome
                return wait(op, ticket)
            assert taken.wait(HANG)
            raise KeyboardInterrupt

        monkeypatch.setattr(engine, "_wait", interrupted_wait)
        with pytest.raises(KeyboardInterrupt):
            engine.process_win("minor", op_id="win", winner="p1")
        [reporting] = [t for t in threading.enumerate() if t.name == "jackpot-interrupted"]
        with hearing() as said:
            engine.close(timeout=0)  # the win is held: its outcome is not known yet
            engine.close(timeout=0)  # again: it was named (before: named twice)
        go.set()
        reporting.join(HANG)
        assert not reporting.is_alive()
    finally:
        go.set()
        engine.close()
    assert said == [
        ("WARNING", ("close() timed out with 1 call still in flight: the actors were asked "
                     "to stop after their work, with no time left to wait for that"),
         None, "close_timeout"),
        ("WARNING", ("close() left 1 interrupted call whose outcome was not known yet: win "
                     "'win' on minor. Its outcome is logged when it comes, unless the process "
                     "ends first: resend it with the same op_id to learn it"),
         None, "close_timeout")]
    assert engine.stats.snapshot()["operations:win:ok"] == 1  # (it came: logged, counted)


def test_a_close_names_at_most_ten_interrupted_calls_and_all_their_op_ids() -> None:
    """One line, however many: the first ten named, the rest counted; every op_id a field."""
    from jackpot._closing import _log_left_in_flight  # noqa: PLC0415 - private, this test only

    ops = [Operation(kind="contribute", op_id=f"bet-{i}", explicit=True, fingerprint="",
                     names=("major", "mega"), apply=None, rebuild=dict)  # type: ignore[arg-type]
           for i in range(12)]
    records: list[logging.LogRecord] = []

    class Kept(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    kept = Kept()
    logging.getLogger("jackpot").addHandler(kept)
    try:
        _log_left_in_flight(12, None, ops)
    finally:
        logging.getLogger("jackpot").removeHandler(kept)
    unreported = records[1]
    assert unreported.getMessage() == (
        "close() left 12 interrupted calls whose outcomes were not known yet: "
        + "; ".join(f"contribute 'bet-{i}' on major, mega" for i in range(10))
        + "; and 2 more. Their outcomes are logged when they come, unless the process ends "
        "first: resend each with the same op_id to learn it")
    assert unreported.op_ids == [f"bet-{i}" for i in range(12)]  # type: ignore[attr-defined]


def test_an_interrupt_as_a_refusal_is_classified_counts_and_logs_it_as_a_refusal(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C lands at the start of `outcome_of` (a Python call: CPython runs a pending
    signal's handler there) as the caller's refusal is told. Before: counted as an error
    (health's error rate), and its log line never written."""
    from jackpot import engine as engine_module  # noqa: PLC0415 - its module global, patched

    engine = JackpotEngine.open(db_path)
    try:
        interrupted, armed = interrupting_once(engine_module.outcome_of)
        monkeypatch.setattr(engine_module, "outcome_of", interrupted)
        with hearing() as said, pytest.raises(KeyboardInterrupt) as caught:
            engine.process_win("minor", op_id="win", amount="1000")
        monkeypatch.undo()
        assert not armed  # (the interrupt landed)
        refusal = caught.value.__context__
        assert type(refusal).__name__ == "InsufficientFundsError"
        assert engine._inflight == 0
    finally:
        engine.close()
    assert said == [("INFO", f"win win failed (rejected): {refusal}", "win", "rejected")]
    stats = engine.stats.snapshot()
    assert [(k, v) for k, v in stats.items() if k.startswith("operations:win:")] == [
        ("operations:win:rejected", 1)]


def test_an_interrupt_as_a_paid_win_is_logged_still_logs_it_as_paid(db_path: Path) -> None:
    """Ctrl-C lands in logging as the "paid" line is written (before any handler has it).
    Before: counted ok, but the operator's record of the money paid was never written."""
    engine = JackpotEngine.open(db_path)
    interrupting = InterruptOnce("win")
    log = logging.getLogger("jackpot")
    try:
        engine.contribute("100", groups="minor", op_id="bet")
        log.addFilter(interrupting)
        with hearing() as said, pytest.raises(KeyboardInterrupt):
            engine.process_win("minor", op_id="win", winner="p1")
        log.removeFilter(interrupting)
        assert not interrupting.armed  # (the interrupt landed)
        assert engine._inflight == 0
        resent = engine.process_win("minor", op_id="win", winner="p1")
        assert resent.replayed
    finally:
        log.removeFilter(interrupting)
        engine.close()
    assert said == [("INFO", f"win on minor: paid {resent.amount} to p1 (op win, ok)",
                     "win", "ok")]
    stats = engine.stats.snapshot()
    assert [(k, v) for k, v in stats.items() if k.startswith("operations:win:")] == [
        ("operations:win:ok", 1), ("operations:win:replayed", 1)]


class _InterruptedAfterRelease:
    """The engine's state lock, where Ctrl-C lands once its `with` block has released it.

    CPython runs a pending signal's handler after a builtin call returns: the
    C lock's `__exit__` has released the lock, and the statement after the
    block has not run.
    """

    def __init__(self, lock: Any) -> None:
        self.lock, self.armed = lock, False

    def __enter__(self) -> Any:
        return self.lock.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.lock.__exit__(*exc)
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt


def test_an_interrupt_as_a_call_is_counted_in_flight_does_not_leave_it_there(
        db_path: Path) -> None:
    """Ctrl-C lands as `_enter` releases the lock, the call counted in flight, before
    `_submit`'s try. Before: counted in flight for good, so every close() waited its
    whole bound for it (then warned of a call still in flight)."""
    engine = JackpotEngine.open(db_path)
    interrupting = _InterruptedAfterRelease(engine._lock_state)
    try:
        engine._lock_state = interrupting  # type: ignore[assignment]
        interrupting.armed = True
        with hearing() as said, pytest.raises(KeyboardInterrupt):
            engine.contribute("10", groups="minor", op_id="interrupted")
        assert not interrupting.armed  # (the interrupt landed)
        assert engine._inflight == 0
        assert not engine.contribute("10", groups="minor", op_id="interrupted").replayed
    finally:
        interrupting.armed = False
        engine.close(timeout=HANG)
    assert said == []  # nothing was sent: nothing to tell
    stats = engine.stats.snapshot()
    assert [(k, v) for k, v in stats.items() if k.startswith("operations:contribute:")] == [
        ("operations:contribute:ok", 1)]


def test_an_interrupt_as_a_refusal_of_bad_arguments_is_logged_still_logs_and_counts_it(
        db_path: Path) -> None:
    """Ctrl-C lands in logging as a call refused for its arguments is told (before any
    handler has it). Before: neither logged nor counted (the count came after the log)."""
    engine = JackpotEngine.open(db_path)
    interrupting = InterruptOnce("bad")
    log = logging.getLogger("jackpot")
    try:
        log.addFilter(interrupting)
        with hearing() as said, pytest.raises(KeyboardInterrupt) as caught:
            engine.contribute("-1", groups="minor", op_id="bad")
        log.removeFilter(interrupting)
        assert not interrupting.armed  # (the interrupt landed)
        refusal = caught.value.__context__
        assert type(refusal).__name__ == "ValidationError"
    finally:
        log.removeFilter(interrupting)
        engine.close()
    assert said == [("INFO", f"contribute bad refused: {refusal}", "bad", "rejected")]
    stats = engine.stats.snapshot()
    assert [(k, v) for k, v in stats.items() if k.startswith("operations:contribute:")] == [
        ("operations:contribute:rejected", 1)]


@pytest.mark.parametrize("call", ["paid win", "refused bet"])
def test_an_interrupt_as_a_call_is_counted_still_counts_it(db_path: Path, call: str) -> None:
    """Ctrl-C lands at the start of the call's count (a Python call: CPython runs a pending
    signal's handler there), its log line written: a win paid, or a bet refused for its
    arguments. Before: counted nowhere (the metrics, and for the win the health check's
    window, missed it)."""
    engine = JackpotEngine.open(db_path)
    try:
        engine.contribute("100", groups="minor", op_id="bet")
        interrupted, armed = interrupting_once(engine.stats.operation)
        engine.stats.operation = interrupted  # type: ignore[method-assign]
        sent: Callable[[], object] = (
            (lambda: engine.process_win("minor", op_id="win", winner="p1"))
            if call == "paid win" else (lambda: engine.contribute("-1", groups="minor",
                                                                  op_id="bad")))
        with hearing() as said, pytest.raises(KeyboardInterrupt):
            sent()
        del engine.stats.operation
        assert not armed  # (the interrupt landed)
        assert engine._inflight == 0
    finally:
        engine.close()
    stats = engine.stats.snapshot()
    if call == "paid win":
        assert [s[1].startswith("win on minor: paid ") for s in said] == [True]
        assert [(k, v) for k, v in stats.items() if k.startswith("operations:win:")] == [
            ("operations:win:ok", 1)]
    else:
        assert [s[1].startswith("contribute bad refused: ") for s in said] == [True]
        assert stats["operations:contribute:rejected"] == 1


def test_a_refusal_whose_line_and_retelling_are_interrupted_is_counted_as_what_it_was(
        db_path: Path) -> None:
    """Ctrl-C lands as a refused win's line is written (before any handler has it), then
    again as the `finally` tells it again. Before: counted an error (health's error rate),
    not rejected, and told nowhere: the retelling decided the outcome only by telling it."""
    engine = JackpotEngine.open(db_path)
    interrupting = InterruptOnce("big", times=2)
    log = logging.getLogger("jackpot")
    try:
        engine.contribute("100", groups="minor", op_id="bet")
        log.addFilter(interrupting)
        with hearing() as said, pytest.raises(KeyboardInterrupt):
            engine.process_win("minor", op_id="big", amount="1000000", winner="p1")
        log.removeFilter(interrupting)
        assert interrupting.left == 0  # (both interrupts landed)
        assert engine._inflight == 0
    finally:
        log.removeFilter(interrupting)
        engine.close()
    assert [(s[0], s[1].startswith("win big failed (rejected): "), s[2], s[3])
            for s in said] == [("INFO", True, "big", "rejected")]
    stats = engine.stats.snapshot()
    assert [(k, v) for k, v in stats.items() if k.startswith("operations:win:")] == [
        ("operations:win:rejected", 1)]


def test_a_second_interrupt_as_a_withdrawn_request_is_told_does_not_count_it_an_error(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C lands on the caller as it queues its request (withdrawn unsent), then again
    in logging as the withdrawal is told. Nothing ran: nothing to count. Before: the
    count retried in the `finally` counted it an error (health's error rate); then, the
    withdrawal cut short was told nowhere."""
    engine = JackpotEngine.open(db_path)
    interrupting = InterruptOnce("interrupted")
    log = logging.getLogger("jackpot")
    try:
        interrupt_put(monkeypatch, "interrupted")
        log.addFilter(interrupting)
        with hearing() as said, pytest.raises(KeyboardInterrupt):
            engine.contribute("10", groups="minor", op_id="interrupted")
        log.removeFilter(interrupting)
        monkeypatch.undo()
        assert not interrupting.armed  # (the second interrupt landed)
        assert engine._inflight == 0
        assert not engine.contribute("10", groups="minor", op_id="interrupted").replayed
    finally:
        log.removeFilter(interrupting)
        engine.close()
    assert said == [("INFO", ("contribute interrupted withdrawn: its caller was interrupted "
                              "before the request was queued; nothing was changed"),
                     "interrupted", "interrupted")]
    stats = engine.stats.snapshot()
    assert [(k, v) for k, v in stats.items() if k.startswith("operations:contribute:")] == [
        ("operations:contribute:ok", 1)]


@pytest.mark.parametrize("claimed_by", ["reporter", "caller"])
def test_an_interrupt_as_the_caller_claims_its_interrupted_call_leaves_nothing_behind(
        db_path: Path, monkeypatch: pytest.MonkeyPatch, claimed_by: str) -> None:
    """Ctrl-C again right after the caller's claim on its interrupted call (the builtin
    `append` returns; CPython runs a pending signal's handler there). Claimed by the
    reporting thread, before: the caller's own-call count stayed up for good, so a
    later close() in that thread took another thread's call for its own and did not
    wait for it. Claimed by the caller (the thread never started): in flight for good,
    never counted."""
    engine = JackpotEngine.open(db_path)
    armed: list[bool] = []

    def interrupt_after_claim(frame: Any, event: str, arg: Any) -> None:
        if (event == "c_return" and armed and frame.f_code.co_name == "_submit"
                and getattr(arg, "__name__", "") == "append"):
            armed.pop()
            raise KeyboardInterrupt

    try:
        engine.contribute("100", groups="minor", op_id="bet")

        def first(ticket: Ticket) -> None:  # answered as Ctrl-C lands
            assert ticket.wait(HANG)
            armed.append(True)
            sys.setprofile(interrupt_after_claim)

        try:
            if claimed_by == "reporter":
                _interrupt_the_callers_wait(engine, monkeypatch, first)
                with pytest.raises(KeyboardInterrupt):
                    engine.process_win("minor", op_id="win", winner="p1")
            else:
                _interrupted_hand_over(engine, monkeypatch, started=False, first=first,
                                       call=lambda: engine.process_win(
                                           "minor", op_id="win", winner="p1"))
        finally:
            sys.setprofile(None)
        monkeypatch.undo()
        assert not armed  # (the last interrupt landed)
        for reporting in threading.enumerate():
            if reporting.name == "jackpot-interrupted":
                reporting.join(HANG)
        assert engine._inflight == 0
        assert getattr(engine._own, "n", 0) == 0
    finally:
        engine.close(timeout=HANG)
    stats = engine.stats.snapshot()
    assert [(k, v) for k, v in stats.items() if k.startswith("operations:win:")] == [
        ("operations:win:ok", 1)]


def test_a_signal_handlers_exception_between_queueing_and_waking_wedges_no_level(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: a request deadline's TimeoutError (SIGALRM), raised as put returned,
    left the mailbox marked awake with no wake-up sent, as Ctrl-C did before
    (`_send` sent the spare wake-up only for KeyboardInterrupt and SystemExit):
    the interrupted request, and every later one on the level, timed out "not
    started"."""
    def deadline(*_: object) -> None:
        msg = "the round took too long"
        raise TimeoutError(msg)

    engine = JackpotEngine.open(db_path, settings=Settings(lock_timeout_ms=2000))
    before = signal.signal(signal.SIGALRM, deadline)
    try:
        put = Mailbox.put

        def put_then_alarm(self: Mailbox, ticket: Ticket, op: Operation) -> bool:
            wake = put(self, ticket, op)
            if op.op_id == "interrupted":  # the deadline lands as put returns
                signal.raise_signal(signal.SIGALRM)  # (its handler runs here, in this thread)
            return wake

        monkeypatch.setattr(Mailbox, "put", put_then_alarm)
        with pytest.raises(TimeoutError, match="the round took too long"):
            engine.contribute("10", groups="minor", op_id="interrupted")
        monkeypatch.undo()
        after = engine.contribute("10", groups="minor", op_id="after")
        assert not after.replayed
        resent = engine.contribute("10", groups="minor", op_id="interrupted")
        assert resent.replayed  # applied once, by the wake-up the exception did not lose
        assert engine.verify().ok
    finally:
        signal.signal(signal.SIGALRM, before)
        engine.close()
