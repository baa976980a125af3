"""Behaviours a hand-made mutation check found untested, pinned down (see MUTATION.md).

On a real file database. Each test's docstring names the mutant it kills:
the code change that every other test let through.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import apsw
import pytest

import jackpot.domain
from _helpers import read_only
from jackpot import (
    Contribution,
    GroupConfig,
    InsufficientFundsError,
    JackpotEngine,
    LockTimeoutError,
    Settings,
    Win,
)
from jackpot.service import execute_batch
from jackpot.stats import Stats
from jackpot.storage import SQLiteStore

Opener = Callable[..., JackpotEngine]
QUIET = Settings(enable_metrics=False)


def test_a_replayed_bet_marks_the_hits_it_returns_as_replayed(open_engine: Opener) -> None:
    """The hits inside a replayed Contribution are the first ones, told as replays.

    A caller that pays out `result.hits` must see that a replay's hits were
    paid already. Kills `Contribution.from_record` rebuilding its hits with
    `replayed=False`.
    """
    # The trigger is drawn in (1, 1.000001]: one unit's contribution hits.
    mystery = GroupConfig("mystery", Decimal(1), Decimal("0.5"),
                          must_hit_by=Decimal("1.000001"))
    engine = open_engine(groups=[mystery], settings=QUIET)
    hit = Win("spin-1", "mystery", Decimal("1.000001"), Decimal(1), 3, "p-1", reset=True,
              hit=True)
    first = engine.contribute(Decimal("0.000002"), op_id="spin-1", player="p-1")
    assert first == Contribution("spin-1", {"mystery": Decimal("0.000001")},
                                 {"mystery": Decimal(1)}, {"mystery": 3}, hits=(hit,))
    replay = engine.contribute(Decimal("0.000002"), op_id="spin-1", player="p-1")
    assert replay.replayed is True
    assert replay.hits == (Win("spin-1", "mystery", Decimal("1.000001"), Decimal(1), 3, "p-1",
                               reset=True, replayed=True, hit=True),)
    assert engine.pool("mystery").version == 3


def test_a_refused_win_leaves_no_lock_holder_in_the_committed_row(
        open_engine: Opener, db_path: Path) -> None:
    """A win claims its level's row, and a refused one releases the claim before commit.

    The row's `lock_holder` is set and cleared inside one transaction, so a
    committed row (what another engine or process reads) never shows one.
    Kills `_attempt` skipping the release of refused pessimistic ops.
    """
    engine = open_engine(groups=[GroupConfig("minor", Decimal(10), Decimal("0.1"))],
                         settings=QUIET)
    with pytest.raises(InsufficientFundsError):
        engine.process_win("minor", op_id="too-much", amount=Decimal(11))
    conn = read_only(db_path)
    try:
        rows = conn.execute("SELECT name, lock_holder, version FROM levels").fetchall()
    finally:
        conn.close()
    assert rows == [("minor", None, 1)]
    other = open_engine(groups=[GroupConfig("minor", Decimal(10), Decimal("0.1"))],
                        settings=QUIET)
    assert other.pool("minor").lock_holder is None


def test_an_unexpected_error_in_a_rule_reaches_its_caller_and_changes_nothing(
        open_engine: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule that breaks (not a JackpotError) fails its operation: never a silent None.

    Kills `_Batch.apply` turning the unexpected error into an outcome without
    error (the caller got None back, as if something had been applied).
    """
    engine = open_engine(groups=[GroupConfig("minor", Decimal(10), Decimal("0.1"))],
                         settings=QUIET)
    real = jackpot.domain.contribute

    def broken(state: Any, bet: int, *args: Any, **kwargs: Any) -> Any:
        if bet == 7_000_000:
            msg = "a rule broke"
            raise ZeroDivisionError(msg)
        return real(state, bet, *args, **kwargs)

    monkeypatch.setattr(jackpot.domain, "contribute", broken)
    with pytest.raises(ZeroDivisionError, match="a rule broke"):
        engine.contribute(Decimal(7), op_id="b-7")
    assert engine.contribute(Decimal(5), op_id="b-5").versions == {"minor": 2}
    monkeypatch.undo()
    assert engine.pool("minor").amount == Decimal("10.5")
    assert engine.contribute(Decimal(7), op_id="b-7").replayed is False  # never recorded
    assert engine.verify().ok


def test_a_failed_shared_transaction_reruns_each_op_alone_with_its_own_outcome(
        db_path: Path, open_engine: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared transaction fails (its outcome known: nothing committed).

    Each op is then run alone: a bet without the caller's op_id is applied
    (it cannot have committed), and an op its rules refuse gets its own
    refusal, not the shared storage error. Kills `execute_batch` taking every
    failure of the shared transaction as of unknown outcome.
    """
    levels = [GroupConfig("minor", Decimal(10), Decimal("0.1"))]
    with open_engine(groups=levels, settings=QUIET) as engine:
        ops = [engine._requests.contribute(Decimal(5), groups="minor", op_id=None),
               engine._requests.win("minor", op_id="w-1", amount=Decimal(100), winner=None),
               engine._requests.contribute(Decimal(20), groups="minor", op_id="bet-2")]
    run_many = SQLiteStore._exec_many
    struck: list[str] = []

    def _exec_many(self: SQLiteStore, sql: str, *args: Any, **kwargs: Any) -> Any:
        if not struck and sql.startswith("INSERT INTO ledger"):
            struck.append(sql)
            msg = "injected: the shared transaction's ledger rows"
            raise apsw.IOError(msg)
        return run_many(self, sql, *args, **kwargs)

    store = SQLiteStore(str(db_path))
    try:
        monkeypatch.setattr(SQLiteStore, "_exec_many", _exec_many)
        outcomes, changed = execute_batch(store, ops, None, settings=QUIET, stats=Stats())
        monkeypatch.undo()
    finally:
        store.close()
    assert len(struck) == 1
    assert outcomes[0].error is None
    assert isinstance(outcomes[1].error, InsufficientFundsError)
    assert outcomes[2].error is None
    assert [o.result.versions for o in (outcomes[0], outcomes[2])] == [{"minor": 2},
                                                                       {"minor": 3}]
    assert changed["minor"].amount == 12_500_000
    with open_engine(groups=levels, settings=QUIET) as engine:
        assert engine.pool("minor").amount == Decimal("12.5")
        assert engine.verify().ok


class _TimedOutGuard:
    """A level guard that is never free: every acquire times out at once."""

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return False

    def release(self) -> None:
        raise AssertionError("never held")


def test_a_batch_that_cannot_hold_its_levels_after_one_retry_says_one_retry(
        db_path: Path) -> None:
    # Before: "... within 5000 ms after 1 retries; nothing was changed".
    settings = Settings(max_retry_attempts=1, retry_delay_ms=1, enable_metrics=False)
    with JackpotEngine.open(db_path, settings=settings) as engine:
        guards = engine._guards
        real = guards["minor"].lock
        guards["minor"].lock = _TimedOutGuard()  # type: ignore[assignment]
        try:
            with pytest.raises(LockTimeoutError) as info:
                engine.contribute(Decimal(10), groups=("major", "minor"), op_id="both")
        finally:
            guards["minor"].lock = real
    assert str(info.value).endswith(" ms after 1 retry; nothing was changed")


def test_a_batch_that_cannot_hold_every_level_releases_those_it_held(db_path: Path) -> None:
    """The coordinator holds major, then cannot hold minor: it lets major go.

    Otherwise major's actor (and every later batch on major) would wait out
    its whole guard limit and fail. Kills `Coordinator._gather` not releasing
    the guards taken before the timeout.
    """
    settings = Settings(max_retry_attempts=0, enable_metrics=False)
    with JackpotEngine.open(db_path, settings=settings) as engine:
        guards = engine._guards
        real = guards["minor"].lock
        guards["minor"].lock = _TimedOutGuard()  # type: ignore[assignment]
        try:
            with pytest.raises(LockTimeoutError, match="could not hold levels major, minor"):
                engine.contribute(Decimal(10), groups=("major", "minor"), op_id="both")
        finally:
            guards["minor"].lock = real
        free = guards["major"].lock.acquire(blocking=False)
        if free:
            guards["major"].lock.release()
        assert free
        assert engine.contribute(Decimal(10), groups="major", op_id="major-only").versions == {
            "major": 2}
        assert engine.verify().ok


# -- verify(): checks no other test reached ------------------------------------------------

def _tamper(path: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    conn = apsw.Connection(str(path))
    try:
        conn.execute("PRAGMA ignore_check_constraints = ON")  # as a forger can
        with conn:
            for sql, params in statements:
                conn.execute(sql, params)
    finally:
        conn.close()


def test_a_retirement_whose_reserve_fractions_make_a_unit_verifies(
        open_engine: Opener) -> None:
    """The two reserve carries add up to a whole unit, which the target's reserve receives.

    verify() must count that unit as made of fractions, not report it as
    received from nowhere. Kills `check_retirements` leaving out the reserve
    units (`moved[3]`).
    """
    levels = [GroupConfig("old", Decimal(0), Decimal("0.333333333"),
                          reserve_rate=Decimal("0.333333333")),
              GroupConfig("new", Decimal(0), Decimal("0.25"), reserve_rate=Decimal("0.5"))]
    engine = open_engine(groups=levels, settings=QUIET)
    engine.contribute(Decimal("0.000003"), groups="old", op_id="b1")  # 0.999999999 carried, twice
    engine.contribute(Decimal("0.000001"), groups="new", op_id="b2")  # 0.25 and 0.5 carried
    engine.retire("old", transfer_to="new", who="ops", reason="merge", op_id="r1")
    new = engine.pool("new")
    assert (new.amount, new.reserve) == (Decimal("0.000001"), Decimal("0.000001"))
    report = engine.verify()
    assert report.problems == []
    assert report.ok


LEVEL = [GroupConfig("minor", Decimal(10), Decimal("0.1"), reserve_rate=Decimal("0.01"))]


def test_a_carried_fraction_of_a_whole_unit_is_out_of_range(
        open_engine: Opener, db_path: Path) -> None:
    """A carry is under one unit (1e9 billionths); exactly one unit is out of range.

    Forged past the schema's CHECK (as `PRAGMA ignore_check_constraints` lets
    anyone): the audit says which level and what, besides integrity_check.
    Kills verify()'s range check accepting `carry == RATE_SCALE`.
    """
    engine = open_engine(groups=LEVEL, settings=QUIET)
    engine.contribute(Decimal(50), op_id="b1")
    _tamper(db_path, ("UPDATE levels SET carry = 1000000000 WHERE name = 'minor'", ()))
    problems = engine.verify().problems
    assert problems == [
        "minor: a carried fraction is out of range",
        ("minor: the pool's carried fraction is 1000000000 billionths of a unit, but the "
         "ledger's bets, rates and retirements leave 0"),
        "integrity_check: CHECK constraint failed in levels"]


def test_a_reserve_that_went_negative_in_the_ledger_is_reported(
        open_engine: Opener, db_path: Path) -> None:
    """Two forged rows take the reserve below zero and back: each adds up, the sums agree.

    Forged past the schema's CHECK on `reserve_after`. Only the lowest reserve
    the ledger records tells which level. Kills verify() leaving
    the ledger's lowest reserve out of its "a balance went negative" check.
    """
    engine = open_engine(groups=LEVEL, settings=QUIET)
    engine.contribute(Decimal(50), op_id="b1")  # minor: version 2, pool 15, reserve 0.5
    columns = ("op_id, kind, level, delta, balance_after, reserve_delta, reserve_after, "
               "version_after, contributed, overflow, reserve_in, house_funded, "
               "reserve_funded, paid, adjusted, transferred, reserve_transferred, at_ms, who, "
               "detail")
    sql = f"INSERT INTO ledger ({columns}) VALUES ({', '.join('?' * 20)})"
    _tamper(db_path,
            (sql, ("forged", "adjust", "minor", 0, 15_000_000, -600_000, -100_000, 3,
                   0, 0, 0, 0, 0, 0, 0, 0, -600_000, 0, None, "{}")),
            (sql, ("forged", "adjust", "minor", 0, 15_000_000, 600_000, 500_000, 4,
                   0, 0, 0, 0, 0, 0, 0, 0, 600_000, 0, None, "{}")),
            ("UPDATE levels SET version = 4 WHERE name = 'minor'", ()))
    problems = engine.verify().problems
    # (integrity_check names the table only: the audit's own line names the level)
    assert problems == ["minor: a balance went negative",
                        "integrity_check: CHECK constraint failed in ledger"]


def test_an_op_id_record_keeps_the_time_of_its_operation(open_engine: Opener,
                                                          db_path: Path) -> None:
    """The idempotency record's `at_ms` is when its operation was applied, as its ledger rows say.

    Nothing in the engine reads it back; an operator pruning or tracing old
    op_ids does. Kills `record_operations` writing another time than the batch's.
    """
    engine = open_engine(groups=LEVEL, settings=QUIET)
    engine.contribute(Decimal(50), op_id="b1")
    engine.process_win("minor", op_id="w1")
    conn = read_only(db_path)
    try:
        rows = conn.execute(
            "SELECT o.op_id, o.at_ms, l.at_ms FROM operations o JOIN ledger l USING (op_id) "
            "ORDER BY l.seq").fetchall()
    finally:
        conn.close()
    assert [op for op, _, _ in rows] == ["b1", "w1"]
    assert all(recorded == applied > 0 for _, recorded, applied in rows), rows
