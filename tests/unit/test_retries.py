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
