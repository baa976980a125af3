"""Idempotency by op_id: replays return the first result and change nothing; conflicts refuse.

Every scenario runs twice: on the engine that served the first request, and on
a new engine after close and reopen (the records live in the database).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from _helpers import run_together
from jackpot import (
    ConfigResult,
    Contribution,
    IdempotencyConflictError,
    JackpotEngine,
    Win,
)

Opener = Callable[..., JackpotEngine]


@pytest.fixture(params=["same-engine", "after-reopen"])
def again(request: pytest.FixtureRequest, open_engine: Opener) -> Callable[[JackpotEngine],
                                                                           JackpotEngine]:
    """Return the engine to replay on: the same one, or a new one after close and reopen."""
    def _again(engine: JackpotEngine) -> JackpotEngine:
        if request.param == "same-engine":
            return engine
        engine.close()
        return open_engine()

    return _again


def first_result(result: Any) -> Any:
    return dataclasses.replace(result, replayed=False)


# -- replays -----------------------------------------------------------------------------

def test_contribution_replay(engine: JackpotEngine, again: Callable[..., JackpotEngine],
                             dump_db: Callable[..., Any]) -> None:
    first = engine.contribute(Decimal("2.50"), groups=("minor", "major"), op_id="spin-42")
    engine.contribute(Decimal(7), op_id="later")  # the levels move on
    engine = again(engine)
    before = dump_db()
    replay = engine.contribute(Decimal("2.50"), groups=("minor", "major"), op_id="spin-42")
    assert isinstance(replay, Contribution)
    assert replay.replayed is True
    assert first.replayed is False
    assert first_result(replay) == first  # the first result, not the current balances
    assert replay.balances == {"major": Decimal("1000.0075"), "minor": Decimal("100.0125")}
    assert dump_db() == before
    assert engine.stats.snapshot()["replays"] == 1
    assert engine.verify().ok


@pytest.mark.parametrize(("bet", "groups"), [
    ("2.5", ("major", "minor")),                  # same amount as a string, other order
    (Decimal("2.500000000"), ["minor", "major"]),  # same units, as a list
    (Decimal("25E-1"), ("minor", "major")),
])
def test_the_same_request_spelled_differently_is_a_replay(
        engine: JackpotEngine, again: Callable[..., JackpotEngine],
        bet: object, groups: object) -> None:
    first = engine.contribute(Decimal("2.50"), groups=("minor", "major"), op_id="spin-42")
    engine = again(engine)
    replay = engine.contribute(bet, groups=groups, op_id="spin-42")  # type: ignore[arg-type]
    assert replay.replayed is True
    assert first_result(replay) == first


def test_win_replay_pays_once(engine: JackpotEngine, again: Callable[..., JackpotEngine],
                              dump_db: Callable[..., Any]) -> None:
    engine.contribute(Decimal(100), groups="minor")
    first = engine.process_win("minor", op_id="win-7", winner="player-9")
    engine.contribute(Decimal(1000), groups="minor")  # the pool grows again: 105
    engine = again(engine)
    before = dump_db()
    replay = engine.process_win("minor", op_id="win-7", winner="player-9")
    assert isinstance(replay, Win)
    assert (replay.replayed, first.replayed) == (True, False)
    assert first_result(replay) == first == Win("win-7", "minor", Decimal("100.5"),
                                                Decimal(100), 3, "player-9", True)
    assert engine.pool("minor").amount == Decimal(105)  # not paid again
    assert dump_db() == before


def test_fixed_win_replay(engine: JackpotEngine, again: Callable[..., JackpotEngine]) -> None:
    first = engine.process_win("major", op_id="w", amount=Decimal(10))
    engine = again(engine)
    replay = engine.process_win("major", op_id="w", amount="10.000")
    assert (replay.replayed, first_result(replay)) == (True, first)
    assert engine.pool("major").amount == Decimal(990)


def test_config_replay(engine: JackpotEngine, again: Callable[..., JackpotEngine],
                       dump_db: Callable[..., Any]) -> None:
    first = engine.update_config("minor", op_id="cfg-1", expected_version=1, who="ops",
                                 contribution_rate=Decimal("0.02"))
    engine.update_config("minor", contribution_rate=Decimal("0.03"))  # moved on: version 3
    engine = again(engine)
    before = dump_db()
    # expected_version 1 is stale by now, but this is the same request: its first result
    replay = engine.update_config("minor", op_id="cfg-1", expected_version=1, who="ops",
                                  contribution_rate="0.020")
    assert isinstance(replay, ConfigResult)
    assert replay.replayed is True
    assert first_result(replay) == first
    assert engine.pool("minor").contribution_rate == Decimal("0.03")
    assert dump_db() == before


# -- conflicts ---------------------------------------------------------------------------

def contribute(bet: object = Decimal("2.50"), groups: object = ("minor", "major"),
               op_id: str = "op-1") -> Callable[[JackpotEngine], object]:
    return lambda e: e.contribute(bet, groups=groups, op_id=op_id)  # type: ignore[arg-type]


def win(group: str = "minor", **kwargs: Any) -> Callable[[JackpotEngine], object]:
    return lambda e: e.process_win(group, op_id="op-1", **kwargs)


def config(group: str = "minor", **kwargs: Any) -> Callable[[JackpotEngine], object]:
    return lambda e: e.update_config(group, op_id="op-1", **kwargs)


CONFLICTS = [
    # (first request, a different request under the same op_id)
    pytest.param(contribute(), contribute(bet=Decimal("2.51")), id="other-bet"),
    pytest.param(contribute(), contribute(groups=("minor",)), id="fewer-levels"),
    pytest.param(contribute(), contribute(groups=("minor", "mega")), id="other-levels"),
    pytest.param(contribute(), contribute(groups=None), id="every-level"),
    pytest.param(contribute(groups=("major", "mega", "minor")), contribute(groups=None),
                 id="the-same-levels-named-then-none"),  # (as README says)
    pytest.param(win(), win(amount=Decimal(1)), id="win-fixed-vs-whole"),
    pytest.param(win(amount=Decimal(1)), win(amount=Decimal(2)), id="win-other-amount"),
    pytest.param(win(winner="p1"), win(winner="p2"), id="win-other-winner"),
    pytest.param(win(), win(group="major"), id="win-other-level"),
    pytest.param(config(seed=Decimal(5)), config(seed=Decimal(6)), id="config-other-value"),
    pytest.param(config(seed=Decimal(5)), config(seed=Decimal(5), who="ops"), id="config-other-who"),
    pytest.param(config(seed=Decimal(5)), config(seed=Decimal(5), expected_version=2),
                 id="config-other-expected-version"),
    pytest.param(config(seed=Decimal(5)), config(group="major", seed=Decimal(5)),
                 id="config-other-level"),
    # the op_id reused for another kind of operation
    pytest.param(contribute(groups=("minor",)), win(), id="contribute-then-win"),
    pytest.param(contribute(), config(seed=Decimal(5)), id="contribute-then-config"),
    pytest.param(win(), contribute(groups=("minor",)), id="win-then-contribute"),
    pytest.param(win(amount=Decimal(1)), config(seed=Decimal(5)), id="win-then-config"),
    pytest.param(config(seed=Decimal(5)), contribute(), id="config-then-contribute"),
    pytest.param(config(seed=Decimal(5)), win(), id="config-then-win"),
]


@pytest.mark.parametrize(("first", "second"), CONFLICTS)
def test_same_op_id_different_request_conflicts(
        engine: JackpotEngine, again: Callable[..., JackpotEngine],
        dump_db: Callable[..., Any],
        first: Callable[[JackpotEngine], object],
        second: Callable[[JackpotEngine], object]) -> None:
    result = first(engine)
    engine = again(engine)
    before = dump_db()
    pools = engine.pools()
    with pytest.raises(IdempotencyConflictError,
                       match=r"^op_id 'op-1' was already used for a different \w+ request"):
        second(engine)
    assert dump_db() == before
    assert engine.pools() == pools
    replay = first(engine)  # the first request is still a replay
    assert (replay.replayed, first_result(replay)) == (True, result)  # type: ignore[attr-defined]
    assert dump_db() == before
    assert engine.verify().ok


def test_the_first_kind_is_named_in_the_conflict(engine: JackpotEngine) -> None:
    # Both kinds named: was "already used for a different contribute request" alone,
    # which a caller sending a win could read as its own request's kind.
    engine.contribute(Decimal(1), op_id="x")
    with pytest.raises(IdempotencyConflictError, match=(
            r"^op_id 'x' was already used for a different contribute request "
            r"\(this one: win\); use a new op_id for a new request$")):
        engine.process_win("minor", op_id="x")
    engine.process_win("minor", op_id="y", amount=Decimal(1))
    with pytest.raises(IdempotencyConflictError, match=r"different win request \(this one: contribute\)"):
        engine.contribute(Decimal(1), op_id="y")
    with pytest.raises(IdempotencyConflictError, match=(
            r"different win request \(this one: win with other arguments\)")):
        engine.process_win("minor", op_id="y", amount=Decimal(2))


def test_operations_without_op_id_are_never_replayed(engine: JackpotEngine) -> None:
    a = engine.contribute(Decimal(1), groups="minor")
    b = engine.contribute(Decimal(1), groups="minor")
    assert (a.replayed, b.replayed) == (False, False)
    assert (a.versions, b.versions) == ({"minor": 2}, {"minor": 3})


# -- across threads ----------------------------------------------------------------------

@pytest.mark.parametrize("groups", [("minor",), ("major", "mega", "minor")])
def test_same_op_id_from_many_threads_applies_once(
        engine: JackpotEngine, again: Callable[..., JackpotEngine],
        ledger: Callable[..., list[dict[str, Any]]], groups: tuple[str, ...]) -> None:
    results = run_together(
        *[lambda: engine.contribute(Decimal(10), groups=groups, op_id="spin-1")] * 16)
    assert all(isinstance(r, Contribution) for r in results), results
    assert sorted(r.replayed for r in results) == [False] + [True] * 15
    first = next(r for r in results if not r.replayed)
    assert all(first_result(r) == first for r in results)
    assert first.versions == dict.fromkeys(groups, 2)
    assert len([r for r in ledger() if r["op_id"] == "spin-1"]) == len(groups)
    engine = again(engine)
    assert engine.contribute(Decimal(10), groups=groups, op_id="spin-1").replayed
    assert {n: p.version for n, p in engine.pools().items() if n in groups} == dict.fromkeys(
        groups, 2)


def test_same_op_id_on_different_levels_at_once_applies_exactly_one(
        engine: JackpotEngine, ledger: Callable[..., list[dict[str, Any]]]) -> None:
    """Two levels are two actors with two connections: the database decides."""
    names = ("major", "mega", "minor")
    for round_ in range(10):
        oid = f"race-{round_}"
        results = run_together(*[lambda i=i, oid=oid: engine.contribute(
            Decimal(1), groups=names[i % 3], op_id=oid) for i in range(6)])
        applied = [r for r in results if isinstance(r, Contribution) and not r.replayed]
        assert len(applied) == 1, results
        (level,) = applied[0].versions
        for i, r in enumerate(results):
            if names[i % 3] == level:
                assert isinstance(r, Contribution)
                assert first_result(r) == applied[0]
            else:
                assert isinstance(r, IdempotencyConflictError), r
        assert [r["level"] for r in ledger() if r["op_id"] == oid] == [level]
    assert engine.verify().ok


def test_same_op_id_different_bets_at_once_applies_exactly_one(
        engine: JackpotEngine, ledger: Callable[..., list[dict[str, Any]]]) -> None:
    """Requests queued together (one batch) still see each other's op_id."""
    results = run_together(*[lambda i=i: engine.contribute(Decimal(i + 1), groups="minor",
                                                           op_id="spin-1") for i in range(8)])
    applied = [r for r in results if isinstance(r, Contribution)]
    assert len(applied) == 1, results
    assert applied[0].replayed is False
    assert all(isinstance(r, IdempotencyConflictError) for r in results if r is not applied[0])
    bet = results.index(applied[0]) + 1
    assert applied[0].balances == {"minor": Decimal(100) + Decimal("0.005") * bet}
    assert [r["op_id"] for r in ledger("minor")] == ["create:minor", "spin-1"]
    assert engine.contribute(Decimal(bet), groups="minor", op_id="spin-1").replayed
