"""A database changed behind the engine's back: verify() must say exactly what is wrong.

The ledger and the idempotency records are append-only (triggers refuse
UPDATE and DELETE), but a hostile or broken writer can still insert rows or
rewrite a level's row. Each tampering here is done through a separate
connection; `verify()` must stop being ok and name the level, meter or op_id.
A forged idempotency record carries a fingerprint of the shape the engine
writes (`hex(zeroblob(32))`: 64 hexadecimal digits) unless the test is about it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import apsw
import pytest

from backends.contract import WEAKENED_INDEXES
from jackpot import GroupConfig, JackpotEngine, Settings, StorageError, ValidationError
from jackpot.storage import LedgerRow, Store
from jackpot.storage._sql_checks import ENGINE_CHECKS

DEEP = "[" * 100_000 + "]" * 100_000
"""JSON nested deeper than Python's parser (or SQLite's) goes: a RecursionError, not a ValueError."""

LEVELS = [GroupConfig("minor", Decimal(10), Decimal("0.1"), reserve_rate=Decimal("0.01")),
          GroupConfig("major", Decimal(100), Decimal("0.01"))]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[JackpotEngine]:
    e = JackpotEngine.open(tmp_path / "pools.db", LEVELS,
                           settings=Settings(enable_metrics=False, log_level="error"))
    e.contribute(Decimal(50), op_id="b1")
    e.process_win("minor", op_id="w1")
    yield e
    e.close()


def tamper(engine: JackpotEngine, sql: str, params: tuple[object, ...] = ()) -> None:
    conn = apsw.Connection(engine._path)
    try:
        conn.execute(sql, params)
    finally:
        conn.close()


def ledger_row(**overrides: object) -> tuple[str, tuple[object, ...]]:
    row: dict[str, object] = {
        "op_id": "forged", "kind": "adjust", "level": "minor", "delta": 0,
        "balance_after": 10_000_000, "reserve_delta": 0, "reserve_after": 500_000,
        "version_after": 5, "contributed": 0, "overflow": 0, "reserve_in": 0,
        "house_funded": 0, "reserve_funded": 0, "paid": 0, "adjusted": 0, "transferred": 0,
        "reserve_transferred": 0, "at_ms": 0, "who": None, "detail": json.dumps({})}
    row.update(overrides)
    sql = (f"INSERT INTO ledger ({', '.join(row)}) "
           f"VALUES ({', '.join('?' * len(row))})")
    return sql, tuple(row.values())


def problems(engine: JackpotEngine) -> list[str]:
    report = engine.verify()
    assert report.ok is (not report.problems)
    return report.problems


def test_the_untouched_database_verifies(engine: JackpotEngine) -> None:
    report = engine.verify()
    assert report.ok
    assert report.problems == []
    assert (report.levels, report.ledger_rows) == (2, 2 + 2 + 1)


def ghost_win(op_id: str) -> str:
    """A win's stored result as the engine writes one, for a win that never happened."""
    return json.dumps({"op_id": op_id, "group": "minor", "amount": "1.000000",
                       "balance": "10.000000", "version": 9, "winner": None, "reset": True,
                       "hit": False})


def test_an_idempotency_record_without_ledger_rows(engine: JackpotEngine) -> None:
    tamper(engine, "INSERT INTO operations (op_id, kind, fingerprint, result, at_ms) "
                   "VALUES ('ghost', 'win', hex(zeroblob(32)), ?, 0)", (ghost_win("ghost"),))
    assert problems(engine) == ["operation 'ghost' recorded without ledger rows"]


EMPTY_BET = {"op_id": "ghost", "contributions": {"minor": "0.000000"},
             "balances": {"minor": "10.000000"}, "versions": {"minor": 1}, "hits": []}


@pytest.mark.parametrize(("kind", "result"), [
    ("contribute", "not json"), ("contribute", DEEP), ("contribute", "[]"), ("win", "3"),
    ("contribute", "{}"), ("contribute", '{"contributions": [], "hits": []}'),
    ("win", "{}"),
    # Shaped like an empty bet, but a replay could not return it: no op_id,
    # balances or versions; another op_id; an amount that is not one.
    ("contribute", '{"contributions": {"minor": "0.000000"}, "hits": []}'),
    ("contribute", json.dumps({**EMPTY_BET, "op_id": "someone-else"})),
    ("contribute", json.dumps({**EMPTY_BET, "balances": {"minor": "ten"}})),
    ("adjust", json.dumps(EMPTY_BET))])
def test_an_idempotency_record_the_engine_never_wrote_is_reported_not_a_crash(
        engine: JackpotEngine, kind: str, result: str) -> None:
    # Not an empty bet (those keep their op_id without ledger rows), nor
    # anything a replay could return as the first result of 'ghost'.
    tamper(engine, "INSERT INTO operations (op_id, kind, fingerprint, result, at_ms) "
                   "VALUES ('ghost', ?, hex(zeroblob(32)), ?, 0)", (kind, result))
    assert problems(engine) == [
        "operation 'ghost' recorded without ledger rows (its stored result cannot be read)"]


def test_an_empty_bet_as_the_engine_writes_it_is_not_a_problem(
        engine: JackpotEngine) -> None:
    tamper(engine, "INSERT INTO operations (op_id, kind, fingerprint, result, at_ms) "
                   "VALUES ('ghost', 'contribute', hex(zeroblob(32)), ?, 0)",
           (json.dumps(EMPTY_BET),))
    assert problems(engine) == []


def test_two_idempotency_records_without_ledger_rows(engine: JackpotEngine) -> None:
    for op_id in ("ghost-1", "ghost-2"):
        tamper(engine, "INSERT INTO operations (op_id, kind, fingerprint, result, at_ms) "
                       "VALUES (?, 'win', hex(zeroblob(32)), ?, 0)", (op_id, ghost_win(op_id)))
    assert sorted(problems(engine)) == ["operation 'ghost-1' recorded without ledger rows",
                                        "operation 'ghost-2' recorded without ledger rows"]


@pytest.mark.parametrize(("records", "rest"), [
    (23, "3 more operations"), (21, "1 more operation")])  # (was "1 more operations")
def test_past_twenty_records_without_ledger_rows_the_rest_are_counted(
        engine: JackpotEngine, records: int, rest: str) -> None:
    for i in range(records):
        tamper(engine, "INSERT INTO operations (op_id, kind, fingerprint, result, at_ms) "
                       "VALUES (?, 'win', hex(zeroblob(32)), ?, 0)",
               (f"ghost-{i:02}", ghost_win(f"ghost-{i:02}")))
    found = problems(engine)
    assert found == [*(f"operation 'ghost-{i:02}' recorded without ledger rows"
                       for i in range(20)),
                     f"... and {rest} recorded without ledger rows"]


def test_records_without_ledger_rows_are_looked_for_only_when_some_are_missing(
        engine: JackpotEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    # Looking for them reads every ledger row's op_id; when every record
    # streamed by with its ledger rows (counted), there is none to look for.
    calls: list[list[str]] = []
    look = Store.operation_ids_without_ledger
    monkeypatch.setattr(Store, "operation_ids_without_ledger",
                        lambda store: calls.append(look(store)) or calls[-1])
    assert problems(engine) == []
    assert calls == []
    tamper(engine, "INSERT INTO operations (op_id, kind, fingerprint, result, at_ms) "
                   "VALUES ('ghost', 'win', hex(zeroblob(32)), ?, 0)", (ghost_win("ghost"),))
    assert problems(engine) == ["operation 'ghost' recorded without ledger rows"]
    assert calls == [["ghost"]]


def test_a_pool_rewritten_in_place(engine: JackpotEngine) -> None:
    tamper(engine, "UPDATE levels SET amount = amount + 1 WHERE name = 'major'")
    assert problems(engine) == [
        "major: ledger sums to 100.500000, level holds 100.500001",
        ("major: opening + contributions + seed funding + adjustments - wins - overflow = "
         "100.500000, pool holds 100.500001")]


def test_a_meter_problem_gives_amounts_in_currency_and_counts_as_counts(
        engine: JackpotEngine) -> None:
    before = engine.pool("minor").meters
    tamper(engine, "UPDATE levels SET m_wagered = m_wagered + 1500000, m_bets = m_bets + 1 "
                   "WHERE name = 'minor'")
    wagered, bets = Decimal(before["wagered"]), before["bets"]
    assert problems(engine) == [
        f"minor: meter bets is {bets + 1}, ledger says {bets}",
        f"minor: meter wagered is {wagered + Decimal('1.5'):f}, ledger says {wagered:f}"]


POOL_IDENTITY = "minor: opening + contributions + seed funding + adjustments - wins - overflow = "
RESERVE_IDENTITY = "minor: reserve meters do not add up to the reserve"


METERS = [  # (meter, its value, the identity lines one more unit of it also breaks)
    ("bets", "1", []), ("wagered", "50.000000", []), ("wins", "1", []), ("hits", "0", []),
    # A meter of the pool's identity breaks it; one of the reserve's breaks that one.
    ("contributed", "5.000000", [f"{POOL_IDENTITY}10.000001, pool holds 10.000000"]),
    ("overflow", "0.000000", [f"{POOL_IDENTITY}9.999999, pool holds 10.000000"]),
    ("house_funded", "19.500000", [f"{POOL_IDENTITY}10.000001, pool holds 10.000000"]),
    ("won", "15.000000", [f"{POOL_IDENTITY}9.999999, pool holds 10.000000"]),
    ("adjusted", "0.000000", [f"{POOL_IDENTITY}10.000001, pool holds 10.000000"]),
    ("transferred", "0.000000", [f"{POOL_IDENTITY}10.000001, pool holds 10.000000"]),
    ("reserve_in", "0.500000", [RESERVE_IDENTITY]),
    ("reserve_transferred", "0.000000", [RESERVE_IDENTITY]),
    ("reserve_funded", "0.500000",
     [f"{POOL_IDENTITY}10.000001, pool holds 10.000000", RESERVE_IDENTITY]),
]


@pytest.mark.parametrize(("meter", "was", "also"), METERS, ids=[m[0] for m in METERS])
def test_a_meter_rewritten_in_place(engine: JackpotEngine, meter: str, was: str,
                                    also: list[str]) -> None:
    tamper(engine, f"UPDATE levels SET m_{meter} = m_{meter} + 1 WHERE name = 'minor'")
    now = str(int(was) + 1) if "." not in was else f"{Decimal(was) + Decimal('0.000001'):f}"
    assert problems(engine) == [f"minor: meter {meter} is {now}, ledger says {was}", *also]


def test_a_version_rewritten_in_place(engine: JackpotEngine) -> None:
    tamper(engine, "UPDATE levels SET version = version + 1 WHERE name = 'minor'")
    assert problems(engine) == [
        "minor: ledger versions 1..3 in 3 rows, level is at version 4 (expected 1..4)"]


def test_a_forged_ledger_row_that_does_not_add_up(engine: JackpotEngine) -> None:
    sql, params = ledger_row(delta=5, balance_after=999)
    tamper(engine, sql, params)
    assert problems(engine) == [
        "minor: ledger versions 1..5 in 4 rows, level is at version 3 (expected 1..3)",
        "minor: ledger sums to 10.000005, level holds 10.000000",
        "minor: ledger row 6 (version 5) does not add up"]


# -- carried fractions and retirements -------------------------------------------------------

def carried(level: str, which: str, held: int, want: int) -> str:
    """The problem verify() reports for a carried fraction (`which`: pool or reserve)."""
    return (f"{level}: the {which}'s carried fraction is {held} billionths of a unit, but "
            f"the ledger's bets, rates and retirements leave {want}")


@pytest.mark.parametrize(("column", "which"), [("carry", "pool"), ("reserve_carry", "reserve")])
def test_a_carried_fraction_rewritten_in_place(engine: JackpotEngine, column: str,
                                               which: str) -> None:
    # still within its range (0 <= carry < 1e9), so only the ledger can tell
    tamper(engine, f"UPDATE levels SET {column} = {column} + 7 WHERE name = 'minor'")
    assert problems(engine) == [carried("minor", which, 7, 0)]


def test_a_rewritten_carry_is_found_after_later_bets(tmp_path: Path) -> None:
    """The review's case: a carry pushed up then used by the next bet to credit a unit."""
    path = tmp_path / "pools.db"
    levels = [GroupConfig("minor", Decimal(100), Decimal("0.333333333"))]
    settings = Settings(enable_metrics=False, log_level="error")
    with JackpotEngine.open(path, levels, settings=settings) as e:
        e.contribute(Decimal("1.000001"), groups="minor", op_id="bet-1")  # carry 0.666333333
    conn = apsw.Connection(str(path))
    conn.execute("UPDATE levels SET carry = 999999999")
    conn.close()
    with JackpotEngine.open(path, settings=settings) as e:
        # the share of 0.000001 is 0.333333333 of a unit: the forged carry completes one
        assert e.contribute(Decimal("0.000001"), groups="minor",
                            op_id="bet-2").contributions == {"minor": Decimal("0.000001")}
        assert e.verify().problems == [
            carried("minor", "pool", 333333332, -333334)]


def test_carries_follow_rate_changes_and_overflow_to_the_reserve(tmp_path: Path) -> None:
    levels = [GroupConfig("minor", Decimal(1), Decimal("0.333333333"), cap=Decimal(2),
                          reserve_rate=Decimal("0.000000007"), overflow_to="reserve")]
    with JackpotEngine.open(tmp_path / "pools.db", levels,
                            settings=Settings(enable_metrics=False, log_level="error")) as e:
        e.contribute(Decimal("1.000001"), op_id="b1")
        e.update_config("minor", contribution_rate=Decimal("0.1234567"),
                        reserve_rate=Decimal("0.000000011"), overflow_to="meter")
        e.contribute(Decimal("9.999999"), op_id="b2")  # past the cap: overflow to the meter
        e.update_config("minor", overflow_to="reserve", cap=Decimal(3))
        e.contribute(Decimal("17.000003"), op_id="b3")  # past the cap: overflow to the reserve
        # b1 0.333333 + carry .666333333, b2 1.234567 (0.5679 overflows to the meter),
        # b3 2.098764 (1.098764 overflows to the reserve): the reserve shares alone
        # (7e-9, 1.1e-8 of a bet) stay in its carry, 0.304000029 of a unit.
        pool = e.pool("minor")
        assert (pool.amount, pool.reserve) == (Decimal(3), Decimal("1.098764"))
        assert (pool.meters["contributed"], pool.meters["overflow"]) == (
            Decimal("3.666664"), Decimal("1.666664"))
        assert carries(e) == (813_246_733, 304_000_029)
        e.process_win("minor", op_id="w1")  # the reserve funds the seed
        b4 = e.contribute(Decimal("0.000003"), op_id="b4")  # .3703701 + .813246733: one unit
        assert (b4.contributions, b4.balances) == ({"minor": Decimal("0.000001")},
                                                   {"minor": Decimal("1.000001")})
        assert e.pool("minor").reserve == Decimal("0.098764")
        assert carries(e) == (183_616_833, 304_000_062)
        assert problems(e) == []


def carries(e: JackpotEngine) -> tuple[int, int]:
    """The committed (carry, reserve_carry) of the level 'minor', in billionths of a unit."""
    conn = apsw.Connection(e._path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        ((carry, reserve_carry),) = conn.execute(
            "SELECT carry, reserve_carry FROM levels WHERE name = 'minor'").fetchall()
    finally:
        conn.close()
    return carry, reserve_carry


@pytest.fixture
def retired(tmp_path: Path) -> Iterator[JackpotEngine]:
    """An engine where 'old' (carrying fractions) was retired into 'new'."""
    levels = [GroupConfig("old", Decimal(0), Decimal("0.333333333"),
                          reserve_rate=Decimal("0.333333333")),
              GroupConfig("new", Decimal(0), Decimal("0.5"))]
    e = JackpotEngine.open(tmp_path / "pools.db", levels,
                           settings=Settings(enable_metrics=False, log_level="error"))
    e.contribute(Decimal("0.000003"), groups="old", op_id="b1")  # 0.999999999 carried, twice
    e.contribute(Decimal("0.000001"), groups="new", op_id="b2")  # 0.5 carried
    e.retire("old", transfer_to="new", who="ops", reason="merge", op_id="r1")
    yield e
    e.close()


def test_the_untouched_retirement_verifies(retired: JackpotEngine) -> None:
    assert problems(retired) == []


@pytest.mark.parametrize(("sql", "expected"), [
    ("UPDATE levels SET carry = 999999999 WHERE name = 'old'",
     carried("old", "pool", 999999999, 0)),
    ("UPDATE levels SET reserve_carry = 0 WHERE name = 'new'",
     carried("new", "reserve", 0, 999999999)),
])
def test_a_carry_rewritten_after_a_retirement(retired: JackpotEngine, sql: str,
                                              expected: str) -> None:
    tamper(retired, sql)
    assert problems(retired) == [expected]


def test_a_forged_transfer_without_its_retirement(retired: JackpotEngine) -> None:
    sql, params = ledger_row(op_id="forged", kind="transfer_in", level="new", delta=5,
                             balance_after=6, reserve_after=0, version_after=4,
                             transferred=5)
    tamper(retired, sql, params)
    tamper(retired, "UPDATE levels SET amount = 6, version = 4, m_transferred = 6 "
                    "WHERE name = 'new'")
    assert problems(retired) == [
        "retirement 'forged': rows transfer_in, expected one retire and one transfer_in"]


def test_a_forged_second_transfer_in_a_retirement(retired: JackpotEngine) -> None:
    sql, params = ledger_row(op_id="r1", kind="transfer_in", level="new", delta=5,
                             balance_after=6, reserve_after=0, version_after=4,
                             transferred=5, detail=json.dumps({"reason": "merge"}))
    tamper(retired, sql, params)
    tamper(retired, "UPDATE levels SET amount = 6, version = 4, m_transferred = 6 "
                    "WHERE name = 'new'")
    rows = "rows retire, transfer_in, transfer_in"
    assert problems(retired) == [
        f"retirement 'r1': {rows}, expected one retire and one transfer_in",
        # and what a replay of r1 would return no longer matches its rows
        "operation 'r1': its stored result says new is at version 3, the ledger 4"]


def test_a_forged_transfer_claiming_units_made_of_fractions(retired: JackpotEngine) -> None:
    moved = {"carry": 999_999_999, "reserve_carry": 999_999_999, "units": 3,
             "reserve_units": 0}
    detail = json.dumps({"reason": "merge", "from": "old", "to": "new", "carried": moved})
    for kind, level, units in (("retire", "old", 0), ("transfer_in", "new", 3)):
        sql, params = ledger_row(op_id="r2", kind=kind, level=level, delta=units,
                                 balance_after=1 + units if units else 0, reserve_after=0,
                                 version_after=4, transferred=units, detail=detail)
        tamper(retired, sql, params)
    tamper(retired, "UPDATE levels SET version = 4 WHERE name = 'old'")
    tamper(retired, "UPDATE levels SET amount = 4, version = 4, m_transferred = 4 "
                    "WHERE name = 'new'")
    # the pair agrees with itself (3 units made of fractions, 3 received); the
    # fractions it claims to move were never there: both levels' carries say so
    assert problems(retired) == [
        carried("new", "pool", 499999999, -1500000002),
        carried("new", "reserve", 999999999, 1999999998),
        carried("old", "pool", 0, -999999999),
        carried("old", "reserve", 0, -999999999)]


# -- stored results (what a replay returns) ------------------------------------------------

def rewrite_result(engine: JackpotEngine, op_id: str,
                   change: Callable[[dict[str, Any]], object]) -> None:
    """Rewrite a stored first result, as a writer that drops the append-only trigger can."""
    conn = apsw.Connection(engine._path)
    try:
        (trigger,) = conn.execute("SELECT sql FROM sqlite_master "
                                  "WHERE name = 'operations_no_update'").fetchone()
        (text,) = conn.execute("SELECT result FROM operations WHERE op_id = ?",
                               (op_id,)).fetchone()
        result = json.loads(text)
        change(result)
        with conn:
            conn.execute("DROP TRIGGER operations_no_update")
            conn.execute("UPDATE operations SET result = ? WHERE op_id = ?",
                         (json.dumps(result), op_id))
            conn.execute(trigger)
    finally:
        conn.close()


def test_a_rewritten_win_result_is_what_a_replay_pays(engine: JackpotEngine) -> None:
    rewrite_result(engine, "w1", lambda r: r.update(amount="1000.000000"))
    replay = engine.process_win("minor", op_id="w1")
    assert (replay.replayed, replay.amount) == (True, Decimal(1000))  # the danger
    assert problems(engine) == [
        "operation 'w1': its stored result says minor paid 1000.000000, the ledger 15.000000"]


@pytest.mark.parametrize(("op_id", "change", "problem"), [
    ("w1", lambda r: r.update(balance="11.000000"),
     "its stored result says minor balance 11.000000, the ledger 10.000000"),
    ("w1", lambda r: r.update(version=9), "its stored result says minor is at version 9, the ledger 3"),
    ("w1", lambda r: r.update(group="major"),
     "its stored result names levels major, its ledger rows are of minor"),
    ("b1", lambda r: r["contributions"].update(minor="5.000001"),
     "its stored result says minor credited 5.000001, the ledger 5.000000"),
    ("b1", lambda r: r["balances"].update(major="100.000000"),
     "its stored result says major balance 100.000000, the ledger 100.500000"),
    ("b1", lambda r: r["versions"].update(major=1), "its stored result says major is at version 1, the ledger 2"),
    ("b1", lambda r: r["contributions"].pop("major"),
     "its stored result names levels minor, its ledger rows are of major, minor"),
    ("b1", lambda r: r["contributions"].update(mega="1.000000"),
     "its stored result says mega got 1.000000, the ledger has no row of it there"),
    ("b1", lambda r: r["balances"].update(minor="15.0000001"),
     "its stored result says minor balance 15.0000001, the ledger 15.000000"),
    ("b1", lambda r: r.update(contributions=None),
     ("its stored result cannot be read as a replay reads it (AttributeError: 'NoneType' "
      "object has no attribute 'items')")),
    ("b1", lambda r: r.update(op_id="someone-else"),
     "its stored result names op_id 'someone-else'"),
    ("w1", lambda r: r.update(op_id="x"), "its stored result names op_id 'x'"),
    ("w1", lambda r: r.pop("reset"),
     "its stored result cannot be read as a replay reads it (KeyError: 'reset')"),
    ("w1", lambda r: r.update(amount="lots"),
     ("its stored result cannot be read as a replay reads it (InvalidOperation: "
      "[<class 'decimal.ConversionSyntax'>])")),
    ("w1", lambda r: r.update(version=3.0), "its stored result says minor is at version 3.0, the ledger 3"),
    ("b1", lambda r: r["versions"].update(minor=2.0),
     "its stored result says minor is at version 2.0, the ledger 2"),
    # Levels a replay would return that the bet never named (nor touched).
    ("b1", lambda r: r["balances"].update(mega="1.000000"),
     ("its stored result names levels major, minor in contributions, major, mega, minor in "
      "balances and "
     "major, minor in versions: a bet shows each level it names in all three")),
    ("b1", lambda r: r["versions"].update(mega=1),
     ("its stored result names levels major, minor in contributions, major, minor in "
      "balances and major, mega, minor in versions: a bet shows each level it names in all "
      "three")),
])
def test_a_rewritten_result_is_found(engine: JackpotEngine, op_id: str,
                                     change: Callable[[dict[str, Any]], object],
                                     problem: str) -> None:
    rewrite_result(engine, op_id, change)
    assert problems(engine) == [f"operation {op_id!r}: {problem}"]


def test_a_forged_result_for_an_operation_without_a_caller_op_id(
        engine: JackpotEngine) -> None:
    engine.contribute(Decimal(10), groups="major")  # auto op_id: no stored result
    (auto,) = {r.op_id for r in engine._reader.ledger(level="major") if r.op_id != "b1"
               and r.kind == "contribute"}
    result = {"op_id": auto, "contributions": {"major": "0.100000"},
              "balances": {"major": "900.600000"}, "versions": {"major": 3}, "hits": []}
    tamper(engine, "INSERT INTO operations (op_id, kind, fingerprint, result, at_ms) "
                   "VALUES (?, 'contribute', hex(zeroblob(32)), ?, 0)", (auto, json.dumps(result)))
    assert problems(engine) == [
        (f"operation {auto!r}: its stored result says major balance 900.600000, "
        "the ledger 100.600000"), own_op_id(auto)]


def own_op_id(op_id: str) -> str:
    return (f"operation {op_id!r} recorded under an op_id the engine keeps for its own "
            "(auto-..., create:...): it never records one")


@pytest.mark.parametrize("op_id", ["auto-round-1", "create:bonus", "auto-0123", "create:"])
def test_a_caller_s_op_id_of_the_engine_s_prefixes_before_they_were_reserved_is_no_problem(
        engine: JackpotEngine, op_id: str) -> None:
    # Before 2ac3f92 a caller could use these, and they were recorded; only the
    # shapes the engine itself makes (never recorded) are reported.
    tamper(engine, "INSERT INTO operations (op_id, kind, fingerprint, result, at_ms) "
                   "VALUES (?, 'contribute', hex(zeroblob(32)), ?, 0)",
           (op_id, json.dumps({**EMPTY_BET, "op_id": op_id})))
    assert problems(engine) == []


@pytest.mark.parametrize("op_id", ["auto", "create:minor", "create:major",
                                   "auto-0123456789abcdef0123456789abcdef"])
def test_a_record_under_an_op_id_the_engine_keeps_for_its_own_is_found(
        engine: JackpotEngine, op_id: str) -> None:
    # Even one that agrees with the ledger: the engine records none, no caller can use one.
    if op_id == "auto":
        engine.contribute(Decimal(10), groups="major")
        (op_id,) = {r.op_id for r in engine._reader.ledger(level="major")
                    if r.op_id.startswith("auto-")}
        result = {"op_id": op_id, "contributions": {"major": "0.100000"},
                  "balances": {"major": "100.600000"}, "versions": {"major": 3}, "hits": []}
    elif op_id.startswith("auto-"):  # as generated before d1cd417: an empty bet's record
        result = {**EMPTY_BET, "op_id": op_id}
    else:
        level = op_id.removeprefix("create:")
        row = next(r for r in engine._reader.ledger(level=level) if r.op_id == op_id)
        result = {"op_id": op_id, "action": "adjust", "group": level,
                  "balances": {level: str(Decimal(row.balance_after).scaleb(-6))},
                  "versions": {level: 1}}
    kind = "contribute" if "contributions" in result else "adjust"
    tamper(engine, "INSERT INTO operations (op_id, kind, fingerprint, result, at_ms) "
                   "VALUES (?, ?, hex(zeroblob(32)), ?, 0)", (op_id, kind, json.dumps(result)))
    # (A creation's rows are of kind 'create', which no recorded kind writes.)
    kinds = [(f"operation {op_id!r}: its ledger rows are of kinds create; 'adjust' "
             "operations write adjust")] if kind == "adjust" else []
    assert problems(engine) == [*kinds, own_op_id(op_id)]


def test_a_rewritten_admin_and_config_result_is_found(engine: JackpotEngine) -> None:
    engine.adjust("major", "-0.5", who="ops", reason="fix", op_id="a1")
    engine.update_config("major", cap=Decimal(500), op_id="c1")
    assert problems(engine) == []
    rewrite_result(engine, "a1", lambda r: r["balances"].update(major="100.500000"))
    rewrite_result(engine, "c1", lambda r: r.update(version=3))
    assert problems(engine) == [
        ("operation 'a1': its stored result says major balance 100.500000, the ledger "
        "100.000000"),
        "operation 'c1': its stored result says major is at version 3, the ledger 4"]


@pytest.mark.parametrize(("op_id", "change", "problem"), [
    ("s1", lambda r: r.update(action="resume"),
     "says action 'resume', the operation is 'suspend'"),
    ("p1", lambda r: r.update(action="suspend"),
     "says action 'suspend', the operation is 'resume'"),
    ("a1", lambda r: r.update(group="minor"),
     "says it acted on 'minor', its adjust row is of major"),
    ("a1", lambda r: r.update(action="retire"),
     "says action 'retire', the operation is 'adjust'"),
])
def test_an_admin_result_naming_another_action_or_level_is_found(
        engine: JackpotEngine, op_id: str, change: Callable[[dict[str, Any]], object],
        problem: str) -> None:
    engine.suspend("major", reason="check", op_id="s1")
    engine.resume("major", op_id="p1")
    engine.adjust("major", "-0.5", who="ops", reason="fix", op_id="a1")
    assert problems(engine) == []
    rewrite_result(engine, op_id, change)
    assert problems(engine) == [f"operation {op_id!r}: its stored result {problem}"]


def test_a_retirement_result_naming_the_level_it_moved_to_is_found(
        retired: JackpotEngine) -> None:
    rewrite_result(retired, "r1", lambda r: r.update(group="new"))
    assert problems(retired) == [
        "operation 'r1': its stored result says it acted on 'new', its retire row is of old"]


def test_an_empty_bet_s_view_of_the_levels_is_checked_against_the_ledger(
        skipping: JackpotEngine) -> None:
    skipping.contribute(Decimal(5), groups="major", op_id="none")  # below major's min_bet
    assert problems(skipping) == []
    rewrite_result(skipping, "none", lambda r: r["balances"].update(major="900.000000"))
    assert problems(skipping) == [
        ("operation 'none': its stored result says major balance 900.000000 at version 2, "
         "the ledger 100.200000")]
    rewrite_result(skipping, "none", lambda r: r["versions"].update(major=7))
    assert problems(skipping) == [
        ("operation 'none': its stored result shows major at version 7, which the ledger "
        "never had")]


def _add_level(name: str) -> Callable[[dict[str, Any]], None]:
    def change(r: dict[str, Any]) -> None:
        r["contributions"][name], r["balances"][name], r["versions"][name] = "0.000000", \
            "10.000000", 1
    return change


@pytest.mark.parametrize(("change", "problem"), [
    (lambda r: [r[k].clear() for k in ("contributions", "balances", "versions")],
     "its stored result names no level: a bet no level takes is refused"),
    # (PostgreSQL cannot even look a name with a NUL up: it must not be tried.)
    (_add_level("mi\x00nor"), "its stored result names 'mi\\x00nor', which is no level name"),
    (_add_level("x" * 65), f"its stored result names {'x' * 65!r}, which is no level name"),
])
def test_an_empty_bet_naming_no_level_or_no_level_name_is_found(
        skipping: JackpotEngine, change: Callable[[dict[str, Any]], object],
        problem: str) -> None:
    skipping.contribute(Decimal(5), groups="major", op_id="none")
    rewrite_result(skipping, "none", change)
    assert problems(skipping) == [f"operation 'none': {problem}"]


def test_the_hits_of_a_stored_bet_result_are_checked(tmp_path: Path) -> None:
    # must_hit_by one unit above the seed: the trigger can only be that, the first bet hits
    levels = [GroupConfig("mystery", Decimal(10), Decimal("0.1"),
                          must_hit_by=Decimal("10.000001"))]
    with JackpotEngine.open(tmp_path / "pools.db", levels,
                            settings=Settings(enable_metrics=False, log_level="error")) as e:
        hits = [h.to_record() for h in e.contribute(Decimal("0.00001"), op_id="b1").hits]
        assert len(hits) == 1  # 1 unit
        assert e.verify().ok
        rewrite_result(e, "b1", lambda r: r.update(hits=[]))
        assert e.verify().problems == [
            ("operation 'b1': its stored result lists hits [], the ledger has "
            "[mystery v3 10.000001]")]
        rewrite_result(e, "b1", lambda r: r.update(hits=hits))
        assert e.verify().ok
        rewrite_result(e, "b1", lambda r: r.update(hits=[{**hits[0], "version": 3.0}]))
        assert e.verify().problems == ["operation 'b1': its stored result is unreadable"]


@pytest.mark.parametrize(("column", "found"), [
    ("paid", ["mystery: meter won is 10.000001, ledger says 0.000000",
              "mystery: ledger row 3 (version 3) does not add up"]),
    ("balance_after", ["mystery: ledger row 3 (version 3) does not add up"])])
def test_a_null_amount_of_a_hit_is_told_by_its_row_not_as_unreadable_stored_results(
        tmp_path: Path, column: str, found: list[str]) -> None:
    # Once int(None): "stored results cannot be read", and no stored result
    # checked. A NULL amount is told by its row and compared with nothing.
    levels = [GroupConfig("mystery", Decimal(10), Decimal("0.1"),
                          must_hit_by=Decimal("10.000001"))]
    with JackpotEngine.open(tmp_path / "pools.db", levels,
                            settings=Settings(enable_metrics=False, log_level="error")) as e:
        e.contribute(Decimal("0.00001"), op_id="b1")  # one hit (as above)
        without_strict(e, "ledger")
        past_trigger(e, "ledger_no_update", f"UPDATE ledger SET {column} = NULL "
                     "WHERE kind = 'hit'", ())
        found = [*found, holds("mystery", 3, 3, column, None)]
        assert problems(e) == [*found, weakened("ledger")]
        # The hit's other figures are still compared.
        rewrite_result(e, "b1", lambda r: r["hits"][0].update(winner="mallory"))
        assert problems(e) == [*found, (
            "operation 'b1': its stored result lists hits [mystery v3 10.000001 to mallory], "
            "the ledger has "
            f"[mystery v3 {'?' if column == 'paid' else '10.000001'}]"), weakened("ledger")]


@pytest.mark.parametrize(("column", "value", "found"), [
    ("paid", 9e999, ["mystery: meter won is 10.000001, ledger says Infinity",
                     "mystery: ledger row 3 (version 3) does not add up"]),
    # (SQL's sum of text is a REAL: not shown as exact.)
    ("paid", "x", ["mystery: meter won is 10.000001, ledger says about 0",
                   "mystery: ledger row 3 (version 3) does not add up"]),
    ("balance_after", 9e999, ["mystery: ledger row 3 (version 3) does not add up"]),
    ("balance_after", "x", ["mystery: ledger row 3 (version 3) does not add up"]),
    ("version_after", "x", [
        "mystery: ledger versions 1..x in 3 rows, level is at version 3 (expected 1..3)"])])
def test_a_figure_of_a_hit_that_is_no_number_is_told_by_its_row_not_a_crash(
        tmp_path: Path, column: str, value: object, found: list[str]) -> None:
    # Once int(): OverflowError (an infinity) stopped the audit, or ValueError
    # (text) told "stored results cannot be read" and checked none. Told by
    # its row (or its level's versions) and compared with nothing.
    levels = [GroupConfig("mystery", Decimal(10), Decimal("0.1"),
                          must_hit_by=Decimal("10.000001"))]
    with JackpotEngine.open(tmp_path / "pools.db", levels,
                            settings=Settings(enable_metrics=False, log_level="error")) as e:
        e.contribute(Decimal("0.00001"), op_id="b1")  # one hit (as above)
        without_strict(e, "ledger")
        past_trigger(e, "ledger_no_update", f"UPDATE ledger SET {column} = ? "
                     "WHERE kind = 'hit'", (value,))
        found = [*found, holds("mystery", 3, value if column == "version_after" else 3, column,
                               value)]
        assert problems(e) == [*found, weakened("ledger")]
        # The hit's other figures are still compared.
        rewrite_result(e, "b1", lambda r: r["hits"][0].update(winner="mallory"))
        held = {"paid": "v3 ?", "balance_after": "v3 10.000001", "version_after": "v? 10.000001"}
        assert problems(e) == [*found, (
            "operation 'b1': its stored result lists hits [mystery v3 10.000001 to mallory], "
            f"the ledger has [mystery {held[column]}]"), weakened("ledger")]


@pytest.mark.parametrize(("change", "problem"), [
    (lambda r: r.update(winner="mallory"),
     "its stored result says the winner is 'mallory', the ledger 'alice'"),
    (lambda r: r.update(reset=False), "its stored result says reset False, the ledger True"),
    (lambda r: r.update(hit=True),
     "its stored result says hit True: a win asked for is not a hit"),
])
def test_a_rewritten_winner_or_reset_is_found(engine: JackpotEngine,
                                              change: Callable[[dict[str, Any]], object],
                                              problem: str) -> None:
    engine.process_win("major", winner="alice", op_id="w2")
    engine.process_win("major", amount=Decimal(1), op_id="w3")  # no reset, no winner
    assert problems(engine) == []
    rewrite_result(engine, "w2", change)
    assert problems(engine) == [f"operation 'w2': {problem}"]


@pytest.mark.parametrize(("key", "value"), [
    ("before", {"cap": "1.000000"}), ("after", {}), ("pending", {"seed": "5.000000"})])
def test_a_rewritten_config_before_after_or_pending_is_found(
        engine: JackpotEngine, key: str, value: dict[str, str]) -> None:
    engine.update_config("major", cap=Decimal(500), seed=Decimal(50), op_id="c1")
    assert problems(engine) == []
    held = engine.update_config("major", cap=Decimal(500), seed=Decimal(50), op_id="c1")
    rewrite_result(engine, "c1", lambda r: r.update({key: value}))
    found = problems(engine)
    shown = {"before": held.before, "after": held.after, "pending": held.pending}[key]
    assert found == [(f"operation 'c1': its stored result says {key} {value!r}, "
                     f"the ledger {shown!r}")]


def test_a_hit_in_a_stored_bet_result_rewritten_as_someone_s_win_is_found(
        tmp_path: Path) -> None:
    levels = [GroupConfig("mystery", Decimal(10), Decimal("0.1"),
                          must_hit_by=Decimal("10.000001"))]
    with JackpotEngine.open(tmp_path / "pools.db", levels,
                            settings=Settings(enable_metrics=False, log_level="error")) as e:
        e.contribute(Decimal("0.00001"), op_id="b1")
        e.contribute(Decimal("0.00001"), op_id="b2", player="p-7")
        rewrite_result(e, "b1", lambda r: r["hits"][0].update(winner="mallory"))
        rewrite_result(e, "b2", lambda r: r["hits"][0].update(winner="mallory"))
        assert e.verify().problems == [
            ("operation 'b1': its stored result lists hits [mystery v3 10.000001 to mallory], "
             "the ledger has [mystery v3 10.000001]"),
            ("operation 'b2': its stored result lists hits [mystery v5 10.000001 to mallory], "
             "the ledger has [mystery v5 10.000001 to p-7]")]


def test_one_hit_of_a_bet_given_to_another_player_in_both_tables_is_found(
        tmp_path: Path) -> None:
    # Result and ledger agreeing is not enough: a bet has one player, so all
    # of its hits (3 per level here, on two levels) have one winner.
    levels = [GroupConfig(name, Decimal(10), Decimal("0.1"), must_hit_by=Decimal("10.000001"))
              for name in ("a", "b")]
    with JackpotEngine.open(tmp_path / "pools.db", levels,
                            settings=Settings(enable_metrics=False, log_level="error")) as e:
        bet = e.contribute(Decimal("0.00003"), op_id="m1", player="p-7")
        assert [(h.group, h.winner) for h in bet.hits] == [("a", "p-7")] * 3 + [("b", "p-7")] * 3
        assert e.verify().ok
        last = bet.hits[-1]
        conn = apsw.Connection(e._path)
        try:  # as a writer that drops the append-only trigger and puts it back can
            (trigger,) = conn.execute("SELECT sql FROM sqlite_master "
                                      "WHERE name = 'ledger_no_update'").fetchone()
            with conn:
                conn.execute("DROP TRIGGER ledger_no_update")
                conn.execute("UPDATE ledger SET who = 'mallory' WHERE op_id = 'm1' AND "
                             "kind = 'hit' AND level = ? AND version_after = ?",
                             (last.group, last.version))
                conn.execute(trigger)
        finally:
            conn.close()
        rewrite_result(e, "m1", lambda r: r["hits"][-1].update(winner="mallory"))
        assert e.verify().problems == [
            ("operation 'm1': its stored result gives its hits different winners "
             "['p-7', 'p-7', 'p-7', 'p-7', 'p-7', 'mallory']: a bet has one player"),
            "operation 'm1': its hit rows name different winners: a bet has one player"]


@pytest.mark.parametrize("player", ["p-7", None])
def test_one_hit_of_a_bet_without_a_stored_result_given_to_another_player_is_found(
        tmp_path: Path, player: str | None) -> None:
    # No caller's op_id: no stored result to compare with, only the ledger.
    levels = [GroupConfig("a", Decimal(10), Decimal("0.1"), must_hit_by=Decimal("10.000001"))]
    with JackpotEngine.open(tmp_path / "pools.db", levels,
                            settings=Settings(enable_metrics=False, log_level="error")) as e:
        e.contribute(Decimal("0.00002"), player="p-1")  # two hits, one winner: fine
        bet = e.contribute(Decimal("0.00003"), player=player)
        assert [h.winner for h in bet.hits] == [player] * 3
        assert e.verify().ok
        (op_id,) = {r.op_id for r in e._reader.ledger(level="a", kinds=("hit",))
                    if r.who == player}
        conn = apsw.Connection(e._path)
        try:
            conn.execute("DROP TRIGGER ledger_no_update")
            conn.execute("UPDATE ledger SET who = 'mallory' WHERE op_id = ? AND kind = 'hit' "
                         "AND version_after = ?", (op_id, bet.hits[1].version))
        finally:
            conn.close()
        assert e.verify().problems == [
            f"operation {op_id!r}: its hit rows name different winners: a bet has one player",
            NO_UPDATE_TRIGGER]


def auto_bet_with_hits(e: JackpotEngine) -> tuple[str, list[LedgerRow]]:
    """Place a bet without a caller's op_id that triggers three hits; its op_id and rows."""
    bet = e.contribute(Decimal("0.00003"), player="p-7")
    assert len(bet.hits) == 3
    rows = [r for r in e._reader.ledger(level="a") if r.who == "p-7"]
    (op_id,) = {r.op_id for r in rows}
    return op_id, rows


def past_trigger(e: JackpotEngine, trigger: str, sql: str, params: tuple[object, ...]) -> None:
    """Run `sql` as a writer that drops an append-only trigger and puts it back can."""
    conn = apsw.Connection(e._path)
    try:
        (create,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?",
                                 (trigger,)).fetchone()
        with conn:
            conn.execute(f"DROP TRIGGER {trigger}")
            conn.execute(sql, params)
            conn.execute(create)
    finally:
        conn.close()


def give_hit_to(e: JackpotEngine, op_id: str, version: int, who: str) -> None:
    past_trigger(e, "ledger_no_update", "UPDATE ledger SET who = ? WHERE op_id = ? AND "
                 "kind = 'hit' AND version_after = ?", (who, op_id, version))


def test_a_record_inserted_for_a_bet_without_one_does_not_hide_its_split_winners(
        tmp_path: Path) -> None:
    # A record of another kind (or a bet's own) inserted for the auto op_id
    # once let its hit rows out of the one-winner check.
    levels = [GroupConfig("a", Decimal(10), Decimal("0.1"), must_hit_by=Decimal("10.000001"))]
    with JackpotEngine.open(tmp_path / "pools.db", levels,
                            settings=Settings(enable_metrics=False, log_level="error")) as e:
        op_id, rows = auto_bet_with_hits(e)
        give_hit_to(e, op_id, rows[-1].version_after, "mallory")
        last = rows[-1]
        forged = {"op_id": op_id, "action": "adjust", "group": "a",
                  "balances": {"a": str(Decimal(last.balance_after).scaleb(-6))},
                  "versions": {"a": last.version_after}}
        tamper(e, "INSERT INTO operations (op_id, kind, fingerprint, result, at_ms) "
                  "VALUES (?, 'adjust', hex(zeroblob(32)), ?, 0)", (op_id, json.dumps(forged)))
        assert e.verify().problems == [
            (f"operation {op_id!r}: its ledger rows are of kinds contribute, hit; "
             "'adjust' operations write adjust"),
            own_op_id(op_id),
            f"operation {op_id!r}: its hit rows name different winners: a bet has one player"]


def test_a_record_of_another_kind_than_its_ledger_rows_is_found(
        engine: JackpotEngine) -> None:
    # A win's record on a bet's rows: a replay of the win would return it.
    minor = next(r for r in engine._reader.ledger(level="minor") if r.op_id == "b1")
    win = {"op_id": "b1", "group": "minor", "amount": "0.000000",
           "balance": str(Decimal(minor.balance_after).scaleb(-6)),
           "version": minor.version_after, "winner": None, "reset": False, "hit": False}
    past_trigger(engine, "operations_no_update",
                 "UPDATE operations SET kind = 'win', result = ? WHERE op_id = 'b1'",
                 (json.dumps(win),))
    assert problems(engine) == [
        "operation 'b1': its ledger rows are of kinds contribute; 'win' operations write win"]


@pytest.mark.parametrize(("kind", "told", "also", "won"), [
    # Read as a list of kinds, a comma must not make one forged kind two valid ones.
    ("contribute,hit", "contribute, contribute;hit", [], []),
    # Read as a win, the row lacks what a win's detail holds, and counts as one.
    ("win", "contribute, win",
     ["major: settings rows cannot be read as the engine writes them (KeyError: 'reset')"],
     ["major: meter wins is 0, ledger says 1"])])
def test_a_bet_row_of_a_kind_a_bet_does_not_write_is_found(
        engine: JackpotEngine, kind: str, told: str, also: list[str], won: list[str]) -> None:
    # b1's major row made another kind; minor keeps its contribute row.
    past_trigger(engine, "ledger_no_update",
                 "UPDATE ledger SET kind = ? WHERE op_id = 'b1' AND level = 'major'", (kind,))
    assert problems(engine) == [
        *also,
        "major: meter bets is 1, ledger says 0",
        "major: meter wagered is 50.000000, ledger says 0.000000",
        *won,
        ("major: the pool's carried fraction is 0 billionths of a unit, but the ledger's bets, "
         "rates and retirements leave -500000000000000"),
        (f"operation 'b1': its ledger rows are of kinds {told}; 'contribute' "
         "operations write contribute, hit")]


def test_the_hits_of_a_stored_bet_result_in_another_order_are_found(tmp_path: Path) -> None:
    # A replay returns the stored result: its hits in the order the first call gave them.
    levels = [GroupConfig(name, Decimal(10), Decimal("0.1"), must_hit_by=Decimal("10.000001"))
              for name in ("a", "b")]
    with JackpotEngine.open(tmp_path / "pools.db", levels,
                            settings=Settings(enable_metrics=False, log_level="error")) as e:
        bet = e.contribute(Decimal("0.00002"), op_id="m1", player="p-7")
        assert [(h.group, h.version) for h in bet.hits] == [("a", 3), ("a", 5), ("b", 3),
                                                             ("b", 5)]
        assert e.verify().ok
        rewrite_result(e, "m1", lambda r: r["hits"].reverse())
        assert [(h.group, h.version) for h in e.contribute(
            Decimal("0.00002"), op_id="m1", player="p-7").hits] == [("b", 5), ("b", 3),
                                                                     ("a", 5), ("a", 3)]
        assert e.verify().problems == [
            ("operation 'm1': its stored result lists hits [b v5 10.000001 to p-7, "
             "b v3 10.000001 to p-7, a v5 10.000001 to p-7, a v3 10.000001 to p-7], the ledger "
             "has [a v3 10.000001 to p-7, a v5 10.000001 to p-7, b v3 10.000001 to p-7, "
             "b v5 10.000001 to p-7]")]


def test_a_hit_in_a_stored_bet_result_that_does_not_reset_is_found(tmp_path: Path) -> None:
    levels = [GroupConfig("mystery", Decimal(10), Decimal("0.1"),
                          must_hit_by=Decimal("10.000001"))]
    with JackpotEngine.open(tmp_path / "pools.db", levels,
                            settings=Settings(enable_metrics=False, log_level="error")) as e:
        e.contribute(Decimal("0.00001"), op_id="b1")
        rewrite_result(e, "b1", lambda r: r["hits"][0].update(reset=False))
        assert e.verify().problems == [
            ("operation 'b1': its stored result lists a hit of mystery with reset False, "
             "hit True: a must-hit-by hit resets the level and is a hit")]


@pytest.fixture
def skipping(tmp_path: Path) -> Iterator[JackpotEngine]:
    """Bets of 5 reach minor only: major (min_bet 10) is skipped, shown as it stood."""
    levels = [GroupConfig("minor", Decimal(10), Decimal("0.1")),
              GroupConfig("major", Decimal(100), Decimal("0.01"), min_bet=Decimal(10))]
    with JackpotEngine.open(tmp_path / "pools.db", levels,
                            settings=Settings(enable_metrics=False, log_level="error")) as e:
        e.contribute(Decimal(20), op_id="big")  # major moves to version 2
        for i in range(7):
            r = e.contribute(Decimal(5), op_id=f"small{i}")
            assert (r.contributions["major"], r.versions["major"]) == (0, 2)
        yield e


@pytest.mark.parametrize("chunk", [1, 3, 5000])
def test_a_skipped_level_s_view_is_checked_against_the_ledger(
        skipping: JackpotEngine, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    from jackpot import _audit_results  # noqa: PLC0415 - the chunk size, made small
    from jackpot.storage import base  # noqa: PLC0415

    monkeypatch.setattr(_audit_results, "_SKIPPED_CHUNK", chunk)
    monkeypatch.setattr(base, "_BALANCES_CHUNK", max(1, chunk - 1))
    assert problems(skipping) == []
    rewrite_result(skipping, "small2", lambda r: r["balances"].update(major="100.300000"))
    rewrite_result(skipping, "small5", lambda r: r["versions"].update(major=1))
    rewrite_result(skipping, "small6", lambda r: r["versions"].update(major=99))
    assert sorted(problems(skipping)) == [
        ("operation 'small2': its stored result says major balance 100.300000 at version 2, "
         "the ledger 100.200000"),
        ("operation 'small5': its stored result says major balance 100.200000 at version 1, "
         "the ledger 100.000000"),
        ("operation 'small6': its stored result shows major at version 99, which the ledger "
         "never had")]


def test_a_null_balance_a_skipped_level_s_view_shows_is_told_by_its_row(
        skipping: JackpotEngine) -> None:
    # Once int(None): "stored results cannot be read", and none checked.
    without_strict(skipping, "ledger")
    past_trigger(skipping, "ledger_no_update", "UPDATE ledger SET balance_after = NULL "
                 "WHERE op_id = 'big' AND level = 'major'", ())
    rewrite_result(skipping, "small6", lambda r: r["versions"].update(major=99))
    assert problems(skipping) == [
        "major: ledger row 3 (version 2) does not add up",
        holds("major", 3, 2, "balance_after", None),
        ("operation 'small6': its stored result shows major at version 99, which the ledger "
         "never had"), weakened("ledger")]


@pytest.mark.parametrize("version", ["2", 0, 2**63, 10**30])
def test_a_skipped_level_s_version_that_is_not_a_version_is_unreadable(
        skipping: JackpotEngine, version: object) -> None:
    # (2**63 and above cannot even be looked up: SQLite's integers are 64-bit.)
    rewrite_result(skipping, "small0", lambda r: r["versions"].update(major=version))
    assert problems(skipping) == ["operation 'small0': its stored result is unreadable"]


def test_past_twenty_contradicted_results_the_rest_are_counted(tmp_path: Path) -> None:
    with JackpotEngine.open(tmp_path / "pools.db", LEVELS,
                            settings=Settings(enable_metrics=False, log_level="error")) as e:
        for i in range(23):
            e.contribute(Decimal(1), groups="major", op_id=f"b{i:02d}")
        for i in range(23):
            rewrite_result(e, f"b{i:02d}", lambda r: r["versions"].update(major=99))
        found = e.verify().problems
    assert found == [*(f"operation 'b{i:02d}': its stored result says major is at version 99, "
                       f"the ledger {i + 2}" for i in range(20)),
                     "... and 3 more stored results the ledger contradicts"]


def test_an_unreadable_empty_bet_record_is_an_orphan_not_a_crash(engine: JackpotEngine) -> None:
    tamper(engine, "INSERT INTO operations (op_id, kind, fingerprint, result, at_ms) "
                   "VALUES ('ghost-bet', 'contribute', hex(zeroblob(32)), ?, 0)",
           (json.dumps({"contributions": {"minor": "abc"}, "hits": []}),))
    assert problems(engine) == [("operation 'ghost-bet' recorded without ledger rows "
                                 "(its stored result cannot be read)")]


def unreadable(what: str, why: str) -> str:
    """The problem verify() reports for rows of `what` it cannot read (`why`)."""
    return f"{what} rows cannot be read as the engine writes them ({why})"


def not_written(detail: str) -> str:
    """Why a create row's `detail` cannot be read: it is not JSON the engine writes."""
    return (f"UnreadableRowError: ledger row 1: its detail {detail[:80]!r} is not what the "
            "engine writes (a damaged or tampered database)")


NO_UPDATE_TRIGGER = ("integrity_check: trigger ledger_no_update is missing: history is not "
                     "append-only")


def bet_unread(where: str, detail: str) -> str:
    """What verify() reports of a bet row (`where`: level, seq, version) whose detail is forged."""
    return (f"{where} cannot be read as the engine writes it: its detail {detail[:80]!r} is "
            "no bet's (a damaged or tampered database; read as no bet)")

MINOR_BET_UNREAD = [  # (its bet read as none: no bet, nothing wagered, nothing to carry)
    "minor: meter bets is 1, ledger says 0",
    "minor: meter wagered is 50.000000, ledger says 0.000000",
    ("minor: the pool's carried fraction is 0 billionths of a unit, but the ledger's bets, "
     "rates and retirements leave -5000000000000000"),
    ("minor: the reserve's carried fraction is 0 billionths of a unit, but the ledger's bets, "
     "rates and retirements leave -500000000000000")]


# A bet row read as no bet is no bet for the bets meter either: it once counted
# every detail that starts '{"bet":', so that only the wagered meter differed.
@pytest.mark.parametrize(("where", "detail", "found"), [
    ("kind = 'create' AND level = 'minor'", "{not json",
     [unreadable("rate and retirement", not_written("{not json")),
      unreadable("minor: settings", not_written("{not json"))]),
    ("kind = 'create' AND level = 'minor'", "[1, 2]",
     [unreadable("rate and retirement", "AttributeError: 'list' object has no attribute 'get'"),
      unreadable("minor: settings",
                 "TypeError: list indices must be integers or slices, not str")]),
    ("kind = 'contribute' AND level = 'minor'", '{"bet": " 1e6"}',
     [*MINOR_BET_UNREAD, bet_unread("minor: ledger row 4 (version 2)", '{"bet": " 1e6"}')]),
    ("kind = 'contribute' AND level = 'major'", '{"bet": "x"}',
     ["major: meter bets is 1, ledger says 0",
      "major: meter wagered is 50.000000, ledger says 0.000000",
      ("major: the pool's carried fraction is 0 billionths of a unit, but the ledger's bets, "
       "rates and retirements leave -500000000000000"),
      bet_unread("major: ledger row 3 (version 2)", '{"bet": "x"}')]),
    ("kind = 'create' AND level = 'minor'", DEEP,
     [unreadable("rate and retirement", not_written(DEEP)),
      unreadable("minor: settings", not_written(DEEP))]),
    # Too deep for SQL's JSON too: not even a bet.
    ("kind = 'contribute' AND level = 'minor'", DEEP,
     [*MINOR_BET_UNREAD, bet_unread("minor: ledger row 4 (version 2)", DEEP)]),
    # Not exactly the '{"bet": <digits>}' the engine writes: once read as a bet
    # of 50 (or of 5), whatever followed the digits or stood between them.
    *(("kind = 'contribute' AND level = 'major'", detail,
       ["major: meter bets is 1, ledger says 0",
        "major: meter wagered is 50.000000, ledger says 0.000000",
        ("major: the pool's carried fraction is 0 billionths of a unit, but the ledger's "
         "bets, rates and retirements leave -500000000000000"),
        bet_unread("major: ledger row 3 (version 2)", detail)])
      for detail in ('{"bet": 50000000x', '{"bet": 50000000]', '{"bet":50000000 }',
                     '{"bet": 050000000}', '{"bet": 5 0000000}',
                     # Past the largest bet the engine takes (money.MAX_UNITS): once
                     # read as a bet of 100000000000.000001, and not told.
                     '{"bet": 100000000000000001}', '{"bet": 999999999999999999}')),
    # The part of a bet carried over from the level before, forged: told, once.
    ("kind = 'contribute' AND level = 'major'", '{"carried_over": 1}',
     ["major: meter bets is 1, ledger says 0",
      "major: meter wagered is 50.000000, ledger says 0.000000",
      ("major: the pool's carried fraction is 0 billionths of a unit, but the ledger's bets, "
       "rates and retirements leave -500000000000000"),
      bet_unread("major: ledger row 3 (version 2)", '{"carried_over": 1}')]),
])
def test_a_ledger_detail_the_engine_never_wrote_is_reported_not_a_crash(
        engine: JackpotEngine, where: str, detail: str, found: list[str]) -> None:
    """verify() reads details in Python and in SQL: a forged one is a problem, never an error."""
    tamper(engine, "DROP TRIGGER ledger_no_update")
    tamper(engine, f"UPDATE ledger SET detail = ? WHERE {where}", (detail,))
    assert problems(engine) == [*found, NO_UPDATE_TRIGGER]  # no exception


def test_the_largest_bet_the_engine_takes_is_read_as_a_bet(tmp_path: Path) -> None:
    # The other side of the bound above: a bet of money.MAX_UNITS (18 digits)
    # is one the engine writes, and verify() reads it as one.
    with JackpotEngine.open(tmp_path / "pools.db", LEVELS,
                            settings=Settings(enable_metrics=False, log_level="error")) as e:
        with pytest.raises(ValidationError, match="beyond the engine's range"):
            e.contribute(Decimal("100000000000.000001"), op_id="too-big")
        e.contribute(Decimal(100_000_000_000), op_id="b1")
        conn = apsw.Connection(e._path)
        try:
            details = conn.execute("SELECT detail FROM ledger WHERE kind = 'contribute'"
                                   ).fetchall()
        finally:
            conn.close()
        assert details == [('{"bet": 100000000000000000}',)] * 2
        assert problems(e) == []


@pytest.mark.parametrize(("kind", "detail", "level"), [
    ("retire", "json_set(detail, '$.carried', json('[1]'))", "old"),
    ("transfer_in", "json_set(detail, '$.carried', json('[1]'))", "new"),
    ("retire", "'[1]'", "old"),  # (the whole detail)
])
def test_a_retirement_whose_carried_detail_is_not_an_object_is_reported_once(
        retired: JackpotEngine, kind: str, detail: str, level: str) -> None:
    # Once, by the row, not again by the check of the retirement's two rows,
    # and without the level's carries, which what it moved leaves unknown.
    tamper(retired, "DROP TRIGGER ledger_no_update")
    tamper(retired, f"UPDATE ledger SET detail = {detail} WHERE kind = '{kind}'")
    assert problems(retired) == [
        f"{level}: {kind} row at version 3: unreadable carried fractions [1]",
        NO_UPDATE_TRIGGER]


@pytest.mark.parametrize(("kind", "level"), [("retire", "old"), ("transfer_in", "new")])
def test_a_retirement_row_whose_detail_is_not_json_is_reported_once(
        retired: JackpotEngine, kind: str, level: str) -> None:
    # As a detail that is JSON of the wrong shape (above): told once, by the
    # row; the level's carries, which what it moved leaves unknown, not
    # checked. It once emptied every retirement row: both levels' carries were
    # then found wrong, and the retired level's settings unreadable (its
    # status row), whose detail they do not read.
    tamper(retired, "DROP TRIGGER ledger_no_update")
    tamper(retired, f"UPDATE ledger SET detail = '{{not json' WHERE kind = '{kind}'")
    assert problems(retired) == [
        f"{level}: {kind} row at version 3: unreadable carried fractions '{{not json'",
        NO_UPDATE_TRIGGER]


def test_an_unreadable_retirement_is_told_where_the_rates_cannot_be_read(
        retired: JackpotEngine) -> None:
    # The fractions are not checked at all (a create row cannot be read): the
    # check of the retirement's two rows tells its row then, once.
    tamper(retired, "DROP TRIGGER ledger_no_update")
    tamper(retired, "UPDATE ledger SET detail = json_set(detail, '$.carried', json('[1]')) "
                    "WHERE kind = 'retire'")
    tamper(retired, "UPDATE ledger SET detail = '[1, 2]' WHERE kind = 'create' AND level = 'new'")
    assert problems(retired) == [
        unreadable("rate and retirement", "AttributeError: 'list' object has no attribute 'get'"),
        unreadable("new: settings", "TypeError: list indices must be integers or slices, not str"),
        "retirement 'r1': unreadable carried fractions [1]", NO_UPDATE_TRIGGER]


# -- a level's settings, waiting changes, status and trigger -----------------------------

@pytest.mark.parametrize(("sql", "problem"), [
    ("UPDATE levels SET rate = 200000000 WHERE name = 'minor'",
     "minor: setting contribution_rate is 0.2, the ledger says 0.1"),
    ("UPDATE levels SET min_bet = 1000000 WHERE name = 'major'",
     "major: setting min_bet is 1.000000, the ledger says none"),
    ("UPDATE levels SET cap = NULL WHERE name = 'minor'",
     "minor: setting cap is none, the ledger says 30.000000"),
    ("UPDATE levels SET overflow_to = 'reserve' WHERE name = 'minor'",
     "minor: setting overflow_to is reserve, the ledger says meter"),
    ("UPDATE levels SET status = 'suspended' WHERE name = 'major'",
     "major: status is suspended, the ledger says active"),
    ("UPDATE levels SET pending = '{\"seed\": 5000000}' WHERE name = 'minor'",
     "minor: changes waiting for the next reset are {'seed': '5.000000'}, the ledger says {}"),
])
def test_a_level_edited_outside_the_engine_is_reported_before_any_bet(
        tmp_path: Path, sql: str, problem: str) -> None:
    levels = [GroupConfig("minor", Decimal(10), Decimal("0.1"), cap=Decimal(30)),
              GroupConfig("major", Decimal(100), Decimal("0.01"))]
    with JackpotEngine.open(tmp_path / "pools.db", levels,
                            settings=Settings(enable_metrics=False, log_level="error")) as e:
        e.contribute(Decimal(50), op_id="b1")
        assert e.verify().ok
        tamper(e, sql)
        assert problems(e) == [problem]


def test_settings_replayed_through_changes_resets_and_status_verify(tmp_path: Path) -> None:
    levels = [GroupConfig("minor", Decimal(10), Decimal("0.1"), must_hit_by=Decimal(20)),
              GroupConfig("major", Decimal(100), Decimal("0.01"))]
    with JackpotEngine.open(tmp_path / "pools.db", levels,
                            settings=Settings(enable_metrics=False, log_level="error")) as e:
        e.update_config("minor", seed=Decimal(12), contribution_rate=Decimal("0.2"))
        assert e.verify().ok  # the seed waits for the reset, the rate applies at once
        e.process_win("minor", amount=Decimal(1))  # a partial win: no reset
        e.update_config("minor", must_hit_by=Decimal(40))
        assert e.verify().ok
        e.process_win("minor")  # the reset applies seed 12 and must_hit_by 40
        assert e.pool("minor").seed == Decimal(12)
        e.suspend("major", reason="inspection")
        assert e.verify().ok
        e.resume("major")
        hits = sum(len(e.contribute(Decimal(10), groups="minor", op_id=f"b{i}").hits)
                   for i in range(40))  # 2.00 a bet: past the trigger again and again
        assert hits >= 2  # each a reset
        e.retire("major", transfer_to="minor", who="ops", reason="ended")
        assert e.verify().problems == []
        tamper(e, "UPDATE levels SET seed = 10000000 WHERE name = 'minor'")
        assert problems(e) == ["minor: setting seed is 10.000000, the ledger says 12.000000"]
        tamper(e, "UPDATE levels SET seed = 12000000, trigger = 12000000 WHERE name = 'minor'")
        assert problems(e) == [
            "minor: must-hit-by trigger 12.000000 is outside (seed, must_hit_by] of its settings"]


# -- the schema's guards: triggers and indexes ---------------------------------------------

@pytest.mark.parametrize(("sql", "problem"), [
    ("DROP TRIGGER ledger_no_delete",
     "integrity_check: trigger ledger_no_delete is missing: history is not append-only"),
    ("DROP TRIGGER operations_no_update",
     "integrity_check: trigger operations_no_update is missing: history is not append-only"),
    *WEAKENED_INDEXES,
])
def test_a_dropped_guard_of_the_schema_is_reported(engine: JackpotEngine, sql: str,
                                                   problem: str) -> None:
    tamper(engine, sql)
    assert problems(engine) == [problem]


def credited(ledger: str) -> str:
    """The problem verify() reports when b1's stored result says it credited minor 5."""
    return f"operation 'b1': its stored result says minor credited 5.000000, the ledger {ledger}"


NEAR_2_63 = {  # (column, sign of 2**63 - 1): what verify() finds besides the row itself
    ("overflow", -1): ["minor: meter overflow is 0.000000, ledger says -9223372036854.775807"],
    ("overflow", 1): ["minor: meter overflow is 0.000000, ledger says 9223372036854.775807"],
    ("paid", -1): ["minor: meter won is 15.000000, ledger says -9223372036839.775807"],
    ("paid", 1): ["minor: meter won is 15.000000, ledger says 9223372036869.775807"],
    ("delta", -1): ["minor: ledger sums to -9223372036849.775807, level holds 10.000000"],
    ("delta", 1): ["minor: ledger sums to 9223372036859.775807, level holds 10.000000"],
    ("reserve_delta", -1): [
        "minor: ledger reserve sums to -9223372036855.275807, level holds 0.000000"],
    ("reserve_delta", 1): [
        "minor: ledger reserve sums to 9223372036854.275807, level holds 0.000000"],
    ("contributed", -1): [
        "minor: meter contributed is 5.000000, ledger says -9223372036854.775807",
        ("minor: the pool's carried fraction is 0 billionths of a unit, but the ledger's bets, "
         "rates and retirements leave 9223372036859775807000000000")],
    ("contributed", 1): [
        "minor: meter contributed is 5.000000, ledger says 9223372036854.775807",
        ("minor: the pool's carried fraction is 0 billionths of a unit, but the ledger's bets, "
         "rates and retirements leave -9223372036849775807000000000")],
    ("house_funded", -1): [
        "minor: meter house_funded is 19.500000, ledger says -9223372036835.275807"],
    ("house_funded", 1): [
        "minor: meter house_funded is 19.500000, ledger says 9223372036874.275807"],
}
CREDITED_NEAR_2_63 = {  # what b1 credited minor, for the columns of a bet's credit
    ("overflow", -1): "9223372036859.775807", ("overflow", 1): "-9223372036849.775807",
    ("contributed", -1): "-9223372036854.775807", ("contributed", 1): "9223372036854.775807"}


@pytest.mark.parametrize("sign", [-1, 1])
@pytest.mark.parametrize("column", ["overflow", "paid", "delta", "reserve_delta",
                                    "contributed", "house_funded"])
def test_a_forged_amount_near_two_to_the_63_is_a_problem_not_a_crash(
        engine: JackpotEngine, column: str, sign: int) -> None:
    # SQLite's SUM raises "integer overflow" past 2**63: the totals are then summed exactly
    tamper(engine, "DROP TRIGGER ledger_no_update")
    tamper(engine, f"UPDATE ledger SET {column} = {sign * (2**63 - 1)} "
                   "WHERE op_id = 'b1' AND level = 'minor'")
    ledger = CREDITED_NEAR_2_63.get((column, sign))
    assert problems(engine) == [  # no exception
        *NEAR_2_63[column, sign], "minor: ledger row 4 (version 2) does not add up",
        *([] if ledger is None else [credited(ledger)]), NO_UPDATE_TRIGGER]


def test_what_a_recorded_bet_credited_past_two_to_the_63_is_shown_exactly(
        engine: JackpotEngine) -> None:
    """A bet credits contributed - overflow: past 2**63, not rounded through a float.

    SQLite turns an integer subtraction that overflows into a REAL: the
    figure the stored result is compared with came out 831 units off.
    """
    tamper(engine, "DROP TRIGGER ledger_no_update")
    tamper(engine, f"UPDATE ledger SET overflow = {-(2**63 - 1)} "
                   "WHERE op_id = 'b1' AND level = 'minor'")
    assert problems(engine) == [
        "minor: meter overflow is 0.000000, ledger says -9223372036854.775807",
        "minor: ledger row 4 (version 2) does not add up",
        ("operation 'b1': its stored result says minor credited 5.000000, the ledger "
         "9223372036859.775807"),  # 5_000_000 + 2**63 - 1 units
        NO_UPDATE_TRIGGER]


def test_forged_bet_amounts_whose_sum_overflows_are_a_problem_not_a_crash(
        engine: JackpotEngine) -> None:
    # Two bets of one rate period: their overflow sums past 2**63 in the
    # per-period sums too (contributions_by_period), not only in the totals.
    engine.contribute(Decimal(50), op_id="b2")
    tamper(engine, "DROP TRIGGER ledger_no_update")
    tamper(engine, f"UPDATE ledger SET overflow = {2**62} "
                   "WHERE op_id IN ('b1', 'b2') AND level = 'minor'")
    assert problems(engine) == [  # no exception
        "minor: meter overflow is 0.000000, ledger says 9223372036854.775808",
        "minor: ledger row 4 (version 2) does not add up",
        "minor: ledger row 7 (version 4) does not add up",
        credited("-4611686018422.387904"),
        credited("-4611686018422.387904").replace("'b1'", "'b2'"),
        NO_UPDATE_TRIGGER]


@pytest.mark.parametrize(("delta", "told"), [(1024, True), (1000, False)])
def test_a_row_past_two_to_the_63_adds_up_exactly_not_in_floating_point(
        engine: JackpotEngine, delta: int, told: bool) -> None:
    """contributed - overflow - paid = (2**63 - 1) + 1 - (2**63 - 1000) = 1000 units, exactly.

    SQLite turns the integer sum that overflows into a REAL, which gave 1024:
    a forged row of delta 1024 seemed to add up, one of delta 1000 not.
    """
    tamper(engine, *ledger_row(version_after=4, delta=delta, balance_after=10_000_000 + delta,
                               reserve_after=0, contributed=2**63 - 1, overflow=-1,
                               paid=2**63 - 1000))
    assert problems(engine) == [
        "minor: ledger versions 1..4 in 4 rows, level is at version 3 (expected 1..3)",
        f"minor: ledger sums to 10.00{delta:04d}, level holds 10.000000",
        "minor: meter contributed is 5.000000, ledger says 9223372036859.775807",
        "minor: meter overflow is 0.000000, ledger says -0.000001",
        f"minor: meter won is 15.000000, ledger says {Decimal(15 * 10**6 + 2**63 - 1000) / 10**6}",
        ("minor: the pool's carried fraction is 0 billionths of a unit, but the ledger's bets, "
         "rates and retirements leave -9223372036854775807000000000"),
        *(["minor: ledger row 6 (version 4) does not add up"] if told else [])]


@pytest.mark.parametrize(("op_id", "kind", "column", "meters"), [
    ("w1", "win", "paid", [
        unreadable("minor: settings", "KeyError: 'reset'"),  # (a forged win's detail: {})
        "minor: ledger versions 1..4 in 4 rows, level is at version 3 (expected 1..3)",
        "minor: meter won is 15.000000, ledger says 9223372036869.775807",
        "minor: meter wins is 1, ledger says 2"]),
    ("b1", "contribute", "contributed", [
        "minor: ledger versions 1..4 in 4 rows, level is at version 3 (expected 1..3)",
        "minor: meter contributed is 5.000000, ledger says 9223372036859.775807",
        ("minor: the pool's carried fraction is 0 billionths of a unit, but the ledger's bets, "
         "rates and retirements leave -9223372036854775807000000000")])])
def test_forged_amounts_of_one_recorded_operation_whose_sum_overflows_are_a_problem(
        engine: JackpotEngine, op_id: str, kind: str, column: str, meters: list[str]) -> None:
    # A recorded operation's rows on a level are summed as well (what its stored
    # result must repeat): past 2**63 that sum stopped the audit with StorageError.
    detail = {"carried_over": True} if kind == "contribute" else {}  # (a bet's part, as written)
    tamper(engine, *ledger_row(op_id=op_id, kind=kind, version_after=4, detail=json.dumps(detail),
                               **{column: 2**63 - 1}))
    assert problems(engine) == [  # no exception
        *meters, "minor: ledger row 6 (version 4) does not add up",
        (f"operation {op_id!r}: its stored result says minor is at version "
         f"{ {'b1': 2, 'w1': 3}[op_id]}, the ledger 4")]  # (the version its op left)


def test_a_setting_recorded_in_another_decimal_form_is_the_same_setting(tmp_path: Path) -> None:
    # Before e40ab7a the create row wrote a rate below 1e-6 as '2E-7' (now '0.0000002').
    levels = [GroupConfig("tiny", Decimal(10), Decimal("0.0000002"))]
    with JackpotEngine.open(tmp_path / "pools.db", levels,
                            settings=Settings(enable_metrics=False, log_level="error")) as e:
        conn = apsw.Connection(e._path)
        try:
            (trigger,) = conn.execute("SELECT sql FROM sqlite_master "
                                      "WHERE name = 'ledger_no_update'").fetchone()
            with conn:
                conn.execute("DROP TRIGGER ledger_no_update")
                conn.execute("UPDATE ledger SET detail = replace(detail, '\"0.0000002\"', "
                             "'\"2E-7\"') WHERE kind = 'create'")
                conn.execute(trigger)
            (detail,) = conn.execute("SELECT detail FROM ledger WHERE kind = 'create'"
                                     ).fetchone()
        finally:
            conn.close()
        assert '"contribution_rate": "2E-7"' in detail
        assert problems(e) == []


def without_not_null_on_level(e: JackpotEngine) -> None:
    """Rewrite the ledger's schema so that its level may be NULL, as a hostile writer can."""
    conn = apsw.Connection(e._path)
    try:
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute("UPDATE sqlite_schema SET sql = replace(sql, 'level TEXT NOT NULL', "
                     "'level TEXT') WHERE name = 'ledger'")
        conn.execute("PRAGMA writable_schema = OFF")
    finally:
        conn.close()


def test_a_forged_row_without_a_level_is_still_held_to_the_one_winner_check(
        engine: JackpotEngine) -> None:
    # The hit, win, config and retirement rows are looked up level by level;
    # a row whose level is NULL is at no level, and was once missed there.
    without_not_null_on_level(engine)
    tamper(engine, *ledger_row(op_id="x", kind="hit", version_after=4, who="al"))
    tamper(engine, *ledger_row(op_id="x", kind="hit", level=None, who="bob"))
    assert problems(engine) == [
        unreadable("minor: settings", "KeyError: 'reset'"),  # (a forged hit's detail: {})
        "minor: ledger versions 1..4 in 4 rows, level is at version 3 (expected 1..3)",
        "minor: meter wins is 1, ledger says 2",
        "minor: meter hits is 0, ledger says 1",
        "None: no such level, yet 1 ledger row",
        "None: ledger row 7 (version 5) does not add up",
        "minor: ledger row 6 (version 4) does not add up",
        "operation 'x': its hit rows name different winners: a bet has one player",
        "integrity_check: table ledger takes a NULL in column level (its NOT NULL is gone)"]


def test_fractions_of_a_unit_forged_into_a_non_strict_ledger_are_not_lost_per_rate_period(
        tmp_path: Path) -> None:
    # A ledger rebuilt without STRICT takes a REAL amount. Half a unit in each
    # of two rate periods adds up to one unit the level does not hold: the
    # ledger's totals, summed per period, once dropped each half on the way.
    with JackpotEngine.open(tmp_path / "pools.db", [GroupConfig("a", Decimal(10), Decimal("0.1"))],
                            settings=Settings(enable_metrics=False, log_level="error")) as e:
        e.adjust("a", Decimal(1), who="ops", reason="r", op_id="a1")
        e.update_config("a", contribution_rate=Decimal("0.2"), op_id="c1")
        e.adjust("a", Decimal(1), who="ops", reason="r", op_id="a2")
        conn = apsw.Connection(e._path)
        try:
            conn.execute("PRAGMA writable_schema = ON")
            conn.execute("UPDATE sqlite_schema SET sql = replace(sql, ') STRICT', ')') "
                         "WHERE name = 'ledger'")
            conn.execute("PRAGMA writable_schema = OFF")
        finally:
            conn.close()
        half = ("UPDATE ledger SET delta = delta + 0.5, adjusted = adjusted + 0.5, "
                "balance_after = balance_after + ? WHERE op_id = ?")
        past_trigger(e, "ledger_no_update", half, (0.5, "a1"))
        past_trigger(e, "ledger_no_update", "UPDATE ledger SET balance_after = "
                     "balance_after + 0.5 WHERE op_id = 'c1'", ())
        past_trigger(e, "ledger_no_update", half, (1, "a2"))
        past_trigger(e, "operations_no_update", "UPDATE operations SET result = "
                     "replace(result, '12.000000', '12.000001') WHERE op_id = 'a2'", ())
        assert problems(e) == [
            "a: ledger sums to about 12.000001, level holds 12.000000",
            "a: meter adjusted is 2.000000, ledger says about 2.000001",
            ("a: ledger row 2 (version 2) holds what the engine never writes: its delta is "
             "1000000.5, not an integer; its balance_after is 11000000.5, not an integer; its "
             "adjusted is 1000000.5, not an integer"),
            holds("a", 3, 3, "balance_after", 11000000.5),
            ("a: ledger row 4 (version 4) holds what the engine never writes: its delta is "
             "1000000.5, not an integer; its adjusted is 1000000.5, not an integer"),
            f"integrity_check: {not_strict('ledger')}"]


def rewrite_schema(e: JackpotEngine, table: str, new_sql: str) -> None:
    """Set `table`'s declaration to `new_sql` (SQL of its old one, `sql`), as a hand edit would."""
    conn = apsw.Connection(e._path)
    try:
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(f"UPDATE sqlite_schema SET sql = {new_sql} WHERE name = ?", (table,))
        conn.execute("PRAGMA writable_schema = OFF")
    finally:
        conn.close()


def without_strict(e: JackpotEngine, table: str) -> None:
    """Rebuild `table` without STRICT and NOT NULL: it then holds any value of any type."""
    rewrite_schema(e, table, "replace(replace(sql, ') STRICT', ')'), ' NOT NULL', '')")


def not_strict(table: str) -> str:
    return f"table {table} is not STRICT: it takes values of any type, not only those of its columns"


WEAKENED = {table: f"{not_strict(table)}; table {table} takes a NULL in columns {columns} (their "
                   "NOT NULL is gone)"
            for table, columns in (("ledger", "op_id, kind, level and 15 more"),
                                   ("levels", "status, amount, reserve and 22 more"),
                                   ("operations", "op_id, kind, fingerprint and 2 more"))}
"""What the integrity check says of a table `without_strict` rebuilt (its own NOT NULL columns)."""


def holds(level: str, seq: int, version: object, column: str, value: object) -> str:
    """verify()'s problem with one cell of a ledger row's integer columns the engine never writes."""
    return (f"{level}: ledger row {seq} (version {version}) holds what the engine never writes: "
            f"its {column} is {value!r}, not an integer")


def weakened(table: str, *first: str) -> str:
    """verify()'s integrity_check problem after `without_strict(table)` (`first`: its others)."""
    return "integrity_check: " + "; ".join([*first, WEAKENED[table]])


@pytest.mark.parametrize(("column", "found"), [
    ("delta", ["major: ledger sums to 100.500000, level holds 101.000000"]),
    ("contributed", [
        "major: meter contributed is 1.000000, ledger says 0.500000",
        ("major: the pool's carried fraction is 0 billionths of a unit, but the ledger's bets, "
         "rates and retirements leave 500000000000000")]),
    ("overflow", []), ("paid", []), ("balance_after", [])])
def test_a_forged_null_amount_where_a_sum_overflows_is_a_problem_not_a_crash(
        engine: JackpotEngine, column: str, found: list[str]) -> None:
    # Past 2**63 SQLite's SUM raises, and the sums are made again exactly: that
    # re-sum once added a NULL (a ledger rebuilt without NOT NULL) and raised
    # TypeError. Now it leaves it out, as SUM does: the same problems as
    # without the overflow.
    engine.contribute(Decimal(50), op_id="b2")
    without_strict(engine, "ledger")
    past_trigger(engine, "ledger_no_update", f"UPDATE ledger SET overflow = {2**62} "
                 "WHERE op_id IN ('b1', 'b2') AND level = 'minor'", ())
    past_trigger(engine, "ledger_no_update", f"UPDATE ledger SET {column} = NULL "
                 "WHERE op_id = 'b2' AND level = 'major'", ())
    assert problems(engine) == [  # no exception
        *found, "minor: meter overflow is 0.000000, ledger says 9223372036854.775808",
        "major: ledger row 6 (version 3) does not add up",
        "minor: ledger row 4 (version 2) does not add up",
        "minor: ledger row 7 (version 4) does not add up",
        holds("major", 6, 3, column, None),
        credited("-4611686018422.387904"),
        credited("-4611686018422.387904").replace("'b1'", "'b2'"), weakened("ledger")]


@pytest.mark.parametrize("table", ["ledger", "levels", "operations"])
def test_a_table_rebuilt_without_strict_and_not_null_is_reported(
        engine: JackpotEngine, table: str) -> None:
    # Nothing in it changed yet: the engine still writes what it always did,
    # but the table takes a NULL or a value of any type it never writes, which
    # the other checks find only where it changes a figure (text where a 0
    # was is still 0 to SQL's arithmetic). Once not reported at all.
    without_strict(engine, table)
    assert problems(engine) == [weakened(table)]


@pytest.mark.parametrize("table", ["ledger", "levels", "operations"])
def test_a_column_an_operator_added_is_not_told_as_a_lost_not_null(engine: JackpotEngine,
                                                        table: str) -> None:
    # An added column (an operator's note) takes a NULL because the engine's
    # schema never had it, not because a constraint of the engine's was lost:
    # the engine never reads it, and once it was told as a NOT NULL gone.
    # Only the engine's own columns are held to the schema's NOT NULL.
    tamper(engine, f"ALTER TABLE {table} ADD COLUMN note TEXT")
    engine.contribute(Decimal(50), op_id="b2")  # (the engine writes on beside it)
    assert problems(engine) == []
    without_strict(engine, table)
    assert problems(engine) == [weakened(table)]


@pytest.mark.parametrize(("value", "told"), [
    (None, "its at_ms is None, not an integer"), ("abc", "its at_ms is 'abc', not an integer"),
    (1.5, "its at_ms is 1.5, not an integer"), (b"\x00", "its at_ms is b'\\x00', not an integer"),
    (-1, "its at_ms is -1, a time before 1970")])
def test_a_forged_time_of_a_ledger_row_is_told_against_its_row(
        engine: JackpotEngine, value: object, told: str) -> None:
    # No figure sums a row's time: a time the engine never writes (it writes
    # the host's clock, ms since 1970, an integer) once passed the audit.
    strict = value == -1  # (a negative time fits the STRICT table)
    if not strict:
        without_strict(engine, "ledger")
    past_trigger(engine, "ledger_no_update", "UPDATE ledger SET at_ms = ? "
                 "WHERE op_id = 'b1' AND level = 'major'", (value,))
    assert problems(engine) == [
        f"major: ledger row 3 (version 2) holds what the engine never writes: {told}",
        *([] if strict else [weakened("ledger")])]


@pytest.mark.parametrize("value", ["abc", "", b"\x00"])
@pytest.mark.parametrize("column", ["reserve_delta", "adjusted", "transferred"])
def test_text_where_the_engine_wrote_a_zero_is_told_against_its_row(
        engine: JackpotEngine, column: str, value: object) -> None:
    # SQL's arithmetic reads it as 0, the engine's figure there: every sum and
    # every row's check came out as written, and only the table's lost STRICT
    # was told, not the row.
    without_strict(engine, "ledger")
    past_trigger(engine, "ledger_no_update", f"UPDATE ledger SET {column} = ? "
                 "WHERE op_id = 'b1' AND level = 'major'", (value,))
    # (Beside the sums, reserve_delta is compared with them as it is: text
    # is no number there, and the row does not add up.)
    broken = ["major: ledger row 3 (version 2) does not add up"] * (column == "reserve_delta")
    assert problems(engine) == [*broken, holds("major", 3, 2, column, value),
                                weakened("ledger")]


def test_a_null_in_a_strict_ledger_that_lost_only_its_not_null_is_told_against_its_row(
        engine: JackpotEngine) -> None:
    # STRICT keeps every cell an integer or a NULL: only the columns that
    # lost their NOT NULL are tested cell by cell (on a sound ledger none is).
    rewrite_schema(engine, "ledger", "replace(sql, 'adjusted INTEGER NOT NULL', 'adjusted INTEGER')")
    past_trigger(engine, "ledger_no_update", "UPDATE ledger SET adjusted = NULL "
                 "WHERE op_id = 'b1' AND level = 'major'", ())
    assert problems(engine) == [
        "major: ledger row 3 (version 2) does not add up",
        holds("major", 3, 2, "adjusted", None),
        "integrity_check: table ledger takes a NULL in column adjusted (its NOT NULL is gone)"]


@pytest.mark.parametrize(("seq", "told"), [
    (7, []),  # a bet without a caller's op_id (auto-...): nothing else reads it
    (5, ["operation 'w1' recorded without ledger rows"]),  # a caller's, with a stored result
    (1, [])])  # a level's create row (create:minor)
def test_a_null_op_id_is_told_against_its_row(engine: JackpotEngine, seq: int,
                                              told: list[str]) -> None:
    # The engine writes an op_id on every row (the caller's, or its own): a
    # NULL one in a ledger that lost the NOT NULL was told only as the lost
    # NOT NULL, the row nowhere (no check reads a row's op_id alone).
    engine.contribute(Decimal(50))
    rewrite_schema(engine, "ledger", "replace(sql, 'op_id TEXT NOT NULL', 'op_id TEXT')")
    past_trigger(engine, "ledger_no_update", "UPDATE ledger SET op_id = NULL WHERE seq = ?",
                 (seq,))
    level, version = {7: ("minor", 4), 5: ("minor", 3), 1: ("minor", 1)}[seq]
    assert problems(engine) == [
        (f"{level}: ledger row {seq} (version {version}) holds what the engine never writes: "
         "its op_id is None, not text"), *told,
        "integrity_check: table ledger takes a NULL in column op_id (its NOT NULL is gone)"]


def test_text_in_a_strict_ledger_whose_integer_column_was_made_any_is_told_against_its_row(
        engine: JackpotEngine) -> None:
    # STRICT keeps a column's cells of its declared type only: a column
    # redeclared ANY (its NOT NULL kept) takes text, which SQL's arithmetic
    # reads as the 0 the engine wrote, and SQLite's integrity check finds
    # nothing (of a TEXT column it tells the integers). Its cells were taken
    # as kept integer, never tested: verify() passed. (The column's type is
    # told too: it takes what the engine never writes, forged or not.)
    rewrite_schema(engine, "ledger", "replace(sql, 'adjusted INTEGER NOT NULL', 'adjusted ANY NOT NULL')")
    past_trigger(engine, "ledger_no_update", "UPDATE ledger SET adjusted = 'forged' "
                 "WHERE op_id = 'b1' AND level = 'major'", ())
    assert problems(engine) == [
        holds("major", 3, 2, "adjusted", "forged"),
        "integrity_check: table ledger: column adjusted is ANY, not INTEGER as the engine made it"]


def test_a_table_copied_by_a_tool_is_reported_with_all_it_lost(engine: JackpotEngine) -> None:
    # CREATE TABLE ... AS SELECT keeps the rows and drops all the rest: the
    # STRICT, the NOT NULL, the unique index and the append-only triggers.
    tamper(engine, "CREATE TABLE copy AS SELECT * FROM operations; DROP TABLE operations; "
                   "ALTER TABLE copy RENAME TO operations")
    assert problems(engine) == [(
        "integrity_check: trigger operations_no_update is missing: history is not append-only; "
        "trigger operations_no_delete is missing: history is not append-only; operations has "
        f"no unique index on (op_id): an op_id could be applied twice; {WEAKENED['operations']}")]


def rebuild(e: JackpotEngine, table: str, edit: Callable[[str], str]) -> None:
    """Rebuild `table` from its SQL as `edit` changes it: created anew, filled, renamed.

    How SQLite changes a table's constraints; its indexes and triggers are made again.
    """
    conn = apsw.Connection(e._path)
    try:
        (sql,), *_ = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,))
        others = [r[0] for r in conn.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND type IN ('index', 'trigger') "
            "AND sql IS NOT NULL", (table,))]
        with conn:
            conn.execute(edit(sql).replace(f"CREATE TABLE {table} ", "CREATE TABLE rebuilt ", 1))
            conn.execute(f"INSERT INTO rebuilt SELECT * FROM {table}; DROP TABLE {table}; "
                         f"ALTER TABLE rebuilt RENAME TO {table}")
            for create in others:
                conn.execute(create)
    finally:
        conn.close()


def without_checks(sql: str) -> str:
    """`sql` without the CHECK constraints the engine's schema declares in it."""
    for checks in ENGINE_CHECKS.values():
        for check in checks:
            sql = sql.replace(f" CHECK {check.shown}", "")
    return sql


LOST_CHECKS = ("integrity_check: table levels has lost its CHECK (status IN ('active', "
               "'suspended', 'retired')), (amount >= 0), (reserve >= 0), (carry >= 0 AND carry < "
               "1000000000), (reserve_carry >= 0 AND reserve_carry < 1000000000), (version >= "
               "1), (seed >= 0), (rate > 0 AND rate < 1000000000), (cap IS NULL OR cap >= "
               "seed), (reserve_rate >= 0 AND reserve_rate < 1000000000), (must_hit_by IS NULL "
               "OR must_hit_by > seed), (overflow_to IN ('meter', 'reserve')): it takes values "
               "the engine never writes")


@pytest.mark.parametrize(("table", "edit", "found"), [
    # STRICT and every NOT NULL kept, every CHECK gone.
    ("levels", without_checks, [LOST_CHECKS]),
    ("ledger", lambda sql: sql.replace(" CHECK (balance_after >= 0)", ""), [
        ("integrity_check: table ledger has lost its CHECK (balance_after >= 0): it takes values "
        "the engine never writes")]),
    # Weakened: a CHECK still, not the engine's.
    ("levels", lambda sql: sql.replace("CHECK (amount >= 0)", "CHECK (amount >= -1000)"), [
        ("integrity_check: table levels has lost its CHECK (amount >= 0): it takes values the "
        "engine never writes")]),
    ("levels", lambda sql: sql.replace("'retired'", "'RETIRED'"), [
        ("integrity_check: table levels has lost its CHECK (status IN ('active', 'suspended', "
        "'retired')): it takes values the engine never writes")]),
    # Left in a comment, or in a string, is no CHECK.
    ("ledger", lambda sql: sql.replace("CHECK (reserve_after >= 0)",
                                       "-- CHECK (reserve_after >= 0)\n"), [
        ("integrity_check: table ledger has lost its CHECK (reserve_after >= 0): it takes values "
        "the engine never writes")]),
    ("ledger", lambda sql: sql.replace("CHECK (reserve_after >= 0)",
                                       "DEFAULT 'CHECK (reserve_after >= 0)'"), [
        ("integrity_check: table ledger has lost its CHECK (reserve_after >= 0): it takes values "
        "the engine never writes")]),
    # A quoted name is a column's, whatever it spells: one of the table's own (always 1, a
    # bound of -1000, cap again) makes the CHECK that reads it pass, as SQLite reads it.
    ("levels", lambda sql: sql.replace("CHECK (amount >= 0)", 'CHECK ("AMOUNT >= 0")')
     .replace(") STRICT", ', "amount >= 0" INTEGER AS (1)) STRICT'), [
        ("integrity_check: table levels has lost its CHECK (amount >= 0): it takes values the "
        "engine never writes")]),
    ("ledger", lambda sql: sql.replace("CHECK (balance_after >= 0)", "CHECK (balance_after >= [0])")
     .replace(") STRICT", ", `0` INTEGER AS (-1000)) STRICT"), [
        ("integrity_check: table ledger has lost its CHECK (balance_after >= 0): it takes values "
        "the engine never writes")]),
    ("levels", lambda sql: sql.replace("cap IS NULL", 'cap IS "NULL"')
     .replace(") STRICT", ', "null" INTEGER AS (cap)) STRICT'), [
        ("integrity_check: table levels has lost its CHECK (cap IS NULL OR cap >= seed): it "
        "takes values the engine never writes")]),
    # The same expressions in other spacing, case, quoting and parentheses, or as table
    # constraints under a name of the operator's, are the same CHECKs.
    ("levels", lambda sql: sql.replace("CHECK (amount >= 0)", 'check((  "AMOUNT">=0\n))')
     .replace("CHECK (cap IS NULL OR cap >= seed)", "CHECK ([cap] is null Or `cap`>=Seed)"), []),
    ("ledger", lambda sql: without_checks(sql).replace(
        ") STRICT", ", CONSTRAINT kept CHECK (balance_after >= 0), /* the other */ "
                    "CHECK (reserve_after >= 0)) STRICT"), []),
])
def test_a_table_rebuilt_without_its_checks_is_reported(
        engine: JackpotEngine, table: str, edit: Callable[[str], str], found: list[str]) -> None:
    # SQLite has no catalog of CHECKs: a table rebuilt without them (its
    # STRICT and NOT NULL kept) took a negative balance or a status of its
    # own, and the integrity check, which reads the catalog, said nothing.
    rebuild(engine, table, edit)
    engine.contribute(Decimal(50), op_id="b2")  # (the engine writes on in it)
    assert problems(engine) == found


@pytest.mark.parametrize(("table", "edit", "found"), [
    # Its CHECK kept, made to take 'active   ' (RTRIM) or 'METER' (NOCASE) for the engine's.
    ("levels", lambda sql: sql.replace("status TEXT", "status TEXT COLLATE RTRIM")
     .replace("overflow_to TEXT", "overflow_to TEXT COLLATE NOCASE"), [
        ("integrity_check: table levels: column status has COLLATE RTRIM, not BINARY as the "
         "engine made it: it takes for equal text the engine tells apart; table levels: column "
         "overflow_to has COLLATE NOCASE, not BINARY as the engine made it: it takes for equal "
         "text the engine tells apart")]),
    # Its unique index kept, made to refuse op_id B1 after b1 (another operation).
    ("operations", lambda sql: sql.replace('"operations"', "operations ")
     .replace("op_id TEXT", "op_id TEXT COLLATE NOCASE"), [
        ("integrity_check: table operations: column op_id has COLLATE NOCASE, not BINARY as "
         "the engine made it: it takes for equal text the engine tells apart")]),
])
def test_a_column_given_a_collation_is_reported(
        engine: JackpotEngine, table: str, edit: Callable[[str], str], found: list[str]) -> None:
    # The engine compares text byte for byte (BINARY, SQLite's default): a
    # table rebuilt with a column of another collation kept its CHECK and its
    # unique index, which then passed values the engine never writes as its
    # own, and verify() said nothing.
    rebuild(engine, table, edit)
    assert problems(engine) == found


INDEX_COLLATION = ("not BINARY as the engine made it: it takes for equal text the engine "
                   "tells apart")


@pytest.mark.parametrize(("sql", "found"), [
    # The engine's unique index on op_id made again to take op_id B1 for b1 (the next
    # bet refused), its column still BINARY.
    (("DROP INDEX operations_op_id; "
      "CREATE UNIQUE INDEX operations_op_id ON operations (op_id COLLATE NOCASE)"),
     [("integrity_check: table operations: index operations_op_id has COLLATE NOCASE on "
       f"column op_id, {INDEX_COLLATION}")]),
    # Under another name beside it (it refuses as much), and a level's versions made
    # one for Minor and minor, 'minor ' and 'minor'.
    (("CREATE UNIQUE INDEX op_ids ON operations (op_id COLLATE RTRIM); "
      "DROP INDEX ledger_level_version; CREATE UNIQUE INDEX ledger_level_version "
      "ON ledger (level COLLATE NOCASE, version_after)"),
     [("integrity_check: table ledger: index ledger_level_version has COLLATE NOCASE on "
       f"column level, {INDEX_COLLATION}; table operations: index op_ids has COLLATE RTRIM "
       f"on column op_id, {INDEX_COLLATION}")]),
    # An index that is not unique refuses nothing, and SQLite reads through it only
    # for a comparison of its collation: none of the engine's.
    ("CREATE INDEX ledger_who ON ledger (who COLLATE NOCASE, level COLLATE RTRIM)", []),
    # A unique index of the operator's on the engine's columns, each BINARY.
    ("CREATE UNIQUE INDEX ledger_seq_op_id ON ledger (seq, op_id COLLATE BINARY)", []),
])
def test_a_unique_index_given_a_collation_is_reported(engine: JackpotEngine, sql: str,
                                                      found: list[str]) -> None:
    # The column kept BINARY (so `_collations` passed it), the index compared
    # with NOCASE: it refused op_id B1 after b1 (StorageError), or a level's
    # version 2 of Minor after minor's; verify() said nothing.
    tamper(engine, sql)
    assert problems(engine) == found


def refusing(*indexes: tuple[str, ...]) -> list[str]:
    """What verify() says of these (table, unique index, its columns) that refuse the engine's rows.

    A fourth element: what it says of a column of the operator's (`one_value`).
    """
    refused = {"levels": "a new level", "operations": "a new op_id",
               "ledger": "a level's next version"}
    return ["integrity_check: " + "; ".join(
        f"table {table}: unique index {index} on ({columns}) refuses rows the engine writes: "
        f"{refused[table]} refused as a duplicate{''.join(f' ({why})' for why in whys)}"
        for table, index, columns, *whys in indexes)]


def one_value(column: str, default: str) -> str:
    """What verify() says of a column of the operator's whose `default` every engine row takes."""
    return (f"{column} is {default}, its default, in every row the engine writes: with no "
            "default (NULL), or one that gives each row another value, they are apart")


@pytest.mark.parametrize(("sql", "found"), [
    # On an expression of a key's column: op_id B1 refused after b1, level Minor after minor.
    ("CREATE UNIQUE INDEX ops_lower ON operations (lower(op_id))",
     refusing(("operations", "ops_lower", "an expression"))),
    (("CREATE UNIQUE INDEX levels_lower ON levels (lower(name)); "
      "CREATE UNIQUE INDEX ledger_lower ON ledger (lower(level), version_after)"),
     refusing(("levels", "levels_lower", "an expression"),
              ("ledger", "ledger_lower", "an expression, version_after"))),
    # On other columns than a whole key: a level's second win, a bet that hits (its
    # contribution and its win: two rows of one op_id and level). A WHERE only narrows which.
    (("CREATE UNIQUE INDEX one_win ON operations (kind) WHERE kind = 'win'; "
      "CREATE UNIQUE INDEX ledger_op_level ON ledger (op_id, level)"),
     refusing(("ledger", "ledger_op_level", "op_id, level"),
              ("operations", "one_win", "kind"))),
    # On a whole key and more, or an expression beside it, with a WHERE or not: it refuses
    # nothing the key lets in.
    (("CREATE UNIQUE INDEX ops_kind ON operations (op_id, kind); "
      "CREATE UNIQUE INDEX ops_lower ON operations (lower(op_id), op_id) WHERE kind = 'win'; "
      "CREATE UNIQUE INDEX levels_status ON levels (status, name); "
      "CREATE UNIQUE INDEX ledger_kind ON ledger (kind, version_after, level); "
      "CREATE UNIQUE INDEX ledger_seq ON ledger (op_id, seq)"), []),
    # On a column of the operator's (the engine writes none of it: NULL, or what the
    # operator's default or tool puts there): it keeps apart what the operator's values do.
    # A generated column is an expression of the engine's: told as one.
    (("ALTER TABLE ledger ADD COLUMN ext_ref TEXT; "
      "CREATE UNIQUE INDEX ledger_ext_ref ON ledger (ext_ref)"), []),
    (("ALTER TABLE operations ADD COLUMN lop TEXT AS (lower(op_id)); "
      "CREATE UNIQUE INDEX ops_lop ON operations (lop, kind)"),
     refusing(("operations", "ops_lop", "an expression, kind"))),
    # On a column of the operator's whose default is a literal: every row the engine
    # writes takes it, as one of the engine's columns (a WHERE that may leave it out
    # is not read: told). One without default, beside it, is NULL: the rows are apart.
    (("ALTER TABLE operations ADD COLUMN tag TEXT NOT NULL DEFAULT ''; "
      "CREATE UNIQUE INDEX ops_tag ON operations (tag, kind); "
      "CREATE UNIQUE INDEX ops_tag_set ON operations (tag) WHERE tag <> ''; "
      "ALTER TABLE ledger ADD COLUMN n INTEGER DEFAULT 0; "
      "CREATE UNIQUE INDEX ledger_n ON ledger (n, kind, level); "
      "ALTER TABLE ledger ADD COLUMN ext_ref TEXT DEFAULT NULL; "
      "CREATE UNIQUE INDEX ledger_n_ext_ref ON ledger (n, kind, ext_ref)"),
     refusing(("ledger", "ledger_n", "n, kind, level", one_value("n", "0")),
              ("operations", "ops_tag", "tag, kind", one_value("tag", "''")),
              ("operations", "ops_tag_set", "tag", one_value("tag", "''")))),
])
def test_a_unique_index_that_refuses_the_engine_s_rows_is_reported(
        engine: JackpotEngine, sql: str, found: list[str]) -> None:
    # Only the keys' own unique indexes were looked at: one of the operator's on
    # lower(op_id) refused op_id B1 after b1 (StorageError, the bet not taken),
    # and verify() said ok.
    tamper(engine, sql)
    assert problems(engine) == found


def test_a_unique_index_on_a_column_of_a_literal_default_refuses_the_engine_s_rows(
        engine: JackpotEngine) -> None:
    # The engine writes none of the operator's column, so each of its rows takes the
    # default: the second contribution was refused (StorageError) while verify() said ok.
    tamper(engine, "ALTER TABLE operations ADD COLUMN tag TEXT NOT NULL DEFAULT 'x'; "
                   "CREATE UNIQUE INDEX ops_tag ON operations (tag, kind)")
    with pytest.raises(StorageError, match=r"UNIQUE constraint failed: operations\.tag"):
        engine.contribute(Decimal(50), op_id="b2")
    assert engine.pool("minor").version == 3
    assert problems(engine) == refusing(
        ("operations", "ops_tag", "tag, kind", one_value("tag", "'x'")))


def test_a_unique_index_on_a_column_of_a_random_default_takes_the_engine_s_rows(
        engine: JackpotEngine) -> None:
    # A default that calls randomblob() gives each row another value (ADD COLUMN takes
    # no such default: a rebuilt table's): not told, and the engine's rows go in.
    tamper(engine, "ALTER TABLE ledger ADD COLUMN uid TEXT")
    rebuild(engine, "ledger", lambda sql: sql.replace(
        "uid TEXT", "uid TEXT DEFAULT (lower(hex(RandomBlob (16))))"))
    tamper(engine, "CREATE UNIQUE INDEX ledger_uid ON ledger (uid)")
    engine.contribute(Decimal(50), op_id="b2")
    engine.process_win("minor", op_id="w2")
    assert engine.pool("minor").version == 5
    assert problems(engine) == []


def test_a_unique_index_on_an_expression_refuses_a_good_op_id(engine: JackpotEngine) -> None:
    # What the index above does to a caller: the bet is refused as an error of the
    # database's (neither a replay nor a conflict), and nothing of it is kept.
    tamper(engine, "CREATE UNIQUE INDEX ops_lower ON operations (lower(op_id))")
    with pytest.raises(StorageError, match="UNIQUE constraint failed: index 'ops_lower'"):
        engine.contribute(Decimal(50), op_id="B1")
    assert engine.pool("minor").version == 3
    assert problems(engine) == refusing(("operations", "ops_lower", "an expression"))


def test_a_levels_table_rebuilt_without_its_primary_key_is_reported(
        engine: JackpotEngine) -> None:
    # Only the operations' key was looked at: levels rebuilt with name TEXT
    # NOT NULL (no PRIMARY KEY) took a second row of a level's name.
    rebuild(engine, "levels", lambda sql: sql.replace("name TEXT PRIMARY KEY",
                                                      "name TEXT NOT NULL"))
    assert problems(engine) == [
        "integrity_check: levels has no unique index on (name): two rows could hold one level"]


def test_a_primary_key_given_a_collation_is_reported(engine: JackpotEngine) -> None:
    # A levels table rebuilt with PRIMARY KEY (name COLLATE NOCASE): its name
    # column BINARY, its key refused a level Minor beside minor.
    rebuild(engine, "levels", lambda sql: sql.replace("name TEXT PRIMARY KEY", "name TEXT")
            .replace(") STRICT", ", PRIMARY KEY (name COLLATE NOCASE)) STRICT"))
    assert problems(engine) == [
        ("integrity_check: table levels: index sqlite_autoindex_levels_1 has COLLATE NOCASE "
         f"on column name, {INDEX_COLLATION}")]


@pytest.mark.parametrize(("sql", "found"), [
    # Of the engine's name, made to refuse nothing (WHEN 0), or moved to another table: the
    # operations' rows could be deleted, and an op_id applied again.
    (("DROP TRIGGER operations_no_delete; CREATE TRIGGER operations_no_delete BEFORE DELETE "
      "ON operations WHEN 0 BEGIN SELECT RAISE(ABORT, 'operations are append-only'); END; "
      "DROP TRIGGER ledger_no_update; CREATE TRIGGER ledger_no_update BEFORE UPDATE ON levels "
      "BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END"),
     [("integrity_check: trigger ledger_no_update is not the engine's: history is not "
       "append-only; trigger operations_no_delete is not the engine's: history is not "
       "append-only")]),
    # Made again in other spacing, letter case, quoting and words: the engine's.
    (('DROP TRIGGER ledger_no_update; CREATE TRIGGER "ledger_no_update" before update '
      "ON [ledger] /* kept */ BEGIN select raise(abort, 'no edits'); end"), []),
])
def test_a_trigger_of_the_engines_name_that_is_not_the_engines_is_reported(
        engine: JackpotEngine, sql: str, found: list[str]) -> None:
    # Only the names were checked: a trigger of the engine's name that refused
    # nothing passed, and the record of op_id b1 could be deleted unseen.
    tamper(engine, sql)
    assert problems(engine) == found


def dropped_unseen(*triggers: tuple[str, str], told: tuple[str, ...] = ()) -> list[str]:
    """What verify() says of these (table, trigger) that run before the engine's INSERTs.

    `told`: what its integrity check says before them.
    """
    return ["integrity_check: " + "; ".join([*told, *(
        f"table {table}: trigger {trigger} runs before each row the engine inserts: it can "
        "drop the row unseen (an operation's record dropped, its op_id applies again)"
        for table, trigger in triggers)])]


@pytest.mark.parametrize(("sql", "found"), [
    # The operation's record dropped, its INSERT told nothing: the same op_id applied again.
    ("CREATE TRIGGER drop_ops BEFORE INSERT ON operations BEGIN SELECT RAISE(IGNORE); END",
     dropped_unseen(("operations", "drop_ops"))),
    # Under the name of one of the engine's (so none is missing), of no stated time (BEFORE),
    # the table named in other letters; and a ledger's win rows, by a name that is a keyword.
    (("DROP TRIGGER operations_no_update; CREATE TRIGGER operations_no_update INSERT ON "
      "main.Operations BEGIN SELECT RAISE(IGNORE); END; CREATE TRIGGER IF NOT EXISTS "
      "\"after\" BEFORE INSERT ON ledger WHEN NEW.kind = 'win' BEGIN SELECT RAISE(IGNORE); END"),
     dropped_unseen(("ledger", "after"), ("operations", "operations_no_update"), told=(
         "trigger operations_no_update is not the engine's: history is not append-only",))),
    # Run after the INSERT (a copy kept of each row), or on a table of the operator's: the
    # engine's row is in.
    (('CREATE TABLE ledger_archive (op_id TEXT); CREATE TRIGGER "before insert" AFTER INSERT '
      "ON ledger BEGIN INSERT INTO ledger_archive VALUES (NEW.op_id); END; CREATE TRIGGER "
      "archive_only BEFORE INSERT ON ledger_archive BEGIN SELECT RAISE(IGNORE); END"), []),
])
def test_a_trigger_that_can_drop_the_engines_rows_is_reported(
        engine: JackpotEngine, sql: str, found: list[str]) -> None:
    # RAISE(IGNORE) before an INSERT skips the row with no error: the engine
    # stored no record of op_id b2, then applied b2 a second time as new; verify()
    # said nothing, before or after.
    tamper(engine, sql)
    assert problems(engine) == found
    if found == dropped_unseen(("operations", "drop_ops")):
        first, second = (engine.contribute(Decimal(10), op_id="b2") for _ in range(2))
        assert (first.replayed, second.replayed) == (False, False)


@pytest.mark.parametrize(("table", "edit", "found"), [
    # STRICT kept, a column of ANY: it takes text, and text passes amount >= 0.
    ("levels", lambda sql: sql.replace("amount INTEGER", "amount ANY"), [
        "integrity_check: table levels: column amount is ANY, not INTEGER as the engine made it"]),
    ("ledger", lambda sql: sql.replace("balance_after INTEGER", "balance_after ANY")
     .replace("op_id TEXT", "op_id ANY"), [
        ("integrity_check: table ledger: column op_id is ANY, not TEXT as the engine made it; "
         "table ledger: column balance_after is ANY, not INTEGER as the engine made it")]),
    ("operations", lambda sql: sql.replace('"operations"', "operations ")
     .replace("fingerprint TEXT", "fingerprint ANY"), [
        ("integrity_check: table operations: column fingerprint is ANY, not TEXT as the engine "
        "made it")]),
    # INT is INTEGER to a STRICT table, and the case of a type is no matter.
    ("levels", lambda sql: sql.replace("amount INTEGER", "amount INT")
     .replace("seed INTEGER", "seed integer").replace("name TEXT", "name text"), []),
])
def test_a_column_of_another_type_is_reported(
        engine: JackpotEngine, table: str, edit: Callable[[str], str], found: list[str]) -> None:
    # PostgreSQL told a column whose type was changed; SQLite said nothing of
    # a table rebuilt STRICT with a column of another type.
    rebuild(engine, table, edit)
    engine.contribute(Decimal(50), op_id="b2")  # (the engine writes on in it)
    assert problems(engine) == found


@pytest.mark.parametrize(("level", "column", "found"), [
    *(("major", column, ["major: ledger row 3 (version 2) does not add up"])
      for column in ("adjusted", "reserve_transferred", "reserve_after", "balance_after",
                     "paid", "overflow")),
    # The row after it does not follow from it either.
    ("minor", "balance_after", ["minor: ledger row 4 (version 2) does not add up",
                                "minor: ledger row 5 (version 3) does not add up"])])
def test_a_forged_null_amount_is_a_row_that_does_not_add_up(
        engine: JackpotEngine, level: str, column: str, found: list[str]) -> None:
    # In SQL a comparison with NULL is never true: a NULL amount (where the
    # engine always writes an integer) once passed the row's check unseen, or
    # stopped the check of every stored result (or the audit) on int(None).
    without_strict(engine, "ledger")
    past_trigger(engine, "ledger_no_update", f"UPDATE ledger SET {column} = NULL "
                 "WHERE kind = 'contribute' AND level = ?", (level,))
    seq, version = {"major": (3, 2), "minor": (4, 2)}[level]
    assert problems(engine) == [*found, holds(level, seq, version, column, None),
                                weakened("ledger")]


INFINITE_AMOUNTS = {  # (column, 9e999 or -9e999 in b1's row of major): what verify() finds
    ("delta", 1): ["major: ledger sums to Infinity, level holds 100.500000"],
    ("delta", -1): ["major: ledger sums to -Infinity, level holds 100.500000"],
    ("contributed", 1): ["major: meter contributed is 0.500000, ledger says Infinity"],
    ("contributed", -1): ["major: meter contributed is 0.500000, ledger says -Infinity"],
    ("overflow", 1): ["major: meter overflow is 0.000000, ledger says Infinity"],
    ("overflow", -1): ["major: meter overflow is 0.000000, ledger says -Infinity"],
    ("paid", 1): ["major: meter won is 0.000000, ledger says Infinity"],
    ("reserve_delta", -1): ["major: ledger reserve sums to -Infinity, level holds 0.000000"],
    ("balance_after", 1): []}


@pytest.mark.parametrize(("column", "sign"), list(INFINITE_AMOUNTS))
def test_a_forged_infinite_amount_is_a_row_that_does_not_add_up_not_a_crash(
        engine: JackpotEngine, column: str, sign: int) -> None:
    # A ledger rebuilt without STRICT takes a REAL infinity (9e999 in SQL): its
    # sums, and the bet's figures its stored result is compared with, once
    # stopped the audit on int() (OverflowError). The row does not add up,
    # its level's sum is shown as what it is, the stored result is not
    # compared with it (nor the carried fraction: no fraction is left).
    without_strict(engine, "ledger")
    past_trigger(engine, "ledger_no_update", f"UPDATE ledger SET {column} = {sign * 9}e999 "
                 "WHERE op_id = 'b1' AND level = 'major'", ())
    assert problems(engine) == [  # no exception
        *INFINITE_AMOUNTS[column, sign], "major: ledger row 3 (version 2) does not add up",
        holds("major", 3, 2, column, sign * math.inf), weakened("ledger")]


ROW_3 = "major: ledger row 3 (version 2) does not add up"


@pytest.mark.parametrize(("column", "value", "found"), [
    ("contributed", 1e300, ["major: meter contributed is 0.500000, ledger says about 1e+294",
                            ROW_3]),
    ("paid", -1e300, ["major: meter won is 0.000000, ledger says about -1e+294", ROW_3]),
    ("delta", 1e300, ["major: ledger sums to about 1e+294, level holds 100.500000", ROW_3]),
    ("balance_after", 1e300, [ROW_3]),
    ("version_after", 1e300, [
        "major: ledger versions 1..1e+300 in 2 rows, level is at version 2 (expected 1..2)"]),
    # 1e19 units and major's 100 of seed funding sum in floating point to 1e19 + 99.999744
    ("house_funded", 1e19, [
        "major: meter house_funded is 100.000000, ledger says about 10000000000100", ROW_3])])
def test_a_forged_huge_real_amount_is_shown_short_and_as_inexact(
        engine: JackpotEngine, column: str, value: float, found: list[str]) -> None:
    # A REAL that is a whole number (a ledger rebuilt without STRICT) was
    # taken as an exact int: 1e300 was shown as 300 digits, in the sums, the
    # stored result's figures and the carried fraction; and a sum with a
    # REAL in it, made in floating point, as if it were exact (1e19 + 100
    # units said "10000000000099.999744"). Now its sums are shown as about
    # so much, a stored result is not compared with them, and the REAL is
    # told against its row.
    without_strict(engine, "ledger")
    past_trigger(engine, "ledger_no_update", f"UPDATE ledger SET {column} = ? "
                 "WHERE op_id = 'b1' AND level = 'major'", (value,))
    assert problems(engine) == [
        *found, holds("major", 3, value if column == "version_after" else 2, column, value),
        weakened("ledger")]


def test_a_forged_infinite_amount_where_a_sum_overflows_is_a_problem_not_a_crash(
        engine: JackpotEngine) -> None:
    # Past 2**63 the sums are made again exactly (`_ExactSum`): an infinity
    # there stopped the audit on int() as well.
    engine.contribute(Decimal(50), op_id="b2")
    without_strict(engine, "ledger")
    past_trigger(engine, "ledger_no_update", f"UPDATE ledger SET overflow = {2**62} "
                 "WHERE op_id IN ('b1', 'b2') AND level = 'minor'", ())
    past_trigger(engine, "ledger_no_update", "UPDATE ledger SET overflow = 9e999 "
                 "WHERE op_id = 'b2' AND level = 'major'", ())
    assert problems(engine) == [  # no exception
        "major: meter overflow is 0.000000, ledger says Infinity",
        "minor: meter overflow is 0.000000, ledger says 9223372036854.775808",
        "major: ledger row 6 (version 3) does not add up",
        "minor: ledger row 4 (version 2) does not add up",
        "minor: ledger row 7 (version 4) does not add up",
        holds("major", 6, 3, "overflow", math.inf),
        credited("-4611686018422.387904"),
        credited("-4611686018422.387904").replace("'b1'", "'b2'"), weakened("ledger")]


@pytest.mark.parametrize(("column", "set_to", "found"), [
    # +inf and -inf sum to NaN, which SQL gives as NULL; so does a column of
    # nothing but NULLs (the sum, or the least balance, of none).
    ("overflow", {"b1": "9e999", "b2": "-9e999"}, []),
    ("delta", {"b1": "9e999", "b2": "-9e999"}, []),
    *((column, {"%": "NULL"}, ["major: ledger row 2 (version 1) does not add up"])
      for column in ("paid", "balance_after"))])
def test_a_level_s_sum_of_no_number_is_told_by_its_rows_not_a_crash(
        engine: JackpotEngine, column: str, set_to: dict[str, str], found: list[str]) -> None:
    # Once from_units(None) (TypeError) or min() of a None: the audit stopped.
    engine.contribute(Decimal(50), op_id="b2")
    without_strict(engine, "ledger")
    for op_id, value in set_to.items():  # (a LIKE pattern: '%' is every row of major)
        past_trigger(engine, "ledger_no_update", f"UPDATE ledger SET {column} = {value} "
                     "WHERE level = 'major' AND op_id LIKE ?", (op_id,))
    forged = {"9e999": math.inf, "-9e999": -math.inf, "NULL": None}
    rows = {"%": [(2, 1), (3, 2), (6, 3)], "b1": [(3, 2)], "b2": [(6, 3)]}
    assert problems(engine) == [
        *found, "major: ledger row 3 (version 2) does not add up",
        "major: ledger row 6 (version 3) does not add up",
        *(holds("major", seq, version, column, forged[value])
          for op_id, value in set_to.items() for seq, version in rows[op_id]),
        weakened("ledger")]


@pytest.mark.parametrize(("column", "value", "found"), [
    ("balance_after", "x", ["major: ledger row 3 (version 2) does not add up"]),
    ("balance_after", b"\x00", ["major: ledger row 3 (version 2) does not add up"]),
    ("version_after", "x", [
        "major: ledger versions 1..x in 2 rows, level is at version 2 (expected 1..2)"]),
    ("version_after", 9e999, [
        "major: ledger versions 1..inf in 2 rows, level is at version 2 (expected 1..2)"]),
    # (Once read as version 1: the stored result's 2 was said to differ from it.)
    ("version_after", 1.5, [
        "major: ledger versions 1..1.5 in 2 rows, level is at version 2 (expected 1..2)"])])
def test_a_bet_s_figure_that_is_no_number_is_told_by_its_row_not_as_unreadable_results(
        engine: JackpotEngine, column: str, value: object, found: list[str]) -> None:
    # Once int('x') (ValueError): "stored results cannot be read as the engine
    # writes them", naming neither the row nor the operation, and no stored
    # result checked. Told by its row (or its level's versions), the stored
    # result not compared with it; the others still are.
    without_strict(engine, "ledger")
    past_trigger(engine, "ledger_no_update", f"UPDATE ledger SET {column} = ? "
                 "WHERE op_id = 'b1' AND level = 'major'", (value,))
    rewrite_result(engine, "w1", lambda r: r.update(balance="1.000000"))
    assert problems(engine) == [
        *found, holds("major", 3, value if column == "version_after" else 2, column, value),
        ("operation 'w1': its stored result says minor balance 1.000000, the ledger "
         "10.000000"), weakened("ledger")]


@pytest.mark.parametrize(("level", "shown"), [(b"\x00", "b'\\x00'"), (None, "None")])
def test_a_forged_level_of_another_type_than_text_next_to_a_text_one_is_reported(
        engine: JackpotEngine, level: object, shown: str) -> None:
    # The levels without a level row are listed in order: bytes and None once
    # failed to sort among text. (A number in a TEXT column is stored as text.)
    without_strict(engine, "ledger")
    tamper(engine, *ledger_row(op_id="x", version_after=1, level="ghost"))
    tamper(engine, *ledger_row(op_id="y", version_after=1, level=level))
    # (The rows that do not add up come in the order of their (level, version) key.)
    broken = [f"{shown}: ledger row 7 (version 1) does not add up",
              "ghost: ledger row 6 (version 1) does not add up"]
    # (A BLOB is also told against its row, as text is not: a NULL is told by the above.)
    blob = [(f"{shown}: ledger row 7 (version 1) holds what the engine never writes: its level "
            f"is {shown}, not text")] * isinstance(level, bytes)
    assert problems(engine) == [
        "ghost: no such level, yet 1 ledger row", f"{shown}: no such level, yet 1 ledger row",
        *(broken if level is None else broken[::-1]), *blob, weakened("ledger")]


def test_a_version_forged_as_a_real_that_is_no_whole_number_is_shown_as_it_is(
        engine: JackpotEngine) -> None:
    # int() cut major's create row's version 1.5 to 1: versions 1..2, as
    # written, and nothing told of the row.
    without_strict(engine, "ledger")
    past_trigger(engine, "ledger_no_update", "UPDATE ledger SET version_after = 1.5 "
                 "WHERE kind = 'create' AND level = 'major'", ())
    assert problems(engine) == [
        "major: ledger versions 1.5..2 in 2 rows, level is at version 2 (expected 1..2)",
        holds("major", 2, 1.5, "version_after", 1.5), weakened("ledger")]


def retired_major(engine: JackpotEngine) -> None:
    """Change major's rate, bet, and retire major into minor (rows: config, bet, retire)."""
    engine.update_config("major", contribution_rate=Decimal("0.02"), op_id="c1")
    engine.contribute(Decimal(50), op_id="b2")
    engine.retire("major", transfer_to="minor", who="ops", reason="r", op_id="r1")


@pytest.mark.parametrize(("version", "shown"), [("x", "x"), (b"\x00", "b'\\x00'")])
def test_a_config_row_s_version_that_is_no_number_does_not_hide_the_rates(
        engine: JackpotEngine, version: object, shown: str) -> None:
    # The create and config rows are sorted by version: text among the
    # integers failed the sort, told as "rate and retirement rows cannot be
    # read" (TypeError), and no level's carried fractions were checked. (As
    # SQLite orders them: numbers, then text, then BLOBs.)
    retired_major(engine)
    without_strict(engine, "ledger")
    past_trigger(engine, "ledger_no_update", "UPDATE ledger SET version_after = ? "
                 "WHERE kind = 'config'", (version,))
    # Last in major's order, the config row leaves b2 at the rate before it.
    assert problems(engine) == [
        f"major: ledger versions 1..{shown} in 5 rows, level is at version 5 (expected 1..5)",
        ("major: the pool's carried fraction is 0 billionths of a unit, but the ledger's bets, "
         "rates and retirements leave -500000000000000"),
        f"major: ledger row 6 (version {shown}) does not add up",
        holds("major", 6, shown, "version_after", version), weakened("ledger")]


RETIRE_ROW = "major: ledger row 9 (version 5) does not add up"


@pytest.mark.parametrize(("kind", "column", "value", "found"), [
    ("retire", "transferred", "x", [
        "major: meter transferred is -101.500000, ledger says about 0", RETIRE_ROW]),
    ("transfer_in", "reserve_transferred", "x", []),
    ("retire", "transferred", 9e999, [
        "major: meter transferred is -101.500000, ledger says Infinity", RETIRE_ROW])])
def test_a_retirement_s_figure_that_is_no_number_is_told_against_the_retirement(
        engine: JackpotEngine, kind: str, column: str, value: object,
        found: list[str]) -> None:
    # Text once made the check of what moved fail: "retirement rows cannot be
    # read as the engine writes them (TypeError: ...)", naming no retirement;
    # an infinity was compared as units ("major gave -inf units").
    retired_major(engine)
    without_strict(engine, "ledger")
    past_trigger(engine, "ledger_no_update", f"UPDATE ledger SET {column} = ? "
                 "WHERE kind = ?", (value, kind))
    row = {"retire": holds("major", 9, 5, column, value),
           "transfer_in": holds("minor", 10, 5, column, value)}[kind]
    assert problems(engine) == [
        *found, row, (f"retirement 'r1': its {kind} row's {column} is {value!r}, not a whole "
                      "number of units"), weakened("ledger")]


def test_a_bet_row_forged_without_a_level_is_told_against_its_operation(
        engine: JackpotEngine) -> None:
    # b1's row of major has no level: its result names a level its rows are
    # not of. Sorting a None among the names once failed: "its stored result
    # is unreadable", which it is not.
    without_not_null_on_level(engine)
    past_trigger(engine, "ledger_no_update", "UPDATE ledger SET level = NULL "
                 "WHERE op_id = 'b1' AND level = 'major'", ())
    assert problems(engine) == [
        "major: ledger versions 1..1 in 1 row, level is at version 2 (expected 1..2)",
        "major: ledger sums to 100.000000, level holds 100.500000",
        "major: meter bets is 1, ledger says 0",
        "major: meter wagered is 50.000000, ledger says 0.000000",
        "major: meter contributed is 0.500000, ledger says 0.000000",
        "None: no such level, yet 1 ledger row",
        "None: ledger row 3 (version 2) does not add up",
        ("operation 'b1': its stored result names levels major, minor, its ledger rows are "
         "of NULL, minor"),
        "integrity_check: table ledger takes a NULL in column level (its NOT NULL is gone)"]


@pytest.mark.parametrize(("op_id", "shown"), [(b"\x00", "b'\\x00'"), (None, "None")])
def test_a_forged_op_id_of_another_type_than_text_next_to_a_text_one_is_reported(
        engine: JackpotEngine, op_id: object, shown: str) -> None:
    # The records without ledger rows are told in op_id order.
    without_strict(engine, "operations")
    for forged in ("zz", op_id):
        tamper(engine, "INSERT INTO operations (op_id, kind, fingerprint, result, at_ms) "
                       "VALUES (?, 'adjust', hex(zeroblob(32)), '{}', 0)", (forged,))
    unread = "recorded without ledger rows (its stored result cannot be read)"
    assert problems(engine) == [f"operation 'zz' {unread}", f"operation {shown} {unread}",
                                weakened("operations")]


@pytest.mark.parametrize(("version", "shown"), [("x", "x"), (b"\x00", "b'\\x00'")])
def test_a_forged_version_that_is_not_a_number_is_reported(
        engine: JackpotEngine, version: object, shown: str) -> None:
    # The ledger's versions are summed up as numbers: text and a BLOB (greater
    # than any number in SQLite's order) once failed int().
    without_strict(engine, "ledger")
    tamper(engine, *ledger_row(op_id="x", version_after=version))
    assert problems(engine) == [
        f"minor: ledger versions 1..{shown} in 4 rows, level is at version 3 (expected 1..3)",
        f"minor: ledger row 6 (version {shown}) does not add up",
        holds("minor", 6, shown, "version_after", version), weakened("ledger")]


def test_a_forged_version_that_is_null_is_reported(engine: JackpotEngine) -> None:
    # NULL comes first in the level's order of versions: the row after it
    # does not follow from it either.
    without_strict(engine, "ledger")
    tamper(engine, *ledger_row(op_id="x", version_after=None))
    assert problems(engine) == [
        "minor: ledger versions 1..3 in 4 rows, level is at version 3 (expected 1..3)",
        "minor: ledger row 6 (version None) does not add up",
        "minor: ledger row 1 (version 1) does not add up",
        holds("minor", 6, None, "version_after", None), weakened("ledger")]


FIGURES = [("amount", "amount"), ("carry", "carry"), ("seed", "setting seed"),
           ("trigger", "must-hit-by trigger"), ("m_won", "meter won")]


@pytest.mark.parametrize(("column", "what", "value"), [
    (column, what, value) for column, what in FIGURES for value in ("x", b"\x00", None)
    if (column, value) != ("trigger", None)])  # (no must_hit_by: no trigger, as written)
def test_a_level_s_figure_forged_as_something_else_than_a_number_is_reported(
        engine: JackpotEngine, column: str, what: str, value: object) -> None:
    # The level's figures are compared and shown as amounts: text, a BLOB or
    # a NULL there once failed the comparison (TypeError) or the formatting
    # (decimal.InvalidOperation) instead.
    without_strict(engine, "levels")
    tamper(engine, f"PRAGMA ignore_check_constraints = ON; "
                   f"UPDATE levels SET {column} = ? WHERE name = 'minor'", (value,))
    # The CHECK on carry (0 <= carry < 1e9) fails for text and a BLOB, not for NULL.
    checked = ["CHECK constraint failed in levels"] * (column == "carry" and value is not None)
    assert problems(engine) == [
        f"minor: its {what} in the levels table is {value!r}, not a number",
        weakened("levels", *checked)]


@pytest.mark.parametrize(("column", "what", "value"), [
    ("seed", "setting seed", "x"), ("rate", "setting rate", "x"),
    ("rate", "setting rate", None), ("reserve_rate", "setting reserve_rate", b"\x00")])
def test_opening_a_level_whose_setting_is_forged_as_no_number_warns_and_verify_tells_it(
        engine: JackpotEngine, caplog: pytest.LogCaptureFixture, column: str, what: str,
        value: object) -> None:
    # open() with the level's settings compares them with those held, for its
    # warning: text, a NULL or a BLOB there once failed the open with
    # decimal.InvalidOperation or TypeError (after it had committed).
    engine.close()
    without_strict(engine, "levels")
    tamper(engine, f"PRAGMA ignore_check_constraints = ON; "
                   f"UPDATE levels SET {column} = ? WHERE name = 'minor'", (value,))
    with caplog.at_level("WARNING", logger="jackpot"), JackpotEngine.open(
            engine._path, LEVELS, settings=Settings(enable_metrics=False)) as e:
        # (The CHECK on a rate (0 < rate < 1e9) fails for text and a BLOB, not for NULL.)
        checked = ["CHECK constraint failed in levels"] * (column != "seed" and value is not None)
        assert problems(e) == [f"minor: its {what} in the levels table is {value!r}, not a number",
                               weakened("levels", *checked)]
    [record] = caplog.records
    assert record.getMessage() == (
        f"level minor already exists in {engine._path} and is kept as it is there, though not "
        "all its settings there are numbers (a damaged or tampered database: verify() tells "
        "which)")


def test_a_win_row_forged_without_a_kind_is_reported_and_the_other_results_checked(
        engine: JackpotEngine) -> None:
    # A ledger rebuilt without NOT NULL: w1's only row has no kind. Its kinds
    # once came back as NULL, and the check of every stored result failed.
    without_strict(engine, "ledger")
    past_trigger(engine, "ledger_no_update",
                 "UPDATE ledger SET kind = NULL WHERE op_id = 'w1'", ())
    rewrite_result(engine, "b1", lambda r: r["versions"].update(mega=1))
    assert problems(engine) == [
        "minor: meter wins is 1, ledger says 0",
        ("operation 'b1': its stored result names levels major, minor in contributions, major, "
         "minor in balances and major, mega, minor in versions: a bet shows each level it "
         "names in all three"),
        "operation 'w1': its ledger rows are of kinds NULL; 'win' operations write win",
        weakened("ledger")]


def test_a_level_s_pending_changes_forged_as_null_name_the_level(engine: JackpotEngine) -> None:
    # json.loads(None) raises TypeError: once told as such, naming no level.
    without_strict(engine, "levels")
    tamper(engine, "UPDATE levels SET pending = NULL WHERE name = 'minor'")
    assert problems(engine) == [
        ("levels cannot be read as the engine writes them (UnreadableRowError: level 'minor': "
         "its pending changes None are not what the engine writes (a damaged or tampered "
         "database))"), weakened("levels")]


def rewrite_fingerprint(engine: JackpotEngine, op_id: str, fingerprint: object) -> None:
    """Set a recorded operation's fingerprint (the append-only trigger put back after)."""
    without_strict(engine, "operations")  # any value of any type
    conn = apsw.Connection(engine._path)
    try:
        (trigger,) = conn.execute("SELECT sql FROM sqlite_master "
                                  "WHERE name = 'operations_no_update'").fetchone()
        with conn:
            conn.execute("DROP TRIGGER operations_no_update")
            conn.execute("UPDATE operations SET fingerprint = ? WHERE op_id LIKE ?",
                         (fingerprint, op_id))
            conn.execute(trigger)
    finally:
        conn.close()


FORGED_FINGERPRINTS = [("x", "'x'"), ("A" * 64, repr("A" * 64)), ("0" * 65, repr("0" * 65)),
                       (b"\x00" * 32, repr(b"\x00" * 32)), (None, "None"),
                       (1.5, "'1.5'")]  # (a TEXT column stores a number as text)


@pytest.mark.parametrize(("fingerprint", "shown"), FORGED_FINGERPRINTS)
def test_a_recorded_fingerprint_the_engine_never_writes_is_reported(
        engine: JackpotEngine, fingerprint: object, shown: str) -> None:
    # A retry of the bet would be refused as a conflict: its digest never matches.
    rewrite_fingerprint(engine, "b1", fingerprint)
    assert problems(engine) == [
        (f"operation 'b1': its request fingerprint {shown} is not what the engine writes "
         "(64 hexadecimal digits): a retry of its request would be refused as a conflict"),
        weakened("operations")]


def test_the_fingerprint_of_a_record_without_ledger_rows_is_checked_too(
        engine: JackpotEngine) -> None:
    tamper(engine, "INSERT INTO operations (op_id, kind, fingerprint, result, at_ms) "
                   "VALUES ('ghost', 'win', 'x', ?, 0)", (ghost_win("ghost"),))
    assert problems(engine) == [
        "operation 'ghost' recorded without ledger rows",
        ("operation 'ghost': its request fingerprint 'x' is not what the engine writes "
         "(64 hexadecimal digits): a retry of its request would be refused as a conflict")]


def test_past_twenty_forged_fingerprints_the_rest_are_counted(engine: JackpotEngine) -> None:
    for i in range(22):
        engine.contribute(Decimal(1), op_id=f"bet-{i:02}")
    rewrite_fingerprint(engine, "%", "x")  # (a LIKE pattern: every record)
    found = problems(engine)
    assert found == [*(f"operation {op!r}: its request fingerprint 'x' is not what the engine "
                       "writes (64 hexadecimal digits): a retry of its request would be refused "
                       "as a conflict" for op in ["b1", *(f"bet-{i:02}" for i in range(19))]),
                     "... and 4 more request fingerprints the engine never writes",
                     weakened("operations")]


@pytest.mark.parametrize(("holder", "shown"), [
    ("w1", "'w1'"), ("", "''"), (b"\x00", "b'\\x00'"), (1.5, "'1.5'")])
def test_a_lock_holder_left_on_a_committed_level_is_reported(
        engine: JackpotEngine, holder: object, shown: str) -> None:
    without_strict(engine, "levels")
    tamper(engine, "UPDATE levels SET lock_holder = ? WHERE name = 'minor'", (holder,))
    assert problems(engine) == [
        (f"minor: its lock holder in the levels table is {shown}; the engine clears it in "
         "the transaction that sets it, so a committed row holds none"), weakened("levels")]


@pytest.mark.parametrize(("column", "what", "value"), [
    ("m_contributed", "meter contributed", 1.5), ("amount", "amount", 1.5e6),
    ("amount", "amount", 10_000_000.0), ("version", "version", 3.0),
    ("seed", "setting seed", 1e300), ("carry", "carry", math.inf)])
def test_a_real_figure_in_the_levels_table_is_told_as_one_the_engine_never_writes(
        engine: JackpotEngine, column: str, what: str, value: float) -> None:
    # A REAL where the engine wrote an integer was compared with the ledger
    # as if the engine could have written it ("meter contributed is about
    # 0.0000015, ledger says ..."), or passed where it equals the ledger's
    # figure (10000000.0): told as what it is instead, as a ledger cell is.
    # (An INTEGER column, STRICT or not, stores a whole REAL as an integer:
    # declared without a type, as a hand edit can leave it, it keeps it.)
    without_strict(engine, "levels")
    rewrite_schema(engine, "levels", f"replace(sql, ' {column} INTEGER', ' {column}')")
    tamper(engine, f"PRAGMA ignore_check_constraints = ON; "
                   f"UPDATE levels SET {column} = ? WHERE name = 'minor'", (value,))
    checked = ["CHECK constraint failed in levels"] * (column == "carry")
    assert problems(engine) == [
        f"minor: its {what} in the levels table is {value!r}, not an integer",
        weakened("levels", *checked)]


# -- past twenty of a sort: the rest counted ----------------------------------------------------

def many_bets(tmp_path: Path, n: int) -> JackpotEngine:
    """An engine on one level 'a' (a bet of 0.00003 hits it 3 times) after `n` such bets."""
    levels = [GroupConfig("a", Decimal(10), Decimal("0.1"), must_hit_by=Decimal("10.000001"))]
    e = JackpotEngine.open(tmp_path / "pools.db", levels,
                           settings=Settings(enable_metrics=False, log_level="error"))
    for i in range(n):
        e.contribute(Decimal("0.00003"), op_id=f"b{i:02}", player="p-1")
    assert e.verify().ok
    return e


@pytest.mark.parametrize(("rows", "rest"), [
    (23, "3 more ledger rows that do not add up"),
    (21, "1 more ledger row that does not add up")])  # (was "1 more ledger rows that do not")
def test_past_twenty_ledger_rows_that_do_not_add_up_the_rest_are_counted(
        engine: JackpotEngine, rows: int, rest: str) -> None:
    # Capped at 20 and nothing said of the rest: an operator with 5,000 bad
    # rows read 20 and thought that was all.
    for version in range(4, 4 + rows):
        sql, params = ledger_row(version_after=version, delta=5, balance_after=999)
        tamper(engine, sql, params)
    told = [p for p in problems(engine) if "ledger row" in p or p.startswith("... and")]
    assert told == [*(f"minor: ledger row {v + 2} (version {v}) does not add up"
                      for v in range(4, 24)),
                    f"... and {rest}"]


@pytest.mark.parametrize("broken", [False, True])
def test_past_twenty_ledger_rows_holding_what_the_engine_never_writes_the_rest_are_counted(
        tmp_path: Path, broken: bool) -> None:
    # Counted by the audit's one pass (`broken`: by the queries apart, which
    # a row that does not add up makes the audit run instead).
    with many_bets(tmp_path, 8) as e:
        rows = len(e._reader.ledger())  # (one level: each row's seq is its version)
        assert rows > 21
        without_strict(e, "ledger")
        past_trigger(e, "ledger_no_update", "UPDATE ledger SET at_ms = 'x'", ())
        if broken:
            past_trigger(e, "ledger_no_update", "UPDATE ledger SET adjusted = 1 "
                         "WHERE version_after = ?", (rows,))
        found = problems(e)
    told = [p for p in found if "holds what" in p or p.startswith("... and")]
    assert told == [
        *(f"a: ledger row {seq} (version {seq}) holds what the engine never writes: its "
          "at_ms is 'x', not an integer" for seq in range(1, 21)),
        f"... and {rows - 20} more ledger rows holding what the engine never writes"]
    assert (f"a: ledger row {rows} (version {rows}) does not add up" in found) is broken
    assert found[-1] == weakened("ledger")


@pytest.mark.parametrize("broken", [False, True])
def test_past_twenty_bet_rows_whose_detail_is_no_bet_s_the_rest_are_counted(
        tmp_path: Path, broken: bool) -> None:
    with many_bets(tmp_path, 23) as e:
        rows = [(r.seq, r.version_after) for r in e._reader.ledger(kinds=("contribute",))]
        past_trigger(e, "ledger_no_update", "UPDATE ledger SET detail = '{\"bet\": 01}' "
                     "WHERE kind = 'contribute'", ())
        if broken:
            past_trigger(e, "ledger_no_update", "UPDATE ledger SET adjusted = 1 "
                         "WHERE version_after = 2", ())
        found = problems(e)
    told = [p for p in found if "no bet's" in p]
    assert told == [*(bet_unread(f"a: ledger row {seq} (version {v})", '{"bet": 01}')
                      for seq, v in rows[:20]),
                    f"... and {len(rows) - 20} more bet rows whose detail is no bet's"]


@pytest.mark.parametrize(("bets", "rest"), [
    (23, "3 more operations"), (21, "1 more operation")])  # (was "1 more operations")
def test_past_twenty_bets_whose_hits_name_different_winners_the_rest_are_counted(
        tmp_path: Path, bets: int, rest: str) -> None:
    with many_bets(tmp_path, bets) as e:
        past_trigger(e, "ledger_no_update", "UPDATE ledger SET who = 'mallory' WHERE seq IN "
                     "(SELECT MIN(seq) FROM ledger WHERE kind = 'hit' GROUP BY op_id)", ())
        found = problems(e)
    assert [p for p in found if "winners" in p] == [
        *(f"operation 'b{i:02}': its hit rows name different winners: a bet has one player"
          for i in range(20)),
        f"... and {rest} whose hit rows name different winners"]


@pytest.mark.parametrize("column", ["op_id", "kind", "level", "who", "detail"])
def test_a_blob_in_a_text_column_of_the_ledger_is_told_against_its_row(
        engine: JackpotEngine, column: str) -> None:
    # A table rebuilt without STRICT takes it; no check read it as what it is.
    without_strict(engine, "ledger")
    past_trigger(engine, "ledger_no_update", f"UPDATE ledger SET {column} = x'00' "
                 "WHERE op_id = 'b1' AND level = 'major'", ())
    level = "b'\\x00'" if column == "level" else "major"
    found = problems(engine)
    assert [p for p in found if "holds what" in p] == [
        (f"{level}: ledger row 3 (version 2) holds what the engine never writes: its {column} "
        "is b'\\x00', not text")]
    assert found[-1] == weakened("ledger")


@pytest.mark.parametrize(("kind", "value"), [("ANY", 5), ("ANY", b"p"), ("INTEGER", 7)])
def test_a_strict_ledger_whose_text_column_was_retyped_is_told_against_its_row(
        engine: JackpotEngine, kind: str, value: object) -> None:
    # STRICT keeps a cell of its column's declared type: a text column
    # redeclared ANY (or INTEGER) takes a number or a BLOB, and only its
    # cells are tested (those of a column still TEXT cost nothing).
    rewrite_schema(engine, "ledger", f"replace(sql, 'who TEXT', 'who {kind}')")
    past_trigger(engine, "ledger_no_update", "UPDATE ledger SET who = ? "
                 "WHERE op_id = 'w1'", (value,))
    found = problems(engine)
    assert [p for p in found if "holds what" in p] == [
        (f"minor: ledger row 5 (version 3) holds what the engine never writes: its who is "
        f"{value!r}, not text")]


@pytest.mark.parametrize(("value", "told"), [
    (None, "None, not an integer"), ("abc", "'abc', not an integer"),
    (1.5, "1.5, not an integer"), (b"\x00", "b'\\x00', not an integer"),
    (-1, "-1, a time before 1970")])
def test_a_forged_time_of_a_recorded_operation_is_told(
        engine: JackpotEngine, value: object, told: str) -> None:
    # Nothing read it: any time at all passed the audit.
    strict = value == -1  # (a negative time fits the STRICT table)
    if not strict:
        without_strict(engine, "operations")
    past_trigger(engine, "operations_no_update", "UPDATE operations SET at_ms = ? "
                 "WHERE op_id = 'b1'", (value,))
    tamper(engine, "INSERT INTO operations (op_id, kind, fingerprint, result, at_ms) "
                   "VALUES ('ghost', 'win', hex(zeroblob(32)), ?, ?)", (ghost_win("ghost"), value))
    assert problems(engine) == [
        "operation 'ghost' recorded without ledger rows",
        f"operation 'b1': its time in the operations table is {told}",
        f"operation 'ghost': its time in the operations table is {told}",
        *([] if strict else [weakened("operations")])]


@pytest.mark.parametrize(("bets", "rest"), [
    (23, "5 more operations"), (19, "1 more operation")])  # (was "1 more operations")
def test_past_twenty_forged_times_of_recorded_operations_the_rest_are_counted(
        engine: JackpotEngine, bets: int, rest: str) -> None:
    for i in range(bets):
        engine.contribute(Decimal(1), op_id=f"c{i:02}")
    past_trigger(engine, "operations_no_update", "UPDATE operations SET at_ms = -5", ())
    assert problems(engine) == [
        *(f"operation '{op}': its time in the operations table is -5, a time before 1970"
          for op in ["b1", *(f"c{i:02}" for i in range(19))]),
        f"... and {rest} whose time the engine never writes"]


# -- a level's last-modified time ---------------------------------------------------------------

@pytest.mark.parametrize(("value", "strict", "told"), [
    (-1, True, "-1, a time before 1970"),
    ("x", False, "'x', not an integer"),
    (1.5, False, "1.5, not an integer"),
    (None, False, "None, not an integer"),
])
def test_a_level_s_last_modified_time_the_engine_never_writes_is_told(
        engine: JackpotEngine, value: object, strict: bool, told: str) -> None:
    # The time of a recorded operation and of a ledger row are told when
    # they are no time the engine writes; the level's own was read by
    # nothing, and any passed (the levels table is no append-only one: a
    # STRICT one takes -1).
    if not strict:
        without_strict(engine, "levels")
    tamper(engine, "UPDATE levels SET last_modified_at = ? WHERE name = 'minor'", (value,))
    assert problems(engine) == [
        f"minor: its last-modified time in the levels table is {told}",
        *([] if strict else [weakened("levels")])]


@pytest.mark.parametrize(("references", "told"), [
    ("", True),  # the key gone
    (" REFERENCES levels", False),  # put back on the levels' primary key: the same key
])
def test_a_ledger_that_lost_its_foreign_key_on_its_level_is_told(
        engine: JackpotEngine, references: str, told: bool) -> None:
    # The ledger then takes rows of a level that does not exist: the audit tells such
    # rows, but the table that takes them went untold.
    rewrite_schema(engine, "ledger",
                   f"replace(sql, ' REFERENCES levels (name)', '{references}')")
    assert problems(engine) == (
        [("integrity_check: table ledger has lost its FOREIGN KEY (level) REFERENCES levels: "
          "it takes rows of levels that do not exist")] if told else [])
