"""Controller rules in the pure domain layer: reserve, cap and overflow, min_bet,
max_contribution, must-hit-by, pending changes, suspend, adjust and retire. No I/O.

Levels are built with `create` and moved with the domain's own transitions
(`contribute`, `win`, `adjust`...), so every state a test looks at is one the
rules can reach. The must-hit-by trigger comes from a scripted `Draws`, which
also records every (low, high) the rules asked for.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from decimal import Decimal
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jackpot import (
    GroupConfig,
    GroupRetiredError,
    GroupSuspendedError,
    InsufficientFundsError,
    JackpotEngine,
    ValidationError,
)
from jackpot.domain import (
    MAX_HITS_PER_BET,
    Entry,
    LevelState,
    adjust,
    contribute,
    create,
    parse_changes,
    pending_view,
    reconfigure,
    retire,
    set_status,
    win,
)
from jackpot.money import MAX_UNITS, RATE_SCALE

T0 = 1_700_000_000_000
U = 1_000_000  # units per currency unit
R = TypeVar("R")


class Draws:
    """A scripted draw(low, high): returns `values` in order and records each call."""

    def __init__(self, *values: int) -> None:
        self.values = list(values)
        self.calls: list[tuple[int, int]] = []

    def __call__(self, low: int, high: int) -> int:
        self.calls.append((low, high))
        if not self.values:
            pytest.fail(f"unexpected draw({low}, {high})")
        value = self.values.pop(0)
        assert low <= value <= high, (low, value, high)
        return value


def no_draw(low: int, high: int) -> int:
    pytest.fail(f"a level without must_hit_by drew a trigger: draw({low}, {high})")


def lowest(low: int, high: int) -> int:
    return low


def new(seed: object = 10, rate: object = "0.1", draw: Draws | None = None,
        **kwargs: object) -> LevelState:
    """A level 'minor' (seed 10, rate 0.1 unless told), fresh from `create`."""
    config = GroupConfig("minor", seed, rate, **kwargs)  # type: ignore[arg-type]
    state, _ = create(config, T0, draw if draw is not None else no_draw)
    return state


def bet(state: LevelState, units: int, draw: Draws | None = None
        ) -> tuple[LevelState, list[Entry], list[Entry]]:
    return contribute(state, units, T0, draw if draw is not None else no_draw)


def refused_or(fn: Callable[..., R], *args: object) -> R | ValidationError:
    """Return fn(*args), or the ValidationError it raised."""
    try:
        return fn(*args)
    except ValidationError as e:
        return e


def books_balance(s: LevelState) -> None:
    """Both identities of `Meters`, and every running figure non-negative."""
    m = s.meters
    assert (m.house_funded + m.reserve_funded + m.contributed - m.overflow - m.won
            + m.adjusted + m.transferred) == s.amount
    assert m.reserve_in - m.reserve_funded + m.reserve_transferred == s.reserve
    assert min(s.amount, s.reserve) >= 0
    assert 0 <= s.carry < RATE_SCALE
    assert 0 <= s.reserve_carry < RATE_SCALE


def parts(e: Entry) -> tuple[int, ...]:
    """An entry's money columns, in one fixed order."""
    return (e.delta, e.reserve_delta, e.contributed, e.overflow, e.reserve_in,
            e.house_funded, e.reserve_funded, e.paid, e.adjusted, e.transferred,
            e.reserve_transferred)


def row(*, delta: int = 0, reserve_delta: int = 0, contributed: int = 0, overflow: int = 0,
        reserve_in: int = 0, house_funded: int = 0, reserve_funded: int = 0, paid: int = 0,
        adjusted: int = 0, transferred: int = 0, reserve_transferred: int = 0
        ) -> tuple[int, ...]:
    """The expected `parts` of an entry (zero unless named)."""
    return (delta, reserve_delta, contributed, overflow, reserve_in, house_funded,
            reserve_funded, paid, adjusted, transferred, reserve_transferred)


# -- GroupConfig: the controller fields are validated --------------------------------

@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"reserve_rate": "0.9"},
     r"^contribution_rate \+ reserve_rate must stay below 1, got 0\.1 \+ 0\.9$"),
    ({"reserve_rate": 1}, r"^reserve_rate must be a rate in \[0, 1\)"),
    ({"reserve_rate": "-0.1"}, r"^reserve_rate must be a rate in \[0, 1\)"),
    ({"overflow_to": "pool"}, r"^overflow_to must be 'meter' or 'reserve', got 'pool'"),
    ({"must_hit_by": 10}, r"^must_hit_by 10\.000000 must be above the seed 10\.000000"),
    ({"must_hit_by": 20, "cap": 15}, r"^cap 15\.000000 is below the must_hit_by 20\.000000"),
    ({"min_bet": 0}, r"^min_bet must be positive"),
    ({"max_contribution": "-1"}, r"^max_contribution must not be negative"),
])
def test_group_config_refuses_contradictory_controller_settings(
        kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises(ValidationError, match=pattern):
        GroupConfig("minor", 10, "0.1", **kwargs)  # type: ignore[arg-type]


def test_rates_that_add_up_to_one_are_named_as_written() -> None:
    # Before: "... must stay below 1, got 0.9999999 + 1E-7" (str() of a small Decimal).
    with pytest.raises(ValidationError, match=(
            r"^contribution_rate \+ reserve_rate must stay below 1, got 0\.9999999 \+ "
            r"0\.0000001$")):
        GroupConfig("minor", 10, "0.9999999", reserve_rate="0.0000001")


def test_group_config_keeps_the_controller_fields_as_exact_decimals() -> None:
    g = GroupConfig("minor", 10, "0.1", cap="30", reserve_rate="0.050",  # type: ignore[arg-type]
                    min_bet="0.5", max_contribution=2, must_hit_by="20.0",
                    overflow_to="reserve")
    assert (g.cap, g.reserve_rate, g.min_bet, g.max_contribution, g.must_hit_by,
            g.overflow_to) == (Decimal(30), Decimal("0.05"), Decimal("0.5"), Decimal(2),
                               Decimal(20), "reserve")


# -- reserve funding at reset -------------------------------------------------------------

def test_the_opening_seed_is_funded_by_the_house() -> None:
    state, entry = create(GroupConfig("minor", 10, "0.1", reserve_rate="0.05"),  # type: ignore[arg-type]
                          T0, no_draw)
    assert (state.amount, state.reserve) == (10 * U, 0)
    assert parts(entry) == row(delta=10 * U, house_funded=10 * U)
    assert (state.meters.house_funded, state.meters.reserve_funded) == (10 * U, 0)
    books_balance(state)


def test_the_reserve_share_is_kept_apart_from_the_pool() -> None:
    s = new(reserve_rate="0.05")
    nxt, [e], hits = bet(s, 100 * U)
    assert (nxt.amount, nxt.reserve, hits) == (20 * U, 5 * U, [])
    assert parts(e) == row(delta=10 * U, reserve_delta=5 * U, contributed=10 * U,
                           reserve_in=5 * U)
    assert (e.balance_after, e.reserve_after, e.version_after) == (20 * U, 5 * U, 2)
    m = nxt.meters
    assert (m.bets, m.wagered, m.contributed, m.reserve_in) == (1, 100 * U, 10 * U, 5 * U)
    books_balance(nxt)


def test_the_reserve_share_carries_its_fraction_like_the_pool() -> None:
    s = new(rate="0.5", reserve_rate="0.333333333")
    s1, [e1], _ = bet(s, 1)  # pool 0.5 of a unit, reserve 0.333333333 of a unit
    assert (s1.carry, s1.reserve_carry, e1.delta, e1.reserve_delta) == (
        500_000_000, 333_333_333, 0, 0)
    s2, [e2], _ = bet(s1, 1)
    assert (s2.carry, s2.reserve_carry, e2.delta, e2.reserve_delta) == (
        0, 666_666_666, 1, 0)
    s3, [e3], _ = bet(s2, 2)  # reserve: 0.666666666 + 0.666666666 = 1.333333332
    assert (s3.carry, s3.reserve_carry, e3.delta, e3.reserve_delta) == (0, 333_333_332, 1, 1)
    assert (s3.amount, s3.reserve) == (10 * U + 2, 1)
    books_balance(s3)


@pytest.mark.parametrize(("wager", "reserve_funded", "house_funded", "reserve_left"), [
    (100 * U, 5 * U, 5 * U, 0),     # reserve 5 < seed 10: the house pays the other 5
    (200 * U, 10 * U, 0, 0),        # reserve 10 = seed: the house pays nothing
    (500 * U, 10 * U, 0, 15 * U),   # reserve 25 > seed: 15 stay for the next reset
])
def test_a_reset_pays_the_seed_from_the_reserve_first_and_the_house_funds_the_rest(
        wager: int, reserve_funded: int, house_funded: int, reserve_left: int) -> None:
    s, _, _ = bet(new(reserve_rate="0.05"), wager)  # pool 10 + wager/10, reserve wager/20
    pool, reserve = s.amount, s.reserve
    nxt, e = win(s, None, T0 + 1, no_draw, winner="p1")
    assert (nxt.amount, nxt.reserve, nxt.version) == (10 * U, reserve_left, 3)
    assert parts(e) == row(delta=10 * U - pool, reserve_delta=reserve_left - reserve,
                           paid=pool, reserve_funded=reserve_funded,
                           house_funded=house_funded)
    assert (e.kind, e.balance_after, e.reserve_after, e.who, e.detail) == (
        "win", 10 * U, reserve_left, "p1", {"reset": True})
    m = nxt.meters
    assert (m.house_funded, m.reserve_funded, m.won, m.wins, m.hits) == (
        10 * U + house_funded, reserve_funded, pool, 1, 0)
    books_balance(nxt)


def test_a_fixed_amount_win_neither_resets_nor_touches_the_reserve() -> None:
    s, _, _ = bet(new(reserve_rate="0.05"), 100 * U)
    nxt, e = win(s, 3 * U, T0, no_draw)
    assert (nxt.amount, nxt.reserve) == (17 * U, 5 * U)
    assert parts(e) == row(delta=-3 * U, paid=3 * U)
    assert (nxt.meters.house_funded, nxt.meters.reserve_funded) == (10 * U, 0)
    books_balance(nxt)


def test_a_zero_seed_reset_takes_nothing_from_the_reserve() -> None:
    s, _, _ = bet(new(seed=0, reserve_rate="0.05"), 100 * U)
    nxt, e = win(s, None, T0, no_draw)
    assert (nxt.amount, nxt.reserve) == (0, 5 * U)
    assert parts(e) == row(delta=-10 * U, paid=10 * U)
    books_balance(nxt)


# -- cap and overflow -------------------------------------------------------------------

@pytest.mark.parametrize(("overflow_to", "reserve_in"), [
    ("meter", 200_000),            # only the reserve share
    ("reserve", 200_000 + U),      # the reserve share plus the excess
])
def test_a_capped_pool_sends_the_excess_where_the_level_says(
        overflow_to: str, reserve_in: int) -> None:
    s = new(cap=11, reserve_rate="0.01", overflow_to=overflow_to)
    nxt, [e], _ = bet(s, 20 * U)  # adds 2: room for 1, 1 overflows
    assert (nxt.amount, nxt.reserve) == (11 * U, reserve_in)
    assert parts(e) == row(delta=U, reserve_delta=reserve_in, contributed=2 * U, overflow=U,
                           reserve_in=reserve_in)
    m = nxt.meters
    assert (m.contributed, m.overflow, m.reserve_in) == (2 * U, U, reserve_in)
    books_balance(nxt)
    at_cap, [e2], _ = bet(nxt, 10 * U)  # at the cap: the whole 1 overflows
    assert at_cap.amount == 11 * U
    assert (e2.delta, e2.overflow, e2.contributed) == (0, U, U)
    assert at_cap.reserve == nxt.reserve + 100_000 + (U if overflow_to == "reserve" else 0)
    books_balance(at_cap)


def test_overflow_in_the_reserve_funds_the_next_reset() -> None:
    s, _, _ = bet(new(cap=11, overflow_to="reserve"), 50 * U)  # adds 5: 1 in, 4 overflow
    assert (s.amount, s.reserve) == (11 * U, 4 * U)
    nxt, e = win(s, None, T0, no_draw)
    assert parts(e) == row(delta=-U, reserve_delta=-4 * U, paid=11 * U,
                           reserve_funded=4 * U, house_funded=6 * U)
    assert (nxt.amount, nxt.reserve) == (10 * U, 0)
    books_balance(nxt)


def test_a_change_of_overflow_target_applies_at_once() -> None:
    s, _, _ = bet(new(cap=11), 10 * U)  # at the cap
    nxt, e = reconfigure(s, parse_changes({"overflow_to": "reserve"}), T0)
    assert (nxt.config.overflow_to, nxt.pending) == ("reserve", {})
    assert e.detail is not None
    assert (e.detail["before"]["overflow_to"], e.detail["after"]["overflow_to"]) == (
        "meter", "reserve")
    after, [e2], _ = bet(nxt, 10 * U)
    assert (e2.overflow, e2.reserve_in, after.reserve) == (U, U, U)


@settings(max_examples=60, deadline=None)
@given(lift=st.integers(min_value=0, max_value=10 * U),
       cap=st.integers(min_value=10 * U, max_value=20 * U))
def test_a_cap_can_never_be_set_below_the_current_amount(lift: int, cap: int) -> None:
    s, _ = adjust(new(), lift, T0) if lift else (new(), None)
    changes = parse_changes({"cap": str(Decimal(cap) / U), "contribution_rate": "0.2"})
    if cap < s.amount:
        with pytest.raises(ValidationError, match=r"^cap \S+ is below the current amount"):
            reconfigure(s, changes, T0)
    else:
        nxt, _ = reconfigure(s, changes, T0)
        assert (nxt.config.cap, nxt.config.rate, nxt.amount) == (cap, 200_000_000, s.amount)


@pytest.mark.parametrize(("changes", "pattern"), [
    ({"cap": 19}, r"^cap 19\.000000 is below the must_hit_by 20\.000000"),
    ({"must_hit_by": 31}, r"^cap 30\.000000 is below the must_hit_by 31\.000000"),
    ({"cap": None, "must_hit_by": 40}, None),  # no cap: any must_hit_by above the seed
])
def test_a_cap_must_stay_at_or_above_must_hit_by_even_a_pending_one(
        changes: dict[str, object], pattern: str | None) -> None:
    s = new(cap=30, must_hit_by=20, draw=Draws(15 * U))
    if pattern is None:
        nxt, _ = reconfigure(s, parse_changes(changes), T0)
        assert (nxt.config.cap, nxt.pending) == (None, {"must_hit_by": 40 * U})
    else:
        with pytest.raises(ValidationError, match=pattern):
            reconfigure(s, parse_changes(changes), T0)


# -- min_bet and max_contribution ---------------------------------------------------------

def test_a_bet_below_min_bet_does_not_qualify() -> None:
    s = new(rate="0.3", reserve_rate="0.3", min_bet=1, must_hit_by=20, draw=Draws(11 * U))
    s, _, _ = bet(s, 3)  # leaves a carry in pool and reserve: they must not move
    same, entries, hits = bet(s, U - 1)
    assert (same, entries, hits) == (s, [], [])
    qualifies, [e], _ = bet(s, U)
    assert qualifies.meters.bets == s.meters.bets + 1
    assert (e.delta, e.reserve_delta, qualifies.version) == (300_000, 300_000, s.version + 1)


def test_a_min_bet_change_applies_at_once() -> None:
    s, _ = reconfigure(new(), parse_changes({"min_bet": 5}), T0)
    assert (s.config.min_bet, s.pending) == (5 * U, {})
    assert bet(s, 5 * U - 1)[1] == []
    assert len(bet(s, 5 * U)[1]) == 1


def test_max_contribution_refuses_a_bet_that_would_contribute_more() -> None:
    s = new(rate="0.01", max_contribution=1, must_hit_by=12, draw=Draws(12 * U))
    at_max, [e], _ = bet(s, 100 * U)  # contributes exactly 1: allowed
    assert e.contributed == U
    with pytest.raises(ValidationError,
                       match=r"^bet 100\.000100 would contribute 1\.000001 to level 'minor', "
                             r"above its max_contribution 1\.000000"):
        bet(at_max, 100 * U + 100)  # no draw either: refused before anything is added


def test_max_contribution_judges_the_bet_not_the_carried_fraction() -> None:
    # A share 0.0000005 over the limit: with no carry it would credit exactly
    # the limit, with half a unit carried one unit more. Refused either way.
    s = new(rate="0.01", max_contribution=1)
    carried, _, _ = bet(s, 50)  # leaves half a unit to carry
    assert (s.carry, carried.carry) == (0, RATE_SCALE // 2)
    for state in (s, carried):
        with pytest.raises(ValidationError, match=r"^bet 100\.000050 would contribute "
                           r"1\.0000005 to level 'minor', above its max_contribution"):
            bet(state, 100 * U + 50)
    at_max, [e], _ = bet(carried, 100 * U)  # exactly the limit, carry and all: accepted
    assert (e.contributed, at_max.carry) == (U, RATE_SCALE // 2)


def test_a_max_contribution_change_applies_at_once() -> None:
    s, _ = reconfigure(new(), parse_changes({"max_contribution": "0.5"}), T0)
    assert (s.config.max_contribution, s.pending) == (500_000, {})
    with pytest.raises(ValidationError, match=r"above its max_contribution 0\.500000"):
        bet(s, 5 * U + 10)


# -- must-hit-by -------------------------------------------------------------------------

def test_the_trigger_is_drawn_above_the_seed_up_to_must_hit_by() -> None:
    draws = Draws(15 * U)
    s = new(must_hit_by=20, draw=draws)
    assert draws.calls == [(10 * U + 1, 20 * U)]
    assert s.trigger == 15 * U
    assert "15000000" not in repr(s)  # the trigger stays out of the state's repr


def test_the_bet_that_reaches_the_trigger_wins_in_the_same_transition() -> None:
    draws = Draws(15 * U, 12 * U)
    s = new(must_hit_by=20, draw=draws)
    nxt, entries, hits = bet(s, 50 * U, draws)  # adds exactly 5: 10 -> 15 = trigger
    contrib, hit = entries
    assert hits == [hit]
    assert (contrib.kind, contrib.balance_after, contrib.version_after) == (
        "contribute", 15 * U, 2)
    assert parts(contrib) == row(delta=5 * U, contributed=5 * U)
    assert (hit.kind, hit.balance_after, hit.version_after, hit.who, hit.detail) == (
        "hit", 10 * U, 3, None, {"reset": True})
    assert parts(hit) == row(delta=-5 * U, paid=15 * U, house_funded=10 * U)
    assert (nxt.amount, nxt.version, nxt.trigger) == (10 * U, 3, 12 * U)
    assert draws.calls == [(10 * U + 1, 20 * U)] * 2
    m = nxt.meters
    assert (m.bets, m.contributed, m.hits, m.wins, m.won) == (1, 5 * U, 1, 1, 15 * U)
    books_balance(nxt)


def test_one_unit_short_of_the_trigger_is_no_hit_and_the_next_unit_is() -> None:
    draws = Draws(15 * U, 17 * U)
    s = new(must_hit_by=20, draw=draws)
    short, [e], hits = bet(s, 49_999_990, draws)
    assert (short.amount, hits, e.delta) == (15 * U - 1, [], 4_999_999)
    nxt, [_, hit], [_] = bet(short, 10, draws)  # adds 1 unit
    assert (hit.paid, nxt.amount, nxt.trigger) == (15 * U, 10 * U, 17 * U)


def test_the_rest_of_a_bet_past_the_trigger_goes_into_the_new_pool() -> None:
    draws = Draws(15 * U, 19 * U)
    s = new(must_hit_by=20, reserve_rate="0.01", draw=draws)
    nxt, entries, hits = bet(s, 80 * U, draws)  # adds 8: 5 to the trigger, 3 carried over
    first, hit, rest = entries
    assert hits == [hit]
    assert parts(first) == row(delta=5 * U, reserve_delta=800_000, contributed=5 * U,
                               reserve_in=800_000)
    assert first.detail == {"bet": 80 * U}
    # the reset is funded from the reserve the bet itself just fed
    assert parts(hit) == row(delta=-5 * U, reserve_delta=-800_000, paid=15 * U,
                             reserve_funded=800_000, house_funded=9_200_000)
    assert parts(rest) == row(delta=3 * U, contributed=3 * U)
    assert (rest.kind, rest.detail, rest.balance_after) == (
        "contribute", {"carried_over": True}, 13 * U)
    assert [x.version_after for x in entries] == [2, 3, 4]
    assert (nxt.amount, nxt.reserve, nxt.trigger, nxt.version) == (13 * U, 0, 19 * U, 4)
    m = nxt.meters
    assert (m.bets, m.wagered, m.contributed, m.hits) == (1, 80 * U, 8 * U, 1)
    books_balance(nxt)


def test_one_bet_can_fire_several_triggers_each_exactly_once() -> None:
    draws = Draws(11 * U, 12 * U, 13 * U, 19 * U)
    s = new(rate="0.5", must_hit_by=20, draw=draws)
    nxt, entries, hits = bet(s, 20 * U, draws)  # adds 10
    assert [e.kind for e in entries] == ["contribute", "hit"] * 3 + ["contribute"]
    assert [h.paid for h in hits] == [11 * U, 12 * U, 13 * U]
    assert [e.contributed for e in entries if e.kind == "contribute"] == [U, 2 * U, 3 * U,
                                                                          4 * U]
    assert (nxt.amount, nxt.trigger, nxt.version) == (14 * U, 19 * U, 8)
    assert (nxt.meters.bets, nxt.meters.hits, nxt.meters.won) == (1, 3, 36 * U)
    assert len(draws.calls) == 4
    books_balance(nxt)


def test_a_bet_that_would_fire_too_many_triggers_is_refused() -> None:
    s = new(seed=0, rate="0.5", must_hit_by="0.000002", draw=lowest)  # type: ignore[arg-type]
    nxt, _, hits = contribute(s, 2 * MAX_HITS_PER_BET, T0, lowest)  # one hit per unit
    assert len(hits) == MAX_HITS_PER_BET
    assert nxt.meters.hits == MAX_HITS_PER_BET
    with pytest.raises(ValidationError, match=rf"would trigger more than {MAX_HITS_PER_BET} hits"):
        contribute(s, 2 * MAX_HITS_PER_BET + 2, T0, lowest)


def test_a_whole_win_draws_a_new_trigger_and_a_fixed_win_keeps_it() -> None:
    draws = Draws(15 * U, 18 * U)
    s, _, _ = bet(new(must_hit_by=20, draw=draws), 30 * U, draws)  # 13 < 15
    part, _ = win(s, U, T0, draws)
    assert (part.trigger, len(draws.calls)) == (15 * U, 1)
    whole, e = win(part, None, T0, draws)
    assert (whole.trigger, whole.amount, e.kind, e.paid) == (18 * U, 10 * U, "win", 12 * U)
    assert draws.calls == [(10 * U + 1, 20 * U)] * 2
    assert (whole.meters.wins, whole.meters.hits) == (2, 0)


@settings(max_examples=40, deadline=None)
@given(bets=st.lists(st.integers(min_value=1, max_value=30 * U), min_size=1, max_size=40),
       rnd=st.randoms(use_true_random=False))
def test_a_pool_never_reaches_its_trigger_or_passes_must_hit_by_after_a_bet(
        bets: list[int], rnd: random.Random) -> None:
    def draw(low: int, high: int) -> int:
        return rnd.randint(low, high)

    s = new(rate="0.1", must_hit_by=12, reserve_rate="0.01", draw=draw)  # type: ignore[arg-type]
    for units in bets:
        trigger = s.trigger
        assert trigger is not None
        outcome = refused_or(contribute, s, units, T0, draw)
        if isinstance(outcome, ValidationError):  # the draw chose tiny triggers for a big bet
            assert f"would trigger more than {MAX_HITS_PER_BET} hits" in str(outcome)
            continue
        s, entries, hits = outcome
        assert s.trigger is not None
        assert 10 * U < s.trigger <= 12 * U
        assert s.amount < s.trigger <= 12 * U
        for e in entries:
            assert e.balance_after <= 12 * U
        if hits:
            assert hits[0].paid == trigger  # the trigger in force fires, exactly
        assert all(10 * U < h.paid <= 12 * U for h in hits)
        books_balance(s)


# -- pending changes: seed and must_hit_by wait for the reset ------------------------------

def test_a_seed_change_waits_for_the_reset_and_is_visible_until_then() -> None:
    s, _, _ = bet(new(), 50 * U)  # pool 15
    nxt, e = reconfigure(s, parse_changes({"seed": 12}), T0, who="ops", reason="promo")
    assert (nxt.config.seed, nxt.amount, nxt.version) == (10 * U, 15 * U, 3)
    assert (nxt.pending, pending_view(nxt)) == ({"seed": 12 * U}, {"seed": "12.000000"})
    assert e.detail is not None
    assert e.detail["pending"] == {"seed": "12.000000"}
    assert e.detail["before"]["seed"] == e.detail["after"]["seed"] == "10.000000"
    part, _ = win(nxt, U, T0, no_draw)  # a fixed win is no reset: still pending
    assert (part.config.seed, part.pending) == (10 * U, {"seed": 12 * U})
    reset, e2 = win(part, None, T0, no_draw)
    assert (reset.amount, reset.config.seed, reset.pending) == (12 * U, 12 * U, {})
    assert (e2.house_funded, e2.balance_after) == (12 * U, 12 * U)
    again, _ = win(reset, None, T0, no_draw)
    assert again.amount == 12 * U
    books_balance(again)


def test_a_must_hit_by_change_waits_and_the_running_trigger_still_fires() -> None:
    draws = Draws(15 * U, 25 * U)
    s = new(must_hit_by=20, draw=draws)
    nxt, e = reconfigure(s, parse_changes({"must_hit_by": 30, "seed": 12}), T0)
    assert (nxt.config.must_hit_by, nxt.config.seed, nxt.trigger) == (20 * U, 10 * U, 15 * U)
    assert pending_view(nxt) == {"must_hit_by": "30.000000", "seed": "12.000000"}
    assert e.detail is not None
    assert e.detail["after"]["must_hit_by"] == "20.000000"
    hit_state, _, [hit] = bet(nxt, 60 * U, draws)  # adds 6: the old trigger 15 fires
    assert hit.paid == 15 * U
    assert draws.calls == [(10 * U + 1, 20 * U), (12 * U + 1, 30 * U)]
    assert (hit_state.config.seed, hit_state.config.must_hit_by, hit_state.pending) == (
        12 * U, 30 * U, {})
    assert (hit_state.amount, hit_state.trigger, hit.house_funded) == (13 * U, 25 * U, 12 * U)
    books_balance(hit_state)


def test_a_later_pending_change_replaces_an_earlier_one() -> None:
    s, _ = reconfigure(new(), parse_changes({"seed": 12}), T0)
    s, _ = reconfigure(s, parse_changes({"seed": 14, "contribution_rate": "0.2"}), T0)
    assert (s.pending, s.config.rate) == ({"seed": 14 * U}, 200_000_000)
    reset, _ = win(s, None, T0, no_draw)
    assert reset.amount == 14 * U


def test_removing_must_hit_by_waits_for_the_reset() -> None:
    draws = Draws(15 * U)
    s, _ = reconfigure(new(must_hit_by=20, draw=draws), {"must_hit_by": None}, T0)
    assert (s.trigger, s.config.must_hit_by, pending_view(s)) == (
        15 * U, 20 * U, {"must_hit_by": None})
    reset, _ = win(s, None, T0, draws)
    assert (reset.trigger, reset.config.must_hit_by, reset.pending) == (None, None, {})
    plain, entries, hits = bet(reset, 1000 * U)  # 100 more: no trigger any more
    assert (plain.amount, len(entries), hits) == (110 * U, 1, [])


def test_making_a_level_a_mystery_waits_for_the_reset() -> None:
    draws = Draws(16 * U)
    s, _ = reconfigure(new(), parse_changes({"must_hit_by": 20}), T0)
    assert (s.trigger, s.config.must_hit_by, s.pending) == (None, None, {"must_hit_by": 20 * U})
    grown, _, hits = bet(s, 150 * U)  # to 25: not a mystery yet, no hit, no draw
    assert (grown.amount, hits) == (25 * U, [])
    reset, _ = win(grown, None, T0, draws)
    assert (reset.trigger, reset.config.must_hit_by) == (16 * U, 20 * U)
    assert draws.calls == [(10 * U + 1, 20 * U)]


@pytest.mark.parametrize(("changes", "pattern"), [
    ({"seed": 20}, r"^must_hit_by 20\.000000 must be above the seed 20\.000000"),
    ({"must_hit_by": 10}, r"^must_hit_by 10\.000000 must be above the seed 10\.000000"),
    ({"seed": 15, "must_hit_by": 14}, r"^must_hit_by 14\.000000 must be above the seed"),
])
def test_pending_changes_are_checked_against_the_config_after_the_reset(
        changes: dict[str, object], pattern: str) -> None:
    s = new(must_hit_by=20, draw=Draws(15 * U))
    with pytest.raises(ValidationError, match=pattern):
        reconfigure(s, parse_changes(changes), T0)


@pytest.mark.parametrize(("field", "value", "stored"), [
    ("contribution_rate", "0.2", ("rate", 200_000_000)),
    ("reserve_rate", "0.05", ("reserve_rate", 50_000_000)),
    ("cap", "40", ("cap", 40 * U)),
    ("min_bet", "2", ("min_bet", 2 * U)),
    ("max_contribution", "3", ("max_contribution", 3 * U)),
    ("overflow_to", "reserve", ("overflow_to", "reserve")),
])
def test_every_other_field_applies_at_once(field: str, value: str,
                                           stored: tuple[str, object]) -> None:
    s, e = reconfigure(new(), parse_changes({field: value}), T0)
    assert getattr(s.config, stored[0]) == stored[1]
    assert s.pending == {}
    assert e.detail is not None
    assert e.detail["pending"] == {}


def test_rate_changes_apply_to_the_very_next_bet() -> None:
    s, _ = reconfigure(new(reserve_rate="0.05"), parse_changes(
        {"contribution_rate": "0.2", "reserve_rate": "0.3"}), T0)
    nxt, [e], _ = bet(s, 10 * U)
    assert (e.contributed, e.reserve_in) == (2 * U, 3 * U)
    with pytest.raises(ValidationError, match=r"^contribution_rate \+ reserve_rate must stay"):
        reconfigure(nxt, parse_changes({"reserve_rate": "0.8"}), T0)


# -- suspend and resume --------------------------------------------------------------------

def test_a_suspended_level_refuses_bets_and_wins_and_keeps_its_amount() -> None:
    s, _, _ = bet(new(reserve_rate="0.5", rate="0.3"), 7)  # carries in pool and reserve
    held, e = set_status(s, "suspended", T0 + 3, who="ops", reason="machine fault")
    assert (held.status, held.version, held.amount, held.reserve, held.carry,
            held.reserve_carry) == ("suspended", s.version + 1, s.amount, s.reserve, s.carry,
                                    s.reserve_carry)
    assert (e.kind, e.who, e.detail, e.at_ms) == (
        "suspend", "ops", {"reason": "machine fault"}, T0 + 3)
    assert parts(e) == row()
    assert held.meters == s.meters
    with pytest.raises(GroupSuspendedError,
                       match=r"^level 'minor' is suspended: it refuses contributions until"):
        bet(held, U)
    with pytest.raises(GroupSuspendedError, match=r"it refuses wins until resumed"):
        win(held, None, T0, no_draw)
    with pytest.raises(GroupSuspendedError):
        win(held, U, T0, no_draw)
    back, e2 = set_status(held, "active", T0, who="ops")
    assert (back.status, back.version, e2.kind, e2.detail) == (
        "active", held.version + 1, "resume", {"reason": None})
    assert bet(back, U)[0].amount == s.amount + 300_000


def test_a_suspended_level_still_takes_config_changes_and_adjustments() -> None:
    held, _ = set_status(new(), "suspended", T0)
    configured, _ = reconfigure(held, parse_changes({"cap": 50}), T0)
    adjusted, _ = adjust(configured, 5 * U, T0, reason="fix")
    assert (adjusted.status, adjusted.config.cap, adjusted.amount) == (
        "suspended", 50 * U, 15 * U)


@pytest.mark.parametrize(("status", "pattern"), [
    ("suspended", r"^level 'minor' is already suspended: it cannot be suspended again$"),
    ("active", (r"^level 'minor' is already active: it cannot be resumed \(only a suspended "
                r"level can be\)$")),
])
def test_setting_the_status_it_has_is_refused(status: str, pattern: str) -> None:
    s = new() if status == "active" else set_status(new(), "suspended", T0)[0]
    with pytest.raises(ValidationError, match=pattern):
        set_status(s, status, T0)


# -- adjust ----------------------------------------------------------------------------

def test_adjustments_move_the_pool_and_are_metered() -> None:
    up, e = adjust(new(), 5 * U, T0 + 1, who="ops", reason="goodwill")
    assert (up.amount, up.version) == (15 * U, 2)
    assert parts(e) == row(delta=5 * U, adjusted=5 * U)
    assert (e.kind, e.who, e.detail, e.balance_after) == (
        "adjust", "ops", {"reason": "goodwill"}, 15 * U)
    down, e2 = adjust(up, -15 * U, T0, reason="correction")  # down to exactly zero
    assert (down.amount, down.meters.adjusted) == (0, -10 * U)
    assert parts(e2) == row(delta=-15 * U, adjusted=-15 * U)
    books_balance(down)


@pytest.mark.parametrize(("kwargs", "delta", "error", "pattern", "limit"), [
    ({}, 0, ValidationError, r"^delta must not be zero", None),
    ({}, -10 * U - 1, InsufficientFundsError,
     r"^adjusting level 'minor' by -10\.000001 would take its pool 10\.000000 below zero", 0),
    ({"cap": 12}, 2 * U + 1, ValidationError,
     r"^adjusting level 'minor' by 2\.000001 would lift its pool above 12\.000000", 12 * U),
    ({"must_hit_by": 12}, 2 * U + 1, ValidationError,
     r"^adjusting level 'minor' by 2\.000001 would lift its pool above 12\.000000", 12 * U),
])
def test_adjustments_past_zero_cap_or_must_hit_by_are_refused(
        kwargs: dict[str, object], delta: int, error: type[Exception], pattern: str,
        limit: int | None) -> None:
    s = new(draw=Draws(11 * U), **kwargs)
    with pytest.raises(error, match=pattern):
        adjust(s, delta, T0)
    if limit is not None:  # one unit less reaches the limit exactly, and is allowed
        assert adjust(s, delta - 1 if delta > 0 else delta + 1, T0)[0].amount == limit


# -- retire ------------------------------------------------------------------------------

def test_retire_moves_pool_and_reserve_and_the_excess_over_the_cap_to_the_reserve() -> None:
    source, _, _ = bet(new(reserve_rate="0.02"), 200 * U)  # pool 30, reserve 4
    target, _ = create(GroupConfig("major", 20, "0.1", cap=50), T0, no_draw)  # type: ignore[arg-type]
    target, _, _ = bet(target, 200 * U)  # pool 40: room for 10
    total = source.amount + source.reserve + target.amount + target.reserve
    src, tgt, [out, into] = retire(source, target, T0 + 2, who="ops", reason="rebrand")
    assert (src.status, src.amount, src.reserve, src.version) == (
        "retired", 0, 0, source.version + 1)
    assert (tgt.status, tgt.amount, tgt.reserve, tgt.version) == (
        "active", 50 * U, 24 * U, target.version + 1)
    assert parts(out) == row(delta=-30 * U, reserve_delta=-4 * U, transferred=-30 * U,
                             reserve_transferred=-4 * U)
    assert parts(into) == row(delta=10 * U, reserve_delta=24 * U, transferred=10 * U,
                              reserve_transferred=24 * U)
    detail = {"reason": "rebrand", "from": "minor", "to": "major"}
    assert (out.kind, out.level, out.who, out.detail) == ("retire", "minor", "ops", detail)
    assert (into.kind, into.level, into.who, into.detail) == (
        "transfer_in", "major", "ops", detail)
    assert (src.meters.transferred, src.meters.reserve_transferred) == (-30 * U, -4 * U)
    assert (tgt.meters.transferred, tgt.meters.reserve_transferred) == (10 * U, 24 * U)
    assert src.amount + src.reserve + tgt.amount + tgt.reserve == total
    books_balance(src)
    books_balance(tgt)


def test_retire_into_a_mystery_level_fills_it_to_must_hit_by_at_most() -> None:
    draws = Draws(12 * U, 11 * U)
    source, _, _ = bet(new(), 100 * U)  # pool 20
    target, _ = create(GroupConfig("major", 10, "0.1", must_hit_by=15), T0,  # type: ignore[arg-type]
                       draws)
    _, tgt, [_, into] = retire(source, target, T0)
    assert (tgt.amount, tgt.reserve, into.transferred, into.reserve_transferred) == (
        15 * U, 15 * U, 5 * U, 15 * U)
    # the pool now sits past its trigger: the next bet fires it before anything else
    after, _, hits = bet(tgt, 10, draws)
    assert [(h.kind, h.paid, h.balance_after) for h in hits] == [("hit", 15 * U, 10 * U)]
    # reset to the seed from the reserve, then the bet's share (1 unit), below the new trigger
    assert (after.amount, after.reserve, after.trigger) == (10 * U + 1, 5 * U, 11 * U)
    books_balance(after)


def test_retire_works_from_and_into_suspended_levels_but_not_into_itself() -> None:
    source, _ = set_status(new(), "suspended", T0)
    target, _ = create(GroupConfig("major", 20, "0.1"), T0, no_draw)  # type: ignore[arg-type]
    target, _ = set_status(target, "suspended", T0)
    src, tgt, _ = retire(source, target, T0)
    assert (src.status, tgt.status, tgt.amount) == ("retired", "suspended", 30 * U)
    with pytest.raises(ValidationError, match=r"^transfer_to must name another level"):
        retire(new(), new(), T0)


def _worth(*levels: LevelState) -> int:
    """Everything the levels hold, in parts of a unit: pools, reserves and carried fractions."""
    return sum((s.amount + s.reserve) * RATE_SCALE + s.carry + s.reserve_carry for s in levels)


def _carrying(name: str, rate: str, reserve_rate: str, bet_units: int, **kwargs: object
              ) -> LevelState:
    config = GroupConfig(name, 0, rate, reserve_rate=reserve_rate, **kwargs)  # type: ignore[arg-type]
    state, _ = create(config, T0, no_draw)
    return bet(state, bet_units)[0]


def test_retire_moves_the_carried_fractions_with_the_pool() -> None:
    # 0.000003 x 0.333333333 = 0.000000999999999: no unit yet, all of it carried
    source = _carrying("minor", "0.333333333", "0.333333333", 3)
    target = _carrying("major", "0.5", "0", 2)  # exactly 1 unit, nothing carried
    assert (source.carry, source.reserve_carry, target.carry) == (999_999_999,) * 2 + (0,)
    src, tgt, [out, into] = retire(source, target, T0, reason="merge")
    assert (src.carry, src.reserve_carry) == (0, 0)
    assert (tgt.carry, tgt.reserve_carry, tgt.amount, tgt.reserve) == (
        999_999_999, 999_999_999, 1, 0)
    carried = {"carry": 999_999_999, "reserve_carry": 999_999_999, "units": 0,
               "reserve_units": 0}
    assert out.detail == into.detail == {"reason": "merge", "from": "minor", "to": "major",
                                         "carried": carried}
    assert _worth(src, tgt) == _worth(source, target)
    books_balance(src)
    books_balance(tgt)


def test_carried_fractions_that_complete_a_unit_move_as_that_unit() -> None:
    source = _carrying("minor", "0.333333333", "0.333333333", 3)
    # 0.000004 x 0.4 = 1.6 units: 1 in the pool (at its cap), 0.6 carried;
    # 0.000004 x 0.125 = 0.5 unit carried for the reserve
    target = _carrying("major", "0.4", "0.125", 4, cap=Decimal("0.000001"))
    assert (target.amount, target.carry, target.reserve_carry) == (1, 600_000_000, 500_000_000)
    src, tgt, [_, into] = retire(source, target, T0)
    # 0.6 + 0.999999999 makes a unit, which finds no room under the cap: to the reserve
    assert (tgt.carry, tgt.reserve_carry) == (599_999_999, 499_999_999)
    assert (tgt.amount, tgt.reserve) == (1, 2)
    assert (into.transferred, into.reserve_transferred) == (0, 2)
    assert into.detail is not None
    assert into.detail["carried"] == {"carry": 999_999_999, "reserve_carry": 999_999_999,
                                      "units": 1, "reserve_units": 1}
    assert _worth(src, tgt) == _worth(source, target)
    books_balance(tgt)
    roomy = _carrying("major", "0.4", "0", 1)
    _, tgt2, _ = retire(source, roomy, T0)
    assert (tgt2.amount, tgt2.carry, tgt2.reserve_carry) == (1, 399_999_999, 999_999_999)


levels = st.tuples(st.integers(1, 10**9), st.integers(1, 499), st.integers(0, 499))


@given(levels, levels)
@settings(max_examples=200, deadline=None)
def test_retire_never_loses_a_fraction(a: tuple[int, int, int], b: tuple[int, int, int]
                                       ) -> None:
    (bet_a, rate_a, reserve_a), (bet_b, rate_b, reserve_b) = a, b
    source = _carrying("minor", f"0.{rate_a:03d}000001", f"0.{reserve_a:03d}000007", bet_a)
    target = _carrying("major", f"0.{rate_b:03d}000003", f"0.{reserve_b:03d}000009", bet_b)
    src, tgt, _ = retire(source, target, T0)
    assert _worth(src, tgt) == _worth(source, target)
    assert (src.amount, src.reserve, src.carry, src.reserve_carry) == (0, 0, 0, 0)
    books_balance(src)
    books_balance(tgt)


def _hoard(name: str, reserve_rate: str = "0.999999998") -> LevelState:
    """A level whose reserve took almost all of the largest bet."""
    config = GroupConfig(name, 0, "0.000000001", reserve_rate=reserve_rate)  # type: ignore[arg-type]
    state, _ = create(config, T0, no_draw)
    return bet(state, MAX_UNITS)[0]


def test_a_reserve_may_reach_the_engine_range_but_not_pass_it() -> None:
    half = _hoard("minor", reserve_rate="0.5")
    full, _, _ = bet(half, MAX_UNITS)
    assert full.reserve == MAX_UNITS  # exactly the top of the range
    books_balance(full)
    with pytest.raises(ValidationError, match=(
            r"^a bet of 0\.000002 would lift the reserve of level 'minor' to "
            r"100000000000\.000001, beyond the engine's range \(at most "
            r"100000000000\.000000\); nothing was applied")):
        bet(full, 2)


def test_a_bet_overflowing_into_a_full_reserve_is_refused() -> None:
    config = GroupConfig("minor", 0, "0.5", cap=1, overflow_to="reserve")  # type: ignore[arg-type]
    state, _ = create(config, T0, no_draw)
    full, _, _ = bet(bet(state, MAX_UNITS)[0], MAX_UNITS)  # overflow: twice half of the top
    assert (full.amount, full.reserve) == (U, MAX_UNITS - 2 * U + U)
    with pytest.raises(ValidationError, match=r"beyond the engine's range"):
        bet(full, 4 * U)


def test_a_retirement_that_would_pass_the_range_in_the_reserve_is_refused() -> None:
    source, target = _hoard("minor"), _hoard("major")
    assert source.reserve + target.reserve > MAX_UNITS
    with pytest.raises(ValidationError, match=(
            r"^retiring level 'minor' into it would lift the reserve of level 'major' to "
            r"199999999600\.000000, beyond the engine's range")):
        retire(source, target, T0)
    # into a level with room, the same reserve moves
    _, tgt, _ = retire(source, _hoard("other", reserve_rate="0"), T0)
    assert tgt.reserve == source.reserve
    books_balance(tgt)


def _retired() -> tuple[LevelState, LevelState]:
    target, _ = create(GroupConfig("major", 20, "0.1"), T0, no_draw)  # type: ignore[arg-type]
    src, tgt, _ = retire(new(), target, T0)
    return src, tgt


# Each refusal says what was refused: an operation it "refuses", a transition it
# "cannot" make, and why (retirement is final), in the words of the call made.
RETIRED_REFUSES: dict[str, tuple[Callable[[LevelState, LevelState], object], str]] = {
    "contribute": (lambda s, t: contribute(s, U, T0, no_draw), "it refuses contributions$"),
    "win": (lambda s, t: win(s, None, T0, no_draw), "it refuses wins$"),
    "fixed win": (lambda s, t: win(s, 1, T0, no_draw), "it refuses wins$"),
    "reconfigure": (lambda s, t: reconfigure(s, {"cap": 100 * U}, T0),
                    "it refuses config changes$"),
    "suspend": (lambda s, t: set_status(s, "suspended", T0),
                r"it cannot be suspended \(retirement is final\)$"),
    "resume": (lambda s, t: set_status(s, "active", T0),
               r"it cannot be resumed \(retirement is final\)$"),
    "adjust": (lambda s, t: adjust(s, U, T0), "it refuses adjustments$"),
    "retire again": (lambda s, t: retire(s, t, T0),
                     r"it cannot be retired again \(retirement is final\)$"),
    "receive a transfer": (lambda s, t: retire(t, s, T0),
                           (r"it cannot take the pool of level 'major' \(retirement is "
                            r"final\); name a level that is not retired as transfer_to$")),
}


@pytest.mark.parametrize("action", RETIRED_REFUSES)
def test_a_retired_level_refuses_everything(action: str) -> None:
    src, tgt = _retired()
    call, says = RETIRED_REFUSES[action]
    with pytest.raises(GroupRetiredError, match=rf"^level 'minor' is retired: {says}"):
        call(src, tgt)


def test_retired_and_suspended_refusals_come_before_input_checks() -> None:
    src, _ = _retired()
    with pytest.raises(GroupRetiredError):
        contribute(src, 0, T0, no_draw)
    empty, _ = adjust(new(), -10 * U, T0)
    held, _ = set_status(empty, "suspended", T0)
    with pytest.raises(GroupSuspendedError):
        contribute(held, -1, T0, no_draw)
    with pytest.raises(GroupSuspendedError):  # not InsufficientFundsError
        win(held, None, T0, no_draw)


def test_a_config_change_past_a_rate_of_1_names_both_rates(
        open_engine: Callable[..., JackpotEngine]) -> None:
    # It said only "contribution_rate + reserve_rate must stay below 1": the
    # operator changing one of them was not told what the other one is.
    engine = open_engine(groups=[GroupConfig("minor", 10, "0.015")])  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=(
            r"^contribution_rate \+ reserve_rate must stay below 1, got 0\.015 \+ 0\.99$")):
        engine.update_config("minor", reserve_rate="0.99")
    assert engine.pool("minor").version == 1  # nothing changed
