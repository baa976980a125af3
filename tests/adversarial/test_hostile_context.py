"""A host application with a hostile `decimal` context: every figure stays exact.

A game server may lower the precision or the exponent range of its threads'
decimal context, or change which signals trap, for its own arithmetic; it
may do so in `decimal.DefaultContext` (which every new thread, the engine's
actors included, starts from) before it opens the engine. None of this may
change an amount the engine reports, stores or replays, or turn a valid
amount into a `decimal` exception.

Expected figures are written from integer units with string formatting, so
the test itself does no Decimal arithmetic under the hostile context.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterator
from decimal import Context, Decimal
from pathlib import Path

import pytest

from jackpot import GroupConfig, JackpotEngine, Settings

ALL_SIGNALS = [decimal.Clamped, decimal.DivisionByZero, decimal.Inexact, decimal.Overflow,
               decimal.Rounded, decimal.Subnormal, decimal.Underflow,
               decimal.InvalidOperation, decimal.FloatOperation]

HOSTILE = {
    # low precision, a tiny exponent range, and every signal trapped
    "strict": {"prec": 4, "Emax": 5, "Emin": -5, "rounding": decimal.ROUND_DOWN,
               "capitals": 1, "traps": ALL_SIGNALS},
    # lower still, rounding up, and nothing trapped: errors would turn into NaN
    "lax": {"prec": 3, "Emax": 4, "Emin": -4, "rounding": decimal.ROUND_UP,
            "capitals": 1, "traps": []},
}


def dec(units: int) -> Decimal:
    """The exact Decimal of `units` (1e-6), with six places, built without arithmetic."""
    sign = "-" if units < 0 else ""
    return Decimal(f"{sign}{abs(units) // 10**6}.{abs(units) % 10**6:06d}")


def exact(value: Decimal, units: int) -> bool:
    """Say whether `value` is `units` exactly, written with its six places."""
    return str(value) == str(dec(units))


@pytest.fixture(params=sorted(HOSTILE))
def hostile(request: pytest.FixtureRequest) -> Iterator[None]:
    """Make both the test thread's context and DefaultContext hostile, then restore."""
    attrs = HOSTILE[request.param]
    default = decimal.DefaultContext
    saved = {name: getattr(default, name) for name in ("prec", "Emax", "Emin", "rounding",
                                                      "capitals")}
    saved_traps = [s for s, on in default.traps.items() if on]
    saved_flags = [s for s, on in default.flags.items() if on]
    saved_thread = decimal.getcontext()
    try:
        for name, value in attrs.items():
            if name == "traps":
                default.clear_traps()
                for signal in value:  # type: ignore[attr-defined]
                    default.traps[signal] = True
            else:
                setattr(default, name, value)
        decimal.setcontext(Context(**attrs))  # type: ignore[arg-type]
        yield
    finally:
        decimal.setcontext(saved_thread)
        for name, value in saved.items():
            setattr(default, name, value)
        default.clear_traps()
        for signal in saved_traps:
            default.traps[signal] = True
        default.clear_flags()
        for signal in saved_flags:
            default.flags[signal] = True


SEED = 123_456_789_012  # 123456.789012: more digits than the precision, above Emax
RATE = 12_345_678  # 0.012345678
RESERVE_RATE = 123  # 0.000000123
BET = 98_765_432_109  # 98765.432109


def test_results_replays_pools_history_and_audit_are_exact(hostile: None,
                                                           tmp_path: Path) -> None:
    levels = [GroupConfig("minor", seed=dec(SEED), contribution_rate=Decimal("0.012345678"),
                          reserve_rate=Decimal("0.000000123")),
              GroupConfig("major", seed=Decimal(0), contribution_rate="0.5")]
    engine = JackpotEngine.open(tmp_path / "pools.db", levels,
                                settings=Settings(enable_metrics=False, log_level="error"))
    try:
        minor_in = BET * RATE // 10**9
        reserve_in = BET * RESERVE_RATE // 10**9
        major_in = BET // 2
        c = engine.contribute(dec(BET), groups=("minor", "major"), op_id="b1")
        again = engine.contribute(str(dec(BET)), groups=("minor", "major"), op_id="b1")
        for result in (c, again):
            assert exact(result.contributions["minor"], minor_in)
            assert exact(result.contributions["major"], major_in)
            assert exact(result.balances["minor"], SEED + minor_in)
            assert exact(result.balances["major"], major_in)
        assert again.replayed

        minor = engine.pool("minor")
        assert exact(minor.amount, SEED + minor_in)
        assert exact(minor.reserve, reserve_in)
        assert exact(minor.seed, SEED)
        assert str(minor.contribution_rate) == "0.012345678"
        assert str(minor.reserve_rate) == "1.23E-7"
        assert exact(minor.meters["wagered"], BET)  # type: ignore[arg-type]
        assert exact(engine.pools()["major"].amount, major_in)

        w = engine.process_win("minor", op_id="w1")
        w_again = engine.process_win("minor", op_id="w1")
        for win in (w, w_again):
            assert exact(win.amount, SEED + minor_in)
            assert exact(win.balance, SEED)
        [past] = engine.history("minor")
        assert exact(past.amount, SEED + minor_in)

        down = engine.adjust("major", dec(-12_345_678_901), who="ops", reason="correction", op_id="a1")
        assert exact(down.balances["major"], major_in - 12_345_678_901)
        assert exact(engine.adjust("major", "-1.000001", who="ops", reason="r").balances["major"],
                     major_in - 12_345_678_901 - 1_000_001)

        changed = engine.update_config("minor", contribution_rate=Decimal("0.000012345"),
                                       cap=dec(987_654_321_098), op_id="c1")
        assert changed.after["contribution_rate"] == "0.000012345"
        assert changed.after["cap"] == "987654.321098"
        assert changed.before["seed"] == "123456.789012"

        report = engine.verify()
        assert report.ok, report.problems
    finally:
        engine.close()
