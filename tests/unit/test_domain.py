"""Pure rules of a level: configuration, contributions, wins, reconfiguration. No I/O.

States are built with `create` and then moved with `dataclasses.replace`, so
these tests depend on the rules, not on how a state is laid out.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jackpot import GroupConfig, InsufficientFundsError, ValidationError
from jackpot.domain import (
    CONFIG_FIELDS,
    DEFAULT_GROUPS,
    LevelState,
    _step,
    contribute,
    create,
    parse_changes,
    reconfigure,
    validate_name,
    win,
)
from jackpot.money import MAX_UNITS, RATE_SCALE

T0 = 1_700_000_000_000  # a millisecond timestamp
U = 1_000_000  # units per currency unit


def draw(low: int, high: int) -> int:
    """The must-hit-by draw; unused by these levels, deterministic anyway."""
    return low


def level(amount: int = 100 * U, *, seed: object = 100, rate: object = "0.01",
          cap: object = None, carry: int = 0, version: int = 7) -> LevelState:
    """A level 'minor' (seed 100, rate 0.01 unless told) at `amount` and version 7."""
    state, _ = create(GroupConfig("minor", seed, rate, cap), T0, draw)  # type: ignore[arg-type]
    return replace(state, amount=amount, carry=carry, version=version)


def meters(state: LevelState) -> tuple[int, ...]:
    m = state.meters
    return m.bets, m.wagered, m.contributed, m.overflow, m.won, m.wins


def books_balance(state: LevelState) -> bool:
    """The meters add up to the amount (every way money enters or leaves a pool)."""
    m = state.meters
    return (m.house_funded + m.reserve_funded + m.contributed - m.overflow - m.won
            + m.adjusted + m.transferred) == state.amount


# -- GroupConfig and names ------------------------------------------------------

def test_group_config_normalises_to_exact_decimals() -> None:
    g = GroupConfig("minor", "100", "0.0050", 500)  # type: ignore[arg-type]
    assert (g.seed, g.contribution_rate, g.cap) == (Decimal(100), Decimal("0.005"), Decimal(500))
    assert all(isinstance(v, Decimal) for v in (g.seed, g.contribution_rate, g.cap))
    assert g == GroupConfig("minor", Decimal("100.000"), Decimal("0.005"), Decimal("500.0"))


def test_group_config_accepts_zero_seed_and_cap_equal_to_seed() -> None:
    assert GroupConfig("free", 0, "0.01").seed == 0  # type: ignore[arg-type]
    assert GroupConfig("flat", 100, "0.01", cap=100).cap == Decimal(100)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"name": ""}, r"^GroupConfig\.name '' is not a valid level name"),
    ({"name": "mi nor"}, r"^GroupConfig\.name 'mi nor'"),
    ({"name": "_minor"}, r"^GroupConfig\.name '_minor'"),
    ({"name": "x" * 65}, r"^GroupConfig\.name"),
    ({"name": "m\u00ednor"}, r"^GroupConfig\.name"),
    ({"name": 5}, r"^GroupConfig\.name must be a level name \(str\), not int"),
    ({"seed": 100.0}, r"^seed .*not float"),
    ({"seed": "-1"}, r"^seed must not be negative"),
    ({"seed": Decimal("NaN")}, r"^seed must be a finite amount"),
    ({"contribution_rate": 0}, r"^contribution_rate must be a rate in \(0, 1\)"),
    ({"contribution_rate": 1}, r"^contribution_rate must be a rate in \(0, 1\)"),
    ({"contribution_rate": 0.01}, r"^contribution_rate .*not float"),
    ({"cap": 99}, r"^cap 99\.000000 is below the seed 100\.000000"),
    ({"cap": 0}, r"^cap must be positive"),
    ({"cap": "-5"}, r"^cap must not be negative"),
])
def test_group_config_refuses(kwargs: dict[str, object], pattern: str) -> None:
    args: dict[str, object] = {"name": "minor", "seed": 100, "contribution_rate": "0.01"}
    args.update(kwargs)
    with pytest.raises(ValidationError, match=pattern):
        GroupConfig(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["minor", "Mega-2", "a", "x" * 64, "level.1_b", "0"])
def test_validate_name_accepts(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", " minor", "minor ", "-x", ".x", "x/y", "x" * 65,
                                  "\u0661", "minor\n"])
def test_validate_name_refuses(name: str) -> None:
    with pytest.raises(ValidationError, match=r"^group .* is not a valid level name"):
        validate_name(name)


def test_default_groups() -> None:
    assert {g.name: (g.seed, g.contribution_rate, g.cap) for g in DEFAULT_GROUPS} == {
        "minor": (Decimal(100), Decimal("0.005"), None),
        "major": (Decimal(1000), Decimal("0.003"), None),
        "mega": (Decimal(10000), Decimal("0.001"), None),
    }


# -- create -------------------------------------------------------------------------

def test_create_starts_at_seed_version_1() -> None:
    state, entry = create(GroupConfig("minor", Decimal(100), Decimal("0.005"),
                                      Decimal(5000)), T0, draw)
    assert (state.name, state.amount, state.carry, state.version, state.last_modified_at,
            state.lock_holder) == ("minor", 100 * U, 0, 1, T0, None)
    assert meters(state) == (0, 0, 0, 0, 0, 0)
    assert books_balance(state)
    assert (entry.kind, entry.level, entry.delta, entry.balance_after, entry.version_after,
            entry.at_ms, entry.paid, entry.overflow) == (
        "create", "minor", 100 * U, 100 * U, 1, T0, 0, 0)


# -- contribute -------------------------------------------------------------------

def test_contribute_adds_bet_times_rate_and_bumps_version() -> None:
    s = level()
    nxt, entries, hits = contribute(s, 2_500_000, T0 + 5, draw)  # 2.50 x 0.01 = 0.025
    assert (nxt.amount, nxt.version, nxt.last_modified_at, nxt.carry) == (
        100 * U + 25_000, 8, T0 + 5, 0)
    assert meters(nxt) == (1, 2_500_000, 25_000, 0, 0, 0)
    assert hits == []
    assert len(entries) == 1
    e = entries[0]
    assert (e.kind, e.level, e.delta, e.balance_after, e.version_after, e.at_ms, e.overflow,
            e.detail) == ("contribute", "minor", 25_000, 100 * U + 25_000, 8, T0 + 5, 0,
                          {"bet": 2_500_000})
    assert (s.amount, s.version) == (100 * U, 7)  # the input state is untouched (frozen)
    assert books_balance(nxt)


def test_contribute_carries_the_fraction_forward() -> None:
    s = level(rate="0.333333333")
    s1, [e1], _ = contribute(s, 1, T0, draw)  # 0.333333333 of a unit
    assert (s1.amount, s1.carry, e1.delta, s1.version) == (100 * U, 333_333_333, 0, 8)
    s2, [e2], _ = contribute(s1, 1, T0, draw)
    assert (s2.amount, s2.carry, e2.delta, s2.version) == (100 * U, 666_666_666, 0, 9)
    s3, [e3], _ = contribute(s2, 2, T0, draw)  # + 0.666666666 -> 1.333333332
    assert (s3.amount, s3.carry, e3.delta, s3.version) == (100 * U + 1, 333_333_332, 1, 10)
    assert meters(s3)[:3] == (3, 4, 1)


def test_contribute_stops_at_the_cap_and_meters_the_overflow() -> None:
    s = level(amount=100 * U + 990_000, cap=101)  # 0.01 below the cap
    nxt, [entry], _ = contribute(s, 5 * U, T0, draw)  # would add 0.05
    assert nxt.amount == 101 * U
    assert (entry.delta, entry.overflow, entry.balance_after) == (10_000, 40_000, 101 * U)
    assert meters(nxt)[2:4] == (50_000, 40_000)  # contributed (all of it), overflow
    assert nxt.version == 8
    at_cap, [entry], _ = contribute(nxt, 5 * U, T0, draw)  # at the cap: all overflows
    assert at_cap.amount == 101 * U
    assert (entry.delta, entry.overflow, entry.version_after) == (0, 50_000, 9)
    assert meters(at_cap)[:4] == (2, 10 * U, 100_000, 90_000)


def test_contribute_without_cap_stops_at_the_engine_range() -> None:
    s = level(amount=MAX_UNITS - 3, rate="0.5")
    nxt, [entry], _ = contribute(s, 10, T0, draw)  # would add 5 units, room for 3
    assert nxt.amount == MAX_UNITS
    assert (entry.delta, entry.overflow) == (3, 2)


@pytest.mark.parametrize("bet", [0, -1])
def test_contribute_refuses_non_positive_bets(bet: int) -> None:
    with pytest.raises(ValidationError, match=r"^bet must be positive"):
        contribute(level(), bet, T0, draw)


# -- win ------------------------------------------------------------------------------

def test_win_of_the_whole_pool_pays_it_and_resets_to_seed() -> None:
    s = level(amount=250 * U)
    nxt, entry = win(s, None, T0 + 1, draw, winner="player-9")
    assert (nxt.amount, nxt.version, nxt.last_modified_at) == (100 * U, 8, T0 + 1)
    assert meters(nxt)[4:] == (250 * U, 1)
    assert (entry.kind, entry.delta, entry.paid, entry.balance_after, entry.version_after,
            entry.who, entry.detail) == (
        "win", -150 * U, 250 * U, 100 * U, 8, "player-9", {"reset": True})


def test_win_of_a_fixed_amount_leaves_the_rest_without_reset() -> None:
    s = level(amount=250 * U)
    nxt, entry = win(s, 30 * U, T0, draw)
    assert (nxt.amount, nxt.version) == (220 * U, 8)
    assert meters(nxt)[4:] == (30 * U, 1)
    assert (entry.delta, entry.paid, entry.balance_after, entry.detail) == (
        -30 * U, 30 * U, 220 * U, {"reset": False})


def test_win_of_exactly_the_pool_empties_it_then_more_is_refused() -> None:
    empty, entry = win(level(amount=250 * U), 250 * U, T0, draw)
    assert (empty.amount, entry.delta, entry.balance_after) == (0, -250 * U, 0)
    with pytest.raises(InsufficientFundsError, match=r"level 'minor' has an empty pool"):
        win(empty, None, T0, draw)
    with pytest.raises(InsufficientFundsError, match=r"exceeds the pool"):
        win(empty, 1, T0, draw)


def test_win_of_more_than_the_pool_is_refused() -> None:
    with pytest.raises(InsufficientFundsError,
                       match=r"^amount 250\.000001 exceeds the pool of level 'minor' "
                             r"\(250\.000000\)"):
        win(level(amount=250 * U), 250 * U + 1, T0, draw)


@pytest.mark.parametrize("amount", [0, -5])
def test_win_refuses_non_positive_amounts(amount: int) -> None:
    with pytest.raises(ValidationError, match=r"^amount must be positive"):
        win(level(), amount, T0, draw)


def test_whole_win_on_a_zero_seed_level_leaves_it_empty() -> None:
    nxt, entry = win(level(amount=7, seed=0), None, T0, draw)
    assert (nxt.amount, entry.paid, entry.delta) == (0, 7, -7)


# -- config changes -------------------------------------------------------------------

def test_parse_changes_converts_to_units() -> None:
    assert parse_changes({"seed": "50", "contribution_rate": Decimal("0.02"), "cap": 900}) == {
        "seed": 50 * U, "contribution_rate": 20_000_000, "cap": 900 * U}
    assert parse_changes({"cap": None}) == {"cap": None}
    assert parse_changes({"seed": 0}) == {"seed": 0}
    assert {"seed", "contribution_rate", "cap"} <= set(CONFIG_FIELDS)


@pytest.mark.parametrize(("changes", "pattern"), [
    ({}, r"^no config change given"),
    ({"color": "red"}, r"^unknown config field\(s\) 'color': allowed are seed"),
    ({"amount": 5, "seed": 1}, r"^unknown config field\(s\) 'amount'"),
    ({"seed": "-1"}, r"^seed must not be negative"),
    ({"seed": 1.5}, r"^seed .*not float"),
    ({"seed": None}, r"^seed cannot be cleared \(None\)"),
    ({"contribution_rate": "0"}, r"^contribution_rate must be a rate in \(0, 1\)"),
    ({"contribution_rate": "1"}, r"^contribution_rate must be a rate in \(0, 1\)"),
    ({"contribution_rate": "-0.5"}, r"^contribution_rate must be a rate in \(0, 1\)"),
    ({"contribution_rate": None}, r"^contribution_rate cannot be cleared \(None\)"),
    ({"overflow_to": None, "cap": None}, r"^overflow_to cannot be cleared \(None\): only cap,"),
    ({"cap": "0"}, r"^cap must be positive"),
    ({"cap": Decimal("Infinity")}, r"^cap must be a finite amount"),
])
def test_parse_changes_refuses(changes: dict[str, object], pattern: str) -> None:
    with pytest.raises(ValidationError, match=pattern):
        parse_changes(changes)


def test_reconfigure_applies_changes_and_bumps_version_by_one() -> None:
    s = level(amount=150 * U)
    nxt, entry = reconfigure(s, parse_changes({"contribution_rate": "0.02", "cap": 500}),
                             T0 + 9, who="ops", reason="promo")
    assert (nxt.amount, nxt.version, nxt.last_modified_at) == (150 * U, 8, T0 + 9)
    assert (entry.kind, entry.delta, entry.balance_after, entry.version_after, entry.who) == (
        "config", 0, 150 * U, 8, "ops")
    assert entry.detail is not None
    assert entry.detail["reason"] == "promo"
    core = ("seed", "contribution_rate", "cap")
    assert {k: entry.detail["before"][k] for k in core} == {
        "seed": "100.000000", "contribution_rate": "0.01", "cap": None}
    assert {k: entry.detail["after"][k] for k in core} == {
        "seed": "100.000000", "contribution_rate": "0.02", "cap": "500.000000"}
    # the new rate applies to the next bet
    after_bet, [e], _ = contribute(nxt, U, T0, draw)
    assert (e.delta, after_bet.version) == (20_000, 9)


def test_a_new_seed_is_what_the_next_reset_refills() -> None:
    s = level(amount=150 * U)
    nxt, _ = reconfigure(s, parse_changes({"seed": 40}), T0)
    assert (nxt.amount, nxt.version) == (150 * U, 8)  # a running pool is not touched
    reset, entry = win(nxt, None, T0, draw)
    assert (reset.amount, entry.paid, reset.version) == (40 * U, 150 * U, 9)
    again, _ = win(replace(reset, amount=70 * U), None, T0, draw)
    assert again.amount == 40 * U


@pytest.mark.parametrize(("queued", "changes"), [
    ({}, {"must_hit_by": None}),  # showed "must_hit_by=None" pending until the next reset
    ({}, {"seed": 100}),
    ({"seed": 40 * U}, {"seed": 100}),  # back to what it has: the queued 40 is dropped
    ({"must_hit_by": 500 * U}, {"must_hit_by": None, "seed": 100}),
])
def test_a_deferred_change_to_the_value_the_level_has_is_not_queued(
        queued: dict[str, int], changes: dict[str, object]) -> None:
    state = replace(level(), pending=queued)
    nxt, entry = reconfigure(state, parse_changes(changes), T0)
    assert nxt.pending == {}
    assert entry.detail is not None
    assert entry.detail["pending"] == {}
    assert nxt.version == 8  # still a recorded (audited) config change, as for any other field
    reset, _ = win(nxt, None, T0, draw)
    assert (reset.config.seed, reset.config.must_hit_by) == (100 * U, None)


def test_a_deferred_change_keeps_the_others_queued() -> None:
    state = replace(level(), pending={"must_hit_by": 500 * U})
    nxt, _ = reconfigure(state, parse_changes({"seed": 100}), T0)
    assert nxt.pending == {"must_hit_by": 500 * U}


def test_reconfigure_can_remove_the_cap() -> None:
    nxt, _ = reconfigure(level(cap=500), {"cap": None}, T0)
    at_range, [e], _ = contribute(replace(nxt, amount=600 * U), 100 * U, T0, draw)
    assert (e.delta, e.overflow, nxt.version) == (U, 0, 8)  # no cap stops it any more
    assert at_range.amount == 601 * U


def test_reconfigure_cap_equal_to_the_amount_is_allowed() -> None:
    nxt, _ = reconfigure(level(amount=150 * U), parse_changes({"cap": 150}), T0)
    _, [e], _ = contribute(nxt, U, T0, draw)
    assert (e.delta, e.overflow) == (0, 10_000)


@pytest.mark.parametrize(("state", "changes", "pattern"), [
    (level(), {"cap": 99}, r"^cap 99\.000000 is below the seed 100\.000000"),
    (level(amount=150 * U), {"cap": 149},
     r"^cap 149\.000000 is below the current amount 150\.000000"),
    (level(cap=200), {"seed": 201}, r"^cap 200\.000000 is below the seed 201\.000000"),
])
def test_reconfigure_refuses_a_cap_below_seed_or_amount(
        state: LevelState, changes: dict[str, object], pattern: str) -> None:
    with pytest.raises(ValidationError, match=pattern):
        reconfigure(state, parse_changes(changes), T0)


# -- a whole life: the books always balance -----------------------------------------

actions = st.one_of(
    st.tuples(st.just("bet"), st.integers(min_value=1, max_value=10**9)),
    st.tuples(st.just("win"), st.none()),
    st.tuples(st.just("win"), st.integers(min_value=1, max_value=300 * U)),
    st.tuples(st.just("rate"), st.integers(min_value=1, max_value=RATE_SCALE - 1)),
)


@given(st.lists(actions, max_size=80))
def test_any_sequence_keeps_the_books_balanced(steps: list[tuple[str, int | None]]) -> None:
    state, first = create(GroupConfig("minor", Decimal(100), Decimal("0.01"),
                                      cap=Decimal(1000)), T0, draw)
    ledger_sum = first.delta
    for kind, value in steps:
        before = state
        try:
            if kind == "bet":
                assert value is not None
                state, entries, _ = contribute(state, value, T0, draw)
                (entry,) = entries
            elif kind == "win":
                state, entry = win(state, value, T0, draw)
            else:
                state, entry = reconfigure(state, {"contribution_rate": value}, T0)
        except InsufficientFundsError:
            assert kind == "win"
            assert value is not None
            assert value > before.amount
            continue
        ledger_sum += entry.delta
        assert state.version == before.version + 1 == entry.version_after
        assert entry.balance_after == state.amount == before.amount + entry.delta
        assert 0 <= state.amount <= 1000 * U
        assert 0 <= state.carry < RATE_SCALE
        assert state.amount == ledger_sum
        assert books_balance(state)


# -- the next state (domain._step) ----------------------------------------------

def test_a_step_is_replace_with_the_changes_one_version_on() -> None:
    before = replace(level(), trigger=150 * U, pending={"seed": 5 * U}, lock_holder="w1")
    after = _step(before, T0 + 5, amount=3, reserve=4, carry=5, reserve_carry=6,
                  status="suspended")
    assert after == replace(before, amount=3, reserve=4, carry=5, reserve_carry=6,
                            status="suspended", version=8, last_modified_at=T0 + 5)
    assert before.version == 7  # (left as it was)


def test_a_step_refuses_a_field_a_level_does_not_have() -> None:
    with pytest.raises(TypeError, match="LevelState has no field\\(s\\) nosuch"):
        _step(level(), T0, amount=1, nosuch=2)
