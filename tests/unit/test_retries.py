"""The retry budget of one batch (jackpot.service._Retries): what it counts, and under which labels."""

from __future__ import annotations

from typing import Any

import pytest

from jackpot import ConcurrencyViolationError, Settings, StorageError
from jackpot.service import Operation, _Retries
from jackpot.stats import Stats
from jackpot.storage import BusyIncidentError, SerializationFailureError


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


def test_one_retry_is_said_in_the_singular() -> None:
    # Before: "... and 1 retries did not settle it", "busy after 1 retries",
    # "lost to concurrent transactions 1 times" (JACKPOT_MAX_RETRY_ATTEMPTS=1, or 0).
    budget = _Retries([op("contribute", "bet-1", "minor")], Settings(max_retry_attempts=1),
                      Stats())
    budget.retried()
    with pytest.raises(ConcurrencyViolationError) as conflict:
        budget.conflict("minor", 4)
    assert str(conflict.value) == ("contribute 'bet-1': level 'minor' moved past version 4 "
                                   "and 1 retry did not settle it; nothing changed")
    with pytest.raises(StorageError) as busy:
        budget.busy(BusyIncidentError("database is locked"))
    assert str(busy.value) == "contribute 'bet-1': database stayed busy after 1 retry"
    lost = _Retries([op("win", "win-1", "minor")], Settings(max_retry_attempts=0), Stats())
    with pytest.raises(ConcurrencyViolationError) as race:
        lost.busy(SerializationFailureError("deadlock detected"))
    assert str(race.value) == ("win 'win-1': lost to concurrent transactions 1 time "
                               "(deadlock detected); nothing changed")


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
