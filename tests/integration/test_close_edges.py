"""close() called from awkward places: log handlers, observers, actor threads, forks.

Each test comes from a reviewed defect (a hang, a timeout not kept, a read
on a closed connection, a misleading report) and fails on the code before
its fix. Nothing here guesses timing: threads wait on events, and a close
that should return is joined with a generous bound that only a hang reaches.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import apsw
import pykka
import pytest

from _helpers import (
    hold,
    in_thread,
    interrupting_once,
    left_running,
    pykka_debug_raising_on,
    run_python,
    run_together,
    track_stores,
)
from jackpot import (
    AsyncJackpotEngine,
    EngineClosedError,
    JackpotEngine,
    Settings,
    ValidationError,
    _closing,
    _lifecycle,
)
from jackpot import engine as engine_module
from jackpot.actors import PoolActor, _start

HANG = 30  # seconds: only a hang waits this long


def _actors_stopped(engine: JackpotEngine) -> bool:
    refs = [p.actor_ref for p in engine._pools.values()]
    refs.append(engine._coordinator.actor_ref)
    return all(ref.actor_stopped.wait(HANG) for ref in refs)


class _Closer(logging.Handler):
    """A log handler that closes the engine when it sees a record with `outcome`."""

    def __init__(self, outcome: str, timeout: float | None = None) -> None:
        super().__init__()
        self.outcome, self.timeout = outcome, timeout
        self.engine: JackpotEngine | None = None
        self.closed = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "outcome", None) == self.outcome and self.engine is not None:
            engine, self.engine = self.engine, None
            engine.close(timeout=self.timeout)
            self.closed.set()


@contextmanager
def _handler(handler: logging.Handler) -> Iterator[None]:
    log = logging.getLogger("jackpot")
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)


def test_a_log_handler_closing_the_engine_during_an_actor_restart_does_not_deadlock(
        db_path: Path) -> None:
    engine = JackpotEngine.open(db_path)
    closer = _Closer("actor_restart", timeout=1)
    closer.engine = engine
    engine._pools["minor"].actor_ref.stop()  # the level's actor crashed
    with _handler(closer):
        thread, out = in_thread(lambda: engine.contribute("10", groups="minor", op_id="b1"))
        thread.join(HANG)
    assert not thread.is_alive()
    assert closer.closed.is_set()
    (outcome,) = out
    assert isinstance(outcome, EngineClosedError)  # refused, never sent: nothing changed
    assert not outcome.outcome_unknown
    assert _actors_stopped(engine)
    with JackpotEngine.open(db_path) as again:
        assert again.pool("minor").version == 1


class _ClosingAtStart(logging.Handler):
    """A handler on Pykka's logger that closes the engine at its first "Starting" line."""

    def __init__(self, engine: JackpotEngine) -> None:
        super().__init__()
        self.engine: JackpotEngine | None = engine
        self.closed = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Starting") and self.engine is not None:
            engine, self.engine = self.engine, None
            engine.close()
            self.closed.set()


def test_a_log_handler_on_pykka_closing_the_engine_as_a_restart_starts_an_actor(
        db_path: Path) -> None:
    """Before: the close() waited for ever for the restart lock its own thread held.

    Pykka logs "Starting" (DEBUG) in the thread that starts an actor, here
    the caller's, replacing a stopped one under the engine's restart lock.
    """
    engine = JackpotEngine.open(db_path)
    engine._pools["minor"].actor_ref.stop()  # the level's actor crashed
    closer = _ClosingAtStart(engine)
    log = logging.getLogger("pykka")
    level = log.level
    log.setLevel(logging.DEBUG)
    log.addHandler(closer)
    try:
        thread, out = in_thread(lambda: engine.contribute("10", groups="minor", op_id="b1"))
        thread.join(HANG)
    finally:
        log.removeHandler(closer)
        log.setLevel(level)
    assert not thread.is_alive()
    assert closer.closed.is_set()
    (outcome,) = out
    assert outcome.versions == {"minor": 2}  # in flight as close() began: it went on
    assert _actors_stopped(engine)
    with JackpotEngine.open(db_path) as again:
        assert again.pool("minor").version == 2


def test_a_log_handler_closing_the_engine_on_its_own_calls_line_does_not_wait_for_it(
        db_path: Path) -> None:
    """The call is out of flight before it is logged; close() keeps no one waiting."""
    engine = JackpotEngine.open(db_path, settings=Settings(lock_timeout_ms=60_000))
    closer = _Closer("ok")  # close() without a timeout: would wait minutes for itself
    closer.engine = engine
    with _handler(closer):
        thread, out = in_thread(lambda: engine.process_win("minor", op_id="w1"))
        thread.join(HANG)
    assert not thread.is_alive()
    assert out[0].amount == Decimal(100)
    assert engine._shut
    assert _actors_stopped(engine)


class _CloseOnItsOwnCount:
    """A Stats observer that closes the engine as its caller's call is counted."""

    def __init__(self, engine: JackpotEngine) -> None:
        self.engine: JackpotEngine | None = engine

    def on_event(self, event: str, operation: str, level: str, n: int) -> None:
        pass

    def on_operation(self, operation: str, outcome: str, seconds: float) -> None:
        if operation == "win" and self.engine is not None:
            engine, self.engine = self.engine, None
            engine.close()  # in the caller's thread, its call not yet ended

    def on_lock_wait(self, lock: str, operation: str, seconds: float) -> None:
        pass


def test_an_observer_closing_the_engine_on_its_own_calls_count_does_not_wait_for_it(
        db_path: Path) -> None:
    """As a log handler on its own call's line: close() keeps no one waiting. Before:
    the call was counted after its thread's own-call count was taken back, so close()
    waited for it (it could not end meanwhile) its whole bound, here minutes."""
    engine = JackpotEngine.open(db_path, settings=Settings(lock_timeout_ms=60_000))
    engine.stats.observers.append(_CloseOnItsOwnCount(engine))
    warned: list[str] = []

    class Warned(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                warned.append(record.getMessage())

    with _handler(Warned()):
        thread, out = in_thread(lambda: engine.process_win("minor", op_id="w1"))
        thread.join(HANG)
    assert not thread.is_alive()
    assert out[0].amount == Decimal(100)
    assert engine._shut
    assert _actors_stopped(engine)
    assert warned == []  # nothing left in flight but the call in hand
    assert engine.stats.snapshot()["operations:win:ok"] == 1


class _CloseOnLockWait:
    """A Stats observer that closes the engine from inside an actor's transaction."""

    def __init__(self, engine: JackpotEngine) -> None:
        self.engine: JackpotEngine | None = engine
        self.shut_when_close_returned: bool | None = None

    def on_event(self, event: str, operation: str, level: str, n: int) -> None:
        pass

    def on_operation(self, operation: str, outcome: str, seconds: float) -> None:
        pass

    def on_lock_wait(self, lock: str, operation: str, seconds: float) -> None:
        if lock == "database" and self.engine is not None:
            engine, self.engine = self.engine, None
            engine.close()  # in the actor's thread, with the write lock held
            self.shut_when_close_returned = engine._shut


def test_close_from_an_actor_thread_hands_the_shut_down_to_a_thread_of_its_own(
        db_path: Path) -> None:
    engine = JackpotEngine.open(db_path, settings=Settings(lock_timeout_ms=60_000))
    engine.stats.observers.append(_CloseOnLockWait(engine))
    thread, out = in_thread(lambda: engine.contribute("10", groups="minor", op_id="b1"))
    thread.join(HANG)
    assert not thread.is_alive()
    assert out[0].versions == {"minor": 2}  # the batch in hand committed and was answered
    for closer in [t for t in threading.enumerate() if t.name == "jackpot-close"]:
        closer.join(HANG)
    assert engine._shut
    assert _actors_stopped(engine)
    with pytest.raises(EngineClosedError):
        engine.contribute("10", groups="minor")


@pytest.mark.parametrize("timeout", [math.nan, "1", True, Decimal(1)])
def test_close_refuses_a_timeout_that_is_not_a_number_of_seconds(
        db_path: Path, timeout: Any) -> None:
    engine = JackpotEngine.open(db_path)
    try:
        with pytest.raises(ValidationError, match="timeout must be a number of seconds"):
            engine.close(timeout=timeout)
        assert engine.contribute("1", groups="minor").versions == {"minor": 2}  # still open
    finally:
        engine.close()


@pytest.mark.parametrize("timeout", [10**400, -(10**400)])
def test_close_takes_an_int_timeout_too_big_for_a_float(db_path: Path, timeout: int) -> None:
    """A number of seconds, though no float holds it: no OverflowError, the engine closes."""
    engine = JackpotEngine.open(db_path)
    engine.close(timeout=timeout)
    assert engine._shut
    assert _actors_stopped(engine)
    with pytest.raises(EngineClosedError):
        engine.contribute("1", groups="minor")


class _PausingLock:
    """The reader's lock, made to pause the first reader before it takes it."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self.reader = threading.Event()
        self.go_on = threading.Event()
        self._paused = False

    def _pause_the_first(self) -> None:
        if not self._paused:
            self._paused = True
            self.reader.set()
            assert self.go_on.wait(HANG)

    def __enter__(self) -> None:
        self._pause_the_first()
        self._lock.acquire()

    def __exit__(self, *_exc: object) -> None:
        self._lock.release()

    def acquire(self, *args: Any, **kwargs: Any) -> bool:
        self._pause_the_first()
        return bool(self._lock.acquire(*args, **kwargs))

    def release(self) -> None:
        self._lock.release()


@pytest.mark.parametrize("read", ["pools", "history"])
def test_a_read_racing_close_is_refused_with_a_jackpot_error(db_path: Path, read: str) -> None:
    engine = JackpotEngine.open(db_path)
    lock = _PausingLock(engine._reader_lock)
    engine._reader_lock = lock  # type: ignore[assignment]
    call: Callable[[], Any] = {"pools": engine.pools,
                               "history": lambda: engine.history("minor")}[read]
    thread, out = in_thread(call)
    assert lock.reader.wait(HANG)  # past any check made before taking the lock
    engine.close()
    lock.go_on.set()
    thread.join(HANG)
    (outcome,) = out
    assert isinstance(outcome, EngineClosedError), repr(outcome)


def test_a_verify_racing_close_is_refused_and_closes_its_connection(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = JackpotEngine.open(db_path)
    connected, go_on = threading.Event(), threading.Event()
    opened: list[Any] = []
    real_store = engine_module._store

    def store(*args: Any, **kwargs: Any) -> Any:
        opened.append(real_store(*args, **kwargs))
        connected.set()  # past the check made before connecting
        assert go_on.wait(HANG)
        return opened[-1]

    monkeypatch.setattr(engine_module, "_store", store)
    thread, out = in_thread(engine.verify)
    assert connected.wait(HANG)
    engine.close(timeout=0)  # (without one, it would wait for the verify, held here)
    go_on.set()
    thread.join(HANG)
    (outcome,) = out
    assert isinstance(outcome, EngineClosedError), repr(outcome)
    with pytest.raises(apsw.ConnectionClosedError):
        opened[0].load_levels()


def test_reads_do_not_wait_for_a_long_verify(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """verify() on a big ledger held the reader every pools()/pool()/history() needs.

    In the asyncio engine each waiting read also held a worker of the loop's
    default thread pool (which close(), restarts and getaddrinfo need).
    """
    reading, finish = threading.Event(), threading.Event()
    real_audit = engine_module.audit

    def slow_audit(store: Any) -> Any:
        reading.set()
        assert finish.wait(2 * HANG)  # a big ledger
        return real_audit(store)

    monkeypatch.setattr(engine_module, "audit", slow_audit)
    engine = JackpotEngine.open(db_path)
    try:
        auditor, report = in_thread(engine.verify)
        assert reading.wait(HANG)
        reader, out = in_thread(lambda: (engine.pool("minor").version,
                                          engine.history("minor")))
        reader.join(HANG)
        done_while_auditing = not reader.is_alive() and not finish.is_set()
        assert done_while_auditing
        assert out == [(1, [])]

        async def read_async() -> int:
            aengine = AsyncJackpotEngine(engine)
            snapshot = await asyncio.wait_for(aengine.pool("major"), HANG)
            return snapshot.version

        assert asyncio.run(read_async()) == 1
        assert not finish.is_set()  # the audit still runs
        finish.set()
        auditor.join(HANG)
        assert report[0].ok
    finally:
        finish.set()
        engine.close()


class _QueueingLock:
    """The engine's verify lock, counting the threads that found it held and wait for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self.waiting = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(blocking=False):
            return True
        if not blocking:
            return False
        with self._cond:
            self.waiting += 1
            self._cond.notify_all()
        try:
            return self._lock.acquire(timeout=timeout)
        finally:
            with self._cond:
                self.waiting -= 1

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.release()

    def wait_for_waiters(self, n: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.waiting == n, HANG)


def test_overlapping_verifies_hold_one_connection_not_one_each(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each verify() opened a connection of its own and held it for the whole audit.

    On PostgreSQL those come from the pool the actors draw from: sixteen
    overlapping audits took every pooled connection, and every bet failed
    with LockTimeoutError until they ended.
    """
    inside, finish = threading.Event(), threading.Event()
    opened: list[Any] = []
    real_store, real_audit = engine_module._store, engine_module.audit

    def store(*args: Any, **kwargs: Any) -> Any:
        opened.append(None)
        return real_store(*args, **kwargs)

    def slow_audit(store: Any) -> Any:
        inside.set()
        assert finish.wait(HANG)  # a big ledger
        return real_audit(store)

    engine = JackpotEngine.open(db_path)
    monkeypatch.setattr(engine_module, "_store", store)
    monkeypatch.setattr(engine_module, "audit", slow_audit)
    queue = _QueueingLock()
    monkeypatch.setattr(engine, "_verify_lock", queue)
    try:
        started = [in_thread(engine.verify) for _ in range(3)]
        assert inside.wait(HANG)
        # The other two wait for the running audit (not a pause that hopes
        # they would have connected by now, were they going to).
        assert queue.wait_for_waiters(2), "the other audits did not wait for the running one"
        assert len(opened) == 1
        finish.set()
        for thread, _ in started:
            thread.join(HANG)
        assert [out[0].ok for _, out in started] == [True, True, True]
        assert len(opened) == 3  # one after the other
    finally:
        finish.set()
        engine.close()


def test_close_keeps_its_timeout_while_a_long_read_runs_and_the_read_closes_the_reader(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = JackpotEngine.open(db_path)
    reading, finish = threading.Event(), threading.Event()
    real_audit = engine_module.audit

    def slow_audit(store: Any) -> Any:
        reading.set()
        assert finish.wait(HANG)  # a big ledger
        return real_audit(store)

    monkeypatch.setattr(engine_module, "audit", slow_audit)
    reader, report = in_thread(engine.verify)
    assert reading.wait(HANG)
    closer, _ = in_thread(lambda: engine.close(timeout=0.2))
    closer.join(HANG)
    assert not closer.is_alive()  # returned while the read still runs
    assert reader.is_alive()
    finish.set()
    reader.join(HANG)
    assert report[0].ok  # the read begun before close() finished normally
    with pytest.raises(apsw.ConnectionClosedError):  # and the reader was closed after it
        engine._reader.load_levels()
    assert _actors_stopped(engine)


def test_a_second_close_without_timeout_is_not_stranded_by_a_lost_wake_up(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in the first close()'s notify_all: the waiting one still sees it finish."""
    engine = JackpotEngine.open(db_path)
    hold = threading.Lock()
    hold.acquire()
    engine._restart_lock = hold  # type: ignore[assignment]
    first_stopping = threading.Event()
    real_stop = _closing.stop_everything

    def stop(engine: JackpotEngine, deadline: float | None = None) -> Any:
        first_stopping.set()
        return real_stop(engine, deadline)

    monkeypatch.setattr(_closing, "stop_everything", stop)
    notify = engine._cond.notify_all
    interrupted: list[bool] = []

    def interrupt_once() -> None:
        if not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        notify()

    first, first_out = in_thread(engine.close)
    assert first_stopping.wait(HANG)  # it holds the shut-down, waiting for the restart lock
    second, second_out = in_thread(engine.close)  # waits for the first, without limit
    monkeypatch.setattr(engine._cond, "notify_all", interrupt_once)
    hold.release()
    first.join(HANG)
    second.join(HANG)
    assert isinstance(first_out[0], KeyboardInterrupt)
    assert not second.is_alive()
    assert second_out == [None]
    assert engine._shut


class _InterruptingFinalizer:
    """Stands in for the engine's finalizer; its first detach() is hit by a Ctrl-C."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.hit = False

    def detach(self) -> Any:
        if not self.hit:
            self.hit = True
            raise KeyboardInterrupt
        return self.real.detach()


def test_a_close_interrupted_at_the_end_is_finished_by_the_next_one(db_path: Path) -> None:
    engine = JackpotEngine.open(db_path)
    finalizer = _InterruptingFinalizer(engine._lost)
    engine._lost = finalizer  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        engine.close()
    engine.close()
    assert engine._shut
    assert not finalizer.real.alive  # dropping it now reports nothing
    assert engine not in _lifecycle.OPEN_ENGINES


_FORK_CLOSE = """
import logging, os, sys
from decimal import Decimal
from jackpot import JackpotEngine, Settings
engine = JackpotEngine.open(sys.argv[1], settings=Settings(lock_timeout_ms=60_000))
engine.contribute(Decimal(10), groups="minor", op_id="before-the-fork")
child = os.fork()
if child == 0:  # a worker closes the engine it inherited: nothing there is its own
    said = []
    class Said(logging.Handler):
        def emit(self, record):
            said.append(record.getMessage())
    logging.getLogger("jackpot").addHandler(Said())
    engine.close()  # would wait minutes for the parent's actors, and stop nothing
    try:
        engine.contribute(Decimal(10), groups="minor")
    except Exception as e:
        said.append(type(e).__name__)
    print("child", said, flush=True)
    os._exit(0)
os.waitpid(child, 0)
print("parent", engine.contribute(Decimal(10), groups="minor", op_id="after").versions,
      engine.verify().ok, flush=True)
engine.close()
"""


def test_close_in_a_forked_child_only_refuses_calls_there(tmp_path: Path) -> None:
    done = run_python(_FORK_CLOSE, str(tmp_path / "a.db"), timeout=HANG * 2)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "child ['EngineClosedError']", "parent {'minor': 3} True"], done.stderr


_FORK_CALLS = """
import os, sys
from decimal import Decimal
from jackpot import EngineClosedError, JackpotEngine, Settings
engine = JackpotEngine.open(sys.argv[1], settings=Settings(lock_timeout_ms=2_000))
engine.contribute(Decimal(10), groups="minor", op_id="before-the-fork")
engine._reader_lock.acquire()  # a read in flight as the process forks: copied held
child = os.fork()
if child == 0:  # a worker uses the engine it inherited (gunicorn --preload, say)
    said = []
    for call in (lambda: engine.contribute(Decimal(10), groups="minor", op_id="child"),
                 lambda: engine.contribute(Decimal(10), groups=None, op_id="child-3"),
                 engine.pools, engine.verify, lambda: engine.history("minor"),
                 engine.health, engine.metrics_text):
        try:
            call()
            said.append("ran")
        except EngineClosedError as e:
            said.append("refused" if f"opened in process {os.getppid()}" in str(e) else str(e))
    print("child", said, flush=True)
    os._exit(0)
engine._reader_lock.release()
os.waitpid(child, 0)
print("parent", engine.contribute(Decimal(10), groups="minor", op_id="after").versions,
      engine.verify().ok, flush=True)
engine.close()
"""


def test_calls_on_an_engine_inherited_across_fork_are_refused_at_once(tmp_path: Path) -> None:
    # They waited the lock timeout (2 s here) for the parent's actors, which
    # are not in the child, then reported a LockTimeoutError; reads went
    # through the parent's SQLite connection, which SQLite forbids (or hung, on a
    # lock a read in flight held as the process forked); health() said "ok".
    done = run_python(_FORK_CALLS, str(tmp_path / "a.db"), timeout=HANG * 2)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "child ['refused', 'refused', 'refused', 'refused', 'refused', 'refused', 'refused']",
        "parent {'minor': 3} True"], done.stderr


_FORK_SERVE = """
import os, sys
from decimal import Decimal
from jackpot import AsyncJackpotEngine, EngineClosedError, JackpotEngine, serve_metrics
engine = JackpotEngine.open(sys.argv[1])
engine.contribute(Decimal(10), groups="minor", op_id="before-the-fork")
wrapped = AsyncJackpotEngine(engine)
child = os.fork()
if child == 0:  # a worker serves the metrics of the engine it inherited
    said = []
    for served in (engine, wrapped):
        try:
            server, _ = serve_metrics(served, 0)
            server.shutdown()
            server.server_close()
            said.append("served")
        except EngineClosedError as e:
            said.append("refused" if f"opened in process {os.getppid()}" in str(e) else str(e))
    print("child", said, flush=True)
    os._exit(0)
os.waitpid(child, 0)
engine.close()
"""


def test_serving_the_metrics_of_an_engine_inherited_across_fork_is_refused(
        tmp_path: Path) -> None:
    # It served the parent's counters as they were at the fork, frozen, and
    # no level or health series (metrics_text() there is refused for that).
    done = run_python(_FORK_SERVE, str(tmp_path / "a.db"), timeout=HANG * 2)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["child ['refused', 'refused']"], done.stderr


_FORK_HELD = """
import os, signal, sys, threading
from decimal import Decimal
from jackpot import EngineClosedError, JackpotEngine, Settings
engine = JackpotEngine.open(sys.argv[1], settings=Settings(lock_timeout_ms=2_000))
engine.contribute(Decimal(10), groups="minor", op_id="before-the-fork")
held, forked = threading.Event(), threading.Event()

def hold():  # another thread's call entering, and an actor counting, as the process forks
    with engine._cond, engine.stats._lock:
        held.set()
        forked.wait()

threading.Thread(target=hold).start()
held.wait()
child = os.fork()
if child == 0:  # a worker given bad arguments, then closing what it inherited
    signal.alarm(int(sys.argv[2]))  # a hung child ends, and says nothing
    said = []
    for call in (lambda: engine.contribute(10.5, groups="minor"),
                 lambda: engine.process_win("nowhere"), engine.close):
        try:
            call()
            said.append("ran")
        except EngineClosedError as e:
            said.append("refused" if f"opened in process {os.getppid()}" in str(e) else str(e))
        except Exception as e:
            said.append(type(e).__name__)
    print("child", said, flush=True)
    os._exit(0)
forked.set()
os.waitpid(child, 0)
print("parent", engine.contribute(Decimal(10), groups="minor", op_id="after").versions,
      engine.verify().ok, flush=True)
engine.close()
"""


def test_a_forked_child_takes_no_lock_of_its_parents_engine(tmp_path: Path) -> None:
    # A call with bad arguments logged and counted its refusal (the stats'
    # lock) and close() took the engine's condition before either looked at
    # the process: a lock another thread held as the process forked is held
    # for ever in the child, which hung there.
    done = run_python(_FORK_HELD, str(tmp_path / "a.db"), str(HANG), timeout=HANG * 3)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "child ['refused', 'refused', 'ran']", "parent {'minor': 3} True"], done.stderr


def test_an_async_write_stranded_at_a_stopped_actor_by_a_closed_loop_does_not_hold_close(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Queued at an actor that stopped; the loop ends before its liveness check."""
    engine = asyncio.run(AsyncJackpotEngine.open(db_path))
    actor = engine.sync._pools["minor"]
    stopped = threading.Event()
    real_drain = PoolActor.on_receive

    def stop_instead(self: PoolActor, message: Any) -> Any:
        stopped.set()
        self.stop()  # the actor goes away without serving what is queued
        return None

    monkeypatch.setattr(PoolActor, "on_receive", stop_instead)

    async def send_and_leave() -> None:
        task = asyncio.ensure_future(engine.contribute("10", groups="minor", op_id="late"))
        await asyncio.sleep(0)  # sent: queued at the actor
        assert await asyncio.to_thread(stopped.wait, HANG)
        assert await asyncio.to_thread(actor.actor_ref.actor_stopped.wait, HANG)
        task.cancel()  # the program ends; the loop closes before any check ran

    asyncio.run(send_and_leave())
    monkeypatch.setattr(PoolActor, "on_receive", real_drain)
    assert engine.sync._inflight == 1
    engine.sync.close(timeout=HANG)
    assert engine.sync._inflight == 0  # withdrawn (never applied), its books closed
    assert engine.stats.snapshot().get("operations:contribute:rejected") == 1
    with JackpotEngine.open(db_path) as again:
        assert again.pool("minor").version == 1


# -- found by the review of the fixes above ------------------------------------------


def test_close_from_another_engines_actor_thread_closes_this_one_at_once(
        tmp_path: Path) -> None:
    """Only this engine's own actor threads hand the shut-down off."""
    first = JackpotEngine.open(tmp_path / "a.db")
    other = JackpotEngine.open(tmp_path / "b.db")
    observer = _CloseOnLockWait(other)
    first.stats.observers.append(observer)
    try:
        first.contribute("10", groups="minor")  # its actor closes the other engine
        assert observer.shut_when_close_returned  # done in that call, not handed off
        assert _actors_stopped(other)
    finally:
        first.close()


def test_close_waits_for_a_calls_log_line_and_counts(db_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    engine = JackpotEngine.open(db_path)
    logging_started, go_on, close_waits = threading.Event(), threading.Event(), threading.Event()

    class SlowHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "operation", None) == "win":
                logging_started.set()
                assert go_on.wait(HANG)

    real_wait = _closing._await_inflight
    in_flight_when_close_began: list[int] = []

    def await_inflight(engine: JackpotEngine, deadline: float) -> int:
        in_flight_when_close_began.append(engine._inflight)
        close_waits.set()
        return real_wait(engine, deadline)

    monkeypatch.setattr(_closing, "_await_inflight", await_inflight)
    with _handler(SlowHandler()):
        caller, _ = in_thread(lambda: engine.process_win("minor", op_id="w1"))
        assert logging_started.wait(HANG)
        closer, counted = in_thread(lambda: engine.close() or engine.stats.snapshot())
        assert close_waits.wait(HANG)
        go_on.set()
        closer.join(HANG)
        caller.join(HANG)
    assert in_flight_when_close_began == [1]  # the call, logging, is still in flight
    assert counted[0].get("operations:win:ok") == 1  # counted before close() returned


def test_a_read_refused_by_a_racing_close_still_closes_the_reader(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """close() left the reader to the read holding it; that read was then refused."""
    engine = JackpotEngine.open(db_path)
    holding, go_on = threading.Event(), threading.Event()
    real_check = engine._check_open

    def check_open() -> None:
        if not holding.is_set():  # the read, with the reader's lock held
            holding.set()
            assert go_on.wait(HANG)
        real_check()

    monkeypatch.setattr(engine, "_check_open", check_open)
    reader, out = in_thread(engine.pools)
    assert holding.wait(HANG)
    engine.close(timeout=0.2)  # gives up on the reader's lock: the read is to close it
    go_on.set()
    reader.join(HANG)
    assert isinstance(out[0], EngineClosedError)
    with pytest.raises(apsw.ConnectionClosedError):
        engine._reader.load_levels()


def test_an_async_call_swept_early_is_settled_when_its_actor_dies_later(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A closed loop's calls stay under watch until settled, not only at the first sweep."""
    engine = AsyncJackpotEngine(JackpotEngine.open(db_path))
    actor = engine.sync._pools["minor"]
    taken, die = threading.Event(), threading.Event()
    real_run = PoolActor._run

    def run(self: PoolActor, ops: Any, *rest: Any) -> Any:
        if ops[0].op_id == "doomed":
            taken.set()
            assert die.wait(HANG)
            raise SystemExit  # the actor dies mid-batch without answering
        return real_run(self, ops, *rest)

    monkeypatch.setattr(PoolActor, "_run", run)
    loop = asyncio.new_event_loop()

    tasks: list[asyncio.Task[Any]] = []

    async def send() -> None:
        tasks.append(asyncio.ensure_future(engine.contribute("1", groups="minor",
                                                             op_id="doomed")))
        assert await asyncio.to_thread(taken.wait, HANG)  # the actor works on it
        tasks.append(asyncio.ensure_future(engine.contribute("1", groups="minor",
                                                             op_id="queued")))
        await asyncio.sleep(0)  # sent: queued behind it

    loop.run_until_complete(send())
    loop.close()  # both calls in flight: one taken by the actor, one queued behind it
    engine._orphan_closed_loops()  # the actor still lives: nothing to settle yet
    assert engine.sync._inflight == 2
    die.set()
    assert actor.actor_ref.actor_stopped.wait(HANG)
    engine.sync.close(timeout=HANG)
    assert engine.sync._inflight == 0
    snapshot = engine.stats.snapshot()
    assert snapshot.get("operations:contribute:error") == 1  # taken: outcome unknown
    assert snapshot.get("operations:contribute:rejected") == 1  # queued: withdrawn



class _Outcomes(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.outcomes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.outcomes.append(getattr(record, "outcome", ""))


# Pykka's stop logs "Unregistered", then "Stopped", then calls on_stop; a raising
# line is answered to the stopper ("Exception returned ..."), or, if that line
# raises too, ends the actor's thread unanswered.
@pytest.mark.parametrize("starts", [
    ("Stopped",), ("Stopped", "Exception returned"),
    ("Unregistered",), ("Unregistered", "Exception returned"),
], ids=["stopped", "stopped-then-answer", "unregistered", "unregistered-then-answer"])
def test_close_closes_every_connection_though_pykkas_stop_logging_raises(
        db_path: Path, monkeypatch: pytest.MonkeyPatch, starts: tuple[str, ...]) -> None:
    """Each actor closes its connection in a request of its own, then stops.

    Closed in `on_stop`, after Pykka's log lines: with the `pykka` logger at
    DEBUG and a filter raising there, close() raised the filter's error (the
    reader and the other actors left open), or waited out its timeout for an
    actor whose thread had ended; either way the connections stayed open.
    """
    opened, closed = track_stores(monkeypatch)
    before = set(pykka.ActorRegistry.get_all())
    engine = JackpotEngine.open(db_path)
    engine.contribute(Decimal(10), groups=("major", "minor"), op_id="bet")  # the WAL holds it
    actors = [*engine._pools.values(), engine._coordinator]
    assert engine._checkpointer is not None
    actors.append(engine._checkpointer._actor)
    heard = _Outcomes()
    with pykka_debug_raising_on(*starts), _handler(heard):
        engine.close(timeout=HANG)
    assert "stop_timeout" not in heard.outcomes  # no actor was waited for until the deadline
    assert all(p.actor_ref.actor_stopped.is_set() for p in actors)
    assert left_running(before) == set()
    assert len(opened) == 7  # the open's, the reader, 3 levels, the coordinator, the checkpointer
    assert [s for s in opened if s not in closed] == []
    # The last connection to close copied the WAL into the file and removed it.
    assert not Path(f"{db_path}-wal").exists()
    with JackpotEngine.open(db_path) as again:
        assert again.pools()["minor"].version == 2  # (created, then the bet)


def test_close_waits_for_an_actor_still_closing_its_connection(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """close() returns once every actor has closed its connection, however long that takes.

    An actor taking close()'s request is marked stopped before it closes its
    connection (as Pykka's own stop does). close() gave an actor seen stopped
    a grace of one second for its answer, meant for one that stopped by
    itself and never answers: one still closing its connection (the last
    folds the WAL into the file, under an exclusive lock, and syncs it) was
    counted stopped after that second, and close() returned with a
    connection still open if it took longer (a stalled disk, a starved
    machine): the -wal still there, a read right after close() refused with
    "database is locked" (a few ms here, 8 at most in 160 closes under CPU
    load: rare, but nothing bounds it). Here any grace is too
    short (none at all), and the actor of minor is held inside its close
    until close() has looked at its unanswered stop three times since, or
    returned.
    """
    monkeypatch.setattr(_start, "_GRACE", 0.0)
    engine = JackpotEngine.open(db_path)
    engine.contribute(Decimal(10), groups="minor", op_id="bet")
    minor = engine._pools["minor"].actor_ref.actor_urn
    changed = threading.Condition()
    waiting_for: list[str] = []  # the actor close() waits for now
    closing: list[None] = []  # minor's close has begun
    looks: list[None] = []  # close()'s looks since then at minor's unanswered stop
    returned: list[bool] = []
    seen_returned: list[bool] = []  # whether close() had returned as minor's close went on
    real_wait_stopped, real_answered = _lifecycle.wait_stopped, _start._answered

    def wait_stopped(ref: Any, stopped: Any, deadline: float) -> bool:
        waiting_for[:] = [ref.actor_urn]
        return real_wait_stopped(ref, stopped, deadline)

    def answered(future: Any, deadline: float) -> bool:
        done = real_answered(future, deadline)
        if not done and waiting_for == [minor] and closing:
            with changed:
                looks.append(None)
                changed.notify_all()
        return done

    real_on_stop = PoolActor.on_stop

    def on_stop(actor: PoolActor) -> None:
        if actor.actor_urn == minor:
            with changed:
                closing.append(None)
                assert changed.wait_for(lambda: returned or len(looks) >= 3, HANG)
                seen_returned.append(bool(returned))
        real_on_stop(actor)

    def close() -> None:
        engine.close()
        with changed:
            returned.append(True)
            changed.notify_all()

    monkeypatch.setattr(_lifecycle, "wait_stopped", wait_stopped)
    monkeypatch.setattr(_start, "_answered", answered)
    monkeypatch.setattr(PoolActor, "on_stop", on_stop)
    closer, _ = in_thread(close)
    closer.join(HANG)
    assert not closer.is_alive()
    assert seen_returned == [False]  # was: [True], close() had returned as it went on closing
    assert not Path(f"{db_path}-wal").exists()  # the last close folded it in, then returned


# -- closing and interrupts: the log tells what happened -----------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def said(self, outcome: str) -> list[tuple[str, str]]:
        return [(r.levelname, r.getMessage()) for r in self.records
                if getattr(r, "outcome", None) == outcome]


def _held_batches(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Hold every level's batch as it starts (as a write lock another connection holds)."""
    from jackpot.actors import pool  # noqa: PLC0415 - its batch, held busy

    return hold(monkeypatch, pool, "execute_batch")


_ONE_LEFT = ("WARNING", ("close() timed out with 1 call still in flight: the actors were asked "
                         "to stop after their work, with no time left to wait for that"))


@contextmanager
def _one_call_held(db_path: Path, monkeypatch: pytest.MonkeyPatch
                   ) -> Iterator[tuple[JackpotEngine, _Records]]:
    """An engine with one call held in flight, and what its log says meanwhile.

    On leaving, the call is let on: it runs on to its outcome, and the
    engine is closed.
    """
    engine = JackpotEngine.open(db_path)
    engine.contribute("10", groups="minor", op_id="warm-up")
    entered, go = _held_batches(monkeypatch)
    heard = _Records()
    try:
        caller, out = in_thread(lambda: engine.contribute("10", groups="minor", op_id="busy"))
        assert entered.wait(HANG)
        with _handler(heard):
            yield engine, heard
    finally:
        go.set()
    caller.join(HANG)
    assert out[0].versions == {"minor": 3}  # it ran on to its outcome
    engine.close()
    assert _actors_stopped(engine)


def test_close_whose_timeout_calls_in_flight_used_up_calls_no_actor_late(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: every actor, idle ones too, was logged "did not stop in time" (ERROR).

    The wait for the call in flight took the whole timeout, so each was asked to
    stop with the deadline already past and given no time at all.
    """
    with _one_call_held(db_path, monkeypatch) as (engine, heard):
        engine.close(timeout=0.3)
        assert heard.said("stop_timeout") == []
        assert heard.said("close_timeout") == [_ONE_LEFT]


def test_closes_that_give_up_together_on_a_call_in_flight_tell_it_once(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: each of three close(timeout=0) at once logged the same WARNING, and a later one again.

    Each stops waiting with the call still in flight (a barrier holds them
    all there until every one has); no call starts once the engine is
    closed, so the calls each is left with are those the first one told.
    """
    all_left = threading.Barrier(3)
    with _one_call_held(db_path, monkeypatch) as (engine, heard):
        await_inflight = _closing._await_inflight

        def left_together(engine: JackpotEngine, deadline: float) -> int:
            left = await_inflight(engine, deadline)
            all_left.wait(HANG)  # none tells anything before all three stopped waiting
            return left

        monkeypatch.setattr(_closing, "_await_inflight", left_together)
        closed = run_together(*[lambda: engine.close(timeout=0)] * 3)
        monkeypatch.setattr(_closing, "_await_inflight", await_inflight)
        engine.close(timeout=0)  # later, the call still in flight
        assert closed == [None] * 3
        assert heard.said("close_timeout") == [_ONE_LEFT]
    assert heard.said("close_timeout") == [_ONE_LEFT]  # (and the close after the call ended)


def test_a_close_that_gives_up_first_but_returns_to_the_one_stopping_leaves_it_told(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: neither close() said the call it left in flight.

    B gave up on the call first (and took the telling of it), then found A
    stopping the actors and, its time up, returned to leave A to tell what
    it left; A, having given up second, took it as told.
    """
    b_gave_up, b_go = threading.Event(), threading.Event()
    a_stopping, a_go = threading.Event(), threading.Event()
    with _one_call_held(db_path, monkeypatch) as (engine, heard):
        await_calls, stop_everything = _closing._await_calls, _closing.stop_everything

        def b_pauses(engine: JackpotEngine, wait_limit: float) -> Any:  # B's, the first
            left = await_calls(engine, wait_limit)
            if not b_gave_up.is_set():
                b_gave_up.set()
                assert b_go.wait(HANG)
            return left

        def a_holds(engine: JackpotEngine, deadline: float | None = None) -> Any:
            a_stopping.set()
            assert a_go.wait(HANG)
            return stop_everything(engine, deadline)

        monkeypatch.setattr(_closing, "_await_calls", b_pauses)
        monkeypatch.setattr(_closing, "stop_everything", a_holds)
        try:
            b, b_out = in_thread(lambda: engine.close(timeout=0))
            assert b_gave_up.wait(HANG)
            a, a_out = in_thread(lambda: engine.close(timeout=0))
            assert a_stopping.wait(HANG)
            b_go.set()
            b.join(HANG)
            a_go.set()
            a.join(HANG)
        finally:
            b_go.set()
            a_go.set()
        assert (a_out, b_out) == ([None], [None])
        assert heard.said("close_timeout") == [_ONE_LEFT]


def test_a_close_interrupted_before_it_tells_the_calls_it_left_leaves_them_to_the_next(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: Ctrl-C while the first close() stopped the actors, and no close() said the call.

    The first had taken the telling of it as it gave up, and the next took
    it as told.
    """
    with _one_call_held(db_path, monkeypatch) as (engine, heard):
        stop_everything, armed = interrupting_once(_closing.stop_everything)
        monkeypatch.setattr(_closing, "stop_everything", stop_everything)
        with pytest.raises(KeyboardInterrupt):
            engine.close(timeout=0)
        assert not armed
        assert heard.said("close_timeout") == []
        engine.close(timeout=0)  # the call still in flight
        assert heard.said("close_timeout") == [_ONE_LEFT]


def test_an_actor_that_does_not_stop_in_time_is_named_by_what_it_serves(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: "ActorRef (urn:uuid:...) did not stop in time": no level, nothing to act on."""
    from jackpot.actors import Coordinator  # noqa: PLC0415 - each kind of actor, held busy
    from jackpot.actors.checkpoint import _CheckpointActor  # noqa: PLC0415

    release = threading.Event()
    busy = [threading.Event() for _ in range(3)]

    def held(n: int) -> Callable[[Any], None]:
        def hang(_actor: Any) -> None:  # a request that outlasts close()'s timeout
            busy[n].set()
            release.wait(HANG)
        return hang

    for n, kind in enumerate((PoolActor, Coordinator, _CheckpointActor)):
        monkeypatch.setattr(kind, "hang", held(n), raising=False)
    engine = JackpotEngine.open(db_path)
    assert engine._checkpointer is not None
    for proxy in (engine._pools["minor"], engine._coordinator, engine._checkpointer._actor):
        proxy.hang()
    assert all(b.wait(HANG) for b in busy)
    heard = _Records()
    try:
        with _handler(heard):
            engine.close(timeout=0.5)
    finally:
        release.set()
    late = "did not stop in time: it is still running a request, and stops when that ends"
    assert sorted(heard.said("stop_timeout")) == [
        ("ERROR", f"actor of level minor {late}"), ("ERROR", f"checkpointer {late}"),
        ("ERROR", f"coordinator {late}")]
    assert [getattr(r, "level", None) for r in heard.records
            if getattr(r, "outcome", None) == "stop_timeout"].count("minor") == 1
    assert _actors_stopped(engine)
    assert engine._checkpointer._actor.actor_ref.actor_stopped.wait(HANG)


def test_pykkas_unregistered_line_failing_at_close_is_told_as_what_it_is(
        db_path: Path) -> None:
    """Before: "reporting an operation's outcome failed", though no operation was involved."""
    engine = JackpotEngine.open(db_path)
    actors = [engine._coordinator, *engine._pools.values()]
    assert engine._checkpointer is not None
    actors.append(engine._checkpointer._actor)
    heard = _Records()
    with pykka_debug_raising_on("Unregistered"), _handler(heard):
        engine.close(timeout=HANG)
    told = "Pykka's log line on unregistering {} failed; the actor is stopped all the same"
    assert sorted(heard.said("report_failed")) == sorted(
        ("ERROR", told.format(p.actor_ref)) for p in actors)
    assert all(p.actor_ref.actor_stopped.is_set() for p in actors)


def test_a_new_engine_writes_though_a_timed_out_close_ends_as_it_opens(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reload: close(timeout) gives up on a busy actor; the new engine opens meanwhile.

    The old actor's connection, the last, closed as the new engine's first
    connection had opened the file and not yet read it: SQLite folded and
    deleted the -wal and -shm, the new connection made them anew. Was: taken
    for files someone else replaced, open() refused with StorageError ("the
    -wal file ... was removed or replaced since this engine opened it").
    """
    from jackpot.storage import SQLiteStore  # noqa: PLC0415 - as the engine opens it

    release, busy = threading.Event(), threading.Event()

    def hang(_actor: Any) -> None:  # a request that outlasts close()'s timeout
        busy.set()
        release.wait(HANG)

    monkeypatch.setattr(PoolActor, "hang", hang, raising=False)
    opened: list[SQLiteStore] = []
    closed: set[int] = set()
    changed = threading.Condition()
    init, close, recognise = SQLiteStore.__init__, SQLiteStore.close, SQLiteStore._recognise

    def tracked_init(store: SQLiteStore, *args: Any, **kwargs: Any) -> None:
        init(store, *args, **kwargs)
        opened.append(store)

    def tracked_close(store: SQLiteStore) -> None:
        close(store)
        with changed:
            closed.add(id(store))
            changed.notify_all()

    monkeypatch.setattr(SQLiteStore, "__init__", tracked_init)
    monkeypatch.setattr(SQLiteStore, "close", tracked_close)
    old = JackpotEngine.open(db_path)
    old.contribute(Decimal(10), groups="minor", op_id="old")  # its write noted the -wal and -shm
    old_stores = list(opened)
    old._pools["minor"].hang()
    assert busy.wait(HANG)
    old.close(timeout=0.2)  # gives up on the busy actor: its connection stays open
    first_read = threading.Event()

    def first_read_ends_the_old(store: SQLiteStore, *, allow_empty: bool) -> int:
        if not first_read.is_set():  # the new open()'s first connection, not read yet
            first_read.set()
            for suffix in ("-wal", "-shm"):  # (kept linked: the new ones get other inodes)
                (db_path.parent / f"kept{suffix}").hardlink_to(f"{db_path}{suffix}")
            release.set()  # the busy actor ends its request, stops, closes its connection
            with changed:
                assert changed.wait_for(lambda: {id(s) for s in old_stores} <= closed, HANG)
            assert not Path(f"{db_path}-wal").exists()  # the last close folded it, deleted it
            assert not Path(f"{db_path}-shm").exists()
        return recognise(store, allow_empty=allow_empty)

    monkeypatch.setattr(SQLiteStore, "_recognise", first_read_ends_the_old)
    try:
        with JackpotEngine.open(db_path) as new:  # was: StorageError, "-wal ... replaced"
            assert first_read.is_set()
            new.contribute(Decimal(10), groups="minor", op_id="new")
            assert new.health().ok
            assert new.pools()["minor"].version == 3  # (created, then both bets)
    finally:
        release.set()
