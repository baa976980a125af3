"""A database file removed (or emptied) under a running engine is never silently recreated.

Only `open()` creates a database; the connections the engine opens later (a
restarted actor's, the health probe's) refuse a missing or empty file, so a
restart cannot start counting pools from a fresh, empty ledger.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from _helpers import fork_with_threads, run_python
from jackpot import AsyncJackpotEngine, JackpotEngine, Settings, StorageError, ValidationError
from jackpot.storage import open_store


@pytest.mark.parametrize("how", ["removed", "emptied"])
def test_a_restarted_actor_does_not_recreate_a_vanished_file(db_path: Path, how: str) -> None:
    engine = JackpotEngine.open(db_path)
    try:
        engine.contribute("10", groups="minor", op_id="before")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db_path}{suffix}").unlink(missing_ok=True)
        if how == "emptied":
            db_path.write_bytes(b"")
        engine._pools["minor"].actor_ref.stop()  # the level's actor must be restarted
        with pytest.raises(StorageError):
            engine.contribute("10", groups="minor", op_id="after")
        report = engine.health()
        database = (f"database file {str(db_path)!r} does not exist" if how == "removed" else
                    f"writes are refused: database {str(db_path)!r} is no longer the file "
                    "this engine opened (removed, renamed or replaced since)")
        assert (report.status, report.reasons) == ("failing", (
            f"database: {database}", "actors: stopped: minor (restarted on their next operation)"))
        if how == "removed":
            assert not db_path.exists()  # neither the restart nor the probe made a new one
        else:
            assert db_path.stat().st_size == 0
    finally:
        engine.close()


@pytest.mark.parametrize("how", ["missing", "empty"])
def test_open_with_create_false_refuses_a_missing_or_empty_file(tmp_path: Path, how: str) -> None:
    path = tmp_path / "gone.db"
    if how == "empty":
        path.write_bytes(b"")
    with pytest.raises(StorageError) as info:
        JackpotEngine.open(path, create=False)
    if how == "missing":
        assert str(info.value) == f"cannot open database {str(path)!r}: it does not exist"
        assert not path.exists()
    else:
        assert "holds no jackpot database" in str(info.value)
        assert path.stat().st_size == 0
    assert not Path(f"{path}-wal").exists()



def test_open_with_no_groups_refuses_an_empty_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    with pytest.raises(StorageError) as info:
        JackpotEngine.open(path, [])
    assert str(info.value) == f"cannot open database {str(path)!r}: it holds no jackpot database"
    assert path.stat().st_size == 0  # was: the schema written, in WAL mode, then refused
    assert not Path(f"{path}-wal").exists()
    # so a server's create=False still refuses it, instead of creating the default levels
    with pytest.raises(StorageError, match="holds no jackpot database"):
        JackpotEngine.open(path, create=False)
    assert path.stat().st_size == 0

def test_open_with_create_false_refuses_a_schema_without_levels(tmp_path: Path) -> None:
    # What a first open leaves when it stops between the schema and the levels.
    path = tmp_path / "half.db"
    store = open_store(str(path))
    store.migrate()
    store.close()
    with pytest.raises(StorageError) as info:
        JackpotEngine.open(path, create=False)
    assert str(info.value) == (f"cannot open database {str(path)!r}: it holds no levels "
                               "(with create=False none are created)")
    store = open_store(str(path), create=False)
    try:
        with store.read():
            assert store.load_levels() == {}  # was: minor, major and mega created
    finally:
        store.close()
    with JackpotEngine.open(path) as engine:  # create=True finishes what the first open began
        assert engine.groups == ("major", "mega", "minor")


def test_a_refused_open_leaves_the_jackpot_logger_level_alone(tmp_path: Path) -> None:
    log = logging.getLogger("jackpot")
    before = log.level
    quiet = Settings(log_level="critical", enable_metrics=False)
    with pytest.raises(ValidationError, match="groups must be"):
        JackpotEngine.open(tmp_path / "x.db", 5, settings=quiet)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="create must be"):
        JackpotEngine.open(tmp_path / "x.db", settings=quiet, create="no")  # type: ignore[arg-type]
    assert log.level == before
    assert not (tmp_path / "x.db").exists()


def test_an_open_refused_by_the_database_leaves_the_jackpot_logger_level_alone(
        tmp_path: Path) -> None:
    log = logging.getLogger("jackpot")
    before = log.level
    loud = Settings(log_level="debug", enable_metrics=False)
    half = tmp_path / "half.db"  # a schema without levels
    store = open_store(str(half))
    store.migrate()
    store.close()
    try:
        log.setLevel(logging.WARNING)
        with pytest.raises(StorageError, match="it does not exist"):
            JackpotEngine.open(tmp_path / "gone.db", settings=loud, create=False)
        assert log.level == logging.WARNING  # was DEBUG: set before the file was looked at
        with pytest.raises(StorageError, match="it holds no levels"):
            JackpotEngine.open(half, settings=loud, create=False)
        assert log.level == logging.WARNING
        with JackpotEngine.open(tmp_path / "new.db", settings=loud):
            assert log.level == logging.DEBUG  # an open that succeeds sets it, as before
    finally:
        log.setLevel(before)


def test_open_with_create_false_opens_an_existing_database(db_path: Path) -> None:
    JackpotEngine.open(db_path).close()
    with JackpotEngine.open(db_path, create=False) as engine:
        assert engine.groups == ("major", "mega", "minor")


def test_open_refuses_a_create_that_is_not_a_bool(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="create must be True or False, not 'no'"):
        JackpotEngine.open(tmp_path / "x.db", create="no")  # type: ignore[arg-type]
    assert not (tmp_path / "x.db").exists()


def test_async_open_passes_create_through(tmp_path: Path) -> None:
    path = tmp_path / "gone.db"
    with pytest.raises(StorageError, match="it does not exist"):
        asyncio.run(AsyncJackpotEngine.open(path, create=False))
    assert not path.exists()


def test_a_cli_write_command_does_not_recreate_a_file_that_vanished_after_its_check(
        db_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from jackpot import _cli  # noqa: PLC0415 - the command's internals, for the race

    JackpotEngine.open(db_path).close()
    checked = _cli._read

    def check_then_vanish(opts: Any, reading: Any) -> Any:
        done = checked(opts, reading)  # the file was there when the command looked
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db_path}{suffix}").unlink(missing_ok=True)
        return done

    monkeypatch.setattr(_cli, "_read", check_then_vanish)
    status = _cli.run(["contribute", "10", "--level", "minor", "--db", str(db_path)])
    assert status == 2
    assert capsys.readouterr().err == (
        f"jackpot: error: cannot open database {str(db_path)!r}: it does not exist\n")
    assert not db_path.exists()


def _ledger_rows(path: Path) -> int:
    store = open_store(str(path), create=False, read_only=True)
    try:
        with store.read():
            return len(store.ledger())
    finally:
        store.close()


SIDE = ("", "-wal", "-shm")


@pytest.mark.parametrize("groups", ["minor", ("major", "minor")])
def test_a_running_engine_refuses_to_write_while_its_files_are_moved_away(
        tmp_path: Path, groups: str | tuple[str, ...]) -> None:
    """Its connections keep the moved file open: an acknowledged write there would be lost."""
    path, away = tmp_path / "pools.db", tmp_path / "moved.db"
    with JackpotEngine.open(path) as engine:
        engine.contribute("10", groups=groups, op_id="before")
        rows = _ledger_rows(path)
        for suffix in SIDE:
            Path(f"{path}{suffix}").rename(f"{away}{suffix}")
        with pytest.raises(StorageError, match="no longer the file this engine opened"):
            engine.contribute("10", groups=groups, op_id="gone")
        report = engine.health()
        assert report.checks[0].status == "failing"
        assert report.checks[0].detail == f"database file {str(path)!r} does not exist"
        assert not path.exists()  # nothing recreated it
        for suffix in SIDE:
            Path(f"{away}{suffix}").rename(f"{path}{suffix}")
        engine.contribute("10", groups=groups, op_id="back")  # put back: it writes again
        assert engine.verify().ok
        assert engine.health().ok
    assert _ledger_rows(path) == rows + (1 if groups == "minor" else 2)


@pytest.mark.parametrize("groups", ["minor", ("major", "minor")])
def test_a_running_engine_refuses_to_write_once_its_file_is_replaced(
        tmp_path: Path, groups: str | tuple[str, ...]) -> None:
    path = tmp_path / "pools.db"
    with JackpotEngine.open(path) as engine:
        engine.contribute("10", groups=groups, op_id="before")
        for suffix in SIDE:
            Path(f"{path}{suffix}").unlink()
        JackpotEngine.open(path).close()  # a new database under the same name
        with pytest.raises(StorageError, match="no longer the file this engine opened"):
            engine.contribute("10", groups=groups, op_id="after")  # was: acknowledged, lost
        report = engine.health()
        assert report.checks[0].status == "failing"  # was: ok (the probe opened the new file)
        assert report.checks[0].detail == (f"writes are refused: database {str(path)!r} is no "
                                           "longer the file this engine opened (removed, "
                                           "renamed or replaced since)")
    assert _ledger_rows(path) == len(GROUPS_CREATED)  # the new file: its creation rows only
    with JackpotEngine.open(path, create=False) as fresh:
        assert fresh.pool("minor").version == 1


GROUPS_CREATED = ("major", "mega", "minor")


def test_a_relative_path_keeps_naming_the_same_file_after_a_chdir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    with JackpotEngine.open("pools.db") as engine:
        monkeypatch.chdir(tmp_path / "elsewhere")
        engine.contribute("10", groups="minor", op_id="after-chdir")
        engine._pools["minor"].actor_ref.stop()  # a restarted actor reopens the same file
        engine.contribute("10", groups="minor", op_id="after-restart")
        assert engine.verify().ok
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == []
    assert _ledger_rows(tmp_path / "here" / "pools.db") == len(GROUPS_CREATED) + 2


def test_two_spellings_of_one_file_share_the_writers_lock_file(tmp_path: Path) -> None:
    real = tmp_path / "data" / "pools.db"
    real.parent.mkdir()
    link = tmp_path / "link.db"
    link.symlink_to(real)
    with JackpotEngine.open(real) as one, JackpotEngine.open(link) as two:
        one.contribute("10", groups="minor", op_id="one")
        two.contribute("10", groups="minor", op_id="two")
    assert (tmp_path / "data" / "pools.db-lock").exists()
    assert not (tmp_path / "link.db-lock").exists()  # was: a second lock file, turns not shared


@pytest.mark.parametrize("url", ["sqlite:///pools.db", "mysql://db/jackpots", "file://x.db"])
def test_a_url_of_another_database_is_refused_as_such(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      url: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError, match="URL of no database this library opens"):
        JackpotEngine.open(url)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("how", ["removed", "replaced"])
@pytest.mark.parametrize("side", ["-wal", "-shm"])
def test_a_running_engine_refuses_to_write_once_its_wal_or_shm_is_gone(
        tmp_path: Path, side: str, how: str) -> None:
    # A removed -wal takes every commit not yet copied into the file with it when
    # the process dies (was: 70 acknowledged bets lost); a new -shm lets another
    # process write beside this one's (was: a corrupt database).
    path = tmp_path / "pools.db"
    with JackpotEngine.open(path) as engine:
        engine.contribute("10", groups="minor", op_id="before")
        engine.contribute("10", groups=("major", "minor"), op_id="before-2")  # the files exist
        Path(f"{path}{side}").unlink()
        if how == "replaced":
            Path(f"{path}{side}").write_bytes(b"")
        for groups in ("minor", ("major", "minor")):
            with pytest.raises(StorageError, match=f"the {side} file of .* was removed or "
                                                   "replaced since this engine opened it"):
                engine.contribute("10", groups=groups, op_id="after")
        report = engine.health()
        refused = (f"database: writes are refused: the {side} file of {str(path)!r} was "
                   "removed or replaced since this engine opened it (what was committed to it "
                   "is still in the engine's hands: close the engine to keep it; a connection "
                   "of another SQLite library in this process, such as Python's sqlite3 module, "
                   "deletes it as it closes: read the database through the engine)")
        assert (report.status, report.reasons) == ("failing", (refused,))
    with JackpotEngine.open(path, create=False) as again:  # closed cleanly: nothing lost
        assert again.pool("minor").version == 3
        assert again.verify().ok


@pytest.mark.parametrize("side", ["-wal", "-shm"])
def test_an_engine_that_has_not_written_yet_refuses_once_its_wal_or_shm_is_gone(
        tmp_path: Path, side: str) -> None:
    # Noted only at the process's first write, a -wal removed before it went unseen: the
    # writes went on into the removed one (was: 5 acknowledged bets lost as the process died).
    path = tmp_path / "pools.db"
    with JackpotEngine.open(path) as engine:
        engine.contribute("10", groups="minor", op_id="made")
    with JackpotEngine.open(path, create=False) as engine:  # it has read: it holds them
        Path(f"{path}{side}").unlink()
        with pytest.raises(StorageError, match=f"the {side} file of .* was removed or "
                                               "replaced since this engine opened it"):
            engine.contribute("10", groups="minor", op_id="after")  # was: accepted
        assert engine.pool("minor").version == 2


def _registered(path: Path) -> bool:
    from jackpot.storage import _files  # noqa: PLC0415 - the process's registry of files

    st = path.stat()
    return (st.st_dev, st.st_ino) in _files._open


def test_a_refused_open_leaves_the_file_unregistered(tmp_path: Path) -> None:
    # Its count kept the registry of the file alive after every engine closed: the
    # -wal and -shm SQLite makes anew later were then taken for replaced ones.
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    with pytest.raises(StorageError, match="holds no jackpot database"):
        JackpotEngine.open(path, create=False)
    assert not _registered(path)
    with JackpotEngine.open(path) as engine:
        engine.contribute("10", groups="minor", op_id="one")
        assert _registered(path)
    assert not _registered(path)


def test_a_forked_child_starts_with_no_registered_files(tmp_path: Path) -> None:
    import os  # noqa: PLC0415

    path = tmp_path / "pools.db"
    with JackpotEngine.open(path) as engine:
        engine.contribute("10", groups="minor", op_id="parent")
        assert _registered(path)
        pid = fork_with_threads()  # (the engine's actors are running)
        if pid == 0:  # the child: the parent's connections are not its own
            os._exit(3 if _registered(path) else 0)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def _child_says(script: str, db: Path) -> list[str]:
    """Run a script that forks (in a process of its own); return what its child printed."""
    done = run_python(script, str(db), timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


_FORKED_WHILE_OPEN = """
import os, sys
from jackpot import JackpotEngine, JackpotError, Settings
from jackpot.storage import SQLiteStore
store = SQLiteStore(sys.argv[1], create=False)
ready, go = os.pipe()
with store.write():  # a batch in flight as the process forks
    child = os.fork()
    if child == 0:  # a worker of a pre-fork server opens an engine of its own
        os.close(go)
        os.read(ready, 1)  # the parent has committed and closed its connection
        try:
            with JackpotEngine.open(sys.argv[1], settings=Settings(lock_timeout_ms=500)) as e:
                print("child", e.contribute("1", groups="minor", op_id="child").versions,
                      flush=True)
        except JackpotError as e:
            print("child", type(e).__name__, "forked" in str(e), flush=True)
        os._exit(0)
store.close()
os.write(go, b"x")
os.waitpid(child, 0)
"""


def test_a_child_forked_while_the_database_was_open_may_not_open_it(tmp_path: Path) -> None:
    # SQLite keeps its locks' books per process; the child's copy of them says the
    # parent's connections still hold their locks, which the kernel never gave the
    # child. Its engine's writes then waited forever on a write lock nobody held
    # (here), or, its locks unseen by others, a closing engine elsewhere could fold
    # and delete the -wal under it, taking acknowledged commits with it.
    db = tmp_path / "pools.db"
    JackpotEngine.open(db).close()
    assert _child_says(_FORKED_WHILE_OPEN, db) == ["child StorageError True"]
    with JackpotEngine.open(db) as engine:  # a process of its own opens it as ever
        assert engine.contribute("1", groups="minor", op_id="after").versions == {"minor": 2}


_FORKED_AS_IT_CLOSES = """
import os, sys
from jackpot import JackpotEngine, JackpotError
from jackpot.storage import SQLiteStore
store = SQLiteStore(sys.argv[1], create=False)
with store.write():
    pass
real = store.conn

class ForkingClose:  # another thread of the process forks as this store closes
    def __getattr__(self, name):
        return getattr(real, name)

    def close(self):
        child = os.fork()  # the connection is still open: the child copies it so
        if child == 0:
            try:
                JackpotEngine.open(sys.argv[1]).close()
                print("child opened it", flush=True)
            except JackpotError as e:
                print("child", type(e).__name__, "forked" in str(e), flush=True)
            os._exit(0)
        os.waitpid(child, 0)
        real.close()

store.conn = ForkingClose()
store.close()
"""


def test_a_child_forked_as_the_last_connection_closes_may_not_open_it(tmp_path: Path) -> None:
    # The store forgot its connection (FileGuard.close) before closing it: a fork
    # in between copied SQLite's books with the connection open, unrefused.
    db = tmp_path / "pools.db"
    JackpotEngine.open(db).close()
    assert _child_says(_FORKED_AS_IT_CLOSES, db) == ["child StorageError True"]


_FORKED_WHILE_READING = """
import os, sys
from jackpot import JackpotEngine, JackpotError, reads
from jackpot.storage import SQLiteStore
store = SQLiteStore(sys.argv[1], create=False, read_only=True)  # through the -shm: it is open
assert reads.pools(store)["minor"].version == 1
child = os.fork()
if child == 0:
    try:
        JackpotEngine.open(sys.argv[1]).close()
        print("child opened it", flush=True)
    except JackpotError as e:
        print("child", type(e).__name__, "forked" in str(e), flush=True)
    os._exit(0)
os.waitpid(child, 0)
store.close()
from jackpot.storage import _files
assert not _files._reading, _files._reading  # forgotten once closed
"""


def test_a_child_forked_while_a_read_only_store_was_open_may_not_open_it(
        tmp_path: Path) -> None:
    # A read-only connection reading through the -shm is in SQLite's books as
    # much as a writer: the child's engine shared the parent's -shm record, so
    # the lock that tells others it uses the -wal was never its own. Seen: an
    # engine of a third process, closing as the last one it could see, folded
    # and deleted the -wal under the child (every later write of the child's a
    # StorageError, its reads stale).
    db = tmp_path / "pools.db"
    with JackpotEngine.open(db):  # another process has it open: -wal and -shm are there
        assert _child_says(_FORKED_WHILE_READING, db) == ["child StorageError True"]


_REFUSED_KEEPS_NO_FD = """
import os, sys
from jackpot import JackpotEngine, JackpotError

def held():  # the descriptors this process has open on the database file
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == sys.argv[1]:
                fds.append(int(fd))
        except OSError:  # (the listing's own descriptor, closed by now)
            pass
    return sorted(fds)

engine = JackpotEngine.open(sys.argv[1])
child = os.fork()
if child == 0:
    before = held()  # the parent's connections, copied by the fork
    said = []
    for _ in range(2):
        try:
            JackpotEngine.open(sys.argv[1]).close()
            said.append("opened")
        except JackpotError as e:
            said.append(type(e).__name__)
    print("child", said, len(before) > 0, held() == before, flush=True)
    os._exit(0)
os.waitpid(child, 0)
engine.close()
"""


def test_a_refused_open_in_a_forked_child_leaves_no_descriptor_open(tmp_path: Path) -> None:
    # The refusal came after SQLite had opened the file: its close, with the
    # parent's locks in SQLite's copied books, is deferred by SQLite (a
    # descriptor kept for as long as the child runs, reused by the next open).
    db = tmp_path / "pools.db"
    JackpotEngine.open(db).close()
    assert _child_says(_REFUSED_KEEPS_NO_FD, db) == [
        "child ['StorageError', 'StorageError'] True True"]


def test_a_store_never_closed_is_unregistered_once_collected(tmp_path: Path) -> None:
    import gc  # noqa: PLC0415

    from jackpot.storage import SQLiteStore  # noqa: PLC0415

    path = tmp_path / "pools.db"
    JackpotEngine.open(path).close()
    store = SQLiteStore(str(path), create=False)
    assert _registered(path)
    del store
    gc.collect()
    assert not _registered(path)


def test_open_keeps_a_level_the_application_set_unless_one_is_given(tmp_path: Path) -> None:
    log = logging.getLogger("jackpot")
    before = log.level
    unset = Settings(enable_metrics=False)  # JACKPOT_LOG_LEVEL not set
    try:
        log.setLevel(logging.NOTSET)
        with JackpotEngine.open(tmp_path / "a.db", settings=unset):
            assert log.level == logging.INFO  # no level of the application's: info
        log.setLevel(logging.WARNING)  # the application's own choice
        with JackpotEngine.open(tmp_path / "a.db", settings=unset):
            assert log.level == logging.WARNING  # was INFO: open() overrode it
        with JackpotEngine.open(tmp_path / "a.db",
                                settings=Settings.from_env({"JACKPOT_LOG_LEVEL": "error"},
                                                           enable_metrics=False)):
            assert log.level == logging.ERROR  # an explicit setting wins
    finally:
        log.setLevel(before)


@pytest.mark.parametrize("when", ["opening", "running"])
def test_an_engine_closing_as_another_opens_the_file_leaves_it_writable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    # The old engine's last connection closes between a new connection's open and its
    # first read: holding no lock yet, the new one does not stop SQLite from folding and
    # deleting the -wal and -shm, which its first read then makes anew. Was: taken for
    # files replaced by someone else, every write refused (open() itself, for the store
    # it migrates with; or the running engine's writes until it was closed).
    from jackpot.storage import SQLiteStore  # noqa: PLC0415

    path = tmp_path / "pools.db"
    old = JackpotEngine.open(path)
    old.contribute("10", groups="minor", op_id="old")  # its writes noted the -wal and -shm
    recognise = SQLiteStore._recognise
    calls = 0

    def first_read(store: SQLiteStore, *, allow_empty: bool) -> int:
        nonlocal calls
        calls += 1
        if calls == (1 if when == "opening" else 2):  # open()'s own store; the engine's reader
            for suffix in ("-wal", "-shm"):  # (kept linked: the new ones get other inodes)
                (tmp_path / f"kept{suffix}").hardlink_to(f"{path}{suffix}")
            old.close()  # its last connection folds the -wal and deletes both
            assert not Path(f"{path}-wal").exists()
            assert not Path(f"{path}-shm").exists()
        return recognise(store, allow_empty=allow_empty)

    monkeypatch.setattr(SQLiteStore, "_recognise", first_read)
    with JackpotEngine.open(path, create=False) as new:
        assert calls > 2
        new.contribute("10", groups="minor", op_id="new")  # was: StorageError, refused
        new.contribute("10", groups=("major", "minor"), op_id="both")
        assert new.health().ok
        assert new.verify().ok
    assert _ledger_rows(path) == len(GROUPS_CREATED) + 4  # one row per level a bet paid


def test_a_connection_that_made_the_file_holds_its_wal_until_it_closes(tmp_path: Path) -> None:
    # It read the new file before switching it to WAL, so held no lock on it: an engine's
    # close deleted the -wal and -shm, the connection's next read made them anew and its
    # writes were refused, the old ones (noted by the engine) taken for replaced.
    from jackpot.storage import SQLiteStore  # noqa: PLC0415

    path = tmp_path / "pools.db"
    first = SQLiteStore(str(path))  # a brand-new file
    try:
        with JackpotEngine.open(path) as engine:
            engine.contribute("10", groups="minor", op_id="one")  # noted the -wal and -shm
            for suffix in ("-wal", "-shm"):  # (kept linked: new ones would get other inodes)
                (tmp_path / f"kept{suffix}").hardlink_to(f"{path}{suffix}")
        assert Path(f"{path}-wal").exists()  # was: deleted by the engine's last close
        with first.write():  # was: StorageError, the -wal "removed or replaced"
            assert first.load_levels()["minor"].version == 2
    finally:
        first.close()
    assert not Path(f"{path}-wal").exists()  # the last close folded it in


def test_a_refusal_asked_of_a_closing_connection_notes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # health() asks the engine's reader for its refusal without waiting for close(): asked
    # after the reader let go of the -wal and -shm and before its close deleted them, it
    # noted them again, and a connection opening meanwhile (a reload) kept that note of
    # the deleted files, its writes refused as if someone had replaced them.
    from jackpot.storage import SQLiteStore  # noqa: PLC0415

    path = tmp_path / "pools.db"
    JackpotEngine.open(path).close()
    old = SQLiteStore(str(path), create=False)
    assert old._guard is not None
    letting_go = old._guard.letting_go

    def asked_meanwhile() -> None:
        letting_go()
        assert old.write_refusal() is None  # a health() racing the close

    monkeypatch.setattr(old._guard, "letting_go", asked_meanwhile)
    recognise = SQLiteStore._recognise

    def first_read(store: SQLiteStore, *, allow_empty: bool) -> int:
        if store is not old and old._guard is not None and old._guard.file is not None:
            for suffix in ("-wal", "-shm"):  # (kept linked: the new ones get other inodes)
                (tmp_path / f"kept{suffix}").hardlink_to(f"{path}{suffix}")
            old.close()  # the last connection: deletes the -wal and -shm
            assert not Path(f"{path}-wal").exists()
        return recognise(store, allow_empty=allow_empty)

    monkeypatch.setattr(SQLiteStore, "_recognise", first_read)
    new = SQLiteStore(str(path), create=False)  # its first read makes them anew
    try:
        assert new.write_refusal() is None  # was: the -wal "removed or replaced"
        with new.write():
            pass
    finally:
        new.close()
