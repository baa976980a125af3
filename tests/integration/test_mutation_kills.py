"""Storage behaviour the mutation check (tests/model/MUTATION.md) found untested.

On a real file database. Each test's docstring names the mutant it was written
against, so a future mutation run can be checked against MUTATION.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import apsw
import pytest

from jackpot import ConcurrencyViolationError, GroupConfig, JackpotEngine, Settings
from jackpot.storage import StoredOperation, open_store

LEVELS = [GroupConfig("minor", Decimal(10), Decimal("0.1"))]


def test_verify_names_the_version_of_a_ledger_row_that_does_not_add_up(
        open_engine: Callable[..., JackpotEngine], db_path: Path) -> None:
    """An operator must be able to find the broken row: its seq and its level version.

    Kills `Store.broken_ledger_rows` reporting the seq as the version.
    """
    engine = open_engine(groups=LEVELS, settings=Settings(enable_metrics=False))
    engine.contribute(Decimal(50), op_id="b1")  # minor: version 2
    engine.process_win("minor", op_id="w1")  # version 3
    assert engine.verify().ok
    conn = apsw.Connection(str(db_path))  # a forged row: version 9, balance from nowhere
    try:
        conn.execute(
            "INSERT INTO ledger (op_id, kind, level, delta, balance_after, reserve_delta, "
            "reserve_after, version_after, contributed, overflow, reserve_in, house_funded, "
            "reserve_funded, paid, adjusted, transferred, reserve_transferred, at_ms, who, "
            "detail) VALUES ('forged', 'adjust', 'minor', 5, 999, 0, 0, 9, 0, 0, 0, 0, 0, 0, "
            "0, 0, 0, 0, NULL, ?)", (json.dumps({}),))
        (seq,) = conn.execute("SELECT seq FROM ledger WHERE op_id = 'forged'").fetchone()
    finally:
        conn.close()
    assert seq == 4  # after the create, bet and win rows: not the version
    assert engine.verify().problems == [
        "minor: ledger versions 1..9 in 4 rows, level is at version 3 (expected 1..3)",
        "minor: ledger sums to 10.000005, level holds 10.000000",
        "minor: ledger row 4 (version 9) does not add up"]


def test_every_stored_op_id_is_found_however_many_are_asked_for(db_path: Path) -> None:
    """Replay detection and the audit's orphan check look op_ids up in bulk.

    The lookup goes in chunks (SQLite bounds the parameters of one statement):
    an op_id in any chunk, here the fourth, must be found, or its retry would
    be applied a second time. Kills `find_operations` iterating over the first
    500 offsets instead of stepping through the list in chunks of 500.
    """
    store = open_store(str(db_path))
    try:
        store.migrate()
        records = [StoredOperation(f"op-{i:05d}", "contribute", f"fp-{i}", {"i": i})
                   for i in range(1_600)]
        with store.write():
            store.record_operations(records, 1)
        asked = [f"op-{i:05d}" for i in range(1_700)]  # 100 never used
        with store.read():
            found = store.find_operations(asked)
        assert found == {r.op_id: r for r in records}
    finally:
        store.close()


@pytest.mark.usefixtures("blind_to_other_writers")  # else a reload, which spends no retry
@pytest.mark.parametrize("retries", [0, 1])
def test_max_retry_attempts_is_the_number_of_retries_after_a_version_conflict(
        open_engine: Callable[..., JackpotEngine], retries: int) -> None:
    """JACKPOT_MAX_RETRY_ATTEMPTS=n: n retries after a conflict, then the error.

    `stale` read minor at version 1; `writer` moves it to 2, so `stale`'s
    first attempt is one version conflict. With one retry allowed it
    succeeds at version 3; with none it raises, reporting one attempt. Kills
    `_with_retries` counting from attempt 1 (one retry fewer than configured).
    """
    stale = open_engine(groups=LEVELS, settings=Settings(max_retry_attempts=retries,
                                                         enable_metrics=False))
    writer = open_engine(groups=LEVELS, settings=Settings(enable_metrics=False))
    writer.contribute(Decimal(10), op_id="writer-1")
    if retries:
        done = stale.contribute(Decimal(20), op_id="stale-1")
        assert done.versions == {"minor": 3}
        assert done.balances == {"minor": Decimal(13)}
    else:
        with pytest.raises(ConcurrencyViolationError) as info:
            stale.contribute(Decimal(20), op_id="stale-1")
        assert (info.value.operation, info.value.group) == ("contribute", "minor")
        assert info.value.conflict_details == {"level": "minor", "expected_version": 1,
                                               "attempts": 1}
        assert writer.pool("minor").version == 2
    assert stale.stats.snapshot()["conflicts"] == 1
    assert writer.verify().ok
