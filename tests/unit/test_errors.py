"""The error family travels between processes: pickled and copied whole."""

from __future__ import annotations

import copy
import pickle

import pytest

from jackpot import (
    ConcurrencyViolationError,
    EngineClosedError,
    GroupRetiredError,
    GroupSuspendedError,
    IdempotencyConflictError,
    InsufficientFundsError,
    JackpotError,
    LockTimeoutError,
    StorageError,
    UnknownGroupError,
    ValidationError,
)

ERRORS = [
    ValidationError("bet must not be negative, got -1"),
    UnknownGroupError("unknown level 'nope'"),
    InsufficientFundsError("level 'minor' has an empty pool: nothing to pay"),
    ConcurrencyViolationError("level 'minor' is at version 3, not the expected 1",
                              operation="win", group="minor",
                              conflict_details={"expected_version": 1, "version": 3}),
    ConcurrencyViolationError("lost", operation="contribute,win", group=None),
    IdempotencyConflictError("op_id 'k' was already used for a different contribute request"),
    LockTimeoutError("outcome unknown", outcome_unknown=True),
    EngineClosedError("the actor stopped", outcome_unknown=True),
    StorageError("commit failed", outcome_unknown=True),
    GroupSuspendedError("level 'mega' is suspended"),
    GroupRetiredError("level 'promo' is retired"),
]


def _same(a: JackpotError, b: JackpotError) -> None:
    assert type(b) is type(a)
    assert str(b) == str(a)
    assert b.args == a.args
    assert vars(b) == vars(a)


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_an_error_survives_pickle_as_a_worker_process_sends_it(error: JackpotError) -> None:
    # multiprocessing and concurrent.futures pickle a worker's exception to
    # its parent; one that cannot be rebuilt there breaks the pool itself.
    _same(error, pickle.loads(pickle.dumps(error)))


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_an_error_survives_copy(error: JackpotError) -> None:
    _same(error, copy.copy(error))
    _same(error, copy.deepcopy(error))


def test_a_copied_conflict_keeps_its_details_apart() -> None:
    error = ConcurrencyViolationError("x", operation="config", group="minor",
                                      conflict_details={"expected_version": 1})
    again = copy.deepcopy(error)
    again.conflict_details["expected_version"] = 2
    assert error.conflict_details == {"expected_version": 1}
