"""A database written by an earlier schema version opens, migrates and keeps its books."""

from __future__ import annotations

import logging
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import apsw
import pytest

from jackpot import JackpotEngine, LockTimeoutError, Settings, StorageError
from jackpot.storage import SQLiteStore
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


_OPERATIONS_V2 = """
CREATE TABLE operations_v2 (
    op_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    result TEXT NOT NULL,
    at_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
INSERT INTO operations_v2 SELECT op_id, kind, fingerprint, result, at_ms FROM operations;
DROP TABLE operations;
ALTER TABLE operations_v2 RENAME TO operations;
CREATE TRIGGER operations_no_update BEFORE UPDATE ON operations
BEGIN SELECT RAISE(ABORT, 'operations are append-only'); END;
CREATE TRIGGER operations_no_delete BEFORE DELETE ON operations
BEGIN SELECT RAISE(ABORT, 'operations are append-only'); END;
PRAGMA user_version = 2;
"""


def _operations_sql(path: Path) -> str:
    conn = apsw.Connection(str(path))
    try:
        return str(conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'operations'").fetchall()[0][0])
    finally:
        conn.close()


def test_a_version_2_database_gets_its_operations_in_rowid_order_and_keeps_every_result(
        db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with JackpotEngine.open(db_path) as engine:
        bets = [engine.contribute(Decimal("5.00"), op_id=f"bet-{n}") for n in range(50)]
        win = engine.process_win("minor", op_id="win-1")
    conn = apsw.Connection(str(db_path))
    conn.execute(_OPERATIONS_V2)  # the operations table as schema version 2 made it
    conn.close()
    assert "WITHOUT ROWID" in _operations_sql(db_path)

    caplog.set_level(logging.INFO, logger="jackpot")
    with JackpotEngine.open(db_path) as engine:
        said = [r.getMessage() for r in caplog.records if "migrat" in r.getMessage()]
        assert len(said) == 2
        assert said[0] == (f"migrating {db_path} from schema 2 to {len(MIGRATIONS)} under the "
                           "write lock (schema 3 rebuilds the operations table: about a "
                           "minute per 5 million stored results)")
        assert said[1].startswith(f"migrated {db_path} to schema {len(MIGRATIONS)} in ")
        # Every stored first result is still there: the same op_ids replay, unchanged.
        again = [engine.contribute(Decimal("5.00"), op_id=f"bet-{n}") for n in range(50)]
        assert [(b.replayed, b.versions, b.balances) for b in again] == [
            (True, b.versions, b.balances) for b in bets]
        assert engine.process_win("minor", op_id="win-1").amount == win.amount
        assert engine.contribute(Decimal("5.00"), op_id="bet-new").replayed is False
        assert engine.verify().ok
    assert "WITHOUT ROWID" not in _operations_sql(db_path)
    assert "operations_op_id" in _indexes(db_path)
    conn = apsw.Connection(str(db_path))
    try:
        assert conn.execute("PRAGMA user_version").fetchall() == [(len(MIGRATIONS),)]
        assert conn.execute("SELECT count(*) FROM operations").fetchall() == [(52,)]
        with pytest.raises(apsw.ConstraintError, match="append-only"):
            conn.execute("DELETE FROM operations WHERE op_id = 'bet-1'")
        with pytest.raises(apsw.ConstraintError, match="UNIQUE"):
            conn.execute("INSERT INTO operations SELECT * FROM operations WHERE op_id = 'bet-1'")
    finally:
        conn.close()


class _RaisingOn(logging.Filter):
    """A log filter that fails on the records of one outcome."""

    def __init__(self, outcome: str) -> None:
        super().__init__()
        self.outcome = outcome

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "outcome", None) == self.outcome:
            msg = "log filter failed"
            raise RuntimeError(msg)
        return True


@pytest.mark.parametrize("outcome", ["migrating", "migrated"])
def test_a_migration_is_applied_though_logging_it_raises(db_path: Path, outcome: str) -> None:
    # The two log lines are reports. Raising, the first rolled the migration
    # back and the second failed an open whose migration had committed: both
    # opens failed with the filter's error.
    with JackpotEngine.open(db_path) as engine:
        first = engine.contribute(Decimal("5.00"), op_id="bet-1")
    conn = apsw.Connection(str(db_path))
    conn.execute("CREATE INDEX ledger_op_id ON ledger (op_id); PRAGMA user_version = 1")
    conn.close()
    log, raising = logging.getLogger("jackpot"), _RaisingOn(outcome)
    log.addFilter(raising)
    try:
        with JackpotEngine.open(db_path) as engine:
            assert engine.contribute(Decimal("5.00"), op_id="bet-1").versions == first.versions
            assert engine.verify().ok
    finally:
        log.removeFilter(raising)
    assert "ledger_op_id" not in _indexes(db_path)


def test_the_integrity_check_names_a_missing_op_id_index(db_path: Path) -> None:
    with JackpotEngine.open(db_path) as engine:
        engine.contribute(Decimal("5.00"), op_id="bet-1")
    conn = apsw.Connection(str(db_path))
    conn.execute("DROP INDEX operations_op_id")
    conn.close()
    store = SQLiteStore(str(db_path))
    try:
        assert store.integrity_check() == (
            "operations has no unique index on (op_id): an op_id could be applied twice")
    finally:
        store.close()


def test_a_migration_that_fails_at_commit_says_to_open_again_not_to_resend_an_op_id(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with JackpotEngine.open(db_path) as engine:
        engine.contribute(Decimal("5.00"), op_id="bet-1")
    conn = apsw.Connection(str(db_path))
    conn.execute(_OPERATIONS_V2)
    conn.close()
    real_exec = SQLiteStore._exec

    def failing_commit(self: SQLiteStore, sql: str, params: tuple[object, ...] = ()) -> Any:
        if sql == "COMMIT":
            msg = "disk I/O error"
            raise apsw.IOError(msg)
        return real_exec(self, sql, params)

    monkeypatch.setattr(SQLiteStore, "_exec", failing_commit)
    with pytest.raises(StorageError) as failed:
        JackpotEngine.open(db_path)
    assert str(failed.value) == (
        f"migrating database {str(db_path)!r} to schema {len(MIGRATIONS)} failed while "
        "committing (IOError: disk I/O error); the file holds the old schema or the new one, "
        "whole: open it again (an open migrates it if it was not)")  # was: resend an op_id
    monkeypatch.undo()
    assert "WITHOUT ROWID" in _operations_sql(db_path)  # rolled back: schema 2, whole
    with JackpotEngine.open(db_path) as engine:
        assert engine.contribute(Decimal("5.00"), op_id="bet-1").replayed
        assert engine.verify().ok
    assert "WITHOUT ROWID" not in _operations_sql(db_path)


# The tables of the engine's first commit (never released), under user_version 1
# as schema 1 later was: other columns in levels and ledger.
_FIRST_COMMIT_V1 = """
CREATE TABLE levels (
    name TEXT PRIMARY KEY, seed INTEGER NOT NULL, rate INTEGER NOT NULL, cap INTEGER,
    amount INTEGER NOT NULL, carry INTEGER NOT NULL, version INTEGER NOT NULL,
    lock_holder TEXT, last_modified_at INTEGER NOT NULL,
    m_bets INTEGER NOT NULL DEFAULT 0, m_wagered INTEGER NOT NULL DEFAULT 0,
    m_contributed INTEGER NOT NULL DEFAULT 0, m_overflow INTEGER NOT NULL DEFAULT 0,
    m_seeded INTEGER NOT NULL DEFAULT 0, m_won INTEGER NOT NULL DEFAULT 0,
    m_wins INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, op_id TEXT NOT NULL, kind TEXT NOT NULL,
    level TEXT NOT NULL REFERENCES levels (name), delta INTEGER NOT NULL,
    balance_after INTEGER NOT NULL, version_after INTEGER NOT NULL,
    paid INTEGER NOT NULL DEFAULT 0, funded INTEGER NOT NULL DEFAULT 0,
    overflow INTEGER NOT NULL DEFAULT 0, at_ms INTEGER NOT NULL, who TEXT, detail TEXT
) STRICT;
CREATE UNIQUE INDEX ledger_level_version ON ledger (level, version_after);
CREATE INDEX ledger_op_id ON ledger (op_id);
CREATE TABLE operations (
    op_id TEXT PRIMARY KEY, kind TEXT NOT NULL, fingerprint TEXT NOT NULL,
    result TEXT NOT NULL, at_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
INSERT INTO levels (name, seed, rate, cap, amount, carry, version, last_modified_at)
    VALUES ('minor', 100000000, 5000000, NULL, 100025000, 0, 2, 1);
INSERT INTO ledger (op_id, kind, level, delta, balance_after, version_after, at_ms)
    VALUES ('create:minor', 'create', 'minor', 100000000, 100000000, 1, 1),
           ('b1', 'contribute', 'minor', 25000, 100025000, 2, 1);
INSERT INTO operations VALUES ('b1', 'contribute', 'f', '{}', 1);
PRAGMA user_version = 1;
"""


def test_a_schema_1_file_without_schema_1s_columns_is_refused_not_migrated(
        db_path: Path) -> None:
    # Such a file (the first commit's, or another application's with tables of
    # our names) was migrated to the latest schema, then the open failed with
    # "no such column: status": the file was changed and marked as the latest.
    conn = apsw.Connection(str(db_path))
    conn.execute(_FIRST_COMMIT_V1)
    conn.close()
    before = db_path.read_bytes()
    for opening in (lambda: JackpotEngine.open(db_path),
                    lambda: SQLiteStore(str(db_path), read_only=True)):
        with pytest.raises(StorageError) as refused:
            opening()
        assert str(refused.value) == (
            f"{str(db_path)!r} is not a jackpot database (user_version 1, tables: ledger, "
            "levels, operations, sqlite_sequence; without the columns levels.status, "
            "levels.reserve, levels.reserve_carry and 23 more): refusing to use it; nothing "
            "was changed")
    assert db_path.read_bytes() == before
    conn = apsw.Connection(str(db_path))
    try:
        assert conn.execute("PRAGMA user_version").fetchall() == [(1,)]
        assert "ledger_op_id" in _indexes(db_path)
    finally:
        conn.close()


def test_an_open_that_waits_out_another_processs_migration_says_so(db_path: Path) -> None:
    # It said only "database write lock not acquired within 100 ms (another
    # connection holds it)": an operator who had just upgraded could not tell
    # a migration in progress (minutes, on a large file) from a stuck writer.
    with JackpotEngine.open(db_path) as engine:
        engine.contribute(Decimal("5.00"), op_id="bet-1")
    conn = apsw.Connection(str(db_path))
    conn.execute(_OPERATIONS_V2)
    conn.close()
    migrating, release = threading.Event(), threading.Event()

    def hold_the_write_lock() -> None:  # as a migrating process does
        store = SQLiteStore(str(db_path))
        try:
            with store.write():
                migrating.set()
                release.wait(30)
        finally:
            store.close()

    holder = threading.Thread(target=hold_the_write_lock)
    holder.start()
    try:
        assert migrating.wait(30)
        with pytest.raises(LockTimeoutError) as waited:
            JackpotEngine.open(db_path, settings=Settings(lock_timeout_ms=100))
    finally:
        release.set()
        holder.join(30)
    assert str(waited.value) == (
        "database write lock not acquired within 100 ms (another connection holds it); "
        f"nothing was changed: the database is at schema 2 and this library needs "
        f"{len(MIGRATIONS)}; another process may be migrating it (the log of the one that "
        "does says when it started and when it ends): open it again once it has, or set "
        "JACKPOT_LOCK_TIMEOUT_MS to wait longer")
    assert "WITHOUT ROWID" in _operations_sql(db_path)  # nothing changed
    with JackpotEngine.open(db_path) as engine:
        assert engine.contribute(Decimal("5.00"), op_id="bet-1").replayed


def test_a_migration_that_runs_out_of_space_says_it_was_rolled_back(db_path: Path) -> None:
    # It said only "database error: FullError: database or disk is full".
    with JackpotEngine.open(db_path) as engine:
        for n in range(50):
            engine.contribute(Decimal("5.00"), op_id=f"bet-{n}")
    conn = apsw.Connection(str(db_path))
    conn.execute(_OPERATIONS_V2)
    conn.execute("VACUUM")  # no free page left in the file for the copy
    conn.close()
    store = SQLiteStore(str(db_path))
    try:
        (pages,) = store.conn.execute("PRAGMA page_count").fetchall()[0]
        store.conn.execute(f"PRAGMA max_page_count = {pages}").fetchall()  # a full disk
        with pytest.raises(StorageError) as failed:
            store.migrate()
    finally:
        store.close()
    assert str(failed.value) == (
        f"migrating database {str(db_path)!r} from schema 2 to {len(MIGRATIONS)} failed "
        "(database error: FullError: database or disk is full); it was rolled back: the "
        "database is at schema 2, whole. A migration needs free disk (see Upgrading in "
        "jackpot's README): free some and open it again")
    assert "WITHOUT ROWID" in _operations_sql(db_path)
    with JackpotEngine.open(db_path) as engine:
        assert engine.contribute(Decimal("5.00"), op_id="bet-1").replayed
        assert engine.verify().ok
    assert "WITHOUT ROWID" not in _operations_sql(db_path)


@pytest.mark.parametrize("version", range(1, len(MIGRATIONS) + 1))
def test_a_database_of_each_schema_version_passes_the_integrity_check(
        db_path: Path, version: int) -> None:
    # As the engine's migrations made it, up to `version` (a read-only store
    # reads an older schema as it is): each CHECK read out of a table's SQL
    # must be found in what that version's SQL created, or rebuilt.
    conn = apsw.Connection(str(db_path))
    for step in MIGRATIONS[:version]:
        conn.execute(step)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.close()
    store = SQLiteStore(str(db_path), create=False, read_only=True)
    try:
        assert store.schema_version() == version
        assert store.integrity_check() == "ok"
    finally:
        store.close()
