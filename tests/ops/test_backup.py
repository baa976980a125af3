"""`jackpot backup TARGET`: a consistent copy of a database that is serving, audited."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import apsw
import pytest

from _helpers import HANG, read_line
from jackpot import JackpotEngine, VerifyReport, _cli
from jackpot.errors import StorageError
from jackpot.storage import Store
from jackpot.storage import sqlite as sqlite_module


def _in_the_file_alone(path: Path) -> int:
    """Count the operations in the database file itself, without its -wal."""
    file_alone = apsw.Connection(f"file:{path}?mode=ro&immutable=1",
                                 flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    try:
        [[count]] = file_alone.execute("SELECT COUNT(*) FROM operations")
    finally:
        file_alone.close()
    return int(count)


def _rows(path: Path | str, table: str) -> int:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        [[count]] = conn.execute(f"SELECT COUNT(*) FROM {table}")
        return int(count)
    finally:
        conn.close()


def _backup(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = _cli.run(["backup", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_a_backup_taken_while_a_game_server_bets_is_one_moment_and_audits_ok(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, target = tmp_path / "pools.db", tmp_path / "copy.db"
    stop, going = threading.Event(), threading.Event()
    acked: list[str] = []
    errors: list[BaseException] = []
    with JackpotEngine.open(source) as engine:
        made = _rows(source, "operations")  # (those of opening it, if any)

        def bets() -> None:
            try:
                n = 0
                while not stop.is_set():
                    engine.contribute(Decimal(1), op_id=f"bet-{n}")
                    acked.append(f"bet-{n}")
                    n += 1
                    if n == 50:
                        going.set()
            except BaseException as e:
                errors.append(e)
                going.set()

        writer = threading.Thread(target=bets)
        writer.start()
        try:
            assert going.wait(60)
            before = len(acked)
            status, out, err = _backup(capsys, str(target), "--db", str(source), "--json")
            at_copy = len(acked)
        finally:
            stop.set()
            writer.join(60)
    assert errors == []
    assert (status, err) == (0, ""), out
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("copy")) == [
        "copy.db"]  # no -wal or -shm left beside it
    report = json.loads(out)
    assert (report["backup"], report["bytes"]) == (str(target), target.stat().st_size)
    assert (report["audit"]["ok"], report["audit"]["problems"]) == (True, [])
    # One moment: every bet acknowledged before the copy began is in it, and its ledger
    # holds whole operations only (the audit above reconciles every level to it).
    copied = _rows(target, "operations") - made
    assert before <= copied <= at_copy + 1  # (+1: one committed, not yet counted here)
    with JackpotEngine.open(target) as copy:  # a database the engine serves on
        assert copy.contribute(Decimal(1), op_id="bet-0").replayed
        assert copy.verify().ok


def test_a_backup_prints_what_it_copied_and_the_copys_audit(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # (a long temporary path, on one line)
    source, target = tmp_path / "pools.db", tmp_path / "copy.db"
    with JackpotEngine.open(source) as engine:
        engine.contribute(Decimal(10), op_id="a")
    status, out, err = _backup(capsys, str(target), "--db", str(source))
    assert (status, err) == (0, "")
    assert out.splitlines() == [
        f"copied {source} to {target} ({target.stat().st_size:,} bytes)",
        "audit OK: 3 levels, 6 ledger rows reconciled to the smallest unit"]
    assert _rows(target, "ledger") == _rows(source, "ledger") == 6


def test_a_backup_never_overwrites_a_file(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    source, target = tmp_path / "pools.db", tmp_path / "copy.db"
    JackpotEngine.open(source).close()
    target.write_bytes(b"yesterday's backup")
    status, out, err = _backup(capsys, str(target), "--db", str(source))
    assert (status, out) == (2, "")
    assert err == f"jackpot: error: {str(target)!r} exists: a backup goes to a new file\n"
    assert target.read_bytes() == b"yesterday's backup"


@pytest.mark.parametrize("where", ["no directory", "copy fails", "a step's sync fails"])
def test_a_backup_that_fails_leaves_nothing_at_its_target(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        where: str) -> None:
    source = tmp_path / "pools.db"
    JackpotEngine.open(source).close()
    if where == "no directory":
        target = tmp_path / "missing" / "copy.db"
        said = (f"cannot create {str(target)!r} in the directory {str(target.parent)!r}: "
                "No such file or directory")
    else:
        target = tmp_path / "copy.db"
        said = f"the copy to {str(target)!r} failed: [Errno 5] disk gone"
        if where == "a step's sync fails":  # (the first step's, its copy half done)
            monkeypatch.setattr(sqlite_module, "_COPY_STEP_BYTES", 1)

        def failing_fsync(fd: int) -> None:
            raise OSError(5, "disk gone")

        monkeypatch.setattr(sqlite_module.os, "fsync", failing_fsync)
    before = sorted(p.name for p in tmp_path.iterdir())
    status, out, err = _backup(capsys, str(target), "--db", str(source))
    monkeypatch.undo()
    assert (status, out, err) == (2, "", f"jackpot: error: {said}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing left at target
    assert not os.path.lexists(target)


def test_a_backup_of_what_is_no_jackpot_database_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, target = tmp_path / "other.db", tmp_path / "copy.db"
    source.write_bytes(b"")
    status, _, err = _backup(capsys, str(target), "--db", str(source))
    assert status == 2
    assert "holds no jackpot database" in err
    assert not target.exists()
    status, _, err = _backup(capsys, str(target), "--db", "postgresql://u@localhost/jackpots")
    assert (status, err) == (2, ("jackpot: error: a PostgreSQL database is backed up with "
                                "pg_dump (or the server's own backups), not by jackpot\n"))
    assert not target.exists()


def test_a_backup_of_a_closed_file_that_a_writer_opens_meanwhile_is_taken_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Nobody has the file open: it is read immutable, and a writer starting meanwhile may
    tear the copy; it is thrown away and taken again (as `verify` reads again)."""
    source, target = tmp_path / "pools.db", tmp_path / "copy.db"
    with JackpotEngine.open(source) as engine:
        engine.contribute(Decimal(10), op_id="a")
    real = sqlite_module.SQLiteStore._copy_into
    copies: list[bool] = []

    def a_writer_starts_first(store: sqlite_module.SQLiteStore, into: str) -> None:
        if not copies:  # the game server opens the file as the first copy begins
            with JackpotEngine.open(source) as engine:
                engine.contribute(Decimal(10), op_id="b")
        copies.append(Path(into).exists())
        real(store, into)

    monkeypatch.setattr(sqlite_module.SQLiteStore, "_copy_into", a_writer_starts_first)
    status, out, err = _backup(capsys, str(target), "--db", str(source), "--json")
    assert (status, err) == (0, ""), out
    assert copies == [True, True]  # the first copy was thrown away, then taken again
    assert json.loads(out)["audit"]["ok"]
    assert _rows(target, "operations") == _rows(source, "operations")  # "b" too


@pytest.mark.parametrize("given", ["its name", "a symbolic link to it"])
@pytest.mark.parametrize("suffix", ["-wal", "-shm", "-journal", "-lock"])
def test_a_backup_into_one_of_the_databases_own_files_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        suffix: str, given: str) -> None:
    """Absent while nobody has the database open, `pools.db-wal` is no free name: the
    engine that opens the database next resets it (the copy lost, after exit status 0).
    The database given as a link (`--db link.db`), its files are still beside the file
    (SQLite's, the engine's): `pools.db-wal` was taken for a free name."""
    source = tmp_path / "pools.db"
    with JackpotEngine.open(source) as engine:
        engine.contribute(Decimal(10), op_id="a")
    Path(f"{source}-lock").unlink(missing_ok=True)
    if given == "a symbolic link to it":
        (tmp_path / "link.db").symlink_to(source.name)
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.chdir(tmp_path)  # (given relative, the database's name absolute)
    db = str(source) if given == "its name" else str(tmp_path / "link.db")
    status, out, err = _backup(capsys, f"pools.db{suffix}", "--db", db)
    assert (status, out) == (2, "")
    assert err == (f"jackpot: error: 'pools.db{suffix}' is the database's own {suffix} "
                   "file: SQLite resets or deletes it as the database opens; a backup goes "
                   "to a file of its own\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("stop", ["interrupted", "unreadable"])
def test_a_backup_stopped_as_it_audits_the_copy_leaves_nothing_at_its_target(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        stop: str) -> None:
    """The audit takes most of the time (~10 s of 200k ledger rows, the copy ~0.5 s):
    Ctrl-C then must not leave an unaudited copy that a second try is refused for."""
    source, target = tmp_path / "pools.db", tmp_path / "copy.db"
    JackpotEngine.open(source).close()

    def audit(store: Store) -> VerifyReport:  # (only the copy is audited)
        assert target.stat().st_size > 0  # the copy is whole, its audit begun
        if stop == "interrupted":
            raise KeyboardInterrupt
        raise StorageError("disk gone")

    monkeypatch.setattr(_cli, "audit", audit)
    before = sorted(p.name for p in tmp_path.iterdir())
    status, out, err = _backup(capsys, str(target), "--db", str(source))
    assert (status, out, err) == ((130, "", "\njackpot: error: interrupted\n")
                                  if stop == "interrupted" else
                                  (2, "", "jackpot: error: disk gone\n"))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


BETTING = """
import select, sys
from decimal import Decimal
from jackpot import JackpotEngine

with JackpotEngine.open(sys.argv[1], create=False) as engine:
    n = 0
    while not select.select([sys.stdin], [], [], 0)[0]:  # bets until a word on stdin
        engine.contribute(Decimal("2.50"), op_id=f"p-{n}")
        print(f"acked {n}", flush=True)
        n += 1
print("closed", flush=True)
"""


@pytest.mark.parametrize("steps", ["as configured", "a page per step"])
def test_a_backup_taken_while_another_process_bets_holds_one_moment_of_whole_bets(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        steps: str) -> None:
    if steps == "a page per step":  # (the bets commit between the copy's steps)
        monkeypatch.setattr(sqlite_module, "_COPY_STEP_BYTES", 1)
    source, target, err = tmp_path / "pools.db", tmp_path / "copy.db", tmp_path / "bets.err"
    JackpotEngine.open(source).close()
    made = _rows(source, "operations")
    acked: list[int] = []
    going, closed = threading.Event(), threading.Event()
    with err.open("wb") as err_file:
        proc = subprocess.Popen([sys.executable, "-c", BETTING, str(source)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err_file,
                                bufsize=0)
    assert proc.stdin is not None
    assert proc.stdout is not None
    out_pipe, deadline = proc.stdout, HANG * 4

    def acks() -> None:  # (read as they come: a full pipe would stop the bets)
        while (line := read_line(out_pipe, time.monotonic() + deadline, "ack")) != b"closed":
            assert line.startswith(b"acked "), f"{line!r}: {err.read_text()[-3000:]}"
            acked.append(int(line.removeprefix(b"acked ")))
            if len(acked) == 50:
                going.set()
        closed.set()

    reader = threading.Thread(target=acks)
    reader.start()
    try:
        assert going.wait(HANG), err.read_text()[-3000:]
        before = len(acked)
        status, out, cli_err = _backup(capsys, str(target), "--db", str(source), "--json")
        at_copy = len(acked)
    finally:
        proc.stdin.write(b"stop\n")
        proc.stdin.close()
        reader.join(HANG)
        assert proc.wait(HANG) == 0, err.read_text()[-3000:]
    assert closed.is_set()
    assert (status, cli_err) == (0, ""), out
    assert json.loads(out)["audit"] == {"ok": True, "problems": [], "levels": 3,
                                        "ledger_rows": _rows(target, "ledger")}
    conn = apsw.Connection(str(target), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        copied = sorted(int(op[2:]) for (op,) in conn.execute(
            "SELECT op_id FROM operations WHERE op_id LIKE 'p-%'"))
    finally:
        conn.close()
    # One moment: the first bets in order, every one acknowledged before the copy began,
    # none after it ended (+1: committed, its ack not read yet); whole (the audit).
    assert copied == list(range(len(copied)))
    assert before <= len(copied) <= at_copy + 1
    assert _rows(target, "operations") == made + len(copied)


def test_a_backup_is_readable_by_whom_the_database_is(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A database only its owner may read is not copied into a file everybody may read."""
    source, target = tmp_path / "pools.db", tmp_path / "copy.db"
    JackpotEngine.open(source).close()
    source.chmod(0o600)
    umask = os.umask(0o022)
    try:
        status, _, err = _backup(capsys, str(target), "--db", str(source))
    finally:
        os.umask(umask)
    assert (status, err) == (0, "")
    assert target.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("beside", ["copy.db", "copy.db.partial"])
@pytest.mark.parametrize("suffix", ["-wal", "-shm", "-journal"])
def test_a_backup_beside_a_side_file_it_did_not_make_is_refused_and_leaves_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str, beside: str) -> None:
    """`copy.db-wal` left by a database once at `copy.db` (or one still open, deleted):
    SQLite takes it for the copy's own, deleting or rewriting it as the copy opens (the
    copy is made as `copy.db.partial`, then opened as `copy.db`), and a failed copy's
    cleanup would delete it too. It is not the command's to touch."""
    source, target = tmp_path / "pools.db", tmp_path / "copy.db"
    JackpotEngine.open(source).close()
    side = tmp_path / f"{beside}{suffix}"
    side.write_bytes(b"another database's " * 300)
    before = sorted(p.name for p in tmp_path.iterdir())
    status, out, err = _backup(capsys, str(target), "--db", str(source))
    assert (status, out) == (2, "")
    assert err == (f"jackpot: error: {str(side)!r} exists beside {str(tmp_path / beside)!r}: "
                   f"SQLite would take it for the copy's own {suffix} file and delete or "
                   "rewrite it; move it away (it may belong to a database still open) or back "
                   "up to another name\n")
    assert side.read_bytes() == b"another database's " * 300
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("target", ["", "new/", "new//"])
def test_a_backup_to_a_name_that_is_no_files_is_refused_before_it_copies(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        target: str) -> None:
    """'' was copied whole into '.partial' here, then failed: "'.partial' -> ''".

    And 'new/' (no such directory yet) said "cannot create 'new/' in the directory"
    of the working directory, which exists: the copy went inside 'new/'.
    """
    source = tmp_path / "pools.db"
    JackpotEngine.open(source).close()
    monkeypatch.chdir(tmp_path)
    copies: list[str] = []
    copy_into = sqlite_module.SQLiteStore._copy_into

    def copying(self: sqlite_module.SQLiteStore, partial: str) -> None:
        copies.append(partial)
        copy_into(self, partial)

    monkeypatch.setattr(sqlite_module.SQLiteStore, "_copy_into", copying)
    before = sorted(p.name for p in tmp_path.iterdir())
    status, out, err = _backup(capsys, target, "--db", str(source))
    assert (status, out) == (2, "")
    assert err == (f"jackpot: error: {target!r} names no file: give the path of the new file "
                   "the backup goes to\n")
    assert copies == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("points_to", ["nothing", "a file"])
def test_a_backup_to_a_symbolic_link_is_refused_naming_the_link(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], points_to: str) -> None:
    source, target = tmp_path / "pools.db", tmp_path / "copy.db"
    JackpotEngine.open(source).close()
    to = tmp_path / "elsewhere" / "old.db"
    if points_to == "a file":
        to.parent.mkdir()
        to.write_bytes(b"yesterday's backup")
    target.symlink_to(to)
    status, out, err = _backup(capsys, str(target), "--db", str(source))
    assert (status, out) == (2, "")
    gone = ", which does not exist" if points_to == "nothing" else ""
    assert err == (f"jackpot: error: {str(target)!r} is a symbolic link (to {str(to)!r}"
                   f"{gone}): a backup goes to a new file, never through a link\n")
    assert target.readlink() == to
    assert not to.exists() if points_to == "nothing" else to.read_bytes() == b"yesterday's backup"


def _backup_as_another_user(target: Path, db: Path, groups: str = "--clear-groups"
                            ) -> subprocess.CompletedProcess[str]:
    """Run `jackpot backup` as nobody when root (permission bits do not stop root).

    `groups`: setpriv's option for nobody's groups (`--groups=N`, or none).
    """
    as_other = (["setpriv", "--reuid=65534", "--regid=65534", groups]
                if os.geteuid() == 0 else [])
    return subprocess.run([*as_other, sys.executable, "-m", "jackpot", "backup", str(target),
                           "--db", str(db)],
                          capture_output=True, text=True, timeout=60, check=False, cwd="/")


@contextlib.contextmanager
def _shared_database(tmp_path: Path) -> Iterator[Path]:
    """Yield a database (one bet, "a") in a new directory another user can reach.

    (tmp_path is under /tmp/pytest-of-root, 0700.) The directory and all in it
    are removed afterwards, the directories made writable first.
    """
    source = tmp_path / "pools.db"
    with JackpotEngine.open(source) as engine:
        engine.contribute(Decimal(10), op_id="a")
    shared = Path(tempfile.mkdtemp(prefix="jackpot-backup-"))
    try:
        shutil.copy(source, shared / "pools.db")
        yield shared / "pools.db"
    finally:
        for directory in (shared, *(p for p in shared.iterdir() if p.is_dir())):
            directory.chmod(0o755)
        shutil.rmtree(shared)


def test_a_backup_into_a_directory_it_may_not_write_is_refused_naming_it(
        tmp_path: Path) -> None:
    """An operator's user, a directory of another's: a real refusal by the system (root is
    not stopped by permission bits: the command runs as nobody, as test_cli's readers do)."""
    with _shared_database(tmp_path) as db:
        shared = db.parent
        db.chmod(0o444)
        (shared / "backups").mkdir(mode=0o555)
        (shared / "backups").chmod(0o555)
        shared.chmod(0o755)
        target = shared / "backups" / "copy.db"
        done = _backup_as_another_user(target, db)
        assert (done.returncode, done.stdout) == (2, "")
        assert done.stderr == (f"jackpot: error: cannot create {str(target)!r} in the "
                               f"directory {str(target.parent)!r}: Permission denied\n")
        assert list((shared / "backups").iterdir()) == []
        assert sorted(p.name for p in shared.iterdir()) == ["backups", "pools.db"]


def test_a_backup_copied_in_steps_holds_the_moment_of_its_first_step(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Copied (and synced) a page at a time, a bet committed between two steps is not in
    the copy: one moment, the first step's (SQLite restarts a copy whose source changed
    between steps unless the copy holds its read transaction from first step to last)."""
    source, target = tmp_path / "pools.db", tmp_path / "copy.db"
    monkeypatch.setattr(sqlite_module, "_COPY_STEP_BYTES", 1)  # (a page per step)
    real_fsync = os.fsync
    between: list[int] = []
    with JackpotEngine.open(source) as engine:
        engine.contribute(Decimal(10), op_id="before")

        def a_bet_between_steps(fd: int) -> None:
            if not between:  # (after the copy's first step)
                engine.contribute(Decimal(10), op_id="between")
                between.append(fd)
            real_fsync(fd)

        monkeypatch.setattr(sqlite_module.os, "fsync", a_bet_between_steps)
        status, out, err = _backup(capsys, str(target), "--db", str(source), "--json")
        monkeypatch.setattr(sqlite_module.os, "fsync", real_fsync)
        assert len(between) == 1
        assert (status, err) == (0, ""), out
        assert json.loads(out)["audit"]["ok"]
        conn = apsw.Connection(str(target), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            copied = [op for (op,) in conn.execute(
                "SELECT op_id FROM operations WHERE op_id IN ('before', 'between')")]
        finally:
            conn.close()
        assert copied == ["before"]
        assert engine.contribute(Decimal(10), op_id="between").replayed  # (it was committed)


def test_a_backup_of_a_database_nobody_may_write_is_taken_and_its_owner_may_write_it(
        tmp_path: Path) -> None:
    """A database made read-only (0444): the copy took its bits, so SQLite could not write
    the copy it had just made ("the copy ... failed: not an error"). The copy's owner may
    write and read it; who else may read it is as the database says."""
    with _shared_database(tmp_path) as db:
        shared, target = db.parent, db.parent / "copy.db"
        db.chmod(0o444)
        shared.chmod(0o777)
        umask = os.umask(0o022)
        try:
            done = _backup_as_another_user(target, db)
        finally:
            os.umask(umask)
        assert (done.returncode, done.stderr) == (0, ""), done.stdout
        assert target.stat().st_mode & 0o777 == 0o644
        assert sorted(p.name for p in shared.iterdir()) == ["copy.db", "pools.db"]
        assert _rows(target, "operations") == _rows(db, "operations")


def test_a_backup_stopped_between_its_steps_leaves_nothing_at_its_target(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C as a step's pages are synced: the half-made copy, its -journal too, removed,
    and a second try is not refused."""
    source, target = tmp_path / "pools.db", tmp_path / "copy.db"
    monkeypatch.setattr(sqlite_module, "_COPY_STEP_BYTES", 1)  # (a page per step)
    with JackpotEngine.open(source) as engine:
        engine.contribute(Decimal(10), op_id="a")
        steps: list[int] = []

        def interrupted(fd: int) -> None:
            steps.append(fd)
            assert Path(f"{target}.partial-journal").exists()  # (the copy half made)
            raise KeyboardInterrupt

        monkeypatch.setattr(sqlite_module.os, "fsync", interrupted)
        before = sorted(p.name for p in tmp_path.iterdir())
        status, out, err = _backup(capsys, str(target), "--db", str(source))
        monkeypatch.undo()
        assert len(steps) == 1
        assert (status, out, err) == (130, "", "\njackpot: error: interrupted\n")
        assert sorted(p.name for p in tmp_path.iterdir()) == before
        engine.contribute(Decimal(10), op_id="b")
        assert _backup(capsys, str(target), "--db", str(source))[0] == 0  # tried again


STOPPED_TWICE = """
import os, pathlib, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # (Ctrl-C, in a background job too)
from jackpot import _cli
from jackpot.storage import sqlite

told = []

def stopped_at(what, call):
    def stop(*args, **kwargs):  # the first call: say so, then wait for the test's Ctrl-C
        if what not in told:
            told.append(what)
            print(what, flush=True)
            sys.stdin.readline()  # (the test gone: stdin ends, and it goes on)
        return call(*args, **kwargs)
    return stop

sqlite._COPY_STEP_BYTES = 1  # (a page per step: the copy half made as its first is synced)
os.fsync = stopped_at("copying", os.fsync)
os.unlink = stopped_at("cleaning up", os.unlink)
pathlib.Path.unlink = stopped_at("cleaning up", pathlib.Path.unlink)
sys.exit(_cli.run(sys.argv[1:]))
"""


@pytest.mark.parametrize("stop", ["Ctrl-C twice", "killed"])
def test_a_backup_stopped_again_as_it_cleans_up_leaves_no_partial_copy_at_its_target(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], stop: str) -> None:
    """Ctrl-C as the copy is half made starts its cleanup; a second Ctrl-C during it stopped
    the cleanup and left the half-made copy at TARGET (an empty file), which a user could
    take for a backup (an engine opening it makes a new, empty database there); so did a
    crash (SIGKILL) as it copied. The copy is made under another name, and named TARGET only
    once whole and synced; the next backup to TARGET tells what is left."""
    source, target = tmp_path / "pools.db", tmp_path / "copy.db"
    with JackpotEngine.open(source) as engine:
        engine.contribute(Decimal(10), op_id="a")
    Path(f"{source}-lock").unlink(missing_ok=True)
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = subprocess.Popen([sys.executable, "-c", STOPPED_TWICE, "backup", str(target),
                             "--db", str(source)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0)
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + HANG
        assert read_line(proc.stdout, deadline, "a step synced") == b"copying"
        if stop == "killed":
            proc.kill()
        else:
            proc.send_signal(signal.SIGINT)
            assert read_line(proc.stdout, deadline, "its cleanup") == b"cleaning up"
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=HANG)
    finally:
        proc.kill()
    if stop == "killed":
        assert proc.returncode == -signal.SIGKILL
        left = ["copy.db.partial", "copy.db.partial-journal"]  # (the copy half made)
    else:
        assert (proc.returncode, out) == (130, b""), err
        assert err.endswith(b"jackpot: error: interrupted\n"), err
        left = ["copy.db.partial"]
    assert not os.path.lexists(target)
    partial = Path(f"{target}.partial")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, *left])
    status, out, err = _backup(capsys, str(target), "--db", str(source))  # (told, not taken)
    assert (status, out) == (2, "")
    assert err == (f"jackpot: error: {str(partial)!r} exists: a backup to {str(target)!r} "
                   "is being made, or one that was stopped (Ctrl-C, a crash) left it "
                   "unfinished; remove it (and any -journal beside it) once no backup to "
                   f"{str(target)!r} is running\n")
    assert not os.path.lexists(target)
    for name in left:
        (tmp_path / name).unlink()
    assert _backup(capsys, str(target), "--db", str(source))[0] == 0  # tried again
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, target.name])


@pytest.mark.parametrize("made", ["a file", "a symbolic link"])
def test_a_backup_never_replaces_a_file_made_at_its_target_during_the_copy(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        made: str) -> None:
    """The copy is named TARGET once whole: a file made there meanwhile (another backup
    to it, say) is kept, and the copy removed, as a file found there first is."""
    source, target = tmp_path / "pools.db", tmp_path / "copy.db"
    JackpotEngine.open(source).close()
    real = sqlite_module.SQLiteStore._copy_into

    def another_file_meanwhile(store: sqlite_module.SQLiteStore, into: str) -> None:
        real(store, into)
        if made == "a file":
            target.write_bytes(b"another backup")
        else:
            target.symlink_to(tmp_path / "nowhere.db")

    monkeypatch.setattr(sqlite_module.SQLiteStore, "_copy_into", another_file_meanwhile)
    before = sorted(p.name for p in tmp_path.iterdir())
    status, out, err = _backup(capsys, str(target), "--db", str(source))
    assert (status, out) == (2, "")
    assert err == (f"jackpot: error: {str(target)!r} exists (it was made during the copy): "
                   "a backup goes to a new file\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "copy.db"])
    if made == "a file":
        assert target.read_bytes() == b"another backup"
    else:
        assert target.readlink() == tmp_path / "nowhere.db"


@pytest.mark.parametrize("refused", [errno.EPERM, errno.EOPNOTSUPP])
def test_a_backup_on_a_file_system_without_hard_links_is_named_by_a_rename(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        refused: int) -> None:
    """(FAT or exFAT, a USB disk: link() fails with EPERM.) The whole copy is renamed."""
    source, target = tmp_path / "pools.db", tmp_path / "copy.db"
    with JackpotEngine.open(source) as engine:
        engine.contribute(Decimal(10), op_id="a")
    Path(f"{source}-lock").unlink(missing_ok=True)

    def no_hard_links(*args: object, **kwargs: object) -> None:
        raise OSError(refused, os.strerror(refused))

    monkeypatch.setattr(sqlite_module.os, "link", no_hard_links)
    before = sorted(p.name for p in tmp_path.iterdir())
    status, out, err = _backup(capsys, str(target), "--db", str(source), "--json")
    monkeypatch.undo()
    assert (status, err) == (0, ""), out
    assert json.loads(out)["audit"]["ok"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "copy.db"])
    assert _rows(target, "operations") == _rows(source, "operations")


LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (a write past the limit fails: EFBIG)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
from jackpot import _cli
sys.exit(_cli.run(sys.argv[2:]))
"""


def test_a_backup_whose_copy_cannot_be_written_says_why(tmp_path: Path) -> None:
    """A step that fails to write the copy (a full disk; here a file size limit) said only
    "failed: not an error": a step's error has no text until the copy is finished."""
    source, target = tmp_path / "pools.db", tmp_path / "copy.db"
    with JackpotEngine.open(source) as engine:
        for n in range(300):
            engine.contribute(Decimal(1), op_id=f"bet-{n}")
    Path(f"{source}-lock").unlink(missing_ok=True)
    limit = 64 * 1024
    assert source.stat().st_size > 2 * limit
    before = sorted(p.name for p in tmp_path.iterdir())
    done = subprocess.run([sys.executable, "-c", LIMITED, str(limit), "backup", str(target),
                           "--db", str(source)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (f"jackpot: error: the copy to {str(target)!r} failed: disk I/O "
                           "error\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_backup_to_a_name_that_is_not_utf8_is_refused_naming_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`jackpot backup $'\\xff.db'`: SQLite takes UTF-8 names only; the copy failed with a
    traceback (UnicodeEncodeError) and exit status 1, which says "the audit failed"."""
    source = tmp_path / "pools.db"
    JackpotEngine.open(source).close()
    target = str(tmp_path / os.fsdecode(b"\xff.db"))  # (as the shell gives it: undecodable)
    before = sorted(p.name for p in tmp_path.iterdir())
    status, out, err = _backup(capsys, target, "--db", str(source))
    assert (status, out) == (2, "")
    assert err == (f"jackpot: error: {target!r} is not a file name SQLite can open (it is "
                   "not UTF-8): back up to another name\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("maker", ["of the database's group", "of another group"])
def test_a_backups_group_may_read_it_only_if_the_databases_group_may_read_that(
        tmp_path: Path, maker: str) -> None:
    """A new file takes its maker's group: a database only its group may read (0640, of
    group 65533) was copied into a 0640 file of the maker's group (65534), whose members
    may not read the database. The copy is the database's group's, or its group's bits are
    its others' (the maker not of the database's group: 0600 here)."""
    assert os.geteuid() == 0, "run as root (as CI does): it gives files to other users"
    with _shared_database(tmp_path) as db:
        shared, target = db.parent, db.parent / "copy.db"
        shared.chmod(0o777)
        # nobody (65534, group 65534) reads it through its group 65533, or as its owner.
        os.chown(db, 0 if maker == "of the database's group" else 65534, 65533)
        db.chmod(0o640)
        groups = ("--groups=65533" if maker == "of the database's group"
                  else "--clear-groups")
        umask = os.umask(0o022)
        try:
            done = _backup_as_another_user(target, db, groups)
        finally:
            os.umask(umask)
        assert (done.returncode, done.stderr) == (0, ""), done.stdout
        made = target.stat()
        assert (made.st_uid, made.st_gid, made.st_mode & 0o777) == (
            (65534, 65533, 0o640) if maker == "of the database's group" else
            (65534, 65534, 0o600))


def test_a_backup_to_a_name_too_long_for_its_journal_is_refused_saying_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A name of 250 bytes may be created, but not the -journal SQLite copies under: the
    copy failed, saying "failed: not an error" (then "unable to open database file").
    The copy is made as NAME.partial, under NAME.partial-journal: 16 bytes longer."""
    source = tmp_path / "pools.db"
    JackpotEngine.open(source).close()
    longest = os.pathconf(tmp_path, "PC_NAME_MAX")
    room = longest - len(".partial-journal")
    target = tmp_path / ("c" * (room + 1 - len(".db")) + ".db")  # (one byte too many)
    before = sorted(p.name for p in tmp_path.iterdir())
    status, out, err = _backup(capsys, str(target), "--db", str(source))
    assert (status, out) == (2, "")
    assert err == (f"jackpot: error: {str(target)!r} is too long a name for a backup: the "
                   "copy is made under it and '.partial', with a '.partial-journal' beside "
                   f"it (SQLite's), and {longest} bytes is the longest name there\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    target = tmp_path / ("c" * (room - len(".db")) + ".db")  # (the longest taken)
    assert _backup(capsys, str(target), "--db", str(source))[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, target.name])


def test_a_backup_to_a_name_too_long_for_its_directory_is_refused_saying_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A name longer than the directory takes at all (260 bytes of 255): looking for a
    link there raised ENAMETOOLONG, and the command ended with "File name too long"
    and exit status 1 (the system refused), where the README has it refused with 2."""
    source = tmp_path / "pools.db"
    JackpotEngine.open(source).close()
    longest = os.pathconf(tmp_path, "PC_NAME_MAX")
    target = tmp_path / ("c" * (longest + 5 - len(".db")) + ".db")
    before = sorted(p.name for p in tmp_path.iterdir())
    status, out, err = _backup(capsys, str(target), "--db", str(source))
    assert (status, out) == (2, "")
    assert err == (f"jackpot: error: {str(target)!r} is too long a name for a backup: the "
                   "copy is made under it and '.partial', with a '.partial-journal' beside "
                   f"it (SQLite's), and {longest} bytes is the longest name there\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_backup_under_a_umask_that_takes_its_owners_write_bit_is_taken(
        tmp_path: Path) -> None:
    """`umask 0277` (files for their owner to read only): the copy was made 0400, so
    SQLite opened it read-only and the copy failed ("attempt to write a readonly
    database", exit status 2; as root the copy was left 0400). Its owner reads and writes it."""
    with _shared_database(tmp_path) as db:
        shared, target = db.parent, db.parent / "copy.db"
        db.chmod(0o644)
        shared.chmod(0o777)
        umask = os.umask(0o277)
        try:
            done = _backup_as_another_user(target, db)
        finally:
            os.umask(umask)
        assert (done.returncode, done.stderr) == (0, ""), done.stdout
        assert target.stat().st_mode & 0o777 == 0o600
        assert sorted(p.name for p in shared.iterdir()) == ["copy.db", "pools.db"]
        assert _rows(target, "operations") == _rows(db, "operations")


@pytest.mark.parametrize("refused", ["the group's chown and chmod", "the owner's chmod"])
def test_a_backup_on_a_file_system_that_refuses_its_permissions_fails_and_leaves_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        refused: str) -> None:
    """(FAT, some network mounts: chown and chmod refused, EPERM.) The copy's readers cannot
    be made the database's, nor (umask 0277) its owner let write it: no copy is made,
    rather than one more readers may read, and nothing is left."""
    source, target = tmp_path / "pools.db", tmp_path / "copy.db"
    JackpotEngine.open(source).close()
    Path(f"{source}-lock").unlink(missing_ok=True)
    if refused == "the group's chown and chmod":
        assert os.geteuid() == 0, "run as root (as CI does): it gives the database a group"
        os.chown(source, -1, 65533)  # (only its group and owner may read it)
        source.chmod(0o640)
        umask = 0o022
    else:
        umask = 0o277  # (the copy made 0400: its owner must be let write it)

    def refusing(*args: object) -> None:
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(sqlite_module.os, "fchown", refusing)
    monkeypatch.setattr(sqlite_module.os, "fchmod", refusing)
    before = sorted(p.name for p in tmp_path.iterdir())
    umask = os.umask(umask)
    try:
        status, out, err = _backup(capsys, str(target), "--db", str(source))
    finally:
        os.umask(umask)
        monkeypatch.undo()
    assert (status, out) == (2, "")
    why = ("it may be given neither the database's group 65533 (chown: Operation not "
           "permitted) nor a group that may do no more than anyone (chmod: Operation not "
           "permitted)" if refused == "the group's chown and chmod" else
           "the umask left it 0400 and its owner may not be let read and write it (chmod: "
           "Operation not permitted)")
    assert err == (f"jackpot: error: cannot give {str(target)!r} who may read the database: "
                   f"{why}; back up to a file system that keeps owners and permissions\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_backup_of_a_closed_file_changed_within_one_tick_of_its_clock_is_taken_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Nobody has the file open: it is read immutable, and a change during the copy was
    told by the file's size and mtime only. A clock of coarse ticks (1 s on ext4 of
    128-byte inodes, 2 s on FAT; a jiffy elsewhere) gives a change within the tick of the
    last one the same mtime, and a change into free pages the same size: a writer that
    opened, bet and closed between two steps of the copy went unseen, and the copy was
    torn (the levels' page from before the bet, the ledger's from after): "audit FAILED",
    exit status 1, about a database that is whole, the torn copy left at TARGET (the bet
    between other steps: "database disk image is malformed", exit status 2). Simulated: the
    mtime set back, as such a clock would leave it."""
    source, target = tmp_path / "pools.db", tmp_path / "copy.db"
    with JackpotEngine.open(source) as engine:
        engine.contribute(Decimal(10), op_id="a")
    conn = apsw.Connection(str(source))  # free pages, for the bet to change no size
    conn.execute("CREATE TABLE scratch (b BLOB); INSERT INTO scratch VALUES (zeroblob(200000));"
                 "DROP TABLE scratch")
    conn.close()
    Path(f"{source}-lock").unlink(missing_ok=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pools.db"]  # (closed)
    monkeypatch.setattr(sqlite_module, "_COPY_STEP_BYTES", 1)  # (a page per step)
    real_fsync, real_copy = os.fsync, sqlite_module.SQLiteStore._copy_into
    copies: list[str] = []
    steps: list[int] = []

    def a_writer_between_steps(fd: int) -> None:
        steps.append(fd)
        if len(copies) == 1 and len(steps) == 2:  # (the first copy's pages 1-2 copied)
            copies.append("bet between its steps")
            was = source.stat()
            with JackpotEngine.open(source) as engine:
                engine.contribute(Decimal(10), op_id="b")
            assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(
                "pools")) == ["pools.db", "pools.db-lock"]  # (it closed: no -wal, no -shm)
            assert source.stat().st_size == was.st_size
            os.utime(source, ns=(was.st_atime_ns, was.st_mtime_ns))  # (the same tick)
        real_fsync(fd)

    def copying(store: sqlite_module.SQLiteStore, into: str) -> None:
        copies.append(into)
        real_copy(store, into)

    monkeypatch.setattr(sqlite_module.os, "fsync", a_writer_between_steps)
    monkeypatch.setattr(sqlite_module.SQLiteStore, "_copy_into", copying)
    status, out, err = _backup(capsys, str(target), "--db", str(source), "--json")
    monkeypatch.undo()
    assert (status, err) == (0, ""), out
    assert json.loads(out)["audit"]["ok"]
    assert copies == [f"{target}.partial", "bet between its steps", f"{target}.partial"]
    conn = apsw.Connection(str(target), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT op_id FROM operations WHERE op_id IN ('a', 'b') "
                            "ORDER BY op_id").fetchall() == [("a",), ("b",)]
    finally:
        conn.close()


def _shaped(source: Path, shape: str) -> None:
    """Make at `source` a closed jackpot database of the `shape` (see the test below)."""
    def sql(*statements: str) -> None:
        conn = apsw.Connection(str(source))
        try:
            for statement in statements:
                conn.execute(statement)
        finally:
            conn.close()

    made = source.with_name("made.db") if shape == "made by VACUUM INTO" else source
    last = shape.rsplit(maxsplit=1)[-1]
    if shape.startswith("pages of "):
        sql(f"PRAGMA page_size = {last}", "CREATE TABLE z (x)", "DROP TABLE z")
    if shape.startswith("auto_vacuum"):
        sql(f"PRAGMA auto_vacuum = {last}")
    with JackpotEngine.open(made) as engine:
        engine.contribute(Decimal(10), op_id="a")
    if shape == "made by VACUUM INTO":
        sql_into = apsw.Connection(str(made))
        try:
            sql_into.execute("VACUUM INTO ?", (str(source),))
        finally:
            sql_into.close()
        made.unlink()
        Path(f"{made}-lock").unlink()
    if shape == "in rollback-journal mode":
        sql("PRAGMA journal_mode = DELETE", "CREATE TABLE z (x)", "DROP TABLE z")
    if shape in {"with free pages over several compared chunks", "auto_vacuum INCREMENTAL"}:
        sql("CREATE TABLE z (b BLOB)", "INSERT INTO z VALUES (zeroblob(3000000))",
            "DROP TABLE z")
    if shape == "its header last written by another SQLite":
        # What SQLite 3.40.1 (Debian 12's sqlite3 shell, as the README has an operator set
        # a user_version with, and its Python's sqlite3) leaves in the header's bytes 96-99
        # as it writes the file's first page: its version number. (An upgrade of apsw,
        # which bundles its SQLite, leaves every database so until its first page is
        # written again.) The copy's are those of apsw's SQLite, that wrote it.
        with source.open("r+b") as file:
            file.seek(96)
            file.write((3_040_001).to_bytes(4, "big"))
    Path(f"{source}-lock").unlink(missing_ok=True)


@pytest.mark.parametrize("shape", [
    "as the engine leaves it", "in rollback-journal mode", "pages of 512", "pages of 65536",
    "with free pages over several compared chunks", "auto_vacuum FULL",
    "auto_vacuum INCREMENTAL", "made by VACUUM INTO",
    "its header last written by another SQLite"])
def test_a_backup_of_a_closed_file_nobody_changes_is_taken_at_the_first_copy(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        shape: str) -> None:
    """A copy of a file nobody has open is compared with the file, the header fields the
    copy sets left out: one that differs where no writer changed anything is taken again,
    and again, and the backup fails ('changed while it was read (a writer opened it)', exit
    status 2) however often it is tried. The header's bytes 96-99 (the version of the SQLite
    that last wrote it) did so: every backup of a closed file last written by another
    SQLite failed."""
    source, target = tmp_path / "pools.db", tmp_path / "copy.db"
    _shaped(source, shape)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pools.db"]  # (closed)
    real = sqlite_module.SQLiteStore._copy_into
    copies: list[str] = []

    def copying(store: sqlite_module.SQLiteStore, into: str) -> None:
        copies.append(into)
        real(store, into)

    monkeypatch.setattr(sqlite_module.SQLiteStore, "_copy_into", copying)
    status, out, err = _backup(capsys, str(target), "--db", str(source), "--json")
    assert (status, err) == (0, ""), out
    assert json.loads(out)["audit"]["ok"]
    assert copies == [f"{target}.partial"]
    assert _rows(target, "ledger") == _rows(source, "ledger")


def test_a_backup_stopped_once_named_before_its_audit_begins_leaves_nothing_at_its_target(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after the copy was named TARGET, before its audit began (as the database's
    store closed): the copy was left at TARGET, whole but not audited (exit status 130),
    where the README says that a copy Ctrl-C stops before its audit ends leaves nothing, and
    the next backup to TARGET was refused ('exists')."""
    source, target = tmp_path / "pools.db", tmp_path / "copy.db"
    with JackpotEngine.open(source) as engine:
        engine.contribute(Decimal(10), op_id="a")
    real = sqlite_module.SQLiteStore.close
    stopped: list[str] = []

    def close(store: sqlite_module.SQLiteStore) -> None:
        real(store)
        if target.exists() and not stopped:  # (the database's store, the copy named)
            stopped.append("as the database closed")
            raise KeyboardInterrupt

    monkeypatch.setattr(sqlite_module.SQLiteStore, "close", close)
    before = sorted(p.name for p in tmp_path.iterdir())
    status, out, err = _backup(capsys, str(target), "--db", str(source))
    monkeypatch.undo()
    assert stopped == ["as the database closed"]
    assert (status, out, err) == (130, "", "\njackpot: error: interrupted\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert _backup(capsys, str(target), "--db", str(source))[0] == 0  # tried again


def test_a_second_backup_to_the_same_target_during_the_first_is_refused_and_leaves_its_copy(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two backups to one TARGET at once: the second finds the first's partial copy (and its
    -journal), is refused saying so, and removes neither; the first goes on to TARGET."""
    source, target = tmp_path / "pools.db", tmp_path / "copy.db"
    with JackpotEngine.open(source) as engine:
        engine.contribute(Decimal(10), op_id="a")
    Path(f"{source}-lock").unlink(missing_ok=True)
    before = sorted(p.name for p in tmp_path.iterdir())
    first = subprocess.Popen([sys.executable, "-c", STOPPED_TWICE, "backup", str(target),
                              "--db", str(source)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, bufsize=0)
    assert first.stdout is not None
    try:
        assert read_line(first.stdout, time.monotonic() + HANG, "a step") == b"copying"
        copying = sorted(p.name for p in tmp_path.iterdir())
        assert copying == sorted([*before, "copy.db.partial", "copy.db.partial-journal"])
        status, out, err = _backup(capsys, str(target), "--db", str(source))
        assert (status, out) == (2, "")
        assert err.startswith(f"jackpot: error: {f'{target}.partial'!r} exists: a backup to "
                              f"{str(target)!r} is being made")
        assert sorted(p.name for p in tmp_path.iterdir()) == copying  # (the first's, kept)
        out_first, err_first = first.communicate(b"\n", timeout=HANG)  # (it goes on)
    finally:
        first.kill()
    assert (first.returncode, err_first) == (0, b""), out_first
    assert b"audit OK" in out_first
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "copy.db"])
    assert _rows(target, "ledger") == _rows(source, "ledger")


def test_a_backup_through_a_symbolic_link_to_a_database_being_served_holds_its_latest_bets(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--db` a symbolic link to the file a game server serves on: SQLite names the -wal and
    -shm by the file the link resolves to, and the backup looked for them beside the link,
    found none, and read the file as if nobody had it open (immutable), without its -wal:
    the copy lacked every bet not yet checkpointed (0 operations of 5) and its audit said OK
    (exit status 0)."""
    source, link, target = tmp_path / "pools.db", tmp_path / "link.db", tmp_path / "copy.db"
    link.symlink_to(source.name)
    with JackpotEngine.open(source) as engine:
        for n in range(5):
            engine.contribute(Decimal(10), op_id=f"bet-{n}")
        served = _rows(source, "operations")  # (through the -wal)
        assert _in_the_file_alone(source) < served  # (bets in the -wal only, as needed)
        status, out, err = _backup(capsys, str(target), "--db", str(link), "--json")
        assert (status, err) == (0, ""), out
        assert json.loads(out)["audit"]["ok"]
        assert _rows(target, "operations") == served


def test_a_backup_stopped_as_its_name_is_synced_removes_no_partial_copy_made_since(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C as the directory is synced after the copy was named TARGET (its partial name
    gone): another backup to TARGET may have begun meanwhile, its TARGET.partial (and its
    -journal) made since. The cleanup removed them by name, the other backup's copy under
    it; it removes only the file it made."""
    source, target = tmp_path / "pools.db", tmp_path / "copy.db"
    with JackpotEngine.open(source) as engine:
        engine.contribute(Decimal(10), op_id="a")
    partial = Path(f"{target}.partial")
    real_fsync = os.fsync
    stopped: list[str] = []

    def another_backup_begun(fd: int) -> None:
        real_fsync(fd)
        if target.exists() and not partial.exists() and not stopped:  # (the directory's)
            stopped.append("as the directory is synced")
            partial.write_bytes(b"another backup's copy")
            Path(f"{partial}-journal").write_bytes(b"its journal")
            raise KeyboardInterrupt

    monkeypatch.setattr(sqlite_module.os, "fsync", another_backup_begun)
    before = sorted(p.name for p in tmp_path.iterdir())
    status, out, err = _backup(capsys, str(target), "--db", str(source))
    monkeypatch.undo()
    assert stopped == ["as the directory is synced"]
    assert (status, out, err) == (130, "", "\njackpot: error: interrupted\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*before, "copy.db.partial", "copy.db.partial-journal"])
    assert partial.read_bytes() == b"another backup's copy"
    assert Path(f"{partial}-journal").read_bytes() == b"its journal"


def test_a_copys_snapshot_ended_after_its_store_closed_raises_nothing(tmp_path: Path) -> None:
    """A second Ctrl-C can leave the copy's read transaction (`_one_snapshot`) to the garbage
    collector, after the store closed: ending it then printed "Exception ignored in:
    <generator object SQLiteStore._one_snapshot ...> ... ConnectionClosedError" after the
    command's own "interrupted". A closed connection has no transaction left to end."""
    source = tmp_path / "pools.db"
    with JackpotEngine.open(source) as engine:
        engine.contribute(Decimal(10), op_id="a")
    store = sqlite_module.SQLiteStore(str(source), create=False, read_only=True)
    snapshot = store._one_snapshot()
    snapshot.__enter__()
    store.close()
    assert not snapshot.__exit__(None, None, None)  # (and raises nothing)


def test_a_backup_by_another_name_of_a_database_being_served_is_refused_naming_the_name(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--db` a hard link (another name of one file) to the file a game server serves on:
    SQLite names the -wal and -shm after the name a file was opened by, so none was beside
    this one, and the backup read the file as if nobody had it open (immutable), without
    the server's -wal: the copy lacked every bet not yet checkpointed (0 operations of 5)
    and its audit said OK (exit status 0); `status` showed the pools as of the last
    checkpoint. Which name the server uses cannot be told from the file: refused."""
    source, other, target = tmp_path / "pools.db", tmp_path / "other.db", tmp_path / "copy.db"
    with JackpotEngine.open(source) as engine:
        for n in range(5):
            engine.contribute(Decimal(10), op_id=f"bet-{n}")
        other.hardlink_to(source)
        served = _rows(source, "operations")  # (through the -wal)
        assert _in_the_file_alone(source) < served  # (bets in the -wal only, as needed)
        before = sorted(p.name for p in tmp_path.iterdir())
        refusal = (f"jackpot: error: {str(other)!r} is one of 2 names (hard links) of one "
                   "file ('pools.db' beside it): SQLite names a database's -wal after the "
                   "name it was opened by, and the latest commits of a game server serving "
                   "it by another name are not found from this one; read it by the name the "
                   "server opens it by, and give the file one name to read it while nobody "
                   "has it open\n")
        for command in (["backup", str(target)], ["status"]):
            status = _cli.run([*command, "--db", str(other)])
            out, err = capsys.readouterr()
            assert (status, out, err) == (2, "", refusal), command
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # (nothing made)
        status, out, err = _backup(capsys, str(target), "--db", str(source), "--json")
        assert (status, err) == (0, ""), out
        assert _rows(target, "operations") == served


@pytest.mark.parametrize("returns", range(1, 9))
def test_a_backup_stopped_as_its_partial_copy_is_made_leaves_nothing(
        tmp_path: Path, returns: int) -> None:
    """Ctrl-C handled as os.open returned TARGET.partial's descriptor, before the name
    `made` was bound to it (Python runs a signal's handler between bytecodes: first as a
    call returns), left TARGET.partial behind, an empty file the cleanup did not know it
    had made, and the next backup to TARGET was refused ('... exists: ... remove it').
    Here Ctrl-C lands at each of the first calls of C code to return once the file exists
    (a profile function sees them return; raising there is what a signal's handler does
    at that point)."""
    source, target = tmp_path / "pools.db", tmp_path / "copy.db"
    with JackpotEngine.open(source) as engine:
        engine.contribute(Decimal(10), op_id="a")
    before = sorted(p.name for p in tmp_path.iterdir())
    partial = f"{target}.partial"
    seen = 0

    def stop(_frame: object, event: str, _arg: object) -> None:
        nonlocal seen
        if event == "c_return" and os.path.lexists(partial):
            seen += 1
            if seen == returns:
                raise KeyboardInterrupt

    store = sqlite_module.SQLiteStore(str(source), create=False, read_only=True)
    try:
        sys.setprofile(stop)
        try:
            with pytest.raises(KeyboardInterrupt):
                store.backup_to(str(target))
        finally:
            sys.setprofile(None)
    finally:
        store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("extra", [100, 4096])
def test_a_backup_of_a_closed_file_with_bytes_past_its_last_page_is_refused_saying_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        extra: int) -> None:
    """Bytes past the last page the header counts (SQLite leaves none: something else
    appended them) are never read by SQLite, so its copy leaves them out, and the compare
    with the file failed at every copy: the backup was taken three times and refused as
    'changed while it was read (a writer opened it): read it again', which no reading again
    could mend. It is refused at the first copy saying what is wrong and how to mend it."""
    source, target = tmp_path / "pools.db", tmp_path / "copy.db"
    _shaped(source, "as the engine leaves it")
    pages = source.stat().st_size
    with source.open("ab") as file:
        file.write(b"\x00" * extra)
    real = sqlite_module.SQLiteStore._copy_into
    copies: list[str] = []

    def copying(store: sqlite_module.SQLiteStore, into: str) -> None:
        copies.append(into)
        real(store, into)

    monkeypatch.setattr(sqlite_module.SQLiteStore, "_copy_into", copying)
    status, out, err = _backup(capsys, str(target), "--db", str(source))
    assert (status, out) == (2, "")
    assert err == (f"jackpot: error: database {str(source)!r} has {extra:,} bytes past its "
                   f"last page (the {pages // 4096:,} pages of 4,096 bytes its header counts "
                   f"end at byte {pages:,}): SQLite leaves none and never reads them, so its "
                   "copy leaves them out and cannot be checked against the file; something "
                   "else wrote them. Once you know they are nothing of yours, remove them "
                   f"(truncate -s {pages} {source}) and back up again\n")
    assert copies == [f"{target}.partial"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pools.db"]  # (nothing left)
    assert source.stat().st_size == pages + extra  # (not changed)
    os.truncate(source, pages)  # as told
    status, out, err = _backup(capsys, str(target), "--db", str(source), "--json")
    assert (status, err) == (0, ""), out
    assert _rows(target, "ledger") == _rows(source, "ledger")
