"""Lock timeout: another connection holds the database write lock.

With `Settings(lock_timeout_ms=300)` an operation waits for the lock about
that long (the busy handler polls; it neither gives up early nor sleeps
past it), then raises `LockTimeoutError` having changed nothing. Once the
lock is free the engine serves again, and the same request is applied once.
Elapsed times are measured with `time.monotonic()` only from below (it
waited at least the timeout: no scheduler makes a wait shorter); that it
gave up after one wait, not retried, is told by the counters, and that the
handler stops at its deadline is checked on a fake clock, never by an
upper bound a loaded machine can break.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import apsw
import pytest

from _helpers import in_thread, table_rows
from jackpot import GroupConfig, JackpotEngine, LockTimeoutError, Settings
from jackpot.storage import SQLiteStore
from jackpot.storage import sqlite as sqlite_module

TIMEOUT_MS = 300
TIMEOUT = TIMEOUT_MS / 1000
EARLIEST = 0.9 * TIMEOUT

GROUPS = (
    GroupConfig("major", Decimal(1000), Decimal("0.003")),
    GroupConfig("mega", Decimal(10000), Decimal("0.001")),
    GroupConfig("minor", Decimal(100), Decimal("0.005")),
)

OPERATIONS: dict[str, Callable[[JackpotEngine, str], Any]] = {
    "contribution-one-level":
        lambda e, op: e.contribute(Decimal(10), groups="minor", op_id=op),
    "contribution-every-level":
        lambda e, op: e.contribute(Decimal(10), groups=None, op_id=op),
    "win": lambda e, op: e.process_win("minor", op_id=op, winner="player-1"),
    "config-change":
        lambda e, op: e.update_config("major", op_id=op, contribution_rate=Decimal("0.002")),
}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "pools.db"
    with JackpotEngine.open(path, GROUPS):
        pass
    return path


@pytest.fixture
def reader(db: Path) -> Iterator[apsw.Connection]:
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    yield conn
    conn.close()


class WriteLock:
    """Another connection that takes the write lock with BEGIN IMMEDIATE."""

    def __init__(self, db: Path) -> None:
        self.conn = apsw.Connection(str(db))

    def take(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.release()
        self.conn.close()


@pytest.fixture
def lock(db: Path) -> Iterator[WriteLock]:
    held = WriteLock(db)
    yield held
    held.close()


def open_engine(db: Path) -> JackpotEngine:
    engine = JackpotEngine.open(db, settings=Settings(lock_timeout_ms=TIMEOUT_MS))
    # Every actor starts (opens its connection, loads its level) on this bet,
    # so what follows measures an operation's wait, not an actor's start.
    engine.contribute(Decimal(250), groups=None, op_id="warm-up")
    return engine


@pytest.mark.parametrize("name", OPERATIONS)
def test_gives_up_after_about_the_lock_timeout_and_changes_nothing(
        db: Path, reader: apsw.Connection, lock: WriteLock, name: str) -> None:
    run = OPERATIONS[name]
    with open_engine(db) as engine:
        content, pools = table_rows(reader), engine.pools()
        counts = engine.stats.snapshot()
        lock.take()
        started = time.monotonic()
        with pytest.raises(LockTimeoutError, match=f"within {TIMEOUT_MS} ms"):
            run(engine, "op-1")
        elapsed = time.monotonic() - started
        assert elapsed >= EARLIEST, f"gave up after {elapsed:.3f} s"
        # One wait of the lock timeout, then the error: not retried.
        after = engine.stats.snapshot()
        assert {k: after[k] - counts[k] for k in ("lock_timeouts", "retries", "busy_incidents")
                } == {"lock_timeouts": 1, "retries": 0, "busy_incidents": 0}
        assert table_rows(reader) == content
        assert engine.pools() == pools

        lock.release()
        result = run(engine, "op-1")  # the same request, now applied, once
        assert not result.replayed
        assert run(engine, "op-1").replayed
        after = engine.pools()
        touched = [n for n in pools if after[n].version != pools[n].version]
        assert touched, "nothing was applied after the lock was released"
        assert all(after[n].version == pools[n].version + 1 for n in touched)
        assert engine.verify().ok


def test_waits_for_the_lock_and_proceeds_when_it_is_released(
        db: Path, lock: WriteLock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Released while the operation waits: it proceeds, it does not fail fast."""
    waiting = threading.Event()
    on_busy = SQLiteStore._on_busy

    def noting_busy(self: SQLiteStore, prior_calls: int) -> bool:
        waiting.set()
        return on_busy(self, prior_calls)

    monkeypatch.setattr(SQLiteStore, "_on_busy", noting_busy)  # before connections bind it
    with JackpotEngine.open(db, settings=Settings(lock_timeout_ms=5000)) as engine:
        engine.contribute(Decimal(250), groups=None, op_id="warm-up")
        before = engine.pool("minor")
        lock.take()
        worker, done = in_thread(
            lambda: engine.contribute(Decimal(10), groups="minor", op_id="op-1"))
        try:
            assert waiting.wait(10), "the contribution never waited for the lock"
        finally:
            lock.release()
        worker.join(10)
        assert not worker.is_alive()
        assert len(done) == 1
        assert done[0].versions == {"minor": before.version + 1}
        assert engine.pool("minor").amount == before.amount + done[0].contributions["minor"]


def test_a_lock_timeout_is_counted(db: Path, lock: WriteLock) -> None:
    with open_engine(db) as engine:
        lock.take()
        with pytest.raises(LockTimeoutError):
            engine.contribute(Decimal(10), groups="minor", op_id="op-1")
        assert engine.stats.snapshot()["lock_timeouts"] == 1


def test_open_waits_for_the_write_lock_like_any_write(db: Path, lock: WriteLock) -> None:
    """Opening (or an actor starting) while another process writes must wait, not fail."""
    lock.take()
    started = time.monotonic()
    with pytest.raises(LockTimeoutError):
        JackpotEngine.open(db, settings=Settings(lock_timeout_ms=TIMEOUT_MS))
    elapsed = time.monotonic() - started
    assert elapsed >= EARLIEST, f"gave up after {elapsed:.3f} s"


class _FakeClock:
    """`time` for the store: sleeping moves `now` on at once, and each sleep is noted."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    perf_counter = monotonic

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_the_busy_handler_gives_up_at_its_deadline_and_never_sleeps_past_it(
        db: Path, lock: WriteLock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exactly the lock timeout on the store's own clock: not less, not one sleep more."""
    store = SQLiteStore(str(db), lock_timeout_ms=TIMEOUT_MS, poll_interval_ms=50)
    try:
        clock = _FakeClock()
        monkeypatch.setattr(sqlite_module, "time", clock)  # this thread alone uses the store
        lock.take()
        started = clock.now
        with pytest.raises(LockTimeoutError), store.write():
            pass
        assert clock.now - started == pytest.approx(TIMEOUT, abs=1e-9)
        assert len(clock.sleeps) > 1  # it polled
        assert min(clock.sleeps) > 0
        assert max(clock.sleeps) <= 0.05  # by poll_interval_ms at most
    finally:
        monkeypatch.undo()
        store.close()
