"""An engine that runs out of file descriptors as it opens says so."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from _helpers import interrupting_once, run_python
from jackpot import JackpotEngine
from jackpot.storage import SQLiteStore

_OUT_OF_FILES = """
import resource, sys
from jackpot import GroupConfig, JackpotEngine, StorageError
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
levels = [GroupConfig(f"g{i}", seed=10, contribution_rate="0.01") for i in range(100)]
try:
    JackpotEngine.open(sys.argv[1], levels)
except StorageError as e:
    print(e)
"""


def test_an_open_out_of_file_descriptors_names_the_limit(tmp_path: Path) -> None:
    # SQLite says only "unable to open database file": 100 levels (two files
    # each) under a limit of 64 read as a file that could not be found.
    done = run_python(_OUT_OF_FILES, str(tmp_path / "many.db"), timeout=120)
    assert done.returncode == 0, done.stderr
    # (In the message, not at its end: an actor whose thread is starved over a
    # second after it kept its reason is told as one whose log line is held
    # back, "... (a log handler held its error's line back: ...)" after it.)
    assert (
        "unable to open database file (too many files open: this process may have 64 "
        "(`ulimit -n`); an engine holds about two per level: raise the limit or serve "
        "fewer levels)") in done.stdout, done.stdout


_LAST_DESCRIPTORS = """
import os, resource, sys
from jackpot import StorageError
from jackpot.storage import SQLiteStore
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
taken = []
try:
    while True:
        taken.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
for _ in range(int(sys.argv[2])):
    os.close(taken.pop())
try:
    SQLiteStore(sys.argv[1]).close()
except StorageError as e:
    print(e)
"""


@pytest.mark.parametrize("free", [1, 2])
def test_a_store_whose_wal_cannot_be_opened_for_descriptors_names_the_limit(
        tmp_path: Path, free: int) -> None:
    # The file opens with the last descriptor (or two) and its -wal or -shm
    # cannot: the look at the process came after the connection closed,
    # which freed one, and the message gave no hint.
    path = tmp_path / "last.db"
    JackpotEngine.open(path).close()
    done = run_python(_LAST_DESCRIPTORS, str(path), str(free), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip() == (
        f"cannot open database {str(path)!r}: unable to open database file (too many files "
        "open: this process may have 64 (`ulimit -n`); an engine holds about two per level: "
        "raise the limit or serve fewer levels)"), done.stdout


@pytest.mark.parametrize("read_only", [False, True])
def test_an_open_interrupted_as_it_looks_for_descriptors_closes_its_connection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_only: bool) -> None:
    # SQLite could not open the file's -wal once the connection existed (a
    # directory in its place); Ctrl-C landed as the failed open asked whether
    # it ran out of descriptors, before it closed the connection: that was
    # left open, to the garbage collector (the error's traceback held it),
    # with the files it had noted.
    path = tmp_path / "no-wal.db"
    JackpotEngine.open(path).close()
    Path(f"{path}-wal").mkdir()
    before = set(apsw.connections())
    interrupted, armed = interrupting_once(SQLiteStore._out_of_descriptors)
    monkeypatch.setattr(SQLiteStore, "_out_of_descriptors", interrupted)
    with pytest.raises(KeyboardInterrupt) as caught:
        SQLiteStore(str(path), create=False, read_only=read_only)
    assert not armed
    assert isinstance(caught.value.__context__, apsw.CantOpenError)
    assert set(apsw.connections()) == before
