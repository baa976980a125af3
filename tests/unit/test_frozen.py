"""`jackpot._frozen.builder`: what it builds is exactly what the frozen class's own `__init__` does.

The operation path builds its ledger entries, level states, operations,
contributions and idempotency records through twins (see `jackpot._frozen`);
each must come out the same object as the class builds, frozen as any other.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
from decimal import Decimal
from typing import Any

import pytest

from jackpot import domain, requests
from jackpot._frozen import builder
from jackpot.domain import Entry, LevelConfig, LevelState, Meters
from jackpot.results import Contribution, Win
from jackpot.service import Operation
from jackpot.storage.base import StoredOperation


def _rebuild(r: dict[str, Any]) -> None:  # (pickled by reference: module level)
    del r


CASES: list[tuple[type, tuple[Any, ...], dict[str, Any]]] = [
    (Entry, ("contribute", "minor", 10, 1010, 2, 7, 5, 123),
     {"contributed": 10, "reserve_in": 2, "detail": {"bet": 1000}}),
    (Entry, ("win", "major", -500, 100, 0, 0, 9, 456, 0, 0, 0, 100, 0, 500),
     {"who": "ann", "detail": {"reset": True}}),
    (LevelState, ("minor", LevelConfig(1000, 10_000_000), 1000, 3, 99),
     {"trigger": 1500, "pending": {"seed": 5}, "meters": Meters(bets=2)}),
    (LevelState, ("mega", LevelConfig(5, 1)), {"amount": 5, "version": 1, "last_modified_at": 0}),
    (Operation, ("contribute", "bet-1", True, "ab" * 32, ("minor",), _rebuild, _rebuild), {}),
    (Operation, ("win", "w-1", False, "cd" * 32, ("major",), _rebuild, _rebuild),
     {"pessimistic": True}),
    (Contribution, ("bet-1", {"minor": Decimal("0.010000")}, {"minor": Decimal("10.01")},
                    {"minor": 3}), {}),
    (Contribution, ("bet-2", {}, {}, {}),
     {"hits": (Win("bet-2", "minor", Decimal(5), Decimal(1), 4, "ann", hit=True),)}),
    (StoredOperation, ("bet-1", "contribute", "ef" * 32, {"op_id": "bet-1"}), {}),
    (StoredOperation, ("bet-1", "contribute", "ef" * 32, None), {}),
]


def _built(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    obj = builder(cls)(*args, **kwargs)
    obj.__class__ = cls
    return obj


@pytest.mark.parametrize(("cls", "args", "kwargs"), CASES)
def test_a_built_object_is_the_one_its_class_builds(cls: type, args: tuple[Any, ...],
                                                      kwargs: dict[str, Any]) -> None:
    built, usual = _built(cls, args, kwargs), cls(*args, **kwargs)
    assert type(built) is cls
    assert built == usual
    assert repr(built) == repr(usual)
    assert dataclasses.astuple(built) == dataclasses.astuple(usual)
    assert [getattr(built, f.name) for f in dataclasses.fields(cls)] == [
        getattr(usual, f.name) for f in dataclasses.fields(cls)]
    assert copy.copy(built) == usual
    assert copy.deepcopy(built) == usual
    assert dataclasses.replace(built) == usual
    if cls is not Operation:  # (its rules are closures: never pickled)
        assert pickle.loads(pickle.dumps(built)) == usual


@pytest.mark.parametrize(("cls", "args", "kwargs"), CASES)
def test_a_built_object_is_frozen(cls: type, args: tuple[Any, ...],
                                  kwargs: dict[str, Any]) -> None:
    built = _built(cls, args, kwargs)
    name = dataclasses.fields(cls)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(built, name, "other")
    with pytest.raises(dataclasses.FrozenInstanceError):
        delattr(built, name)
    usual = cls(*args, **kwargs)
    for obj in (built, usual):  # as the class's own (3.11: a TypeError, CPython gh-90562)
        with pytest.raises((AttributeError, TypeError)) as refused:
            obj.unknown = 1  # slots: no attribute that is not a field
        assert not hasattr(obj, "unknown")
        if obj is built:
            first = type(refused.value)
    assert type(refused.value) is first


def test_defaults_are_the_class_s_and_factories_run_per_object() -> None:
    one = _built(LevelState, ("minor", LevelConfig(1, 1), 1, 1, 0), {})
    two = _built(LevelState, ("minor", LevelConfig(1, 1), 1, 1, 0), {})
    assert one == LevelState("minor", LevelConfig(1, 1), 1, 1, 0)
    assert one.pending == {}
    assert one.pending is not two.pending
    assert one.meters == Meters()
    assert one.status == domain.ACTIVE
    assert one.lock_holder is None


def test_a_wrong_call_fails_as_the_class_s_own() -> None:
    with pytest.raises(TypeError, match="missing"):
        builder(StoredOperation)("bet-1", "contribute", "ff")
    with pytest.raises(TypeError, match="unexpected keyword"):
        builder(StoredOperation)("bet-1", "contribute", "ff", None, player="ann")


def test_a_bet_built_through_twins_is_what_it_was() -> None:
    """A bet's operation, next state, entry and result, as the hot path builds them."""
    reqs = requests.Requests(["minor"])
    op = reqs.contribute(Decimal("1.00"), groups=None, op_id="bet-1")
    assert type(op) is Operation
    state, _ = domain.create(domain.GroupConfig("minor", seed=Decimal(10),
                                                contribution_rate=Decimal("0.01")), 0,
                             lambda low, _high: low)
    new, entries, result = op.apply({"minor": state}, 5)
    assert type(new["minor"]) is LevelState
    assert type(entries[0]) is Entry
    assert type(result) is Contribution
    assert result == Contribution(
        "bet-1", {"minor": Decimal("0.010000")}, {"minor": Decimal("10.010000")},
        {"minor": 2})
    assert new["minor"] == dataclasses.replace(
        state, amount=state.amount + 10_000, version=2, last_modified_at=5,
        meters=new["minor"].meters)


def test_a_class_needing_more_than_its_fields_has_no_builder() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        n: int

        def __post_init__(self) -> None:
            if self.n < 0:
                raise ValueError(self.n)

    @dataclasses.dataclass(frozen=True, slots=True)
    class Derived:
        n: int
        twice: int = dataclasses.field(init=False, default=0)

    for cls in (Checked, Derived):
        with pytest.raises(TypeError, match="needs more than its fields set"):
            builder(cls)

    @dataclasses.dataclass(slots=True)
    class Mutable:
        n: int

    @dataclasses.dataclass(frozen=True)
    class Unslotted:
        n: int

    for cls in (Mutable, Unslotted, dict):
        with pytest.raises(TypeError, match="not a frozen dataclass with slots"):
            builder(cls)
