"""A database changed behind the engine's back: verify() must say exactly what is wrong.

The ledger and the idempotency records are append-only (triggers refuse
UPDATE and DELETE), but a hostile or broken writer can still insert rows or
rewrite a level's row. Each tampering here is done through a separate
connection; `verify()` must stop being ok and name the level, meter or op_id.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import apsw
import pytest

from jackpot import GroupConfig, JackpotEngine, Settings

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


def test_an_idempotency_record_without_ledger_rows(engine: JackpotEngine) -> None:
    tamper(engine, "INSERT INTO operations (op_id, kind, fingerprint, result, at_ms) "
                   "VALUES ('ghost', 'win', 'x', '{}', 0)")
    assert problems(engine) == ["operation 'ghost' recorded without ledger rows"]


def test_two_idempotency_records_without_ledger_rows(engine: JackpotEngine) -> None:
    for op_id in ("ghost-1", "ghost-2"):
        tamper(engine, "INSERT INTO operations (op_id, kind, fingerprint, result, at_ms) "
                       "VALUES (?, 'win', 'x', '{}', 0)", (op_id,))
    assert sorted(problems(engine)) == ["operation 'ghost-1' recorded without ledger rows",
                                        "operation 'ghost-2' recorded without ledger rows"]


def test_a_pool_rewritten_in_place(engine: JackpotEngine) -> None:
    tamper(engine, "UPDATE levels SET amount = amount + 1 WHERE name = 'major'")
    found = problems(engine)
    assert any(p.startswith("major: ledger sums to 100.500000, level holds 100.500001")
               for p in found), found
    assert all(p.startswith("major:") for p in found), found


@pytest.mark.parametrize("meter", ["bets", "wagered", "contributed", "overflow", "reserve_in",
                                   "house_funded", "reserve_funded", "won", "wins", "hits",
                                   "adjusted", "transferred", "reserve_transferred"])
def test_a_meter_rewritten_in_place(engine: JackpotEngine, meter: str) -> None:
    tamper(engine, f"UPDATE levels SET m_{meter} = m_{meter} + 1 WHERE name = 'minor'")
    found = problems(engine)
    assert any(p.startswith(f"minor: meter {meter} is ") for p in found), found
    assert all(p.startswith("minor:") for p in found), found


def test_a_version_rewritten_in_place(engine: JackpotEngine) -> None:
    tamper(engine, "UPDATE levels SET version = version + 1 WHERE name = 'minor'")
    assert any("versions" in p and p.startswith("minor:") for p in problems(engine))


def test_a_forged_ledger_row_that_does_not_add_up(engine: JackpotEngine) -> None:
    sql, params = ledger_row(delta=5, balance_after=999)
    tamper(engine, sql, params)
    found = problems(engine)
    assert any("does not add up" in p and p.startswith("minor:") for p in found), found
