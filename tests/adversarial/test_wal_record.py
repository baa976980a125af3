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

import contextlib
import gc
import linecache
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from _helpers import HANG, interrupting_once, read_ledger, read_line
from jackpot import JackpotEngine, StorageError
from jackpot.storage import SQLiteStore, _files, sqlite

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


class _ClosingHook:
    """A connection whose close() runs `then` just after SQLite closed it."""

    def __init__(self, conn: apsw.Connection, then: Any) -> None:
        self.conn = conn
        self.then = then

    def close(self) -> None:
        self.conn.close()
        self.then()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def test_an_open_interrupted_after_its_first_read_lets_go_before_its_close(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An interrupt just after the connection noted the -wal and -shm it had read: the open is
    # abandoned, and its close (the last connection) deleted them before it let go, so a
    # connection reading in between (another thread's) made them anew while the old ones were
    # still noted: its writes were refused as if someone had replaced them.
    path = tmp_path / "pools.db"
    JackpotEngine.open(path).close()
    connect, holding = SQLiteStore._connect, _files.FileGuard.holding
    between: list[SQLiteStore] = []
    kept = tmp_path / "kept-wal"

    def open_another() -> None:
        assert not Path(f"{path}-wal").exists()  # the last close deleted them
        between.append(SQLiteStore(str(path), create=False))  # its first read makes them anew

    def hooked(store: SQLiteStore, path_: str, *, create: bool) -> Any:
        conn = connect(store, path_, create=create)
        return conn if kept.exists() else _ClosingHook(conn, open_another)

    def interrupted(guard: _files.FileGuard) -> None:
        holding(guard)
        if not kept.exists():
            for suffix in ("-wal", "-shm"):  # (kept linked: the new ones get other inodes)
                (tmp_path / f"kept{suffix}").hardlink_to(f"{path}{suffix}")
            raise KeyboardInterrupt

    monkeypatch.setattr(SQLiteStore, "_connect", hooked)
    monkeypatch.setattr(_files.FileGuard, "holding", interrupted)
    with pytest.raises(KeyboardInterrupt):
        SQLiteStore(str(path), create=False)
    (other,) = between
    try:
        _write(other)  # was: StorageError, the -wal "removed or replaced"
    finally:
        other.close()
    assert _recorded(path) == (False, False, False)


def test_a_store_never_closed_collected_under_the_record_lock_does_not_hang_its_thread(
        tmp_path: Path) -> None:
    # A store dropped unclosed in a reference cycle is freed by the garbage collector, which
    # may run inside the record's own sections, in a thread holding its lock (at an
    # allocation up to Python 3.11; at the next evaluation-loop check from 3.12, gh-97922). The store's finalizer (`_release`) then waited for that lock in the same thread:
    # that thread, and every later open or write in the process, hung for ever.
    path = tmp_path / "pools.db"
    JackpotEngine.open(path).close()
    gc.disable()  # (until the collection below: run inside the section, as it may)
    try:
        store = SQLiteStore(str(path), create=False)
        store.load_levels()  # it holds the -wal and -shm
        cycle: list[Any] = [store]
        cycle.append(cycle)
        del store, cycle

        def collected_in_a_section() -> None:
            with _files._lock:
                gc.collect()

        thread = threading.Thread(target=collected_in_a_section, daemon=True)
        thread.start()
        thread.join(HANG)
        assert not thread.is_alive()
    finally:
        gc.enable()
    assert _recorded(path) == (False, False, False)  # its finalizer let go of the files
    with JackpotEngine.open(path, create=False) as engine:
        engine.contribute("10", groups="minor", op_id="after")


@pytest.mark.parametrize("read_only", [False, True])
def test_a_close_interrupted_as_it_counts_its_connection_out_still_counts_it_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_only: bool) -> None:
    # Ctrl-C as the close's finalizer starts letting go of the files (CPython runs a pending
    # signal's handler as a Python function starts), after the connection closed. The
    # finalizer, run once only, never counted the connection out: the count stayed for good
    # (an I/O error of the database never forgotten, a forked child refusing it), the twin
    # of an open interrupted before its finalizer was made.
    path = tmp_path / "pools.db"
    JackpotEngine.open(path).close()
    keep = SQLiteStore(str(path), create=False) if read_only else None  # (a -wal to read)
    store = SQLiteStore(str(path), create=False, read_only=read_only)
    let_go, calls = _files._let_go, []

    def interrupted(*args: Any) -> Any:
        calls.append(args)
        if len(calls) == 2:  # the first lets go before the close; the second, the finalizer's
            raise KeyboardInterrupt
        return let_go(*args)

    monkeypatch.setattr(_files, "_let_go", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.close()
    monkeypatch.undo()
    assert len(calls) >= 2  # (the interrupt landed)
    if keep is not None:
        keep.close()
    st = path.stat()
    file = (st.st_dev, st.st_ino)
    assert (file in _files._reading, _recorded(path)) == (False, (False, False, False))


def test_a_store_collected_as_another_lets_go_of_the_same_files_leaves_its_close_whole(
        tmp_path: Path) -> None:
    # Under a Python tracer (a debugger, a profiler, coverage's Python tracer) the collector,
    # and the finalizer of a store never closed, may run between any two lines of a section
    # (the tracer's own calls allocate, and from 3.12 each line is a check of the eval loop). The last other holder of the files,
    # collected just as a closing store had taken itself out of `_holding` and found the set
    # empty, deleted the entry first: the close's own `del` raised KeyError, its connection
    # was left open and its count kept for good (an I/O error never forgotten).
    path = tmp_path / "pools.db"
    JackpotEngine.open(path).close()
    closing = SQLiteStore(str(path), create=False)  # both have read: both hold the files
    dropped = SQLiteStore(str(path), create=False)
    cycle: list[Any] = [dropped]
    cycle.append(cycle)
    del dropped, cycle
    code = _files._let_go.__code__
    collected: list[int] = []

    def collect_once(frame: Any, event: str, _arg: object) -> Any:
        if event == "line" and not collected and \
                linecache.getline(code.co_filename, frame.f_lineno).strip() == "if holders:":
            collected.append(gc.collect())
        return collect_once

    tracer = sys.gettrace()  # (put back after: coverage's, say)
    gc.disable()  # (until the collection in the traced line)
    sys.settrace(lambda frame, _event, _arg: collect_once if frame.f_code is code else None)
    try:
        closing.close()
    finally:
        sys.settrace(tracer)
        gc.enable()
    assert collected[0] > 0  # the dropped store was collected there
    assert _recorded(path) == (False, False, False)
    with JackpotEngine.open(path, create=False) as engine:
        engine.contribute("10", groups="minor", op_id="after")


@contextlib.contextmanager
def _another_connection_open(tmp_path: Path) -> Iterator[Path]:
    """Yield a database's path while another store has it open (its -wal and -shm there:
    a reader opened meanwhile reads through them)."""
    path = tmp_path / "pools.db"
    JackpotEngine.open(path).close()
    keeper = SQLiteStore(str(path), create=False)
    try:
        keeper.load_levels()
        yield path
    finally:
        keeper.close()


@pytest.mark.parametrize("read_only", [False, True])
def test_an_open_interrupted_once_its_connection_is_counted_is_counted_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_only: bool) -> None:
    # Ctrl-C after the connection was counted, before the finalizer that counts it out
    # was made: the count stayed for good (an I/O error of the database never forgotten,
    # and after a fork the child took the database for one its parent had open).
    with _another_connection_open(tmp_path) as path:
        counts = _files._reading if read_only else _files._open
        st = path.stat()
        before = counts[(st.st_dev, st.st_ino)]
        interrupted, armed = interrupting_once(_files.weakref.finalize)
        monkeypatch.setattr(_files.weakref, "finalize", interrupted)
        with pytest.raises(KeyboardInterrupt):
            SQLiteStore(str(path), create=False, read_only=read_only)
        assert not armed
        monkeypatch.undo()
        gc.collect()  # (the interrupted store's guard is garbage once its error is)
        assert counts[(st.st_dev, st.st_ino)] == before
    assert _recorded(path) == (False, False, False)


@pytest.mark.parametrize("read_only", [False, True])
def test_an_open_interrupted_as_it_notes_its_files_closes_its_connection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_only: bool) -> None:
    # Ctrl-C just after SQLite opened the connection, as it noted the files it opened: the
    # connection was left open, to the garbage collector (the error's traceback held it).
    with _another_connection_open(tmp_path) as path:
        before = set(apsw.connections())
        noting = "ReaderMark" if read_only else "FileGuard"
        interrupted, armed = interrupting_once(getattr(sqlite, noting))
        monkeypatch.setattr(sqlite, noting, interrupted)
        with pytest.raises(KeyboardInterrupt) as caught:
            SQLiteStore(str(path), create=False, read_only=read_only)
        assert not armed
        assert isinstance(caught.value, KeyboardInterrupt)  # (its traceback still alive)
        assert set(apsw.connections()) == before
    assert _recorded(path) == (False, False, False)


def test_an_interrupt_anywhere_in_holding_leaves_nothing_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An interrupt (Ctrl-C: a signal handler's exception, raised between any two lines)
    # after the connection was counted among those holding the files, before it noted
    # that it was: the abandoned open's close did not count it out, and the record of
    # the -wal and -shm stayed for good, taking the next ones SQLite made for replaced.
    path = tmp_path / "pools.db"
    JackpotEngine.open(path).close()
    holding = _files.FileGuard.holding
    at: list[int] = []  # the line event to interrupt at (none: count them)
    lines = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal lines
        if frame.f_code.co_filename != _files.__file__:
            return None
        # (Not at a `with` line: its event also comes as the block ends, before the lock's
        # release, which an interrupt there skips: CPython's own limit, bpo-29988.)
        if event == "line" and not linecache.getline(
                frame.f_code.co_filename, frame.f_lineno).lstrip().startswith("with "):
            lines += 1
            if at and lines == at[0]:
                raise KeyboardInterrupt
        return tracer

    def traced(guard: _files.FileGuard) -> None:
        sys.settrace(tracer)
        try:
            holding(guard)
        finally:
            sys.settrace(None)

    monkeypatch.setattr(_files.FileGuard, "holding", traced)
    SQLiteStore(str(path), create=False).close()
    assert lines > 5
    for line in range(1, lines + 1):
        at[:], lines = [line], 0
        with pytest.raises(KeyboardInterrupt):
            SQLiteStore(str(path), create=False)
        assert _recorded(path) == (False, False, False), f"interrupted at line event {line}"
    monkeypatch.undo()
    with JackpotEngine.open(path, create=False) as engine:
        engine.contribute("10", groups="minor", op_id="after")
        assert engine.verify().ok


def test_a_file_not_found_as_it_was_opened_is_never_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Renamed away just after the connection opened it and back before its first read, the
    # file had no identity to check: every write was let through, also once it was moved
    # away for good (into a file nobody would find again).
    path, away = tmp_path / "pools.db", tmp_path / "moved.db"
    JackpotEngine.open(path).close()

    class NotThereAsOpened(_files.FileGuard):
        def __init__(self, path_: str) -> None:
            Path(path_).rename(away)
            try:
                super().__init__(path_)
            finally:
                away.rename(path_)

    monkeypatch.setattr(sqlite, "FileGuard", NotThereAsOpened)
    store = SQLiteStore(str(path), create=False)
    monkeypatch.undo()
    refused = (f"database {str(path)!r} was not there as this engine opened it (removed or "
               "renamed meanwhile), so its writes could land in a file nobody finds again: "
               "close the engine and open the database again")
    try:
        assert store.write_refusal() == refused  # was: None
        with pytest.raises(StorageError, match=re.escape(f"{refused}: nothing was changed")):
            _write(store)
        path.rename(away)
        with pytest.raises(StorageError, match=re.escape(refused)):
            _write(store)  # was: accepted, into the moved file
    finally:
        store.close()


@pytest.mark.parametrize("side", ["-wal", "-shm"])
def test_a_reader_keeps_the_record_after_the_last_writer_closes(tmp_path: Path, side: str) -> None:
    # The record was kept by writing connections only: once the last one closed (the files
    # not deleted, the reader holding them), a -wal or -shm replaced meanwhile was noted by
    # the next writer of the process as its own, its writes accepted (beside the -shm SQLite
    # shares in the process with the reader, which has the old one open).
    path = tmp_path / "pools.db"
    JackpotEngine.open(path).close()
    writer = SQLiteStore(str(path), create=False)
    reader = SQLiteStore(str(path), read_only=True)  # it reads through the -shm
    try:
        writer.close()
        assert Path(f"{path}-wal").exists()  # the reader holds them: not deleted
        _replace(path, side)
        later = SQLiteStore(str(path), create=False)
        try:
            with pytest.raises(StorageError, match=f"the {side} file of .* was removed or "
                                                   "replaced since this engine opened it"):
                _write(later)  # was: accepted
        finally:
            later.close()
        assert _recorded(path) == (False, True, True)
    finally:
        reader.close()
    assert _recorded(path) == (False, False, False)
    with JackpotEngine.open(path, create=False) as engine:  # nothing kept: it writes again
        engine.contribute("10", groups="minor", op_id="after")
        assert engine.verify().ok


WRITER = """
import select, sys
from jackpot import JackpotEngine

engine = JackpotEngine.open(sys.argv[1], create=False)
engine.contribute("10", groups="minor", op_id="a-open")  # it holds the -wal and -shm
print("open", flush=True)
assert select.select([sys.stdin], [], [], 60)[0], "no word to write"
assert sys.stdin.readline() == "write\\n"
for i in range(int(sys.argv[2])):
    engine.contribute("10", groups="minor", op_id=f"a-{i}")
    print(f"acked a-{i}", flush=True)
engine.close()  # the last connection holding them: folds the -wal, deletes both
print("closed", flush=True)
"""


@pytest.mark.parametrize("when", ["opening", "running"])
def test_an_engine_opening_as_another_process_writes_and_closes_loses_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    # Another process writes and closes between a connection's open and its first read
    # (open()'s own store; or the engine's reader, the levels already loaded before those
    # writes): its close deletes the -wal and -shm, the first read makes them anew, and the
    # engine reloads the levels it holds stale. No acknowledged bet of either is lost, and
    # the new -wal is not taken for a replaced one.
    path, err = tmp_path / "pools.db", tmp_path / "writer.stderr"
    JackpotEngine.open(path).close()
    writes = 5
    with err.open("wb") as err_file:
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(writes)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err_file,
                                bufsize=0)
    assert proc.stdin is not None
    assert proc.stdout is not None
    acked: list[str] = []
    recognise = SQLiteStore._recognise
    calls = 0
    deadline = time.monotonic() + HANG

    def first_read(store: SQLiteStore, *, allow_empty: bool) -> int:
        nonlocal calls
        calls += 1
        if calls == (1 if when == "opening" else 2):
            for suffix in ("-wal", "-shm"):  # (kept linked: the new ones get other inodes)
                (tmp_path / f"kept{suffix}").hardlink_to(f"{path}{suffix}")
            proc.stdin.write(b"write\n")
            while (line := read_line(proc.stdout, deadline, "acknowledgement")) != b"closed":
                assert line.startswith(b"acked "), f"{line!r}: {err.read_text()[-3000:]}"
                acked.append(line.removeprefix(b"acked ").decode())
            assert not Path(f"{path}-wal").exists()  # its close deleted them
        return recognise(store, allow_empty=allow_empty)

    try:
        assert read_line(proc.stdout, deadline, "open") == b"open", err.read_text()[-3000:]
        monkeypatch.setattr(SQLiteStore, "_recognise", first_read)
        with JackpotEngine.open(path, create=False) as engine:
            monkeypatch.undo()
            engine.contribute("10", groups="minor", op_id="b-0")  # (running: a stale level)
            engine.contribute("10", groups=("major", "minor"), op_id="b-1")
            assert engine.pool("minor").version == 1 + 1 + writes + 2
            assert engine.health().ok
            assert engine.verify().ok
        assert proc.wait(timeout=HANG) == 0, err.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    assert acked == [f"a-{i}" for i in range(writes)]
    rows = Counter(row["op_id"] for row in read_ledger(path) if row["kind"] != "create")
    assert rows == {"a-open": 1, **dict.fromkeys(acked, 1), "b-0": 1, "b-1": 2}
    with JackpotEngine.open(path, create=False) as again:
        assert again.pool("minor").version == 1 + 1 + writes + 2
        assert again.verify().ok


SQLITE3_READER = """
import sqlite3, sys
from jackpot import JackpotEngine, StorageError
path = sys.argv[1]
with JackpotEngine.open(path) as engine:
    engine.contribute("1", groups="minor", op_id="before")
    conn = sqlite3.connect(path)  # the stdlib's SQLite: another copy than apsw's
    conn.execute("SELECT count(*) FROM levels").fetchall()
    conn.close()
    try:
        engine.contribute("1", groups="minor", op_id="after")
    except StorageError as e:
        print(e)
"""


def test_a_write_refused_after_a_stdlib_sqlite3_connection_closed_names_that_cause(
        tmp_path: Path) -> None:
    # A game server that read its own database with Python's sqlite3 module (a report, a
    # debug endpoint) had every later write refused, saying only that the -wal "was removed
    # or replaced": nobody had touched it, and nothing pointed at the sqlite3 connection,
    # whose close, blind to apsw's locks, folded and deleted it. (In a process of its own:
    # two copies of SQLite in one process can bring it down with SIGBUS.)
    path = tmp_path / "pools.db"
    done = subprocess.run([sys.executable, "-c", SQLITE3_READER, str(path)],
                          capture_output=True, text=True, timeout=HANG, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout.strip()
    assert re.match(REPLACED, said), said
    assert "Python's sqlite3 module" in said, said
    assert said.endswith("read the database through the engine): nothing was changed"), said
    with JackpotEngine.open(path, create=False) as engine:
        assert list(engine.pools()) == ["major", "mega", "minor"]
        assert engine.pool("minor").version == 2  # "before" kept, "after" never applied
        assert engine.verify().ok
