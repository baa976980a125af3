"""Decisions taken on a cached level that another engine (process) changed.

A contribution that changes a level is version-checked by its UPDATE. One that
leaves a level unchanged (refused by max_contribution or a suspension, below
min_bet, or a level "every level" skips) was still decided on the cached row:
that row must be checked too, or an engine keeps refusing or skipping bets by
rules another process (the `jackpot` command, say) has changed, and records
stale zero contributions that replay for ever. Two engines on one file stand
in for two processes: each has its own connections and its own cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from jackpot import GroupConfig, GroupSuspendedError, JackpotEngine

LEVELS = (
    GroupConfig("minor", seed=Decimal(100), contribution_rate=Decimal("0.01"),
                min_bet=Decimal(5), max_contribution=Decimal(1)),
    GroupConfig("major", seed=Decimal(1000), contribution_rate=Decimal("0.001")),
)


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[tuple[JackpotEngine, JackpotEngine]]:
    db = tmp_path / "pools.db"
    server = JackpotEngine.open(db, LEVELS)
    operator = JackpotEngine.open(db)
    try:
        yield server, operator
    finally:
        operator.close()
        server.close()


def counted(engine: JackpotEngine) -> tuple[int, int, int]:
    """(conflicts, retries, reloads) the engine counted."""
    counts = engine.stats.snapshot()
    return counts["conflicts"], counts["retries"], counts["reloads"]


def noticed(detection: str) -> tuple[int, int, int]:
    """(conflicts, retries, reloads) of a stale cache noticed once, each way it is found.

    As the lock is taken: a reload, no retry spent. By the version checks
    only: one conflict, and the one retry that reads the level afresh.
    """
    return (0, 0, 1) if detection == "found-on-taking-the-lock" else (1, 1, 0)


def test_a_raised_max_contribution_is_obeyed_at_once(
        engines: tuple[JackpotEngine, JackpotEngine], stale_detection: str) -> None:
    server, operator = engines
    with pytest.raises(ValueError, match="max_contribution"):
        server.contribute(Decimal(200), groups="minor", op_id="big-1")
    operator.update_config("minor", max_contribution=Decimal(10), who="ops", reason="raise")
    bet = server.contribute(Decimal(200), groups="minor", op_id="big-2")
    assert bet.contributions == {"minor": Decimal(2)}
    assert bet.versions == {"minor": 3}  # create, config, this bet
    assert counted(server) == noticed(stale_detection)  # noticed once, then adopted
    again = server.contribute(Decimal(200), groups="minor", op_id="big-3")
    assert again.versions == {"minor": 4}
    assert counted(server) == noticed(stale_detection)
    assert server.verify().ok


def test_a_lowered_min_bet_is_obeyed_and_no_stale_zero_is_recorded(
        engines: tuple[JackpotEngine, JackpotEngine], stale_detection: str) -> None:
    server, operator = engines
    server.pool("minor")  # (reads never fill the cache; the actor loaded minor at open)
    operator.update_config("minor", min_bet=Decimal(1), who="ops", reason="lower")
    bet = server.contribute(Decimal(2), groups="minor", op_id="small-1")
    assert bet.contributions == {"minor": Decimal("0.02")}
    assert bet.versions == {"minor": 3}
    replay = server.contribute(Decimal(2), groups="minor", op_id="small-1")
    assert replay.replayed
    assert (replay.contributions, replay.versions) == (bet.contributions, bet.versions)
    assert server.pool("minor").meters["bets"] == 1
    assert counted(server) == noticed(stale_detection)  # (a replay reads no level)
    assert server.verify().ok


def test_a_level_resumed_elsewhere_takes_bets_again(
        engines: tuple[JackpotEngine, JackpotEngine], stale_detection: str) -> None:
    server, operator = engines
    server.suspend("minor", reason="inspection")  # the server caches "suspended"
    operator.resume("minor")
    one = server.contribute(Decimal(50), groups="minor", op_id="after-1")
    assert one.contributions == {"minor": Decimal("0.5")}
    every = server.contribute(Decimal(50), groups=None, op_id="every-1")
    assert every.contributions == {"major": Decimal("0.05"), "minor": Decimal("0.5")}
    assert counted(server) == noticed(stale_detection)
    assert server.verify().ok


def test_a_level_suspended_elsewhere_is_refused_with_one_conflict_not_one_per_bet(
        engines: tuple[JackpotEngine, JackpotEngine], stale_detection: str) -> None:
    server, operator = engines
    server.contribute(Decimal(50), groups="minor", op_id="before")
    operator.suspend("minor", reason="inspection")
    for i in range(3):
        with pytest.raises(GroupSuspendedError):
            server.contribute(Decimal(50), groups="minor", op_id=f"refused-{i}")
    assert counted(server) == noticed(stale_detection)
    skipped = server.contribute(Decimal(50), groups=None, op_id="every-1")
    assert skipped.contributions == {"major": Decimal("0.05")}
    assert counted(server) == noticed(stale_detection)
