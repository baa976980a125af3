"""A catalogue of hostile input to every public call: refused by name, nothing changed.

Every row is one call with one hostile value: floats, NaN, signed zero,
infinities, huge and tiny Decimals, exponents, strings with spaces or
non-ASCII digits, booleans (True is an int), None, containers, empty, very
long and SQL-looking level names, a tuple where a name belongs, 10 KB and
non-string op_ids, and an op_id already used for another kind of operation.
For each: a `JackpotError` subclass (the exact class in the row), a message
that names the bad argument, and every table of the database unchanged
(content read through a separate read-only connection, before and after).

Unknown keyword arguments to a fixed signature raise TypeError as Python
does (tested apart); unknown config fields are a ValidationError.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from fractions import Fraction
from pathlib import Path
from typing import Any

import apsw
import pytest

from jackpot import (
    ConcurrencyViolationError,
    GroupConfig,
    GroupRetiredError,
    GroupSuspendedError,
    IdempotencyConflictError,
    InsufficientFundsError,
    JackpotEngine,
    JackpotError,
    Settings,
    UnknownGroupError,
    ValidationError,
    configure_logging,
    serve_metrics,
)

V, U = ValidationError, UnknownGroupError

HUGE_INT = 10**5000
"""Past Python's 4300-digit limit on int -> str: its repr() raises ValueError."""


class BadRepr:
    """A caller's object whose repr() raises: the refusal must still name the argument."""

    def __repr__(self) -> str:
        msg = "no repr"
        raise RuntimeError(msg)


UNPRINTABLE: list[tuple[str, object]] = [("over-4300-digits", HUGE_INT), ("bad-repr", BadRepr())]
"""Values an error message cannot show with repr()."""


def word(name: str) -> str:
    """A regex for `name` as a whole word: 'XXmin_betXX' does not name min_bet."""
    return rf"\b{re.escape(name)}\b"
Call = Callable[[JackpotEngine], object]


@dataclass(frozen=True)
class Case:
    id: str
    call: Call
    error: type[JackpotError]
    names: str  # a regex the message must match: the argument (or value) at fault


# -- the database, read from outside --------------------------------------------------------

def checksum(path: Path) -> str:
    """A digest of every table's rows and the schema, read in one read-only snapshot."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        conn.execute("BEGIN")
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_stat%' ORDER BY name")]
        content: list[Any] = [list(conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_stat%' "
            "ORDER BY type, name"))]
        content.extend((table, sorted(conn.execute(f'SELECT * FROM "{table}"'), key=repr))
                       for table in tables)
        conn.execute("ROLLBACK")
    finally:
        conn.close()
    return hashlib.sha256(repr(content).encode()).hexdigest()


LEVELS = [
    GroupConfig("minor", Decimal(10), Decimal("0.1"), cap=Decimal(500)),
    GroupConfig("major", Decimal(100), Decimal("0.01"), must_hit_by=Decimal(200),
                reserve_rate=Decimal("0.001")),
    GroupConfig("mega", Decimal(1000), Decimal("0.001"), min_bet=Decimal(1),
                max_contribution=Decimal(5)),
    GroupConfig("paused", Decimal(5), Decimal("0.05")),
    GroupConfig("gone", Decimal(5), Decimal("0.05")),
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[JackpotEngine, Path]]:
    """One engine with some history: used op_ids, a suspended and a retired level."""
    path = tmp_path_factory.mktemp("hostile") / "pools.db"
    engine = JackpotEngine.open(path, LEVELS, settings=Settings(enable_metrics=False,
                                                                log_level="error"))
    engine.contribute(Decimal(5), op_id="used-bet")
    engine.process_win("minor", op_id="used-win", amount=Decimal(1))
    engine.update_config("minor", op_id="used-config", contribution_rate=Decimal("0.05"))
    engine.suspend("paused", reason="maintenance", op_id="used-suspend")
    engine.retire("gone", transfer_to="minor", who="ops", reason="promotion over", op_id="used-retire")
    yield engine, path
    engine.close()


# -- hostile values --------------------------------------------------------------------------

HOSTILE_AMOUNTS: list[tuple[str, object]] = [
    ("float", 1.5),
    ("float-int", 2.0),
    ("float-nan", float("nan")),
    ("float-inf", float("inf")),
    ("float-neg-zero", -0.0),
    ("nan", Decimal("NaN")),
    ("snan", Decimal("sNaN")),
    ("inf", Decimal("Infinity")),
    ("neg-inf", Decimal("-Infinity")),
    ("neg-zero", Decimal("-0")),
    ("neg-zero-str", "-0.00"),
    ("huge-exp", Decimal("1E+40")),
    ("huge-exp-str", "1E+40"),
    ("tiny-exp", Decimal("1e-30")),
    ("tiny-exp-str", "1e-30"),
    ("finer-than-unit", Decimal("0.0000001")),
    ("finer-than-unit-str", "0.0000001"),
    ("finer-with-trailing-zeros", Decimal("1.0000001000")),
    ("finer-with-trailing-zeros-str", "2.50000010"),
    ("finer-than-rate-step", Decimal("0.0000000001")),
    ("finer-than-rate-step-str", "0.00000000010"),
    ("absurd-exp", Decimal("1E+999999999")),
    ("absurd-neg-exp", Decimal("1E-999999999")),
    ("beyond-range", Decimal("100000000000.000001")),
    ("huge-int", 10**40),
    ("negative", -1),
    ("negative-str", "-2.50"),
    ("minus-plus", "-+5"),
    ("plus-minus", "+-5"),
    ("minus-minus", "--5"),
    ("space-before", " 1"),
    ("space-after", "1 "),
    ("space-inside", "1 000"),
    ("comma", "1,5"),
    ("underscore", "1_000"),
    ("hex", "0x10"),
    ("fullwidth-digits", "\uff11\uff12"),
    ("arabic-indic-digits", "\u0661\u0662"),
    ("superscript", "\u00b2"),
    ("word-nan", "NaN"),
    ("word-inf", "Infinity"),
    ("empty", ""),
    ("letters", "abc"),
    ("long-digits-str", "1" * 10_240),
    # past Python's 4300-digit limit on str -> int: refused by name, not a ValueError
    ("over-4300-digits-finer", Decimal("1." + "0" * 5000 + "1")),
    ("over-4300-digits-beyond", Decimal("9" * 5000)),
    ("over-4300-digits-beyond-int", 10**5000 - 1),
    ("true", True),
    ("false", False),
    ("none", None),
    ("list", [1]),
    ("tuple", (1,)),
    ("dict", {"value": 1}),
    ("bytes", b"1"),
    ("complex", complex(1, 0)),
    ("fraction", Fraction(1, 2)),
    ("object", object()),
]

HOSTILE_TEXT: list[tuple[str, object]] = [
    ("10kb", "x" * 10_240),
    ("257-chars", "x" * 257),
    ("int", 5),
    ("float", 1.5),
    ("true", True),
    ("bytes", b"op"),
    ("empty", ""),
    ("blank", "   "),
    ("newline", "a\nb"),
    ("nul", "a\x00b"),
    ("list", ["op"]),
    ("tuple", ("op",)),
    ("decimal", Decimal(1)),
]

HOSTILE_NAMES: list[tuple[str, object, type[JackpotError], str]] = [
    ("empty", "", V, "group"),
    ("65-chars", "m" * 65, V, "group"),
    ("10kb", "m" * 10_240, V, "group"),
    ("sql", "minor'; DROP TABLE levels; --", V, "group"),
    ("sql-quote", 'minor" OR 1=1', V, "group"),
    ("space", " minor", V, "group"),
    ("unicode", "m\u00ednor", V, "group"),
    ("nul", "minor\x00", V, "group"),
    ("tuple", ("minor",), V, "group"),
    ("list", ["minor"], V, "group"),
    ("none", None, V, "group"),
    ("int", 5, V, "group"),
    ("true", True, V, "group"),
    ("bytes", b"minor", V, "group"),
    ("upper-case", "MINOR", U, "unknown level 'MINOR'"),
    ("unknown", "jumbo", U, "unknown level 'jumbo'"),
    ("64-chars-unknown", "m" * 64, U, "unknown level"),
]


def _amount_cases(label: str, arg: str, call: Callable[[object], Call], *,
                  valid: tuple[str, ...] = ()) -> list[Case]:
    return [Case(f"{label}-{vid}", call(value), V, word(arg))
            for vid, value in HOSTILE_AMOUNTS if vid not in valid]


def _valid_for(field: str) -> tuple[str, ...]:
    if field.endswith("rate"):  # rates are exact to 1e-9: 1e-7 is a valid rate
        return ("finer-than-unit", "finer-than-unit-str")
    # (and 1.0000001 is not a rate at all: it is refused as >= 1, by name, too)
    if field in ("cap", "min_bet", "max_contribution", "must_hit_by"):
        return ("none",)  # None removes an optional setting
    return ()


AMOUNT_CASES = [
    *_amount_cases("contribute-bet", "bet", lambda v: lambda e: e.contribute(v, op_id="b1")),
    *_amount_cases("contribute-one-level-bet", "bet",
                   lambda v: lambda e: e.contribute(v, groups="minor")),
    *_amount_cases("win-amount", "amount",
                   lambda v: lambda e: e.process_win("minor", amount=v, op_id="w1"),
                   valid=("none",)),
    *_amount_cases("win-expected_amount", "expected_amount",
                   lambda v: lambda e: e.process_win("minor", expected_amount=v),
                   valid=("none",)),
    *_amount_cases("adjust-delta", "delta",
                   lambda v: lambda e: e.adjust("minor", v, who="ops", reason="r", op_id="a1"),
                   # negative deltas are the point of adjust
                   valid=("negative", "negative-str")),
    *[case
      for field in ("seed", "contribution_rate", "reserve_rate", "cap", "min_bet",
                    "max_contribution", "must_hit_by")
      for case in _amount_cases(
          f"update_config-{field}", field,
          lambda v, f=field: lambda e: e.update_config("major", op_id="c1", **{f: v}),
          valid=_valid_for(field))],
    *[case
      for field in ("seed", "contribution_rate", "reserve_rate", "cap", "min_bet",
                    "max_contribution", "must_hit_by")
      for case in _amount_cases(
          f"GroupConfig-{field}", field,
          lambda v, f=field: lambda e: GroupConfig(
              **{"name": "fresh", "seed": Decimal(1), "contribution_rate": Decimal("0.1"),
                 f: v}),
          valid=_valid_for(field))],
]


def _text_cases(arg: str, calls: dict[str, Callable[[object], Call]]) -> list[Case]:
    return [Case(f"{label}-{arg}-{vid}", call(value), V, word(arg))
            for label, call in calls.items() for vid, value in HOSTILE_TEXT]


OP_ID_CALLS: dict[str, Callable[[object], Call]] = {
    "contribute": lambda v: lambda e: e.contribute(Decimal(1), op_id=v),
    "win": lambda v: lambda e: e.process_win("minor", op_id=v),
    "update_config": lambda v: lambda e: e.update_config("minor", seed=Decimal(3), op_id=v),
    "suspend": lambda v: lambda e: e.suspend("minor", reason="r", op_id=v),
    "resume": lambda v: lambda e: e.resume("paused", op_id=v),
    "adjust": lambda v: lambda e: e.adjust("minor", Decimal(1), who="ops", reason="r", op_id=v),
    "retire": lambda v: lambda e: e.retire("mega", transfer_to="minor", who="ops", reason="r", op_id=v),
}

TEXT_CASES = [
    *_text_cases("op_id", OP_ID_CALLS),
    *_text_cases("winner", {"win": lambda v: lambda e: e.process_win("minor", winner=v)}),
    *_text_cases("who", {
        "update_config": lambda v: lambda e: e.update_config("minor", seed=Decimal(3), who=v),
        "suspend": lambda v: lambda e: e.suspend("minor", reason="r", who=v),
        "resume": lambda v: lambda e: e.resume("paused", who=v),
        "adjust": lambda v: lambda e: e.adjust("minor", Decimal(1), reason="r", who=v),
        "retire": lambda v: lambda e: e.retire("mega", transfer_to="minor", reason="r", who=v),
    }),
    *_text_cases("reason", {
        "update_config": lambda v: lambda e: e.update_config("minor", seed=Decimal(3),
                                                             reason=v),
        "suspend": lambda v: lambda e: e.suspend("minor", reason=v),
        "resume": lambda v: lambda e: e.resume("paused", reason=v),
        "adjust": lambda v: lambda e: e.adjust("minor", Decimal(1), who="ops", reason=v),
        "retire": lambda v: lambda e: e.retire("mega", transfer_to="minor", who="ops", reason=v),
    }),
    # A reason is required for these.
    Case("suspend-reason-none", lambda e: e.suspend("minor", reason=None), V, "reason"),
    Case("adjust-reason-none", lambda e: e.adjust("minor", 1, who="ops", reason=None), V, "reason"),
    Case("retire-reason-none", lambda e: e.retire("mega", transfer_to="minor", who="ops", reason=None),
         V, "reason"),
]

NAME_CALLS: dict[str, Callable[[object], Call]] = {
    "contribute-groups": lambda v: lambda e: e.contribute(Decimal(1), groups=[v]),
    "win": lambda v: lambda e: e.process_win(v, op_id="w1"),
    "update_config": lambda v: lambda e: e.update_config(v, seed=Decimal(3)),
    "suspend": lambda v: lambda e: e.suspend(v, reason="r"),
    "resume": lambda v: lambda e: e.resume(v),
    "adjust": lambda v: lambda e: e.adjust(v, Decimal(1), who="ops", reason="r"),
    "retire": lambda v: lambda e: e.retire(v, transfer_to="minor", who="ops", reason="r"),
    "pool": lambda v: lambda e: e.pool(v),
    "history": lambda v: lambda e: e.history(v),
}

NAME_CASES = [
    Case(f"{label}-name-{vid}", call(value), error, re.escape(names))
    for label, call in NAME_CALLS.items()
    for vid, value, error, names in HOSTILE_NAMES
    # A single name is a valid `groups=[...]` entry only as a str; a list inside the
    # list is refused like any non-str.
]

GROUPS_CASES = [
    Case("groups-empty-list", lambda e: e.contribute(1, groups=[]), V, "groups is empty"),
    Case("groups-twice", lambda e: e.contribute(1, groups=["minor", "minor"]), V, "twice"),
    Case("groups-int", lambda e: e.contribute(1, groups=5), V, "groups"),
    Case("groups-true", lambda e: e.contribute(1, groups=True), V, "groups"),
    Case("groups-dict", lambda e: e.contribute(1, groups={"minor": 1}), V, "groups"),
    Case("groups-bytes", lambda e: e.contribute(1, groups=b"minor"), V, "groups"),
    Case("groups-empty-str", lambda e: e.contribute(1, groups=""), V, "group"),
    Case("groups-sql", lambda e: e.contribute(1, groups="minor'; DROP TABLE ledger; --"), V,
         "group"),
    Case("groups-nested-tuple", lambda e: e.contribute(1, groups=[("minor",)]), V, "group"),
    Case("groups-with-none", lambda e: e.contribute(1, groups=["minor", None]), V, "group"),
    Case("groups-unknown-among-known", lambda e: e.contribute(1, groups=["minor", "jumbo"]),
         U, "unknown level 'jumbo'"),
    Case("groups-suspended", lambda e: e.contribute(1, groups=["minor", "paused"]),
         GroupSuspendedError, "paused"),
    Case("groups-retired", lambda e: e.contribute(1, groups=["gone", "minor"]),
         GroupRetiredError, "gone"),
]

VERSION_CASES = [
    Case(f"{label}-expected_version-{vid}", call(value), V, word("expected_version"))
    for label, call in {
        "win": lambda v: lambda e: e.process_win("minor", expected_version=v),
        "update_config": lambda v: lambda e: e.update_config("minor", seed=Decimal(3),
                                                             expected_version=v),
    }.items()
    for vid, value in [("true", True), ("false", False), ("zero", 0), ("negative", -1),
                       ("float", 1.0), ("str", "3"), ("decimal", Decimal(3)),
                       ("list", [3]), ("huge-float", 1e300),
                       # no level passes what SQLite's integers hold: was a ConcurrencyViolationError
                       ("beyond-int64", 2**63), *UNPRINTABLE]
]

CONFIG_CASES = [
    Case("config-unknown-field", lambda e: e.update_config("minor", colour="red"), V, "colour"),
    Case("config-name-field", lambda e: e.update_config("minor", name="x"), V, "'name'"),
    Case("config-version-field", lambda e: e.update_config("minor", version=9), V, "'version'"),
    Case("config-amount-field", lambda e: e.update_config("minor", amount=Decimal(1)), V,
         "'amount'"),
    Case("config-nothing", lambda e: e.update_config("minor"), V, "no config change"),
    Case("config-seed-none", lambda e: e.update_config("minor", seed=None), V, "seed"),
    Case("config-rate-none", lambda e: e.update_config("minor", contribution_rate=None), V,
         "contribution_rate"),
    Case("config-rate-zero", lambda e: e.update_config("minor", contribution_rate=0), V,
         "contribution_rate"),
    Case("config-rate-one", lambda e: e.update_config("minor", contribution_rate=1), V,
         "contribution_rate"),
    Case("config-rates-sum-to-one", lambda e: e.update_config(
        "minor", contribution_rate=Decimal("0.5"), reserve_rate=Decimal("0.5")), V,
        "reserve_rate"),
    Case("config-cap-below-amount", lambda e: e.update_config("minor", cap=Decimal(11)), V,
         "cap"),
    Case("config-cap-below-must_hit_by", lambda e: e.update_config("major", cap=Decimal(150)),
         V, "cap"),
    Case("config-must_hit_by-at-seed", lambda e: e.update_config("major",
                                                                 must_hit_by=Decimal(100)),
         V, "must_hit_by"),
    Case("config-pending-seed-above-cap", lambda e: e.update_config("minor", seed=Decimal(600)),
         V, "cap"),
    *[Case(f"config-overflow_to-{vid}", lambda e, v=v: e.update_config("minor", overflow_to=v),
           V, "overflow_to")
      for vid, v in [("none", None), ("empty", ""), ("upper", "METER"), ("list", ["meter"]),
                     ("int", 1), ("true", True), ("sql", "meter'; --"), *UNPRINTABLE]],
    Case("config-retired", lambda e: e.update_config("gone", seed=Decimal(3)),
         GroupRetiredError, "retired"),
    Case("config-stale-version", lambda e: e.update_config("minor", seed=Decimal(3),
                                                           expected_version=1),
         ConcurrencyViolationError, "expected"),
]

STATE_CASES = [
    Case("win-more-than-pool", lambda e: e.process_win("minor", amount=Decimal(10**6)),
         InsufficientFundsError, "amount"),
    Case("win-suspended", lambda e: e.process_win("paused"), GroupSuspendedError, "suspended"),
    Case("win-retired", lambda e: e.process_win("gone"), GroupRetiredError, "retired"),
    Case("win-stale-version", lambda e: e.process_win("minor", expected_version=1),
         ConcurrencyViolationError, "expected"),
    Case("win-moved-amount", lambda e: e.process_win("minor", expected_amount=Decimal(1)),
         ConcurrencyViolationError, "expected"),
    Case("adjust-below-zero", lambda e: e.adjust("minor", Decimal(-10**6), who="ops", reason="r"),
         InsufficientFundsError, "below zero"),
    Case("adjust-above-cap", lambda e: e.adjust("minor", Decimal(10**4), who="ops", reason="r"),
         V, "above"),
    Case("adjust-past-must_hit_by", lambda e: e.adjust("major", Decimal(101), who="ops", reason="r"),
         V, "above"),
    Case("adjust-retired", lambda e: e.adjust("gone", Decimal(1), who="ops", reason="r"),
         GroupRetiredError, "retired"),
    Case("suspend-suspended", lambda e: e.suspend("paused", reason="r"), V, "already"),
    Case("resume-active", lambda e: e.resume("minor"), V, "already"),
    Case("resume-retired", lambda e: e.resume("gone"), GroupRetiredError, "retired"),
    Case("retire-into-itself", lambda e: e.retire("minor", transfer_to="minor", who="ops", reason="r"),
         V, "transfer_to"),
    Case("retire-into-retired", lambda e: e.retire("minor", transfer_to="gone", who="ops", reason="r"),
         GroupRetiredError, "retired"),
    Case("retire-retired", lambda e: e.retire("gone", transfer_to="minor", who="ops", reason="r"),
         GroupRetiredError, "retired"),
    Case("retire-into-unknown", lambda e: e.retire("minor", transfer_to="jumbo", who="ops", reason="r"),
         U, "unknown level 'jumbo'"),
    Case("contribute-above-max_contribution", lambda e: e.contribute(Decimal(10**4)), V,
         "max_contribution"),
    Case("contribute-too-many-hits", lambda e: e.contribute(Decimal(10**7), groups="major"), V,
         "more than 100 hits"),
    Case("contribute-beyond-range", lambda e: e.contribute(Decimal(10**11) + 1), V, "bet"),
]

USED = {"used-bet": "contribute", "used-win": "win", "used-config": "update_config",
        "used-suspend": "suspend", "used-retire": "retire"}

REPLAYED_OP_ID_CASES = [
    Case(f"op_id-{used}-reused-for-{label}", call(used), IdempotencyConflictError,
         f"op_id '{used}'")
    for used, kind in USED.items()
    for label, call in OP_ID_CALLS.items()
    if label != kind  # another kind of operation
] + [
    Case("op_id-used-bet-other-bet", lambda e: e.contribute(Decimal(6), op_id="used-bet"),
         IdempotencyConflictError, "op_id 'used-bet'"),
    Case("op_id-used-bet-other-groups", lambda e: e.contribute(Decimal(5), groups="minor",
                                                               op_id="used-bet"),
         IdempotencyConflictError, "op_id 'used-bet'"),
    Case("op_id-used-win-whole", lambda e: e.process_win("minor", op_id="used-win"),
         IdempotencyConflictError, "op_id 'used-win'"),
    Case("op_id-used-win-other-winner", lambda e: e.process_win(
        "minor", amount=Decimal(1), winner="someone", op_id="used-win"),
         IdempotencyConflictError, "op_id 'used-win'"),
    Case("op_id-used-config-other-change", lambda e: e.update_config(
        "minor", contribution_rate=Decimal("0.06"), op_id="used-config"),
         IdempotencyConflictError, "op_id 'used-config'"),
]

HISTORY_CASES = [
    Case(f"history-limit-{vid}", lambda e, v=v: e.history("minor", limit=v), V, word("limit"))
    for vid, v in [("zero", 0), ("negative", -1), ("true", True), ("false", False),
                   ("float", 1.0), ("str", "3"), ("none", None), ("decimal", Decimal(3)),
                   ("too-many", 10_001), ("huge", 10**40), *UNPRINTABLE]
]

_GOOD = {"name": "fresh", "seed": Decimal(1), "contribution_rate": Decimal("0.1")}

GROUPCONFIG_CASES = [
    *[Case(f"GroupConfig-name-{vid}", lambda e, v=v: GroupConfig(**{**_GOOD, "name": v}),
           V, word("name"))
      for vid, v, error, _ in HOSTILE_NAMES if error is V],
    Case("GroupConfig-cap-below-seed", lambda e: GroupConfig(**_GOOD, cap=Decimal("0.5")), V,
         "cap"),
    Case("GroupConfig-must_hit_by-at-seed", lambda e: GroupConfig(**_GOOD,
                                                                  must_hit_by=Decimal(1)),
         V, "must_hit_by"),
    Case("GroupConfig-rates-sum-to-one", lambda e: GroupConfig(
        **{**_GOOD, "contribution_rate": Decimal("0.6")}, reserve_rate=Decimal("0.4")),
         V, "reserve_rate"),
    *[Case(f"GroupConfig-overflow_to-{vid}",
           lambda e, v=v: GroupConfig(**_GOOD, overflow_to=v), V, "overflow_to")
      for vid, v in [("none", None), ("upper", "RESERVE"), ("list", ["meter"]), ("int", 0),
                     *UNPRINTABLE]],
]


OPEN_GROUPS: list[tuple[str, object, str]] = [
    ("str", "minor", "groups"),
    ("list-of-none", [None], "groups"),
    ("list-of-names", ["minor"], "groups"),
    ("list-of-dicts", [{"name": "minor"}], "groups"),
    ("duplicate", [LEVELS[0], LEVELS[0]], "twice"),
    ("duplicate-name-other-config",
     [LEVELS[0], GroupConfig("minor", Decimal(1), Decimal("0.5"))], "twice"),
]

SETTINGS_FIELDS_INT = ("max_retry_attempts", "retry_delay_ms", "lock_timeout_ms",
                       "concurrency_check_interval_ms", "health_probe_timeout_ms",
                       "health_min_operations", "health_min_lock_success_pct",
                       "health_failing_lock_success_pct", "health_max_conflict_pct")

SETTINGS_CASES = [
    *[Case(f"Settings-{field}-{vid}", lambda e, f=field, v=v: Settings(**{f: v}), V,
           word(field))
      for field in SETTINGS_FIELDS_INT
      for vid, v in [("true", True), ("float", 1.5), ("str", "5"), ("none", None),
                     ("negative", -1), ("huge", 10**20), ("decimal", Decimal(5)),
                     *UNPRINTABLE]],
    *[Case(f"Settings-enable_metrics-{vid}", lambda e, v=v: Settings(enable_metrics=v), V,
           "enable_metrics")
      for vid, v in [("int", 1), ("str", "true"), ("none", None), *UNPRINTABLE]],
    *[Case(f"Settings-log_level-{vid}", lambda e, v=v: Settings(log_level=v), V, "log_level")
      for vid, v in [("upper-unknown", "LOUD"), ("empty", ""), ("list", ["info"]),
                     ("unknown", "loud"), *UNPRINTABLE]],
    *[Case(f"Settings-synchronous-{vid}", lambda e, v=v: Settings(synchronous=v), V,
           "synchronous")
      for vid, v in [("off", "OFF"), ("lower-off", "off"), ("none", None), ("sql", "FULL; --"),
                     *UNPRINTABLE]],
    *[Case(f"Settings-from_env-override-{vid}",
           lambda e, v=v: Settings.from_env({}, lock_timeout_ms=v), V, "lock_timeout_ms")
      for vid, v in UNPRINTABLE],
    *[Case(f"Settings-from_env-{var}-{vid}",
           lambda e, var=var, v=v: Settings.from_env({var: v}), V, var)
      for var, values in [
          ("JACKPOT_LOCK_TIMEOUT_MS", [("fullwidth", "\uff15\uff10"), ("negative", "-5"),
                                       ("exponent", "1e3"), ("inner-blank", "5 0"), ("word", "abc"),
                                       ("float", "5.0"), ("zero", "0")]),
          ("JACKPOT_MAX_RETRY_ATTEMPTS", [("arabic-indic", "\u0663"), ("huge", "9" * 40)]),
          ("JACKPOT_ENABLE_METRICS", [("maybe", "maybe"), ("two-words", "yes please")]),
          ("JACKPOT_LOG_LEVEL", [("loud", "loud")]),
          ("JACKPOT_SYNCHRONOUS", [("off", "off")]),
      ]
      for vid, v in values],
]

CASES = [*AMOUNT_CASES, *TEXT_CASES, *NAME_CASES, *GROUPS_CASES, *VERSION_CASES,
         *CONFIG_CASES, *STATE_CASES, *REPLAYED_OP_ID_CASES, *HISTORY_CASES,
         *GROUPCONFIG_CASES, *SETTINGS_CASES]


def test_the_checksum_sees_every_change(tmp_path: Path) -> None:
    """So that "unchanged" means something: a refused-looking no-op would show."""
    path = tmp_path / "pools.db"
    with JackpotEngine.open(path, LEVELS[:1], settings=Settings(enable_metrics=False)) as e:
        sums = [checksum(path)]
        e.contribute(Decimal("0.000001"), op_id="tiny")  # adds 0 units, a carried fraction
        sums.append(checksum(path))
        e.suspend("minor", reason="r")
        sums.append(checksum(path))
    assert len(set(sums)) == len(sums)


VALID_SPELLINGS: list[tuple[str, object, Decimal]] = [
    ("int", 2, Decimal(2)),
    ("decimal", Decimal("2.5"), Decimal("2.5")),
    ("trailing-zeros", Decimal("2.500000000000"), Decimal("2.5")),
    ("trailing-zeros-str", "2.500000000000", Decimal("2.5")),
    ("leading-zeros-str", "0002.5", Decimal("2.5")),
    ("plus-sign-str", "+2.5", Decimal("2.5")),
    ("exponent-decimal", Decimal("25E-1"), Decimal("2.5")),
    ("positive-exponent-decimal", Decimal("1E+1"), Decimal(10)),
    ("64-chars-str", "0" * 62 + "25", Decimal(25)),
    ("smallest", "0.000001", Decimal("0.000001")),
    ("largest", Decimal(10**11), Decimal(10**11)),
]


@pytest.mark.parametrize(("vid", "value", "exact"), VALID_SPELLINGS,
                         ids=[v[0] for v in VALID_SPELLINGS])
def test_every_valid_spelling_of_an_amount_is_accepted_exactly(
        tmp_path: Path, vid: str, value: object, exact: Decimal) -> None:
    """The other side of the catalogue: refusing too much is a bug as well."""
    del vid
    levels = [GroupConfig("minor", Decimal(0), Decimal("0.5")),
              GroupConfig("spare", Decimal(0), Decimal("0.5"))]
    half = Decimal(int(exact * 10**6) // 2) / 10**6  # what half the bet adds, in units
    with JackpotEngine.open(tmp_path / "p.db", levels,
                            settings=Settings(enable_metrics=False)) as e:
        bet = e.contribute(value, groups="minor", op_id="bet")  # type: ignore[arg-type]
        assert bet.contributions == {"minor": half}
        assert e.contribute(exact, groups="minor", op_id="bet").replayed is True
        assert e.pool("minor").meters["wagered"] == exact
        e.adjust("spare", value, who="ops", reason="r")  # type: ignore[arg-type]
        assert e.pool("spare").amount == exact
        win = e.process_win("spare", amount=value)  # type: ignore[arg-type]
        assert (win.amount, win.balance) == (exact, 0)
        assert e.update_config("spare", cap=value).after["cap"] == f"{exact:.6f}"


def test_the_catalogue_has_no_duplicate_ids() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) > 600


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_refused_by_name_and_changes_nothing(
        shared: tuple[JackpotEngine, Path], case: Case) -> None:
    engine, path = shared
    before = checksum(path)
    with pytest.raises(JackpotError) as caught:
        case.call(engine)
    assert type(caught.value) is case.error, repr(caught.value)
    assert re.search(case.names, str(caught.value)), (
        f"the message {str(caught.value)!r} does not name {case.names!r}")
    assert checksum(path) == before


@pytest.mark.parametrize(("vid", "groups", "names"), OPEN_GROUPS,
                         ids=[g[0] for g in OPEN_GROUPS])
def test_open_refuses_hostile_groups_before_touching_any_file(
        shared: tuple[JackpotEngine, Path], tmp_path: Path, vid: str, groups: object,
        names: str) -> None:
    del vid
    _, path = shared
    before = checksum(path)
    fresh = tmp_path / "fresh.db"
    for target in (path, fresh):  # an existing database, and a new one
        with pytest.raises(ValidationError, match=names):
            JackpotEngine.open(target, groups)  # type: ignore[arg-type]
    assert checksum(path) == before
    assert not fresh.exists()


def test_unknown_keyword_arguments_are_a_type_error_and_change_nothing(
        shared: tuple[JackpotEngine, Path]) -> None:
    engine, path = shared
    before = checksum(path)
    calls: list[Call] = [
        lambda e: e.contribute(1, group="minor"),  # type: ignore[call-arg]
        lambda e: e.contribute(1, op_id="k1", colour="red"),  # type: ignore[call-arg]
        lambda e: e.process_win("minor", amount_=1),  # type: ignore[call-arg]
        lambda e: e.suspend("minor", reason="r", until="never"),  # type: ignore[call-arg]
        lambda e: e.resume("paused", force=True),  # type: ignore[call-arg]
        lambda e: e.adjust("minor", 1, who="ops", reason="r", force=True),  # type: ignore[call-arg]
        lambda e: e.retire("mega", transfer_to="minor", who="ops", reason="r", x=1),  # type: ignore[call-arg]
        lambda e: e.history("minor", 3, newest=True),  # type: ignore[call-arg]
        lambda e: e.contribute(1, "minor"),  # groups is keyword-only
        lambda e: GroupConfig("x", 1, Decimal("0.1"), colour="red"),  # type: ignore[call-arg]
        lambda e: Settings(lock_timeout=5),  # type: ignore[call-arg]
    ]
    for call in calls:
        with pytest.raises(TypeError):
            call(engine)
    assert checksum(path) == before


def test_the_engine_still_works_after_the_catalogue(shared: tuple[JackpotEngine, Path]
                                                    ) -> None:
    """Nothing refused left a trace: the next real call continues the old versions."""
    engine, _ = shared
    before = engine.pool("minor")
    result = engine.contribute(Decimal(10), groups="minor", op_id="after-catalogue")
    assert result.versions == {"minor": before.version + 1}
    assert result.balances == {"minor": before.amount + Decimal("0.5")}
    report = engine.verify()
    assert report.ok, report.problems


@pytest.mark.parametrize(("path", "says"), [
    ("pools\x00.db", "NUL"),
    ("postgresql://u@h/db\x00", "NUL"),
    (b"pools.db", "not bytes"),
    (None, "not NoneType"),
    ("", "path is empty"),  # was "holds no jackpot database", leaving a file named -lock
    # was a lasting file named ':memory:' in the working directory, its ledger there next run
    (":memory:", "in-memory or URI syntax"),
    ("file::memory:?cache=shared", "in-memory or URI syntax"),
    ("file:pools.db?mode=rwc", "in-memory or URI syntax"),
    # was a SQLite file named after the connection string
    ("dbname=pools user=app", "looks like a libpq connection string"),
    ("host=db.internal port=5432 dbname=pools", "looks like a libpq connection string"),
    # were a UnicodeEncodeError from the driver: SQLite takes its file names in UTF-8
    # (built with chr(): ruff reads both surrogates as one character, a "duplicate")
    (f"pools{chr(0xD800)}.db", "cannot be written in UTF-8"),  # a lone surrogate
    (f"pools{chr(0xDC80)}.db", "cannot be written in UTF-8"),  # the byte 0x80, as os.fsdecode
])
def test_open_refuses_a_hostile_path_with_a_validation_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: object, says: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError, match=says):
        JackpotEngine.open(path)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_a_database_url_that_is_not_utf8_is_refused_without_its_password() -> None:
    """The refusal showed the whole URL, password and all, and said SQLite takes it."""
    url = f"postgresql://app:s3cret@db.internal/pools{chr(0xDC80)}"
    with pytest.raises(ValidationError) as refused:
        JackpotEngine.open(url)
    assert str(refused.value) == (
        r"path 'postgresql://app:***@db.internal/pools\udc80' cannot be written in UTF-8 "
        "(a lone surrogate, or text in another encoding): a postgresql:// URL is UTF-8 "
        "text; percent-encode any other byte")


@pytest.mark.parametrize("settings", [{"lock_timeout_ms": 100}, "fast", 5])
def test_open_refuses_settings_that_are_not_settings(tmp_path: Path, settings: object) -> None:
    with pytest.raises(ValidationError, match=r"settings must be a jackpot\.Settings"):
        JackpotEngine.open(tmp_path / "p.db", settings=settings)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []  # nothing created


@pytest.mark.parametrize("op_id", ["create:minor", "create:anything", "auto-1", "auto-"])
def test_an_op_id_that_looks_like_the_engines_own_is_refused(tmp_path: Path,
                                                             op_id: str) -> None:
    """Its ledger rows would be mistaken for the level's creation, or a generated op's."""
    with JackpotEngine.open(tmp_path / "p.db") as engine:
        with pytest.raises(ValidationError, match="must not start with 'auto-' or 'create:'"):
            engine.contribute("5", groups="major", op_id=op_id)
        assert engine.pools()["major"].version == 1
        assert engine.verify().ok



def _serve(path: Path, port: object) -> object:
    with JackpotEngine.open(path) as engine:
        return serve_metrics(engine, port)  # type: ignore[arg-type]


@pytest.mark.parametrize(("vid", "value"), UNPRINTABLE, ids=[v[0] for v in UNPRINTABLE])
@pytest.mark.parametrize(("call", "names"), [
    (lambda path, v: JackpotEngine.open(path, create=v), "create"),
    (lambda path, v: configure_logging(level=v), "level"),
    (_serve, "port"),
], ids=["open-create", "configure_logging-level", "serve_metrics-port"])
def test_calls_outside_an_engine_refuse_a_value_no_message_can_show(
        tmp_path: Path, vid: str, value: object, call: Callable[[Path, object], object],
        names: str) -> None:
    """As the catalogue: a ValidationError naming the argument, not the ValueError of repr()."""
    del vid
    handlers = list(logging.getLogger("jackpot").handlers)
    with pytest.raises(ValidationError, match=word(names)):
        call(tmp_path / "p.db", value)
    assert logging.getLogger("jackpot").handlers == handlers  # nothing configured


class Level(str, Enum):  # noqa: UP042 - the mix-in whose str() is not its value
    """How a game server may name its levels: a str whose str() is 'Level.MINOR'."""

    MINOR = "minor"
    SPARE = "spare"


class Overflow(str, Enum):  # noqa: UP042 - as Level
    RESERVE = "reserve"


class Tag(str):
    """A str subclass that prints otherwise (as an ORM's or a framework's may)."""

    __slots__ = ()

    def __str__(self) -> str:
        return "<tag>"


def test_a_str_subclass_is_taken_as_the_text_it_holds(tmp_path: Path) -> None:
    """An enum member of str (or any str subclass) means its value, everywhere.

    Was: the level's creation recorded as op_id 'create:Level.MINOR' (an
    f-string of the member), `overflow_to=Overflow.RESERVE` refused as
    'Overflow.RESERVE', and results holding the caller's objects where a
    replay of the same request holds plain str.
    """
    path = tmp_path / "p.db"
    config = GroupConfig(Level.MINOR, Decimal(10), Decimal("0.1"))
    assert type(config.name) is str
    with JackpotEngine.open(path, [config, GroupConfig("spare", Decimal(1), Decimal("0.1"))],
                            settings=Settings(enable_metrics=False)) as e:
        bet = e.contribute(Decimal(5), groups=[Level.MINOR], op_id=Tag("round-1"),
                           player=Tag("p-9"))
        again = e.contribute(Decimal(5), groups="minor", op_id="round-1", player="p-9")
        assert again.replayed
        assert type(bet.op_id) is str
        assert [type(k) for k in (*bet.contributions, *bet.balances, *bet.versions)] == [str] * 3
        win = e.process_win(Level.SPARE, amount=Decimal(1), winner=Tag("p-9"),
                            op_id=Tag("win-1"))
        assert (type(win.group), type(win.winner), type(win.op_id)) == (str, str, str)
        admin = e.adjust(Level.SPARE, Decimal(1), reason=Tag("r"), who=Tag("ops"))
        assert type(admin.group) is str
        assert [type(k) for k in (*admin.balances, *admin.versions)] == [str, str]
        changed = e.update_config(Level.MINOR, overflow_to=Overflow.RESERVE)
        assert changed.after["overflow_to"] == "reserve"
        assert e.verify().ok
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        rows = sorted(conn.execute("SELECT op_id, level, who FROM ledger WHERE op_id NOT LIKE "
                                   "'auto-%'"))
    finally:
        conn.close()
    assert rows == [("create:minor", "minor", None), ("create:spare", "spare", None),
                    ("round-1", "minor", None), ("win-1", "spare", "p-9")]


def test_open_refuses_a_working_directory_whose_name_is_not_utf8(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative path is resolved in the working directory; its name may not be UTF-8."""
    folder = tmp_path / "room-\udc80"  # a folder named with the byte 0x80
    folder.mkdir()
    monkeypatch.chdir(folder)
    with pytest.raises(ValidationError, match="cannot be written in UTF-8"):
        JackpotEngine.open("pools.db")
    assert list(folder.iterdir()) == []  # nothing created
