"""Actors never outlive a failed open, a raising observer or a stopped checkpointer."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pykka
import pytest

from jackpot import JackpotEngine, LockTimeoutError, Settings, StorageError
from jackpot.actors import PoolActor


def test_a_failed_open_stops_every_actor_it_started(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    JackpotEngine.open(db_path).close()  # the file and its levels exist
    before = set(pykka.ActorRegistry.get_all())

    def broken(self: PoolActor) -> None:
        msg = "cannot open the level's connection"
        raise StorageError(msg)

    monkeypatch.setattr(PoolActor, "on_start", broken)
    with pytest.raises(StorageError):
        JackpotEngine.open(db_path)
    assert set(pykka.ActorRegistry.get_all()) == before  # no thread left behind


class _RaisingObserver:
    """A metrics observer that fails on the coordinator's lock-wait report."""

    def on_event(self, event: str, operation: str, level: str, n: int) -> None:
        pass

    def on_operation(self, operation: str, outcome: str, seconds: float) -> None:
        pass

    def on_lock_wait(self, lock: str, operation: str, seconds: float) -> None:
        if lock == "coordinator":
            msg = "observer failed"
            raise RuntimeError(msg)


def test_an_observer_that_raises_never_leaves_a_level_held(
        open_engine: Callable[..., JackpotEngine]) -> None:
    engine = open_engine()
    engine.stats.observers.append(_RaisingObserver())
    with pytest.raises(RuntimeError, match="observer failed"):
        engine.contribute(Decimal(10), groups=("major", "minor"), op_id="multi")
    assert not any(g.lock.locked() for g in engine._guards.values())
    assert engine.contribute(Decimal(10), groups="minor", op_id="single").versions == {
        "minor": 2}  # the multi-level batch failed before writing anything
    assert engine.verify().ok


def test_a_stopped_checkpointer_is_restarted_and_takes_requests_again(
        open_engine: Callable[..., JackpotEngine]) -> None:
    engine = open_engine()
    checkpointer = engine._checkpointer
    assert checkpointer is not None
    checkpointer.stop(timeout=10)
    checkpointer.note(5_000)  # ignored while it is stopped: nothing gets stuck
    assert not checkpointer.alive()
    assert checkpointer.runs == 0
    engine._restart_dead_actors()
    assert checkpointer.alive()
    assert engine.stats.snapshot()["actor_restarts:actor:checkpointer"] == 1
    engine.contribute(Decimal(10), groups="minor", op_id="after")
    size, copied = checkpointer.flush(timeout=10)
    assert copied == size
    checkpointer.note(50_000)
    assert checkpointer.runs == 1  # requested again, not stuck behind the old actor
    assert engine.verify().ok


def test_a_held_guard_times_out_a_single_level_batch_with_nothing_changed(
        open_engine: Callable[..., JackpotEngine]) -> None:
    engine = open_engine(settings=Settings(lock_timeout_ms=100, max_retry_attempts=0,
                                           retry_delay_ms=1))
    guard = engine._guards["minor"]
    guard.lock.acquire()  # as a multi-level batch that never ends would
    try:
        with pytest.raises(LockTimeoutError, match="held by a multi-level operation"):
            engine.contribute(Decimal(10), groups="minor", op_id="stuck")
    finally:
        guard.lock.release()
    assert engine.pool("minor").version == 1
    assert engine.contribute(Decimal(10), groups="minor", op_id="stuck").versions == {
        "minor": 2}  # not a replay: the first attempt changed nothing
