"""Hypothesis state machines: the engine against the reference model, step by step.

Each example opens an engine on a new file database (in a temporary directory
made by the machine itself: state machines cannot use function-scoped
fixtures) with one to three random levels, then runs random calls:
contributions (to one, some or all levels; valid and invalid bets), wins
(whole and fixed; too large; stale expected versions), config changes (valid
and invalid; right and stale expected versions), suspend / resume / adjust /
retire, replays of earlier op_ids (same request, or another request), calls
on a closed engine, and close-and-reopen (sometimes adding a level). After
every step the results, every snapshot, the new ledger rows, the idempotency
records, the win history and `verify()` must agree with the model exactly.

Two machines:
- `TestKnownTriggers`: the must-hit-by trigger draw is replaced (in both
  `jackpot.requests` and `jackpot.engine`) by a deterministic function the
  model shares, so the model predicts every mystery hit.
- `TestRandomTriggers`: the engine's real cryptographic draw; the model
  accepts a hit only if it is consistent with everything seen so far.

Profiles: the default run is a few hundred examples in all; JACKPOT_SLOW=1
runs tens of thousands (and marks these tests `slow`, so
`JACKPOT_SLOW=1 pytest -m slow tests/model` runs only the soaks).

Reproducing a failure: Hypothesis prints the failing steps and a line
`@reproduce_failure('6.x', b'...')`; paste it as a decorator above the
failing `Machine` class (e.g. `KnownTriggers`) and rerun that test. Or rerun
with the seed it prints: `pytest tests/model --hypothesis-seed=<seed>`. The
example database in .hypothesis/ also replays the last failure first.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from decimal import Decimal
from typing import Any
from unittest import mock

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import jackpot.engine
import jackpot.requests
from jackpot import EngineClosedError, GroupConfig

from .harness import (
    BAD_AMOUNTS,
    RATES,
    SLOW,
    Driver,
    amounts,
    group_config,
    machine_settings,
    make_draw,
    money,
    nice_units,
    tmp_db,
)
from .reference import FIELDS, RATE, UNIT, Model, dec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(0)] if SLOW else []

NAMES = ("mini", "minor", "major", "mega")
Call = tuple[str, tuple[Any, ...], dict[str, Any]]


class EngineMachine(RuleBasedStateMachine):
    """Random calls on a real engine, each checked against the reference model."""

    known_triggers = True
    min_trigger_range = 1  # units between seed and must_hit_by, at least
    random_fixed: tuple[str, ...] = ()  # config fields not changed (random triggers)
    workers = 1  # engines sharing the file (a second one plays another process)
    changes_levels = True  # config changes, suspend, resume, retire
    limits = True  # levels may have min_bet and max_contribution

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="jackpot-model-")
        self.driver: Driver | None = None
        self.patches: list[Any] = []
        self.calls: list[Call] = []  # calls made with an explicit op_id
        self.counter = 0
        self.via = 0  # which engine serves the next call (when two share the file)

    # -- set-up and tear-down ----------------------------------------------------------

    @initialize(data=st.data(), count=st.integers(1, 3), salt=st.integers(0, 2**32))
    def open_engine(self, data: st.DataObject, count: int, salt: int) -> None:
        model = Model(make_draw(salt) if self.known_triggers else None)
        draw = None
        if self.known_triggers:
            draw = make_draw(salt)
            self.patches = [mock.patch.object(jackpot.requests, "draw", draw),
                            mock.patch.object(jackpot.engine, "draw", draw)]
            for p in self.patches:
                p.start()
        names = data.draw(st.permutations(NAMES))[:count]
        groups = [self.shape(data.draw(group_config(n, min_range=self.min_trigger_range),
                                       label=n)) for n in names]
        self.driver = Driver(tmp_db(self.dir), groups, model, draw)
        for _ in range(self.workers - 1):
            self.d.open_another()

    def shape(self, config: GroupConfig) -> GroupConfig:
        if self.limits:
            return config
        return dataclasses.replace(config, min_bet=None, max_contribution=None)

    def teardown(self) -> None:
        try:
            if self.driver is not None:
                self.driver.close()
        finally:
            for p in self.patches:
                p.stop()
            shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def d(self) -> Driver:
        assert self.driver is not None
        return self.driver

    @property
    def model(self) -> Model:
        return self.d.model

    # -- helpers -------------------------------------------------------------------------

    def op_id(self, data: st.DataObject) -> str | None:
        if data.draw(st.integers(0, 9), label="auto op_id") == 0:
            return None
        self.counter += 1
        return f"op-{self.counter}"

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("op_id") is not None:
            self.calls.append((method, args, kwargs))
        return self.d.call(method, *args, via=self.via, **kwargs)

    def level(self, data: st.DataObject, label: str = "level") -> str:
        return data.draw(st.sampled_from(sorted(self.model.levels)), label=label)

    def pool_bound(self, units: int) -> int:
        """`units` to bound a drawn value by, when that is reproducible.

        With random triggers, pools and seeds depend on the draw: a strategy
        bounded by them would draw differently when Hypothesis replays the
        example, so those machines use a fixed bound instead.
        """
        return units if self.known_triggers else 60 * UNIT

    def expected_version(self, data: st.DataObject, name: str) -> int | None:
        version = self.model.levels[name].version
        choice = data.draw(st.sampled_from(["none", "none", "none", "right", "stale", "ahead"]),
                           label="expected_version")
        return {"none": None, "right": version, "stale": version - 1 or None,
                "ahead": version + 1}[choice]

    # -- rules -----------------------------------------------------------------------------

    @rule(data=st.data())
    def contribute(self, data: st.DataObject) -> None:
        self._contribute(data)

    @rule(data=st.data())
    def contribute_again(self, data: st.DataObject) -> None:
        """Bets are most of what a jackpot sees: give them twice the weight."""
        self._contribute(data)

    def _contribute(self, data: st.DataObject) -> None:
        bet = data.draw(st.one_of(amounts(nice_units(1, 30 * UNIT)),
                                  amounts(nice_units(1, 1000)),
                                  BAD_AMOUNTS) if data.draw(st.integers(0, 9)) == 0
                        else amounts(nice_units(1, 30 * UNIT)), label="bet")
        names = sorted(self.model.levels)
        kind = data.draw(st.sampled_from(["all", "all", "some", "some", "some", "one", "one",
                                          "bad"]), label="groups")
        groups: Any = None
        if kind == "some":
            chosen = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
            groups = data.draw(st.sampled_from([list, tuple]))(chosen)
        elif kind == "one":
            groups = data.draw(st.sampled_from(names))
        elif kind == "bad":
            groups = data.draw(st.sampled_from([[], [names[0], names[0]], ["nope"], [""], 7,
                                                {"x": 1}]))
        player = data.draw(st.sampled_from([None, None, "player-7", "table 3", "", 7, "x" * 257]),
                           label="player")
        self.call("contribute", bet, groups=groups, op_id=self.op_id(data), player=player)

    @rule(data=st.data())
    def win(self, data: st.DataObject) -> None:
        name = self.level(data)
        pool = self.pool_bound(self.model.levels[name].amount)
        kind = data.draw(st.sampled_from(["whole", "whole", "part", "exact", "more", "bad"]),
                         label="win")
        amount: Any = None
        if kind == "part":
            amount = money(data.draw(st.integers(1, max(pool, 1)), label="units"), "decimal")
        elif kind in ("exact", "more"):
            amount = money(self.model.levels[name].amount + (kind == "more"), "str")
            amount = amount if amount != "0" else "0.000001"
        elif kind == "bad":
            amount = data.draw(BAD_AMOUNTS.filter(lambda v: v is not None))
        winner = data.draw(st.sampled_from([None, "player-7", "table 3"]), label="winner")
        self.call("process_win", name, op_id=self.op_id(data), amount=amount, winner=winner,
                  expected_version=self.expected_version(data, name))

    @precondition(lambda self: self.changes_levels)
    @rule(data=st.data())
    def update_config(self, data: st.DataObject) -> None:
        name = self.level(data)
        lv = self.model.levels[name]
        seed, pool = self.pool_bound(lv.config.seed), self.pool_bound(lv.amount)
        values: dict[str, st.SearchStrategy[Any]] = {
            "seed": amounts(nice_units(0, 60 * UNIT)),
            "contribution_rate": st.one_of(RATES.map(lambda r: Decimal(r) / RATE),
                                           st.sampled_from([0, 1, "0.5 ", 0.25])),
            "cap": st.one_of(st.none(), amounts(nice_units(max(pool - UNIT, 1),
                                                           pool + 100 * UNIT))),
            "reserve_rate": st.integers(0, RATE // 5).map(lambda r: Decimal(r) / RATE),
            "min_bet": st.one_of(st.none(), amounts(nice_units(1, 5 * UNIT))),
            "max_contribution": st.one_of(st.none(), amounts(nice_units(1, 20 * UNIT))),
            "must_hit_by": st.one_of(st.none(), amounts(nice_units(max(seed - UNIT, 1),
                                                                   seed + 80 * UNIT))),
            "overflow_to": st.sampled_from(["meter", "reserve", "sideways"]),
        }
        fields = [*FIELDS, "colour"] if self.known_triggers else [
            f for f in (*FIELDS, "colour") if f not in self.random_fixed]
        keys = data.draw(st.lists(st.sampled_from(fields), max_size=3, unique=True),
                         label="fields")
        changes = {k: data.draw(values[k], label=k) if k in values else "red" for k in keys}
        self.call("update_config", name, op_id=self.op_id(data),
                  expected_version=self.expected_version(data, name),
                  who=data.draw(st.sampled_from([None, "ops"])),
                  reason=data.draw(st.sampled_from([None, "weekly review"])), **changes)

    @precondition(lambda self: self.changes_levels)
    @rule(data=st.data())
    def suspend_or_resume(self, data: st.DataObject) -> None:
        name = self.level(data)
        sensible = "resume" if self.model.levels[name].status == "suspended" else "suspend"
        action = data.draw(st.sampled_from([sensible, sensible, sensible, "suspend", "resume"]),
                           label="action")
        reason = data.draw(st.sampled_from(["maintenance", None, " "]), label="reason")
        self.call(action, name, reason=reason, op_id=self.op_id(data),
                  who=data.draw(st.sampled_from([None, "floor manager"])))

    @rule(data=st.data())
    def adjust(self, data: st.DataObject) -> None:
        name = self.level(data)
        lv = self.model.levels[name]
        pool = self.pool_bound(lv.amount)
        room = self.pool_bound(lv.ceiling() - lv.amount)
        units = data.draw(st.one_of(st.integers(-pool - 1, -1),
                                    st.integers(1, max(room, 0) + 1),
                                    st.integers(1, 10 * UNIT)), label="delta units")
        delta = data.draw(st.sampled_from([dec(units), str(dec(units))]), label="delta")
        self.call("adjust", name, delta, reason="meter correction", op_id=self.op_id(data),
                  who="auditor")

    @precondition(lambda self: self.changes_levels and len(self.model.levels) > 1)
    @rule(data=st.data())
    def retire(self, data: st.DataObject) -> None:
        open_ = [n for n, lv in sorted(self.model.levels.items()) if lv.status != "retired"]
        pick = st.sampled_from(open_) if len(open_) > 1 and data.draw(
            st.integers(0, 4), label="among open levels") else st.sampled_from(
                sorted(self.model.levels))
        name = data.draw(pick, label="group")
        target = data.draw(pick, label="transfer_to")
        self.call("retire", name, transfer_to=target, reason="end of promotion",
                  op_id=self.op_id(data), who=data.draw(st.sampled_from([None, "ops"])))

    @precondition(lambda self: self.calls)
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        """Reuse an earlier op_id: for the same request, or for another one."""
        # (Any of them: also a bet that qualified for no level replays as it was.)
        method, args, kwargs = data.draw(st.sampled_from(self.calls), label="earlier call")
        if data.draw(st.booleans(), label="different request"):
            method, args, other = data.draw(st.sampled_from(self.calls), label="other call")
            kwargs = {**other, "op_id": kwargs["op_id"]}
        self.d.call(method, *args, via=self.via, **kwargs)

    @rule(data=st.data())
    def reopen(self, data: st.DataObject) -> None:
        """Close the engine (calls then fail, changing nothing) and open it again."""
        engine = self.d.live
        self.d.close()
        with pytest.raises(EngineClosedError, match="closed"):
            engine.contribute(Decimal(1), op_id=f"closed-{self.counter}")
        with pytest.raises(EngineClosedError, match="closed"):
            engine.pools()
        unused = [n for n in NAMES if n not in self.model.levels]
        groups: list[GroupConfig] | None = None
        if unused and data.draw(st.booleans(), label="add a level"):
            groups = [self.shape(data.draw(group_config(unused[0],
                                                        min_range=self.min_trigger_range)))]
        elif data.draw(st.booleans(), label="pass the original configs"):
            groups = self.d.groups
        self.d.reopen(groups)
        for _ in range(self.workers - 1):
            self.d.open_another()

    @precondition(lambda self: self.workers > 1)
    @rule(via=st.integers(0, 1))
    def switch_engine(self, via: int) -> None:
        """The next calls go to the other worker, whose cached levels may be stale."""
        self.via = via

    # -- after every step ----------------------------------------------------------------

    @invariant()
    def agrees_with_the_model(self) -> None:
        if self.driver is not None:
            self.d.check()


class KnownTriggers(EngineMachine):
    """Deterministic trigger draws shared with the model: every hit is predicted."""


class RandomTriggers(EngineMachine):
    """The engine's real random draw: hits are checked for consistency."""

    known_triggers = False
    # At least 1.0 between seed and must_hit_by, and neither changed later: a
    # bet adds at most 30 x 0.3, so it cannot need more than MAX_HITS_PER_BET
    # hits (a refusal the model could not judge without knowing the triggers).
    min_trigger_range = UNIT
    random_fixed = ("seed", "must_hit_by")


class TwoWorkers(KnownTriggers):
    """Two engines on one file, as two worker processes: conflicts, retries, replays.

    Bets, wins, adjustments and replays only, on levels without min_bet or
    max_contribution, with wide trigger ranges: a worker whose cache is stale
    decides refusals and no-op bets from that stale state (an engine bug, see
    the test report), so this machine keeps to calls whose outcome cannot
    depend on it; the version check must then catch every stale write.
    """

    workers = 2
    changes_levels = False
    limits = False
    min_trigger_range = 10 * UNIT  # so no bet comes near MAX_HITS_PER_BET either


TestKnownTriggers = KnownTriggers.TestCase
TestKnownTriggers.settings = machine_settings(examples=150, steps=25,
                                              slow_examples=20_000, slow_steps=60)
TestTwoWorkers = TwoWorkers.TestCase
TestTwoWorkers.settings = machine_settings(examples=60, steps=25,
                                           slow_examples=10_000, slow_steps=60)
TestRandomTriggers = RandomTriggers.TestCase
TestRandomTriggers.settings = machine_settings(examples=60, steps=25,
                                               slow_examples=10_000, slow_steps=60)


def test_the_model_itself_refuses_what_the_rules_refuse() -> None:
    """A sanity check of the model, so that agreement means something."""
    model = Model()
    model.create(GroupConfig("minor", Decimal(10), Decimal("0.1"), cap=Decimal(11)))
    result = model.contribute(Decimal(25), op_id="a")
    assert result.contributions == {"minor": Decimal(1)}
    assert model.levels["minor"].meters["overflow"] == 1_500_000
    assert model.contribute("25", op_id="a").replayed is True
    with pytest.raises(Exception, match="IdempotencyConflictError"):
        model.contribute("25", groups=["minor"], op_id="a")  # "every level" is another request
    with pytest.raises(Exception, match="IdempotencyConflictError"):
        model.contribute(Decimal(26), op_id="a")
