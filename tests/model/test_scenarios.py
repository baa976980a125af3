"""Scripted scenarios at the edges of the rules, each step checked against the model.

The state machines find the combinations nobody thought of; these make sure
the ones we did think of run on every test run, whatever Hypothesis draws:
boundaries (min_bet, max_contribution, cap, must_hit_by, MAX_HITS_PER_BET,
the engine's range), retirement into full, mystery and suspended levels, the
reserve funding a reset, pending changes, carried fractions, replays across a
restart. Every step goes through `Driver.call` (the engine's result or
refusal must equal the model's) and is followed by `Driver.check` (snapshots,
ledger rows, idempotency records, history, verify). Mutation testing showed
which of these the random runs could miss.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from unittest import mock

import pytest

import jackpot.engine
import jackpot.requests
from jackpot import GroupConfig

from .harness import Driver, make_draw, tmp_db
from .reference import MAX_UNITS, UNIT, Model

D = Decimal
MAX = D(MAX_UNITS // UNIT)  # the largest amount the engine accepts


def level(name: str, seed: object, rate: str, **kw: Any) -> GroupConfig:
    return GroupConfig(name, D(str(seed)), D(rate), **{k: D(str(v)) if k != "overflow_to"
                                                        and v is not None else v
                                                        for k, v in kw.items()})


Step = tuple[Any, ...]  # (method, *args, {kwargs}) or ("reopen",)


def s(method: str, *args: Any, **kwargs: Any) -> Step:
    return (method, args, kwargs)


REOPEN: Step = ("reopen", (), {})

SCENARIOS: dict[str, tuple[list[GroupConfig], list[Step]]] = {
    "retire-a-suspended-level-into-a-suspended-level": (
        [level("a", 10, "0.1", reserve_rate="0.01"), level("b", 20, "0.1")],
        [s("contribute", D(50), op_id="b1"),
         s("suspend", "a", reason="r", op_id="s1"),
         s("suspend", "b", reason="r", op_id="s2"),
         s("retire", "a", transfer_to="b", reason="r", op_id="r1", who="ops"),
         s("resume", "a", op_id="x1"),
         s("resume", "b", op_id="x2"),
         s("contribute", D(10), op_id="b2")]),
    "retire-into-a-full-level-goes-to-its-reserve": (
        [level("a", 10, "0.1"), level("b", 20, "0.5", cap=25)],
        [s("contribute", D(20), op_id="b1"),  # b: 20 + 10 -> cap 25, 5 overflow
         s("retire", "a", transfer_to="b", who="ops", reason="r", op_id="r1"),
         s("process_win", "b", op_id="w1"),  # reset from the reserve
         s("process_win", "b", op_id="w2")]),
    "retire-into-a-level-with-some-room": (
        [level("a", 10, "0.1"), level("b", 20, "0.1", cap=23, overflow_to="reserve")],
        [s("contribute", D(10), op_id="b1"),
         s("retire", "a", transfer_to="b", who="ops", reason="r", op_id="r1"),
         s("retire", "b", transfer_to="a", who="ops", reason="r", op_id="r2"),
         s("retire", "a", transfer_to="a", who="ops", reason="r", op_id="r3")]),
    "retire-into-a-mystery-level-then-it-hits-at-once": (
        [level("a", 50, "0.1"), level("m", 10, "0.1", must_hit_by=30)],
        [s("retire", "a", transfer_to="m", who="ops", reason="r", op_id="r1"),
         s("contribute", D("0.000001"), groups="m", op_id="b1"),
         s("contribute", D(400), groups="m", op_id="b2")]),
    "retire-into-a-level-already-past-its-cap": (
        [level("a", 10, "0.1"), level("b", 20, "0.1", cap=20)],
        [s("retire", "a", transfer_to="b", who="ops", reason="r", op_id="r1")]),
    "cap-overflow-to-the-meter-and-to-the-reserve": (
        [level("m", 10, "0.5", cap=12), level("r", 10, "0.5", cap=12, overflow_to="reserve")],
        [s("contribute", D(3), op_id="b1"),
         s("contribute", D(3), op_id="b2"),
         s("contribute", D(1), op_id="b3"),
         s("process_win", "m", op_id="w1"),
         s("process_win", "r", op_id="w2"),
         s("update_config", "m", cap=D("10.5"), op_id="c1"),
         s("update_config", "m", cap=D(10), op_id="c2"),
         s("update_config", "m", cap=D("9.999999"), op_id="c3")]),
    "the-reserve-funds-a-reset-wholly-or-in-part": (
        [level("a", 10, "0.1", reserve_rate="0.2")],
        [s("contribute", D(40), op_id="b1"),   # reserve 8 < seed 10
         s("process_win", "a", op_id="w1"),   # 8 from the reserve, 2 from the house
         s("contribute", D(60), op_id="b2"),  # reserve 12 >= seed
         s("process_win", "a", op_id="w2"),   # 10 from the reserve
         s("process_win", "a", amount=D(3), op_id="w3")]),  # a part: no reset
    "pending-seed-and-must-hit-by-apply-at-the-reset": (
        [level("a", 10, "0.1", cap=100, must_hit_by=50)],
        [s("update_config", "a", seed=D(20), op_id="c1"),
         s("update_config", "a", must_hit_by=D(60), contribution_rate=D("0.2"), op_id="c2"),
         s("process_win", "a", amount=D(1), op_id="w1"),  # no reset: still pending
         s("process_win", "a", op_id="w2"),               # reset: seed 20, mhb 60
         s("update_config", "a", must_hit_by=None, op_id="c3"),
         s("update_config", "a", seed=D(100), op_id="c4"),
         s("update_config", "a", seed=D(101), op_id="c5"),  # above the cap: refused
         s("contribute", D(1000), op_id="b1"),
         s("process_win", "a", op_id="w3")]),
    "must-hit-by-pending-below-the-pending-seed-is-refused": (
        [level("a", 10, "0.1", must_hit_by=50)],
        [s("update_config", "a", seed=D(40), op_id="c1"),
         s("update_config", "a", must_hit_by=D(40), op_id="c2"),
         s("update_config", "a", must_hit_by=D("40.000001"), op_id="c3"),
         s("update_config", "a", must_hit_by=D(10), op_id="c4")]),
    "one-bet-many-hits-and-the-hit-limit": (
        # A trigger range of one unit: every unit added is a hit.
        [level("a", 0, "0.5", must_hit_by="0.000001"), level("b", 5, "0.1")],
        [s("contribute", D("0.000006"), op_id="b1"),   # 3 units: 3 hits
         s("contribute", D("0.000200"), groups="a", op_id="b2"),  # 100 hits: allowed
         s("contribute", D("0.000202"), op_id="b3"),   # 101 hits: refused, b untouched
         s("contribute", D("0.000201"), groups="a", op_id="b4"),  # 100 + carried half
         s("contribute", D("0.000001"), groups="a", op_id="b5")]),
    "a-mystery-level-hits-exactly-at-its-trigger": (
        [level("a", 10, "0.1", must_hit_by=11, cap=11)],
        [s("contribute", D(5), op_id="b1"),
         s("contribute", D(5), op_id="b2"),
         s("contribute", D(5), op_id="b3"),
         s("contribute", D(20), op_id="b4"),
         s("adjust", "a", D(1), who="ops", reason="r", op_id="a1"),
         s("adjust", "a", D("0.000001"), who="ops", reason="r", op_id="a2")]),
    "min-bet-and-max-contribution-boundaries": (
        [level("a", 10, "0.1", min_bet=2, max_contribution=1), level("b", 10, "0.1")],
        [s("contribute", D("1.999999"), op_id="b1"),   # a: below min_bet, b: takes it
         s("contribute", D("1.999999"), groups="a", op_id="b2"),  # changes nothing
         s("contribute", D(2), op_id="b3"),            # exactly min_bet: qualifies
         s("contribute", D(10), op_id="b4"),           # contributes exactly the max
         s("contribute", D("10.00001"), op_id="b5"),   # a little over: refused, b too
         s("update_config", "a", min_bet=None, max_contribution=None, op_id="c1"),
         s("contribute", D(1), op_id="b6")]),
    "carried-fractions-add-up": (
        [level("a", 0, "0.3", reserve_rate="0.699999999"), level("b", 0, "0.000000001")],
        [*[s("contribute", D("0.000001"), op_id=f"b{i}") for i in range(5)],
         s("update_config", "a", contribution_rate=D("0.5"), op_id="c1"),
         *[s("contribute", D("0.000003"), op_id=f"d{i}") for i in range(3)]]),
    "adjust-to-the-limits": (
        [level("a", 10, "0.1", cap=20), level("m", 10, "0.1", must_hit_by=15)],
        [s("adjust", "a", D(10), who="ops", reason="r", op_id="a1"),          # exactly the cap
         s("adjust", "a", D("0.000001"), who="ops", reason="r", op_id="a2"),  # past it: refused
         s("adjust", "a", D(-20), who="ops", reason="r", op_id="a3"),         # exactly zero
         s("adjust", "a", "-0.000001", who="ops", reason="r", op_id="a4"),    # below zero: refused
         s("process_win", "a", op_id="w1"),                        # empty: refused
         s("adjust", "m", D(5), who="ops", reason="r", op_id="a5"),           # exactly must_hit_by
         s("adjust", "m", D("0.000001"), who="ops", reason="r", op_id="a6"),
         s("suspend", "a", reason="r", op_id="s1"),
         s("adjust", "a", "5", who="ops", reason="r", op_id="a7")]),          # allowed when suspended
    "wins-of-exactly-the-pool-and-expected-values": (
        [level("a", 10, "0.1")],
        [s("process_win", "a", amount=D(10), op_id="w1", expected_amount=D(10)),
         s("process_win", "a", op_id="w2"),                # empty pool: refused
         s("contribute", D(1), op_id="b1"),
         s("process_win", "a", expected_version=2, op_id="w3"),
         s("process_win", "a", expected_version=3, expected_amount=D("0.1"), op_id="w4"),
         s("process_win", "a", expected_amount=D(10), op_id="w5"),
         s("process_win", "a", expected_amount=D("0.1"), winner="p", op_id="w6"),
         s("update_config", "a", expected_version=4, seed=D(1), op_id="c1"),
         s("update_config", "a", expected_version=5, seed=D(1), op_id="c2")]),
    "suspended-and-retired-levels-and-every-level": (
        [level("a", 10, "0.1"), level("b", 10, "0.1"), level("c", 10, "0.1")],
        [s("suspend", "a", reason="r", op_id="s1"),
         s("contribute", D(10), op_id="b1"),                  # a is skipped
         s("contribute", D(10), groups=["a", "b"], op_id="b2"),  # refused: a suspended
         s("process_win", "a", op_id="w1"),
         s("adjust", "a", D(1), reason="r", who="ops", op_id="a0"),  # allowed
         s("update_config", "a", contribution_rate=D("0.2"), op_id="c1"),  # allowed
         s("suspend", "a", reason="r", op_id="s2"),
         s("retire", "b", transfer_to="c", who="ops", reason="r", op_id="r1"),
         s("contribute", D(10), op_id="b3"),                  # a and b skipped
         s("resume", "a", op_id="x1"),
         s("contribute", D(10), op_id="b4"),
         s("resume", "a", op_id="x2"),
         s("resume", "b", op_id="x3"),
         s("process_win", "b", op_id="w2"),
         s("adjust", "b", D(1), who="ops", reason="r", op_id="a1"),
         s("update_config", "b", seed=D(1), op_id="c2")]),
    "replays-and-conflicts-across-a-restart": (
        [level("a", 10, "0.1"), level("b", 10, "0.1", must_hit_by=11)],
        [s("contribute", D(15), op_id="b1"),
         s("process_win", "a", amount=D(1), op_id="w1"),
         s("update_config", "a", seed=D(5), op_id="c1"),
         s("suspend", "a", reason="r", op_id="s1"),
         s("adjust", "b", D("0.5"), who="ops", reason="r", op_id="a1"),
         REOPEN,
         s("contribute", "15", op_id="b1"),
         s("contribute", D(15), groups=["a", "b"], op_id="b1"),
         s("contribute", D(16), op_id="b1"),
         s("process_win", "a", amount="1.0", op_id="w1"),
         s("process_win", "a", amount=D(2), op_id="w1"),
         s("process_win", "a", op_id="b1"),
         s("update_config", "a", seed="5", op_id="c1"),
         s("update_config", "a", seed=D(6), op_id="c1"),
         s("update_config", "b", contribution_rate=D("0.2"), cap=D(50), who="ops",
           reason="review", op_id="c2"),
         s("update_config", "b", reason="review", cap="50.0", who="ops",
           contribution_rate="0.20", op_id="c2"),  # the same change, spelled otherwise
         s("update_config", "b", contribution_rate=D("0.2"), cap=D(50), who="ops",
           op_id="c2"),                             # without the reason: another request
         s("suspend", "a", reason="r", op_id="s1"),
         s("suspend", "a", reason="other", op_id="s1"),
         s("resume", "a", op_id="s1"),
         s("adjust", "b", "0.50", who="ops", reason="r", op_id="a1"),
         s("adjust", "b", D("-0.5"), who="ops", reason="r", op_id="a1"),
         s("retire", "a", transfer_to="b", who="ops", reason="r", op_id="a1"),
         s("retire", "a", transfer_to="b", who="ops", reason="r", op_id="r1"),
         REOPEN,
         s("retire", "a", transfer_to="b", who="ops", reason="r", op_id="r1"),
         s("retire", "a", transfer_to="b", who="ops", reason="other", op_id="r1")]),
    "history-keeps-the-newest-wins": (
        [level("a", 1, "0.5")],
        [*[s("process_win", "a", amount=D("0.1"), winner=f"p{i}", op_id=f"w{i}")
           for i in range(6)],
         s("process_win", "a", op_id="w6")]),
    "the-edges-of-the-engine-range": (
        [level("a", MAX, "0.5"), level("b", 0, "0.999999999", cap=MAX)],
        [s("contribute", MAX, op_id="b1"),                 # a is full: all overflow
         s("contribute", D("0.000001"), op_id="b2"),
         s("process_win", "a", op_id="w1"),
         s("process_win", "b", amount=MAX, op_id="w2")]),
    "config-edges": (
        [level("a", 10, "0.5", cap=20, must_hit_by=20)],
        [s("contribute", D(10), op_id="b1"),
         s("update_config", "a", cap=D(15), op_id="c1"),   # below must_hit_by: refused
         s("update_config", "a", must_hit_by=D(15), op_id="c2"),  # pending
         s("update_config", "a", cap=D(15), op_id="c3"),   # still below current mhb
         s("update_config", "a", contribution_rate=D("0.6"), reserve_rate=D("0.4"),
           op_id="c4"),                                     # sum 1: refused
         s("update_config", "a", contribution_rate=D("0.6"), reserve_rate=D("0.399999999"),
           op_id="c5"),
         s("update_config", "a", overflow_to="reserve", op_id="c6"),
         s("process_win", "a", op_id="w1"),
         s("update_config", "a", cap=D(15), op_id="c7"),
         s("update_config", "a", reserve_rate=0, op_id="c8"),       # zero is allowed
         s("update_config", "a", reserve_rate="0.000000", op_id="c9"),
         s("update_config", "a", seed=0, op_id="c10"),               # so is a zero seed
         s("contribute", D(10), op_id="b2")]),
}


@pytest.fixture
def directory() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="jackpot-scenario-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name: str, directory: str) -> None:
    groups, steps = SCENARIOS[name]
    engine_draw, model_draw = make_draw(7), make_draw(7)
    with mock.patch.object(jackpot.requests, "draw", engine_draw), \
            mock.patch.object(jackpot.engine, "draw", engine_draw):
        driver = Driver(tmp_db(directory), groups, Model(model_draw), engine_draw)
        try:
            driver.check()
            for method, args, kwargs in steps:
                if method == "reopen":
                    driver.reopen(None)
                else:
                    driver.call(method, *args, **kwargs)
                driver.check()
        finally:
            driver.close()
