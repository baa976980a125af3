"""A signal handler's own exception (a request deadline's TimeoutError) is its caller's interrupt.

A server that bounds a request with `signal.setitimer` and a SIGALRM handler
raising TimeoutError asks to be interrupted wherever the main thread is when
the time is up, as Ctrl-C does. Python runs the handler between two bytecodes,
first as a call of C code returns: in a log filter, an observer, the engine's
own bookkeeping. There the TimeoutError is an Exception like a report's own
failure, and it was taken for one:

- as a committed operation was reported (its log line, its count's
  observer), it was contained as "a report failed": the caller got its result
  and the deadline never fired; a win's "paid" line was never written;
- before the request was queued, it was the operation's error: logged
  "failed (error)" and counted an error, though nothing had run (and raised as
  the mailbox took the request, before it was marked queued, it was applied
  all the same);
- as a stopped actor was replaced, it was a failed start: an ERROR, and a
  StorageError in place of the deadline.

Each test raises a real SIGALRM (`signal.raise_signal`, its handler runs there,
in this thread) from a profile function at the first return of C code in the
function named, and fails on the code before the fix. A report's real failure,
even a TimeoutError (a metrics backend's socket timeout), is still contained.
"""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from _helpers import DEADLINE, HANG, deadline_in, hearing, raise_deadline
from jackpot import JackpotEngine
from jackpot.stats import raised_by_signal_handler


def _operations(engine: JackpotEngine, kind: str) -> list[tuple[str, int]]:
    return [(k, v) for k, v in engine.stats.snapshot().items()
            if k.startswith(f"operations:{kind}:")]


# -- (a) as a committed operation is reported --------------------------------


@pytest.mark.parametrize("where", ["log_success", "on_operation"],
                         ids=["its log line", "its metrics observer"])
def test_a_deadline_as_a_paid_win_is_reported_reaches_its_caller(db_path: Path,
                                                                   where: str) -> None:
    """Before: contained as "a report failed (log_success)" or "stats observer
    PrometheusObserver failed: TimeoutError": the caller got the win and its deadline
    never fired; in its log line, the "paid" line was never written either."""
    engine = JackpotEngine.open(db_path)
    try:
        engine.contribute("100", groups="minor", op_id="bet")
        with hearing() as said:
            with deadline_in(where) as armed, pytest.raises(TimeoutError, match=DEADLINE):
                engine.process_win("minor", op_id="win", winner="p1")
            assert not armed  # (the deadline landed)
            assert engine._inflight == 0
            resent = engine.process_win("minor", op_id="win", winner="p1")
        assert resent.replayed  # committed once: the caller learns it with the same op_id
    finally:
        engine.close()
    assert [(s[0], s[1]) for s in said] == [
        ("INFO", f"win on minor: paid {resent.amount} to p1 (op win, {outcome})")
        for outcome in ("ok", "replayed")]
    assert _operations(engine, "win") == [("operations:win:ok", 1),
                                          ("operations:win:replayed", 1)]


def test_a_deadline_as_a_refusal_is_reported_reaches_its_caller(db_path: Path) -> None:
    """Before: contained as "a report failed (log_refusal)", the refusal's line lost, and
    the caller got the ValidationError as if its deadline had not fired."""
    engine = JackpotEngine.open(db_path)
    try:
        with hearing() as said, deadline_in("log_refusal") as armed, \
                pytest.raises(TimeoutError, match=DEADLINE) as caught:
            engine.contribute("-1", groups="minor", op_id="bad")
        assert not armed
        refusal = caught.value.__context__
        assert type(refusal).__name__ == "ValidationError"
    finally:
        engine.close()
    assert said == [("INFO", f"contribute bad refused: {refusal}", "bad", "rejected")]
    assert _operations(engine, "contribute") == [("operations:contribute:rejected", 1)]


class _TimingOut:
    """An observer whose backend times out: a TimeoutError of its own, no signal."""

    def on_event(self, event: str, operation: str, level: str, n: int) -> None:
        pass

    def on_operation(self, operation: str, outcome: str, seconds: float) -> None:
        msg = "push gateway timed out"
        raise TimeoutError(msg)

    def on_lock_wait(self, lock: str, operation: str, seconds: float) -> None:
        pass


def test_an_observers_own_timeout_still_fails_no_committed_win(db_path: Path) -> None:
    """A report's own TimeoutError (a socket timeout) is a report's failure, deadline or
    not: contained and logged; the caller gets its win (no op_id: a resend pays twice)."""
    engine = JackpotEngine.open(db_path)
    before = signal.signal(signal.SIGALRM, raise_deadline)  # a deadline is set, and does not fire
    try:
        engine.contribute("100", groups="minor", op_id="bet")
        engine.stats.observers.append(_TimingOut())
        with hearing() as said:
            win = engine.process_win("minor", winner="p1")
        assert not win.replayed
    finally:
        signal.signal(signal.SIGALRM, before)
        engine.close()
    assert [s[1] for s in said if s[0] == "ERROR"] == [
        "stats observer _TimingOut failed: TimeoutError: push gateway timed out"]


# -- (b) before the request is queued ------------------------------------------


@pytest.mark.parametrize("where", ["_submit_with_restart", "put"],
                         ids=["before it is sent", "as the mailbox takes it"])
def test_a_deadline_before_the_request_is_queued_withdraws_it_uncounted(
        db_path: Path, where: str) -> None:
    """As after Ctrl-C there (README): nothing runs, nothing is counted, one INFO line.
    Before: logged "contribute bet failed (error): the round took too long" and counted
    an error (health's error rate); as the mailbox took it, applied all the same."""
    engine = JackpotEngine.open(db_path)
    try:
        with hearing() as said, deadline_in(where) as armed, \
                pytest.raises(TimeoutError, match=DEADLINE):
            engine.contribute("10", groups="minor", op_id="bet")
        assert not armed
        assert engine._inflight == 0
        assert not engine.contribute("10", groups="minor", op_id="bet").replayed  # not applied
        assert engine.verify().ok
    finally:
        engine.close()
    assert said == [("INFO", ("contribute bet withdrawn: its caller was interrupted before "
                              "the request was queued; nothing was changed"), "bet",
                     "interrupted")]
    assert _operations(engine, "contribute") == [("operations:contribute:ok", 1)]


class _FailingSpan:
    """A tracer's span that fails as it opens: the engine's own code, before anything is sent."""

    def __enter__(self) -> None:
        msg = "tracer down"
        raise RuntimeError(msg)

    def __exit__(self, *exc: object) -> None:
        pass


def test_an_error_of_its_own_before_the_request_is_queued_is_still_the_operations(
        db_path: Path) -> None:
    """Only a signal handler's exception is withdrawn as an interrupt: the engine's own
    unexpected error before the send is the call's failure, logged and counted."""
    engine = JackpotEngine.open(db_path)
    before = signal.signal(signal.SIGALRM, raise_deadline)  # a deadline is set, and does not fire
    try:
        engine._trace = lambda _op: _FailingSpan()  # type: ignore[method-assign]
        with hearing() as said, pytest.raises(RuntimeError, match="tracer down"):
            engine.contribute("10", groups="minor", op_id="bet")
        del engine._trace
        assert engine._inflight == 0
    finally:
        signal.signal(signal.SIGALRM, before)
        engine.close()
    assert [s[1:] for s in said] == [("contribute bet failed (error): tracer down", "bet",
                                      "error")]
    assert _operations(engine, "contribute") == [("operations:contribute:error", 1)]


def test_a_deadline_as_a_stopped_actor_is_replaced_withdraws_the_request(
        db_path: Path) -> None:
    """As Ctrl-C there: nothing is resent. Before: "a stopped actor's replacement could not
    start" (ERROR), and a StorageError ("could not be restarted") in place of the deadline,
    counted an error."""
    engine = JackpotEngine.open(db_path)
    try:
        engine._pools["minor"].actor_ref.stop()
        with hearing() as said, deadline_in("_replace_dead") as armed, \
                pytest.raises(TimeoutError, match=DEADLINE):
            engine.contribute("10", groups="minor", op_id="bet")
        assert not armed
        assert engine._inflight == 0
        assert not engine.contribute("10", groups="minor", op_id="bet").replayed
    finally:
        engine.close()
    assert said == [("INFO", ("contribute bet withdrawn: its caller was interrupted before "
                              "the request was queued; nothing was changed"), "bet",
                     "interrupted")]  # (the replacement started with the resend, unheard)
    assert _operations(engine, "contribute") == [("operations:contribute:ok", 1)]


# -- telling them apart ------------------------------------------------------------


class _Handler:
    def __call__(self, *_: object) -> None:
        raise_deadline()

    def method(self, *_: object) -> None:
        raise_deadline()


def _raised(where: Callable[[], None]) -> BaseException:
    try:
        where()
    except Exception as e:  # (the exception is what is looked at)
        return e
    raise AssertionError


@pytest.mark.parametrize("handler", [
    raise_deadline, _Handler(), _Handler().method, functools.partial(raise_deadline, 0),
    lambda *_: raise_deadline()], ids=["function", "callable object", "method", "partial", "lambda"])
def test_a_handlers_exception_is_told_apart_from_the_codes_own(
        handler: Callable[..., None]) -> None:
    before = signal.signal(signal.SIGALRM, handler)
    try:
        assert raised_by_signal_handler(_raised(lambda: signal.raise_signal(signal.SIGALRM)))
        assert not raised_by_signal_handler(_raised(lambda: _raise(TimeoutError(DEADLINE))))
        assert not raised_by_signal_handler(TimeoutError(DEADLINE))  # (never raised)
        # Handlers run in the main thread only: elsewhere, none is one's.
        told: list[bool] = []
        error = _raised(lambda: signal.raise_signal(signal.SIGALRM))
        thread = threading.Thread(target=lambda: told.append(raised_by_signal_handler(error)))
        thread.start()
        thread.join(HANG)
        assert told == [False]
    finally:
        signal.signal(signal.SIGALRM, before)


def _raise(error: BaseException) -> None:
    raise error
