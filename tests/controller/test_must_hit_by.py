"""Must-hit-by (mystery) jackpots with the real cryptographic draw.

- The triggers are spread over the whole range (seed, must_hit_by]: a
  chi-square test over 10 equal buckets of 5000 triggers, with a bound whose
  false-failure probability is about 1.5e-11, plus checks that both ends of
  the range are reached (false failure about 3e-22).
- Through the engine, no pool ever passes must_hit_by, and every trigger
  drawn fires exactly once, paying exactly the trigger, unless a manual win
  resets the level first.
- The hidden trigger survives a restart unchanged (read from the file through
  a read-only connection) and fires exactly when the pool reaches it.
- The trigger is never shown: not in snapshots, results, history, logs,
  metrics, ledger detail or stored results.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import re
import secrets
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import apsw
import pytest

import jackpot
import jackpot.requests
from _helpers import read_ledger
from jackpot import (
    Contribution,
    GroupConfig,
    HistoryEntry,
    JackpotEngine,
    PoolSnapshot,
    Settings,
    ValidationError,
    Win,
)
from jackpot.domain import create, win
from jackpot.money import from_units

T0 = 1_700_000_000_000
U = 1_000_000

BUCKETS = 10
DRAWS = 5000
CHI2_BOUND = 70.0
"""P(chi-square with 9 degrees of freedom > 70) = 1.5e-11: a false failure
would take about 60 billion runs. A draw confined to half the range scores
about 5000 (see the power check)."""


def chi_square_tail(x: float, dof: int = BUCKETS - 1) -> float:
    """P(X > x) for a chi-square X with an odd number of degrees of freedom."""
    assert dof % 2 == 1
    series = sum(x ** (j - 1) / math.prod(range(1, 2 * j, 2)) for j in range(1, (dof + 1) // 2))
    return math.erfc(math.sqrt(x / 2)) + math.sqrt(2 * x / math.pi) * math.exp(-x / 2) * series


def chi_square(values: list[int], low: int, high: int) -> float:
    """The chi-square statistic of `values` over BUCKETS equal buckets of [low, high]."""
    size = high - low + 1
    assert size % BUCKETS == 0
    counts = [0] * BUCKETS
    for v in values:
        counts[(v - low) * BUCKETS // size] += 1
    expected = len(values) / BUCKETS
    return sum((c - expected) ** 2 / expected for c in counts)


def read_level(path: Path, name: str) -> tuple[int, int | None]:
    """(amount, hidden trigger) of a level, read from the file, read-only."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        ((amount, trigger),) = conn.execute(
            "SELECT amount, trigger FROM levels WHERE name = ?", (name,)).fetchall()
    finally:
        conn.close()
    return amount, trigger


def read_column(path: Path, sql: str) -> list[Any]:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [r[0] for r in conn.execute(sql)]
    finally:
        conn.close()


def resets_with_the_real_draw(config: GroupConfig, n: int) -> list[int]:
    """The triggers of `n` successive whole-pool resets, drawn by the engine's draw."""
    state, _ = create(config, T0, jackpot.requests.draw)
    triggers = []
    for _ in range(n):
        state, _ = win(state, None, T0, jackpot.requests.draw)
        assert state.trigger is not None
        triggers.append(state.trigger)
    return triggers


# -- the spread of the triggers ------------------------------------------------------------

def test_the_statistic_bound_is_what_the_docstring_says() -> None:
    assert 1e-11 < chi_square_tail(CHI2_BOUND) < 2e-11
    assert chi_square_tail(16.92) == pytest.approx(0.05, abs=1e-3)  # the textbook 5% point


def test_triggers_are_spread_uniformly_over_the_whole_range() -> None:
    config = GroupConfig("mystery", Decimal(100), Decimal("0.01"), must_hit_by=Decimal(200))
    low, high = 100 * U + 1, 200 * U  # (seed, must_hit_by], in units: 10**8 values
    triggers = resets_with_the_real_draw(config, DRAWS)
    assert all(low <= t <= high for t in triggers)
    statistic = chi_square(triggers, low, high)
    assert statistic < CHI2_BOUND, statistic
    # the ends are reached: P(no trigger in the lowest 1%) = 0.99**5000 = 1.5e-22
    margin = (high - low + 1) // 100
    assert min(triggers) < low + margin
    assert max(triggers) > high - margin
    # power: the same test refuses a draw that only covers half of the range
    half = [low + secrets.randbelow((high - low + 1) // 2) for _ in range(DRAWS)]
    assert chi_square(half, low, high) > 50 * CHI2_BOUND


def test_both_ends_of_a_tiny_range_are_drawn_and_nothing_outside_it() -> None:
    # (0.000010, 0.000014]: the units 11 to 14. P(one never drawn in 400) < 4 x 0.75**400
    config = GroupConfig("tiny", Decimal("0.00001"), Decimal("0.01"),
                         must_hit_by=Decimal("0.000014"))
    assert set(resets_with_the_real_draw(config, 400)) == {11, 12, 13, 14}


# -- through the engine: never past must_hit_by, each trigger fires once -----------------

MYSTERY = GroupConfig("mystery", Decimal(1), Decimal("0.5"), reserve_rate=Decimal("0.1"),
                      must_hit_by=Decimal(2))


@pytest.fixture
def recorded_draws(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """Every (low, high, trigger) the engine draws at a reset, with the real draw."""
    real = jackpot.requests.draw
    draws: list[tuple[int, int, int]] = []

    def recording(low: int, high: int) -> int:
        value = real(low, high)
        draws.append((low, high, value))
        return value

    monkeypatch.setattr(jackpot.requests, "draw", recording)
    return draws


def test_no_pool_passes_must_hit_by_and_every_trigger_fires_exactly_once(
        open_engine: Callable[..., JackpotEngine], db_path: Path,
        recorded_draws: list[tuple[int, int, int]]) -> None:
    engine = open_engine(groups=[MYSTERY])
    _, first = read_level(db_path, "mystery")
    assert first is not None
    stakes = random.Random(20240607)  # the bets only; the triggers are the real draw
    results: list[Contribution | Win] = []
    for i in range(300):
        if i % 60 == 59:  # now and then a manual win resets the level before its trigger
            results.append(engine.process_win("mystery", op_id=f"win-{i}"))
            continue
        bet = from_units(stakes.randint(10_000, 1_500_000))  # adds 0.005 to 0.75
        result = engine.contribute(bet, groups="mystery", op_id=f"bet-{i}")
        assert result.balances["mystery"] <= MYSTERY.must_hit_by
        assert all(MYSTERY.seed < h.amount <= MYSTERY.must_hit_by for h in result.hits)
        results.append(result)
    assert all(low == U + 1 and high == 2 * U for low, high, _ in recorded_draws)

    # Walk the ledger: each reset consumes the trigger in force and the next one drawn.
    triggers = [first] + [value for _, _, value in recorded_draws]
    rows = read_ledger(db_path, "mystery")
    current = 0
    for r in rows:
        assert r["balance_after"] <= 2 * U
        if r["kind"] == "hit":
            assert r["paid"] == triggers[current]  # it fired at exactly its value
        if r["kind"] in ("hit", "win"):
            current += 1
    assert current == len(triggers) - 1  # one reset per draw, no draw without a reset
    amount, trigger = read_level(db_path, "mystery")
    assert trigger == triggers[-1]
    assert amount < trigger  # the last trigger has not fired yet

    reported = [h for r in results if isinstance(r, Contribution) for h in r.hits]
    hit_rows = [r for r in rows if r["kind"] == "hit"]
    snapshot = engine.pool("mystery")
    history = engine.history("mystery", limit=1000)
    assert len(reported) == len(hit_rows) == snapshot.meters["hits"] == sum(
        h.hit for h in history)
    assert len(reported) > 20  # the test did see many hits (about 100 expected)
    assert [from_units(r["paid"]) for r in hit_rows] == [h.amount for h in reported]
    assert [h.op_id for h in reported] == [r["op_id"] for r in hit_rows]
    assert len(set(triggers)) > 20
    assert engine.verify().ok


# -- the trigger survives a restart ---------------------------------------------------------

def bet_for(units: int) -> Decimal:
    """The bet that adds exactly `units` to a level with rate 0.5 and no carry."""
    return from_units(2 * units)


def test_the_trigger_survives_a_restart_and_fires_exactly_when_reached(
        open_engine: Callable[..., JackpotEngine], db_path: Path) -> None:
    engine = open_engine(groups=[MYSTERY])
    amount, trigger = read_level(db_path, "mystery")
    assert trigger is not None
    # fire the trigger from create, so the one that must survive was drawn at a reset
    engine.contribute(bet_for(trigger - amount), groups="mystery", op_id="reach-1")
    amount, trigger = read_level(db_path, "mystery")
    assert (amount, trigger is not None) == (U, True)
    assert trigger is not None
    if trigger - amount > 1:
        engine.contribute(bet_for((trigger - amount) // 2), groups="mystery", op_id="half")
    # a must_hit_by change waits for the reset, across the restart too
    engine.update_config("mystery", must_hit_by=3, op_id="wider")
    amount, before_close = read_level(db_path, "mystery")
    engine.close()
    assert read_level(db_path, "mystery") == (amount, before_close)
    engine = open_engine(groups=[MYSTERY])
    assert read_level(db_path, "mystery") == (amount, before_close)
    assert before_close is not None
    assert engine.pool("mystery").pending_changes == {"must_hit_by": "3.000000"}

    if before_close - amount > 1:  # one unit short: no hit
        short = engine.contribute(bet_for(before_close - amount - 1), groups="mystery",
                                  op_id="short")
        assert (short.hits, short.balances["mystery"]) == ((), from_units(before_close - 1))
        assert read_level(db_path, "mystery") == (before_close - 1, before_close)
    reach = engine.contribute(bet_for(1), groups="mystery", op_id="reach-2")  # the last unit
    (hit,) = reach.hits
    assert (hit.group, hit.amount, hit.balance, hit.hit, hit.reset, hit.op_id) == (
        "mystery", from_units(before_close), MYSTERY.seed, True, True, "reach-2")
    assert reach.balances["mystery"] == MYSTERY.seed
    after = engine.pool("mystery")
    assert (after.must_hit_by, after.pending_changes) == (3, {})
    _, drawn = read_level(db_path, "mystery")
    assert drawn is not None
    assert U < drawn <= 3 * U
    (last,) = engine.history("mystery", limit=1)
    assert (last.amount, last.op_id, last.winner, last.hit, last.version) == (
        from_units(before_close), "reach-2", None, True, hit.version)
    assert engine.verify().ok


def test_a_refused_bet_leaves_the_trigger_in_force(
        open_engine: Callable[..., JackpotEngine], db_path: Path,
        recorded_draws: list[tuple[int, int, int]]) -> None:
    # "zguard" sorts after "mystery": the mystery level's hits are computed, then refused
    guard = GroupConfig("zguard", Decimal(5), Decimal("0.1"), max_contribution=Decimal(1))
    engine = open_engine(groups=[MYSTERY, guard])
    amount, trigger = read_level(db_path, "mystery")
    assert trigger is not None
    needed = trigger - amount
    # This bet would fire the mystery level (adding 10), but "zguard" refuses it.
    with pytest.raises(ValidationError, match=r"above its max_contribution"):
        engine.contribute(from_units(20 * U + 2), groups=["zguard", "mystery"],
                          op_id="refused")
    assert recorded_draws  # the hits were computed and new triggers drawn...
    assert read_level(db_path, "mystery") == (amount, trigger)  # ...and thrown away
    recorded_draws.clear()
    reach = engine.contribute(bet_for(needed), groups="mystery", op_id="reach")
    assert [h.amount for h in reach.hits] == [from_units(trigger)]
    _, new = read_level(db_path, "mystery")
    assert [value for _, _, value in recorded_draws] == [new]
    assert engine.verify().ok


# -- the trigger is never shown --------------------------------------------------------------

def forms(units: int) -> list[str]:
    """The ways a trigger could be written: units, and as a decimal amount."""
    d = from_units(units)
    return [str(units), str(d), f"{d.normalize():f}"]


def shows(text: str, units: int) -> bool:
    return any(re.search(rf"(?<![0-9]){re.escape(f)}(?![0-9])", text) for f in forms(units))


class Seen:
    """Everything the engine let out, as text."""

    def __init__(self, engine: JackpotEngine, path: Path, caplog: pytest.LogCaptureFixture
                 ) -> None:
        self.engine, self.path, self.caplog = engine, path, caplog
        self.texts: list[str] = []

    def add(self, *values: object) -> None:
        self.texts.extend(repr(v) for v in values)

    def public(self) -> str:
        """Results, snapshots, history, logs, ledger detail and stored results."""
        e = self.engine
        self.add(e.pools(), e.pool("mystery"), e.history("mystery", limit=100), e.verify())
        for record in self.caplog.records:
            self.texts.append(record.getMessage())
            self.texts.append(repr(vars(record)))
        self.texts.extend(read_column(self.path, "SELECT detail FROM ledger "
                                                 "WHERE detail IS NOT NULL"))
        self.texts.extend(read_column(self.path, "SELECT result FROM operations"))
        return "\n".join(self.texts)

    def everything(self) -> str:
        """`public`, plus the health report and the metrics (which name SQLite triggers)."""
        return "\n".join([self.public(), repr(self.engine.health()),
                          self.engine.metrics_text()])


def test_the_trigger_is_never_shown(open_engine: Callable[..., JackpotEngine], db_path: Path,
                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    config = GroupConfig("mystery", Decimal(100), Decimal("0.5"), reserve_rate=Decimal("0.01"),
                         must_hit_by=Decimal(1000), cap=Decimal(1000))
    engine = open_engine(groups=[config], settings=Settings(log_level="debug"))
    _, first = read_level(db_path, "mystery")
    assert first is not None
    seen = Seen(engine, db_path, caplog)
    amount, _ = read_level(db_path, "mystery")
    step = min(first - amount - 1, 2 * U) // 2  # stays below the trigger
    if step:  # (zero only if the trigger is the seed plus one or two units: p = 2e-9)
        seen.add(engine.contribute(bet_for(step), groups="mystery", op_id="b1"),
                 engine.contribute(bet_for(step), groups="mystery", op_id="b1"))  # replay
    # From here the pool only goes down until the bet that fires the trigger.
    seen.add(engine.process_win("mystery", amount="0.5", op_id="w1", winner="p1"),
             engine.update_config("mystery", op_id="c1", reserve_rate="0.02",
                                  must_hit_by=900, reason="promo"),
             engine.suspend("mystery", reason="check", op_id="s1"),
             engine.adjust("mystery", "-1", who="ops", reason="fix", op_id="a1"),
             engine.resume("mystery", op_id="r1"))
    with pytest.raises(ValidationError):
        engine.update_config("mystery", cap=1, op_id="c2")  # a refusal is logged too
    assert "trigger" not in seen.public().lower()
    assert not shows(seen.everything(), first), "the running trigger leaked"

    amount, trigger = read_level(db_path, "mystery")
    assert trigger == first  # the config change waits for the reset
    hit_result = engine.contribute(bet_for(trigger - amount), groups="mystery", op_id="hit")
    assert [h.amount for h in hit_result.hits] == [from_units(first)]  # now it may be shown
    seen.add(hit_result)
    _, second = read_level(db_path, "mystery")
    assert second is not None
    assert 100 * U < second <= 900 * U  # drawn with the must_hit_by that waited for the reset
    assert "trigger" not in seen.public().lower()
    everything = seen.everything()
    assert not shows(everything, second), "the new trigger leaked"
    assert shows(everything, first)  # the search itself works: the fired one is there

    public = (PoolSnapshot, HistoryEntry, Win, Contribution)
    assert all("trigger" not in {f.name for f in dataclasses.fields(t)} for t in public)
    assert "trigger" not in engine.pool("mystery").meters


def test_the_player_whose_bet_triggers_a_hit_is_its_winner(tmp_path: Path) -> None:
    # A hit had no winner anywhere: history, the ledger and the result said None.
    levels = [GroupConfig("mystery", Decimal(10), Decimal("0.1"),
                          must_hit_by=Decimal("10.000001"))]  # the first unit hits
    with JackpotEngine.open(tmp_path / "pools.db", levels) as engine:
        result = engine.contribute(Decimal("0.00001"), op_id="b1", player="p-7")
        assert [(h.group, h.winner, h.hit) for h in result.hits] == [("mystery", "p-7", True)]
        replay = engine.contribute(Decimal("0.00001"), op_id="b1", player="p-7")
        assert (replay.replayed, replay.hits[0].winner) == (True, "p-7")
        assert [(h.op_id, h.winner, h.hit) for h in engine.history("mystery")] == [
            ("b1", "p-7", True)]
        anonymous = engine.contribute(Decimal("0.00001"), op_id="b2")  # as before: no winner
        assert [h.winner for h in anonymous.hits] == [None]
        with pytest.raises(jackpot.IdempotencyConflictError):  # the player is the request's
            engine.contribute(Decimal("0.00001"), op_id="b1", player="p-8")
        with pytest.raises(ValidationError, match=r"^player must be 1-256 printable"):
            engine.contribute(Decimal("0.00001"), op_id="b3", player=" ")
        assert engine.pool("mystery").version == 5  # the refusals changed nothing
        assert engine.verify().ok
    with apsw.Connection(str(tmp_path / "pools.db")) as conn:
        assert list(conn.execute("SELECT op_id, who FROM ledger WHERE kind = 'hit' "
                                 "ORDER BY version_after")) == [("b1", "p-7"), ("b2", None)]
