"""Exact money: parse and validate amounts, convert Decimal <-> integer units.

Storage holds integers of 1/`SCALE` (one millionth of a currency unit). Rates
are integers of 1/`RATE_SCALE` (one billionth). A contribution is computed in
"sub-units" (units x RATE_SCALE) so nothing is rounded: the part finer than one
unit is carried forward per level (see `split_contribution`).

No result here depends on the caller's `decimal` context: the host may lower
the thread's precision or exponent range (or `DefaultContext`, which every new
thread, the actors' included, starts from). Parsing only compares Decimals and
reads their digits (both exact in any context); building a Decimal goes
through `_EXACT`, a private context wide enough that nothing rounds, with
`Inexact` trapped to prove it.
"""

from __future__ import annotations

import re
from decimal import (
    MAX_EMAX,
    MAX_PREC,
    MIN_EMIN,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
)

from jackpot.errors import ValidationError, exact_int

__all__ = [
    "EXACT",
    "MAX_UNITS",
    "RATE_SCALE",
    "SCALE",
    "from_units",
    "parse_amount",
    "parse_rate",
    "parse_signed_amount",
    "plain",
    "rate_to_decimal",
    "split_contribution",
]

SCALE = 10**6
"""Units per currency unit: amounts are exact to 0.000001."""

RATE_SCALE = 10**9
"""Rate parts per whole: rates are exact to 0.000000001."""

MAX_UNITS = 10**17
"""Largest amount the engine accepts or holds (100 billion currency units).

Far below SQLite's 2**63 so sums of many amounts never overflow a column.
"""

_PLAIN_DECIMAL = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?", re.ASCII)
_MAX_STR = 64
_UNIT_EXP = 6
_RATE_EXP = 9
_SIX_PLACES = Decimal(1).scaleb(-_UNIT_EXP)
_EXACT = Context(prec=MAX_PREC, rounding=ROUND_HALF_EVEN, Emin=MIN_EMIN, Emax=MAX_EMAX,
                 capitals=1, clamp=0,
                 traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])
EXACT = _EXACT
"""For Decimal arithmetic elsewhere in the package (`EXACT.add(a, b)`): never the
caller's context, and Inexact is trapped, so nothing is ever rounded silently."""


def _coerce(value: object, name: str) -> Decimal:
    # bool is an int subclass: True would silently mean 1.
    if isinstance(value, bool):
        msg = f"{name} must be a Decimal, int or decimal string, not bool ({value!r})"
        raise ValidationError(msg)
    if isinstance(value, float):
        msg = (
            f"{name} must be a Decimal, int or decimal string, not float ({value!r}): "
            "binary floats cannot hold money exactly; pass Decimal('...') or a string"
        )
        raise ValidationError(msg)
    if isinstance(value, Decimal):
        # A subclass (a money library's) is read as the number it holds: its own
        # comparisons and str() are not ours. Decimal(d) copies it exactly, in any context.
        return value if type(value) is Decimal else Decimal(value)
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, str):
        if len(value) > _MAX_STR:
            msg = (f"{name} must be a decimal string of at most {_MAX_STR} characters, got "
                   f"{len(value)} ({value[:_MAX_STR]!r}...)")
            raise ValidationError(msg)
        if not _PLAIN_DECIMAL.fullmatch(value):
            msg = (
                f"{name} must be a plain decimal string such as '2.50' "
                f"(ASCII digits, no spaces or exponent), got {value!r}"
            )
            raise ValidationError(msg)
        return Decimal(value)
    whole = exact_int(value)  # an exact integer of another kind (numpy.int64)
    if whole is not None:
        return Decimal(whole)
    msg = f"{name} must be a Decimal, int or decimal string, not {type(value).__name__}"
    raise ValidationError(msg)


def _scaled_integer(d: Decimal, exp: int, name: str, what: str, *,
                    given: Decimal | None = None) -> int:
    """Return d x 10**exp as an int, refusing anything finer than 10**-exp.

    The caller has checked that `d` is finite and within its range, so the
    int is small however many digits `d` has. Only the exponent moves (exact:
    `_EXACT` traps Inexact), and the int, truncated, is the scaled value
    exactly when nothing finer was there. Three C calls: no digits go through
    text, so Python's limit of 4300 digits on int-from-string is never
    reached, however long `d` is. A message names `given` (the value as the
    caller wrote it) if set, else `d`.
    """
    scaled = d.scaleb(exp, _EXACT)
    value = int(scaled)
    if value != scaled:
        shown = _shown(d if given is None else given)
        smallest = plain(Decimal(1).scaleb(-exp, _EXACT))  # (not in the caller's context)
        msg = f"{name} {shown} is finer than the smallest {what} {smallest}"
        raise ValidationError(msg)
    return value


def _shown(d: Decimal) -> str:
    """Return `d` for an error message (see `plain`), shortened if it is very long."""
    text = plain(d)
    return text if len(text) <= _MAX_STR else f"{text[:_MAX_STR]}... ({len(text)} chars)"


def plain(d: Decimal) -> str:
    """Return `d` as people write numbers: positional, every digit as it is ('0.0000001').

    `str()` of a Decimal turns to exponent notation below 0.000001 and for a
    number with a positive exponent: '1E-7', '1E+3'. `format(d, "f")` writes
    the same digits (no rounding, no digit added or dropped) without an
    exponent. Where that would take more than `_MAX_STR` characters
    (Decimal('1E-999999999'): a billion zeros, and no message can show them)
    the exponent is kept: it is what tells that number.
    """
    if d.is_finite():
        sign, digits, exp = d.as_tuple()
        exponent = int(exp)  # (an int: the number is finite)
        # At most so long: the sign, '0.', zeros before the digits, the digits, zeros after.
        if sign + 2 + max(len(digits), -exponent) + max(exponent, 0) <= _MAX_STR:
            return f"{d:f}"
    return str(d)


def parse_amount(
    value: object,
    *,
    name: str,
    allow_zero: bool = False,
    max_units: int = MAX_UNITS,
) -> int:
    """Validate a money amount and return it in integer units.

    Args:
        value: a `Decimal`, `int` or plain decimal `str`.
        name: the argument's name, used in error messages.
        allow_zero: accept zero (seeds may be zero; bets may not).
        max_units: the largest accepted amount, in units.

    Raises:
        ValidationError: float, bool, NaN, infinity, negative (including -0,
            which is no negative number but is refused as one: it is what a
            tiny negative amount rounds to), zero unless allowed, finer than
            one unit, or beyond the range.

    """
    d = _coerce(value, name)
    if not d.is_finite():
        msg = f"{name} must be a finite amount, got {_shown(d)}"
        raise ValidationError(msg)
    if d.is_signed():
        # -0 was told "must not be negative": true of no zero. Where zero is refused
        # it is refused as zero is; where zero is allowed, the minus sign is named.
        if not d.is_zero():
            msg = f"{name} must not be negative, got {_shown(d)}"
        elif not allow_zero:
            msg = f"{name} must be positive, got {_shown(d)}"
        else:
            msg = f"{name} must be 0 or positive, without a minus sign, got {_shown(d)}"
        raise ValidationError(msg)
    return _units(d, name, allow_zero=allow_zero, max_units=max_units)


def _units(d: Decimal, name: str, *, allow_zero: bool, max_units: int,
           given: Decimal | None = None) -> int:
    """Return a finite, unsigned `d` in units, or raise naming `given` (default `d`)."""
    most = _MOST if max_units == MAX_UNITS else from_units(max_units)
    if d > most:  # a comparison is exact in any context
        either_way = "" if given is None else " either way"
        msg = (f"{name} {_shown(d if given is None else given)} is beyond the engine's "
               f"range (at most {most}{either_way})")
        raise ValidationError(msg)
    units = _scaled_integer(d, _UNIT_EXP, name, "unit", given=given)
    if units == 0 and not allow_zero:
        msg = f"{name} must be positive, got {_shown(d if given is None else given)}"
        raise ValidationError(msg)
    return units


def parse_signed_amount(value: object, *, name: str, max_units: int = MAX_UNITS) -> int:
    """Validate a signed amount (an adjustment) and return it in integer units.

    The sign belongs to the number: -5, '-5' and Decimal('-5') are accepted,
    '-+5' and '--5' are not numbers and are refused like any malformed string.
    Its size obeys `parse_amount` (not zero, a whole number of units, in range).
    """
    d = _coerce(value, name)
    if not d.is_finite():
        msg = f"{name} must be a finite amount, got {_shown(d)}"
        raise ValidationError(msg)
    if d.is_zero():  # "must be positive" would misstate a signed amount
        msg = f"{name} must not be zero, got {_shown(d)}"
        raise ValidationError(msg)
    # copy_abs, not unary minus: exact whatever the caller's decimal context. Its
    # messages name `d` as given: '-0.0000001' was told "delta 1E-7 is finer...".
    units = _units(d.copy_abs(), name, allow_zero=False, max_units=max_units, given=d)
    return -units if d.is_signed() else units


def parse_rate(value: object, *, name: str, allow_zero: bool = False) -> int:
    """Validate a rate in (0, 1) (or [0, 1) with allow_zero); return parts of 1e9."""
    d = _coerce(value, name)
    if allow_zero and d.is_zero() and d.is_signed():  # (-0 is in [0, 1): name the sign)
        msg = f"{name} must be a rate in [0, 1), without a minus sign, got {_shown(d)}"
        raise ValidationError(msg)
    if not d.is_finite() or d.is_signed() or d >= 1 or (d == 0 and not allow_zero):
        bounds = "[0, 1)" if allow_zero else "(0, 1)"
        msg = f"{name} must be a rate in {bounds}, got {_shown(d)}"
        raise ValidationError(msg)
    return _scaled_integer(d, _RATE_EXP, name, "rate step")


def from_units(units: int) -> Decimal:
    """Return integer units as an exact Decimal with six decimal places."""
    return Decimal(units).scaleb(-_UNIT_EXP, _EXACT)


_MOST = from_units(MAX_UNITS)
"""The largest amount `parse_amount` takes by default (made once: it runs on every bet)."""


def rate_to_decimal(parts: int) -> Decimal:
    """Return a rate held as parts of 1e9 as an exact, normalized Decimal."""
    d = Decimal(parts).scaleb(-_RATE_EXP, _EXACT)
    return d.normalize(_EXACT) if d else Decimal(0)


def contribution_to_decimal(bet_units: int, rate_parts: int) -> Decimal:
    """Return bet x rate exactly: six decimals, or as many more as it takes."""
    d = Decimal(bet_units * rate_parts).scaleb(-_UNIT_EXP - _RATE_EXP, _EXACT).normalize(_EXACT)
    if int(d.as_tuple().exponent) > -_UNIT_EXP:
        d = d.quantize(_SIX_PLACES, context=_EXACT)  # adds zeros only: exact
    return d


def split_contribution(bet_units: int, rate_parts: int, carry: int) -> tuple[int, int]:
    """Return (whole units, new carry) of bet x rate plus the carried fraction.

    `carry` is the fraction of a unit carried forward, in parts of RATE_SCALE:
    over any sequence of bets the units credited plus carry/RATE_SCALE equal
    the exact sum of bet x rate, so no fraction is ever dropped.
    """
    whole, rest = divmod(bet_units * rate_parts + carry, RATE_SCALE)
    return whole, rest
