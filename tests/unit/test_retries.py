"""The retry budget of one batch (jackpot.service._Retries): what it counts, and under which labels."""

from __future__ import annotations

from typing import Any

import pytest

from jackpot import ConcurrencyViolationError, Settings
from jackpot.service import Operation, _Retries
from jackpot.stats import Stats


def op(kind: str, op_id: str, *names: str) -> Operation:
    def never(*_: Any) -> Any:
        raise AssertionError

    return Operation(kind, op_id, True, "f", names, never, never)


def test_requests_that_joined_the_batch_are_in_its_labels() -> None:
    ops = [op("contribute", "bet-1", "minor")]
    stats = Stats()
    budget = _Retries(ops, Settings(max_retry_attempts=1), stats)
    ops.append(op("adjust", "adj-1", "major"))  # joined once the batch held the lock
    budget.conflict("minor", 3)
    budget.retried()
    counts = stats.snapshot()
    assert counts["conflicts:adjust,contribute:minor"] == 1
    assert counts["retries:adjust,contribute:major,minor"] == 1
    with pytest.raises(ConcurrencyViolationError) as info:
        budget.conflict("minor", 4)  # no retry left
    assert info.value.operation == "adjust,contribute"
    assert info.value.conflict_details == {"level": "minor", "expected_version": 4,
                                           "attempts": 2}


def test_the_health_window_forgets_outcomes_older_than_its_horizon() -> None:
    # A burst of failures kept a quiet engine "failing" until 1,000 operations
    # had succeeded since, however long ago the burst was.
    now = [1000.0]
    stats = Stats(window=1000, horizon=300.0, clock=lambda: now[0])
    for _ in range(400):
        stats.operation("contribute", "error", 0.001)
    stats.add("conflicts", "contribute", "minor")
    now[0] += 299.0
    assert len(stats.recent()) == 401
    now[0] += 2.0
    assert stats.recent() == []
    stats.operation("contribute", "ok", 0.001)
    assert stats.recent() == [("ok", False)]
    assert stats.snapshot()["operations:contribute:error"] == 400  # the counters keep all
