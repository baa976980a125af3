"""Exact money: parsing, refusals, unit conversion and the carried fraction."""

from __future__ import annotations

import decimal
from decimal import Context, Decimal, localcontext
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jackpot import ValidationError
from jackpot.money import (
    MAX_UNITS,
    RATE_SCALE,
    SCALE,
    from_units,
    parse_amount,
    parse_rate,
    parse_signed_amount,
    plain,
    rate_to_decimal,
    split_contribution,
)

MAX = Decimal(MAX_UNITS) / SCALE  # the largest amount, in currency units


# -- parse_amount: accepted -------------------------------------------------

@pytest.mark.parametrize(("value", "units"), [
    (Decimal("2.50"), 2_500_000),
    ("2.50", 2_500_000),
    ("+2.5", 2_500_000),
    (7, 7_000_000),
    ("0.000001", 1),
    (Decimal("0.000001"), 1),
    (Decimal("2.5000000000"), 2_500_000),     # trailing zeros beyond a unit are exact
    (Decimal("25E-1"), 2_500_000),            # a Decimal's exponent is just notation
    (Decimal("1E+2"), 100_000_000),
    (Decimal("1E+11"), MAX_UNITS),            # exactly the top of the range
    (str(MAX), MAX_UNITS),
    (Decimal("1." + "0" * 5000), 1_000_000),  # more than 4300 digits, exactly 1
    (Decimal("12.5" + "0" * 5000), 12_500_000),
    (Decimal("1" + "0" * 5000 + "E-4990"), MAX_UNITS // 10),
    (10**11, MAX_UNITS),
    ("00012.340000", 12_340_000),
])
def test_parse_amount_accepts_exact_values(value: object, units: int) -> None:
    assert parse_amount(value, name="bet") == units


@pytest.mark.parametrize("value", [0, "0", Decimal(0), Decimal("0E-12"), "0.000000"])
def test_zero_is_accepted_only_when_allowed(value: object) -> None:
    assert parse_amount(value, name="seed", allow_zero=True) == 0
    with pytest.raises(ValidationError, match=r"^bet must be positive"):
        parse_amount(value, name="bet")


def test_max_units_bounds_the_range() -> None:
    assert parse_amount("5", name="bet", max_units=5 * SCALE) == 5 * SCALE
    with pytest.raises(ValidationError, match="beyond the engine's range"):
        parse_amount("5.000001", name="bet", max_units=5 * SCALE)


# -- parse_amount: refused ----------------------------------------------------

REFUSED = [
    # (value, pattern the message must match; each names the argument "bet")
    pytest.param(2.5, r"^bet .*not float \(2\.5\)", id="float"),
    pytest.param(0.0, r"^bet .*not float", id="float-zero"),
    pytest.param(float("nan"), r"^bet .*not float", id="float-nan"),
    pytest.param(float("inf"), r"^bet .*not float", id="float-inf"),
    pytest.param(-0.0, r"^bet .*not float", id="float-minus-zero"),
    pytest.param(True, r"^bet .*not bool \(True\)", id="bool-true"),
    pytest.param(False, r"^bet .*not bool \(False\)", id="bool-false"),
    pytest.param(None, r"^bet .*not NoneType", id="none"),
    pytest.param(b"2.5", r"^bet .*not bytes", id="bytes"),
    pytest.param(Fraction(1, 2), r"^bet .*not Fraction", id="fraction"),
    pytest.param([1], r"^bet .*not list", id="list"),
    pytest.param(Decimal("NaN"), r"^bet must be a finite amount, got NaN", id="nan"),
    pytest.param(Decimal("-NaN"), r"^bet must be a finite amount", id="minus-nan"),
    pytest.param(Decimal("sNaN"), r"^bet must be a finite amount, got sNaN", id="snan"),
    pytest.param(Decimal("Infinity"), r"^bet must be a finite amount, got Infinity", id="inf"),
    pytest.param(Decimal("-Infinity"), r"^bet must be a finite amount", id="minus-inf"),
    pytest.param("NaN", r"^bet must be a plain decimal string", id="str-nan"),
    pytest.param("Infinity", r"^bet must be a plain decimal string", id="str-inf"),
    pytest.param("inf", r"^bet must be a plain decimal string", id="str-inf-short"),
    # -0 was "must not be negative", which no zero is: it is refused as zero is
    pytest.param(Decimal("-0"), r"^bet must be positive, got -0$", id="minus-zero"),
    pytest.param("-0", r"^bet must be positive, got -0$", id="str-minus-zero"),
    pytest.param("-0.000000", r"^bet must be positive, got -0\.000000$",
                 id="str-minus-zero-scaled"),
    pytest.param(Decimal(-1), r"^bet must not be negative, got -1", id="negative"),
    pytest.param(-1, r"^bet must not be negative", id="negative-int"),
    pytest.param("-2.50", r"^bet must not be negative", id="negative-str"),
    pytest.param("1e3", r"^bet must be a plain decimal string .*'1e3'", id="str-exponent"),
    pytest.param("1E-3", r"^bet must be a plain decimal string", id="str-exponent-upper"),
    pytest.param(" 2.5", r"^bet must be a plain decimal string", id="leading-space"),
    pytest.param("2.5 ", r"^bet must be a plain decimal string", id="trailing-space"),
    pytest.param("2.5\n", r"^bet must be a plain decimal string", id="trailing-newline"),
    pytest.param("2 5", r"^bet must be a plain decimal string", id="inner-space"),
    pytest.param("1_000", r"^bet must be a plain decimal string", id="underscore"),
    pytest.param("1,5", r"^bet must be a plain decimal string", id="comma"),
    pytest.param("", r"^bet must be a plain decimal string", id="empty"),
    pytest.param("abc", r"^bet must be a plain decimal string .*'abc'", id="letters"),
    pytest.param("0x10", r"^bet must be a plain decimal string", id="hex"),
    pytest.param(".5", r"^bet must be a plain decimal string", id="no-integer-part"),
    pytest.param("5.", r"^bet must be a plain decimal string", id="no-fraction-digits"),
    pytest.param("\u0661\u0662", r"^bet must be a plain decimal string", id="arabic-digits"),
    pytest.param("\uff15", r"^bet must be a plain decimal string", id="fullwidth-digit"),
    pytest.param("\u00b2", r"^bet must be a plain decimal string", id="superscript-two"),
    pytest.param("1" * 65, r"^bet must be a decimal string of at most 64 characters, got 65 "
                 r"\('1{64}'\.\.\.\)$", id="too-long-string"),
    pytest.param("0" * 5000 + "1", r"^bet must be a decimal string of at most 64 characters, "
                 r"got 5001", id="long-plain-string"),
    # (was "bet 1E-7 ... unit 1E-6": str() of a Decimal turns to exponents below 0.000001)
    pytest.param("0.0000001", r"^bet 0\.0000001 is finer than the smallest unit 0\.000001$",
                 id="too-fine"),
    pytest.param(Decimal("1E+12"), r"^bet 1000000000000 is beyond the engine's range",
                 id="positive-exponent-beyond-range"),  # (was "bet 1E+12")
    pytest.param(Decimal("2.5000005"), r"^bet 2\.5000005 is finer than", id="too-fine-decimal"),
    # Written out it would be a million zeros: told with its exponent, in full.
    pytest.param(Decimal("1E-1000000"), r"^bet 1E-1000000 is finer than", id="far-too-fine"),
    pytest.param(Decimal("100000000000.000001"), r"^bet .*beyond the engine's range",
                 id="just-beyond-range"),
    pytest.param(10**11 + 1, r"^bet .*beyond the engine's range", id="int-beyond-range"),
    pytest.param(10**40, r"^bet .*beyond the engine's range", id="huge-int"),
    pytest.param(Decimal("1E+1000000"), r"^bet 1E\+1000000 is beyond the engine's range",
                 id="huge-exponent"),
    pytest.param(str(2**63), r"^bet .*beyond the engine's range", id="beyond-int64"),
    pytest.param(Decimal("1." + "0" * 5000 + "1"),
                 r"^bet 1\.0{62}\.\.\. \(5003 chars\) is finer than the smallest unit",
                 id="over-4300-digits-finer"),
    pytest.param(Decimal("0." + "0" * 5000 + "1"), r"^bet .* is finer than the smallest unit",
                 id="over-4300-zeros-finer"),
    pytest.param(Decimal("9" * 5000), r"^bet 9{64}\.\.\. \(5000 chars\) is beyond the engine",
                 id="over-4300-digits-beyond"),
    pytest.param(10**5000 - 1, r"^bet .* is beyond the engine's range", id="over-4300-digit-int"),
]


@pytest.mark.parametrize(("value", "pattern"), REFUSED)
def test_parse_amount_refuses(value: object, pattern: str) -> None:
    with pytest.raises(ValidationError, match=pattern) as info:
        parse_amount(value, name="bet")
    assert isinstance(info.value, ValueError)  # ValidationError is also a ValueError


@pytest.mark.parametrize("value", [Decimal("-0"), "-0", "-0.00"])
def test_a_zero_with_a_minus_sign_where_zero_is_allowed_is_refused_for_its_sign(
        value: object) -> None:
    """It was "seed must not be negative, got -0": -0 is no negative number."""
    with pytest.raises(ValidationError) as info:
        parse_amount(value, name="seed", allow_zero=True)
    assert str(info.value) == (
        f"seed must be 0 or positive, without a minus sign, got {Decimal(value)}")


def test_refusal_uses_the_given_argument_name() -> None:
    with pytest.raises(ValidationError, match=r"^seed must not be negative"):
        parse_amount("-1", name="seed", allow_zero=True)
    with pytest.raises(ValidationError, match=r"^amount .*not float"):
        parse_amount(1.0, name="amount")


def test_float_message_says_what_to_do() -> None:
    with pytest.raises(ValidationError, match=r"pass Decimal\('\.\.\.'\) or a string"):
        parse_amount(0.1, name="bet")


# -- parse_signed_amount (adjustments) ------------------------------------------------

@pytest.mark.parametrize(("value", "units"), [
    ("-5", -5_000_000), ("+5", 5_000_000), ("5", 5_000_000), (-5, -5_000_000),
    (Decimal("-2.500000"), -2_500_000), (Decimal("1E+2"), 100_000_000),
    (Decimal("-1." + "0" * 5000), -1_000_000), (-(10**11), -MAX_UNITS),
])
def test_parse_signed_amount_accepts(value: object, units: int) -> None:
    assert parse_signed_amount(value, name="delta") == units


@pytest.mark.parametrize(("value", "pattern"), [
    ("-+5", r"^delta must be a plain decimal string .*'-\+5'"),
    ("+-5", r"^delta must be a plain decimal string .*'\+-5'"),
    ("--5", r"^delta must be a plain decimal string .*'--5'"),
    ("- 5", r"^delta must be a plain decimal string"),
    (Decimal("NaN"), r"^delta must be a finite amount, got NaN"),
    (Decimal("-sNaN"), r"^delta must be a finite amount"),
    (Decimal("-Infinity"), r"^delta must be a finite amount"),
    ("-0", r"^delta must not be zero, got -0$"),
    ("0", r"^delta must not be zero, got 0$"),
    (Decimal("0E+5"), r"^delta must not be zero, got 0$"),  # (was "0E+5")
    # named without its sign ("delta 1E-7", "delta 100000000001"): not what was given
    (Decimal("-0.0000001"), r"^delta -0\.0000001 is finer than the smallest unit 0\.000001$"),
    ("-2.0000001", r"^delta -2\.0000001 is finer than the smallest unit"),
    (-(10**11) - 1, (r"^delta -100000000001 is beyond the engine's range \(at most "
                     r"100000000000\.000000 either way\)$")),
    (-1.5, r"^delta .*not float"),
    (True, r"^delta .*not bool"),
])
def test_parse_signed_amount_refuses(value: object, pattern: str) -> None:
    with pytest.raises(ValidationError, match=pattern):
        parse_signed_amount(value, name="delta")


# -- parse_rate -----------------------------------------------------------------

@pytest.mark.parametrize(("value", "parts"), [
    ("0.005", 5_000_000),
    (Decimal("0.000000001"), 1),
    ("0.999999999", 999_999_999),
    (Decimal("5E-3"), 5_000_000),
    (Decimal("0.0050000000000"), 5_000_000),
    (Decimal("0.5" + "0" * 5000), 500_000_000),  # more than 4300 digits, exactly 0.5
])
def test_parse_rate_accepts(value: object, parts: int) -> None:
    assert parse_rate(value, name="contribution_rate") == parts


@pytest.mark.parametrize(("value", "pattern"), [
    (0, r"^contribution_rate must be a rate in \(0, 1\), got 0"),
    ("0", r"^contribution_rate must be a rate in \(0, 1\)"),
    (1, r"^contribution_rate must be a rate in \(0, 1\), got 1"),
    ("1.0", r"^contribution_rate must be a rate in \(0, 1\)"),
    ("1.5", r"^contribution_rate must be a rate in \(0, 1\)"),
    ("-0.1", r"^contribution_rate must be a rate in \(0, 1\)"),
    (Decimal("-0"), r"^contribution_rate must be a rate in \(0, 1\)"),
    (Decimal("NaN"), r"^contribution_rate must be a rate in \(0, 1\)"),
    (Decimal("Infinity"), r"^contribution_rate must be a rate in \(0, 1\)"),
    (0.5, r"^contribution_rate .*not float"),
    (True, r"^contribution_rate .*not bool"),
    (None, r"^contribution_rate .*not NoneType"),
    ("half", r"^contribution_rate must be a plain decimal string"),
    ("0.0000000001",  # (was "contribution_rate 1E-10 ... rate step 1E-9")
     r"^contribution_rate 0\.0000000001 is finer than the smallest rate step 0\.000000001$"),
    (Decimal("0." + "1" * 5000), r"^contribution_rate 0\.1{62}\.\.\. \(5002 chars\) is finer"),
    (Decimal("1" * 5000), r"^contribution_rate must be a rate in \(0, 1\), got 1{64}\.\.\."),
])
def test_parse_rate_refuses(value: object, pattern: str) -> None:
    with pytest.raises(ValidationError, match=pattern):
        parse_rate(value, name="contribution_rate")


def test_parse_rate_zero_only_when_allowed() -> None:
    assert parse_rate("0", name="reserve_rate", allow_zero=True) == 0
    with pytest.raises(ValidationError, match=r"in \[0, 1\)"):
        parse_rate("1", name="reserve_rate", allow_zero=True)
    # -0 is in [0, 1): "must be a rate in [0, 1), got -0" named no reason
    with pytest.raises(ValidationError, match=(r"^reserve_rate must be a rate in \[0, 1\), "
                                               r"without a minus sign, got -0$")):
        parse_rate("-0", name="reserve_rate", allow_zero=True)
    with pytest.raises(ValidationError, match=r"^contribution_rate must be a rate in \(0, 1\), "
                                              r"got -0$"):
        parse_rate("-0", name="contribution_rate")


# -- conversions ------------------------------------------------------------------

def test_from_units_is_exact_with_six_places() -> None:
    assert from_units(1) == Decimal("0.000001")
    assert str(from_units(2_500_000)) == "2.500000"
    assert from_units(MAX_UNITS) == MAX
    assert from_units(0) == 0
    assert from_units(-12) == Decimal("-0.000012")


def test_rate_to_decimal_is_exact_and_normalized() -> None:
    assert str(rate_to_decimal(5_000_000)) == "0.005"
    assert rate_to_decimal(1) == Decimal("1E-9")
    assert rate_to_decimal(0) == 0


@given(st.integers(min_value=0, max_value=MAX_UNITS))
def test_units_round_trip(units: int) -> None:
    assert parse_amount(from_units(units), name="x", allow_zero=True) == units
    assert parse_amount(str(from_units(units)), name="x", allow_zero=True) == units


@given(st.integers(min_value=1, max_value=RATE_SCALE - 1))
def test_rate_round_trip(parts: int) -> None:
    assert parse_rate(rate_to_decimal(parts), name="r") == parts


@pytest.mark.parametrize(("value", "shown"), [
    ("1E-7", "0.0000001"), ("-1E-7", "-0.0000001"), ("1.50E+2", "150"), ("1E+3", "1000"),
    ("0E-7", "0.0000000"), ("-0", "-0"), ("2.5000005", "2.5000005"), ("0E+5", "0"),
    ("1E-61", "0." + "0" * 60 + "1"), ("-1E-61", "-0." + "0" * 60 + "1"),
    ("1E+61", "1" + "0" * 61),
    # Past 64 characters written out, the exponent stays: it is what tells the number
    # (written out, 1E-999999999 is a billion zeros, and a message shows 64 characters).
    ("-1E-62", "-1E-62"), ("1E+62", "1E+62"), ("1E-999999999", "1E-999999999"),
    ("NaN", "NaN"), ("-Infinity", "-Infinity"),
])
def test_plain_writes_a_decimal_without_an_exponent_and_every_digit(value: str,
                                                                    shown: str) -> None:
    # str() of a Decimal below 0.000001 is '1E-7': messages named amounts so.
    assert plain(Decimal(value)) == shown
    if "E" not in shown and Decimal(value).is_finite():
        assert Decimal(shown) == Decimal(value)


# -- independent of the caller's decimal context ----------------------------------------

HOSTILE_CONTEXTS = [
    pytest.param(Context(prec=4, Emax=5, Emin=-5, rounding=decimal.ROUND_DOWN,
                         traps=[decimal.Inexact, decimal.Rounded, decimal.Overflow,
                                decimal.Underflow, decimal.Subnormal, decimal.Clamped,
                                decimal.InvalidOperation]), id="low-precision-all-traps"),
    pytest.param(Context(prec=1, Emax=1, Emin=-1, rounding=decimal.ROUND_UP, traps=[]),
                 id="one-digit-no-traps"),
]


@pytest.mark.parametrize("context", HOSTILE_CONTEXTS)
def test_conversions_do_not_depend_on_the_callers_context(context: Context) -> None:
    with localcontext(context):
        assert str(from_units(1_000_123_456)) == "1000.123456"
        assert str(from_units(MAX_UNITS)) == "100000000000.000000"
        assert str(from_units(-12)) == "-0.000012"
        assert str(from_units(0)) == "0.000000"
        assert str(rate_to_decimal(123_456_789)) == "0.123456789"
        assert str(rate_to_decimal(5_000_000)) == "0.005"


@pytest.mark.parametrize("context", HOSTILE_CONTEXTS)
def test_parsing_does_not_depend_on_the_callers_context(context: Context) -> None:
    with localcontext(context):
        assert parse_amount("1000.123456", name="bet") == 1_000_123_456
        assert parse_amount(Decimal("99999999999.999999"), name="bet") == MAX_UNITS - 1
        assert parse_amount(10**11, name="bet") == MAX_UNITS
        assert parse_rate("0.123456789", name="r") == 123_456_789
        with pytest.raises(ValidationError, match="beyond the engine's range"):
            parse_amount("100000000000.000001", name="bet")
        with pytest.raises(ValidationError, match="finer than the smallest unit"):
            parse_amount("1000.1234567", name="bet")
        with pytest.raises(ValidationError, match="finer than the smallest rate step"):
            parse_rate("0.1234567891", name="r")


# -- the carried fraction -----------------------------------------------------------

def test_split_contribution_carries_the_fraction() -> None:
    # 0.000001 x 0.5 = half a unit: nothing credited yet, half carried
    assert split_contribution(1, RATE_SCALE // 2, 0) == (0, RATE_SCALE // 2)
    # the second half completes the unit
    assert split_contribution(1, RATE_SCALE // 2, RATE_SCALE // 2) == (1, 0)
    # 2.50 x 0.005 = 0.0125 exactly
    assert split_contribution(2_500_000, 5_000_000, 0) == (12_500, 0)
    # 0.000003 x 0.333333333 = 0.000000999999999: no unit, everything carried
    assert split_contribution(3, 333_333_333, 0) == (0, 999_999_999)
    assert split_contribution(3, 333_333_333, 1) == (1, 0)


bets = st.integers(min_value=1, max_value=MAX_UNITS // 1000)
rates = st.integers(min_value=1, max_value=RATE_SCALE - 1)


@given(st.lists(st.tuples(bets, rates), min_size=1, max_size=60))
def test_credited_units_plus_carry_equal_the_exact_sum(ops: list[tuple[int, int]]) -> None:
    """Over any bets and rates, units credited + carry/1e9 == sum of bet x rate, exactly."""
    credited, carry = 0, 0
    for bet, rate in ops:
        whole, carry = split_contribution(bet, rate, carry)
        assert whole >= 0
        assert 0 <= carry < RATE_SCALE
        credited += whole
    with localcontext() as ctx:
        ctx.prec = 200
        exact = sum(from_units(bet) * rate_to_decimal(rate) for bet, rate in ops)
        assert from_units(credited) + Decimal(carry) / RATE_SCALE / SCALE == exact
    # and the credited part is never a whole unit short of the exact sum
    assert exact - from_units(credited) < Decimal("0.000001")


@given(st.lists(bets, min_size=1, max_size=60), rates)
def test_constant_rate_credits_floor_of_exact_sum(bet_list: list[int], rate: int) -> None:
    credited, carry = 0, 0
    for bet in bet_list:
        whole, carry = split_contribution(bet, rate, carry)
        credited += whole
    assert credited == sum(bet_list) * rate // RATE_SCALE
    assert carry == sum(bet_list) * rate % RATE_SCALE


class Money(Decimal):
    """A currency-tagged Decimal, as a money library may make one: it compares only with
    its own kind and prints its currency."""

    __slots__ = ()

    def _same(self, other: object) -> None:
        if not isinstance(other, Money):
            msg = "compare Money with Money only"
            raise TypeError(msg)

    def __gt__(self, other: object) -> bool:
        self._same(other)
        return super().__gt__(other)  # type: ignore[operator]

    def __ge__(self, other: object) -> bool:
        self._same(other)
        return super().__ge__(other)  # type: ignore[operator]

    def __str__(self) -> str:
        return f"EUR {super().__str__()}"


def test_a_decimal_subclass_is_read_as_the_number_it_holds() -> None:
    """Its own comparisons and str() are not the engine's: was a TypeError, and 'EUR NaN'."""
    assert parse_amount(Money("2.50"), name="bet") == 2_500_000
    assert parse_signed_amount(Money("-2.50"), name="delta") == -2_500_000
    assert parse_rate(Money("0.01"), name="rate") == 10_000_000
    with pytest.raises(ValidationError, match=r"^bet 1\.0000001 is finer than"):
        parse_amount(Money("1.0000001"), name="bet")
    with pytest.raises(ValidationError, match=r"^bet must be a finite amount, got NaN$"):
        parse_amount(Money("NaN"), name="bet")


@given(st.decimals(allow_nan=False, allow_infinity=False, min_value=0),
       st.sampled_from([MAX_UNITS, 10**6, 123_456_789]))
def test_parse_amount_is_the_exact_value_in_units_or_a_refusal(d: Decimal, max_units: int
                                                               ) -> None:
    """Accepted exactly when the value is a whole number of units within the range.

    Held against exact rational arithmetic, for any digits and exponent
    (`parse_amount` scales the Decimal itself: no text, no float).
    """
    units = Fraction(d) * 10**6
    if d.is_signed() or units == 0 or units > max_units or units.denominator != 1:
        with pytest.raises(ValidationError):
            parse_amount(d, name="bet", max_units=max_units)
    else:
        assert parse_amount(d, name="bet", max_units=max_units) == units


@given(st.decimals(allow_nan=False, allow_infinity=False, min_value=0, max_value=1))
def test_parse_rate_is_the_exact_value_in_parts_or_a_refusal(d: Decimal) -> None:
    parts = Fraction(d) * 10**9
    if d.is_signed() or parts == 0 or d >= 1 or parts.denominator != 1:
        with pytest.raises(ValidationError):
            parse_rate(d, name="rate")
    else:
        assert parse_rate(d, name="rate") == parts


def test_a_long_exact_amount_is_read_without_text() -> None:
    """Thousands of digits (trailing zeros): read exactly, past int-from-text's 4300-digit limit."""
    assert parse_amount(Decimal("7." + "0" * 10_000), name="bet") == 7_000_000
    with pytest.raises(ValidationError, match="finer than the smallest unit"):
        parse_amount(Decimal("7." + "0" * 10_000 + "1"), name="bet")
    assert parse_amount(Decimal((0, (1,) * 5 + (0,) * 6000, -6000)), name="bet") == \
        11_111_000_000
