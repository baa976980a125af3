"""Bug: a bet that qualifies for no level is not recorded under its op_id (kept out of the commit)."""

from decimal import Decimal
from pathlib import Path

import pytest

from jackpot import GroupConfig, IdempotencyConflictError, JackpotEngine, Settings


def test_a_retried_non_qualifying_bet_is_a_replay(tmp_path: Path) -> None:
    with JackpotEngine.open(tmp_path / "p.db", [GroupConfig("minor", 10, "0.1", min_bet=1)],
                            settings=Settings()) as engine:
        first = engine.contribute("0.5", groups="minor", op_id="x")
        assert first.contributions == {"minor": 0}
        engine.update_config("minor", min_bet="0.1")
        retry = engine.contribute("0.5", groups="minor", op_id="x")  # the same request
        assert retry.replayed  # actual: False
        assert retry.contributions == {"minor": 0}  # actual: 0.05, money added on a retry
        assert engine.pool("minor").amount == Decimal(10)  # actual: 10.05


def test_the_same_op_id_for_another_bet_conflicts(tmp_path: Path) -> None:
    with JackpotEngine.open(tmp_path / "p.db", [GroupConfig("minor", 10, "0.1", min_bet=1)],
                            settings=Settings()) as engine:
        engine.contribute("0.5", groups="minor", op_id="z")
        with pytest.raises(IdempotencyConflictError):  # actual: applied, 0.3 added
            engine.contribute("3", groups="minor", op_id="z")
