"""A database written by an earlier schema version opens, migrates and keeps its books."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import apsw

from jackpot import JackpotEngine
from jackpot.storage.schema import MIGRATIONS


def _indexes(path: Path) -> set[str]:
    conn = apsw.Connection(str(path))
    try:
        return {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    finally:
        conn.close()


def test_a_version_1_database_loses_the_ledger_op_id_index_and_keeps_everything(
        db_path: Path) -> None:
    with JackpotEngine.open(db_path) as engine:
        first = engine.contribute(Decimal("5.00"), op_id="bet-1")
    # Put the file back to how schema version 1 left it.
    conn = apsw.Connection(str(db_path))
    conn.execute("CREATE INDEX ledger_op_id ON ledger (op_id); PRAGMA user_version = 1")
    conn.close()
    assert "ledger_op_id" in _indexes(db_path)

    with JackpotEngine.open(db_path) as engine:
        assert engine.contribute(Decimal("5.00"), op_id="bet-1").versions == first.versions
        assert engine.verify().ok
    conn = apsw.Connection(str(db_path))
    assert conn.execute("PRAGMA user_version").fetchall() == [(len(MIGRATIONS),)]
    conn.close()
    assert "ledger_op_id" not in _indexes(db_path)
    assert {"ledger_level_version", "ledger_level_kind"} <= _indexes(db_path)
