"""The backend contract on SQLite, a fresh database file per test; then what only a file shows.

Beyond the contract: a file that is not a jackpot database (another
application's, or a newer schema) is refused before anything in it changes,
and a read-only store never writes, never creates a file beside the database
and never waits for the write lock.
"""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import apsw
import apsw.shell
import pytest

from jackpot import JackpotEngine, StorageError
from jackpot.audit import audit
from jackpot.storage import StaleReadError, open_store
from jackpot.storage.schema import MIGRATIONS

from .contract import BackendContract


class TestSQLiteBackend(BackendContract):
    latest_schema = len(MIGRATIONS)

    @pytest.fixture
    def target(self, tmp_path: Path) -> str:
        return str(tmp_path / "pools.db")

    @contextmanager
    def hold_level_lock(self, target: str, level: str) -> Iterator[None]:
        # SQLite has one write lock for the whole file.
        conn = apsw.Connection(target)
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    def set_schema_version(self, target: str, version: int) -> None:
        run_sql(target, f"PRAGMA user_version = {version}")

    def raw_schema_version(self, target: str) -> int:
        return int(run_sql(target, "PRAGMA user_version")[0][0])


def run_sql(path: str, sql: str) -> list[tuple[object, ...]]:
    """Run `sql` on a plain connection of the test's own; return its rows."""
    conn = apsw.Connection(path)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def file_state(path: str) -> tuple[bytes, int, list[str]]:
    """The file's bytes, its mtime and the files beside it: equal means untouched."""
    p = Path(path)
    return p.read_bytes(), p.stat().st_mtime_ns, sorted(x.name for x in p.parent.iterdir())


# -- only a file whose schema the store knows is used; nothing else is touched --------


@pytest.mark.parametrize(("sql", "refusal"), [
    ("CREATE TABLE t (x)", "is not a jackpot database (user_version 0, tables: t)"),
    ("CREATE TABLE t (x); PRAGMA user_version = 7",
     "is not a jackpot database (user_version 7, tables: t)"),
    ("CREATE TABLE levels (x); PRAGMA user_version = 1",
     "is not a jackpot database (user_version 1, tables: levels)"),
    # The three table names and a user_version of ours, but none of our
    # columns: the migration changed the file, then failed on a column.
    (("CREATE TABLE levels (x); CREATE TABLE ledger (x); CREATE TABLE operations (x); "
      "PRAGMA user_version = 2"),
     ("is not a jackpot database (user_version 2, tables: ledger, levels, operations; "
      "without the columns levels.name, levels.status, levels.amount and ")),
])
def test_another_applications_file_is_refused_untouched(tmp_path: Path, sql: str,
                                                        refusal: str) -> None:
    path = str(tmp_path / "theirs.db")
    run_sql(path, sql)
    before = file_state(path)
    for opening in (lambda: JackpotEngine.open(path),
                    lambda: open_store(path, read_only=True),
                    lambda: open_store(path, create=False)):
        with pytest.raises(StorageError, match=re.escape(refusal)):
            opening()
    assert file_state(path) == before  # not even switched to WAL
    assert run_sql(path, "PRAGMA journal_mode") == [("delete",)]


def reloaded(path: str, version: int) -> str:
    """What opening `path`, the engine's tables of schema `version` at user_version 0, says."""
    return (f"{path!r} holds the jackpot tables with their columns at user_version 0, where the "
            "engine never leaves them: a file reloaded from a SQL dump looks so (the sqlite3 "
            "shell's .dump leaves the user_version out). If it is a jackpot database, its tables "
            f"are schema {version}'s: set it (sqlite3 {path} 'PRAGMA user_version = {version}') "
            f"and check it (jackpot --db {path} verify). Refusing to use it until then; nothing "
            "was changed")


def assert_refused_untouched(path: str, refusal: str) -> None:
    before = file_state(path)
    for opening in (lambda: JackpotEngine.open(path),
                    lambda: open_store(path, read_only=True),
                    lambda: open_store(path, create=False)):
        with pytest.raises(StorageError) as refused:
            opening()
        assert str(refused.value) == refusal
    assert file_state(path) == before


def test_a_reloaded_dump_without_its_user_version_says_what_to_do(tmp_path: Path) -> None:
    # The sqlite3 shell's .dump writes no user_version: the file reloaded from it
    # held the engine's tables at 0, and was refused as "not a jackpot database
    # (user_version 0, tables: ledger, levels, operations, sqlite_sequence)",
    # nothing saying why, nor what to do. (apsw's shell, used here, writes it:
    # its line is dropped, as the sqlite3 shell would have.)
    original, path = str(tmp_path / "pools.db"), str(tmp_path / "reloaded.db")
    with JackpotEngine.open(original) as engine:
        engine.contribute(Decimal(50), op_id="b1")
        engine.process_win("minor", op_id="w1")
        pools = engine.pools()
    dumped = io.StringIO()
    conn = apsw.Connection(original)
    try:
        apsw.shell.Shell(stdout=dumped, db=conn).process_command(".dump")
    finally:
        conn.close()
    script = dumped.getvalue()
    assert script.count(f"pragma user_version={len(MIGRATIONS)};") == 1
    run_sql(path, script.replace(f"pragma user_version={len(MIGRATIONS)};", ""))
    assert_refused_untouched(path, reloaded(path, len(MIGRATIONS)))
    # What the message says to do gives back the database, whole.
    run_sql(path, f"PRAGMA user_version = {len(MIGRATIONS)}")
    with JackpotEngine.open(path) as engine:
        assert engine.verify().ok
        assert engine.pools() == pools
        assert engine.contribute(Decimal(50), op_id="b1").replayed


@pytest.mark.parametrize("version", range(1, len(MIGRATIONS) + 1))
def test_the_schema_a_reloaded_dump_is_told_to_be_is_its_tables(tmp_path: Path,
                                                                 version: int) -> None:
    # Each schema's tables at user_version 0: told as that version, which the
    # engine then migrates from (a schema added to MIGRATIONS must be told too).
    path = str(tmp_path / "reloaded.db")
    run_sql(path, "".join(MIGRATIONS[:version]))
    assert_refused_untouched(path, reloaded(path, version))
    run_sql(path, f"PRAGMA user_version = {version}")
    with JackpotEngine.open(path) as engine:
        assert engine.verify().ok


def test_a_newer_jackpot_schema_is_refused_before_anything_changes(tmp_path: Path) -> None:
    path = str(tmp_path / "newer.db")
    JackpotEngine.open(path).close()
    run_sql(path, f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    before = file_state(path)
    with pytest.raises(StorageError, match=f"schema version {len(MIGRATIONS) + 1}, newer than "
                                           f"this library's {len(MIGRATIONS)}"):
        JackpotEngine.open(path)
    assert file_state(path) == before


def test_a_new_or_empty_file_becomes_a_jackpot_database(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    for path in (str(empty), str(tmp_path / "new.db")):
        with JackpotEngine.open(path) as engine:
            assert list(engine.pools()) == ["major", "mega", "minor"]


def test_create_false_wants_an_existing_jackpot_database(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(StorageError, match="holds no jackpot database"):
        open_store(str(empty), create=False)
    assert empty.read_bytes() == b""
    with pytest.raises(StorageError, match="it does not exist"):
        open_store(str(tmp_path / "none.db"), create=False)
    assert not (tmp_path / "none.db").exists()


# -- a read-only store never writes, never waits for the write lock -----------------------


@pytest.fixture
def closed_db(tmp_path: Path) -> str:
    """A jackpot database nobody has open: no -wal, no -shm (the writers' lock file stays)."""
    path = str(tmp_path / "pools.db")
    with JackpotEngine.open(path) as engine:
        engine.contribute("10", op_id="b1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pools.db", "pools.db-lock"]
    return path


def test_a_read_only_store_leaves_a_closed_file_untouched(closed_db: str) -> None:
    before = file_state(closed_db)
    store = open_store(closed_db, read_only=True)
    try:
        with store.read():
            assert store.load_levels()["minor"].version == 2
        assert audit(store).ok
    finally:
        store.close()
    assert file_state(closed_db) == before  # nothing created beside it either


def test_a_read_only_store_reads_the_wal_of_a_running_writer(closed_db: str) -> None:
    with JackpotEngine.open(closed_db) as engine:
        engine.contribute("10", op_id="b2")  # committed to the WAL only (still open)
        store = open_store(closed_db, read_only=True)
        try:
            with store.read():
                assert store.load_levels()["minor"].version == 3
        finally:
            store.close()


def test_a_read_only_store_does_not_wait_for_the_write_lock(closed_db: str) -> None:
    conn = apsw.Connection(closed_db)
    conn.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        store = open_store(closed_db, read_only=True, lock_timeout_ms=120_000)
        try:
            with store.read():
                assert len(store.load_levels()) == 3
        finally:
            store.close()
        assert time.monotonic() - started < 60  # (not a speed: it did not wait its timeout)
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_an_immutable_read_of_a_file_that_changed_meanwhile_is_stale(closed_db: str) -> None:
    store = open_store(closed_db, read_only=True)  # nobody has it open: read as immutable
    try:
        with JackpotEngine.open(closed_db) as engine:  # a writer starts, writes, checkpoints
            engine.contribute("10", op_id="b2")
        with pytest.raises(StaleReadError, match="changed while it was read"), store.read():
            store.load_levels()
    finally:
        store.close()
    again = open_store(closed_db, read_only=True)
    try:
        with again.read():
            assert again.load_levels()["minor"].version == 3
    finally:
        again.close()


def test_an_immutable_read_torn_by_a_writer_is_stale_not_corrupt(closed_db: str) -> None:
    """A writer's checkpoint mid-read can leave pages SQLite calls malformed: read again."""
    store = open_store(closed_db, read_only=True)  # nobody has it open: read as immutable
    size = Path(closed_db).stat().st_size

    def torn_read() -> None:
        with store.read():
            with Path(closed_db).open("r+b") as f:  # what a checkpoint half-way looks like
                f.seek(4096)
                f.write(b"\xff" * (size - 4096))
            store.ledger()

    try:
        with pytest.raises(StaleReadError, match="changed while it was read"):
            torn_read()
    finally:
        store.close()


@pytest.mark.parametrize("read_only", [True, False], ids=["read-only", "writer"])
@pytest.mark.parametrize("suffix", ["-wal", "-journal"])
def test_an_open_beside_a_directory_named_as_its_wal_or_journal_says_so(
        closed_db: str, suffix: str, read_only: bool) -> None:
    # Was: "unable to open database file" or "disk I/O error", and a read-only
    # open beside a -wal directory said its -shm was missing.
    Path(closed_db + suffix).mkdir()
    with pytest.raises(StorageError) as info:
        open_store(closed_db, read_only=read_only, create=False)
    assert str(info.value) == (
        f"cannot open database {closed_db!r}: its {suffix} {closed_db + suffix!r} is a "
        "directory, not a file; SQLite needs that name for a file of its own, and this "
        "holds nothing of SQLite's: move it out of the way")


def test_a_read_only_open_by_a_link_looks_for_the_wal_where_sqlite_does(
        closed_db: str, tmp_path: Path) -> None:
    # SQLite names the -wal after the file the link points to: the message
    # looked beside the link, found nothing there, and gave no reason.
    link = tmp_path / "elsewhere" / "link.db"
    link.parent.mkdir()
    link.symlink_to(closed_db)
    Path(closed_db + "-wal").mkdir()
    with pytest.raises(StorageError) as info:
        open_store(str(link), read_only=True, create=False)
    assert str(info.value) == (
        f"cannot open database {str(link)!r}: its -wal {closed_db + '-wal'!r} is a "
        "directory, not a file; SQLite needs that name for a file of its own, and this "
        "holds nothing of SQLite's: move it out of the way")


def test_a_read_only_store_of_an_empty_file_says_version_0(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    store = open_store(str(empty), read_only=True)
    try:
        assert store.schema_version() == 0
    finally:
        store.close()
    assert empty.read_bytes() == b""


def test_the_audit_looks_its_few_rows_up_without_reading_the_whole_ledger(
        tmp_path: Path) -> None:
    # Hits, wins, config changes and retirements are few in a ledger of
    # millions of rows: each of the audit's queries of them must seek them in
    # the (level, kind, seq) index, not scan the ledger (as without ANALYZE
    # statistics SQLite would for a kind alone).
    path = str(tmp_path / "pools.db")
    JackpotEngine.open(path).close()
    store = open_store(path)
    queries: list[tuple[str, tuple[object, ...]]] = []
    real_exec = store._exec  # (the statements the audit's reads run)

    def logged(sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        queries.append((sql, params))
        return real_exec(sql, params)

    store._exec = logged  # type: ignore[method-assign]
    conn = apsw.Connection(path)
    try:
        with store.read():
            queries.clear()  # (BEGIN)
            store.ledger_of_kinds(("retire", "transfer_in"))
            store.recorded_hits()
            store.recorded_details()
            store.split_hit_winners()
        # Each first asks whether a row has no level (a forged one): SQLite,
        # knowing the column NOT NULL, plans a scan of an index it never runs.
        probes = [q for q in queries if q[0] == "SELECT 1 FROM ledger WHERE level IS NULL LIMIT 1"]
        assert (len(probes), len(queries)) == (4, 8)
        for sql, params in [q for q in queries if q not in probes]:
            plan = [str(r[3]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
            assert not [step for step in plan if re.match(r"SCAN (ledger|l)\b", step)], plan
            assert any("ledger_level_kind" in step for step in plan), plan
    finally:
        conn.close()
        store.close()


def _no_name_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that sets no limit to a name's length: pathconf says -1 (as Python's
    os.pathconf does when the system's answer is "indeterminate")."""
    real = os.pathconf

    def pathconf(path: object, name: str | int) -> int:
        return -1 if name == "PC_NAME_MAX" else real(path, name)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "pathconf", pathconf)


def test_a_new_database_opens_where_names_have_no_length_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: "-1 bytes is the longest name there": every new database refused."""
    _no_name_limit(monkeypatch)
    with JackpotEngine.open(tmp_path / "pools.db") as engine:
        assert engine.verify().ok


def test_a_backup_is_made_where_names_have_no_length_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: every backup target refused as "too long a name"."""
    JackpotEngine.open(tmp_path / "pools.db").close()
    _no_name_limit(monkeypatch)
    store = open_store(str(tmp_path / "pools.db"))
    try:
        store.backup_to(str(tmp_path / "copy.db"))
    finally:
        store.close()
    assert (tmp_path / "copy.db").is_file()
