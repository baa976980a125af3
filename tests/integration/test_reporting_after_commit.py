"""Reporting an outcome (observers, log lines) never changes that outcome.

An observer in `engine.stats.observers` runs after the operation has
committed or failed: if it raises, the caller must still get the committed
result (a caller told "failed" may send it again without an op_id and pay
twice) or the original error. Told of an event in the middle of an operation
(a lock wait, a reload), one that raises must not fail it either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from jackpot import (
    AsyncJackpotEngine,
    InsufficientFundsError,
    JackpotEngine,
    LockTimeoutError,
    Observer,
    Settings,
    ValidationError,
)
from jackpot.results import Contribution


class _Raising:
    """Raises on the events named in `on`, once armed."""

    def __init__(self, *on: str) -> None:
        self.on = set(on)
        self.armed = True

    def _maybe(self, what: str) -> None:
        if self.armed and what in self.on:
            msg = f"observer failed on {what}"
            raise RuntimeError(msg)

    def on_event(self, event: str, operation: str, level: str, n: int) -> None:
        self._maybe(event)

    def on_operation(self, operation: str, outcome: str, seconds: float) -> None:
        self._maybe(f"operation:{outcome}")

    def on_lock_wait(self, lock: str, operation: str, seconds: float) -> None:
        pass


def test_a_committed_win_is_returned_though_its_observer_raises(tmp_path: Path) -> None:
    with JackpotEngine.open(tmp_path / "p.db") as engine:
        engine.contribute(Decimal(100), groups="minor", op_id="bet")
        engine.stats.observers.append(_Raising("operation:ok"))
        win = engine.process_win("minor")  # no op_id: a resend would be a second win
        assert (win.amount, win.version, win.replayed) == (Decimal("100.5"), 3, False)
        pool = engine.pool("minor")
        assert (pool.version, pool.meters["wins"]) == (3, 1)
        assert engine.verify().ok


def test_a_refusal_keeps_its_error_though_its_observer_raises(tmp_path: Path) -> None:
    with JackpotEngine.open(tmp_path / "p.db") as engine:
        engine.stats.observers.append(_Raising("operation:rejected"))
        with pytest.raises(InsufficientFundsError):
            engine.process_win("minor", amount=Decimal(1000))
        assert engine.pool("minor").version == 1


class _RaisingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = "log filter failed"
        raise RuntimeError(msg)


def test_a_bad_argument_keeps_its_validation_error_though_its_report_raises(
        tmp_path: Path) -> None:
    """A call refused for its arguments (before anything is sent): same error, both APIs."""
    log = logging.getLogger("jackpot")
    with JackpotEngine.open(tmp_path / "p.db") as engine:
        engine.stats.observers.append(_Raising("operation:rejected"))
        with pytest.raises(ValidationError, match="float"):
            engine.contribute(1.5, groups="minor", op_id="float-bet")
        raising = _RaisingFilter()
        log.addFilter(raising)
        try:
            with pytest.raises(ValidationError, match="bet"):
                engine.contribute("-1", groups="minor", op_id="negative-bet")
        finally:
            log.removeFilter(raising)

    async def run() -> None:
        async with await AsyncJackpotEngine.open(tmp_path / "p.db") as engine:
            engine.stats.observers.append(_Raising("operation:rejected"))
            with pytest.raises(ValidationError, match="float"):
                await engine.contribute(1.5, groups="minor", op_id="float-bet")

    asyncio.run(run())
    with JackpotEngine.open(tmp_path / "p.db") as engine:
        assert engine.pool("minor").version == 1  # nothing was applied


def test_a_replay_event_that_raises_fails_no_operation_of_the_committed_batch(
        tmp_path: Path, one_batch: Callable[..., dict[str, Any]]) -> None:
    """A replay and a new bet share one batch; the 'replays' report comes after the commit."""
    with JackpotEngine.open(tmp_path / "p.db") as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="spin-1")
        engine.stats.observers.append(_Raising("replays"))
        results = one_batch(engine, "minor", {"replay": "spin-1", "new": None})
        replay, new = results["replay"], results["new"]
        assert isinstance(replay, Contribution)
        assert isinstance(new, Contribution)
        assert (replay.replayed, replay.versions) == (True, {"minor": 2})
        assert (new.replayed, new.versions) == (False, {"minor": 4})
        assert engine.pool("minor").version == 4
        assert engine.verify().ok


def _quietly(engine: JackpotEngine, op_id: str) -> None:
    with contextlib.suppress(Exception):  # its outcome is not what these tests look at
        engine.contribute(Decimal(10), groups="minor", op_id=op_id)


def test_a_lock_timeout_keeps_its_error_though_its_observer_raises(
        tmp_path: Path, busy_actor: Callable[..., threading.Thread]) -> None:
    settings = Settings(lock_timeout_ms=200, max_retry_attempts=0)
    with JackpotEngine.open(tmp_path / "p.db", settings=settings) as engine:
        engine.stats.observers.append(_Raising("lock_timeouts"))
        first = busy_actor(engine, "minor", lambda: _quietly(engine, "first"))
        held = engine._guards["minor"].lock
        try:
            with pytest.raises(LockTimeoutError, match="was not started within 200 ms"):
                engine.contribute(Decimal(10), groups="minor", op_id="late")
        finally:
            held.release()
            first.join(30)
        assert engine.contribute(Decimal(10), groups="minor", op_id="late").versions == {
            "minor": 3}  # it changed nothing: sent again, it applies once


def test_an_async_lock_timeout_is_reported_though_its_observer_raises(
        tmp_path: Path, busy_actor: Callable[..., threading.Thread]) -> None:
    async def run() -> None:
        settings = Settings(lock_timeout_ms=200, max_retry_attempts=0)
        async with await AsyncJackpotEngine.open(tmp_path / "p.db", settings=settings) as engine:
            engine.stats.observers.append(_Raising("lock_timeouts"))
            first = busy_actor(engine.sync, "minor", lambda: _quietly(engine.sync, "first"))
            held = engine.sync._guards["minor"].lock
            try:
                with pytest.raises(LockTimeoutError, match="was not started within 200 ms"):
                    await asyncio.wait_for(  # without the fix the call never ends
                        engine.contribute(Decimal(10), groups="minor", op_id="late"), 30)
            finally:
                held.release()
                await asyncio.to_thread(first.join, 30)

    asyncio.run(run())


def test_a_restart_reported_to_a_raising_observer_still_resends_the_operation(
        tmp_path: Path) -> None:
    with JackpotEngine.open(tmp_path / "p.db") as engine:
        engine.stats.observers.append(_Raising("actor_restarts"))
        engine._pools["minor"].actor_ref.stop()  # the next bet finds it dead: restart, resend
        result = engine.contribute(Decimal(10), groups="minor", op_id="after")
        assert (result.replayed, result.versions) == (False, {"minor": 2})
        assert engine.stats.snapshot()["actor_restarts"] == 1
        assert engine.verify().ok


class _AlwaysRaising:
    def __init__(self) -> None:
        self.calls = 0
        self.told: list[tuple[object, ...]] = []  # what each call said (no time)

    def _fail(self) -> None:
        self.calls += 1
        msg = "metrics backend down"
        raise ConnectionError(msg)

    def on_event(self, event: str, operation: str, level: str, n: int) -> None:
        self.told.append((event, operation, level, n))
        self._fail()

    def on_operation(self, operation: str, outcome: str, seconds: float) -> None:
        self.told.append(("operation", operation, outcome))
        self._fail()

    def on_lock_wait(self, lock: str, operation: str, seconds: float) -> None:
        self.told.append(("lock_wait", lock, operation))
        self._fail()


def test_an_observer_failing_in_the_middle_of_operations_fails_none_of_them(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Lock waits and reloads are reported while the write lock is held, before
    # the commit: an observer raising there used to fail the bet with its error.
    path = tmp_path / "p.db"
    with JackpotEngine.open(path) as engine, JackpotEngine.open(path) as other:
        observer = _AlwaysRaising()
        assert isinstance(observer, Observer)  # the protocol is checkable at run time
        engine.stats.observers.append(observer)
        with caplog.at_level(logging.ERROR, logger="jackpot"):
            other.contribute(Decimal(10), groups="minor", op_id="elsewhere")  # a reload next
            assert engine.contribute(Decimal(10), groups="minor", op_id="one").versions == {
                "minor": 3}
            assert engine.contribute(Decimal(10), groups=("major", "minor"),
                                     op_id="two").versions == {"major": 2, "minor": 4}
            assert engine.process_win("minor", op_id="win").version == 5
        assert engine.stats.snapshot()["reloads"] == 1
        assert observer.told == [  # 3 operations, their lock waits, the reload
            ("lock_wait", "database", "contribute"), ("reloads", "contribute", "minor", 1),
            ("operation", "contribute", "ok"),
            ("lock_wait", "coordinator", "contribute"), ("lock_wait", "database", "contribute"),
            ("operation", "contribute", "ok"),
            ("lock_wait", "database", "win"), ("operation", "win", "ok")]
        failed = [r for r in caplog.records if "stats observer" in r.getMessage()]
        assert len(failed) == observer.calls
        assert failed[0].getMessage() == (
            "stats observer _AlwaysRaising failed: ConnectionError: metrics backend down")
        # each failure's record names the operation (and the level, where the event had
        # one) in the structured fields: they were null, though the call had them
        assert [(getattr(r, "operation", None), getattr(r, "level", None))
                for r in failed] == [
            ("contribute", None), ("contribute", "minor"), ("contribute", None),
            ("contribute", None), ("contribute", None), ("contribute", None),
            ("win", None), ("win", None)]
        assert failed[0].exc_info is not None
        assert all(r.exc_info is None for r in failed[1:])  # one traceback a minute
        assert engine.verify().ok


class _Unprintable(Exception):  # noqa: N818 - named for what it is
    def __str__(self) -> str:
        msg = "an error that cannot be shown"
        raise RuntimeError(msg)


class _RaisingUnprintable(_AlwaysRaising):
    def _fail(self) -> None:
        self.calls += 1
        raise _Unprintable


def test_an_observer_error_that_cannot_be_shown_fails_no_operation_either(
        db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Naming the error (str) for the log line is part of containing it.
    with JackpotEngine.open(db_path) as engine:
        observer = _RaisingUnprintable()
        engine.stats.observers.append(observer)
        with caplog.at_level(logging.ERROR, logger="jackpot"):
            assert engine.contribute(Decimal(10), groups="minor", op_id="one").versions == {
                "minor": 2}
        assert observer.calls >= 2  # the lock wait (before the commit), the outcome
        failed = [r.getMessage() for r in caplog.records if "stats observer" in r.getMessage()]
        assert len(failed) == observer.calls
        assert failed[0].startswith("stats observer _RaisingUnprintable failed: _Unprintable: "
                                    "<str() failed: RuntimeError>")
        assert engine.verify().ok


@pytest.mark.usefixtures("blind_to_other_writers")
def test_a_conflict_is_retried_though_logging_it_raises(
        open_engine: Callable[..., JackpotEngine]) -> None:
    """The 'version conflict' log line is a report: a raising filter must not fail the batch.

    It replaced the retry (which succeeds) with the filter's error, for every
    request of the batch, none of them applied.
    """
    a, b = open_engine(), open_engine()
    a.contribute("1", groups="minor", op_id="warm")  # a caches the level
    b.contribute("1", groups="minor")  # and its cache is stale now
    log = logging.getLogger("jackpot")
    raising = _RaisingFilter()
    log.addFilter(raising)
    try:
        result = a.contribute("1", groups="minor", op_id="bet-7")
    finally:
        log.removeFilter(raising)
    assert result.versions == {"minor": 4}
    assert a.stats.snapshot()["conflicts"] == 1
    assert a.verify().ok


def test_a_committed_batch_is_returned_though_logging_its_failed_catch_up_raises(
        open_engine: Callable[..., JackpotEngine], monkeypatch: pytest.MonkeyPatch) -> None:
    """After the COMMIT, a catch-up checkpoint that fails is logged: that log line is a report.

    A raising log filter there failed the committed bet: its caller, told it
    failed, may send it again without an op_id and pay twice.
    """
    from jackpot.storage import SQLiteStore, StorageError, sqlite  # noqa: PLC0415

    engine = open_engine()
    engine.contribute("1", groups="minor", op_id="warm")

    def failing(self: SQLiteStore) -> tuple[int, int]:
        msg = "checkpoint failed"
        raise StorageError(msg)

    monkeypatch.setattr(sqlite, "CATCH_UP_PAGES", 0)  # every commit catches up
    monkeypatch.setattr(SQLiteStore, "checkpoint", failing)
    log = logging.getLogger("jackpot")
    raising = _RaisingFilter()
    log.addFilter(raising)
    try:
        result = engine.contribute("1", groups="minor")  # no op_id: a resend pays twice
    finally:
        log.removeFilter(raising)
        monkeypatch.undo()
    assert result.versions == {"minor": 3}
    assert engine.pool("minor").version == 3
    assert engine.verify().ok
