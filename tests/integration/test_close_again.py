"""A close() after one that gave up (its timeout ran out) finishes what that one left.

`close(timeout=0)` (in a signal handler, say) leaves a busy actor, or a read,
to stop by itself. A later `close()` used to return at once, while that
actor still held its connection (and, the last to close, checkpointed the
WAL under an exclusive lock): a test reading the file right after failed
"database is locked" 5 times in 150. Each test here fails on the code before.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from _helpers import HANG, hearing, in_thread, run_python
from jackpot import (
    AsyncJackpotEngine,
    JackpotEngine,
    Settings,
    _closing,
    _lifecycle,
    health,
    reads,
)
from jackpot import engine as engine_module
from jackpot.actors import PoolActor

_LATE = ("actor of level minor did not stop in time: it is still running a request, and "
         "stops when that ends")


def _exclusive_at_once(path: Path) -> tuple[int, int, int]:
    """Take the file's exclusive lock, then truncate its WAL, waiting for no one.

    Returns the checkpoint's (busy, WAL frames, frames copied); raises
    `apsw.BusyError` if any connection still holds a lock.
    """
    conn = apsw.Connection(str(path))
    try:
        conn.set_busy_timeout(0)
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("ROLLBACK")
        busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0]
        return busy, frames, copied
    finally:
        conn.close()


@pytest.fixture
def held_minor(db_path: Path, monkeypatch: pytest.MonkeyPatch
               ) -> Iterator[tuple[JackpotEngine, threading.Event]]:
    """An engine (a bet written) whose level minor's actor runs a request until `release`."""
    release, busy = threading.Event(), threading.Event()

    def hang(_actor: Any) -> None:  # a request that outlasts close()'s timeout
        busy.set()
        assert release.wait(HANG)

    monkeypatch.setattr(PoolActor, "hang", hang, raising=False)
    engine = JackpotEngine.open(db_path)
    try:
        engine.contribute("10", op_id="bet")  # the WAL holds frames for the last close to fold
        engine._pools["minor"].hang()
        assert busy.wait(HANG)
        yield engine, release
    finally:
        release.set()
        engine.close()


def _closing_in_thread(close: Callable[[], object], waiting: threading.Event,
                       released: threading.Event) -> tuple[threading.Thread, list[Any]]:
    """`close()` in a thread: it says whether `released` was set as it returned.

    `waiting` is set as it returns too, should it return without waiting.
    """
    def closing() -> bool:
        close()
        done = released.is_set()
        waiting.set()
        return done

    return in_thread(closing)


def _sync_close(engine: JackpotEngine, timeout: float | None = None) -> None:
    engine.close(timeout)


def _async_close(engine: JackpotEngine, timeout: float | None = None) -> None:
    asyncio.run(AsyncJackpotEngine(engine).close(timeout))


def _watch(monkeypatch: pytest.MonkeyPatch, name: str, when: Callable[..., bool]
           ) -> threading.Event:
    """Wrap close()'s module's `name`: the event is set at a call whose arguments `when` takes."""
    called = threading.Event()
    real = getattr(_closing, name)

    def watched(*args: Any) -> Any:
        if when(*args):
            called.set()
        return real(*args)

    monkeypatch.setattr(_closing, name, watched)
    return called


@pytest.mark.parametrize("close", [_sync_close, _async_close], ids=["sync", "asyncio"])
def test_a_close_after_a_close_that_gave_up_waits_for_the_busy_actor(
        held_minor: tuple[JackpotEngine, threading.Event], db_path: Path,
        monkeypatch: pytest.MonkeyPatch, close: Callable[..., None]) -> None:
    """Before: the second close() returned at once, the actor's connection still open."""
    engine, release = held_minor
    held = engine._pools["minor"].actor_ref
    close(engine, 0)  # leaves the actor to stop by itself
    waiting = _watch(monkeypatch, "wait_stopped", lambda ref, *_: ref == held)
    closer, out = _closing_in_thread(lambda: close(engine), waiting, release)
    assert waiting.wait(HANG)  # it waits for the held actor (or returned: out says so)
    release.set()
    closer.join(HANG)
    assert out == [True], "close() returned before the busy actor was let go"
    assert held.actor_stopped.is_set()
    assert _exclusive_at_once(db_path) == (0, 0, 0)  # no connection left: the WAL was folded


def test_a_close_with_a_timeout_after_one_that_gave_up_logs_the_actor_still_busy(
        held_minor: tuple[JackpotEngine, threading.Event], db_path: Path) -> None:
    """Before: nothing logged, as the second close() did not look at the actors at all."""
    engine, release = held_minor
    engine.close(timeout=0)
    assert engine._checkpointer is not None
    idle = [engine._coordinator, engine._pools["major"], engine._pools["mega"],
            engine._checkpointer._actor]
    assert all(p.actor_ref.actor_stopped.wait(HANG) for p in idle)  # only minor's is late
    with hearing() as said:
        engine.close(timeout=0.5)
    assert [(severity, line) for severity, line, _, outcome in said
            if outcome == "stop_timeout"] == [("ERROR", _LATE)]
    release.set()
    engine.close()  # and the next one without a timeout finishes it
    assert _exclusive_at_once(db_path) == (0, 0, 0)


class _WatchedLock:
    """A lock that sets `waited` when asked for with a timeout (as close() asks for it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.waited = threading.Event()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *_exc: object) -> None:
        self._lock.release()

    def acquire(self, timeout: float) -> bool:
        self.waited.set()
        return self._lock.acquire(timeout=timeout)

    def release(self) -> None:
        self._lock.release()


_READ_BY = {"pools": (reads, "pools"), "verify": (engine_module, "audit"),
            "health": (health, "_take_lock_and_roll_back")}
"""What each read calls once it holds its connection (health(): its probe's)."""


def _held_read(engine: JackpotEngine, read: str, monkeypatch: pytest.MonkeyPatch,
               finish: threading.Event) -> tuple[threading.Thread, list[Any]]:
    """Start `read` ("pools", "verify" or "health") in a thread; return once it holds its connection.

    It reads on once `finish` is set.
    """
    reading = threading.Event()
    module, name = _READ_BY[read]
    real = getattr(module, name)

    def slow(store: Any) -> Any:
        reading.set()
        assert finish.wait(HANG)  # a read the storage answers slowly, a big ledger
        return real(store)

    monkeypatch.setattr(module, name, slow)
    thread, out = in_thread(getattr(engine, read))
    assert reading.wait(HANG)
    return thread, out


def _watch_wait(monkeypatch: pytest.MonkeyPatch, name: str) -> threading.Event:
    """Return an event set once a close() waits (its function `name`: "_close_reader"), from now on.

    The function must exist (`setattr` raises otherwise): a wrapper set on
    a name that close() no longer calls would never be set, and the test
    would wait its whole bound for nothing.
    """
    waiting = threading.Event()
    real = getattr(_closing, name)

    def wait(engine: JackpotEngine, deadline: float) -> bool:
        waiting.set()
        return bool(real(engine, deadline))

    monkeypatch.setattr(_closing, name, wait)
    return waiting


_LEFT = {"pools": "a read", "verify": "verify()", "health": "health()'s probe"}
"""How close() names each read it leaves running."""

_CALM = Settings(health_probe_timeout_ms=HANG * 1000)
"""A health() caller waiting for its probe as long as the test holds it."""


@pytest.mark.parametrize("read", ["pools", "verify", "health"])
def test_a_close_after_a_close_that_gave_up_waits_for_the_read_holding_a_connection(
        db_path: Path, monkeypatch: pytest.MonkeyPatch, read: str) -> None:
    """Before: the second close() returned while the read still held its connection open.

    A read on the reader (`pools()`) closes the reader as it ends; `verify()`,
    and `health()`'s probe, read through a connection of their own, which
    close() did not wait for at all.
    """
    finish = threading.Event()
    engine = JackpotEngine.open(db_path, settings=_CALM)
    verifies = _WatchedLock()
    engine._verify_lock = verifies  # type: ignore[assignment]
    try:
        engine.contribute("10", op_id="bet")
        reader, out = _held_read(engine, read, monkeypatch, finish)
        engine.close(timeout=0)  # leaves the connection to the read
        with hearing() as said:
            engine.close(timeout=0.3)
        assert [line for _, line, _, _ in said if "end in time" in line] == [
            (f"{_LEFT[read]} did not end in time: it still holds a connection to the "
             "database, and closes it when it ends")]
        verifies.waited.clear()
        waiting = {"pools": lambda: _watch_wait(monkeypatch, "_close_reader"),
                   "verify": lambda: verifies.waited,
                   "health": lambda: _watch_wait(monkeypatch, "_await_probes")}[read]()
        closer, closed = _closing_in_thread(engine.close, waiting, finish)
        assert waiting.wait(HANG)
        finish.set()
        closer.join(HANG)
        reader.join(HANG)
        assert closed == [True], "close() returned before the read was let go"
        if read == "pools":  # the read begun before close() ended normally
            assert out[0]["minor"].version == 2
            with pytest.raises(apsw.ConnectionClosedError):
                engine._reader.load_levels()
        else:
            assert out[0].ok, out[0]
        assert _exclusive_at_once(db_path) == (0, 0, 0)
    finally:
        finish.set()
        engine.close()


def test_the_exit_hook_still_finishes_a_close_that_gave_up(
        held_minor: tuple[JackpotEngine, threading.Event]) -> None:
    """Before: close(timeout=0) took the engine off the exit hook's list at once.

    An exit then cut its busy actor off with its connection open, though it
    would stop within the exit's bound.
    """
    engine, release = held_minor
    engine.close(timeout=0)
    assert engine in _lifecycle.OPEN_ENGINES  # the exit hook would close it
    release.set()
    engine.close()
    assert engine not in _lifecycle.OPEN_ENGINES


_DROPPED_AFTER_GIVING_UP = """
import atexit, gc, sys, threading, weakref
from jackpot import JackpotEngine
from jackpot import _closing
from jackpot.actors import PoolActor

busy, release = threading.Event(), threading.Event()
real_wait = _closing.wait_stopped

def wait_stopped(*args):
    release.set()  # a close() waits for the busy actor: it ends now
    return real_wait(*args)

def hang(_actor):
    busy.set()
    assert release.wait(30)

PoolActor.hang = hang
_closing.wait_stopped = wait_stopped
atexit.register(lambda: print("stopped at exit", ref.actor_stopped.is_set()))  # after the hook
engine = JackpotEngine.open(sys.argv[1])
engine.contribute("10", op_id="bet")
ref = engine._pools["minor"].actor_ref
engine._pools["minor"].hang()
assert busy.wait(30)
engine.close(timeout=0)
del engine
gc.collect()
"""


def test_the_exit_hook_finishes_a_close_that_gave_up_on_an_engine_then_dropped(
        db_path: Path) -> None:
    """Before: dropped, it was finished by nobody, its busy actor cut off at exit.

    Only a weak reference kept it on the exit hook's list, and close() had
    taken it off the reaper's (the finalizer of an engine dropped open).
    """
    done = run_python(_DROPPED_AFTER_GIVING_UP, str(db_path), timeout=HANG * 2)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["stopped at exit True"], done.stderr


@pytest.mark.parametrize("read", ["verify", "health"])
def test_a_close_waits_for_a_verify_or_health_in_progress_within_its_bound(
        db_path: Path, monkeypatch: pytest.MonkeyPatch, read: str) -> None:
    """Before: close() returned at once, the audit's (or the probe's) own connection still open."""
    finish = threading.Event()
    engine = JackpotEngine.open(db_path, settings=_CALM)
    verifies = _WatchedLock()
    engine._verify_lock = verifies  # type: ignore[assignment]
    try:
        waited = (verifies.waited if read == "verify"
                  else _watch_wait(monkeypatch, "_await_probes"))
        auditor, report = _held_read(engine, read, monkeypatch, finish)
        closer, closed = _closing_in_thread(engine.close, waited, finish)
        assert waited.wait(HANG)  # it waits for the read (or returned: closed says)
        finish.set()
        closer.join(HANG)
        auditor.join(HANG)
        assert closed == [True], f"close() returned before the {read} was let go"
        assert report[0].ok, report[0]  # the read begun before close() ended normally
        assert _exclusive_at_once(db_path) == (0, 0, 0)
    finally:
        finish.set()
        engine.close()
