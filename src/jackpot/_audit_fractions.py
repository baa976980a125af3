"""The audit of carried fractions and retirements: what the ledger says they must be.

A level carries the part of its bets' shares finer than one unit (`carry` for
the pool, `reserve_carry` for the reserve, in parts of `RATE_SCALE`). The
ledger records every bet (detail {"bet": units}) and every rate (the create
and config rows' config views), and a rate applies from its row on; so per
level, with W the whole units its bets were credited and F the fractions
retirements moved in (+) or out (-), with the units they made (U):

    carry = sum(bet x rate) + F - RATE_SCALE x (W + U),

and the same for the reserve with the reserve rate, where W excludes the
overflow that went to the reserve (`overflow_to="reserve"`). A retirement
writes two rows under one op_id (`retire`, `transfer_in`) that must agree:
the same fractions moved, and the target received what the source gave plus
the units those fractions made.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from jackpot.domain import LevelState
from jackpot.errors import ValidationError
from jackpot.money import RATE_SCALE, parse_rate
from jackpot.storage import LedgerRow, LedgerTotals

__all__ = ["Fractions", "check_retirements"]

_Rates = tuple[int, int, bool]  # contribution rate, reserve rate, overflow to the reserve


@dataclass(slots=True)
class _Moved:
    """Fractions a level's retirements moved in (+) or out (-), and the units they made."""

    carry: int = 0
    reserve_carry: int = 0
    units: int = 0
    reserve_units: int = 0


def _carried(row: LedgerRow) -> tuple[int, int, int, int]:
    """Return (carry, reserve_carry, units, reserve_units) a retirement row moved.

    Raises:
        ValueError: the row's detail is not what the engine writes (of any shape).

    """
    detail = row.detail or {}
    carried = (detail.get("carried") if isinstance(detail, dict) else detail) or {}
    values = tuple(carried.get(k, 0) for k in ("carry", "reserve_carry", "units",
                                                "reserve_units")
                   ) if isinstance(carried, dict) else ()
    if not (values and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                           for v in values)):
        msg = f"unreadable carried fractions {carried!r:.80}"  # (not JSON: its text)
        raise ValueError(msg)  # (told once: see `check_retirements`)
    return values


def _recorded(value: Any) -> Any:
    """Read a rate as a row records it: a decimal string, plain or with an exponent.

    An engine before e40ab7a wrote a rate below 1e-6 as '2E-7' (now
    '0.0000002'); both are the same rate. Anything else is left for
    `parse_rate` to refuse.
    """
    if isinstance(value, str):
        try:
            return Decimal(value)
        except ArithmeticError:
            return value
    return value


def _rates(row: LedgerRow) -> _Rates:
    """Return the rates a create or config row set (ValueError if unreadable)."""
    view: Any = (row.detail or {}).get("config" if row.kind == "create" else "after")
    try:
        return (parse_rate(_recorded(view["contribution_rate"]), name="contribution_rate"),
                parse_rate(_recorded(view["reserve_rate"]), name="reserve_rate",
                           allow_zero=True),
                view["overflow_to"] == "reserve")
    except (TypeError, KeyError, ValidationError) as e:
        msg = f"{row.kind} row at version {row.version_after} records no readable rates"
        raise ValueError(msg) from e


def _sql_order(value: object) -> tuple[int, Any]:
    """Sort a value as SQLite does: NULL, numbers, text, BLOBs.

    A ledger rebuilt without STRICT or NOT NULL may hold any of them as a
    row's level or version; each rate period begins where the ledger's own
    order (that SQLite gives `periods`) puts its row, and a sort of mixed
    types must not fail.
    """
    if value is None:
        return 0, 0
    if isinstance(value, (int, float)):
        return 1, value
    return (2, value) if isinstance(value, str) else (3, value)


class Fractions:
    """What the ledger says each level's carried fractions must be."""

    def __init__(self, configs: Iterable[LedgerRow], transfers: Iterable[LedgerRow],
                 periods: dict[str, dict[int, tuple[int, int]]]) -> None:
        """Take the create/config rows, the retirement rows and the bets per period."""
        self.problems: list[str] = []
        self.periods = periods
        self.rates: dict[str, list[_Rates | None]] = defaultdict(list)
        for row in sorted(configs, key=lambda r: (_sql_order(r.level),
                                                  _sql_order(r.version_after))):
            try:
                self.rates[row.level].append(_rates(row))
            except ValueError as e:
                self.rates[row.level].append(None)
                self.problems.append(f"{row.level}: {e}")
        self.moved: dict[str, _Moved] = defaultdict(_Moved)
        self.unread: set[str] = set()
        """Levels with a retirement row whose fractions cannot be read (told, not checked)."""
        for row in transfers:
            try:
                carry, reserve_carry, units, reserve_units = _carried(row)
            except ValueError as e:
                self.problems.append(f"{row.level}: {row.kind} row at version "
                                     f"{row.version_after}: {e}")
                self.unread.add(row.level)
                continue
            m = self.moved[row.level]
            sign = -1 if row.kind == "retire" else 1
            m.carry += sign * carry
            m.reserve_carry += sign * reserve_carry
            if row.kind == "transfer_in":
                m.units += units
                m.reserve_units += reserve_units

    def check(self, s: LevelState, t: LedgerTotals) -> list[str]:
        """Compare one level's carried fractions with what its ledger leaves.

        Not where a retirement row's fractions cannot be read: what it moved
        is unknown, and the row is told already (`problems`).
        """
        name, rates = s.name, self.rates.get(s.name, [])
        if name in self.unread:
            return []
        shares = reserve_shares = overflow_to_reserve = 0
        for period, (bets, overflow) in sorted(self.periods.get(name, {}).items()):
            period_rates = rates[period - 1] if 1 <= period <= len(rates) else None
            if period_rates is None:
                return [f"{name}: bets in the ledger that no readable rate applies to"]
            rate, reserve_rate, to_reserve = period_rates
            shares += bets * rate
            reserve_shares += bets * reserve_rate
            overflow_to_reserve += overflow if to_reserve else 0
        m = self.moved[name]
        if t.meters["contributed"] is None or t.meters["reserve_in"] is None:
            return []  # no number (see `audit._check_level`): its rows are told
        carry = shares + m.carry - RATE_SCALE * (t.meters["contributed"] + m.units)
        reserve_carry = reserve_shares + m.reserve_carry - RATE_SCALE * (
            t.meters["reserve_in"] - overflow_to_reserve + m.reserve_units)
        # A sum with a REAL in it (a ledger rebuilt without STRICT) is inexact, or
        # infinite: it leaves no fraction to compare with. The REAL is told
        # against its row (`Store.untyped_ledger_rows`).
        return [f"{name}: {what} is {held} billionths of a unit, but the ledger's bets, "
                f"rates and retirements leave {want}"
                for what, held, want in (("the pool's carried fraction", s.carry, carry),
                                         ("the reserve's carried fraction", s.reserve_carry,
                                          reserve_carry))
                if held != want and not isinstance(want, float)]


def check_retirements(rows: Iterable[LedgerRow], *, told: bool) -> list[str]:
    """Check that each retirement's two rows agree on what moved.

    A row whose fractions cannot be read is told by `Fractions` (`told`), or
    else here: once either way. A row whose units moved are no whole number
    (a ledger rebuilt without STRICT) is told here, against its retirement.
    """
    by_op: dict[str, list[LedgerRow]] = defaultdict(list)
    for row in rows:
        by_op[row.op_id].append(row)
    problems = []
    for op_id, pair in sorted(by_op.items()):
        kinds = sorted(r.kind for r in pair)
        if kinds != ["retire", "transfer_in"]:
            problems.append(f"retirement {op_id!r}: rows {', '.join(kinds)}, expected one "
                            "retire and one transfer_in")
            continue
        out, into = sorted(pair, key=lambda r: r.kind)
        try:
            moved = _carried(out)
            if _carried(into) != moved:
                problems.append(f"retirement {op_id!r}: its two rows record different "
                                "carried fractions")
                continue
        except ValueError as e:
            if not told:
                problems.append(f"retirement {op_id!r}: {e}")
            continue
        forged = next(((r.kind, f, v) for r in (out, into)
                       for f in ("transferred", "reserve_transferred")
                       if type(v := getattr(r, f)) is not int), None)
        if forged is not None:  # (text, a REAL: a ledger rebuilt without STRICT)
            kind, figure, value = forged
            problems.append(f"retirement {op_id!r}: its {kind} row's {figure} is {value!r}, "
                            "not a whole number of units")
            continue
        given = -(out.transferred + out.reserve_transferred)
        received = into.transferred + into.reserve_transferred
        if received != given + moved[2] + moved[3]:
            problems.append(f"retirement {op_id!r}: {out.level} gave {given} units, "
                            f"{into.level} received {received} (with {moved[2] + moved[3]} "
                            "made of carried fractions)")
    return problems
