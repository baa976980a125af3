"""A stale cache that caused a ConcurrencyViolationError is not kept.

With max_retry_attempts=0, a contribution on a stale cache that the version
check catches fails; the next one must read the level afresh, not fail again
although nobody else writes any more (as it did on bec6f22). SQLite writes
are blinded to other writers here: as the lock is taken they would reload the
level and never conflict (see tests/concurrency/test_processes.py).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from jackpot import ConcurrencyViolationError, GroupConfig, JackpotEngine, Settings

GROUPS = (
    GroupConfig("major", Decimal(1000), Decimal("0.0012345")),
    GroupConfig("mega", Decimal(10000), Decimal("0.0003217")),
    GroupConfig("minor", Decimal(100), Decimal("0.0051234")),
)


def counted(engine: JackpotEngine) -> tuple[int, int, int]:
    counts = engine.stats.snapshot()
    return counts["conflicts"], counts["retries"], counts["reloads"]


def create_db(path: Path) -> None:
    with JackpotEngine.open(path, GROUPS):
        pass


@pytest.mark.usefixtures("blind_to_other_writers")
@pytest.mark.parametrize("groups", [("minor",), ("major", "minor")], ids=["one", "two"])
def test_stale_writer_recovers_on_its_next_call_without_retries(
        tmp_path: Path, groups: tuple[str, ...]) -> None:
    """A conflict proved the cache stale: the next call must not trip over it again."""
    db = tmp_path / "pools.db"
    create_db(db)
    with JackpotEngine.open(db, settings=Settings(max_retry_attempts=0)) as strict:
        first = strict.contribute("10", groups=groups, op_id="strict-1")
        with JackpotEngine.open(db) as writer:
            writer.contribute("20", groups="minor", op_id="writer-1")
        with pytest.raises(ConcurrencyViolationError):
            strict.contribute("30", groups=groups, op_id="strict-2")
        assert counted(strict) == (1, 0, 0)  # one conflict, no retry allowed
        # Nobody writes any more: the same request now succeeds, once.
        done = strict.contribute("30", groups=groups, op_id="strict-2")
        assert counted(strict) == (1, 0, 0)  # read afresh: no second conflict
        assert not done.replayed
        assert done.versions == {n: first.versions[n] + 1 + (n == "minor") for n in groups}
        assert strict.verify().ok
