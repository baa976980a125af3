"""A database file of several names (hard links) is refused to write: its names share one file."""

from __future__ import annotations

import os
import re
from decimal import Decimal
from pathlib import Path

import pytest

from jackpot import JackpotEngine, StorageError
from jackpot.storage.sqlite import SQLiteStore


def test_an_engine_refuses_a_file_of_several_names(tmp_path: Path) -> None:
    """A write through one name of a hard-linked file is the file of every name (a
    `cp -al` snapshot is no copy), and SQLite keeps the -wal beside the name it opens:
    an engine on a second name wrote the first one's file, and two engines on two names
    wrote one file through two -wal files (the second's writes failed, told as its -wal
    "removed or replaced"). Refused before anything is written; one name again, it opens."""
    first, other = tmp_path / "pools.db", tmp_path / "snapshot.db"
    with JackpotEngine.open(first) as engine:
        engine.contribute(Decimal(10), op_id="bet")
    os.link(first, other)
    before = sorted(p.name for p in tmp_path.iterdir())
    refused = (rf"^'{re.escape(str(name))}' is one of 2 names \(hard links\) of one file "
               rf"\('{seen}' beside it\): what an engine writes through one name, every name "
               r"shows .*give the file one name before an engine writes it"
               for name, seen in ((other, "pools.db"), (first, "snapshot.db")))
    for name, message in zip((other, first), refused, strict=True):
        with pytest.raises(StorageError, match=message):
            JackpotEngine.open(name)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # (no -wal beside either)
    other.unlink()
    with JackpotEngine.open(first) as engine:
        assert engine.pool("minor").version == 2


@pytest.mark.parametrize("read_only", [False, True])
def test_a_directory_is_told_as_one_not_as_a_file_of_several_names(
        tmp_path: Path, read_only: bool) -> None:
    """A directory's link count is its entries' (2 and up): the hard-link checks took a
    directory for a file of several names."""
    with pytest.raises(StorageError, match=r"it is a directory, not a file$"):
        SQLiteStore(str(tmp_path), create=False, read_only=read_only)
