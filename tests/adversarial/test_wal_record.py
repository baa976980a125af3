"""The process's record of a database's -wal and -shm: kept while any connection holds them.

A writing connection refuses to write once the -wal or -shm at the path is not
the one this process's connections have open (`jackpot.storage._files`). The
record is forgotten as the last connection holding them lets go, just before
SQLite may delete them; these tests check that it is not forgotten while a
connection still holds them, nor kept after none does. A replaced file is a
copy put in its place, the old one kept linked so that the copy cannot get
its inode number.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import apsw
import pytest

from jackpot import JackpotEngine, StorageError
from jackpot.storage import SQLiteStore, _files

REPLACED = "the -wal file of .* was removed or replaced since this engine opened it"


def _replace(path: Path, suffix: str) -> None:
    """Put a copy of the database's `suffix` file in its place (same bytes, another file)."""
    side = Path(f"{path}{suffix}")
    side.with_name(f"kept{suffix}").hardlink_to(side)
    copy = side.with_name(f"copy{suffix}")
    shutil.copyfile(side, copy)
    copy.replace(side)


def _write(store: SQLiteStore) -> None:
    with store.write():
        pass


def _recorded(path: Path) -> tuple[bool, bool, bool]:
    """Whether the process's registry has the file open, held, and its -wal and -shm noted."""
    st = path.stat()
    file = (st.st_dev, st.st_ino)
    return file in _files._open, file in _files._holding, file in _files._sides


class _CloseFails:
    """A connection whose close() fails and leaves it open (SQLite's close can: SQLITE_BUSY)."""

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn

    def close(self) -> None:
        raise apsw.BusyError("unable to close due to unfinalized statements")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def test_a_connection_whose_close_failed_still_holds_its_wal(tmp_path: Path) -> None:
    # The record was forgotten before the close, which then failed: the connection kept the
    # -wal open, and a connection opened after someone replaced it noted the replacement as
    # the -wal, its writes accepted (beside a -shm SQLite shares in the process with the old).
    path = tmp_path / "pools.db"
    JackpotEngine.open(path).close()
    store = SQLiteStore(str(path), create=False)  # it has read: it holds the -wal and -shm
    real = store.conn
    store.conn = _CloseFails(real)
    with pytest.raises(apsw.BusyError):
        store.close()
    _replace(path, "-wal")
    other = SQLiteStore(str(path), create=False)
    try:
        with pytest.raises(StorageError, match=REPLACED):
            _write(other)  # was: accepted
    finally:
        other.close()
        store.conn = real
    assert _recorded(path) == (True, True, True)  # still open: still counted
    store.close()  # a close() again releases it
    assert _recorded(path) == (False, False, False)
