"""Rules the mutation check (tests/model/MUTATION.md) found untested, pinned down. No I/O.

Each test states a behaviour of the money rules; the mutant it was written
against is named in its docstring, so a future mutation run can be checked
against the table in MUTATION.md.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal, localcontext

import pytest

from jackpot import GroupConfig, ValidationError, money
from jackpot.domain import MAX_METER, LevelState, Meters, adjust, contribute, create

T0 = 1_700_000_000_000  # a millisecond timestamp
U = 1_000_000  # units per currency unit


def draw(low: int, high: int) -> int:
    return low


def level(**meters: int) -> LevelState:
    """A level 'minor' (seed 100, rate 0.01) with the given meters."""
    state, _ = create(GroupConfig("minor", Decimal(100), Decimal("0.01")), T0, draw)
    return replace(state, meters=Meters(**meters))


# -- meters: the storage range ---------------------------------------------------------

def test_a_meter_may_reach_the_storage_maximum_exactly() -> None:
    """2**63 - 1 still fits an SQLite integer: refusing it would refuse a valid bet.

    Kills `_meter` `> MAX_METER` -> `>= MAX_METER`.
    """
    bet = 10 * U
    s = level(wagered=MAX_METER - bet)
    nxt, entries, _ = contribute(s, bet, T0, draw)
    assert nxt.meters.wagered == MAX_METER
    assert (nxt.amount, nxt.version) == (s.amount + bet // 100, s.version + 1)
    assert [e.delta for e in entries] == [bet // 100]


def test_a_meter_may_not_pass_the_storage_maximum() -> None:
    bet = 10 * U
    s = level(wagered=MAX_METER - bet + 1)
    with pytest.raises(ValidationError) as info:
        contribute(s, bet, T0, draw)
    # Only the meter that overflowed (was: every meter the bet moves, bets included).
    assert str(info.value) == (f"level 'minor': its wagered meter would pass the storage range "
                               f"({-MAX_METER} to {MAX_METER}); retire the level and open a new one")


def test_a_negative_meter_may_not_pass_the_storage_minimum() -> None:
    """An adjustment down moves `adjusted` towards -2**63: past it, a clear refusal.

    It was an OverflowError from the storage driver (not a JackpotError): a
    level reset by the house and emptied by adjustments again and again gets there.
    """
    s = replace(level(adjusted=-MAX_METER + 5), amount=10)
    nxt, _ = adjust(s, -5, T0, reason="r")
    assert nxt.meters.adjusted == -MAX_METER
    with pytest.raises(ValidationError) as info:
        adjust(s, -6, T0, reason="r")
    assert str(info.value) == (f"level 'minor': its adjusted meter would pass the storage "
                               f"range ({-MAX_METER} to {MAX_METER}); retire the level and open a new "
                               "one")


def test_bet_times_rate_is_exact_whatever_the_threads_decimal_context() -> None:
    """The refusal of a share above max_contribution names it exactly, in whatever thread
    it is made: a caller's own decimal context (fewer digits) must not round it."""
    with localcontext() as ctx:
        ctx.prec = 5
        told = money.contribution_to_decimal(123_456_789, 123_456_789)
    assert str(told) == "15.241578750190521"  # 123456789**2 = 15241578750190521, / 10**15
