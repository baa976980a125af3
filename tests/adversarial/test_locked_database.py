"""Another process holds the database write lock: refuse in time, change nothing, recover.

A stuck or hostile writer (here: a second connection inside BEGIN IMMEDIATE)
must not make the engine hang or half-apply anything: each operation fails
with LockTimeoutError within its lock timeout, the error says nothing was
changed, the op_id stays unused, and once the lock is released the same
calls succeed exactly once. The file is compared table by table.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import apsw
import pytest

from jackpot import Contribution, GroupConfig, JackpotEngine, LockTimeoutError, Settings

from .test_hostile_input import checksum

LOCK_TIMEOUT_MS = 300
LEVELS = [GroupConfig("minor", Decimal(10), Decimal("0.1")),
          GroupConfig("major", Decimal(100), Decimal("0.01"), must_hit_by=Decimal(200))]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[JackpotEngine]:
    settings = Settings(enable_metrics=False, log_level="critical",
                        lock_timeout_ms=LOCK_TIMEOUT_MS, max_retry_attempts=1,
                        retry_delay_ms=10)
    e = JackpotEngine.open(tmp_path / "pools.db", LEVELS, settings=settings)
    e.contribute(Decimal(10), op_id="before")
    yield e
    e.close()


CALLS: dict[str, Callable[[JackpotEngine], object]] = {
    "contribute-all": lambda e: e.contribute(Decimal(5), op_id="locked"),
    "contribute-one": lambda e: e.contribute(Decimal(5), groups="minor", op_id="locked"),
    "win": lambda e: e.process_win("minor", op_id="locked"),
    "win-part": lambda e: e.process_win("minor", amount=Decimal(1), op_id="locked"),
    "config": lambda e: e.update_config("minor", seed=Decimal(5), op_id="locked"),
    "suspend": lambda e: e.suspend("minor", reason="r", op_id="locked"),
    "adjust": lambda e: e.adjust("minor", Decimal(1), who="ops", reason="r", op_id="locked"),
    "retire": lambda e: e.retire("minor", transfer_to="major", who="ops", reason="r", op_id="locked"),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_a_held_write_lock_times_out_and_changes_nothing(engine: JackpotEngine,
                                                         name: str) -> None:
    call = CALLS[name]
    path = engine._path
    before = checksum(Path(path))
    blocker = apsw.Connection(path)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(LockTimeoutError, match="nothing was changed"):
            call(engine)
        waited = time.monotonic() - started
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    # Bounded: the lock timeout, its retries and their backoff, far below a minute.
    assert LOCK_TIMEOUT_MS / 1000 <= waited < 30
    assert checksum(Path(path)) == before
    # Released: the very same call now applies, once; a replay returns it.
    first = call(engine)
    assert getattr(first, "replayed", None) is False
    assert call(engine) == _replayed(first)
    report = engine.verify()
    assert report.ok, report.problems


def _replayed(result: object) -> object:
    if isinstance(result, Contribution):
        return dataclasses.replace(result, replayed=True, hits=tuple(
            dataclasses.replace(h, replayed=True) for h in result.hits))
    return dataclasses.replace(result, replayed=True)  # type: ignore[type-var]
