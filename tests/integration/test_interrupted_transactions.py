"""A signal's exception raised as a transaction's BEGIN returns ends that transaction.

Python runs a signal's handler between bytecodes, first as a call of C code
returns: a Ctrl-C, or a request deadline's TimeoutError (SIGALRM), can be
raised just as SQLite's BEGIN has returned, before the `try` that would end
the transaction. Left open, the transaction held the connection for good: the
engine's reader refused every later read ("cannot start a transaction within
a transaction") and pinned the WAL; a writer held SQLite's write lock, and
every other writer on the file timed out.

Each test raises, from a profile function, at the first return of C code once
the connection is in a transaction (what a signal's handler does at that
point), and fails on the code before the fix.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from jackpot import JackpotEngine, Settings
from jackpot.storage.sqlite import SQLiteStore

if TYPE_CHECKING:
    import apsw


@contextmanager
def raising_once_begun(conn: Callable[[], apsw.Connection], error: BaseException
                       ) -> Iterator[list[int]]:
    """Raise `error` at the first C call to return once `conn()` is in a transaction.

    Yields a list that holds 1 once it was raised (only this thread is profiled).
    """
    raised: list[int] = []

    def stop(_frame: object, event: str, _arg: object) -> None:
        if not raised and event == "c_return" and conn().in_transaction:
            raised.append(1)
            raise error

    sys.setprofile(stop)
    try:
        yield raised
    finally:
        sys.setprofile(None)


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "pools.db")
    with JackpotEngine.open(path) as engine:
        engine.contribute(Decimal(100), groups="minor", op_id="bet")
    return path


@pytest.mark.parametrize("error", [KeyboardInterrupt(), TimeoutError("the round took too long")])
def test_an_engine_read_interrupted_as_it_begins_leaves_no_snapshot_open(
        db: str, error: BaseException) -> None:
    with JackpotEngine.open(db) as engine:
        before = engine.pools()
        reader = engine._reader  # (the connection the reads share)
        with raising_once_begun(lambda: reader.conn, error) as raised, \
                pytest.raises(type(error)):
            engine.pools()
        assert raised == [1]
        assert not reader.conn.in_transaction
        assert engine.pools() == before  # was: "cannot start a transaction within a transaction"
        engine.contribute(Decimal(100), groups="minor", op_id="after")
        assert engine.pool("minor").version == before["minor"].version + 1


def _write(store: SQLiteStore, _tmp: Path) -> None:
    with store.write():
        store._exec("SELECT 1")


def _read(store: SQLiteStore, _tmp: Path) -> None:
    with store.read():
        store.load_levels()


def _backup(store: SQLiteStore, tmp: Path) -> None:
    store.backup_to(str(tmp / "copy.db"))


def _recognise(store: SQLiteStore, _tmp: Path) -> None:
    store.schema_version()


@pytest.mark.parametrize("run", [_write, _read, _backup, _recognise],
                         ids=["write", "read", "backup", "schema_version"])
def test_a_store_interrupted_as_its_transaction_begins_ends_it(
        db: str, tmp_path: Path, run: Callable[[SQLiteStore, Path], Any]) -> None:
    store = SQLiteStore(db, lock_timeout_ms=200, create=False)
    other = SQLiteStore(db, lock_timeout_ms=200, create=False)
    try:
        with raising_once_begun(lambda: store.conn, KeyboardInterrupt()) as raised, \
                pytest.raises(KeyboardInterrupt):
            run(store, tmp_path)
        assert raised == [1]
        assert not store.conn.in_transaction
        with other.write():  # was: LockTimeoutError, the write lock held for good (write)
            other._exec("SELECT 1")
        (tmp_path / "copy.db").unlink(missing_ok=True)
        run(store, tmp_path)  # the same store goes on
    finally:
        store.close()
        other.close()


@pytest.mark.parametrize("error", [KeyboardInterrupt(), TimeoutError("the round took too long")])
def test_an_engine_read_interrupted_as_it_takes_the_readers_lock_gives_it_back(
        db: str, error: BaseException) -> None:
    """Reads take turns on the engine's one reader, under a lock taken with a timeout
    (`acquire`, not `with`): a signal's exception raised as the acquire returned left the
    lock held for good, and every later read waited out the lock timeout and failed ("a
    read waited ... for the read before it to end")."""
    with JackpotEngine.open(db, settings=Settings(lock_timeout_ms=500)) as engine:
        before = engine.pools()
        lock = engine._reader_lock
        raised: list[int] = []

        def stop(_frame: object, event: str, _arg: object) -> None:
            if not raised and event == "c_return" and lock.locked():
                raised.append(1)
                raise error

        sys.setprofile(stop)
        try:
            with pytest.raises(type(error)):
                engine.pools()
        finally:
            sys.setprofile(None)
        assert raised == [1]
        assert not lock.locked()
        assert engine.pools() == before
